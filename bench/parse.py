"""Conversion benchmark: parse, map and validate of one message, per stage and per shape.

    .venv/bin/python bench/parse.py [--rounds 3] [--budget 1.0] [--messages 300]

For ORU^R01 of 2, 10 and 28 OBX, and the ADT^A03 of discharge sync, prints messages per
second per core (CPU time of this process, ``time.process_time``, so other work on the
machine slows the wall clock but not the figure much) of:

- parse: the HL7 v2 text to the canonical event (adapters/hl7v2);
- map: the FHIR transaction Bundle built, validation left out;
- validate, several ways, side by side in the same run: the baseline (every resource
  validated with fhir.resources R4B and dumped, then the whole Bundle again: what the
  builders did before the compiled check), fhir.resources once per resource or on the
  Bundle once, and the compiled check (mappings/fhir_validation) per resource or on the
  Bundle once;
- total: parse + map + validate, baseline against what ships now (the builders as they
  are, which validate each resource once with the compiled check, and the Bundle shell).

Calls cycle through ``--messages`` messages of each shape that differ in their order
numbers, so no cache is hit more often than a feed would hit it. Each figure is the
median of ``--rounds`` rounds, with the best beside it.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import BaseModel

import mappings.discharge_sync.fhir_builders as discharge_builders
import mappings.order_to_result.fhir_builders as lab_builders
from adapters.hl7v2.adt_messages import parse_adt_event
from adapters.hl7v2.lab_messages import parse_lab_results
from mappings.discharge_sync.mapping import load_adt_mapping
from mappings.fhir_validation import validate_bundle, validate_resource
from mappings.order_to_result.concept_map import LabMapping, load_lab_mapping
from workers import sample_messages as sm

JSON = dict[str, Any]
RESULTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "corpus" / "results"
ADT = load_adt_mapping()
TEN_VALUES = [
    sm.SODIUM,
    sm.POTASSIUM,
    sm.GLUCOSE_HIGH,
    sm.UNMAPPED,
    sm.ResultValue("CL", "Chloride", "101", "mmol/L", "98-107", "N"),
    sm.ResultValue("CO2", "Carbon dioxide", "24", "mmol/L", "22-29", "N"),
    sm.ResultValue("BUN", "Urea nitrogen", "14", "mg/dL", "7-20", "N"),
    sm.ResultValue("CREA", "Creatinine", "0.9", "mg/dL", "0.6-1.2", "N"),
    sm.ResultValue("CA", "Calcium", "9.4", "mg/dL", "8.5-10.5", "N"),
    sm.ResultValue("ALB", "Albumin", "<1.0", "g/dL", "3.5-5.0", "L"),
]


def _fhir_resources_validated(model: type[BaseModel], resource: JSON) -> JSON:
    """The builders' validation before the compiled check: validate, dump, return the dump."""
    dumped: JSON = model.model_validate(resource).model_dump(mode="json", exclude_none=True)
    return dumped


def _unvalidated(model: type[BaseModel], resource: JSON) -> JSON:
    return resource


@contextmanager
def builders_validating_with(validated: Callable[[type[BaseModel], JSON], JSON]) -> Iterator[None]:
    """Swap the builders' one validation hook (bench only: to time map alone and the baseline)."""
    saved = lab_builders._validated, discharge_builders._validated
    lab_builders._validated = discharge_builders._validated = validated
    try:
        yield
    finally:
        lab_builders._validated, discharge_builders._validated = saved


def per_second(function: Callable[[], object], budget: float) -> float:
    """Calls per CPU second of this process."""
    function()  # warm: compiled validators, caches
    calls, started = 0, time.process_time()
    while (spent := time.process_time() - started) < budget or calls < 3:
        function()
        calls += 1
    return calls / spent


def _fhir_resources_each(bundle: JSON) -> None:
    for entry in bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])


def _compiled_each(bundle: JSON) -> None:
    for entry in bundle["entry"]:
        validate_resource(entry["resource"])
    validate_resource(bundle)  # the shell: its entries' resources are not looked into


def _baseline_validate(bundle: JSON) -> None:
    entries = [
        {**entry, "resource": _fhir_resources_validated(get_fhir_model_class(r["resourceType"]), r)}
        for entry in bundle["entry"]
        if (r := entry["resource"])
    ]
    _fhir_resources_validated(Bundle, {**bundle, "entry": entries})


