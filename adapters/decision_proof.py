"""Proof that a review decision came through Careweave's API: a short-lived ES256 signature.

The API signs each decision it sends (workers/auth.py TokenIssuer.prove_decision) with the
same key as its login tokens but for another audience, so a login token can never stand in
for a proof, nor a proof for a login token. The claims bind the decision to one exchange
(workflow id) and one review, and cover every field a reviewer chose: action, reviewer
subject, role, the identity provider that vouched for them, and a digest of the reason and
the edited message. The worker checks the proof against public keys only
(workers/decision_proof_interceptor.py): it never holds the private key.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from models.errors import ConfigurationError, SecurityError
from models.review import ReviewDecision

DECISION_PROOF_AUDIENCE = "careweave-review-decision"
ALGORITHM = "ES256"
# Clock skew between the API's and the worker's machines.
LEEWAY = timedelta(seconds=30)
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "wf", "rid", "act", "dig"]


class DecisionProofRefused(SecurityError):
    """A decision whose proof is missing, not signed by a trusted key, or not for it."""


class UntrustedDecisionKey(DecisionProofRefused):
    """The proof is signed by none of the keys held (or none are held)."""


class DecisionKeyError(ConfigurationError, ValueError):
    """A configured decision public key file is missing or is not an EC public key."""


def decision_digest(decision: ReviewDecision) -> str:
    """SHA-256 (hex) of the reason and edited message: the free text the proof covers."""
    canonical = json.dumps(
        {"reason": decision.reason, "edited_message": decision.edited_message},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _bound_claims(decision: ReviewDecision, workflow_id: str) -> dict[str, object]:
    return {
        "sub": decision.reviewer,
        "wf": workflow_id,
        "rid": decision.review_id,
        "act": decision.action.value,
        "role": decision.reviewer_role,
        "idp": decision.identity_issuer,
        "dig": decision_digest(decision),
    }


def sign_decision_proof(
    key: ec.EllipticCurvePrivateKey,
    decision: ReviewDecision,
    *,
    workflow_id: str,
    issuer: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> str:
    """The proof (a JWT) for ``decision`` sent to the exchange ``workflow_id``."""
    issued = now or datetime.now(UTC)
    claims = {
        **_bound_claims(decision, workflow_id),
        "iss": issuer,
        "aud": DECISION_PROOF_AUDIENCE,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify_decision_proof(
    decision: ReviewDecision,
    *,
    workflow_id: str,
    keys: Sequence[ec.EllipticCurvePublicKey],
    issuer: str,
) -> None:
    """Raise DecisionProofRefused, saying why, unless ``decision.proof`` is a valid proof
    by one of ``keys`` for exactly this decision sent to ``workflow_id``."""
    if not decision.proof:
        raise DecisionProofRefused(
            "the decision carries no proof that it came through Careweave's API"
        )
    if not keys:
        raise UntrustedDecisionKey("this worker has no public key to check decision proofs with")
    claims: dict[str, object] | None = None
    for key in keys:
        try:
            claims = jwt.decode(
                decision.proof,
                key,
                algorithms=[ALGORITHM],
                audience=DECISION_PROOF_AUDIENCE,
                issuer=issuer,
                leeway=LEEWAY,
                options={"require": _REQUIRED},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError as err:
            raise DecisionProofRefused("the decision's proof has expired") from err
        except jwt.InvalidAudienceError as err:
            raise DecisionProofRefused("the proof is not a decision proof") from err
        except jwt.InvalidIssuerError as err:
            raise DecisionProofRefused("the decision's proof is from another issuer") from err
        except jwt.PyJWTError as err:
            raise DecisionProofRefused(f"the decision's proof is invalid ({err})") from err
    if claims is None:
        raise UntrustedDecisionKey("the decision's proof is not signed by a key this worker trusts")
    expected = _bound_claims(decision, workflow_id)
    if claims.get("wf") != workflow_id:
        raise DecisionProofRefused("the decision's proof is for another exchange")
    if claims.get("rid") != decision.review_id:
        raise DecisionProofRefused("the decision's proof is for another review")
    altered = sorted(name for name, value in expected.items() if claims.get(name) != value)
    if altered:
        names = {
            "sub": "reviewer",
            "act": "action",
            "role": "role",
            "idp": "identity issuer",
            "dig": "reason or edited message",
        }
        raise DecisionProofRefused(
            "the decision differs from what its proof covers: "
            + ", ".join(names.get(name, name) for name in altered)
        )


def write_public_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    """Write (or refresh) the public key file, readable by the worker's account (0644)."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if path.exists() and path.read_bytes() == pem:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(pem)
    partial.chmod(0o644)
    # Replaced in one step: a worker reading it meanwhile sees the old key or the new one.
    partial.replace(path)


def read_public_keys(paths: Sequence[Path]) -> list[ec.EllipticCurvePublicKey]:
    """The EC public keys in ``paths`` (PEM); DecisionKeyError names a file that cannot serve."""
    keys = []
    for path in paths:
        try:
            loaded = serialization.load_pem_public_key(path.read_bytes())
        except FileNotFoundError as err:
            raise DecisionKeyError(f"decision public key file {path} does not exist") from err
        except (OSError, ValueError) as err:
            raise DecisionKeyError(
                f"decision public key file {path} cannot be read: {err}"
            ) from err
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise DecisionKeyError(f"{path}: not an EC public key (ES256 needs P-256)")
        keys.append(loaded)
    return keys


class DecisionProofKeys:
    """The public keys a worker checks proofs with, read from files.

    Read at start when the files exist; read again when a proof matches none of the keys
    held (the API's first start writes its key after the worker may have started, and a
    replaced API key needs no worker restart). Safe to share between workflow threads: the
    key list is replaced, never changed in place.
    """

    def __init__(self, paths: Sequence[Path], *, issuer: str) -> None:
        self.paths = list(paths)
        self.issuer = issuer
        self._keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
        try:
            self._keys = tuple(read_public_keys(self.paths))
        except DecisionKeyError:
            pass  # not written yet; verify() says so if it still is not there then

    def verify(self, decision: ReviewDecision, *, workflow_id: str) -> None:
        """Raise DecisionProofRefused unless ``decision`` carries a valid proof for
        ``workflow_id``."""
        try:
            verify_decision_proof(
                decision, workflow_id=workflow_id, keys=self._keys, issuer=self.issuer
            )
        except UntrustedDecisionKey:
            try:
                self._keys = tuple(read_public_keys(self.paths))
            except DecisionKeyError as err:
                raise UntrustedDecisionKey(
                    f"this worker cannot check decision proofs: {err}"
                ) from err
            verify_decision_proof(
                decision, workflow_id=workflow_id, keys=self._keys, issuer=self.issuer
            )
