"""A soak under faults, in three parts that a test and bench/soak.py share:

- ``mixed_feed``: per-patient scripts of lab orders, results and corrections, discharges
  and A08 amendments, with deliberate resends (an interface that lost an ACK sends the
  same MSH-10 again);
- ``FeedSenders``: concurrent MLLP senders, each one interface with its own patients,
  sending one message at a time and resending it until it is answered AA, as real
  interfaces do (AE, a timeout or a dropped connection: wait, reconnect — to the next
  gateway, as a load balancer would — and send the same message again);
- ``findings``: what reached the FHIR server and the partner system, against every
  acknowledged message: lost, duplicated, out of each patient's order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.fhir import FhirClient
from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient, MllpError, MllpTimeout
from tests.support.partner import Partner
from tests.support.production_shape import ProductionShape
from workers import sample_messages as sm

# A lab script is an order and its result, a quarter of them corrected afterwards; a
# discharge script is an A03, half of them amended by an A08 (DG1 changed) afterwards.
CORRECTED_SHARE = 0.25
AMENDED_SHARE = 0.5
RESEND_SHARE = 0.1
AMENDED_DIAGNOSES = (
    sm.SampleDiagnosis("1", "I10", "Essential (primary) hypertension", "A"),
    sm.SampleDiagnosis("2", "E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
)
CORRECTED_SODIUM = sm.ResultValue("NA", "Sodium", "133", "mmol/L", "136-145", "L")


@dataclass(frozen=True)
class FeedMessage:
    kind: str  # order, result, correction, discharge, amendment
    control_id: str
    text: str
    resend: bool = False  # the same message sent again on purpose, after its AA


@dataclass
class PatientScript:
    """One patient's messages, in clinical order: sent in this order, one at a time."""

    kind: str  # lab or discharge
    key: str  # placer order number (lab) or visit number (discharge)
    messages: list[FeedMessage]

    @property
    def kinds(self) -> list[str]:
        return [m.kind for m in self.messages if not m.resend]


def mixed_feed(messages: int, tag: str, seed: int = 14) -> list[PatientScript]:
    """Scripts holding ``messages`` distinct messages (resends come on top)."""
    rng = random.Random(seed)
    scripts: list[PatientScript] = []
    count = 0
    while count < messages:
        number = f"{tag}{len(scripts):05d}"
        patient = sm.SamplePatient(mrn=f"SK{number}")
        if rng.random() < 0.5:
            order = sm.SampleOrder(f"SK{number}", patient=patient)
            feed = [
                FeedMessage("order", f"SK{number}-O", sm.lab_order(order, f"SK{number}-O")),
                FeedMessage(
                    "result",
                    f"SK{number}-R",
                    sm.lab_result(order, f"SK{number}-R", [sm.SODIUM, sm.POTASSIUM]),
                ),
            ]
            if rng.random() < CORRECTED_SHARE:
                text = sm.lab_result(
                    order, f"SK{number}-C", [CORRECTED_SODIUM, sm.POTASSIUM], result_status="C"
                )
                feed.append(FeedMessage("correction", f"SK{number}-C", text))
            script = PatientScript("lab", order.placer_order_number, feed)
        else:
            visit = f"VS{number}"
            stay = sm.SampleStay(visit, patient=patient)
            feed = [
                FeedMessage(
                    "discharge", f"SK{number}-D", sm.adt_event(stay, f"SK{number}-D", "A03")
                )
            ]
            if rng.random() < AMENDED_SHARE:
                amended = sm.SampleStay(visit, patient=patient, diagnoses=AMENDED_DIAGNOSES)
                text = sm.adt_event(amended, f"SK{number}-A", "A08", discharge_fields=False)
                feed.append(FeedMessage("amendment", f"SK{number}-A", text))
            script = PatientScript("discharge", visit, feed)
        count += len(feed)
        if rng.random() < RESEND_SHARE:
            again = rng.randrange(len(feed))
            resent = feed[again]
            feed.insert(again + 1, FeedMessage(resent.kind, resent.control_id, resent.text, True))
        scripts.append(script)
    return scripts


@dataclass
class Delivery:
    """One message's way through the senders: every try until its AA."""

    message: FeedMessage
    tries: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    acknowledged_at: float | None = None


