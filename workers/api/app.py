"""`create_api`: the FastAPI app, its routers and its shared state, for one engine."""

from __future__ import annotations

import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from temporalio.client import Client
from temporalio.converter import PayloadCodec

from adapters.payload_crypto import KeyRing
from adapters.review_assignments import ReviewAssignments
from adapters.users import UserDirectory
from models.settings import Settings
from workers.api.auth import LoginThrottle
from workers.api.auth import router as auth_router
from workers.api.codec import router as codec_router
from workers.api.common import ApiRefusal, describe_errors, operation_outcome
from workers.api.context import ApiContext, AuditRecorder
from workers.api.merges import router as merges_router
from workers.api.refs import ExchangeRefs
from workers.api.reviews import router as reviews_router
from workers.api.search import router as search_router
from workers.api.temporal_ui import router as temporal_ui_router
from workers.auth import TokenIssuer, TokenVerifier, issuer_and_verifier
from workers.health import database_reachable, health_router, temporal_reachable
from workers.payload_codec import EncryptionCodec


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
    issuer, verifier = tokens or issuer_and_verifier(settings)
    users = users or UserDirectory.from_url(settings.resolved_database_url)

    app = FastAPI(title="Careweave review and codec API", docs_url=None, redoc_url=None)
    app.state.careweave = ApiContext(
        settings=settings,
        temporal_client=temporal_client,
        codec=codec,
        users=users,
        issuer=issuer,
        verifier=verifier,
        login_throttle=LoginThrottle(settings.auth_login_failures_per_minute),
        refs=ExchangeRefs(_reference_keys(codec)),
        assignments=ReviewAssignments(users.engine),
        record=record,
    )
    app.add_middleware(
        CORSMiddleware,
        # Exactly the Temporal UI's origins: credentials are allowed, so never a wildcard.
        allow_origins=settings.resolved_ui_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST"],
        allow_headers=["content-type", "x-namespace", "authorization"],
        max_age=600,
    )
    app.exception_handler(ApiRefusal)(_refusal)
    app.exception_handler(RequestValidationError)(_malformed)

    app.include_router(auth_router)
    app.add_api_route("/health", health, methods=["GET"])
    # Probes need no token: they say only whether Temporal and the database answer.
    app.include_router(
        health_router(
            {
                "temporal": temporal_reachable(temporal_client),
                "database": database_reachable(users.engine),
            }
        )
    )
    app.include_router(reviews_router)
    app.include_router(search_router)
    app.include_router(merges_router)
    app.include_router(codec_router)
    app.include_router(temporal_ui_router)
    # Imported here: the pages build on this package's modules (auth, reviews), so a
    # top-level import would be circular whichever package is imported first.
    from workers.web import mount_web

    mount_web(app)
    return app


def _reference_keys(codec: PayloadCodec | None) -> KeyRing:
    """The payload key ring, so references stay valid across restarts and API processes;
    without encryption (tests only) a key that lives as long as this app."""
    if isinstance(codec, EncryptionCodec):
        return codec.key_ring
    return KeyRing({"ephemeral": secrets.token_bytes(32)}, "ephemeral")


async def _refusal(_request: Request, err: ApiRefusal) -> JSONResponse:
    return JSONResponse(
        operation_outcome(err.code, err.message), status_code=err.status, headers=err.headers
    )


async def _malformed(_request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse(
        operation_outcome("invalid", describe_errors(err.errors())), status_code=422
    )


async def health() -> dict[str, str]:
    return {"status": "ok"}
