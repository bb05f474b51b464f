"""Activities of patient-merge: read the merge message (pure, local), weigh the two records,
record the change in the identity index, and apply the merge to the FHIR server.

The FHIR side follows the Patient $merge of FHIR R5 (mappings/patient_merge/): the retired
Patient becomes inactive with a replaced-by link, the survivor gets a replaces link and
the retired identifiers as old ones, and every resource that referred to the retired
Patient is re-pointed, a page per activity, each write version-aware (If-Match). Each step
writes a Provenance that names every version it wrote and where it changed references,
which is what makes an exact undo possible; a Provenance is created once per step (a
conditional create on the step's tag), so a retried activity writes no second one.
Nothing is deleted: the retired Patient's earlier versions stay readable (vread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.fhir import FhirClient, FhirPreconditionFailed, FhirRejectedError
from adapters.hl7v2.merge_messages import MergeMessageInvalid, parse_identity_message
from adapters.patient_index import IdentityChangeRefused, PatientIndex
from mappings.fhir_identifiers import patient_query, qualified_system
from mappings.identity.match import load_match_weights, score_match
from mappings.patient_merge.demographics import demographics_of_patient, demographics_of_person
from mappings.patient_merge.fhir_merge import (
    RepointedWrite,
    WrittenVersion,
    merge_patients,
    merge_provenance,
    read_merge_provenance,
    repoint_references,
    restore_references,
    unmerge_patients,
    value_at,
)
from mappings.patient_merge.mapping import load_merge_mapping
from mappings.patient_sync.fhir_patient import new_patient, patient_changes
from mappings.patient_sync.mapping import load_patient_mapping
from models.merge import IdentityMessage, LinkMessage, PatientMerge
from models.messages import InboundMessage
from models.patient_index import MessageRef, SourceIdentifier
from models.patient_match import MatchScore
from models.person import PersonIdentifier

__all__ = [
    "IDENTITY_CHANGE_REFUSED",
    "IDENTITY_MESSAGE_INVALID",
    "MERGE_WRITE_REJECTED",
    "AssessMergeInput",
    "IdentityRecorded",
    "InterpretIdentityInput",
    "InterpretedIdentity",
    "MergeActivities",
    "MergeAssessment",
    "MergeRecordsInput",
    "MergeUndone",
    "PatientsMerged",
    "RecordIdentityInput",
    "RepointPageInput",
    "RepointedPage",
    "UndoIdentityInput",
    "UndoMergeInput",
    "interpret_identity_message",
]

# Error types the workflow branches on: not retried, a reviewer decides.
IDENTITY_MESSAGE_INVALID = "IdentityMessageInvalid"
MERGE_WRITE_REJECTED = "MergeWriteRejected"
IDENTITY_CHANGE_REFUSED = "IdentityChangeRefused"
# Identifier system of every Patient's PID-3 identifier (as all exchanges build it).
PATIENT_SYSTEM = "urn:careweave:patient-id"
_STEP_TAG_SYSTEM = "urn:careweave:merge-step"


class InterpretIdentityInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    message: InboundMessage


class InterpretedIdentity(BaseModel):
    model_config = ConfigDict(frozen=True)
    message: IdentityMessage


class AssessMergeInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    merge: PatientMerge
    mapping_version: str


class MergeAssessment(BaseModel):
    """The two records as the FHIR server holds them and how alike they are (PHI inside
    ``score``: workflow state and the reviewer's page only)."""

    model_config = ConfigDict(frozen=True)
    survivor_patient: str  # the survivor's Patient id (created from the PID if absent)
    retired_patient: str = ""  # "" when no Patient carries the retired identifier
    already_merged: bool = False
    score: MatchScore | None = None
    # The resource types whose references to the retired Patient are re-pointed (mapping).
    searched_types: tuple[str, ...] = ()


class RecordIdentityInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    trigger: str
    first: PersonIdentifier  # survivor (merge) or primary (link)
    second: PersonIdentifier  # retired (merge) or other (link)
    actor: str
    reason: str
    sending_facility: str
    control_id: str
    exchange: str


class IdentityRecorded(BaseModel):
    model_config = ConfigDict(frozen=True)
    event_id: int
    flag_for_review: bool = False
    already_recorded: bool = False


class MergeRecordsInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    survivor_patient: str
    retired_patient: str
    mapping_version: str
    reason: str
    step_tag: str  # PHI-free, unique per merge step: makes the Provenance write idempotent


class PatientsMerged(BaseModel):
    model_config = ConfigDict(frozen=True)
    source: WrittenVersion
    target: WrittenVersion
    provenance: str


class RepointPageInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    survivor_patient: str
    retired_patient: str
    resource_type: str
    mapping_version: str
    reason: str
    step_tag: str


class RepointedPage(BaseModel):
    model_config = ConfigDict(frozen=True)
    repointed: int
    # More resources of this type may still refer to the retired Patient.
    more: bool
    provenance: str = ""


class UndoMergeInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    provenances: tuple[str, ...]  # as the merge wrote them, in order
    mapping_version: str


class MergeUndone(BaseModel):
    """What the undo put back on the FHIR server (counts only: no PHI)."""

    model_config = ConfigDict(frozen=True)
    patients_restored: bool
    references_restored: int
    # References changed again since the merge (or gone): left for a person, never guessed.
    references_not_restored: int


class UndoIdentityInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    merge_event: int
    actor: str
    reason: str
    exchange: str


@activity.defn
def interpret_identity_message(request: InterpretIdentityInput) -> InterpretedIdentity:
    """Read the merge / link message: its merges in message order, or its two records."""
    try:
        return InterpretedIdentity(message=parse_identity_message(request.message.text))
    except MergeMessageInvalid as err:
        raise ApplicationError(str(err), type=IDENTITY_MESSAGE_INVALID, non_retryable=True) from err


def patient_identifier_of(identifier: PersonIdentifier) -> dict[str, str]:
    """The FHIR Identifier every exchange gives this PID-3 / MRG-1 identifier."""
    return {
        "system": qualified_system(PATIENT_SYSTEM, identifier.assigning_authority),
        "value": identifier.value,
    }


def source_identifier_of(identifier: PersonIdentifier) -> SourceIdentifier:
    return SourceIdentifier(
        assigning_authority=identifier.assigning_authority,
        value=identifier.value,
        identifier_type=identifier.identifier_type or "MR",
    )


class MergeActivities:
    """The FHIR server (WorkerDependencies.fhir) and the identity index."""

    def __init__(self, fhir: FhirClient, open_index: Callable[[], PatientIndex]) -> None:
        self._fhir = fhir
        self._open_index = open_index
        self._opened: PatientIndex | None = None

    @property
    def _index(self) -> PatientIndex:
        if self._opened is None:
            self._opened = self._open_index()
        return self._opened

    # -- weigh ---------------------------------------------------------------------------

    @activity.defn(name="assess_merge")
    async def assess_merge(self, request: AssessMergeInput) -> MergeAssessment:
        merge = request.merge
        mapping = load_merge_mapping(request.mapping_version)
        survivor = await self._survivor_patient(merge)
        if merge.retired is None:
            return MergeAssessment(survivor_patient=survivor["id"])
        retired_identifier = patient_identifier_of(merge.retired)
        found = await self._search_patients(retired_identifier)
        # After a merge the survivor carries the retired identifier too (use old).
        retired = [p for p in found if p.get("id") != survivor["id"]]
        if len(retired) > 1:
            raise ApplicationError(
                f"{len(retired)} Patients carry the retired identifier",
                type=MERGE_WRITE_REJECTED,
                non_retryable=True,
            )
        if not retired:
            return MergeAssessment(survivor_patient=survivor["id"])
        already = _links_to(retired[0], survivor["id"], mapping.source_link_type)
        score = score_match(
            demographics_of_person(merge.demographics),
            demographics_of_patient(retired[0]),
            load_match_weights(mapping.match_weights_version),
        )
        return MergeAssessment(
            survivor_patient=survivor["id"],
            retired_patient=str(retired[0]["id"]),
            already_merged=already,
            score=score,
            searched_types=mapping.searched_types,
        )

    async def _survivor_patient(self, merge: PatientMerge) -> dict[str, Any]:
        # The survivor is the record registration keeps: created from the PID when no
        # Patient has it yet (as patient-sync would), never overwritten.
        changes = patient_changes(merge.demographics, load_patient_mapping("v1"))
        key = patient_identifier_of(merge.survivor)
        try:
            found = await self._fhir.create_unless_found(new_patient(changes), patient_query(key))
        except FhirRejectedError as err:
            raise _rejected(err) from err
        if found.resource.get("id"):
            return found.resource
        # A server may answer 200 to a conditional create without the match.
        found_now = [p for p in await self._search_patients(key) if p.get("active") is not False]
        if len(found_now) != 1:
            raise ApplicationError(
                f"{len(found_now)} active Patients carry the surviving identifier",
                type=MERGE_WRITE_REJECTED,
                non_retryable=True,
            )
        return found_now[0]

    async def _search_patients(self, identifier: dict[str, str]) -> list[dict[str, Any]]:
        try:
            return await self._fhir.search(
                "Patient", {"identifier": f"{identifier['system']}|{identifier['value']}"}
            )
        except FhirRejectedError as err:
            raise _rejected(err) from err

    # -- the identity index ------------------------------------------------------------

    @activity.defn(name="record_identity_change")
    async def record_identity_change(self, request: RecordIdentityInput) -> IdentityRecorded:
        message = MessageRef(
            sending_facility=request.sending_facility, control_id=request.control_id
        )
        first, second = source_identifier_of(request.first), source_identifier_of(request.second)
        try:
            if request.trigger in ("A24", "A37"):
                change = self._index.link if request.trigger == "A24" else self._index.unlink
                linked = await asyncio.to_thread(
                    change,
                    first,
                    second,
                    actor=request.actor,
                    reason=request.reason,
                    message=message,
                    trigger_event=request.trigger,
                    exchange=request.exchange,
                )
                return IdentityRecorded(
                    event_id=linked.event_id, already_recorded=linked.already_recorded
                )
            merged = await asyncio.to_thread(
                self._index.record_merge,
                first,
                second,
                actor=request.actor,
                reason=request.reason,
                message=message,
                trigger_event=request.trigger,
                exchange=request.exchange,
            )
        except IdentityChangeRefused as err:
            raise ApplicationError(
                str(err), type=IDENTITY_CHANGE_REFUSED, non_retryable=True
            ) from err
        return IdentityRecorded(
            event_id=merged.event_id,
            flag_for_review=merged.flag_for_review,
            already_recorded=merged.already_recorded,
        )

    # -- FHIR --------------------------------------------------------------------------

    @activity.defn(name="merge_patient_records")
    async def merge_patient_records(self, request: MergeRecordsInput) -> PatientsMerged:
        """The two Patients, merged (each written If-Match on the version read), and the
        Provenance of that step. A retry after the writes finds them merged and names the
        same versions from the servers' history."""
        mapping = load_merge_mapping(request.mapping_version)
        try:
            source = await self._fhir.read("Patient", request.retired_patient)
            target = await self._fhir.read("Patient", request.survivor_patient)
            merged = merge_patients(source, target, mapping)
            if _links_to(source, request.survivor_patient, mapping.source_link_type):
                source_write = await self._last_write("Patient", source)
                target_write = await self._last_write("Patient", target)
            else:
                source_write = await self._write(merged.source, source)
                target_write = await self._write(merged.target, target)
            provenance = merge_provenance(
                source_id=request.retired_patient,
                target_id=request.survivor_patient,
                recorded=datetime.now(UTC),
                reason=request.reason,
                mapping=mapping,
                patients=(source_write, target_write, merged),
            )
            reference = await self._create_provenance(provenance, request.step_tag)
        except FhirPreconditionFailed as err:
            # Someone wrote a Patient between our read and write: retried (read again).
            raise ApplicationError(f"HTTP 412: {err.diagnostics}", type="MergeRaced") from err
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return PatientsMerged(source=source_write, target=target_write, provenance=reference)

    @activity.defn(name="repoint_references_page")
    async def repoint_references_page(self, request: RepointPageInput) -> RepointedPage:
        """One page of ``resource_type`` that refers to the retired Patient, re-pointed to
        the survivor (If-Match each), and that page's Provenance. Heartbeats what it wrote,
        so a retried attempt still lists the resources the first one moved."""
        mapping = load_merge_mapping(request.mapping_version)
        details = activity.info().heartbeat_details
        written: list[RepointedWrite] = (
            [RepointedWrite.model_validate(item) for item in details[0]] if details else []
        )
        try:
            page = await self._fhir.search(
                request.resource_type,
                {
                    "patient": f"Patient/{request.retired_patient}",
                    "_count": str(mapping.page_size),
                },
            )
            for resource in page:
                repointed, paths = repoint_references(
                    resource, request.retired_patient, request.survivor_patient, mapping
                )
                if not paths:
                    continue
                write = await self._write(repointed, resource)
                written.append(RepointedWrite(written=write, paths=paths))
                activity.heartbeat([w.model_dump(mode="json") for w in written])
            reference = ""
            if written:
                provenance = merge_provenance(
                    source_id=request.retired_patient,
                    target_id=request.survivor_patient,
                    recorded=datetime.now(UTC),
                    reason=request.reason,
                    mapping=mapping,
                    repointed=written,
                )
                reference = await self._create_provenance(provenance, request.step_tag)
        except FhirPreconditionFailed as err:
            raise ApplicationError(f"HTTP 412: {err.diagnostics}", type="MergeRaced") from err
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return RepointedPage(
            repointed=len(written), more=len(page) >= mapping.page_size, provenance=reference
        )

    # -- undo --------------------------------------------------------------------------

    @activity.defn(name="undo_merge_in_fhir")
    async def undo_merge_in_fhir(self, request: UndoMergeInput) -> MergeUndone:
        """Every step of one merge undone from its Provenance, the last step first: each
        re-pointed reference that still points at the survivor points at the retired
        Patient again, then both Patients lose what the merge gave them. A retry finds the
        work done and writes nothing twice."""
        mapping = load_merge_mapping(request.mapping_version)
        restored = not_restored = 0
        patients = False
        try:
            for reference in reversed(request.provenances):
                resource_type, resource_id = reference.split("/", 1)
                record = read_merge_provenance(
                    await self._fhir.read(resource_type, resource_id), mapping
                )
                for write in record.repointed:
                    current = await self._fhir.read(write.written.resource_type, write.written.id)
                    back, refused = restore_references(
                        current, record.source_id, record.target_id, write.paths
                    )
                    already = [p for p in refused if _points_at(current, p, record.source_id)]
                    restored += len(write.paths) - len(refused) + len(already)
                    not_restored += len(refused) - len(already)
                    if back != current:
                        await self._write(back, current)
                if record.source is not None and record.target is not None:
                    source = await self._fhir.read("Patient", record.source_id)
                    target = await self._fhir.read("Patient", record.target_id)
                    new_source, new_target = unmerge_patients(source, target, record, mapping)
                    if new_source != source:
                        await self._write(new_source, source)
                    if new_target != target:
                        await self._write(new_target, target)
                    patients = True
        except FhirPreconditionFailed as err:
            raise ApplicationError(f"HTTP 412: {err.diagnostics}", type="MergeRaced") from err
        except FhirRejectedError as err:
            raise _rejected(err) from err
        except ValueError as err:
            raise ApplicationError(
                f"not a merge Provenance: {err}", type=MERGE_WRITE_REJECTED, non_retryable=True
            ) from err
        return MergeUndone(
            patients_restored=patients,
            references_restored=restored,
            references_not_restored=not_restored,
        )

    @activity.defn(name="undo_identity_change")
    async def undo_identity_change(self, request: UndoIdentityInput) -> int:
        try:
            undone = await asyncio.to_thread(
                self._index.undo_merge,
                request.merge_event,
                actor=request.actor,
                reason=request.reason,
                exchange=request.exchange,
            )
        except IdentityChangeRefused as err:
            raise ApplicationError(
                str(err), type=IDENTITY_CHANGE_REFUSED, non_retryable=True
            ) from err
        return undone.event_id

    async def _write(self, resource: dict[str, Any], read: dict[str, Any]) -> WrittenVersion:
        previous = str((read.get("meta") or {}).get("versionId") or "")
        saved = await self._fhir.update(resource, version_id=previous or None)
        return WrittenVersion(
            resource_type=str(saved["resourceType"]),
            id=str(saved["id"]),
            version_id=str((saved.get("meta") or {}).get("versionId") or ""),
            previous_version_id=previous or None,
        )

    async def _last_write(self, resource_type: str, current: dict[str, Any]) -> WrittenVersion:
        """The current version and the one before it (by lastUpdated: the demo server
        lists history in no stable order)."""
        history = await self._fhir.history(resource_type, str(current["id"]))
        versions = sorted(history, key=lambda r: str((r.get("meta") or {}).get("lastUpdated")))
        version = str((current.get("meta") or {}).get("versionId") or "")
        earlier = [
            str(r["meta"]["versionId"]) for r in versions if r["meta"]["versionId"] != version
        ]
        return WrittenVersion(
            resource_type=resource_type,
            id=str(current["id"]),
            version_id=version,
            previous_version_id=earlier[-1] if earlier else None,
        )

    async def _create_provenance(self, provenance: dict[str, Any], step_tag: str) -> str:
        tag = {"system": _STEP_TAG_SYSTEM, "code": step_tag}
        provenance = {**provenance, "meta": {"tag": [tag]}}
        created = await self._fhir.conditional_create(
            provenance, f"_tag={_STEP_TAG_SYSTEM}|{step_tag}"
        )
        return f"Provenance/{created.get('id', '')}"


def _points_at(resource: dict[str, Any], pointer: str, patient_id: str) -> bool:
    """Whether the reference at ``pointer`` already names Patient/<patient_id> (restored by
    an earlier attempt)."""
    value = value_at(resource, pointer)
    return isinstance(value, str) and value.endswith(f"Patient/{patient_id}")


def _links_to(patient: dict[str, Any], other_id: str, link_type: str) -> bool:
    return any(
        link.get("type") == link_type
        and str((link.get("other") or {}).get("reference", "")).endswith(f"Patient/{other_id}")
        for link in patient.get("link") or []
    )


def _rejected(err: FhirRejectedError) -> ApplicationError:
    return ApplicationError(
        f"HTTP {err.status_code}: {err.diagnostics}", type=MERGE_WRITE_REJECTED, non_retryable=True
    )


def link_pair(message: LinkMessage) -> tuple[PersonIdentifier, PersonIdentifier]:
    """The two records an A24/A37 names, as their key identifiers."""

    def key(person: Any) -> PersonIdentifier:
        return PersonIdentifier(
            value=person.patient.identifier,
            assigning_authority=person.patient.assigning_authority,
            identifier_type=person.patient.identifier_type,
        )

    return key(message.first), key(message.second)


# Names the workflow calls the class-based activities by.
assess_merge = MergeActivities.assess_merge
record_identity_change = MergeActivities.record_identity_change
merge_patient_records = MergeActivities.merge_patient_records
repoint_references_page = MergeActivities.repoint_references_page
undo_merge_in_fhir = MergeActivities.undo_merge_in_fhir
undo_identity_change = MergeActivities.undo_identity_change