@dataclass
class SenderFigures:
    sent: int = 0  # distinct messages
    deliberate_resends: int = 0
    transmissions: int = 0  # every send on the wire, resends included
    acknowledged: int = 0
    resends_until_aa: int = 0  # sends again because the answer was not AA (or none came)
    answers: Counter[str] = field(default_factory=Counter)
    started_at: float = 0.0
    last_ack_at: float = 0.0
    gave_up: list[str] = field(default_factory=list)


class FeedSenders:
    """``senders`` interfaces sending ``scripts`` to the gateways at ``ports``."""

    def __init__(
        self,
        ports: list[int],
        scripts: list[PatientScript],
        *,
        senders: int,
        rate: float | None = None,
        ack_timeout: float = 30.0,
        give_up_after: float = 600.0,
        seed: int = 14,
    ) -> None:
        self._ports = ports
        self._ack_timeout = ack_timeout
        self._give_up_after = give_up_after
        # Each interface interleaves its own patients' scripts, each kept in its order.
        rng = random.Random(seed)
        self._queues: list[list[FeedMessage]] = []
        for index in range(senders):
            own = [list(s.messages) for s in scripts[index::senders]]
            queue: list[FeedMessage] = []
            while own:
                pick = rng.randrange(len(own))
                queue.append(own[pick].pop(0))
                if not own[pick]:
                    own.pop(pick)
            self._queues.append(queue)
        self._interval = senders / rate if rate else 0.0
        self.figures = SenderFigures()
        self.deliveries: dict[str, Delivery] = {}
        self.total = sum(len(q) for q in self._queues)
        self.done = 0
        self._progress = asyncio.Condition()

    async def reached(self, count: float) -> None:
        """Until ``count`` messages have been answered AA (or given up)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.done >= count)

    async def run(self) -> SenderFigures:
        self.figures.started_at = time.monotonic()
        await asyncio.gather(*(self._sender(n, q) for n, q in enumerate(self._queues)))
        return self.figures

    async def _sender(self, index: int, queue: list[FeedMessage]) -> None:
        port_index = index % len(self._ports)
        client = MllpClient("127.0.0.1", self._ports[port_index], timeout=self._ack_timeout)
        loop = asyncio.get_running_loop()
        try:
            for message in queue:
                next_at = loop.time() + self._interval
                delivery = self.deliveries.setdefault(message.control_id, Delivery(message))
                if message.resend:
                    self.figures.deliberate_resends += 1
                else:
                    self.figures.sent += 1
                pause = 0.2
                deadline = loop.time() + self._give_up_after
                while True:
                    delivery.tries += 1
                    self.figures.transmissions += 1
                    answer = await self._send_once(client, message.text)
                    delivery.answers[answer] += 1
                    self.figures.answers[answer] += 1
                    if answer == "AA":
                        break
                    self.figures.resends_until_aa += 1
                    if loop.time() > deadline:
                        self.figures.gave_up.append(message.control_id)
                        break
                    if answer == "dropped":
                        # Nobody there: the balancer sends the next connection elsewhere.
                        port_index = (port_index + 1) % len(self._ports)
                        await client.close()
                        client = MllpClient(
                            "127.0.0.1", self._ports[port_index], timeout=self._ack_timeout
                        )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
                if answer == "AA" and not message.resend:
                    self.figures.acknowledged += 1
                    delivery.acknowledged_at = time.monotonic()
                    self.figures.last_ack_at = delivery.acknowledged_at
                self.done += 1
                async with self._progress:
                    self._progress.notify_all()
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            await client.close()

    @staticmethod
    async def _send_once(client: MllpClient, text: str) -> str:
        """AA, AE or AR; "timeout" (no answer in time) or "dropped" (no connection, or it
        broke) otherwise."""
        try:
            code, _, _ = parse_ack(await client.send(text))
            return code
        except MllpTimeout:
            return "timeout"
        except (MllpError, OSError):
            return "dropped"


@dataclass
class Findings:
    """Acknowledged messages whose effect is missing (lost), effects there more than once
    (duplicates), patients whose events arrived out of order, and the partner's resends
    of a message it had already received under the same MSH-10 (a receiver's dedup drops
    them; counted, not faults)."""

    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    same_control_id_redeliveries: int = 0
    checked: Counter[str] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicates or self.out_of_order)

    def summary(self) -> str:
        return (
            f"lost {len(self.lost)}, duplicates {len(self.duplicates)}, "
            f"out of order {len(self.out_of_order)}, redelivered under the same MSH-10 "
            f"{self.same_control_id_redeliveries}; checked {dict(self.checked)}"
        )


def _trigger(record: dict[str, Any]) -> str:
    return str(record["message_type"]).split("^")[1]


def _visit(record: dict[str, Any]) -> str:
    [pv1] = [s for s in str(record["text"]).split("\r") if s.startswith("PV1|")]
    return pv1.split("|")[19].split("^")[0]


async def _everything(fhir: FhirClient, resource_type: str) -> list[dict[str, Any]]:
    return await fhir.search(resource_type, {"_count": "1000"})


async def findings(
    fhir_base_url: str,
    partner: Partner,
    scripts: list[PatientScript],
    acknowledged: Callable[[str], bool],
) -> Findings:
    """Every script checked against the FHIR server and the partner's log, for the
    messages ``acknowledged`` says were answered AA."""
    found = Findings()
    async with FhirClient(fhir_base_url, timeout=120) as fhir:
        requests_by_placer: Counter[str] = Counter()
        for request in await _everything(fhir, "ServiceRequest"):
            for identifier in request.get("identifier", []):
                if identifier["type"]["coding"][0]["code"] == "PLAC":
                    requests_by_placer[identifier["value"]] += 1
        reports_by_placer: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for report in await _everything(fhir, "DiagnosticReport"):
            # filler/<namespace>/F<placer>/<service>: the sample lab's filler number.
            filler = report["identifier"][0]["value"].split("/")[2]
            reports_by_placer[filler.removeprefix("F")].append(report)
        encounters_by_visit: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for encounter in await _everything(fhir, "Encounter"):
            for identifier in encounter.get("identifier", []):
                encounters_by_visit[identifier["value"]].append(encounter)
        for script in scripts:
            sent = {m.kind: m.control_id for m in script.messages if acknowledged(m.control_id)}
            if script.kind != "lab":
                continue
            placer = script.key
            found.checked["lab orders"] += 1
            if "order" in sent and requests_by_placer[placer] == 0:
                found.lost.append(sent["order"])
            if requests_by_placer[placer] > 1:
                found.duplicates.append(f"{requests_by_placer[placer]} ServiceRequests {placer}")
            reports = reports_by_placer.get(placer, [])
            if len(reports) > 1:
                found.duplicates.append(f"{len(reports)} DiagnosticReports {placer}")
            if "result" in sent and not reports:
                found.lost.append(sent["result"])
            if "correction" in sent and reports:
                if reports[0]["status"] != "corrected":
                    found.lost.append(sent["correction"])
                history = await fhir.history("DiagnosticReport", reports[0]["id"])
                statuses = [
                    version["status"]
                    for version in sorted(history, key=lambda v: str(v["meta"]["lastUpdated"]))
                ]
                if "corrected" in statuses and "final" in statuses[statuses.index("corrected") :]:
                    found.out_of_order.append(f"{placer}: report versions {statuses}")
        for script in scripts:
            if script.kind != "discharge":
                continue
            found.checked["discharges"] += 1
            sent = {m.kind: m.control_id for m in script.messages if acknowledged(m.control_id)}
            encounters = encounters_by_visit.get(script.key, [])
            if len(encounters) > 1:
                found.duplicates.append(f"{len(encounters)} Encounters {script.key}")
            if "discharge" in sent and not any(e["status"] == "finished" for e in encounters):
                found.lost.append(sent["discharge"])
    records_by_visit: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in await partner.amessages():
        if record["answered"] == "AA":
            records_by_visit[_visit(record)].append(record)
    for script in scripts:
        if script.kind != "discharge":
            continue
        records = records_by_visit.get(script.key, [])
        firsts: dict[str, str] = {}
        for record in records:
            if record["control_id"] in firsts:
                found.same_control_id_redeliveries += 1
            else:
                firsts[record["control_id"]] = _trigger(record)
        triggers = list(firsts.values())
        for kind, trigger in (("discharge", "A03"), ("amendment", "A08")):
            copies = triggers.count(trigger)
            message = next((m for m in script.messages if m.kind == kind), None)
            if message is not None and acknowledged(message.control_id) and copies == 0:
                found.lost.append(f"{message.control_id} at {partner.name}")
            if copies > 1:
                found.duplicates.append(f"{script.key}: {copies} {trigger} at {partner.name}")
        expected = [{"discharge": "A03", "amendment": "A08"}[k] for k in script.kinds]
        if triggers and triggers != expected[: len(triggers)]:
            found.out_of_order.append(f"{script.key}: {triggers} at {partner.name}")
    return found


async def wait_drained(
    fhir_base_url: str,
    partner: Partner,
    scripts: list[PatientScript],
    acknowledged: Callable[[str], bool],
    *,
    timeout: float,
    every: float = 5.0,
    progress: Callable[[Findings], None] | None = None,
) -> Findings:
    """Findings once nothing acknowledged is missing any more, or at ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await findings(fhir_base_url, partner, scripts, acknowledged)
        if progress is not None:
            progress(found)
        if not found.lost or loop.time() > deadline:
            return found
        await asyncio.sleep(every)


