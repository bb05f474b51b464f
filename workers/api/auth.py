"""Who is calling: the token endpoint, the browser's login and logout pages, and the
`authorized` dependency every other route states its roles with.

A verified token is a bearer token or, for the routes that say so (the codec, the web
pages, the Temporal UI behind the API), the HttpOnly session cookie set by `/login`. The
JSON review routes take bearer tokens only; a web form that changes something carries
the session's CSRF token as well (workers/web/session.py).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import OAuth2PasswordRequestForm
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel

from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from workers.api.common import ApiRefusal, audit_entry
from workers.api.context import ApiContext, Context
from workers.auth import TokenRejected

SESSION_COOKIE = "careweave_session"
# One browser session for the codec, the web pages and the Temporal UI behind the API.
# SameSite=Strict: no other site's page, link or form ever sends it; the JSON review
# routes ignore it, and a web form needs the session's CSRF token too.
SESSION_COOKIE_PATH = "/"
# Where a sign-in goes when no page asked for it.
HOME_PAGE = "/ui/"

router = APIRouter()


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class LoginThrottle:
    """Password guessing: after `failures_per_minute` failures for one username (or four
    times that from one address) within a minute, logins are refused with 429, even with
    the right password, until the window has moved on."""

    def __init__(self, failures_per_minute: int) -> None:
        self._failures = MovingWindowRateLimiter(MemoryStorage())
        self._per_user = RateLimitItemPerMinute(failures_per_minute)
        self._per_address = RateLimitItemPerMinute(4 * failures_per_minute)

    def allows(self, username: str, address: str) -> bool:
        return self._failures.test(self._per_user, *_user_key(username)) and self._failures.test(
            self._per_address, *_address_key(address)
        )

    def failed(self, username: str, address: str) -> None:
        self._failures.hit(self._per_user, *_user_key(username))
        self._failures.hit(self._per_address, *_address_key(address))

    def succeeded(self, username: str) -> None:
        self._failures.clear(self._per_user, *_user_key(username))


def _user_key(username: str) -> tuple[str, str]:
    return ("user", username.casefold())


def _address_key(address: str) -> tuple[str, str]:
    return ("address", address)


# -- the caller's identity -----------------------------------------------------------


async def _still_granted(context: ApiContext, identity: Identity) -> Identity:
    """Careweave's own tokens carry the roles held when issued: a removed user or a
    withdrawn role takes effect at once, not when the token expires."""
    account = await asyncio.to_thread(context.users.get, identity.subject)
    if account is None:
        raise TokenRejected("this user no longer exists")
    return identity.model_copy(update={"roles": identity.roles & account.role_set})


async def authorize(
    context: ApiContext,
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
        identity = await context.verifier.verify(token)
        caller = identity.subject
        if identity.issuer == context.settings.auth_issuer:
            identity = await _still_granted(context, identity)
    except TokenRejected as err:
        await context.audit(audit_entry(caller, action, AuditOutcome.REFUSED, exchange, str(err)))
        challenge = 'Bearer realm="careweave"'
        if token is not None:
            challenge += ', error="invalid_token"'
        raise ApiRefusal(401, "login", str(err), {"WWW-Authenticate": challenge}) from err
    if not identity.has_any(*allowed):
        needed = " or ".join(role.value for role in allowed)
        await context.audit(
            audit_entry(identity.subject, action, AuditOutcome.REFUSED, exchange, f"needs {needed}")
        )
        raise ApiRefusal(403, "forbidden", f"this needs the {needed} role")
    return identity


def authorized(
    *allowed: Role, action: AuditAction, allow_cookie: bool = False
) -> Callable[[Request, ApiContext], Awaitable[Identity]]:
    """A route dependency: the caller's identity if it holds one of `allowed` (refusals are
    audited as `action`, naming the exchange of the route's {workflow_id} if it has one)."""

    async def caller(request: Request, context: Context) -> Identity:
        return await authorize(
            context,
            request,
            allowed,
            action,
            exchange=request.path_params.get("workflow_id"),
            allow_cookie=allow_cookie,
        )

    return caller


