"""A lab result's write that reaches the FHIR server late never undoes a newer one.

The soak (bench/soak.py) froze the FHIR server while results were being written: clients
timed out and retried, and once the server ran again it applied the abandoned requests
too, after the retries that had succeeded and after the corrections that followed them,
so a corrected report went back to its final values. Here the abandoned request is held
back on its way (the activity sees a timeout, as it did) and handed to the real FHIR
server after the newer writes; the report must keep the newest values.
"""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.order_to_result import FhirActivities, PublishOrderInput, PublishResultInput
from adapters.fhir import FhirClient
from adapters.fhir.client import MAX_SEARCH_PAGES
from adapters.fhir.errors import FhirRetryableError, FhirWriteRaced
from adapters.hl7v2.adt_messages import parse_adt_event
from adapters.hl7v2.lab_messages import parse_lab_order, parse_lab_results
from mappings.discharge_sync.fhir_builders import encounter_identifier, encounter_transaction_for
from mappings.discharge_sync.mapping import load_adt_mapping
from mappings.order_to_result.concept_map import load_lab_mapping
from mappings.order_to_result.fhir_builders import (
    order_identifiers,
    report_identifier,
    result_transaction_for,
)
from models.lab import LabResult
from tests.support.discharge import stay
from workers import sample_messages as sm

pytestmark = pytest.mark.integration

MAPPING = "v2"


class LateFirstAttempt(FhirClient):
    """A client whose first transaction times out on its way; the request is kept, as the
    stalled server kept it, to be delivered later."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.held: list[dict[str, Any]] = []

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if not self.held:
            self.held.append(bundle)
            raise FhirRetryableError("transaction: timed out")
        return await super().transaction(bundle)


def result(order: sm.SampleOrder, control_id: str, sodium: str, status: str) -> LabResult:
    value = sm.ResultValue("NA", "Sodium", sodium, "mmol/L", "136-145", "N")
    text = sm.lab_result(order, control_id, [value], result_status=status)
    return parse_lab_results(text)[0]


async def publish(fhir: FhirClient, lab_result: LabResult) -> None:
    await FhirActivities(fhir).publish_lab_result(
        PublishResultInput(result=lab_result, mapping_version=MAPPING)
    )


async def publish_retrying(fhir: FhirClient, lab_result: LabResult) -> None:
    """As Temporal runs the activity: another attempt after a retryable failure."""
    try:
        await publish(fhir, lab_result)
    except FhirRetryableError:
        await publish(fhir, lab_result)


async def publish_order(fhir: FhirClient, text: str, *, retrying: bool = False) -> None:
    activities = FhirActivities(fhir)
    request = PublishOrderInput(order=parse_lab_order(text), mapping_version=MAPPING)
    try:
        await activities.publish_service_request(request)
    except FhirRetryableError:
        if not retrying:
            raise
        await activities.publish_service_request(request)


async def report_now(fhir: FhirClient, lab_result: LabResult) -> tuple[dict[str, Any], str]:
    """The report as the server holds it, and its sodium value."""
    identifier = report_identifier(lab_result, load_lab_mapping(MAPPING))
    [report] = await fhir.search(
        "DiagnosticReport", {"identifier": f"{identifier['system']}|{identifier['value']}"}
    )
    [observation_ref] = report["result"]
    observation = await fhir.read(*observation_ref["reference"].split("/"))
    return report, str(observation["valueQuantity"]["value"])


async def service_request_now(fhir: FhirClient, order: sm.SampleOrder) -> dict[str, Any]:
    """The order's ServiceRequest as the server holds it (exactly one)."""
    placer = order_identifiers(
        (order.placer_order_number, sm.HOSPITAL, None, ""), load_lab_mapping(MAPPING)
    )[0]
    [request] = await fhir.search(
        "ServiceRequest", {"identifier": f"{placer['system']}|{placer['value']}"}
    )
    return request


async def test_a_first_write_arriving_after_the_correction_changes_nothing(
    fhir_base_url: str,
) -> None:
    order = sm.SampleOrder("LATE-1001")
    final = result(order, "LATE-1001-R", "140", "F")
    correction = result(order, "LATE-1001-C", "133", "C")
    async with LateFirstAttempt(fhir_base_url) as late, FhirClient(fhir_base_url) as fhir:
        await publish_retrying(late, final)  # the first attempt's request is held
        await publish(fhir, correction)
        report, _ = await report_now(fhir, final)
        versions_before = len(await fhir.history("DiagnosticReport", report["id"]))

        await fhir.transaction(late.held[0])  # the server applies it at last

        report, sodium = await report_now(fhir, final)
        assert (report["status"], sodium) == ("corrected", "133")
        assert len(await fhir.history("DiagnosticReport", report["id"])) == versions_before


