"""Review decision proofs (adapters/decision_proof.py): signed by the API, checked by the
worker against public keys only; a proof binds one exchange, one review and every field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from adapters.decision_proof import (
    DecisionProofKeys,
    DecisionProofRefused,
    verify_decision_proof,
)
from models.identity import Role
from models.review import ReviewAction, ReviewDecision
from models.settings import Settings
from workers.auth import TokenIssuer, TokenRejected, issuer_and_verifier, load_or_create_signing_key

WORKFLOW = "order-to-result/GENHOSP/0f3c"
DECISION = ReviewDecision(
    review_id="r1",
    action=ReviewAction.APPROVE,
    reason="local code checked with the lab",
    reviewer="rev-1",
    reviewer_role="reviewer",
    identity_issuer="careweave",
)


def api_issuer(tmp_path: Path) -> tuple[TokenIssuer, DecisionProofKeys]:
    settings = Settings(state_dir=tmp_path)
    issuer, _ = issuer_and_verifier(settings)
    keys = DecisionProofKeys(settings.resolved_decision_public_key_files, issuer="careweave")
    return issuer, keys


def test_the_api_writes_its_public_key_beside_the_private_one(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    issuer_and_verifier(settings)
    [public] = settings.resolved_decision_public_key_files
    assert public == tmp_path / "auth-signing-key.pub.pem"
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert b"PRIVATE" not in public.read_bytes()


def test_a_proven_decision_passes(tmp_path: Path) -> None:
    issuer, keys = api_issuer(tmp_path)
    keys.verify(issuer.prove_decision(DECISION, workflow_id=WORKFLOW), workflow_id=WORKFLOW)


@pytest.mark.parametrize(
    ("change", "refused_because"),
    [
        ({"proof": None}, "carries no proof"),
        ({"reason": "approved, trust me"}, "reason or edited message"),
        ({"edited_message": "MSH|^~\\&|X"}, "reason or edited message"),
        ({"reviewer": "chief-of-medicine"}, "reviewer"),
        ({"action": ReviewAction.REJECT}, "action"),
        ({"reviewer_role": "ops"}, "role"),
        ({"review_id": "r2"}, "for another review"),
    ],
)
def test_a_decision_changed_after_signing_is_refused(
    tmp_path: Path, change: dict[str, object], refused_because: str
) -> None:
    issuer, keys = api_issuer(tmp_path)
    proven = issuer.prove_decision(DECISION, workflow_id=WORKFLOW)
    with pytest.raises(DecisionProofRefused, match=refused_because):
        keys.verify(proven.model_copy(update=change), workflow_id=WORKFLOW)


def test_a_proof_for_another_exchange_is_refused(tmp_path: Path) -> None:
    issuer, keys = api_issuer(tmp_path)
    proven = issuer.prove_decision(DECISION, workflow_id="order-to-result/GENHOSP/other")
    with pytest.raises(DecisionProofRefused, match="another exchange"):
        keys.verify(proven, workflow_id=WORKFLOW)


def test_a_proof_by_another_key_is_refused(tmp_path: Path) -> None:
    _, keys = api_issuer(tmp_path / "api")
    impostor = TokenIssuer(
        load_or_create_signing_key(tmp_path / "impostor.pem"),
        issuer="careweave",
        audience="careweave-api",
        ttl=timedelta(hours=1),
    )
    with pytest.raises(DecisionProofRefused, match="not signed by a key this worker trusts"):
        keys.verify(impostor.prove_decision(DECISION, workflow_id=WORKFLOW), workflow_id=WORKFLOW)


def test_an_expired_proof_is_refused(tmp_path: Path) -> None:
    _, keys = api_issuer(tmp_path)
    short = TokenIssuer(
        load_or_create_signing_key(tmp_path / "auth-signing-key.pem"),
        issuer="careweave",
        audience="careweave-api",
        ttl=timedelta(hours=1),
        decision_proof_ttl=timedelta(seconds=-60),
    )
    with pytest.raises(DecisionProofRefused, match="expired"):
        keys.verify(short.prove_decision(DECISION, workflow_id=WORKFLOW), workflow_id=WORKFLOW)


def test_a_login_token_is_no_proof_and_a_proof_is_no_login_token(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    issuer, verifier = issuer_and_verifier(settings)
    keys = DecisionProofKeys(settings.resolved_decision_public_key_files, issuer="careweave")
    login = issuer.issue("rev-1", [Role.REVIEWER])
    with pytest.raises(DecisionProofRefused, match=r"proof is invalid|not a decision proof"):
        keys.verify(DECISION.model_copy(update={"proof": login}), workflow_id=WORKFLOW)
    proof = issuer.prove_decision(DECISION, workflow_id=WORKFLOW).proof
    assert proof is not None
    with pytest.raises(TokenRejected, match="not issued for this API"):
        verifier.verify_sync(proof)


def test_the_worker_reads_a_key_written_after_it_started(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    keys = DecisionProofKeys(settings.resolved_decision_public_key_files, issuer="careweave")
    with pytest.raises(DecisionProofRefused, match="does not exist"):
        keys.verify(DECISION.model_copy(update={"proof": "x.y.z"}), workflow_id=WORKFLOW)
    issuer, _ = issuer_and_verifier(settings)  # the API starts and writes its public key
    keys.verify(issuer.prove_decision(DECISION, workflow_id=WORKFLOW), workflow_id=WORKFLOW)


def test_verification_needs_keys(tmp_path: Path) -> None:
    issuer, _ = api_issuer(tmp_path)
    proven = issuer.prove_decision(DECISION, workflow_id=WORKFLOW)
    with pytest.raises(DecisionProofRefused, match="no public key"):
        verify_decision_proof(proven, workflow_id=WORKFLOW, keys=[], issuer="careweave")
