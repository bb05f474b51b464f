"""Fellegi-Sunter match score between two patients' demographics (pure functions).

Each field is compared on its own and lands on an agreement level of the weights file
(``match_weights.<version>.toml``); the level's weight is log2(m/u), a disagreement's
log2((1 - sum m) / (1 - sum u)), a field empty on either side weighs 0. The total is the
log2 likelihood ratio "same person" against "two people", under the usual assumption
that fields disagree independently. String similarity is rapidfuzz's; nothing here
measures strings by hand.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, JaroWinkler, Levenshtein

from mappings import versioned
from models.patient_match import Demographics, FieldComparison, MatchDecision, MatchScore

__all__ = [
    "FieldWeights",
    "MatchWeights",
    "WeightLevel",
    "available_versions",
    "load_match_weights",
    "score_match",
]

_PACKAGE = "mappings.identity"
_STEM = "match_weights"
DISAGREE = "disagree"
MISSING = "missing"
_COMPARATORS = frozenset({"jaro_winkler", "token_sort", "characters", "birth_date", "exact"})
_BIRTH_DATE_LEVELS = frozenset({"exact", "transposed", "one_typo"})
_NOT_WORD = re.compile(r"[^0-9a-z ]+")
_SPACES = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_NOT_DIGITS = re.compile(r"[^0-9]+")
# PID-8 values that say nothing about the patient's sex (HL7 table 0001).
_UNKNOWN_SEX = frozenset({"", "u", "unknown"})


@dataclass(frozen=True)
class WeightLevel:
    name: str
    m: float
    u: float
    # jaro_winkler / token_sort: the similarity a pair needs (1.0 for "exact").
    min_similarity: float = 1.0
    # characters: how many characters may differ (0 for "exact").
    max_differences: int = 0

    @property
    def weight(self) -> float:
        return math.log2(self.m / self.u)


@dataclass(frozen=True)
class FieldWeights:
    field: str
    comparator: str
    levels: tuple[WeightLevel, ...]

    @property
    def disagreement_weight(self) -> float:
        m = 1.0 - sum(level.m for level in self.levels)
        u = 1.0 - sum(level.u for level in self.levels)
        return math.log2(m / u)


@dataclass(frozen=True)
class MatchWeights:
    """One version of ``match_weights.<version>.toml``."""

    version: str
    match_threshold: float
    review_threshold: float
    never_match_on_disagreement: frozenset[str]
    required_for_match: frozenset[str]
    fields: dict[str, FieldWeights]


def available_versions() -> list[str]:
    return versioned.available_versions(_PACKAGE, _STEM)


def load_match_weights(version: str = "v1") -> MatchWeights:
    """Load one weights version (cached: package data never changes at runtime).

    Raises ValueError naming the known versions when ``version`` does not exist, and
    naming the field when a level's m or u is not a probability.
    """
    return _load(version)


@cache
def _load(version: str) -> MatchWeights:
    data = versioned.read_version(_PACKAGE, _STEM, version, what="identity match")
    decision = data["decision"]
    fields = {name: _field_weights(name, table, version) for name, table in data["fields"].items()}
    match_threshold = float(decision["match_threshold"])
    review_threshold = float(decision["review_threshold"])
    if review_threshold > match_threshold:
        raise ValueError(f"match_weights.{version}: review_threshold is above match_threshold")
    never_match = frozenset(str(name) for name in decision["never_match_on_disagreement"])
    required = frozenset(str(name) for name in decision["required_for_match"])
    unknown = (never_match | required) - fields.keys()
    if unknown:
        raise ValueError(f"match_weights.{version}: [decision] names no field {sorted(unknown)}")
    return MatchWeights(version, match_threshold, review_threshold, never_match, required, fields)


def _field_weights(name: str, table: dict[str, object], version: str) -> FieldWeights:
    where = f"match_weights.{version} [fields.{name}]"
    comparator = str(table["comparator"])
    if comparator not in _COMPARATORS:
        raise ValueError(f"{where}: unknown comparator {comparator!r}")
    raw_levels = table["levels"]
    assert isinstance(raw_levels, list)
    levels = tuple(
        WeightLevel(
            name=str(level["name"]),
            m=float(level["m"]),
            u=float(level["u"]),
            min_similarity=float(level.get("min_similarity", 1.0)),
            max_differences=int(level.get("max_differences", 0)),
        )
        for level in raw_levels
    )
    if not levels or levels[0].name != "exact":
        raise ValueError(f"{where}: the first level must be 'exact'")
    for level in levels:
        if not (0.0 < level.m < 1.0 and 0.0 < level.u < 1.0):
            raise ValueError(f"{where}: level {level.name!r} needs 0 < m, u < 1")
    if sum(level.m for level in levels) >= 1.0 or sum(level.u for level in levels) >= 1.0:
        raise ValueError(f"{where}: the levels' m (and u) must leave room for disagreement")
    if comparator == "birth_date" and not {lv.name for lv in levels} <= _BIRTH_DATE_LEVELS:
        raise ValueError(f"{where}: birth_date levels are {sorted(_BIRTH_DATE_LEVELS)}")
    return FieldWeights(name, comparator, levels)


# -- normalisation: what two registration clerks would both consider the same text ----------


def _folded(text: str) -> str:
    # Accents dropped (Müller / Muller), case folded, punctuation to spaces (O'Brien).
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", plain.casefold())).strip()


def _name(text: str) -> str:
    # Names compare without spaces or hyphens: "Mc Donald", "McDonald", "Smith-Jones".
    return _folded(text).replace(" ", "")


def _code(text: str) -> str:
    return _NOT_ALNUM.sub("", text.casefold())


def _phone(text: str) -> str:
    # The national number: a country prefix or trunk zero one side omits is not a difference.
    digits = _NOT_DIGITS.sub("", text)
    return digits[-9:]


def _sex(text: str) -> str:
    value = text.strip().casefold()
    return "" if value in _UNKNOWN_SEX else value[:1]


# -- comparing one field ------------------------------------------------------------------


def _similarity(comparator: str, left: str, right: str) -> float:
    if comparator == "token_sort":
        return float(fuzz.token_sort_ratio(left, right)) / 100.0
    return float(JaroWinkler.normalized_similarity(left, right))


def _level_reached(weights: FieldWeights, left: str, right: str) -> tuple[str, float | None]:
    """The first level the two normalised values reach (or "disagree"), and the similarity
    it was judged on when the comparator measures one."""
    if left == right:
        return "exact", 1.0 if weights.comparator in ("jaro_winkler", "token_sort") else None
    comparator = weights.comparator
    if comparator in ("jaro_winkler", "token_sort"):
        similarity = _similarity(comparator, left, right)
        for level in weights.levels[1:]:
            if similarity >= level.min_similarity:
                return level.name, similarity
        return DISAGREE, similarity
    if comparator == "characters":
        differences = Levenshtein.distance(left, right)
        for level in weights.levels[1:]:
            if differences <= level.max_differences:
                return level.name, None
        return DISAGREE, None
    if comparator == "birth_date":
        return _birth_date_level(weights, left, right), None
    return DISAGREE, None


def _birth_date_level(weights: FieldWeights, left: str, right: str) -> str:
    names = {level.name for level in weights.levels}
    if len(left) == 8 and len(right) == 8:
        swapped = left[:4] + left[6:8] + left[4:6]
        if "transposed" in names and swapped == right and int(left[4:6]) <= 12:
            return "transposed"
        # One digit wrong, or two neighbouring digits swapped (1931-07-15 keyed 1931-01-75).
        if "one_typo" in names and OSA.distance(left, right) == 1:
            return "one_typo"
    return DISAGREE


def _compare(
    weights: FieldWeights, field: str, left_shown: str, right_shown: str, left: str, right: str
) -> FieldComparison:
    if not left or not right:
        return FieldComparison(
            field=field, left=left_shown, right=right_shown, agreement=MISSING, weight=0.0
        )
    agreement, similarity = _level_reached(weights, left, right)
    by_name = {level.name: level for level in weights.levels}
    weight = weights.disagreement_weight if agreement == DISAGREE else by_name[agreement].weight
    return FieldComparison(
        field=field,
        left=left_shown,
        right=right_shown,
        agreement=agreement,
        similarity=None if similarity is None else round(similarity, 4),
        weight=round(weight, 4),
    )


def _given_pair(left: Sequence[str], right: Sequence[str]) -> tuple[str, str]:
    """The two given names to compare: the most similar pair, so a patient registered once
    by first and once by middle name ("Anne Marie" / "Marie") is not a disagreement."""
    left_names = [name for name in left if _name(name)] or [""]
    right_names = [name for name in right if _name(name)] or [""]
    return max(
        itertools.product(left_names, right_names),
        key=lambda pair: JaroWinkler.normalized_similarity(_name(pair[0]), _name(pair[1])),
    )


def _names(
    weights: MatchWeights, left: Demographics, right: Demographics
) -> tuple[list[FieldComparison], bool]:
    """Family and given name, straight or crosswise, whichever agrees more: a clerk who
    typed the given name into the family field made no other difference."""
    family, given = weights.fields["family_name"], weights.fields["given_name"]
    left_given, right_given = _given_pair(left.given, right.given)
    straight = [
        _compare(
            family,
            "family_name",
            left.family,
            right.family,
            _name(left.family),
            _name(right.family),
        ),
        _compare(
            given, "given_name", left_given, right_given, _name(left_given), _name(right_given)
        ),
    ]
    right_first_given = right.given[0] if right.given else ""
    left_first_given = left.given[0] if left.given else ""
    crossed = [
        _compare(
            family,
            "family_name",
            left.family,
            right_first_given,
            _name(left.family),
            _name(right_first_given),
        ),
        _compare(
            given,
            "given_name",
            left_first_given,
            right.family,
            _name(left_first_given),
            _name(right.family),
        ),
    ]
    crossed_is_better = all(c.agreement not in (DISAGREE, MISSING) for c in crossed) and sum(
        c.weight for c in crossed
    ) > sum(c.weight for c in straight)
    return (crossed, True) if crossed_is_better else (straight, False)


_OTHER_FIELDS: tuple[tuple[str, Callable[[Demographics], str], Callable[[str], str]], ...] = (
    ("birth_date", lambda d: d.birth_date, lambda value: _NOT_DIGITS.sub("", value)[:8]),
    ("sex", lambda d: d.sex, _sex),
    ("address_line", lambda d: d.address_line, _folded),
    ("city", lambda d: d.city, _folded),
    ("postal_code", lambda d: d.postal_code, _code),
    ("phone", lambda d: d.phone, _phone),
)


def score_match(
    left: Demographics, right: Demographics, weights: MatchWeights | None = None
) -> MatchScore:
    """Compare two patients field by field and decide match / review / non-match.

    "match" needs the total at or above the match threshold, no full disagreement on a
    field the weights file names in ``never_match_on_disagreement`` (birth date, sex,
    names) and a value on both sides of every field in ``required_for_match``; a pair
    above the threshold that fails either is "review" instead.
    """
    weights = weights or load_match_weights()
    comparisons, names_swapped = _names(weights, left, right)
    for field, read, normalise in _OTHER_FIELDS:
        if field not in weights.fields:
            continue
        left_value, right_value = read(left), read(right)
        comparisons.append(
            _compare(
                weights.fields[field],
                field,
                left_value,
                right_value,
                normalise(left_value),
                normalise(right_value),
            )
        )
    total = round(sum(comparison.weight for comparison in comparisons), 4)
    conflicts = tuple(
        c.field
        for c in comparisons
        if c.agreement == DISAGREE and c.field in weights.never_match_on_disagreement
    )
    missing_required = tuple(
        c.field
        for c in comparisons
        if c.agreement == MISSING and c.field in weights.required_for_match
    )
    if total >= weights.match_threshold and not conflicts and not missing_required:
        decision = MatchDecision.MATCH
    elif total >= weights.review_threshold:
        decision = MatchDecision.REVIEW
    else:
        decision = MatchDecision.NON_MATCH
    return MatchScore(
        weights_version=weights.version,
        total=total,
        decision=decision,
        match_threshold=weights.match_threshold,
        review_threshold=weights.review_threshold,
        fields=tuple(comparisons),
        conflicts=conflicts,
        missing_required=missing_required,
        names_swapped=names_swapped,
    )