def measure(
    texts: list[str], kind: str, budget: float, lab_mapping: LabMapping
) -> dict[str, float]:
    """Every call takes the next of ``texts`` (distinct order numbers), as a feed would."""
    if kind == "lab":

        def parse(text: str) -> Any:
            return parse_lab_results(text)[0]

        def build(event: Any) -> JSON:
            return lab_builders.result_transaction_for(event, lab_mapping)
    else:

        def parse(text: str) -> Any:
            return parse_adt_event(text)

        def build(event: Any) -> JSON:
            return discharge_builders.encounter_transaction_for(event, ADT)

    def each(items: list[Any], function: Callable[[Any], object]) -> Callable[[], object]:
        upcoming = itertools.cycle(items)
        return lambda: function(next(upcoming))

    # Totals first, while this process holds no other messages' objects: a worker does not
    # hold thousands of parsed events and bundles, and the garbage collector's full passes
    # would walk them all (that alone cost the 10-OBX total ~25% in a first version).
    totals: dict[str, float] = {}
    with builders_validating_with(_fhir_resources_validated):
        baseline_bundle = build(parse(texts[0]))
        totals["TOTAL baseline: parse + map + validate"] = per_second(
            each(texts, lambda text: build(parse(text))), budget
        )
    assert build(parse(texts[0])) == baseline_bundle, "the compiled check changed the output"
    totals["TOTAL now: parse + map + validate"] = per_second(
        each(texts, lambda text: build(parse(text))), budget
    )

    events = [parse(text) for text in texts]
    with builders_validating_with(_unvalidated):
        bundles = [build(event) for event in events]
        map_only = per_second(each(events, build), budget)
    figures = {
        "parse": per_second(each(texts, parse), budget),
        "map (no validation)": map_only,
        "validate: baseline (each resource + Bundle, dumped)": per_second(
            each(bundles, _baseline_validate), budget
        ),
        "validate: fhir.resources, each resource once": per_second(
            each(bundles, _fhir_resources_each), budget
        ),
        "validate: fhir.resources, Bundle once": per_second(
            each(bundles, Bundle.model_validate), budget
        ),
        "validate: compiled, each resource once (ships)": per_second(
            each(bundles, _compiled_each), budget
        ),
        "validate: compiled, Bundle once": per_second(each(bundles, validate_bundle), budget),
    }
    assert bundles[0] == baseline_bundle, "validation must not change the Bundle"
    return figures | totals


def shapes(count: int) -> dict[str, tuple[str, list[str]]]:
    """Each shape as ``count`` messages differing in their order (or visit) numbers."""
    cbc = (RESULTS / "oru-r01-lri-cbc-msfhirconv-1.hl7").read_bytes().decode()
    cbc = cbc.replace("\r\n", "\r").replace("\n", "\r")
    return {
        "ORU^R01, 2 OBX (synthetic)": (
            "lab",
            [
                sm.lab_result(sm.SampleOrder(f"B2-{i}"), f"C{i}", [sm.SODIUM, sm.POTASSIUM])
                for i in range(count)
            ],
        ),
        "ORU^R01, 10 OBX (synthetic BMP-like)": (
            "lab",
            [sm.lab_result(sm.SampleOrder(f"B10-{i}"), f"C{i}", TEN_VALUES) for i in range(count)],
        ),
        "ORU^R01, 28 OBX (corpus CBC, oru-r01-lri-cbc-msfhirconv-1)": (
            "lab",
            [
                cbc.replace("ORD666555", f"ORD{i}").replace("R-991133", f"R-{i}")
                for i in range(count)
            ],
        ),
        "ADT^A03, 2 DG1 (discharge sync, synthetic)": (
            "adt",
            [sm.adt_event(sm.SampleStay(f"V{i}"), f"C{i}", "A03") for i in range(count)],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.0, help="CPU seconds per figure")
    parser.add_argument(
        "--lab-mapping",
        default="v1",
        help="lab mapping version (v2: what new lab exchanges start on)",
    )
    parser.add_argument("--messages", type=int, default=300, help="distinct messages per shape")
    args = parser.parse_args()
    for name, (kind, texts) in shapes(args.messages).items():
        lab_mapping = load_lab_mapping(args.lab_mapping)
        rounds = [measure(texts, kind, args.budget, lab_mapping) for _ in range(args.rounds)]
        print(f"\n### {name}\n")
        print("| stage | messages/s per core, median | best |")
        print("|---|---|---|")
        for stage in rounds[0]:
            values = [r[stage] for r in rounds]
            print(f"| {stage} | {statistics.median(values):,.0f} | {max(values):,.0f} |")


if __name__ == "__main__":
    main()
