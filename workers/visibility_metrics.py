"""Reviews waiting and deliveries held, counted from Temporal visibility for ops metrics.

What waits for a person or a destination lives in running workflows, which any worker may
host, so no process can count it from memory. The worker asks Temporal's visibility store
every CAREWEAVE_VISIBILITY_METRICS_SECONDS instead: one ``count_workflows`` per review
reason and per destination and alert (the ReviewReason / DeliveryAlert search attributes
say which), plus one listing of pending reviews for their ages and one of the destination
health workflows (a handful). The observable gauges serve the last counts, so a scrape
never calls Temporal; ``careweave_visibility_refresh_age_seconds`` says how old they are.

Every label value is a code: a review reason of models.review.ReviewReason (``unrecorded``
for runs that reached their review before ReviewReason existed), a destination name of
the routing file, an alert or state word. Destinations seen in visibility but absent from
the routing file are left out rather than becoming label values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from temporalio.client import Client

from models.review import ReviewReason
from workflows import search_attributes as sa
from workflows.destination_health import EXCHANGE_NAME as DESTINATION_HEALTH
from workflows.ordered_delivery import EXCHANGE_NAME as ORDERED_DELIVERY

logger = logging.getLogger(__name__)

UNRECORDED_REASON = "unrecorded"
# DeliveryAlert values of a delivery queue that an operator must see ("ok" is not counted:
# there is one idle queue per patient and destination).
QUEUE_ALERTS = ("held", "failing")
# DeliveryAlert values of a destination's health workflow.
DESTINATION_STATES = ("up", "degraded", "down")
# Pending reviews read for their ages per refresh, at most: a person's backlog, not a
# feed; past this the oldest age may be missed but the counts stay exact.
MAX_REVIEWS_LISTED = 5000

_RUNNING = "ExecutionStatus = 'Running'"


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def pending_reviews_query(reason: str | None = None) -> str:
    """Running workflows waiting for a reviewer (of one reason when given)."""
    query = f"{sa.REVIEW_STATE.name} = 'pending' AND {_RUNNING}"
    if reason is not None:
        query += f" AND {sa.REVIEW_REASON.name} = {_quoted(reason)}"
    return query


def alerting_queues_query(destination: str, alert: str) -> str:
    """Running delivery queues of ``destination`` whose DeliveryAlert is ``alert``."""
    return (
        f"{sa.EXCHANGE.name} = {_quoted(ORDERED_DELIVERY)} AND {_RUNNING}"
        f" AND {sa.DESTINATION.name} = {_quoted(destination)}"
        f" AND {sa.DELIVERY_ALERT.name} = {_quoted(alert)}"
    )


@dataclass
class VisibilitySnapshot:
    """The last counts read; what the gauges report."""

    reviews_pending: dict[str, int] = field(default_factory=dict)
    # Seconds since the oldest pending review of each reason was asked.
    oldest_review_seconds: dict[str, float] = field(default_factory=dict)
    # (destination, alert) -> running queues.
    alerting_queues: dict[tuple[str, str], int] = field(default_factory=dict)
    # destination -> events held across its queues while it is down (its health workflow).
    held_events: dict[str, int] = field(default_factory=dict)
    destination_state: dict[str, str] = field(default_factory=dict)
    refreshed_at: float | None = None


class VisibilityGauges:
    """Observable gauges of what waits, fed by ``refresh`` (``run`` calls it periodically)."""

    def __init__(
        self,
        client: Client,
        destinations: Sequence[str],
        *,
        meter: Meter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._destinations = tuple(destinations)
        self._clock = clock
        self.snapshot = VisibilitySnapshot()
        meter = meter or metrics.get_meter("careweave.visibility")
        meter.create_observable_gauge(
            "careweave.reviews.pending",
            callbacks=[self._observe_pending],
            unit="{review}",
            description="Running exchanges waiting for a reviewer, by review reason",
        )
        meter.create_observable_gauge(
            "careweave.reviews.oldest_pending_age",
            callbacks=[self._observe_oldest],
            unit="s",
            description="Seconds since the oldest pending review of each reason was asked",
        )
        meter.create_observable_gauge(
            "careweave.delivery.queues",
            callbacks=[self._observe_queues],
            unit="{queue}",
            description="Delivery queues (one per patient) held or failing, by destination",
        )
        meter.create_observable_gauge(
            "careweave.destination.held_events",
            callbacks=[self._observe_held_events],
            unit="{event}",
            description="Events held for a destination its health workflow keeps down",
        )
        meter.create_observable_gauge(
            "careweave.destination.state",
            callbacks=[self._observe_state],
            unit="1",
            description="1 for a destination's current health state (up, degraded, down)",
        )
        meter.create_observable_gauge(
            "careweave.visibility.refresh_age",
            callbacks=[self._observe_refresh_age],
            unit="s",
            description="Seconds since these counts were last read from Temporal",
        )

    async def run(self, interval_seconds: float) -> None:
        """Refresh now and every ``interval_seconds`` until cancelled; a failed refresh
        keeps the last counts (their refresh age grows) and is logged by error type."""
        while True:
            try:
                await self.refresh()
            except Exception as err:  # Temporal unreachable: keep serving the last counts
                logger.warning("visibility metrics not refreshed: %s", type(err).__name__)
            await asyncio.sleep(interval_seconds)

    async def refresh(self) -> None:
        snapshot = VisibilitySnapshot()
        await self._count_reviews(snapshot)
        await self._read_review_ages(snapshot)
        for destination in self._destinations:
            for alert in QUEUE_ALERTS:
                counted = await self._client.count_workflows(
                    alerting_queues_query(destination, alert)
                )
                snapshot.alerting_queues[(destination, alert)] = counted.count
        await self._read_destination_health(snapshot)
        snapshot.refreshed_at = time.monotonic()
        self.snapshot = snapshot

    async def _count_reviews(self, snapshot: VisibilitySnapshot) -> None:
        total = (await self._client.count_workflows(pending_reviews_query())).count
        for reason in ReviewReason:
            counted = await self._client.count_workflows(pending_reviews_query(reason.value))
            snapshot.reviews_pending[reason.value] = counted.count
        snapshot.reviews_pending[UNRECORDED_REASON] = max(
            0, total - sum(snapshot.reviews_pending.values())
        )

    async def _read_review_ages(self, snapshot: VisibilitySnapshot) -> None:
        now = self._clock()
        known = {reason.value for reason in ReviewReason}
        listed = self._client.list_workflows(
            pending_reviews_query(), limit=MAX_REVIEWS_LISTED, page_size=1000
        )
        async for execution in listed:
            attributes = execution.typed_search_attributes
            reason = attributes.get(sa.REVIEW_REASON)
            asked = attributes.get(sa.REVIEW_REQUESTED_AT)
            if reason not in known or asked is None:
                # Reached its review before the reason was recorded: its start bounds the
                # wait from above.
                reason, asked = UNRECORDED_REASON, execution.start_time
            seconds = max(0.0, (now - asked).total_seconds())
            assert reason is not None
            if seconds > snapshot.oldest_review_seconds.get(reason, -1.0):
                snapshot.oldest_review_seconds[reason] = seconds

    async def _read_destination_health(self, snapshot: VisibilitySnapshot) -> None:
        routed = set(self._destinations)
        query = f"{sa.EXCHANGE.name} = {_quoted(DESTINATION_HEALTH)} AND {_RUNNING}"
        async for execution in self._client.list_workflows(query, page_size=1000):
            attributes = execution.typed_search_attributes
            destination = attributes.get(sa.DESTINATION)
            if destination not in routed:
                continue
            assert destination is not None
            snapshot.held_events[destination] = attributes.get(sa.HELD_EVENTS) or 0
            state = attributes.get(sa.DELIVERY_ALERT)
            if state in DESTINATION_STATES:
                assert state is not None
                snapshot.destination_state[destination] = state

    def _observe_pending(self, _options: CallbackOptions) -> Iterable[Observation]:
        for reason, count in self.snapshot.reviews_pending.items():
            yield Observation(count, {"reason": reason})

    def _observe_oldest(self, _options: CallbackOptions) -> Iterable[Observation]:
        # A reason with nothing pending reports 0, so an alert on the age clears.
        for reason in self.snapshot.reviews_pending:
            seconds = self.snapshot.oldest_review_seconds.get(reason, 0.0)
            yield Observation(seconds, {"reason": reason})

    def _observe_queues(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (destination, alert), count in self.snapshot.alerting_queues.items():
            yield Observation(count, {"destination": destination, "alert": alert})

    def _observe_held_events(self, _options: CallbackOptions) -> Iterable[Observation]:
        for destination, count in self.snapshot.held_events.items():
            yield Observation(count, {"destination": destination})

    def _observe_state(self, _options: CallbackOptions) -> Iterable[Observation]:
        for destination, current in self.snapshot.destination_state.items():
            for state in DESTINATION_STATES:
                value = 1 if state == current else 0
                yield Observation(value, {"destination": destination, "state": state})

    def _observe_refresh_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.snapshot.refreshed_at is not None:
            yield Observation(time.monotonic() - self.snapshot.refreshed_at)
