"""What the review pages read: a partner's ACK in words, a reviewer's corrected message
checked before it is sent, and the unmapped lines of a result with their values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.hl7v2.ack import explain_ack
from adapters.hl7v2.correction import check_correction, where
from adapters.hl7v2.header import MessageRejected
from adapters.hl7v2.lab_messages import parse_lab_results
from exchanges.sdk import SUPPORTED_VERSIONS
from mappings.order_to_result.concept_map import (
    load_lab_mapping,
    loinc_candidates,
    unmapped_codes,
    unmapped_observations,
)
from models.lab import PatientRef
from models.review import (
    DeliveryFailureContext,
    PatientMismatchContext,
    ReviewAction,
    ReviewReason,
    ReviewRequest,
)
from workers import sample_messages as sm
from workers.api.reviews import DecisionBody, checked_edit
from workers.web.render import REVIEW_KINDS, templates
from workers.web.review_kinds import PatientMismatchView

STAY = sm.SampleStay("V-9001", sm.SamplePatient(mrn="MRN9001"))
A03 = sm.adt_event(STAY, "DS-9001-1", "A03")


def test_an_ack_with_a_v25_err_segment_is_told_in_words() -> None:
    ack = (
        "MSH|^~\\&|BILLING|GENHOSP-FIN|CAREWEAVE|GENHOSP|20261125||ACK^A03^ACK|A1|P|2.5.1\r"
        "MSA|AR|CW123\r"
        "ERR||PID^1^3|103^Unknown payer\\T\\plan^HL70357|E|||check the plan code|Call billing"
    )
    explained = explain_ack(ack)
    assert explained.code == "AR"
    assert explained.code_meaning.startswith("Application reject")
    assert explained.acknowledged_control_id == "CW123"
    [error] = explained.errors
    assert (error.location, error.code, error.code_meaning) == (
        "PID-3",
        "103",
        "Table value not found",
    )
    assert error.partner_text == "Unknown payer&plan"
    assert error.severity_meaning.startswith("Error")
    assert (error.diagnostic, error.user_message) == ("check the plan code", "Call billing")


def test_an_ack_before_v25_is_read_from_err_1() -> None:
    ack = "MSH|^~\\&|X|Y|Z|W|2026||ACK|A2|P|2.3\rMSA|AE|CW9|locked\rERR|PV1^1^19^206&Locked&HL70357"
    explained = explain_ack(ack)
    assert explained.code_meaning.startswith("Application error")
    assert explained.text == "locked"
    [error] = explained.errors
    assert (error.location, error.code, error.code_meaning) == (
        "PV1-19",
        "206",
        "Application record locked",
    )


def test_a_correction_of_the_same_type_passes_and_is_sent_with_cr_separators() -> None:
    edited = A03.replace("\r", "\r\n")  # a browser's textarea sends CRLF
    decoded = check_correction(edited, A03, supported_versions=SUPPORTED_VERSIONS)
    assert decoded.header.message_type == "ADT^A03"
    assert "\n" not in decoded.text


@pytest.mark.parametrize(
    ("edited", "place", "words"),
    [
        (A03.replace("ADT^A03^ADT_A03", "ADT^A08^ADT_A01"), "MSH-9", "must stay ADT^A03"),
        ("\r".join(s for s in A03.split("\r") if not s.startswith("PID")), "PID", "PID"),
        ("PID|1||MRN9001\rPV1|1", "MSH", "MSH"),
        (A03.replace("|2.5.1|", "||"), "MSH-12", "version"),
    ],
)
def test_a_correction_that_breaks_the_message_names_the_segment_or_field(
    edited: str, place: str, words: str
) -> None:
    with pytest.raises(MessageRejected) as refused:
        check_correction(edited, A03, supported_versions=SUPPORTED_VERSIONS)
    assert where(refused.value) == place
    assert words in refused.value.text


def test_unmapped_observations_carry_code_text_value_and_unit() -> None:
    order = sm.SampleOrder("CTX-1", local_code="ZZX9", text="Experimental")
    results = parse_lab_results(sm.lab_result(order, "CTX-1-R", [sm.UNMAPPED, sm.SODIUM]))
    mapping = load_lab_mapping("v1")
    unmapped = sorted({c for r in results for c in unmapped_codes(r, mapping)})
    lines = unmapped_observations(results, unmapped)
    # OBR-4 and the OBX share the local code: the line with the value is the one shown.
    assert [(o.coding_system, o.code, o.text, o.value, o.unit) for o in lines] == [
        ("L", "ZZX9", "Experimental marker", "12", "U/L")
    ]


def test_a_review_asked_before_contexts_existed_still_reads() -> None:
    old = {
        "review_id": "r1",
        "reason": "unmapped-code",
        "summary": "1 local code(s) have no LOINC mapping in mapping v1",
        "details": ["L|ZZX9"],
        "actions": {"approve": "publish"},
        "requested_at": "2026-11-25T08:30:00Z",
    }
    assert ReviewRequest.model_validate(old).context is None
    assert ReviewRequest.model_validate(old).reason is ReviewReason.UNMAPPED_CODE


def test_loinc_candidates_are_ranked_by_how_their_display_reads_like_the_local_text() -> None:
    mapping = load_lab_mapping("v1")
    ranked = loinc_candidates("Potassium serum", mapping)
    assert ranked[0].concept.code == "2823-3"
    assert ranked[0].similarity > ranked[1].similarity
    # Each LOINC once, though two local codes map to glucose.
    codes = [c.concept.code for c in loinc_candidates("Glucose", mapping, limit=20)]
    assert len(codes) == len(set(codes))
    assert loinc_candidates("  ", mapping) == []


def test_every_edit_decision_is_checked_against_the_message_sent_whatever_sends_it() -> None:
    pending = ReviewRequest(
        review_id="r1",
        reason=ReviewReason.DELIVERY_FAILED,
        summary="billing did not accept the discharge",
        requested_at=datetime(2026, 12, 3, tzinfo=UTC),
        context=DeliveryFailureContext(
            destination="billing",
            destination_kind="mllp",
            event_id="e1",
            attempts=3,
            sent_message=A03,
        ),
    )
    wrong_type = DecisionBody(
        review_id="r1",
        action=ReviewAction.EDIT,
        reason="fixed",
        edited_message=A03.replace("ADT^A03^ADT_A03", "ADT^A08^ADT_A01"),
    )
    with pytest.raises(MessageRejected) as refused:
        checked_edit(pending, wrong_type)
    assert where(refused.value) == "MSH-9"
    fine = wrong_type.model_copy(update={"edited_message": A03.replace("\r", "\n")})
    assert checked_edit(pending, fine).edited_message == A03.rstrip("\r") + "\r"


def test_a_patient_mismatch_review_shows_both_patients() -> None:
    context = PatientMismatchContext(
        order_patient=PatientRef(identifier="MRN9101", assigning_authority="GENHOSP"),
        result_patient=PatientRef(
            identifier="MRN9102", assigning_authority="GENHOSP", family_name="Other"
        ),
    )
    page = templates.env.get_template("kinds/patient-mismatch.html").render(
        view=PatientMismatchView(context)
    )
    assert "MRN9101" in page and "MRN9102" in page and "Other" in page
    assert REVIEW_KINDS[ReviewReason.PATIENT_MISMATCH].startswith("Result for another patient")
