"""Start inputs of the exchanges: small models, so fields can be added without breaking history."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ExchangeTiming(BaseModel):
    """Time limits of order-to-result, from settings at start; short in tests."""

    model_config = ConfigDict(frozen=True)

    unknown_order_wait_seconds: float
    correction_window_seconds: float
    sla_seconds_by_priority: dict[str, float]


class OrderToResultInput(BaseModel):
    model_config = ConfigDict(frozen=True)

    facility: str
    placer_order_number: str
    # EI-2 of the placer order number as sent: part of the FHIR identifier system.
    placer_namespace: str = ""
    mapping_version: str
    timing: ExchangeTiming


class DischargeSyncInput(BaseModel):
    """One encounter's discharge exchange; keys are pseudonyms (no visit number, no MRN)."""

    model_config = ConfigDict(frozen=True)

    facility: str
    encounter_key: str
    patient_key: str
    mapping_version: str
    # After the last event, the exchange stays open this long for A13/A08, then completes.
    close_after_seconds: float


class PatientSyncInput(BaseModel):
    """One patient's person-information exchange; the key is a pseudonym (no MRN)."""

    model_config = ConfigDict(frozen=True)

    facility: str
    patient_key: str
    mapping_version: str
    # After the last message, the exchange stays open this long, then completes.
    close_after_seconds: float


class PatientMergeInput(BaseModel):
    """One surviving patient's merge exchange; the key is a pseudonym (no MRN)."""

    model_config = ConfigDict(frozen=True)

    facility: str
    patient_key: str
    mapping_version: str
    # After the last message, the exchange stays open this long, then completes.
    close_after_seconds: float


class ImagingOrderInput(BaseModel):
    """Start input of one imaging exchange (one accession number). ``accession_key`` is a
    pseudonym; the accession itself arrives in the order or the study's signal."""

    model_config = ConfigDict(frozen=True)

    facility: str
    accession_key: str
    mapping_version: str
    # The lab map the order's ServiceRequest and the report are built with (reused).
    lab_mapping_version: str
    unknown_order_wait_seconds: float


class PacsPollerInput(BaseModel):
    """Start input of the PACS change-feed poller; ``position`` carries across
    continue-as-new, so a restart neither misses nor repeats a change."""

    model_config = ConfigDict(frozen=True)

    position: int = 0
    poll_seconds: float
    # Polls per run before continue-as-new bounds the history.
    polls_per_run: int = 500
