"""Bad input through the real gateway (real Temporal behind it): every adversarial
corpus file gets AR/AE or a refused frame, its raw bytes land in quarantine, and
the gateway keeps serving other connections. Expectations follow
tests/fixtures/corpus/README.md; the gateway accepts the lab exchange's types and
discharge sync's A03/A13/A08, so the corpus's other ADT events are answered AR 201
(their fast-path acceptance is tested in tests/unit/test_header.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.framing import END_BLOCK, START_BLOCK, encode_frame
from tests.support.engine import Engine, mllp_send
from workers.feed import split_messages
from workers.gateway import MllpGateway
from workers.sample_messages import SODIUM, SampleOrder, lab_result

ADVERSARIAL = Path(__file__).resolve().parent.parent / "fixtures" / "corpus" / "adversarial"

# file -> (MSA-1, ERR-3 code or "" when any code is fine)
EXPECTED: dict[str, tuple[str, str]] = {
    "no-msh.hl7": ("AR", "100"),
    "truncated-mid-segment.hl7": ("AR", ""),
    "bad-encoding-characters.hl7": ("AR", ""),
    "unknown-message-type.hl7": ("AR", "200"),
    "unsupported-version.hl7": ("AR", "203"),
    "bad-batch-pythonhl7-1.hl7": ("AR", ""),
    "bad-file-pythonhl7-1.hl7": ("AR", ""),
    "adt-a01-nodehl7complete-oneline-1.hl7": ("AR", ""),
    "oml-o21-hapi-multimessage-1.hl7": ("AR", ""),
    "siu-s12-nodehl7complete-badphone-1.hl7": ("AR", ""),
    "pid-only-repetitions-pythonhl7-1.hl7": ("AE", ""),
    "missing-placer-and-filler.hl7": ("AE", "101"),
    "orm-o01-nodehl7complete-wrapped-1.hl7": ("AE", ""),
    "oml-o21-fhirconverter-mergedseg-1.hl7": ("AE", ""),
    # A24 (link) reaches patient-merge: MSH-1/MSH-2 define the delimiters, and they are honoured.
    "adt-a24-hapi-customdelims-1.hl7": ("AA", ""),
    # A08s: accepted into discharge sync (no visit number: kept in the patient's own
    # exchange); the injection strings travel as data.
    "injection-strings.hl7": ("AA", ""),
    "latin1-bytes-declared-8859-1.hl7": ("AA", ""),
    "lf-separators.hl7": ("AA", ""),
    "crlf-separators.hl7": ("AA", ""),
    "trailing-whitespace-and-empty-segments.hl7": ("AA", ""),
    "escape-sequences.hl7": ("AA", ""),
    "nonnumeric-nm-values.hl7": ("AA", ""),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_adversarial_file_gets_the_expected_answer(engine: Engine, name: str) -> None:
    raw = (ADVERSARIAL / name).read_bytes()
    before = len(engine.store.quarantined(limit=10_000))
    [ack] = await mllp_send(engine.mllp_port, [raw])
    code, _control_id, error = parse_ack(ack)
    expected_code, expected_error = EXPECTED[name]
    assert code == expected_code, ack
    if expected_error:
        assert error == expected_error, ack
    quarantined = engine.store.quarantined(limit=10_000)
    if code == "AA":
        assert len(quarantined) == before
    else:
        assert len(quarantined) == before + 1
        # python-hl7's mllp_send trims the trailing segment separator before framing;
        # exact bytes are checked below with a raw socket sender.
        assert quarantined[0].raw.rstrip(b"\r") == raw.rstrip(b"\r")
        assert quarantined[0].ack_code == code


async def test_latin1_without_charset_is_answered_ae_and_kept(engine: Engine) -> None:
    raw = (ADVERSARIAL / "latin1-bytes-undeclared.hl7").read_bytes()
    [ack] = await mllp_send(engine.mllp_port, [raw])
    code, _, _ = parse_ack(ack)
    assert code in ("AE", "AR")
    assert engine.store.quarantined(limit=1)[0].raw.rstrip(b"\r") == raw.rstrip(b"\r")


async def test_same_control_id_twice_is_one_exchange(engine: Engine) -> None:
    messages = split_messages((ADVERSARIAL / "same-control-id-twice.hl7").read_bytes())
    assert len(messages) == 2
    acks = await mllp_send(engine.mllp_port, messages)
    assert [parse_ack(ack)[0] for ack in acks] == ["AA", "AA"]
    receipts = engine.store.receipt("NORTHLAB", "ADV-0010")
    assert receipts is not None
    runs = [
        execution
        async for execution in engine.client.list_workflows(
            f"WorkflowId = '{receipts.workflow_id}'"
        )
    ]
    assert len(runs) == 1


async def _raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(END_BLOCK), timeout)
    finally:
        writer.close()


async def test_embedded_start_byte_refused_and_other_connections_unaffected(
    engine: Engine,
) -> None:
    raw = (ADVERSARIAL / "embedded-mllp-start-byte.hl7").read_bytes()
    assert START_BLOCK in raw
    # A healthy sender opens its connection first and keeps it through the attack.
    reader, writer = await asyncio.open_connection("127.0.0.1", engine.mllp_port)
    before = len(engine.store.quarantined(limit=10_000))
    try:
        answer = await _raw_exchange(engine.mllp_port, encode_frame(raw))
    except (asyncio.IncompleteReadError, ConnectionError):
        answer = b""  # a reset connection is an accepted answer too
    if answer:
        assert parse_ack(answer.strip(b"\x0b\x1c\r").decode())[0] == "AR"
    assert len(engine.store.quarantined(limit=10_000)) > before

    order = SampleOrder("GW-HEALTHY-1")
    writer.write(encode_frame(lab_result(order, "GW-HEALTHY-1", [SODIUM]).encode()))
    await writer.drain()
    ack = await asyncio.wait_for(reader.readuntil(END_BLOCK), 20)
    writer.close()
    assert parse_ack(ack.strip(b"\x0b\x1c\r").decode())[0] == "AA"


async def test_oversized_frame_refused_and_kept(engine: Engine) -> None:
    too_big = (
        b"MSH|^~\\&|X|Y|Z|W|20261125||ORU^R01|BIG1|P|2.5.1\r"
        + b"OBX|"
        + b"9" * (engine.settings.mllp_max_frame_bytes + 10)
    )
    answer = await _raw_exchange(engine.mllp_port, encode_frame(too_big))
    assert parse_ack(answer.strip(b"\x0b\x1c\r").decode())[0] == "AR"
    kept = engine.store.quarantined(limit=1)[0]
    assert "too large" in kept.reason


async def test_one_message_over_many_reads_and_many_in_one_read(engine: Engine) -> None:
    first = encode_frame(lab_result(SampleOrder("GW-SPLIT-1"), "GW-SPLIT-1", [SODIUM]).encode())
    second = encode_frame(lab_result(SampleOrder("GW-SPLIT-2"), "GW-SPLIT-2", [SODIUM]).encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", engine.mllp_port)
    try:
        for index in range(0, len(first), 7):  # the first message dribbles in
            writer.write(first[index : index + 7])
            await writer.drain()
        ack_one = await asyncio.wait_for(reader.readuntil(END_BLOCK), 20)
        writer.write(second + second)  # the second twice in one write: a resend
        await writer.drain()
        ack_two = await asyncio.wait_for(reader.readuntil(END_BLOCK), 20)
        ack_three = await asyncio.wait_for(reader.readuntil(END_BLOCK), 20)
    finally:
        writer.close()
    codes = [parse_ack(a.strip(b"\x0b\x1c\r").decode())[:2] for a in (ack_one, ack_two, ack_three)]
    assert codes == [("AA", "GW-SPLIT-1"), ("AA", "GW-SPLIT-2"), ("AA", "GW-SPLIT-2")]


async def test_idle_connection_is_closed_and_its_unfinished_frame_kept(engine: Engine) -> None:
    settings = engine.settings.model_copy(update={"mllp_idle_timeout_seconds": 0.5})
    gateway = MllpGateway(engine.intake, settings)
    await gateway.start()
    try:
        unfinished = START_BLOCK + b"MSH|^~\\&|LAB|NORTHLAB|EHR|GENHOSP|20261125||ORU^R01|IDLE1|P"
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(unfinished)
        await writer.drain()
        # The gateway hangs up after the idle timeout: EOF, no answer.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        kept = engine.store.quarantined(limit=1)[0]
        assert kept.raw in (unfinished, unfinished.removeprefix(START_BLOCK))
    finally:
        await gateway.close()


async def test_connections_over_the_limit_are_closed_and_others_served(engine: Engine) -> None:
    settings = engine.settings.model_copy(update={"mllp_max_connections": 2})
    gateway = MllpGateway(engine.intake, settings)
    await gateway.start()
    opened = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(2)]
    try:
        await asyncio.sleep(0.2)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        assert await asyncio.wait_for(extra_reader.read(), 10) == b""
        extra_writer.close()

        reader, writer = opened[0]
        order = SampleOrder("GW-LIMIT-1")
        writer.write(encode_frame(lab_result(order, "GW-LIMIT-1", [SODIUM]).encode()))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(END_BLOCK), 20)
        assert parse_ack(ack.strip(b"\x0b\x1c\r").decode())[0] == "AA"
    finally:
        for _, writer in opened:
            writer.close()
        await gateway.close()


async def test_slow_loris_is_closed_and_does_not_delay_other_senders(engine: Engine) -> None:
    """One connection trickles a frame a byte at a time, each byte well inside the idle
    timeout; another opens and sends nothing. A third sender's message is answered at once,
    the silent one is closed at the idle timeout, the trickler at the frame deadline."""
    settings = engine.settings.model_copy(
        update={"mllp_idle_timeout_seconds": 1.0, "mllp_frame_timeout_seconds": 2.5}
    )
    gateway = MllpGateway(engine.intake, settings)
    await gateway.start()
    loop = asyncio.get_running_loop()
    trickle = encode_frame(lab_result(SampleOrder("GW-LORIS-1"), "GW-LORIS-1", [SODIUM]).encode())
    closed_after: dict[str, float] = {}

    async def trickler() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        started = loop.time()
        try:
            for byte in trickle[:-1]:  # never the last byte: the frame never completes
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.25)
                if reader.at_eof():
                    break
        except ConnectionError:
            pass
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 10) == b""
        closed_after["trickler"] = loop.time() - started
        writer.close()

    async def silent() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        started = loop.time()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        closed_after["silent"] = loop.time() - started
        writer.close()

    try:
        attackers = [asyncio.create_task(trickler()), asyncio.create_task(silent())]
        await asyncio.sleep(0.5)  # both are connected and the trickle has begun
        order = SampleOrder("GW-LORIS-OK")
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(encode_frame(lab_result(order, "GW-LORIS-OK", [SODIUM]).encode()))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(END_BLOCK), 20)
        answered_in = loop.time() - started
        writer.close()
        assert parse_ack(ack.strip(b"\x0b\x1c\r").decode())[:2] == ("AA", "GW-LORIS-OK")
        assert answered_in < 2.0, f"the healthy sender waited {answered_in:.1f} s"
        await asyncio.gather(*attackers)
    finally:
        await gateway.close()
    # Sent ~0.25 s apart, the trickler's bytes never hit the 1 s idle timeout: only the
    # frame deadline (2.5 s) closes it, long before it could finish its frame (~60 s).
    assert 0.8 <= closed_after["silent"] < 3.0
    assert 2.3 <= closed_after["trickler"] < 6.0
    # What had arrived of the trickled frame is kept (a dozen bytes of its MSH).
    newest = engine.store.quarantined(limit=1)[0]
    assert len(newest.raw) >= 5 and trickle.removeprefix(START_BLOCK).startswith(newest.raw)
    assert "stream ended inside a frame" in newest.reason
