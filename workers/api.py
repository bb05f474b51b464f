"""The review and codec API: reviewers decide, operators look, the Temporal UI decodes.

FastAPI, because its OAuth2 password form, typed request models and exception handlers
give the token endpoint and the 4xx OperationOutcome answers without hand-written parsing;
served by uvicorn (`careweave api` alone, or in-process in `careweave up`).

Every route but the login pages needs a verified token (workers/auth.py): a bearer
token, or for the codec routes only, the HttpOnly session cookie set by `/login`, so
the Temporal UI's browser calls carry the operator's identity. Every refusal is a FHIR
OperationOutcome; logins, decisions, decodes and review-list access are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import OAuth2PasswordRequestForm
from google.protobuf import json_format
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.converter import PayloadCodec
from temporalio.service import RPCError, RPCStatusCode

from adapters.users import UserDirectory
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.identity import Identity, Role
from models.review import ReviewAction, ReviewDecision, ReviewRecord, ReviewRequest
from models.settings import Settings
from workers.auth import TokenIssuer, TokenRejected, TokenVerifier, issuer_and_verifier

AuditRecorder = Callable[[AuditEntry], Awaitable[object]]  # e.g. AuditLog.aappend
SESSION_COOKIE = "careweave_session"
# The cookie is sent only to the codec routes: the review routes take bearer tokens only,
# so a page the reviewer visits can never make a decision with their browser's cookie.
SESSION_COOKIE_PATH = "/codec"
TEMPORAL_RPC_TIMEOUT = timedelta(seconds=30)


class ApiRefusal(Exception):
    """An answer in the 4xx range: HTTP status, FHIR issue code and a sentence for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def operation_outcome(code: str, message: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }


class DecisionBody(BaseModel):
    """What a reviewer sends; who they are comes from their token, never from the body."""

    model_config = ConfigDict(extra="forbid")

    review_id: str = Field(min_length=1, max_length=50)
    action: ReviewAction
    reason: str = Field(min_length=1, max_length=2000)
    edited_message: str | None = None


class PendingReview(BaseModel):
    workflow_id: str
    review: ReviewRequest


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