@dataclass(frozen=True)
class Fault:
    """``action`` on the shape once ``at`` (a fraction) of the feed has been answered AA."""

    at: float
    name: str
    action: Callable[[ProductionShape], Awaitable[None]]


def worker_killed(index: int = 0, down: float = 5.0) -> Fault:
    async def action(shape: ProductionShape) -> None:
        await shape.workers[index].kill()
        await asyncio.sleep(down)
        await shape.workers[index].start()

    return Fault(0, f"SIGKILL worker-{index + 1}, restarted {down:g} s later", action)


def gateway_killed(index: int = 0, down: float = 5.0) -> Fault:
    async def action(shape: ProductionShape) -> None:
        await shape.gateways[index].kill()
        await asyncio.sleep(down)
        await shape.gateways[index].start()

    return Fault(0, f"SIGKILL gateway-{index + 1}, restarted {down:g} s later", action)


def temporal_killed(down: float = 3.0) -> Fault:
    async def action(shape: ProductionShape) -> None:
        shape.kill_temporal()
        await asyncio.sleep(down)
        await shape.start_temporal()

    return Fault(0, f"SIGKILL the Temporal dev server, restarted {down:g} s later", action)


def fhir_frozen(seconds: float = 30.0) -> Fault:
    async def action(shape: ProductionShape) -> None:
        shape.freeze_fhir()
        try:
            await asyncio.sleep(seconds)
        finally:
            shape.thaw_fhir()

    return Fault(0, f"SIGSTOP the FHIR server, SIGCONT {seconds:g} s later", action)


