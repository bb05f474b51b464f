"""Token signing and verification (PyJWT, ES256) without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from models.identity import Role
from workers.auth import TokenIssuer, TokenRejected, TokenVerifier, load_or_create_signing_key


def pair(tmp_path: Path) -> tuple[TokenIssuer, TokenVerifier]:
    key = load_or_create_signing_key(tmp_path / "key.pem")
    issuer = TokenIssuer(key, issuer="careweave", audience="api", ttl=timedelta(minutes=5))
    return issuer, TokenVerifier(key.public_key(), issuer="careweave", audience="api")


def test_signing_key_is_made_once_and_private(tmp_path: Path) -> None:
    first = load_or_create_signing_key(tmp_path / "key.pem")
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    again = load_or_create_signing_key(tmp_path / "key.pem")
    assert first.private_numbers() == again.private_numbers()


def test_roles_claim_maps_to_known_roles_only(tmp_path: Path) -> None:
    issuer, verifier = pair(tmp_path)
    identity = verifier.verify_sync(issuer.issue("rev-1", [Role.REVIEWER, Role.OPS]))
    assert identity.subject == "rev-1"
    assert identity.roles == {Role.REVIEWER, Role.OPS}
    assert identity.issuer == "careweave"

    key = load_or_create_signing_key(tmp_path / "key.pem")
    now = datetime.now(UTC)
    claims = {"iss": "careweave", "aud": "api", "sub": "x", "iat": now, "exp": now + timedelta(60)}
    admin = jwt.encode({**claims, "roles": ["admin", "ops"]}, key, algorithm="ES256")
    assert verifier.verify_sync(admin).roles == {Role.OPS}
    with pytest.raises(TokenRejected, match="roles is not a list"):
        verifier.verify_sync(jwt.encode({**claims, "roles": "reviewer"}, key, algorithm="ES256"))
    without_subject = {k: v for k, v in claims.items() if k != "sub"}
    with pytest.raises(TokenRejected):
        verifier.verify_sync(jwt.encode(without_subject, key, algorithm="ES256"))


def test_time_claims_have_a_small_leeway_only(tmp_path: Path) -> None:
    issuer, verifier = pair(tmp_path)
    now = datetime.now(UTC)
    just_expired = issuer.issue(
        "rev-1", [Role.REVIEWER], now=now - timedelta(minutes=5, seconds=10)
    )
    assert verifier.verify_sync(just_expired).subject == "rev-1"
    long_expired = issuer.issue("rev-1", [Role.REVIEWER], now=now - timedelta(minutes=6))
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify_sync(long_expired)
    from_the_future = issuer.issue("rev-1", [Role.REVIEWER], now=now + timedelta(minutes=2))
    with pytest.raises(TokenRejected):
        verifier.verify_sync(from_the_future)


def test_a_symmetric_or_unsigned_token_is_refused(tmp_path: Path) -> None:
    _, verifier = pair(tmp_path)
    now = datetime.now(UTC)
    claims = {"iss": "careweave", "aud": "api", "sub": "x", "roles": ["reviewer"], "iat": now,
              "exp": now + timedelta(minutes=1)}  # fmt: skip
    with pytest.raises(TokenRejected):
        verifier.verify_sync(jwt.encode(claims, "guessable-secret-of-32-bytes-min!", "HS256"))
    with pytest.raises(TokenRejected):
        verifier.verify_sync(jwt.encode(claims, None, algorithm="none"))
