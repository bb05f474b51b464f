"""The review and codec API: reviewers decide, operators look, the Temporal UI decodes.

FastAPI, because its OAuth2 password form, typed request models and exception handlers
give the token endpoint and the 4xx OperationOutcome answers without hand-written parsing;
served by uvicorn (`careweave api` alone, or in-process in `careweave up`).

Every route but the login pages needs a verified token (workers/auth.py): a bearer
token, or for the codec routes only, the HttpOnly session cookie set by `/login`, so
the Temporal UI's browser calls carry the operator's identity. Every refusal is a FHIR
OperationOutcome; logins, decisions, decodes and review-list access are audited.

One router per concern: `auth` (tokens, login pages, the `authorized` dependency),
`reviews`, `codec`; `create_api` (app.py) puts them together with the state they share
(`ApiContext`, context.py) and `serving_api` (server.py) serves the result.
"""

from workers.api.app import create_api
from workers.api.auth import SESSION_COOKIE, SESSION_COOKIE_PATH, TokenResponse
from workers.api.common import ApiRefusal, operation_outcome
from workers.api.context import ApiContext, AuditRecorder
from workers.api.reviews import TEMPORAL_RPC_TIMEOUT, DecisionBody, PendingReview
from workers.api.server import serving_api

__all__ = [
    "SESSION_COOKIE",
    "SESSION_COOKIE_PATH",
    "TEMPORAL_RPC_TIMEOUT",
    "ApiContext",
    "ApiRefusal",
    "AuditRecorder",
    "DecisionBody",
    "PendingReview",
    "TokenResponse",
    "create_api",
    "operation_outcome",
    "serving_api",
]
