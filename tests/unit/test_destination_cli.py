"""How `careweave destination status|watch` word a destination's replay: the status table's
replay cell, the stage beside the progress bar and the bar's figures (the same counts the
health workflow's current details show in the Temporal UI)."""

from __future__ import annotations

import datetime as dt

from rich.console import Console

from models.destination_health import DestinationStatus, HealthState, ReplayProgress
from workers.cli.destination import replay_stage, replay_summary, replay_view, status_table
from workflows.destination_health import replay_details

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def status(
    state: HealthState = HealthState.UP,
    *,
    replay: ReplayProgress | None = None,
    held_queues: int = 0,
    held_events: int = 0,
    replaying_queues: int = 0,
    paused: bool = False,
    reason: str = "",
) -> DestinationStatus:
    return DestinationStatus(
        destination="billing",
        kind="mllp",
        state=state,
        since=NOW - dt.timedelta(minutes=5),
        reason=reason,
        down_by="operator" if state is HealthState.DOWN else "",
        held_queues=held_queues,
        held_events=held_events,
        oldest_held_at=NOW - dt.timedelta(minutes=4) if held_events else None,
        last_probe_at=None,
        last_probe="",
        replay=replay,
        replaying_queues=replaying_queues,
        replay_paused=paused,
    )


def rendered(table: object) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


HALF_WAY = ReplayProgress(queues_total=4, queues_done=2, events_total=10, events_done=5)


def test_a_running_replay_counts_events_then_patients() -> None:
    running = status(replay=HALF_WAY, held_queues=1, held_events=3, replaying_queues=1)
    assert replay_details(running) == "; replay: 5 of 10 events, 2 of 4 patients"
    assert replay_summary(running) == "replay: 5 of 10 events, 2 of 4 patients"
    assert replay_stage(running) == ("replaying: 1 patient queue(s) sending, 1 waiting their turn")
    view = replay_view(running)
    assert (view.total, view.completed, view.patients) == (10, 5, "2 of 4 patients")


def test_a_paused_replay_says_paused_and_why() -> None:
    paused = status(
        replay=HALF_WAY, held_queues=2, replaying_queues=1, paused=True, reason="lab slow"
    )
    assert replay_summary(paused) == "replay: 5 of 10 events, 2 of 4 patients (paused)"
    assert replay_stage(paused) == "paused (lab slow)"
    text = rendered(status_table(paused, NOW))
    assert "(paused)" in text and "lab slow" in text


def test_a_finished_replay_is_done() -> None:
    done = status(
        replay=ReplayProgress(queues_total=4, queues_done=4, events_total=10, events_done=10)
    )
    assert done.replay_finished
    assert replay_summary(done) == "replay: 10 of 10 events, 4 of 4 patients (done)"
    assert replay_stage(done) == "replay done"
    assert replay_view(done).completed == replay_view(done).total == 10


def test_down_has_no_bar_length_yet_and_names_what_is_held() -> None:
    down = status(HealthState.DOWN, held_queues=3, held_events=7, paused=True)
    assert not down.replay_finished
    view = replay_view(down)
    assert view.total is None and view.completed == 0
    assert view.patients == "3 patient queue(s) held"
    assert view.stage == (
        "down (7 event(s) held in 3 queue(s), replay paused): waiting for it to come back"
    )
    assert replay_summary(down) == "replay paused"
    text = rendered(status_table(down, NOW))
    assert "down (operator)" in text and "7 event(s) in 3 queue(s)" in text
    assert "0:04:00" in text  # the oldest held event's age


def test_no_replay_shows_a_dash() -> None:
    idle = status()
    assert replay_summary(idle) == "-"
    assert replay_stage(idle) == "no replay: nothing was held"
    assert not idle.replay_finished