async def test_a_correction_arriving_after_a_newer_one_is_refused(fhir_base_url: str) -> None:
    order = sm.SampleOrder("LATE-1002")
    final = result(order, "LATE-1002-R", "140", "F")
    first_correction = result(order, "LATE-1002-C1", "133", "C")
    second_correction = result(order, "LATE-1002-C2", "135", "C")
    async with LateFirstAttempt(fhir_base_url) as late, FhirClient(fhir_base_url) as fhir:
        await publish(fhir, final)
        await publish_retrying(late, first_correction)  # its first attempt is held
        await publish(fhir, second_correction)

        with pytest.raises(Exception, match="412"):
            await fhir.transaction(late.held[0])

        report, sodium = await report_now(fhir, final)
        assert (report["status"], sodium) == ("corrected", "135")


async def test_a_new_order_arriving_after_its_cancel_leaves_it_revoked(
    fhir_base_url: str,
) -> None:
    order = sm.SampleOrder("LATE-1003")
    async with LateFirstAttempt(fhir_base_url) as late, FhirClient(fhir_base_url) as fhir:
        await publish_order(late, sm.lab_order(order, "LATE-1003-O"), retrying=True)
        await publish_order(fhir, sm.lab_order(order, "LATE-1003-X", order_control="CA"))

        await fhir.transaction(late.held[0])

        assert (await service_request_now(fhir, order))["status"] == "revoked"


async def test_a_discharge_arriving_after_its_cancel_leaves_the_encounter_open(
    fhir_base_url: str,
) -> None:
    """As the FHIR destination of discharge sync writes (deliver_to_fhir)."""
    mapping = load_adt_mapping("v3")
    visit = stay("V-LATE-1004", "MRN-LATE-1004")
    owned = ("Encounter", "Condition")

    def bundle(trigger: str) -> dict[str, Any]:
        event = parse_adt_event(sm.adt_event(visit, f"LATE-1004-{trigger}", trigger))
        return encounter_transaction_for(event, mapping)

    async def encounter_status(fhir: FhirClient) -> str:
        event = parse_adt_event(sm.adt_event(visit, "LATE-1004-A03", "A03"))
        identifier = encounter_identifier(event, mapping)
        [encounter] = await fhir.search(
            "Encounter", {"identifier": f"{identifier['system']}|{identifier['value']}"}
        )
        return str(encounter["status"])

    async with LateFirstAttempt(fhir_base_url) as late, FhirClient(fhir_base_url) as fhir:
        with pytest.raises(FhirRetryableError):
            await late.fenced_transaction(bundle("A03"), "Encounter", owned=owned)
        await fhir.fenced_transaction(bundle("A03"), "Encounter", owned=owned)  # its retry
        assert await encounter_status(fhir) == "finished"
        await fhir.fenced_transaction(bundle("A13"), "Encounter", owned=owned)
        cancelled = await encounter_status(fhir)
        assert cancelled != "finished"

        await fhir.transaction(late.held[0])

        assert await encounter_status(fhir) == cancelled


# -- orders presumed new, and writes overtaken between their read and their write --------


