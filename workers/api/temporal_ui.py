"""The Temporal UI behind the API's sign-in, on the API's origin, read-only.

The dev server's UI listens on loopback under the base path `/temporal`; the API forwards
`/temporal/...` to it for signed-in operators and reviewers only. Served this way the UI's
codec call to `/codec` is same-origin (the session cookie goes with it, no browser setting
to change), and Careweave decides which of the UI's requests reach Temporal: reads pass,
every command that would change a workflow, schedule, batch or namespace is refused (403,
audited), and the UI's settings answer is rewritten so it offers no such command at all.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, unquote

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from models.audit import AuditAction, AuditOutcome
from models.identity import Role
from workers.api.auth import SESSION_COOKIE, authorize
from workers.api.common import ApiRefusal, audit_entry
from workers.api.context import ApiContext, Context

TEMPORAL_UI_PATH = "/temporal"

# The UI's HTTP API (grpc-gateway over the WorkflowService) reads with GET; of its POSTs
# only a query is read-only (the Queries and Call Stack tabs, `__stack_trace`). Everything
# else - terminate, cancel, signal, update, reset, pause, start, batch operations,
# schedules, namespaces, deployments, Nexus endpoints - is a command and is refused.
_READ_METHODS = frozenset({"GET", "HEAD"})
_READ_ONLY_POST = re.compile(
    r"^/api/v1/namespaces/[^/]+/workflows/[^/]+(/runs/[^/]+)?/query/[^/]+$"
)
_WORKFLOW_IN_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/workflows/([^/]+)")
# Dot segments (plain or percent-encoded) could make the UI server route a path other
# than the one checked here; no page or call of the UI has them.
_DOT_SEGMENT = re.compile(r"(^|/)(\.|%2e){1,2}(/|$)", re.IGNORECASE)

# Not forwarded upstream: hop-by-hop headers, the caller's credentials (the UI server would
# pass an Authorization header on to Temporal as gRPC metadata), and a method override.
_DROPPED_REQUEST_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "authorization",
        "cookie",
        "content-length",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "trailer", "upgrade", "proxy-authenticate"}
)
# The history page long-polls (waitNewEvent=true) for up to a minute.
_UPSTREAM_TIMEOUT = httpx.Timeout(10.0, read=75.0)


@asynccontextmanager
async def _upstream_client(app: FastAPI) -> AsyncIterator[None]:
    """One connection pool to the UI for the API's lifetime."""
    context: ApiContext = app.state.careweave
    settings = context.settings
    async with httpx.AsyncClient(
        base_url=settings.resolved_temporal_ui_upstream, timeout=_UPSTREAM_TIMEOUT
    ) as client:
        app.state.temporal_ui_client = client
        yield


router = APIRouter(lifespan=_upstream_client)


@router.api_route(TEMPORAL_UI_PATH, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
@router.api_route(
    TEMPORAL_UI_PATH + "/{ui_path:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
)
async def temporal_ui(request: Request, context: Context) -> Response:
    # As the browser sent it (query string apart): checked, and forwarded, byte for byte.
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    path = raw_path.decode("latin-1")
    ui_path = path.removeprefix(TEMPORAL_UI_PATH) or "/"
    is_api_call = ui_path.startswith("/api/")
    try:
        identity = await authorize(
            context, request, (Role.OPS, Role.REVIEWER), AuditAction.ACCESS, allow_cookie=True
        )
    except ApiRefusal as refusal:
        if refusal.status == 401 and not is_api_call:
            return _to_sign_in(path, request.url.query)
        raise
    if not is_read_only(request.method, ui_path):
        workflow = _WORKFLOW_IN_PATH.match(ui_path)
        await context.audit(
            audit_entry(
                identity.subject,
                AuditAction.WORKFLOW_COMMAND,
                AuditOutcome.REFUSED,
                unquote(workflow.group(1)) if workflow else None,
                f"Temporal UI {request.method} {ui_path}: read-only",
                resource=f"namespace:{context.settings.temporal_namespace}",
            )
        )
        raise ApiRefusal(
            403,
            "forbidden",
            "the Temporal UI behind Careweave is read-only: reviews are decided in Careweave,"
            " operations go through the careweave command",
        )
    client: httpx.AsyncClient = request.app.state.temporal_ui_client
    query: bytes = request.scope.get("query_string", b"")
    upstream_request = client.build_request(
        request.method,
        client.base_url.copy_with(raw_path=raw_path + (b"?" + query if query else b"")),
        headers=_forwarded_headers(request),
        content=await request.body() if request.method == "POST" else None,
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.TransportError as err:
        raise ApiRefusal(
            502,
            "transient",
            "the Temporal UI does not answer: `careweave up` starts it (not with --headless)",
        ) from err
    if request.method == "GET" and ui_path == "/api/v1/settings":
        return await _read_only_settings(request, upstream)
    response = StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        background=BackgroundTask(upstream.aclose),
    )
    response.raw_headers = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in upstream.headers.multi_items()
        if name.lower() not in _DROPPED_RESPONSE_HEADERS
    ]
    return response


def is_read_only(method: str, ui_path: str) -> bool:
    """Whether the UI's request `method` `ui_path` (below the base path) only reads."""
    if _DOT_SEGMENT.search(ui_path):
        return False
    if method in _READ_METHODS:
        return True
    return method == "POST" and _READ_ONLY_POST.match(ui_path) is not None


def _forwarded_headers(request: Request) -> list[tuple[str, str]]:
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if name not in _DROPPED_REQUEST_HEADERS
    ]
    # The UI's own cookies (its CSRF token) go through; Careweave's session stays here.
    ui_cookies = "; ".join(
        f"{name}={value}" for name, value in request.cookies.items() if name != SESSION_COOKIE
    )
    if ui_cookies:
        headers.append(("cookie", ui_cookies))
    return headers


def _to_sign_in(raw_path: str, query: str) -> RedirectResponse:
    # The path as the browser sent it: a workflow id's %2F must come back as %2F.
    asked = raw_path + (f"?{query}" if query else "")
    return RedirectResponse(f"/login?next={quote(asked, safe='')}", status_code=303)


async def _read_only_settings(request: Request, upstream: httpx.Response) -> Response:
    """The UI's settings with every write action off and its codec on this origin's
    `/codec`, credentials included: the session cookie decides who sees clear text."""
    try:
        await upstream.aread()
    finally:
        await upstream.aclose()
    if upstream.status_code != 200:
        return Response(upstream.content, status_code=upstream.status_code)
    settings: dict[str, Any] = upstream.json()
    settings["DisableWriteActions"] = True
    for name in list(settings):
        # WorkflowTerminateDisabled, BatchActionsDisabled, StartWorkflowDisabled, ...: the
        # per-action switches too, in case a UI version reads one and not the global one.
        if name.endswith("Disabled") and name != "RefreshWorkflowCountsDisabled":
            settings[name] = True
    settings["DisableNewsFetch"] = True  # no call out of a closed network
    origin = str(request.base_url).rstrip("/")
    settings["Codec"] = {
        **settings.get("Codec", {}),
        "Endpoint": f"{origin}/codec",
        "PassAccessToken": False,
        "IncludeCredentials": True,
        "DefaultErrorMessage": "Sign in to Careweave to see decoded payloads",
        "DefaultErrorLink": f"{origin}/login?next={quote(TEMPORAL_UI_PATH + '/', safe='')}",
    }
    answer = JSONResponse(settings)
    for cookie in upstream.headers.get_list("set-cookie"):
        answer.headers.append("set-cookie", cookie)
    return answer
