"""Activities of ordered delivery, the shared step that takes an exchange's events to the
destinations subscribed to them, one queue per destination and patient.

Routing answers from the file the worker loaded at start, recorded in history by being an
activity result. Enqueueing is a signal-with-start on the destination's per-patient queue.
Deliveries are idempotent at the destination: FHIR writes are conditional on identifiers;
an MLLP resend carries the same MSH-10.
"""

from __future__ import annotations

import hashlib
import ssl

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.heartbeat import heartbeating
from adapters.fhir import (
    FhirClient,
    FhirRejectedError,
    FhirRetryableError,
    FhirWriteRaced,
    auth_from_config,
)
from adapters.hl7v2.ack import AckParseError, parse_ack
from adapters.hl7v2.merge_outbound import build_merge_message, build_unlink_message
from adapters.hl7v2.mllp_client import MllpError
from adapters.hl7v2.mllp_pool import MllpPool
from adapters.hl7v2.readdress import readdress
from adapters.tls import TlsConfigError, client_tls_context
from exchanges.sdk import signal_name
from mappings.discharge_sync.fhir_builders import encounter_transaction_for
from mappings.discharge_sync.mapping import load_adt_mapping
from models.delivery import (
    DeliverRequest,
    DeliverResult,
    DeliveryItem,
    DeliveryState,
    QueueHandOver,
)
from models.destination_health import CLEAR_TO_SEND_MEMO, HealthPolicy, health_workflow_id
from models.destinations import (
    DeliveryPolicy,
    Destination,
    DestinationTls,
    RoutingConfig,
    RoutingConfigError,
    Subscription,
)
from workflows import search_attributes as sa

# Error types the delivery workflow branches on.
DESTINATION_UNAVAILABLE = "DestinationUnavailable"  # no answer, connection refused, 5xx
# AE/AR with a "try later" ERR-3 code; a FHIR write that lost to another writer (412)
DESTINATION_TEMPORARY = "DestinationTemporary"
DESTINATION_REJECTED = "DestinationRejected"  # AE/AR otherwise, FHIR 4xx: a person decides

SENDING_APPLICATION = "CAREWEAVE"
# The delivery log's detail for a merge announcement queued for a FHIR destination.
NOTHING_TO_SEND_TO_FHIR = "merge applied on the FHIR server by patient-merge: nothing to send"


