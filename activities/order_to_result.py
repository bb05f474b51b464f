"""Activities of order-to-result: parse and map (pure, run as local activities) and
FHIR writes (idempotent: every write is conditional on business identifiers, so
a retry after a crash writes once).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.fhir import FhirClient, FhirRejectedError
from adapters.hl7v2.lab_messages import LabMessageInvalid, parse_lab_order, parse_lab_results
from mappings.fhir_identifiers import identifier_search
from mappings.order_to_result.concept_map import (
    PATIENT_CREATE_IF_ABSENT,
    LabMapping,
    load_lab_mapping,
    unmapped_codes,
)
from mappings.order_to_result.fhir_builders import (
    escalation_task_for,
    is_critical,
    order_identifiers,
    order_transaction_for,
    report_key,
    result_transaction_for,
    review_task_identifier,
    service_request_for,
)
from models.lab import LabOrder, LabResult
from models.messages import InboundMessage

# Error types the workflow branches on: these are not retried, they go to a reviewer.
FHIR_REJECTED = "FhirRejected"
LAB_MESSAGE_INVALID = "LabMessageInvalid"


class InterpretInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    message: InboundMessage
    mapping_version: str


class InterpretedOrder(BaseModel):
    order: LabOrder
    mapping_version: str


class InterpretedResult(BaseModel):
    results: list[LabResult]
    unmapped_codes: list[str]
    critical: bool
    mapping_version: str
    # Per result, which report it is (fhir_builders.report_key, by the mapping version).
    # Empty in results recorded before it existed: LabResult.report_key then.
    report_keys: list[str] = []


class PublishOrderInput(BaseModel):
    order: LabOrder
    mapping_version: str


class PublishResultInput(BaseModel):
    result: LabResult
    mapping_version: str
    allow_unmapped: bool = False
    # The version of this report the workflow published before (the last critical one,
    # if any was): a critical value is never downgraded by a correction. The workflow
    # knows what it published (deterministic state), so no FHIR read per result.
    previous: LabResult | None = None


class FindOrderInput(BaseModel):
    placer_order_number: str
    placer_namespace: str
    mapping_version: str


class EscalationInput(BaseModel):
    order: LabOrder
    reason: str
    mapping_version: str


class PublishOutcome(BaseModel):
    """Logical ids of what was written ("ServiceRequest/12"): no PHI."""

    resources: list[str]
    # The result written carried a critical value itself. False in outcomes recorded
    # before this field existed.
    critical: bool = False


def _invalid(err: LabMessageInvalid) -> ApplicationError:
    return ApplicationError(str(err), type=LAB_MESSAGE_INVALID, non_retryable=True)


def _rejected(err: FhirRejectedError) -> ApplicationError:
    return ApplicationError(
        f"HTTP {err.status_code}: {err.diagnostics}", type=FHIR_REJECTED, non_retryable=True
    )


def _locations(bundle: dict[str, Any]) -> list[str]:
    refs: list[str] = []
    entries: list[dict[str, Any]] = bundle.get("entry") or []
    for entry in entries:
        location = (entry.get("response") or {}).get("location", "")
        if location:
            # "ServiceRequest/12/_history/2" -> "ServiceRequest/12"
            refs.append("/".join(location.split("/")[:2]))
    return refs


def _resource_ref(resource: dict[str, object]) -> list[str]:
    return [f"{resource.get('resourceType')}/{resource.get('id')}"]


@activity.defn
def interpret_lab_order(request: InterpretInput) -> InterpretedOrder:
    try:
        order = parse_lab_order(request.message.text)
    except LabMessageInvalid as err:
        raise _invalid(err) from err
    return InterpretedOrder(order=order, mapping_version=request.mapping_version)


@activity.defn
def interpret_lab_result(request: InterpretInput) -> InterpretedResult:
    try:
        results = parse_lab_results(request.message.text)
    except LabMessageInvalid as err:
        raise _invalid(err) from err
    mapping = load_lab_mapping(request.mapping_version)
    unmapped = sorted({code for result in results for code in unmapped_codes(result, mapping)})
    return InterpretedResult(
        results=results,
        unmapped_codes=unmapped,
        critical=any(is_critical(result, mapping) for result in results),
        mapping_version=mapping.version,
        report_keys=[report_key(result, mapping) for result in results],
    )


class FhirActivities:
    """Activities that write to the FHIR server; one client (connection pool) per worker."""

    def __init__(self, fhir: FhirClient) -> None:
        self._fhir = fhir

    @activity.defn(name="publish_service_request")
    async def publish_service_request(self, request: PublishOrderInput) -> PublishOutcome:
        mapping = load_lab_mapping(request.mapping_version)
        if mapping.patient_write == PATIENT_CREATE_IF_ABSENT:
            # The order's Patient is made sure of in the same transaction: its subject is
            # the literal reference the server resolves.
            bundle = order_transaction_for(request.order, mapping)
            # A new order's ServiceRequest is not on the server yet: written without the
            # fence's read unless it is there after all (a cancel revokes one that is).
            response = await self._fenced_transaction(
                bundle, "ServiceRequest", presumed_absent=not request.order.is_cancel
            )
            return PublishOutcome(resources=_locations(response))
        resource = service_request_for(request.order, mapping)
        try:
            # Keyed on the placer identifier: a retry or a cancel updates the same resource.
            written = await self._fhir.conditional_update(
                resource, identifier_search("ServiceRequest", resource["identifier"][0])
            )
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return PublishOutcome(resources=_resource_ref(written))

    @activity.defn(name="publish_lab_result")
    async def publish_lab_result(self, request: PublishResultInput) -> PublishOutcome:
        mapping = load_lab_mapping(request.mapping_version)
        stat_before = False
        if request.previous is None and request.result.is_correction:
            # A correction this run of the exchange never saw the report of (it came after
            # the exchange closed): the Task on the server says whether it was critical.
            # Corrections only, so results cost no extra read.
            stat_before = await self._review_task_is_stat(request.result, mapping)
        bundle = result_transaction_for(
            request.result, mapping, previous=request.previous, stat_before=stat_before
        )
        # Always read first: the bundle's Observations would be written unfenced by a
        # report presumed new that is there after all (version_fence.presumable).
        response = await self._fenced_transaction(bundle, "DiagnosticReport")
        return PublishOutcome(
            resources=_locations(response), critical=is_critical(request.result, mapping)
        )

    async def _fenced_transaction(
        self, bundle: dict[str, Any], resource_type: str, *, presumed_absent: bool = False
    ) -> dict[str, Any]:
        """``bundle`` written so that, should the server apply it late (after a timeout and
        a retry), it cannot undo a newer write of its ``resource_type`` (version_fence)."""
        try:
            return await self._fhir.fenced_transaction(
                bundle, resource_type, presumed_absent=presumed_absent
            )
        except FhirRejectedError as err:
            raise _rejected(err) from err

    async def _review_task_is_stat(self, result: LabResult, mapping: LabMapping) -> bool:
        task_id = review_task_identifier(result, mapping)
        try:
            found = await self._fhir.search(
                "Task", {"identifier": f"{task_id['system']}|{task_id['value']}"}
            )
        except FhirRejectedError as err:
            raise _rejected(err) from err
        stat = mapping.task_texts["critical_priority"]
        return any(task.get("priority") == stat for task in found)

    @activity.defn(name="find_service_request")
    async def find_service_request(self, request: FindOrderInput) -> bool:
        mapping = load_lab_mapping(request.mapping_version)
        placer = order_identifiers(
            (request.placer_order_number, request.placer_namespace, None, ""), mapping
        )[0]
        try:
            found = await self._fhir.search(
                "ServiceRequest", {"identifier": f"{placer['system']}|{placer['value']}"}
            )
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return bool(found)

    @activity.defn(name="raise_escalation_task")
    async def raise_escalation_task(self, request: EscalationInput) -> PublishOutcome:
        mapping = load_lab_mapping(request.mapping_version)
        bundle = escalation_task_for(request.order, mapping, reason=request.reason)
        try:
            response = await self._fhir.transaction(bundle)
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return PublishOutcome(resources=_locations(response))


# Names the workflow uses to call the class-based activities.
publish_service_request = FhirActivities.publish_service_request
publish_lab_result = FhirActivities.publish_lab_result
find_service_request = FhirActivities.find_service_request
raise_escalation_task = FhirActivities.raise_escalation_task
