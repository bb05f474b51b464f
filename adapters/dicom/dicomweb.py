"""A DICOMweb client (PS3.18) over httpx: QIDO-RS study search by accession number and
WADO-RS metadata. Only JSON headers cross it; pixel data is never requested."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from adapters.dicom.errors import PacsUnavailable, raise_for_pacs_status
from adapters.dicom.study_headers import read_study_headers
from models.imaging import StudyHeader

_DICOM_JSON = "application/dicom+json"
_STUDY_INSTANCE_UID = "0020000D"


class DicomWebClient:
    """``base_url`` is the DICOMweb root (Orthanc: ``<orthanc>/dicom-web``)."""

    def __init__(
        self, base_url: str, *, auth: tuple[str, str] | None = None, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, auth=auth, timeout=timeout, headers={"Accept": _DICOM_JSON}
        )

    async def __aenter__(self) -> DicomWebClient:
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

    async def find_study_uids(self, accession_number: str) -> list[str]:
        """QIDO-RS: the StudyInstanceUIDs of the studies with this accession number."""
        found = await self._get_json(
            "/studies", "a QIDO-RS study search", params={"AccessionNumber": accession_number}
        )
        return [
            str(item[_STUDY_INSTANCE_UID]["Value"][0])
            for item in found
            if item.get(_STUDY_INSTANCE_UID, {}).get("Value")
        ]

    async def study_metadata(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """WADO-RS: the DICOM JSON headers of every instance of the study."""
        return await self._get_json(
            f"/studies/{study_instance_uid}/metadata", "a WADO-RS metadata request"
        )

    async def study_headers(self, study_instance_uid: str) -> StudyHeader:
        return read_study_headers(await self.study_metadata(study_instance_uid))

    async def _get_json(
        self, path: str, what: str, params: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        try:
            response = await self._http.get(path, params=params)
        except httpx.TransportError as err:
            raise PacsUnavailable(f"the PACS could not be reached for {what}") from err
        # QIDO-RS answers 204 (Orthanc: 200 with []) when nothing matches.
        if response.status_code == 204:
            return []
        raise_for_pacs_status(response, what)
        body: list[dict[str, Any]] = response.json()
        return body
