"""The identity scorer: hand-made hard cases, its field-by-field explanation, the weights
file it reads, and that a conflict never makes a match."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mappings.identity.match import load_match_weights, score_match
from models.patient_match import Demographics, MatchDecision

HARD_CASES = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "identity_hard_cases.json").read_text()
)["cases"]
GRACE = Demographics(
    family="Thompson",
    given=("Grace",),
    birth_date="1948-12-30",
    sex="F",
    address_line="5 Church Close",
    city="Norwich",
    postal_code="NR2 4PE",
    phone="+44 1603 496 0500",
)


def like_grace(**changes: Any) -> Demographics:
    # Built anew, not model_copy: the birth date validator must see the new value.
    return Demographics(**{**GRACE.model_dump(), **changes})


@pytest.mark.parametrize("case", HARD_CASES, ids=[case["name"] for case in HARD_CASES])
def test_hard_cases_get_the_decision_a_registrar_would_want(case: dict[str, Any]) -> None:
    score = score_match(Demographics(**case["left"]), Demographics(**case["right"]))
    assert score.decision == MatchDecision(case["expected"]), score.model_dump_json(indent=1)


def test_the_score_explains_itself_field_by_field_with_the_weights_file() -> None:
    weights = load_match_weights("v1")
    other = like_grace(family="Thomspon", phone="01603 496 0500")

    score = score_match(GRACE, other)

    assert score.weights_version == "v1"
    family = score.field_named("family_name")
    assert (family.left, family.right, family.agreement) == ("Thompson", "Thomspon", "close")
    close = next(lv for lv in weights.fields["family_name"].levels if lv.name == "close")
    assert family.weight == pytest.approx(math.log2(close.m / close.u), abs=1e-3)
    # The national number agrees whether or not the country prefix was typed.
    assert score.field_named("phone").agreement == "exact"
    assert score.total == pytest.approx(sum(field.weight for field in score.fields), abs=1e-3)
    assert [field.field for field in score.fields] == [
        "family_name",
        "given_name",
        "birth_date",
        "sex",
        "address_line",
        "city",
        "postal_code",
        "phone",
    ]


def test_a_disagreement_weighs_log2_of_the_complements() -> None:
    weights = load_match_weights()
    sex = weights.fields["sex"]
    score = score_match(GRACE, like_grace(sex="M"))
    expected = math.log2((1 - sex.levels[0].m) / (1 - sex.levels[0].u))
    assert score.field_named("sex").agreement == "disagree"
    assert score.field_named("sex").weight == pytest.approx(expected, abs=1e-3)


def test_a_missing_field_weighs_nothing() -> None:
    score = score_match(GRACE, like_grace(phone="", sex="U"))
    for field in ("phone", "sex"):
        assert score.field_named(field).agreement == "missing"
        assert score.field_named(field).weight == 0.0


@pytest.mark.parametrize(
    ("other_birth_date", "agreement"),
    [("1948-12-30", "exact"), ("1948-12-31", "one_typo"), ("1948-03-12", "disagree")],
)
def test_birth_date_levels(other_birth_date: str, agreement: str) -> None:
    score = score_match(GRACE, like_grace(birth_date=other_birth_date))
    assert score.field_named("birth_date").agreement == agreement


def test_day_and_month_transposed_is_its_own_level() -> None:
    left = like_grace(birth_date="1948-04-09")
    right = like_grace(birth_date="1948-09-04")
    assert score_match(left, right).field_named("birth_date").agreement == "transposed"


@pytest.mark.parametrize("field", ["birth_date", "sex"])
def test_a_conflict_on_birth_date_or_sex_is_never_a_match_however_high_the_total(
    field: str,
) -> None:
    other = like_grace(**({"birth_date": "1971-06-15"} if field == "birth_date" else {"sex": "M"}))
    score = score_match(GRACE, other)
    assert score.total >= score.match_threshold
    assert score.conflicts == (field,)
    assert score.decision == MatchDecision.REVIEW


def test_an_unknown_weights_version_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: v1"):
        load_match_weights("v9")
