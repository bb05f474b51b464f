"""Activities of destination health: probing a destination that is down, and the audit row
of each change of state (written by the worker's audit interceptor, named by the change).

The MLLP probe is an exchange, not a bare TCP connect: a partner whose listener accepts
connections but whose application has stopped answering (the common way an interface
engine "goes silent" during an upgrade) would pass a connect test and be sent the whole
backlog only to time out again. The probe sends an HL7 network management query
(NMQ^N01, v2 chapter 14, the protocol's own "are you there") under its own MSH-10 and
carries no patient data; any ACK for it — AA, or AE/AR from a partner that does not
handle NMQ — shows the application is answering. FHIR: ``GET [base]/metadata``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import ApplicationError

from activities.ordered_delivery import (
    SENDING_APPLICATION,
    destination_fhir_client,
    mllp_tls_contexts,
)
from adapters.fhir import FhirClient, FhirRejectedError, FhirRetryableError
from adapters.hl7v2.ack import AckParseError, parse_ack
from adapters.hl7v2.mllp_client import MllpClient, MllpError
from models.destination_health import (
    DestinationHealthState,
    HealthChange,
    HealthPolicy,
    ProbeRequest,
    ProbeResult,
    health_workflow_id,
)
from models.destinations import Destination, RoutingConfig
from workflows import search_attributes as sa


async def ensure_health_workflow(
    client: Client, destination: str, kind: str, policy: HealthPolicy, task_queue: str
) -> WorkflowHandle[Any, None]:
    """The destination's health workflow, started unless it runs (the delivery activities
    and `careweave destination` both make sure of it this way)."""
    # Imported here: the workflow module imports this one for its activities.
    from workflows.destination_health import DestinationHealth

    return await client.start_workflow(
        DestinationHealth.run,
        DestinationHealthState(destination=destination, kind=kind, policy=policy),
        id=health_workflow_id(destination),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.EXCHANGE, "destination-health"),
                SearchAttributePair(sa.DESTINATION, destination),
                SearchAttributePair(sa.DELIVERY_ALERT, "up"),
            ]
        ),
        static_summary=f"Health of destination {destination}",
    )


def probe_message(destination: Destination, sending_facility: str, control_id: str) -> str:
    endpoint = destination.mllp
    assert endpoint is not None
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    return "\r".join(
        [
            f"MSH|^~\\&|{SENDING_APPLICATION}|{sending_facility}|"
            f"{endpoint.receiving_application}|{endpoint.receiving_facility}|{now}||"
            f"NMQ^N01^NMQ_N01|{control_id}|P|2.5",
            f"NCK|{now}",
        ]
    )


class HealthActivities:
    """Per worker: the routing file, a FHIR client per FHIR destination, MLLP TLS contexts."""

    def __init__(
        self, client: Client, routing: RoutingConfig, *, sending_facility: str = "CAREWEAVE"
    ) -> None:
        self._client = client
        self._routing = routing
        self._sending_facility = sending_facility
        self._fhir: dict[str, FhirClient] = {
            d.name: destination_fhir_client(routing, d)
            for d in routing.destinations
            if d.kind == "fhir"
        }
        self._mllp_tls = mllp_tls_contexts(routing)

    async def aclose(self) -> None:
        for fhir in self._fhir.values():
            await fhir.aclose()

    @activity.defn(name="probe_destination")
    async def probe_destination(self, request: ProbeRequest) -> ProbeResult:
        """Never raises for the destination's sake: a failed probe is an answer (ok=False)."""
        try:
            destination = self._routing.destination(request.destination)
        except KeyError:
            raise ApplicationError(
                f"destination {request.destination!r} is not in routing {self._routing.label}",
                type="UnknownDestination",
                non_retryable=True,
            ) from None
        if destination.kind == "fhir":
            return await self._probe_fhir(destination)
        return await self._probe_mllp(destination, request.timeout_seconds)

    async def _probe_fhir(self, destination: Destination) -> ProbeResult:
        try:
            await self._fhir[destination.name].capability()
        except FhirRetryableError as err:
            return ProbeResult(ok=False, detail=f"GET metadata: {err}"[:200])
        except FhirRejectedError as err:
            # The server answers, but not with its CapabilityStatement (a 4xx): it is up
            # enough to say no, and a delivery's own 4xx goes to review as always.
            return ProbeResult(ok=True, detail=f"GET metadata: HTTP {err.status_code}")
        return ProbeResult(ok=True, detail="GET metadata: 200")

    async def _probe_mllp(self, destination: Destination, timeout: float) -> ProbeResult:
        endpoint = destination.mllp
        assert endpoint is not None
        control_id = f"CWPROBE{uuid.uuid4().hex[:13].upper()}"
        message = probe_message(destination, self._sending_facility, control_id)
        client = MllpClient(
            endpoint.host,
            endpoint.port,
            timeout=min(timeout, endpoint.ack_timeout_seconds),
            ssl=self._mllp_tls.get(destination.name),
            server_name=endpoint.tls.server_name if endpoint.tls else None,
        )
        try:
            async with client:
                ack = await client.send(message)
        except MllpError as err:
            return ProbeResult(ok=False, detail=f"NMQ: {err}"[:200])
        try:
            code, acked_id, _ = parse_ack(ack)
        except AckParseError as err:
            return ProbeResult(ok=False, detail=f"NMQ: unreadable ACK ({err})"[:200])
        if acked_id != control_id:
            return ProbeResult(ok=False, detail=f"NMQ: ACK for {acked_id}, not {control_id}")
        return ProbeResult(ok=True, detail=f"NMQ: {code}")

    @activity.defn(name="record_destination_state")
    async def record_destination_state(self, change: HealthChange) -> None:
        """Nothing to do here: the audit interceptor writes the row (action DESTINATION_STATE,
        resource the destination, detail the change) once this completes."""
        activity.logger.info("destination %s: %s", change.destination, change.audit_detail)
