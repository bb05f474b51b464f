"""Destination health: what the per-destination health workflow keeps, what the delivery
queues and operators tell it, and what it tells them. No PHI: destination names are
configuration, queue ids carry patient pseudonyms only, details are Careweave's own text."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class HealthState(StrEnum):
    UP = "up"
    DEGRADED = "degraded"  # failures reported, fewer than the trip threshold in a row
    DOWN = "down"


class QueueReportKind(StrEnum):
    REGISTER = "register"  # a queue run starts: "may I send?" (answered with a notice)
    FAILED = "failed"  # an attempt found the destination unavailable
    HELD = "held"  # the queue is holding (its held count changed)
    RECOVERED = "recovered"  # a send succeeded after this queue had reported a failure
    DRAINED = "drained"  # a released queue delivered its backlog (or its head went to review)


class QueueReport(BaseModel):
    """A delivery queue's signal to its destination's health workflow."""

    model_config = ConfigDict(frozen=True)

    queue_id: str
    kind: QueueReportKind
    held_events: int = 0
    oldest_held_at: datetime | None = None
    # DRAINED: events this queue delivered since its release.
    delivered: int = 0


# The delivery queue's signal that takes a DestinationNotice (workflows/ordered_delivery.py
# declares it under this name; the health workflow signals it: the two modules would
# otherwise import each other).
QUEUE_NOTICE_SIGNAL = "destination_notice"

# The health workflow's memo key (health runs with patch `publish-clearance`): true while a
# queue starting a burst would be told to send (not down, nobody held, no paused replay), so
# the queue can read it (a describe, no workflow task on either side) instead of asking.
CLEAR_TO_SEND_MEMO = "clear_to_send"


class NoticeState(StrEnum):
    SEND = "send"  # deliver (after a release: at pace_seconds between events)
    HOLD = "hold"  # wait for the next notice; nothing is attempted, nothing is spent


class DestinationNotice(BaseModel):
    """The health workflow's signal to a delivery queue."""

    model_config = ConfigDict(frozen=True)

    state: NoticeState
    # Seconds between this queue's sends while it drains a backlog after a release: the
    # destination's replay rate shared among the queues released at once.
    pace_seconds: float = 0.0


class OperatorCommand(BaseModel):
    """`careweave destination down|up NAME --reason ...` (an update, validated first)."""

    model_config = ConfigDict(frozen=True)

    state: HealthState
    reason: str = Field(min_length=1, max_length=300)
    operator: str = Field(min_length=1, max_length=200)


class ReplayAction(StrEnum):
    PAUSE = "pause"  # released queues finish the event in hand, then hold; none released
    RESUME = "resume"  # the held-back queues go on, and the release goes on in its order


class ReplayCommand(BaseModel):
    """`careweave destination pause|resume NAME --reason ...` (an update, validated first)."""

    model_config = ConfigDict(frozen=True)

    action: ReplayAction
    reason: str = Field(min_length=1, max_length=300)
    operator: str = Field(min_length=1, max_length=200)


class HealthPolicy(BaseModel):
    """From Settings (CAREWEAVE_DESTINATION_*), fixed for a health workflow's run."""

    model_config = ConfigDict(frozen=True)

    # At least 2: a queue's attempt that trips the destination down is given back to it,
    # so with 1 a single poison message whose partner goes silent would hold forever
    # instead of reaching a reviewer.
    failures_to_trip: int = Field(default=5, ge=2)
    first_probe_seconds: float = Field(default=5.0, gt=0)
    max_probe_seconds: float = Field(default=300.0, gt=0)
    probe_timeout_seconds: float = Field(default=15.0, gt=0)
    replay_parallel_patients: int = Field(default=20, ge=1)
    replay_events_per_second: float = Field(default=20.0, gt=0)
    # How long a queue run waits for its health workflow's answer before sending anyway.
    register_timeout_seconds: float = Field(default=30.0, gt=0)
    continue_as_new_after_events: int = Field(default=5_000, ge=100)


class HeldQueue(BaseModel):
    queue_id: str
    held_events: int = 0
    oldest_held_at: datetime | None = None


class ReplayProgress(BaseModel):
    queues_total: int = 0
    queues_done: int = 0
    events_total: int = 0
    events_done: int = 0


class DestinationHealthState(BaseModel):
    """The health workflow's input, and what it carries across continue-as-new."""

    destination: str
    kind: str
    policy: HealthPolicy = HealthPolicy()
    state: HealthState = HealthState.UP
    since: datetime | None = None
    reason: str = ""
    # "failures" (tripped by the queues' reports) or "operator": only a failure trip is
    # lifted by a probe; an operator's down (maintenance) stays until an operator's up.
    down_by: str = ""
    failure_run: int = 0
    # Queues that reported a failure and no success since, in report order.
    failing: list[str] = []
    # Queues holding while down (or waiting their turn in a replay), in the order they
    # came: the replay releases them in this order.
    held: list[HeldQueue] = []
    # Released queues still draining their backlog.
    replaying: list[HeldQueue] = []
    replay: ReplayProgress | None = None
    # An operator's pause: nothing is released and released queues hold after the event in
    # hand, until an operator's resume (kept across a trip down and back up).
    replay_paused: bool = False
    probe_delay_seconds: float = 0.0
    last_probe_at: datetime | None = None
    last_probe: str = ""


class DestinationStatus(BaseModel):
    """What `careweave destination status` shows (query `status`, and the update's answer)."""

    destination: str
    kind: str
    state: HealthState
    since: datetime | None
    reason: str
    down_by: str
    held_queues: int
    held_events: int
    oldest_held_at: datetime | None
    last_probe_at: datetime | None
    last_probe: str
    replay: ReplayProgress | None
    # Released queues still draining (the held ones wait their turn in held_queues).
    replaying_queues: int = 0
    replay_paused: bool = False

    @property
    def replay_finished(self) -> bool:
        """A replay ran and nothing is left of it: every held queue released and drained."""
        return (
            self.replay is not None
            and self.state is not HealthState.DOWN
            and self.held_queues == 0
            and self.replaying_queues == 0
        )


class ProbeRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    destination: str
    timeout_seconds: float


class ProbeResult(BaseModel):
    ok: bool
    detail: str


class HealthChange(BaseModel):
    """One change of state, for the audit trail (the activity's row names it)."""

    model_config = ConfigDict(frozen=True)

    destination: str
    previous: HealthState
    state: HealthState
    by: str  # "failures", "probe", "operator <user>"
    # Careweave's own words ("3 failures in a row", "probe: AA"); an operator's reason
    # stays in the workflow (encrypted), the audit row says who.
    detail: str

    @property
    def audit_detail(self) -> str:
        return f"{self.previous.value} -> {self.state.value} by {self.by}: {self.detail}"[:400]


def health_workflow_id(destination: str) -> str:
    return f"destination-health/{destination}"
