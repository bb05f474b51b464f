"""Async client for any FHIR R4 server: the few interactions Careweave's exchanges use.

Writes are conditional on business identifiers so that a retried call changes nothing
the first call already did. Errors are sorted into retryable (transport, 429, 5xx) and
rejected (other 4xx) so that callers can retry the first and send the second to review.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
from opentelemetry import trace

from adapters.fhir.errors import (
    TRANSPORT_ERRORS,
    FhirPagingError,
    FhirPreconditionFailed,
    FhirRejectedError,
    FhirRetryableError,
    FhirWriteRaced,
    transport_failure,
)
from adapters.fhir.version_fence import (
    CurrentVersion,
    fence_status,
    fence_target,
    fenced,
    presumable,
)
from adapters.tls import client_tls_context

FHIR_JSON = "application/fhir+json"
RETRYABLE_STATUS = frozenset({408, 425, 429})
# Careweave's searches are by business identifier and find a handful of resources; a
# thousand pages (20,000 resources at the usual page size) means a search gone wrong.
MAX_SEARCH_PAGES = 1000

_tracer = trace.get_tracer("careweave.adapters.fhir")

_log = logging.getLogger(__name__)


class ConditionalCreate(NamedTuple):
    """What a conditional create did: ``created`` (201) or found an existing match (200).

    ``resource`` is what the server returned: the new resource, or the match (a server
    that answers 200 without a body gives ``{}``; search for the match then).
    """

    resource: dict[str, Any]
    created: bool


class FhirClient:
    """One connection pool to one FHIR base URL; use as ``async with FhirClient(...)``.

    ``tls`` verifies an https:// server (and may carry our client certificate); without it
    the system's CAs are trusted. Give the same context to a SMART ``auth``, whose token
    endpoint is reached separately.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Resource types whose fence read was refused (write-only credentials), warned once.
        self._unfenced_types: set[str] = set()
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            timeout=timeout,
            headers={"Accept": FHIR_JSON, **(headers or {})},
            auth=auth,
            # The system's CAs by default (as for MLLP), not httpx's bundled list: a hospital
            # installs its private CA there.
            verify=tls or client_tls_context(),
        )

    async def __aenter__(self) -> FhirClient:
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

    async def capability(self) -> dict[str, Any]:
        return await self._request("capability", "GET", "metadata")

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        return await self._request("read", "GET", f"{resource_type}/{resource_id}")

    async def search(
        self, resource_type: str, params: dict[str, str], *, max_pages: int = MAX_SEARCH_PAGES
    ) -> list[dict[str, Any]]:
        """Every match of the search: the server's pages read in turn through their ``next``
        links (``_count`` in ``params`` sets the page size, not the number of results).

        FhirPagingError when a ``next`` link repeats a page already read, leads off this
        server's base URL (our credentials would go with it), or the pages exceed
        ``max_pages``.
        """
        bundle = await self._request("search", "GET", resource_type, params=params)
        resources = _entries(bundle)
        pages = 1
        # A next link back to the first page is a loop too, caught by the first page's self
        # link (ignored if it names another host: only next links are followed).
        self_link = _link(bundle, "self")
        first_page = self._relative_to_base(self_link) if self_link else None
        pages_read = {first_page} if first_page is not None else set()
        while (next_url := _link(bundle, "next")) is not None:
            page = self._path_on_this_server(resource_type, next_url)
            if page in pages_read:
                raise FhirPagingError(
                    f"search {resource_type}: the server's next link after page {pages} "
                    "leads back to a page already read"
                )
            if pages >= max_pages:
                raise FhirPagingError(
                    f"search {resource_type}: more than {max_pages} pages; narrow the search"
                )
            pages_read.add(page)
            bundle = await self._request("search", "GET", page)
            resources.extend(_entries(bundle))
            pages += 1
        return resources

    async def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        bundle = await self._request("history", "GET", f"{resource_type}/{resource_id}/_history")
        return _entries(bundle)

    async def conditional_create(
        self, resource: dict[str, Any], identifier_query: str
    ) -> dict[str, Any]:
        """Create ``resource`` unless one matching ``identifier_query`` exists (If-None-Exist)."""
        return (await self.create_unless_found(resource, identifier_query)).resource

    async def create_unless_found(
        self, resource: dict[str, Any], identifier_query: str
    ) -> ConditionalCreate:
        """Conditional create (If-None-Exist) that says whether the server created the
        resource or found one; FhirPreconditionFailed when the query matches several."""
        status, body = await self._exchange(
            "conditional_create",
            "POST",
            resource["resourceType"],
            json=resource,
            headers={"If-None-Exist": identifier_query},
        )
        return ConditionalCreate(resource=body, created=status == 201)

    async def update(
        self, resource: dict[str, Any], *, version_id: str | None = None
    ) -> dict[str, Any]:
        """PUT ``Type/id``. With ``version_id`` the write is version-aware (If-Match): it
        succeeds only if that is still the server's current version, else
        FhirPreconditionFailed, so a read-merge-update never overwrites a write it did
        not see."""
        if not resource.get("id"):
            raise ValueError("update() needs the resource's id (use conditional_update)")
        headers = {"If-Match": f'W/"{version_id}"'} if version_id else None
        return await self._request(
            "update",
            "PUT",
            f"{resource['resourceType']}/{resource['id']}",
            json=resource,
            headers=headers,
        )

    async def conditional_update(
        self, resource: dict[str, Any], search_query: str
    ) -> dict[str, Any]:
        """PUT to ``Type?identifier=system|value``: update the match, or create it if none."""
        resource_type, _, query = search_query.partition("?")
        if not query:
            raise ValueError(f"conditional update needs a search query, got {search_query!r}")
        return await self._request(
            "conditional_update", "PUT", f"{resource_type}?{_encode_query(query)}", json=resource
        )

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle; the server applies all of its entries or none."""
        if bundle.get("type") != "transaction":
            raise ValueError("transaction() takes a Bundle of type 'transaction'")
        return await self._request("transaction", "POST", "", json=bundle)

    async def fenced_transaction(
        self,
        bundle: dict[str, Any],
        resource_type: str,
        *,
        owned: Collection[str] | None = None,
        presumed_absent: bool = False,
    ) -> dict[str, Any]:
        """``transaction(bundle)``, fenced (adapters/fhir/version_fence.py) on its one
        conditional PUT of ``resource_type`` as read just before: should the server apply
        this request late (after a timeout and a retry), it cannot undo a newer write.
        FhirWriteRaced (retryable) when the fenced resource changed between the read and
        the write (read again on the next attempt); FhirPreconditionFailed when a 412 has
        another cause.

        ``presumed_absent``: the caller expects the fenced resource not to exist yet (a
        new order's first write). The write is then sent as if the read had found nothing,
        without the read; should the resource be there after all, the server says so
        (200, not 201) and the write is fenced on a read as usual. Only for a bundle whose
        one conditional PUT is the fenced resource (version_fence.presumable): with others,
        a wrong guess would write them unfenced."""
        fence_url, identifier = fence_target(bundle, resource_type)
        if presumed_absent:
            if not presumable(bundle, fence_url):
                raise ValueError(
                    f"a write presumed new may update nothing but its {resource_type}: "
                    "the bundle has other conditional PUTs"
                )
            response = await self.transaction(fenced(bundle, fence_url, None, owned=owned))
            if fence_status(bundle, fence_url, response) == "201":
                return response
            # There after all (200), or not said: the write fenced on a read, below.
        try:
            found = await self._versions(resource_type, identifier)
        except FhirRejectedError as err:
            if err.status_code not in (401, 403):
                raise
            # Credentials that may write but not read (a write-only SMART scope): written
            # as before, unfenced, rather than every write refused. docs/operations.md asks
            # for read access to what Careweave writes. Said once per type, not per write.
            if resource_type not in self._unfenced_types:
                self._unfenced_types.add(resource_type)
                _log.warning(
                    "%s: no read access to %s (HTTP %s): writing without the version fence",
                    self.base_url,
                    resource_type,
                    err.status_code,
                )
            return await self.transaction(bundle)
        if len(found) > 1:
            # Several resources carry the identifier: the conditional write as it is, which
            # the server refuses (412) for a person to sort out, as before the fence.
            return await self.transaction(bundle)
        current = found[0] if found else None
        try:
            response = await self.transaction(fenced(bundle, fence_url, current, owned=owned))
        except FhirPreconditionFailed as err:
            if await self._versions(resource_type, identifier) != found:
                raise FhirWriteRaced(
                    f"transaction: {resource_type} changed while the write was on its way",
                    status_code=err.status_code,
                ) from err
            raise
        if current is None and fence_status(bundle, fence_url, response) == "200":
            # Created by another writer between the read and this write (a late copy of an
            # earlier message, say): this write's conditional creates found it and wrote
            # nothing. Taken as done, a cancel or a discharge would be lost; read again.
            raise FhirWriteRaced(
                f"transaction: {resource_type} was created while the write was on its way",
                status_code=200,
            )
        return response

    async def _versions(
        self, resource_type: str, identifier: dict[str, Any]
    ) -> list[CurrentVersion]:
        """The resources of ``resource_type`` with ``identifier``, as the server holds them
        now (matches only: an OperationOutcome entry of the search is not one)."""
        found = await self.search(
            resource_type, {"identifier": f"{identifier['system']}|{identifier['value']}"}
        )
        return [
            CurrentVersion(resource_id=str(r["id"]), version_id=str(r["meta"]["versionId"]))
            for r in found
            if r.get("resourceType") == resource_type
        ]

    def _path_on_this_server(self, resource_type: str, url: str) -> str:
        """``url`` relative to the base URL; a link elsewhere is refused, not followed."""
        path = self._relative_to_base(url)
        if path is None:
            # The link itself stays out of the message: its query can carry identifiers.
            raise FhirPagingError(
                f"search {resource_type}: the server's next link leads off its base URL "
                f"{self.base_url}"
            )
        return path

    def _relative_to_base(self, url: str) -> str | None:
        base = httpx.URL(self.base_url + "/")
        link = base.join(url)
        same_origin = (link.scheme, link.host, link.port) == (base.scheme, base.host, base.port)
        if not same_origin or not link.raw_path.startswith(base.raw_path):
            return None
        return link.raw_path[len(base.raw_path) :].decode("ascii")

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        _, body = await self._exchange(
            operation, method, path, json=json, params=params, headers=headers
        )
        return body

    async def _exchange(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        # Span attributes name the interaction and the resource type only: URLs and
        # queries can carry identifiers (MRNs), so they stay out of telemetry.
        resource_type = path.split("/", 1)[0].split("?", 1)[0] or "Bundle"
        with _span(operation, method, resource_type) as span:
            request_headers = {"Content-Type": FHIR_JSON, **(headers or {})} if json else headers
            try:
                response = await self._http.request(
                    method, path, json=json, params=params, headers=request_headers
                )
            except TRANSPORT_ERRORS as err:
                raise transport_failure(operation, err) from err
            span.set_attribute("http.response.status_code", response.status_code)
            return response.status_code, _body_or_raise(operation, response)


def _body_or_raise(operation: str, response: httpx.Response) -> dict[str, Any]:
    body = _json_or_none(response)
    status = response.status_code
    if status < 300:
        return body or {}
    if status >= 500 or status in RETRYABLE_STATUS:
        raise FhirRetryableError(f"{operation}: HTTP {status}", status_code=status)
    if status == 412:
        raise FhirPreconditionFailed(status, body)
    raise FhirRejectedError(status, body)


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry") or [] if "resource" in entry]


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    for link in bundle.get("link") or []:
        if link.get("relation") == relation and link.get("url"):
            url: str = link["url"]
            return url
    return None


def _encode_query(query: str) -> str:
    """Percent-encode each value of ``a=b&c=d`` (``|`` and ``:`` in token searches)."""
    pairs = (pair.partition("=") for pair in query.split("&"))
    return "&".join(f"{key}={quote(value, safe='')}" for key, _, value in pairs)


@contextmanager
def _span(operation: str, method: str, resource_type: str) -> Iterator[trace.Span]:
    with _tracer.start_as_current_span(
        f"fhir.{operation}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "fhir.interaction": operation,
            "fhir.resource_type": resource_type,
            "http.request.method": method,
        },
    ) as span:
        yield span
