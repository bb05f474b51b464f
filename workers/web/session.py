"""Who is looking at a page, and whether a form really came from one of our pages.

Pages take the browser session cookie (a bearer token works too, for scripts). A page
asked for without a session answers with the sign-in page's address, remembering where
the browser wanted to go. Forms that change something carry a CSRF token derived from
the session cookie: another site's page cannot read the HttpOnly cookie, so it cannot
make the token, and the browser does not send the SameSite=Strict cookie there anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse

from models.audit import AuditAction, AuditOutcome
from models.errors import RequestRefused
from models.identity import Identity, Role
from workers.api.auth import SESSION_COOKIE, authorize
from workers.api.common import ApiRefusal, audit_entry
from workers.api.context import ApiContext, Context

CSRF_FIELD = "csrf_token"


class SignInRequired(RequestRefused):
    """No valid session: the browser is sent to sign in, then back to `next_page`."""

    def __init__(self, next_page: str) -> None:
        super().__init__("sign in first")
        self.next_page = next_page


async def sign_in_redirect(_request: Request, err: SignInRequired) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(err.next_page, safe='/')}", status_code=303)


def signed_in(
    *allowed: Role, action: AuditAction
) -> Callable[[Request, ApiContext], Awaitable[Identity]]:
    """A page dependency: the signed-in caller holding one of `allowed`. Without a valid
    session the browser goes to the sign-in page (and comes back); a missing role is 403."""

    async def caller(request: Request, context: Context) -> Identity:
        try:
            return await authorize(context, request, allowed, action, allow_cookie=True)
        except ApiRefusal as refusal:
            if refusal.status == 401:
                raise SignInRequired(request.url.path) from refusal
            raise

    return caller


def csrf_token(request: Request) -> str:
    """The token this session's forms carry; empty without a session cookie (a bearer
    caller sends no cookie, so a forged cross-site request has nothing to ride on)."""
    session = request.cookies.get(SESSION_COOKIE, "")
    if not session:
        return ""
    digest = hashlib.sha256(b"careweave-csrf|" + session.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def check_form_origin(
    request: Request,
    context: ApiContext,
    identity: Identity,
    sent_token: object,
    *,
    action: AuditAction = AuditAction.REVIEW_DECISION,
) -> None:
    """Refuse (403, audited) a form post whose CSRF token is not this session's, or whose
    Origin header names another origin than the API's own."""
    origin = request.headers.get("origin")
    own_origin = f"{request.url.scheme}://{request.url.netloc}"
    expected = csrf_token(request)
    token_ok = (
        bool(expected)
        and isinstance(sent_token, str)
        and hmac.compare_digest(sent_token.encode(), expected.encode())
    )
    if token_ok and (origin is None or origin == own_origin):
        return
    await context.audit(
        audit_entry(
            identity.subject,
            action,
            AuditOutcome.REFUSED,
            detail="form without this session's CSRF token or from another origin",
        )
    )
    raise ApiRefusal(403, "forbidden", "this form did not come from a Careweave page; reload it")