class CountingReads(FhirClient):
    """A client that counts its searches (the fence's read is one) and its transactions."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.searches = 0
        self.transactions = 0

    async def search(
        self, resource_type: str, params: dict[str, str], *, max_pages: int = MAX_SEARCH_PAGES
    ) -> list[dict[str, Any]]:
        self.searches += 1
        return await super().search(resource_type, params, max_pages=max_pages)

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        self.transactions += 1
        return await super().transaction(bundle)


class OvertakenOnce(FhirClient):
    """A client whose first transaction is overtaken: another writer's request (``first``)
    reaches the server just before it, after its read."""

    def __init__(self, base_url: str, first: dict[str, Any]) -> None:
        super().__init__(base_url)
        self.first: dict[str, Any] | None = first

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if self.first is not None:
            first, self.first = self.first, None
            await super().transaction(first)
        return await super().transaction(bundle)


async def test_a_new_order_is_written_without_a_read_and_its_report_after_one(
    fhir_base_url: str,
) -> None:
    order = sm.SampleOrder("LATE-1005")
    async with CountingReads(fhir_base_url) as fhir:
        await publish_order(fhir, sm.lab_order(order, "LATE-1005-O"))
        assert (fhir.searches, fhir.transactions) == (0, 1)
        # A report's bundle has Observations beside it: always read first (presumable).
        await publish(fhir, result(order, "LATE-1005-R", "140", "F"))
        assert fhir.searches == 1

        assert (await service_request_now(fhir, order))["status"] == "active"
        _, sodium = await report_now(fhir, result(order, "LATE-1005-R", "140", "F"))
        assert sodium == "140"


async def test_an_order_presumed_new_but_on_the_server_is_updated_on_a_read(
    fhir_base_url: str,
) -> None:
    """The same order sent again, now stat, to a run that never saw the first (a new
    exchange for it): the presumption is wrong, the server says so (200), and the write
    is fenced on a read: one ServiceRequest, stat, one version on."""
    routine = sm.SampleOrder("LATE-1006", priority="R")
    stat = sm.SampleOrder("LATE-1006", priority="S")
    async with CountingReads(fhir_base_url) as fhir:
        await publish_order(fhir, sm.lab_order(routine, "LATE-1006-O1"))
        before = await service_request_now(fhir, routine)
        versions_before = len(await fhir.history("ServiceRequest", before["id"]))
        reads_before = fhir.searches

        await publish_order(fhir, sm.lab_order(stat, "LATE-1006-O2"))

        assert fhir.searches > reads_before
        after = await service_request_now(fhir, stat)
        assert (after["id"], after["priority"]) == (before["id"], "stat")
        assert len(await fhir.history("ServiceRequest", after["id"])) == versions_before + 1


async def test_a_cancel_is_fenced_on_a_read(fhir_base_url: str) -> None:
    order = sm.SampleOrder("LATE-1007")
    async with CountingReads(fhir_base_url) as fhir:
        await publish_order(fhir, sm.lab_order(order, "LATE-1007-O"))
        reads_before, writes_before = fhir.searches, fhir.transactions
        await publish_order(fhir, sm.lab_order(order, "LATE-1007-X", order_control="CA"))
        # One read, one write: a cancel is never presumed new (that write would be wasted).
        assert (fhir.searches, fhir.transactions) == (reads_before + 1, writes_before + 1)

        assert (await service_request_now(fhir, order))["status"] == "revoked"


async def test_an_order_presumed_new_that_the_server_holds_twice_is_refused(
    fhir_base_url: str,
) -> None:
    """Two ServiceRequests with the order's identifier (written by something else): refused
    for a person to sort out, as a write fenced on a read is, and nothing more written."""
    order = sm.SampleOrder("LATE-1008")
    placer = order_identifiers(
        (order.placer_order_number, sm.HOSPITAL, None, ""), load_lab_mapping(MAPPING)
    )[0]
    elsewhere = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"display": "written elsewhere"},
        "identifier": [placer],
    }
    created_twice = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": elsewhere, "request": {"method": "POST", "url": "ServiceRequest"}}]
        * 2,
    }
    async with FhirClient(fhir_base_url) as fhir:
        await fhir.transaction(created_twice)

        with pytest.raises(ApplicationError) as refused:
            await publish_order(fhir, sm.lab_order(order, "LATE-1008-O"))
        assert refused.value.non_retryable

        found = await fhir.search(
            "ServiceRequest", {"identifier": f"{placer['system']}|{placer['value']}"}
        )
        assert len(found) == 2


async def test_a_cancel_overtaken_by_its_late_order_is_not_lost(fhir_base_url: str) -> None:
    """The cancel reads nothing (the order's write is still on its way), then the late order
    lands first: the cancel's conditional create finds it (200) and wrote nothing. It must
    not count as done: read again, fenced, revoked."""
    order = sm.SampleOrder("LATE-1009")
    async with LateFirstAttempt(fhir_base_url) as late:
        with pytest.raises(FhirRetryableError):
            await publish_order(late, sm.lab_order(order, "LATE-1009-O"))  # held, on its way
    cancel = sm.lab_order(order, "LATE-1009-X", order_control="CA")
    async with OvertakenOnce(fhir_base_url, first=late.held[0]) as overtaken:
        with pytest.raises(FhirWriteRaced):
            await publish_order(overtaken, cancel)
        await publish_order(overtaken, cancel)  # its retry

        assert (await service_request_now(overtaken, order))["status"] == "revoked"


async def test_a_result_sent_again_arriving_late_after_the_correction_adds_nothing(
    fhir_base_url: str,
) -> None:
    """A final result sent again with one more value to a run that never saw the first, its
    write held back and never retried (a reviewer stopped it), then the correction, then the
    held write: fenced on the report's version, it is refused whole, and the value it alone
    carried is not published beside the corrected report."""
    order = sm.SampleOrder("LATE-1010")
    sodium = sm.ResultValue("NA", "Sodium", "140", "mmol/L", "136-145", "N")
    potassium = sm.ResultValue("K", "Potassium", "6.9", "mmol/L", "3.5-5.1", "HH")
    first = parse_lab_results(sm.lab_result(order, "LATE-1010-R1", [sodium]))[0]
    again = parse_lab_results(sm.lab_result(order, "LATE-1010-R2", [sodium, potassium]))[0]
    correction = result(order, "LATE-1010-C", "133", "C")
    mapping = load_lab_mapping(MAPPING)
    observations = [
        entry["resource"]["identifier"][0]
        for entry in result_transaction_for(again, mapping)["entry"]
        if entry["resource"]["resourceType"] == "Observation"
    ]
    async with LateFirstAttempt(fhir_base_url) as late, FhirClient(fhir_base_url) as fhir:
        await publish(fhir, first)
        with pytest.raises(FhirRetryableError):
            await publish(late, again)
        await publish(fhir, correction)

        with pytest.raises(Exception, match="412"):
            await fhir.transaction(late.held[0])

        found = [
            await fhir.search("Observation", {"identifier": f"{ident['system']}|{ident['value']}"})
            for ident in observations
        ]
        assert [len(matches) for matches in found] == [1, 0]  # sodium only, corrected