def at(fraction: float, fault: Fault) -> Fault:
    return Fault(fraction, fault.name, fault.action)


@dataclass
class SoakReport:
    figures: SenderFigures
    findings: Findings
    faults: list[str]
    seconds_sending: float
    seconds_to_drain: float  # from the last AA until nothing acknowledged was missing


async def run_soak(
    shape: ProductionShape,
    scripts: list[PatientScript],
    faults: list[Fault],
    *,
    senders: int,
    rate: float | None,
    drain_timeout: float,
    log: Callable[[str], None] = lambda line: None,
) -> SoakReport:
    """Send the feed with ``faults`` along the way, then wait until it has drained."""
    ports = [gateway.mllp_port for gateway in shape.gateways]
    feed = FeedSenders(ports, scripts, senders=senders, rate=rate)
    done: list[str] = []

    async def inject() -> None:
        for fault in sorted(faults, key=lambda f: f.at):
            await feed.reached(fault.at * feed.total)
            log(f"fault at {feed.done}/{feed.total} sent: {fault.name}")
            await fault.action(shape)
            done.append(fault.name)
            log(f"  over: {fault.name}")

    started = time.monotonic()
    sending = asyncio.create_task(feed.run())
    injecting = asyncio.create_task(inject())
    figures = await sending
    seconds_sending = time.monotonic() - started
    log(f"sent: {figures.sent} AA {figures.acknowledged}, answers {dict(figures.answers)}")
    # Faults due after the last AA still happen: the drain runs through them.
    await injecting

    def acknowledged(control_id: str) -> bool:
        delivery = feed.deliveries.get(control_id)
        return delivery is not None and delivery.acknowledged_at is not None

    def progress(found: Findings) -> None:
        log(f"draining: {len(found.lost)} acknowledged messages not yet applied")

    found = await wait_drained(
        shape.fhir_base_url,
        shape.partners["billing"],
        scripts,
        acknowledged,
        timeout=drain_timeout,
        progress=progress,
    )
    drained_at = time.monotonic()
    return SoakReport(
        figures,
        found,
        done,
        seconds_sending,
        drained_at - (figures.last_ack_at or drained_at),
    )