def _bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# -- tokens and the browser login ----------------------------------------------------


async def _login(
    context: ApiContext, username: str, password: str, address: str
) -> tuple[str, frozenset[Role]] | None:
    """A token and its roles for the right password; None for a wrong one; a 429 refusal
    while the throttle holds."""
    throttle = context.login_throttle
    if not throttle.allows(username, address):
        await context.audit(
            audit_entry(
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
    account = await asyncio.to_thread(context.users.authenticate, username, password)
    if account is None:
        throttle.failed(username, address)
        await context.audit(
            audit_entry(username or "anonymous", AuditAction.LOGIN, AuditOutcome.REFUSED)
        )
        return None
    throttle.succeeded(username)
    await context.audit(audit_entry(account.username, AuditAction.LOGIN, AuditOutcome.SUCCESS))
    return context.issuer.issue(account.username, account.role_set), account.role_set


@router.post("/auth/token", response_model=TokenResponse)
async def token(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    context: Context,
) -> TokenResponse:
    issued = await _login(context, form.username, form.password, _address(request))
    if issued is None:
        # Same answer for an unknown user and a wrong password: nothing to enumerate.
        raise ApiRefusal(401, "login", "wrong username or password", {"WWW-Authenticate": "Bearer"})
    return TokenResponse(access_token=issued[0], expires_in=int(context.issuer.ttl.total_seconds()))


@router.get("/login", response_class=HTMLResponse)
async def login_page(next: str = HOME_PAGE) -> HTMLResponse:
    return HTMLResponse(_login_page(safe_next(next)))


@router.post("/login", response_class=HTMLResponse)
async def login_form(request: Request, context: Context) -> Response:
    form = await request.form()
    username, password = form.get("username"), form.get("password")
    raw_next = form.get("next")
    next_page = safe_next(raw_next if isinstance(raw_next, str) else HOME_PAGE)
    if not isinstance(username, str) or not isinstance(password, str):
        page = _login_page(next_page, "Enter a username and a password.")
        return HTMLResponse(page, status_code=422)
    try:
        issued = await _login(context, username, password, _address(request))
    except ApiRefusal as refusal:
        return HTMLResponse(_login_page(next_page, refusal.message), status_code=refusal.status)
    if issued is None:
        return HTMLResponse(_login_page(next_page, "Wrong username or password."), status_code=401)
    token, _roles = issued
    # 303: the browser follows with a GET, and a reload does not post the password again.
    signed_in = RedirectResponse(next_page, status_code=303)
    signed_in.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(context.issuer.ttl.total_seconds()),
        path=SESSION_COOKIE_PATH,
        httponly=True,
        # The UI (127.0.0.1:8233) and the API (127.0.0.1:8088) are the same site: ports
        # do not count, so Strict still sends the cookie with the UI's fetch to /codec.
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return signed_in


@router.post("/logout", response_class=HTMLResponse)
async def logout() -> HTMLResponse:
    page = HTMLResponse(_login_page(HOME_PAGE, "Signed out."))
    page.delete_cookie(SESSION_COOKIE, path=SESSION_COOKIE_PATH)
    return page


def safe_next(candidate: str) -> str:
    """A page of this API to go to after sign-in: a local path only, never another site
    (an open redirect would let a phishing link land a fresh session elsewhere)."""
    if candidate.startswith("/") and not candidate.startswith(("//", "/\\")):
        return candidate
    return HOME_PAGE


def _login_page(next_page: str, notice: str = "") -> str:
    message = f'<p role="alert"><strong>{html.escape(notice)}</strong></p>' if notice else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Careweave sign-in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui/static/careweave.css"></head>
<body><main class="narrow"><h1>Careweave sign-in</h1>{message}
<p>Reviewers decide pending exchanges here; operators open the Temporal UI through it.</p>
<form method="post" action="/login">
<input type="hidden" name="next" value="{html.escape(next_page)}">
<p><label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus></p>
<p><label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"
 required></p>
<p><button type="submit">Sign in</button></p></form></main></body></html>"""
