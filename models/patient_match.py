"""Two patients' demographics and the explained match score between them.

Read by the identity scorer (mappings/identity/) and carried, encrypted, in the payloads a
merge reviewer sees. Everything here is PHI: payloads only, never workflow ids, search
attributes, logs or metric labels.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator

_NOT_DIGITS = re.compile(r"[^0-9]")


class Demographics(BaseModel):
    """What registration knows about a patient, as sent (normalised only for comparison).

    ``birth_date`` is kept as the eight digits YYYYMMDD (HL7 DT, PID-7 without a time)
    rather than a ``date``: a typo can make an impossible date (a 13th month), and such a
    record must still compare digit by digit with the right one. An empty value is
    unknown, and an unknown field weighs nothing either way.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = ""
    given: tuple[str, ...] = ()
    birth_date: str = ""
    # PID-8 (HL7 table 0001): F, M, O, U, A, N; U and empty mean unknown.
    sex: str = ""
    address_line: str = ""
    city: str = ""
    postal_code: str = ""
    phone: str = ""

    @field_validator("birth_date", mode="before")
    @classmethod
    def _eight_digits(cls, value: object) -> object:
        # Accepts a date, "1956-04-09" or "19560409"; a DTM with a time keeps its date part.
        if isinstance(value, date):
            return value.strftime("%Y%m%d")
        if isinstance(value, str):
            return _NOT_DIGITS.sub("", value)[:8]
        return value


class MatchDecision(StrEnum):
    MATCH = "match"
    REVIEW = "review"
    NON_MATCH = "non-match"


class FieldComparison(BaseModel):
    """One field of the comparison: what each side held, how far they agree, what it weighed.

    ``agreement`` is a level named in the weights file (``exact``, ``close``,
    ``transposed``, ...), ``disagree``, or ``missing`` when either side is empty.
    """

    model_config = ConfigDict(frozen=True)

    field: str
    left: str
    right: str
    agreement: str
    similarity: float | None = None
    weight: float


class MatchScore(BaseModel):
    """The Fellegi-Sunter total (log2 likelihood ratio), explained field by field."""

    model_config = ConfigDict(frozen=True)

    weights_version: str
    total: float
    decision: MatchDecision
    match_threshold: float
    review_threshold: float
    fields: tuple[FieldComparison, ...]
    # Fields whose disagreement alone rules out "match" (birth date, sex).
    conflicts: tuple[str, ...] = ()
    # Fields a match cannot do without that one side left empty (name, birth date): a
    # father and son of the same name at one address look alike when a birth date is missing.
    missing_required: tuple[str, ...] = ()
    # Given and family names compared crosswise (one record has them the other way round).
    names_swapped: bool = False

    def field_named(self, name: str) -> FieldComparison:
        for comparison in self.fields:
            if comparison.field == name:
                return comparison
        raise KeyError(name)
