"""Activities of patient-sync: read and map one A28/A31 (pure, a local activity), and write
the Patient (the FHIR server's, idempotent).

The write is a conditional create by the PID-3 identifier; when a Patient already has it,
the message's fields are merged into the Patient as read and written back with If-Match
on the version read (a version-aware update). Another writer in between makes the server
answer 412: the Patient is read again and the merge redone, so nobody's write is lost.
A merge that changes nothing writes nothing, which makes a retried activity a no-op.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.fhir import FhirClient, FhirPreconditionFailed, FhirRejectedError
from adapters.hl7v2.person_messages import PersonMessageInvalid, parse_person_update
from mappings.patient_sync.fhir_patient import (
    PatientChanges,
    PatientInvalid,
    merge_patient,
    new_patient,
    patient_changes,
)
from mappings.patient_sync.mapping import load_patient_mapping
from models.messages import InboundMessage

# Error types the workflow branches on: not retried, a reviewer decides.
PERSON_MESSAGE_INVALID = "PersonMessageInvalid"
PATIENT_WRITE_REJECTED = "PatientWriteRejected"
# Retried by Temporal: the Patient kept changing under every merge of one attempt.
PATIENT_KEPT_CHANGING = "PatientKeptChanging"

# Reads and merges per attempt before it gives way to Temporal's backoff.
MERGE_ATTEMPTS = 5


class InterpretPersonInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    message: InboundMessage
    mapping_version: str


class WritePatientInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    changes: PatientChanges


class PatientWritten(BaseModel):
    """What the write did; the logical id only (``Patient/<id>``), no PHI."""

    model_config = ConfigDict(frozen=True)
    patient: str
    outcome: Literal["created", "updated", "unchanged"]
    # 412 answers met (another writer got in between a read and our update).
    version_conflicts: int = 0


@activity.defn
def interpret_person_message(request: InterpretPersonInput) -> PatientChanges:
    """Parse the A28/A31 and map its PID to the changes it asks of the Patient."""
    try:
        update = parse_person_update(request.message.text)
        return patient_changes(update, load_patient_mapping(request.mapping_version))
    except PersonMessageInvalid as err:
        raise ApplicationError(str(err), type=PERSON_MESSAGE_INVALID, non_retryable=True) from err


class PatientActivities:
    """Writes to the FHIR server the worker was given (WorkerDependencies.fhir)."""

    def __init__(self, fhir: FhirClient) -> None:
        self._fhir = fhir

    @activity.defn(name="write_patient")
    async def write_patient(self, request: WritePatientInput) -> PatientWritten:
        changes = request.changes
        try:
            return await self._create_or_merge(changes)
        except PatientInvalid as err:
            raise ApplicationError(
                str(err), type=PATIENT_WRITE_REJECTED, non_retryable=True
            ) from err
        except FhirRejectedError as err:
            # Includes a 412 on the conditional create: several Patients carry the
            # identifier, which a person resolves (patient merge), not a retry.
            raise ApplicationError(
                f"HTTP {err.status_code}: {err.diagnostics}",
                type=PATIENT_WRITE_REJECTED,
                non_retryable=True,
            ) from err

    async def _create_or_merge(self, changes: PatientChanges) -> PatientWritten:
        found = await self._fhir.create_unless_found(new_patient(changes), changes.search)
        current = found.resource
        if found.created:
            return PatientWritten(patient=_reference(current), outcome="created")
        if not current.get("id"):
            # A server may answer 200 to a conditional create without the match.
            current = await self._read_by_identifier(changes)
        for conflicts in range(MERGE_ATTEMPTS):
            merged = merge_patient(current, changes)
            if merged == current:
                return PatientWritten(
                    patient=_reference(current), outcome="unchanged", version_conflicts=conflicts
                )
            try:
                await self._fhir.update(
                    merged, version_id=(current.get("meta") or {}).get("versionId")
                )
            except FhirPreconditionFailed:
                current = await self._fhir.read("Patient", str(current["id"]))
                continue
            return PatientWritten(
                patient=_reference(current), outcome="updated", version_conflicts=conflicts
            )
        raise ApplicationError(
            f"the Patient changed under each of {MERGE_ATTEMPTS} merges (HTTP 412)",
            type=PATIENT_KEPT_CHANGING,
        )

    async def _read_by_identifier(self, changes: PatientChanges) -> dict[str, Any]:
        key = changes.key_identifier
        found = await self._fhir.search(
            "Patient", {"identifier": f"{key['system']}|{key['value']}"}
        )
        if len(found) != 1:
            raise ApplicationError(
                f"{len(found)} Patients carry the identifier after a conditional create",
                type=PATIENT_WRITE_REJECTED,
                non_retryable=True,
            )
        return found[0]


def _reference(resource: dict[str, Any]) -> str:
    return f"Patient/{resource.get('id')}"


# The name the workflow calls the class-based activity by.
write_patient = PatientActivities.write_patient
