"""Bearer tokens: Careweave's own issuer signs them, the API verifies them (PyJWT).

Careweave's issuer signs ES256 with a private key kept in a file (made on first use,
0600). Verification checks the signature, `iss`, `aud`, `exp`, `nbf` and `iat` (a small
leeway for clock skew) and maps the `roles` claim to Careweave's roles; unknown role
names are ignored. An external identity provider's tokens are accepted as well when
its JWKS URL and issuer are configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.decision_proof import sign_decision_proof, write_public_key
from models.errors import SecurityError
from models.identity import Identity, Role
from models.review import ReviewDecision
from models.settings import Settings

log = logging.getLogger("careweave.auth")

ALGORITHM = "ES256"
LEEWAY = timedelta(seconds=30)


class TokenRejected(SecurityError):
    """The token is missing, malformed, badly signed, expired or not meant for Careweave."""


def load_or_create_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The issuer's P-256 private key; a new one is written (0600) if the file is missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Created 0600 from the start: the key is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key (ES256 needs P-256)")
    return loaded


def api_signing_key(settings: Settings) -> ec.EllipticCurvePrivateKey:
    """The API's signing key (made on first use), its public half written beside it for the
    workers that check decision proofs (settings.resolved_signing_public_key_file)."""
    key = load_or_create_signing_key(settings.resolved_signing_key_file)
    try:
        write_public_key(key, settings.resolved_signing_public_key_file)
    except OSError as err:
        # A key mounted read-only in production: the workers are then given the public key
        # through CAREWEAVE_REVIEW_DECISION_PUBLIC_KEY_FILES; the API itself does not need it.
        log.warning(
            "cannot write the decision public key %s (%s); give workers the public key "
            "with CAREWEAVE_REVIEW_DECISION_PUBLIC_KEY_FILES",
            settings.resolved_signing_public_key_file,
            err.strerror,
        )
    return key


class TokenIssuer:
    """Signs access tokens for users of Careweave's own directory, and the proofs of the
    review decisions the API sends (another audience: neither can stand in for the other)."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        issuer: str,
        audience: str,
        ttl: timedelta,
        decision_proof_ttl: timedelta = timedelta(minutes=2),
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self.decision_proof_ttl = decision_proof_ttl

    def prove_decision(self, decision: ReviewDecision, *, workflow_id: str) -> ReviewDecision:
        """``decision`` with the proof the worker checks before it enters the history."""
        proof = sign_decision_proof(
            self._key,
            decision,
            workflow_id=workflow_id,
            issuer=self.issuer,
            ttl=self.decision_proof_ttl,
        )
        return decision.model_copy(update={"proof": proof})

    def issue(self, subject: str, roles: Iterable[Role], *, now: datetime | None = None) -> str:
        issued = now or datetime.now(UTC)
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "roles": sorted(role.value for role in roles),
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)


class TokenVerifier:
    """Verifies bearer tokens of Careweave's issuer and, optionally, of one external IdP."""

    def __init__(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        jwks_issuer: str | None = None,
    ) -> None:
        self._public_key = public_key
        self._issuer = issuer
        self._audience = audience
        self._jwks_issuer = jwks_issuer if jwks_url else None
        # 5 s, not PyJWKClient's 30 s: a hanging IdP must not hold a request thread that long.
        self._jwks = jwt.PyJWKClient(jwks_url, timeout=5) if jwks_url else None

    async def verify(self, token: str) -> Identity:
        # PyJWKClient fetches keys with blocking urllib (up to its timeout when the IdP hangs):
        # only the IdP's tokens go to a thread, so Careweave's own never queue behind a fetch.
        if self._jwks is not None and _claimed_issuer(token) == self._jwks_issuer:
            return await asyncio.to_thread(self.verify_sync, token)
        return self.verify_sync(token)

    def verify_sync(self, token: str) -> Identity:
        try:
            # Only to choose the key: the issuer is checked again with the signature below.
            claimed_issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            if claimed_issuer == self._issuer:
                key: object = self._public_key
                algorithms = [ALGORITHM]
            elif self._jwks is not None and claimed_issuer == self._jwks_issuer:
                key = self._jwks.get_signing_key_from_jwt(token).key
                algorithms = ["RS256", "ES256", "EdDSA"]
            else:
                raise TokenRejected("token from an unknown issuer")
            claims = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=algorithms,
                audience=self._audience,
                issuer=claimed_issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as err:
            raise TokenRejected("token expired") from err
        except jwt.InvalidAudienceError as err:
            raise TokenRejected("token not issued for this API") from err
        except (jwt.PyJWTError, ValueError) as err:
            raise TokenRejected("invalid token") from err
        raw_roles = claims.get("roles", [])
        if not isinstance(raw_roles, list):
            raise TokenRejected("invalid token: roles is not a list")
        known = {role.value for role in Role}
        roles = frozenset(Role(value) for value in raw_roles if value in known)
        return Identity(subject=str(claims["sub"]), roles=roles, issuer=str(claimed_issuer))


def _claimed_issuer(token: str) -> object:
    """The unverified `iss`, only to choose where to verify; None if the token is malformed."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None


def issuer_and_verifier(settings: Settings) -> tuple[TokenIssuer, TokenVerifier]:
    key = api_signing_key(settings)
    issuer = TokenIssuer(
        key,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        ttl=timedelta(seconds=settings.auth_token_ttl_seconds),
        decision_proof_ttl=timedelta(seconds=settings.review_decision_proof_ttl_seconds),
    )
    verifier = TokenVerifier(
        key.public_key(),
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        jwks_url=settings.auth_jwks_url,
        jwks_issuer=settings.auth_jwks_issuer,
    )
    return issuer, verifier