def create_api(
    settings: Settings,
    temporal_client: Client,
    codec: PayloadCodec | None,
    record: AuditRecorder | None = None,
    *,
    users: UserDirectory | None = None,
    tokens: tuple[TokenIssuer, TokenVerifier] | None = None,
) -> FastAPI:
    """The API app. `codec` None means payloads are not encoded: decode returns them as is."""
    directory = users or UserDirectory.from_url(settings.resolved_database_url)
    issuer, verifier = tokens or issuer_and_verifier(settings)

    app = FastAPI(title="Careweave review and codec API", docs_url=None, redoc_url=None)
    app.add_middleware(
        CORSMiddleware,
        # Exactly the Temporal UI's origins: credentials are allowed, so never a wildcard.
        allow_origins=settings.resolved_ui_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST"],
        allow_headers=["content-type", "x-namespace", "authorization"],
        max_age=600,
    )

    async def audit(entry: AuditEntry) -> None:
        if record is not None:
            await record(entry)

    @app.exception_handler(ApiRefusal)
    async def _refusal(_request: Request, err: ApiRefusal) -> JSONResponse:
        return JSONResponse(
            operation_outcome(err.code, err.message), status_code=err.status, headers=err.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _malformed(_request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(operation_outcome("invalid", _describe(err.errors())), status_code=422)

    async def still_granted(identity: Identity) -> Identity:
        """Careweave's own tokens carry the roles held when issued: a removed user or a
        withdrawn role takes effect at once, not when the token expires."""
        account = await asyncio.to_thread(directory.get, identity.subject)
        if account is None:
            raise TokenRejected("this user no longer exists")
        return identity.model_copy(update={"roles": identity.roles & account.role_set})

    async def authorize(
        request: Request,
        allowed: tuple[Role, ...],
        action: AuditAction,
        *,
        exchange: str | None = None,
        allow_cookie: bool = False,
    ) -> Identity:
        """The caller's verified identity if it holds one of `allowed`; else a refusal."""
        token = _bearer_token(request)
        if token is None and allow_cookie:
            token = request.cookies.get(SESSION_COOKIE)
        caller = "anonymous"  # until a signature says who
        try:
            if token is None:
                raise TokenRejected("authentication required: send a bearer token")
            identity = await verifier.verify(token)
            caller = identity.subject
            if identity.issuer == settings.auth_issuer:
                identity = await still_granted(identity)
        except TokenRejected as err:
            await audit(_entry(caller, action, AuditOutcome.REFUSED, exchange, str(err)))
            challenge = 'Bearer realm="careweave"'
            if token is not None:
                challenge += ', error="invalid_token"'
            raise ApiRefusal(401, "login", str(err), {"WWW-Authenticate": challenge}) from err
        if not identity.has_any(*allowed):
            needed = " or ".join(role.value for role in allowed)
            await audit(
                _entry(identity.subject, action, AuditOutcome.REFUSED, exchange, f"needs {needed}")
            )
            raise ApiRefusal(403, "forbidden", f"this needs the {needed} role")
        return identity

    # -- tokens and the browser login --------------------------------------------------

    # Password guessing: after `auth_login_failures_per_minute` failures for one username
    # (or four times that from one address) within a minute, logins are refused with 429,
    # even with the right password, until the window has moved on.
    failures = MovingWindowRateLimiter(MemoryStorage())
    per_user = RateLimitItemPerMinute(settings.auth_login_failures_per_minute)
    per_address = RateLimitItemPerMinute(4 * settings.auth_login_failures_per_minute)

    async def login(
        username: str, password: str, address: str
    ) -> tuple[str, frozenset[Role]] | None:
        user_key, address_key = ("user", username.casefold()), ("address", address)
        if not failures.test(per_user, *user_key) or not failures.test(per_address, *address_key):
            await audit(
                _entry(
                    username or "anonymous",
                    AuditAction.LOGIN,
                    AuditOutcome.REFUSED,
                    None,
                    "throttled",
                )
            )
            raise ApiRefusal(
                429,
                "throttled",
                "too many failed logins; try again in a minute",
                {"Retry-After": "60"},
            )
        account = await asyncio.to_thread(directory.authenticate, username, password)
        if account is None:
            failures.hit(per_user, *user_key)
            failures.hit(per_address, *address_key)
            await audit(_entry(username or "anonymous", AuditAction.LOGIN, AuditOutcome.REFUSED))
            return None
        failures.clear(per_user, *user_key)
        await audit(_entry(account.username, AuditAction.LOGIN, AuditOutcome.SUCCESS))
        return issuer.issue(account.username, account.role_set), account.role_set

    @app.post("/auth/token", response_model=TokenResponse)
    async def token(
        request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
    ) -> TokenResponse:
        issued = await login(form.username, form.password, _address(request))
        if issued is None:
            # Same answer for an unknown user and a wrong password: nothing to enumerate.
            raise ApiRefusal(
                401, "login", "wrong username or password", {"WWW-Authenticate": "Bearer"}
            )
        return TokenResponse(access_token=issued[0], expires_in=int(issuer.ttl.total_seconds()))

    @app.get("/login", response_class=HTMLResponse)
    async def login_page() -> HTMLResponse:
        return HTMLResponse(_login_page())

    @app.post("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> HTMLResponse:
        form = await request.form()
        username, password = form.get("username"), form.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return HTMLResponse(_login_page("Enter a username and a password."), status_code=422)
        try:
            issued = await login(username, password, _address(request))
        except ApiRefusal as refusal:
            return HTMLResponse(_login_page(refusal.message), status_code=refusal.status)
        if issued is None:
            return HTMLResponse(_login_page("Wrong username or password."), status_code=401)
        token, roles = issued
        page = HTMLResponse(_signed_in_page(username, roles, settings))
        page.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(issuer.ttl.total_seconds()),
            path=SESSION_COOKIE_PATH,
            httponly=True,
            # The UI (127.0.0.1:8233) and the API (127.0.0.1:8088) are the same site: ports
            # do not count, so Lax still sends the cookie with the UI's fetch to /codec.
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return page

    @app.post("/logout", response_class=HTMLResponse)
    async def logout() -> HTMLResponse:
        page = HTMLResponse(_login_page("Signed out."))
        page.delete_cookie(SESSION_COOKIE, path=SESSION_COOKIE_PATH)
        return page

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # -- reviews -------------------------------------------------------------------------

    @app.get("/reviews")
    async def list_reviews(request: Request) -> dict[str, list[PendingReview]]:
        identity = await authorize(request, (Role.REVIEWER, Role.OPS), AuditAction.ACCESS)
        pending: list[PendingReview] = []
        async for execution in temporal_client.list_workflows(
            "ReviewState = 'pending' AND ExecutionStatus = 'Running'"
        ):
            with contextlib.suppress(RPCError):
                raw = await temporal_client.get_workflow_handle(execution.id).query(
                    "pending_review", rpc_timeout=TEMPORAL_RPC_TIMEOUT
                )
                if raw:
                    review = ReviewRequest.model_validate(raw)
                    pending.append(PendingReview(workflow_id=execution.id, review=review))
        await audit(
            _entry(
                identity.subject,
                AuditAction.ACCESS,
                AuditOutcome.SUCCESS,
                resource="review-list",
                detail=f"{len(pending)} pending",
            )
        )
        return {"reviews": pending}

    @app.get("/reviews/{workflow_id:path}")
    async def show_review(workflow_id: str, request: Request) -> dict[str, Any]:
        identity = await authorize(
            request, (Role.REVIEWER, Role.OPS), AuditAction.ACCESS, exchange=workflow_id
        )
        try:
            raw = await temporal_client.get_workflow_handle(workflow_id).query(
                "pending_review", rpc_timeout=TEMPORAL_RPC_TIMEOUT
            )
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise ApiRefusal(404, "not-found", f"no exchange {workflow_id}") from err
            raise
        await audit(_entry(identity.subject, AuditAction.ACCESS, AuditOutcome.SUCCESS, workflow_id))
        review = ReviewRequest.model_validate(raw) if raw else None
        return {"workflow_id": workflow_id, "review": review}

    @app.post("/reviews/{workflow_id:path}/decision")
    async def decide(workflow_id: str, request: Request) -> ReviewRecord:
        identity = await authorize(
            request, (Role.REVIEWER,), AuditAction.REVIEW_DECISION, exchange=workflow_id
        )
        try:
            body = DecisionBody.model_validate_json(await request.body())
        except ValidationError as err:
            raise ApiRefusal(422, "invalid", _describe(err.errors())) from err

        async def refuse(status: int, code: str, message: str) -> ApiRefusal:
            await audit(
                _entry(
                    identity.subject,
                    AuditAction.REVIEW_DECISION,
                    AuditOutcome.REFUSED,
                    workflow_id,
                    f"{body.action.value} {body.review_id}: {message}",
                )
            )
            return ApiRefusal(status, code, message)

        handle = temporal_client.get_workflow_handle(workflow_id)
        try:
            raw = await handle.query("pending_review", rpc_timeout=TEMPORAL_RPC_TIMEOUT)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise await refuse(404, "not-found", f"no exchange {workflow_id}") from err
            raise
        pending = ReviewRequest.model_validate(raw) if raw else None
        if pending is None:
            raise await refuse(409, "conflict", "no review is pending for this exchange")
        if pending.review_id != body.review_id:
            raise await refuse(
                409,
                "conflict",
                f"review {body.review_id} is not pending (pending: {pending.review_id})",
            )
        decision = ReviewDecision(
            review_id=body.review_id,
            action=body.action,
            reason=body.reason,
            reviewer=identity.subject,
            reviewer_role=Role.REVIEWER.value,
            identity_issuer=identity.issuer,
            edited_message=body.edited_message,
        )
        try:
            result = await handle.execute_update(
                "decide_review", decision, rpc_timeout=TEMPORAL_RPC_TIMEOUT
            )
        except WorkflowUpdateFailedError as err:
            # The workflow's validator said no (decided meanwhile, action not offered, ...):
            # nothing entered the history.
            raise await refuse(409, "conflict", str(err.cause or err)) from err
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise await refuse(409, "conflict", "the exchange has finished") from err
            raise
        await audit(
            _entry(
                identity.subject,
                AuditAction.REVIEW_DECISION,
                AuditOutcome.SUCCESS,
                workflow_id,
                f"{body.action.value} {body.review_id}",
            )
        )
        return ReviewRecord.model_validate(result)

    # -- codec for the Temporal UI -----------------------------------------------------

    async def transcode(request: Request, decode: bool) -> Response:
        identity = await authorize(
            request, (Role.OPS, Role.REVIEWER), AuditAction.DECODE, allow_cookie=True
        )
        namespace = request.headers.get("x-namespace", settings.temporal_namespace)
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as err:
            raise ApiRefusal(422, "invalid", f"body is not Temporal Payloads JSON: {err}") from err
        items = list(payloads.payloads)
        try:
            if codec is not None:
                items = await (codec.decode(items) if decode else codec.encode(items))
        except Exception as err:
            await audit(
                _entry(
                    identity.subject,
                    AuditAction.DECODE,
                    AuditOutcome.FAILURE,
                    resource=f"namespace:{namespace}",
                    detail=type(err).__name__,
                )
            )
            raise ApiRefusal(422, "processing", "the payloads could not be decoded") from err
        if decode:
            await audit(
                _entry(
                    identity.subject,
                    AuditAction.DECODE,
                    AuditOutcome.SUCCESS,
                    resource=f"namespace:{namespace}",
                    detail=f"{len(items)} payloads",
                )
            )
        body = json_format.MessageToJson(Payloads(payloads=items))
        return Response(body, media_type="application/json")

    @app.post("/codec/decode")
    async def codec_decode(request: Request) -> Response:
        return await transcode(request, decode=True)

    @app.post("/codec/encode")
    async def codec_encode(request: Request) -> Response:
        return await transcode(request, decode=False)

    return app


def _entry(
    actor: str,
    action: AuditAction,
    outcome: AuditOutcome,
    exchange: str | None = None,
    detail: str = "",
    *,
    resource: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        actor_kind=ActorKind.USER,
        actor=actor[:200] or "anonymous",
        action=action,
        outcome=outcome,
        exchange=exchange[:300] if exchange else None,
        resource=resource,
        detail=detail[:500],
    )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _describe(errors: Any) -> str:
    """Which fields were wrong and why, without echoing the values sent."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def _login_page(notice: str = "") -> str:
    message = f"<p><strong>{html.escape(notice)}</strong></p>" if notice else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Careweave sign-in</title></head>
<body><h1>Careweave sign-in</h1>{message}
<p>Signing in lets the Temporal UI decode payloads through Careweave's codec endpoint.</p>
<form method="post" action="/login">
<label>Username <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label>
<button type="submit">Sign in</button></form></body></html>"""


def _signed_in_page(username: str, roles: frozenset[Role], settings: Settings) -> str:
    role_text = ", ".join(sorted(role.value for role in roles))
    ui = f"http://127.0.0.1:{settings.temporal_ui_port}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Careweave: signed in</title></head>
<body><h1>Signed in as {html.escape(username)} ({html.escape(role_text)})</h1>
<p>Open the Temporal UI at <a href="{ui}">{ui}</a>; in its codec server settings turn on
"Include cross-origin credentials".</p>
<form method="post" action="/logout"><button type="submit">Sign out</button></form>
</body></html>"""


class _EmbeddedServer(uvicorn.Server):
    # The process that embeds the API owns SIGINT/SIGTERM (careweave up stops its parts in
    # order); uvicorn would otherwise replace those handlers while it serves.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_api(app: FastAPI, host: str, port: int) -> AsyncIterator[int]:
    """Serve `app` on host:port (0: a free port) until the block ends; yields the port."""
    # Bound here rather than by uvicorn, whose bind failure is a sys.exit inside a task.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as err:
        listener.close()
        raise OSError(f"the API cannot listen on {host}:{port}: {err.strerror}") from err
    bound_port = int(listener.getsockname()[1])
    server = _EmbeddedServer(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"the API on {host}:{bound_port} stopped while starting")
            await asyncio.sleep(0.02)
        yield bound_port
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.close()
