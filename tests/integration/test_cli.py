"""The operator's commands, run as a person would run them (a `careweave` process)
against the session's real Temporal dev server and the engine's database."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client

from adapters.hl7v2.ack import parse_ack
from tests.support.api import running_api
from tests.support.cli import careweave
from tests.support.engine import Engine, mllp_send
from tests.support.fhir_server import free_port
from workers import sample_messages as sm


async def test_reviewer_logs_in_lists_and_approves_from_the_command_line(
    engine: Engine, temporal_client: Client, tmp_path: Path
) -> None:
    order = sm.SampleOrder("CLI-4001", local_code="ZZX9", text="Experimental")
    workflow_id = engine.lab_workflow_id("CLI-4001")
    await mllp_send(
        engine.mllp_port,
        [sm.lab_order(order, "CLI-4001-O"), sm.lab_result(order, "CLI-4001-R", [sm.UNMAPPED])],
    )
    await engine.wait_for_review(workflow_id)

    async with running_api(engine) as api:
        reviewer = {
            "CAREWEAVE_API_URL": api.base_url,
            "CAREWEAVE_TOKEN_FILE": str(tmp_path / "reviewer.token"),
        }
        ops = {**reviewer, "CAREWEAVE_TOKEN_FILE": str(tmp_path / "ops.token")}

        async def run(*args: str, env: dict[str, str], stdin: str | None = None) -> tuple[int, str]:
            return await careweave(engine, temporal_client, *args, stdin=stdin, env=env)

        code, output = await run("review", "list", env=reviewer)
        assert code == 1
        assert "not logged in" in output

        for name, role in (("rev-cli", "reviewer"), ("ops-cli", "ops")):
            code, output = await run(
                *("users", "add", name, "--role", role, "--password-stdin"),
                stdin=f"{name} long password\n",
                env=reviewer,
            )
            assert code == 0, output
        code, output = await run(
            *("login", "--username", "rev-cli", "--password-stdin"),
            stdin="not the password\n",
            env=reviewer,
        )
        assert code == 1
        assert "refused (401)" in output
        for name, env in (("rev-cli", reviewer), ("ops-cli", ops)):
            code, output = await run(
                *("login", "--username", name, "--password-stdin"),
                stdin=f"{name} long password\n",
                env=env,
            )
            assert code == 0, output
        assert (tmp_path / "reviewer.token").stat().st_mode & 0o777 == 0o600

        code, output = await run("review", "list", env=ops)
        assert code == 0, output
        assert workflow_id in output
        assert "unmapped-code" in output

        approve = ("review", "approve", workflow_id, "--reason", "local code checked with the lab")
        code, output = await run(*approve, env=ops)
        assert code == 1
        assert "refused (403)" in output
        assert await engine.handle(workflow_id).query("review_history") == []

        code, output = await run(*approve, env=reviewer)
        assert code == 0, output
        await engine.wait_for_status(workflow_id, "final")
        history = await engine.handle(workflow_id).query("review_history")
        assert history[-1]["decision"]["reviewer"] == "rev-cli"
        assert history[-1]["decision"]["identity_issuer"] == "careweave"

        code, output = await run("review", "reject", workflow_id, "--reason", "twice", env=reviewer)
        assert code == 1
        assert "no pending review" in output


async def test_operator_fixes_and_releases_from_the_command_line(
    engine: Engine, temporal_client: Client, tmp_path: Path
) -> None:
    good = sm.lab_order(sm.SampleOrder("CLI-4002"), "CLI-4002-O")
    [ack] = await mllp_send(engine.mllp_port, [good.replace("\rORC|", "\rXRC|", 1)])
    assert parse_ack(ack)[0] == "AE"
    held_id = engine.store.quarantined(limit=1)[0].id
    assert held_id is not None

    code, output = await careweave(engine, temporal_client, "quarantine", "list")
    assert code == 0, output
    assert "CLI-4002-O" in output
    assert "Testpatient" not in output  # the list shows codes and reasons, no content

    code, output = await careweave(engine, temporal_client, "quarantine", "show", str(held_id))
    assert code == 0, output
    assert "XRC|" in output  # the kept bytes, for the operator to fix
    [shown] = [
        row
        for row in engine.store.audit_log().records(newest_first=True, limit=20)
        if row.action == "access" and row.resource == f"QuarantinedMessage/{held_id}"
    ]
    assert shown.actor_kind == "user"

    fixed = tmp_path / "fixed.hl7"
    fixed.write_text(good)
    code, output = await careweave(
        engine,
        temporal_client,
        *("quarantine", "release", str(held_id), "--fixed", str(fixed), "--by", "ops-cli"),
    )
    assert code == 0, output
    assert engine.lab_workflow_id("CLI-4002") in output
    await engine.wait_for_status(engine.lab_workflow_id("CLI-4002"), "ordered")

    code, output = await careweave(
        engine, temporal_client, "quarantine", "release", str(held_id), "--by", "ops-cli"
    )
    assert code == 1
    assert "already released" in output


async def test_send_reads_msh15_and_reports_each_message_and_failure(
    engine: Engine, temporal_client: Client, tmp_path: Path
) -> None:
    accepted = sm.lab_order(sm.SampleOrder("CLI-4003"), "CLI-4003-O")
    never_answered = sm.lab_order(sm.SampleOrder("CLI-4004"), "CLI-4004-O").replace(
        "|||AL|NE", "|||NE|NE", 1
    )
    errors_only = sm.lab_order(sm.SampleOrder("CLI-4005"), "CLI-4005-O").replace(
        "|||AL|NE", "|||ER|NE", 1
    )
    refused = sm.lab_order(sm.SampleOrder("CLI-4006"), "CLI-4006-O").replace(
        "ORM^O01^ORM_O01", "ORM^O99^ORM_O01", 1
    )
    feed = tmp_path / "feed.hl7"
    feed.write_text("\n".join((accepted, never_answered, errors_only, refused)))
    port = ("--port", str(engine.mllp_port), "--conditional-wait", "2")

    code, output = await careweave(engine, temporal_client, "send", *port, str(feed))
    assert code == 1, output  # one message was refused
    lines = output.splitlines()
    assert lines[0] == f"{feed}#1: AA CLI-4003-O"
    assert lines[1] == f"{feed}#2: sent; MSH-15 NE asks for no ACK"
    assert lines[2] == f"{feed}#3: no ACK in 2s; MSH-15 ER: accepted"
    assert lines[3].startswith(f"{feed}#4: AR CLI-4006-O")
    for number in ("CLI-4003", "CLI-4004", "CLI-4005"):
        await engine.wait_for_status(engine.lab_workflow_id(number), "ordered")
    [held] = engine.store.quarantined(limit=1)
    assert held.control_id == "CLI-4006-O"

    code, output = await careweave(engine, temporal_client, "send", *port, str(feed))
    assert code == 1
    assert f"{feed}#1: AA CLI-4003-O" in output  # duplicates are acknowledged again

    closed_port = free_port()
    code, output = await careweave(
        engine, temporal_client, "send", "--port", str(closed_port), str(feed)
    )
    assert code == 1
    assert f"cannot send to 127.0.0.1:{closed_port}" in output
    assert "Traceback" not in output

    code, output = await careweave(engine, temporal_client, "send", str(tmp_path / "none.hl7"))
    assert code == 1
    assert "none.hl7: cannot read" in output


async def test_user_changes_from_the_command_line_are_on_the_audit_trail(
    engine: Engine, temporal_client: Client
) -> None:
    async def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
        return await careweave(engine, temporal_client, *args, stdin=stdin)

    password = "break-glass long password\n"
    code, output = await run(
        "users", "add", "ops-night", "--role", "ops", "--password-stdin", stdin=password
    )
    assert code == 0, output
    code, output = await run(
        *("users", "add", "ops-night", "--role", "ops", "--role", "reviewer", "--password-stdin"),
        stdin=password,
    )
    assert code == 0, output
    code, output = await run("users", "list")
    assert code == 0, output
    [row] = [line for line in output.splitlines() if "ops-night" in line]
    assert "ops,reviewer" in row
    assert "argon2" not in output

    code, output = await run("users", "remove", "ops-night")
    assert code == 0, output
    code, output = await run("users", "remove", "ops-night")
    assert code == 1
    assert "no user ops-night" in output
    code, output = await run("users", "list")
    assert "ops-night" not in output

    changes = [
        row
        for row in engine.store.audit_log().records(newest_first=True, limit=50)
        if row.action == "account" and row.resource == "User/ops-night"
    ]
    assert [row.detail for row in reversed(changes)] == [
        "added (roles now ops)",
        "roles ops -> ops,reviewer, new password (roles now ops, reviewer)",
        "removed",
    ]
    assert {row.actor_kind for row in changes} == {"user"}
