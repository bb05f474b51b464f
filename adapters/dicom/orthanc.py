"""Orthanc's own REST API, for what DICOMweb has no word for: the change feed
(GET /changes?since=&limit=), which says when a study became stable, and the study an
Orthanc id names."""

from __future__ import annotations

from types import TracebackType

import httpx

from adapters.dicom.errors import PacsError, PacsUnavailable, raise_for_pacs_status
from models.imaging import PacsChange, PacsChangePage


class StudyGone(PacsError):
    """The study an Orthanc id named was deleted before it was read."""


class OrthancClient:
    def __init__(self, base_url: str, *, auth: tuple[str, str], timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, auth=auth, timeout=timeout)

    async def __aenter__(self) -> OrthancClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def changes(self, since: int, limit: int = 100) -> PacsChangePage:
        """The changes after position ``since``, oldest first. Orthanc removes the entries
        of deleted resources, so positions can skip: ``last`` is where to continue."""
        try:
            response = await self._http.get("/changes", params={"since": since, "limit": limit})
        except httpx.TransportError as err:
            raise PacsUnavailable("the PACS could not be reached for its change feed") from err
        raise_for_pacs_status(response, "a change-feed request")
        body = response.json()
        return PacsChangePage(
            changes=tuple(
                PacsChange(
                    seq=int(item["Seq"]),
                    change_type=str(item["ChangeType"]),
                    resource_type=str(item["ResourceType"]),
                    orthanc_id=str(item["ID"]),
                )
                for item in body["Changes"]
            ),
            last=int(body["Last"]),
            done=bool(body["Done"]),
        )

    async def study_instance_uid(self, orthanc_study_id: str) -> str:
        """The StudyInstanceUID of an Orthanc study id; StudyGone when it was deleted."""
        return (await self.study_keys(orthanc_study_id))[0]

    async def study_keys(self, orthanc_study_id: str) -> tuple[str, str]:
        """(StudyInstanceUID, AccessionNumber) of an Orthanc study id; StudyGone when it
        was deleted before it was read."""
        try:
            response = await self._http.get(f"/studies/{orthanc_study_id}")
        except httpx.TransportError as err:
            raise PacsUnavailable("the PACS could not be reached for a study") from err
        if response.status_code == 404:
            raise StudyGone(orthanc_study_id)
        raise_for_pacs_status(response, "a study request")
        tags = response.json()["MainDicomTags"]
        return str(tags["StudyInstanceUID"]), str(tags.get("AccessionNumber", "")).strip()
