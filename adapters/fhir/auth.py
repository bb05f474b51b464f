"""Credentials for FHIR requests, as httpx.Auth: a static bearer token, or SMART Backend
Services (HL7 SMART App Launch 2.x, "Backend Services").

Backend Services is OAuth 2.0 client_credentials where the client authenticates with a
JWT it signs with its own private key (RFC 7523 private_key_jwt); the server knows only
the public key (JWKS). The access token is cached until shortly before it expires and
shared by every request of the client; a 401 drops it and the request is sent once more
with a fresh one (the server may have restarted or revoked it).

Failures are FhirErrors, sorted like the FHIR server's own: token endpoint unreachable
or 5xx is retryable; a refusal (invalid_client, invalid_scope ...) is rejected, with the
OAuth error code in the message. Neither message ever carries the key, assertion or token.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters.fhir.errors import (
    TRANSPORT_ERRORS,
    FhirRejectedError,
    FhirRetryableError,
    transport_failure,
)
from adapters.tls import client_tls_context
from models.fhir_auth import (
    BearerTokenAuth,
    FhirAuthConfig,
    FhirAuthConfigError,
    SmartAlgorithm,
    SmartBackendAuth,
)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The spec allows at most five minutes; less leaves room for a server clock a little behind.
ASSERTION_LIFETIME_SECONDS = 240
# SMART recommends expires_in; without it, assume a short life rather than a long one.
DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0
RETRYABLE_STATUS = frozenset({408, 425, 429})

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class BearerToken(httpx.Auth):
    """A token issued out of band, sent with every request."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerToken(***)"


@dataclass(frozen=True)
class AccessToken:
    value: str
    # time.monotonic() after which the token is not used again.
    refresh_at: float

    def __repr__(self) -> str:
        return f"AccessToken(***, refresh_at={self.refresh_at:.0f})"


class SmartBackendServices(httpx.Auth):
    """client_credentials + private_key_jwt; one cached token shared by concurrent requests.

    Async only (FhirClient is async): the token fetch and its lock live on the event loop.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        private_key: PrivateKey,
        key_id: str,
        algorithm: SmartAlgorithm,
        scope: str,
        timeout: float = 15.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self._private_key = private_key
        self._key_id = key_id
        self._algorithm = algorithm
        self._timeout = timeout
        # The FHIR client's context: a private CA (and client certificate) for the server
        # is the one its token endpoint is reached with too; else the system's CAs.
        self._tls = tls or client_tls_context()
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("SMART Backend Services authentication needs an async client")
        yield request  # pragma: no cover - makes this a generator like httpx expects

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.access_token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code != 401:
            return
        await self._forget(token)
        token = await self.access_token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    async def access_token(self) -> AccessToken:
        """The cached token, or a new one; concurrent callers wait for one fetch."""
        async with self._lock:
            if self._token is None or time.monotonic() >= self._token.refresh_at:
                self._token = await self._fetch()
            return self._token

    async def _forget(self, token: AccessToken) -> None:
        async with self._lock:
            # Several requests may fail with the same token; only the first drops it,
            # the others then use the replacement instead of fetching again.
            if self._token is token:
                self._token = None

    async def _fetch(self) -> AccessToken:
        assertion = client_assertion(
            client_id=self.client_id,
            token_url=self.token_url,
            private_key=self._private_key,
            key_id=self._key_id,
            algorithm=self._algorithm,
        )
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=self._timeout, verify=self._tls) as http:
                response = await http.post(
                    self.token_url, data=form, headers={"Accept": "application/json"}
                )
        except TRANSPORT_ERRORS as err:
            raise transport_failure("token endpoint", err) from err
        return _token_or_raise(response, started)


def client_assertion(
    *,
    client_id: str,
    token_url: str,
    private_key: PrivateKey,
    key_id: str,
    algorithm: SmartAlgorithm,
    now: float | None = None,
) -> str:
    """The signed JWT that authenticates the client to the token endpoint (one use: jti)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(
        claims, private_key, algorithm=algorithm, headers={"kid": key_id, "typ": "JWT"}
    )


def _token_or_raise(response: httpx.Response, started: float) -> AccessToken:
    status = response.status_code
    body = _json_object(response)
    if status >= 500 or status in RETRYABLE_STATUS:
        raise FhirRetryableError(f"token endpoint: HTTP {status}", status_code=status)
    if status >= 300:
        raise FhirRejectedError(status, None, diagnostics=_oauth_error(body))
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise FhirRejectedError(
            status, None, diagnostics="token endpoint answered without an access_token"
        )
    lifetime = body.get("expires_in")
    seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else None
    seconds = seconds or DEFAULT_TOKEN_LIFETIME_SECONDS
    # Refresh a little early: the request carrying the token still has to reach the server.
    margin = min(30.0, seconds / 10)
    return AccessToken(access_token, refresh_at=started + seconds - margin)


def _oauth_error(body: dict[str, Any]) -> str:
    """RFC 6749 5.2: `error` is a code from a fixed list; the description is the server's."""
    code = body.get("error")
    if not isinstance(code, str):
        return "token endpoint refused the client (no OAuth error code)"
    description = body.get("error_description")
    detail = f" ({description[:200]})" if isinstance(description, str) and description else ""
    return f"token endpoint refused the client: {code}{detail}"


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def auth_from_config(
    config: FhirAuthConfig | None,
    *,
    where: str,
    timeout: float = 15.0,
    tls: ssl.SSLContext | None = None,
) -> httpx.Auth | None:
    """Read the secret the configuration points at; a missing one is named, with `where`.
    ``tls`` is the FHIR client's context, used for the SMART token endpoint too."""
    if config is None:
        return None
    if isinstance(config, BearerTokenAuth):
        token = os.environ.get(config.token_env)
        if not token:
            raise FhirAuthConfigError(
                f"{where}: token_env: environment variable {config.token_env} is not set"
            )
        return BearerToken(token)
    return SmartBackendServices(
        token_url=config.token_url,
        client_id=config.client_id,
        private_key=load_private_key(config, where=where),
        key_id=config.key_id,
        algorithm=config.algorithm,
        scope=config.scope,
        timeout=timeout,
        tls=tls,
    )


def load_private_key(config: SmartBackendAuth, *, where: str) -> PrivateKey:
    """The PEM private key of the client, checked against the algorithm it will sign with."""
    path: Path = config.private_key_file
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FhirAuthConfigError(
            f"{where}: private_key_file: cannot read {path} ({err.strerror})"
        ) from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise FhirAuthConfigError(
            f"{where}: private_key_file: {path} is not an unencrypted PEM private key"
        ) from err
    if config.algorithm == "RS384" and isinstance(key, rsa.RSAPrivateKey):
        return key
    if (
        config.algorithm == "ES384"
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP384R1)
    ):
        return key
    wanted = "an RSA key" if config.algorithm == "RS384" else "an EC P-384 key"
    raise FhirAuthConfigError(
        f"{where}: private_key_file: {path} is not {wanted}, as algorithm {config.algorithm} needs"
    )
