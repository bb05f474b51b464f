"""Lab order-to-result: its spec and its routing.

One exchange per placer order number: the order (ORM^O01 / OML^O21) and its results
(ORU^R01), corrections and cancel all reach the same workflow,
``order-to-result/<facility>/<placer order pseudonym>`` (``lab_workflow_id``). Exchanges
started before that ran under the placer number in clear; the route names that id too
(``legacy_workflow_id``) so their later messages still reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from activities.order_to_result import (
    FhirActivities,
    interpret_lab_order,
    interpret_lab_result,
)
from adapters.hl7v2.fields import FILLER_ORDER_NUMBER_FIELDS, PLACER_ORDER_NUMBER_FIELDS
from adapters.hl7v2.header import DecodedMessage
from exchanges.sdk import (
    START_SEARCH_ATTRIBUTES,
    ExchangeSpec,
    MessageType,
    Route,
    RoutingContext,
    WorkerDependencies,
    id_part,
    pseudonym,
    structure_error,
)
from models.audit import AuditAction
from models.exchanges import ExchangeTiming, OrderToResultInput
from models.settings import Settings
from workflows import search_attributes as sa
from workflows.order_to_result import OrderToResult


@dataclass(frozen=True)
class OrderKey:
    facility: str
    placer_order_number: str
    # EI-2 of the placer order number as sent: part of the FHIR identifier system.
    placer_namespace: str


def lab_workflow_id(facility: str, placer_order_number: str, pseudonym_key: bytes) -> str:
    """The exchange id of one order: its facility (a code) and a keyed pseudonym of the
    placer order number (``filler-<n>`` for a result without one), never the number."""
    order_key = pseudonym(pseudonym_key, "order", facility, placer_order_number)
    return f"order-to-result/{facility}/{order_key}"


def legacy_lab_workflow_id(facility: str, placer_order_number: str) -> str:
    """The id lab exchanges had until the placer number became a pseudonym (610caf4)."""
    return f"order-to-result/{facility}/{id_part(placer_order_number)}"


def route_lab_message(message: DecodedMessage, context: RoutingContext) -> Route[OrderKey]:
    """Order-to-result is keyed by the placer order number: ORC-2, else OBR-2, for orders
    and results alike, as the lab parser reads it (PLACER_ORDER_NUMBER_FIELDS), so an order
    whose ORC-2 and OBR-2 differ and its result land in one exchange."""
    header = message.header
    is_result = header.message_code == "ORU"
    # A result comes from the lab; the ordering facility is the one it is sent to.
    default_facility = header.receiving_facility if is_result else header.sending_facility
    placer, namespace = "", ""
    for segment_id, position in PLACER_ORDER_NUMBER_FIELDS:
        placer = message.field(segment_id, position)
        if placer:
            namespace = message.field(segment_id, position, component=2)
            break
    if not placer:
        filler = next(
            (message.field(s, p) for s, p in FILLER_ORDER_NUMBER_FIELDS if message.field(s, p)),
            "",
        )
        if not filler:
            # Name the segment the sender would fix: the ORC if there is one, else the OBR.
            segment_id = "ORC" if message.segments_named("ORC") else "OBR"
            raise structure_error(
                message,
                segment_id,
                2,
                "neither a placer (ORC-2/OBR-2) nor a filler order number (ORC-3/OBR-3) "
                "is present: the message cannot be matched to an order",
                code="101",
            )
        # Without a placer number the result cannot join its order's exchange; it
        # gets its own, which waits for an order and then asks a reviewer.
        placer = f"filler-{filler}"
    facility = id_part(namespace or default_facility)
    return Route(
        exchange=EXCHANGE.name,
        workflow_id=lab_workflow_id(facility, placer, context.pseudonym_key),
        legacy_workflow_id=legacy_lab_workflow_id(facility, placer),
        signal=OrderToResult.result_message if is_result else OrderToResult.order_message,
        facility=facility,
        key=OrderKey(facility=facility, placer_order_number=placer, placer_namespace=namespace),
    )


def order_to_result_timing(settings: Settings) -> ExchangeTiming:
    return ExchangeTiming(
        unknown_order_wait_seconds=settings.unknown_order_wait_seconds,
        correction_window_seconds=settings.correction_window_seconds,
        sla_seconds_by_priority={
            "stat": settings.sla_stat_seconds,
            "asap": settings.sla_asap_seconds,
            "routine": settings.sla_routine_seconds,
        },
    )


def start_input(route: Route[OrderKey], settings: Settings) -> OrderToResultInput:
    return OrderToResultInput(
        facility=route.key.facility,
        placer_order_number=route.key.placer_order_number,
        placer_namespace=route.key.placer_namespace,
        mapping_version=EXCHANGE.mapping_version,
        timing=order_to_result_timing(settings),
    )


def activities(dependencies: WorkerDependencies) -> Sequence[Callable[..., Any]]:
    fhir = FhirActivities(dependencies.fhir)
    return [
        interpret_lab_order,
        interpret_lab_result,
        fhir.publish_service_request,
        fhir.publish_lab_result,
        fhir.find_service_request,
        fhir.raise_escalation_task,
    ]


EXCHANGE: ExchangeSpec[OrderKey] = ExchangeSpec(
    name="order-to-result",
    accepts=(
        MessageType("ORM", ("O01",), ("PID", "ORC", "OBR")),
        MessageType("OML", ("O21",), ("PID", "ORC", "OBR")),
        MessageType("ORU", ("R01",), ("PID", "OBR", "OBX")),
    ),
    route=route_lab_message,
    workflow=OrderToResult,
    signals=(OrderToResult.order_message, OrderToResult.result_message),
    updates=(OrderToResult.decide_review,),
    start_input=start_input,
    activities=activities,
    audit_actions={
        interpret_lab_order: AuditAction.TRANSFORM,
        interpret_lab_result: AuditAction.TRANSFORM,
        FhirActivities.publish_service_request: AuditAction.PUSH,
        FhirActivities.publish_lab_result: AuditAction.PUSH,
        FhirActivities.raise_escalation_task: AuditAction.PUSH,
        FhirActivities.find_service_request: AuditAction.ACCESS,
    },
    summary="Lab order-to-result for an order of {facility}",
    search_attributes=(*START_SEARCH_ATTRIBUTES, sa.REVIEW_STATE),
    mapping_version="v2",
)