class RoutedDestination(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    kind: str
    policy: DeliveryPolicy


class RoutingAnswer(BaseModel):
    model_config = ConfigDict(frozen=True)
    routing_version: str
    destinations: list[RoutedDestination]


class EnqueueRequest(BaseModel):
    model_config = ConfigDict(frozen=True)
    destination: str
    kind: str
    patient_key: str
    item: DeliveryItem


class HandOverRequest(BaseModel):
    """A merge's A40 for one destination: through the retired patient's queue when it still
    runs (it hands what it holds, then the A40, to the survivor's queue), else straight onto
    the survivor's queue."""

    model_config = ConfigDict(frozen=True)
    destination: str
    kind: str
    retired_patient_key: str
    survivor_patient_key: str
    item: DeliveryItem


class ForwardRequest(BaseModel):
    """Events a merged-away patient's queue still held, for the survivor's queue, in order."""

    model_config = ConfigDict(frozen=True)
    destination: str
    kind: str
    patient_key: str
    items: list[DeliveryItem]


def delivery_workflow_id(destination: str, patient_key: str) -> str:
    return f"ordered-delivery/{destination}/{patient_key}"


def outbound_control_id(event_id: str, destination: str, revision: int) -> str:
    """Same delivery, same MSH-10 (a resend is recognisably one); an edit gets a new one."""
    digest = hashlib.sha256(f"{event_id}|{destination}|{revision}".encode()).hexdigest()
    return f"CW{digest[:18].upper()}"


def outbound_message(item: DeliveryItem) -> str:
    """What an MLLP destination is sent, before it is readdressed: the ADT message as
    received, or for a merge announcement the A40 (or the A37 of its undo) built with hl7apy
    from the merge as decided. Built from the item alone, so every attempt sends the same."""
    announcement = item.announcement
    if announcement is None:
        return item.message_text
    if announcement.trigger == "A40":
        return build_merge_message(
            [announcement.merge],
            message_time=announcement.message_time,
            event_reason=announcement.event_reason,
            operator_id=announcement.operator_id,
        )
    return build_unlink_message(
        announcement.merge,
        message_time=announcement.message_time,
        event_reason=announcement.event_reason,
        operator_id=announcement.operator_id,
    )


def mllp_tls_contexts(routing: RoutingConfig) -> dict[str, ssl.SSLContext]:
    """One TLS context per MLLP destination with a `tls` table, built once at worker start so
    an unusable certificate or key stops the worker naming the destination and the file."""
    contexts: dict[str, ssl.SSLContext] = {}
    for destination in routing.destinations:
        tls = destination.mllp.tls if destination.mllp else None
        if tls is None:
            continue
        contexts[destination.name] = destination_tls_context(routing, destination, tls)
    return contexts


def destination_tls_context(
    routing: RoutingConfig, destination: Destination, tls: DestinationTls
) -> ssl.SSLContext:
    """Raises RoutingConfigError naming the routing, the destination and the file at fault."""
    try:
        return client_tls_context(
            ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file
        )
    except TlsConfigError as err:
        raise RoutingConfigError(
            f"routing {routing.label}: destination {destination.name}: {destination.kind}.tls: "
            f"{err}"
        ) from err


class DeliveryActivities:
    """Per worker: the routing file, the Temporal client, FHIR clients and MLLP connections."""

    def __init__(
        self,
        client: Client,
        routing: RoutingConfig,
        *,
        task_queue: str,
        sending_facility: str = "CAREWEAVE",
        idle_close_seconds: float = 3600.0,
        health_policy: HealthPolicy | None = None,
    ) -> None:
        self._client = client
        self._routing = routing
        self._task_queue = task_queue
        self._sending_facility = sending_facility
        self._idle_close_seconds = idle_close_seconds
        self._health_policy = health_policy or HealthPolicy()
        # Destinations whose health workflow this process has made sure of.
        self._health_running: set[str] = set()
        # One client, and so one cached access token, per FHIR destination for the
        # worker's life; made now so that a missing credential or an unusable TLS file
        # stops the worker at start.
        self._fhir = {
            destination.name: destination_fhir_client(routing, destination)
            for destination in routing.destinations
            if destination.kind == "fhir"
        }
        self._mllp = MllpPool()
        self._mllp_tls = mllp_tls_contexts(routing)

    async def aclose(self) -> None:
        for fhir in self._fhir.values():
            await fhir.aclose()
        await self._mllp.close()

    @activity.defn(name="routing_for")
    async def routing_for(self, subscription: Subscription) -> RoutingAnswer:
        routed = [
            RoutedDestination(name=d.name, kind=d.kind, policy=d.policy)
            for d in self._routing.destinations
            if subscription in d.subscribes
        ]
        return RoutingAnswer(routing_version=self._routing.label, destinations=routed)

    @activity.defn(name="enqueue_delivery")
    async def enqueue_delivery(self, request: EnqueueRequest) -> str:
        workflow_id = delivery_workflow_id(request.destination, request.patient_key)
        # Signal-with-start: a retried activity signals twice; the queue drops the
        # second by event id.
        # Imported here: the queue's workflow module imports this one for its activities.
        from workflows.ordered_delivery import OrderedDelivery

        await self._ensure_health(request.destination, request.kind)
        await self._client.start_workflow(
            OrderedDelivery.run,
            DeliveryState(
                destination=request.destination,
                kind=request.kind,
                patient_key=request.patient_key,
                idle_close_seconds=self._idle_close_seconds,
            ),
            id=workflow_id,
            task_queue=self._task_queue,
            start_signal=signal_name(OrderedDelivery.enqueue),
            start_signal_args=[request.item],
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.EXCHANGE, "ordered-delivery"),
                    SearchAttributePair(sa.DESTINATION, request.destination),
                    SearchAttributePair(sa.DELIVERY_ALERT, "ok"),
                ]
            ),
            static_summary=f"Ordered delivery to {request.destination} for one patient",
        )
        return workflow_id

    @activity.defn(name="hand_over_or_enqueue")
    async def hand_over_or_enqueue(self, request: HandOverRequest) -> str:
        """ "handed-over" when the retired patient's queue took the A40 (it forwards it after
        what it still holds), "enqueued" when it was queued on the survivor's directly."""
        from workflows.ordered_delivery import OrderedDelivery

        retired_queue = delivery_workflow_id(request.destination, request.retired_patient_key)
        if request.retired_patient_key != request.survivor_patient_key:
            handle = self._client.get_workflow_handle(retired_queue)
            try:
                # A retried activity signals twice; the queue drops the second by event id.
                await handle.signal(
                    OrderedDelivery.hand_over,
                    QueueHandOver(
                        survivor_patient_key=request.survivor_patient_key,
                        announcement=request.item,
                    ),
                )
                return "handed-over"
            except RPCError as err:
                # Never started, or closed (idle): it holds nothing to hand over.
                if err.status is not RPCStatusCode.NOT_FOUND:
                    raise
        await self.enqueue_delivery(
            EnqueueRequest(
                destination=request.destination,
                kind=request.kind,
                patient_key=request.survivor_patient_key,
                item=request.item,
            )
        )
        return "enqueued"

    @activity.defn(name="forward_deliveries")
    async def forward_deliveries(self, request: ForwardRequest) -> int:
        """Queue ``items`` on another patient's queue in their order (a retried activity
        queues them again: that queue drops what it already has by event id)."""
        for item in request.items:
            activity.heartbeat()
            await self.enqueue_delivery(
                EnqueueRequest(
                    destination=request.destination,
                    kind=request.kind,
                    patient_key=request.patient_key,
                    item=item,
                )
            )
        return len(request.items)

    @activity.defn(name="destination_clear")
    async def destination_clear(self, destination: str) -> bool:
        """True when the destination's health workflow says, in its memo, that a queue
        starting a burst may send. False when it cannot tell (not running, or a run from
        before it published): the queue then asks it by signal, as it always did."""
        handle = self._client.get_workflow_handle(health_workflow_id(destination))
        try:
            description = await handle.describe()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        if description.status is not WorkflowExecutionStatus.RUNNING:
            return False
        clear: bool = await description.memo_value(CLEAR_TO_SEND_MEMO, False, type_hint=bool)
        return clear

    async def _ensure_health(self, destination: str, kind: str) -> None:
        """Start the destination's health workflow unless it runs (once per process): the
        queue asks it before sending, and a queue without one sends as before."""
        if destination in self._health_running:
            return
        # Imported here: that module imports this one.
        from activities.destination_health import ensure_health_workflow

        await ensure_health_workflow(
            self._client, destination, kind, self._health_policy, self._task_queue
        )
        self._health_running.add(destination)

    @activity.defn(name="deliver_to_fhir")
    async def deliver_to_fhir(self, request: DeliverRequest) -> DeliverResult:
        """The discharge event as a FHIR transaction. A merge announcement (A40 / A37) sends
        nothing: patient-merge applied the merge (or its undo) on the FHIR server itself, with
        its Provenance; the queue logs the item as delivered with that said."""
        destination = self._destination(request.destination)
        if request.item.event is None:
            return DeliverResult(detail=NOTHING_TO_SEND_TO_FHIR)
        mapping = load_adt_mapping(request.item.mapping_version)
        bundle = encounter_transaction_for(request.item.event, mapping)
        try:
            async with heartbeating():
                # Fenced on the Encounter: a discharge the server applies late (after a
                # timeout and a retry) cannot undo the A13 or A08 delivered after it.
                response = await self._fhir[destination.name].fenced_transaction(
                    bundle, "Encounter", owned=("Encounter", "Condition")
                )
        except FhirWriteRaced as err:
            # The server answered: another writer moved the Encounter under this one. Not
            # an outage (destination health must not count it); retried per the policy.
            raise ApplicationError(str(err), type=DESTINATION_TEMPORARY) from err
        except FhirRetryableError as err:
            raise ApplicationError(str(err), type=DESTINATION_UNAVAILABLE) from err
        except FhirRejectedError as err:
            raise ApplicationError(
                f"HTTP {err.status_code}: {err.diagnostics}",
                type=DESTINATION_REJECTED,
                non_retryable=True,
            ) from err
        written = [
            "/".join(str((entry.get("response") or {}).get("location", "")).split("/")[:2])
            for entry in response.get("entry") or []
        ]
        return DeliverResult(detail=", ".join(ref for ref in written if ref))

    @activity.defn(name="deliver_to_mllp")
    async def deliver_to_mllp(self, request: DeliverRequest) -> DeliverResult:
        destination = self._destination(request.destination)
        endpoint = destination.mllp
        assert endpoint is not None
        control_id = outbound_control_id(request.item.event_id, destination.name, request.revision)
        message = readdress(
            request.replacement_message or outbound_message(request.item),
            sending_application=SENDING_APPLICATION,
            sending_facility=self._sending_facility,
            receiving_application=endpoint.receiving_application,
            receiving_facility=endpoint.receiving_facility,
            control_id=control_id,
        )
        try:
            async with (
                heartbeating(),
                self._mllp.connection(
                    endpoint.host,
                    endpoint.port,
                    timeout=endpoint.ack_timeout_seconds,
                    ssl_context=self._mllp_tls.get(destination.name),
                    server_name=endpoint.tls.server_name if endpoint.tls else None,
                ) as connection,
            ):
                ack = await connection.send(message)
        except MllpError as err:
            # A failed TLS handshake is retried like a refused connection: certificates get
            # renewed and partners restart; the error text says which check failed.
            # Details: no answer, then the message as sent (for the reviewer's editor).
            raise ApplicationError(str(err), "", message, type=DESTINATION_UNAVAILABLE) from err
        try:
            code, acked_id, error_code = parse_ack(ack)
        except AckParseError as err:
            raise ApplicationError(
                f"unreadable ACK: {err}", ack, message, type=DESTINATION_UNAVAILABLE
            ) from err
        if code in ("AA", "CA") and acked_id == control_id:
            return DeliverResult(detail=f"{code} {control_id}")
        if code in ("AA", "CA"):
            # An ACK for another message means the connection is out of step: retry.
            raise ApplicationError(
                f"ACK for {acked_id}, expected {control_id}",
                ack,
                message,
                type=DESTINATION_UNAVAILABLE,
            )
        temporary = error_code in destination.policy.temporary_error_codes
        # The raw ACK and the message as sent travel as error details (encrypted payloads)
        # for the reviewer; the error message names codes only.
        raise ApplicationError(
            f"{code} {error_code or '(no ERR-3)'} from {destination.name}",
            ack,
            message,
            type=DESTINATION_TEMPORARY if temporary else DESTINATION_REJECTED,
            non_retryable=not temporary,
        )

    def _destination(self, name: str) -> Destination:
        try:
            return self._routing.destination(name)
        except KeyError:
            raise ApplicationError(
                f"destination {name!r} is not in routing {self._routing.label}",
                type=DESTINATION_REJECTED,
                non_retryable=True,
            ) from None


def destination_fhir_client(routing: RoutingConfig, destination: Destination) -> FhirClient:
    """Raises FhirAuthConfigError naming the destination when its credential is missing, and
    RoutingConfigError when a file of its `tls` table cannot be used."""
    endpoint = destination.fhir
    assert endpoint is not None
    tls = None
    if endpoint.tls is not None:
        tls = destination_tls_context(routing, destination, endpoint.tls)
    auth = auth_from_config(
        endpoint.auth,
        where=f"destination {destination.name}: fhir.auth",
        timeout=endpoint.timeout_seconds,
        tls=tls,
    )
    return FhirClient(endpoint.base_url, timeout=endpoint.timeout_seconds, auth=auth, tls=tls)
