"""The demo's partner system (partners/partner.js, an @medplum/hl7 Hl7Server) spoken to
with Careweave's own MLLP client: it records every message and answers AA by default,
AE/AR with an ERR-3 code on command (for a number of messages or until changed), or
nothing at all. The discharge-sync tests rely on exactly this behaviour."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.framing import BadFrame, Frame, MllpDecoder, encode_frame
from adapters.hl7v2.mllp_client import MllpClient, MllpTimeout
from tests.support.partner import Partner, running_partner


def adt_a03(control_id: str, mrn: str = "MRN1") -> str:
    return (
        "MSH|^~\\&|CAREWEAVE|GENHOSP|BILLING|BILLCO|20261125120000||ADT^A03^ADT_A03|"
        f"{control_id}|P|2.5.1\r"
        "EVN|A03|20261125120000\r"
        f"PID|1||{mrn}^^^GENHOSP^MR||Müller^Jo\r"
        "PV1|1|I|W1^101^A||||||||||||||||V100\r"
    )


def segment(text: str, name: str) -> list[str]:
    return next(s.split("|") for s in text.split("\r") if s.startswith(name + "|"))


@pytest.fixture(scope="module")
def started_partner() -> Iterator[Partner]:
    with running_partner("billing") as partner:
        yield partner


@pytest.fixture
async def partner(started_partner: Partner) -> Partner:
    await started_partner.areset()
    return started_partner


async def send(partner: Partner, message: str, *, timeout: float = 5) -> str:
    async with MllpClient(partner.host, partner.mllp_port, timeout=timeout) as client:
        return await client.send(message)


async def test_answers_aa_by_default_and_records_the_message(partner: Partner) -> None:
    ack = await send(partner, adt_a03("CTRL-1"))

    assert parse_ack(ack) == ("AA", "CTRL-1", "")
    msh = segment(ack, "MSH")
    # Sending and receiving application/facility swapped; an ACK for the A03.
    assert msh[2:6] == ["BILLING", "BILLCO", "CAREWEAVE", "GENHOSP"]
    assert msh[8].split("^")[0] == "ACK"
    records = await partner.amessages()
    assert len(records) == 1
    record = records[0]
    assert record["control_id"] == "CTRL-1"
    assert record["message_type"] == "ADT^A03^ADT_A03"
    assert record["answered"] == "AA"
    assert record["received_at"].endswith("Z")
    # The whole message, CR-separated, with the UTF-8 name intact.
    assert record["text"].rstrip("\r") == adt_a03("CTRL-1").rstrip("\r")
    assert "PID|1||MRN1^^^GENHOSP^MR||Müller^Jo" in record["text"].split("\r")


async def test_ae_for_the_next_three_messages_then_aa(partner: Partner) -> None:
    await partner.aset_mode("AE", code="206", text="Record locked", times=3)

    async with MllpClient(partner.host, partner.mllp_port, timeout=5) as client:
        acks = [parse_ack(await client.send(adt_a03("CTRL-2"))) for _ in range(5)]

    assert acks == [("AE", "CTRL-2", "206")] * 3 + [("AA", "CTRL-2", "")] * 2
    records = await partner.amessages()
    assert [r["answered"] for r in records] == ["AE", "AE", "AE", "AA", "AA"]
    assert {r["control_id"] for r in records} == {"CTRL-2"}


async def test_ar_carries_the_error_code_in_err_3(partner: Partner) -> None:
    await partner.aset_mode("AR", code="207", text="Application internal error")

    ack = await send(partner, adt_a03("CTRL-3"))

    assert parse_ack(ack) == ("AR", "CTRL-3", "207")
    assert segment(ack, "ERR") == ["ERR", "", "", "207^Application internal error^HL70357", "E"]
    # Without `times` the mode holds until changed.
    assert parse_ack(await send(partner, adt_a03("CTRL-4")))[0] == "AR"
    await partner.aset_mode("AA")
    assert parse_ack(await send(partner, adt_a03("CTRL-5")))[0] == "AA"
    assert [(r["control_id"], r["answered"]) for r in await partner.amessages()] == [
        ("CTRL-3", "AR"),
        ("CTRL-4", "AR"),
        ("CTRL-5", "AA"),
    ]


async def test_a_mode_for_one_patient_leaves_the_others_on_aa(partner: Partner) -> None:
    await partner.aset_mode("AR", code="100", times=2, patient_id="MRN2")

    answers = [
        parse_ack(await send(partner, adt_a03(control_id, mrn)))[0]
        for control_id, mrn in [
            ("CTRL-P1", "MRN1"),
            ("CTRL-P2", "MRN2"),
            ("CTRL-P3", "MRN22"),  # another patient, though its ID starts the same
            ("CTRL-P4", "MRN2"),
            ("CTRL-P5", "MRN2"),  # times=2 counted MRN2's messages only: used up
        ]
    ]

    assert answers == ["AA", "AR", "AA", "AR", "AA"]
    async with httpx.AsyncClient(base_url=partner.control_url, timeout=5) as http:
        blank = await http.post("/mode", json={"mode": "AR", "patient_id": ""})
        assert blank.status_code == 400
        assert "patient_id" in blank.json()["error"]


async def test_silent_partner_makes_the_client_time_out(partner: Partner) -> None:
    await partner.aset_mode("silent", times=1)

    with pytest.raises(MllpTimeout):
        await send(partner, adt_a03("CTRL-6"), timeout=1)

    # The message arrived and was recorded without an answer; the resend gets its AA.
    assert parse_ack(await send(partner, adt_a03("CTRL-6")))[:2] == ("AA", "CTRL-6")
    records = await partner.amessages()
    assert [(r["control_id"], r["answered"]) for r in records] == [
        ("CTRL-6", "none"),
        ("CTRL-6", "AA"),
    ]


async def test_reset_clears_messages_and_mode(partner: Partner) -> None:
    await partner.aset_mode("AE", code="206")
    assert parse_ack(await send(partner, adt_a03("CTRL-7")))[0] == "AE"
    assert len(await partner.amessages()) == 1

    await partner.areset()

    assert await partner.amessages() == []
    assert parse_ack(await send(partner, adt_a03("CTRL-8")))[0] == "AA"


async def test_sync_control_api_and_bad_requests(partner: Partner) -> None:
    await partner.aset_mode("AE", code="206", times=1)
    assert parse_ack(await send(partner, adt_a03("CTRL-9"))) == ("AE", "CTRL-9", "206")
    async with httpx.AsyncClient(base_url=partner.control_url, timeout=5) as http:
        assert (await http.get("/health")).status_code == 200
        bad_json = await http.post("/mode", content=b"{not json")
        assert bad_json.status_code == 400
        assert "error" in bad_json.json()
        unknown = await http.post("/mode", json={"mode": "MAYBE"})
        assert unknown.status_code == 400
        assert "unknown mode" in unknown.json()["error"]
        assert (await http.post("/mode", json={"mode": "AE", "times": 0})).status_code == 400
    with pytest.raises(RuntimeError, match="400"):
        await partner.aset_mode("MAYBE")
    # A refused change leaves the mode as it was (AA again after times=1).
    assert parse_ack(await send(partner, adt_a03("CTRL-10")))[0] == "AA"


def test_sync_helpers(started_partner: Partner) -> None:
    partner = started_partner
    partner.reset()
    partner.set_mode("AR", code="200", text="Unsupported", times=1)
    with pytest.raises(RuntimeError, match="unknown mode"):
        partner.set_mode("MAYBE")
    with socket.create_connection((partner.host, partner.mllp_port), timeout=5) as sock:
        sock.sendall(encode_frame(adt_a03("CTRL-11").encode()))
        decoder = MllpDecoder(1024 * 1024)
        frames: list[Frame | BadFrame] = []
        while not frames:
            chunk = sock.recv(65536)
            assert chunk, "the partner closed the connection without an ACK"
            frames = list(decoder.feed(chunk))
    assert isinstance(frames[0], Frame)
    assert parse_ack(frames[0].payload.decode()) == ("AR", "CTRL-11", "200")
    assert [(r["control_id"], r["answered"]) for r in partner.messages()] == [("CTRL-11", "AR")]
    partner.reset()
    assert partner.messages() == []
