"""Parse benchmark: the gateway's fast path (what must be checked before the ACK) and the
lab parser (run later, in the exchange's activity), next to hl7apy's parse of the same
messages as the baseline (the lab parser ran it on every message until it was found to
be thrown away).

    .venv/bin/python bench/parse.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters.hl7v2.header import decode_message
from adapters.hl7v2.lab_messages import parse_lab_results
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS
from workers import sample_messages as sm

RESULTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "corpus" / "results"


def per_call_ms(function: Callable[[], object], budget_seconds: float = 1.0) -> float:
    function()  # warm caches (hl7apy loads its structure definitions once)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < budget_seconds:
        function()
        calls += 1
    return (time.perf_counter() - started) / calls * 1000


def main() -> None:
    messages = {
        "synthetic ORU (2 OBX)": sm.lab_result(
            sm.SampleOrder("BENCH1"), "BENCH-1", [sm.SODIUM, sm.POTASSIUM]
        ).encode()
    }
    for name in ("oru-r01-nist-1.hl7", "oru-r01-lri-cbc-msfhirconv-1.hl7"):
        messages[name] = (RESULTS / name).read_bytes()

    print("| message | OBX | fast path (µs) | lab parse (ms) | baseline: hl7apy parse (ms) |")
    print("|---|---|---|---|---|")
    for name, raw in messages.items():
        decoded = decode_message(
            raw,
            supported_types=REGISTRY.supported_types,
            supported_versions=SUPPORTED_VERSIONS,
            required_segments=REGISTRY.required_segments,
        )
        fast = per_call_ms(
            lambda raw=raw: decode_message(
                raw,
                supported_types=REGISTRY.supported_types,
                supported_versions=SUPPORTED_VERSIONS,
                required_segments=REGISTRY.required_segments,
            )
        )
        full = per_call_ms(lambda text=decoded.text: parse_lab_results(text))
        baseline = per_call_ms(
            lambda text=decoded.text: parse_message(
                text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT
            )
        )
        obx = len(decoded.segments_named("OBX"))
        print(f"| {name} | {obx} | {fast * 1000:.0f} | {full:.2f} | {baseline:.1f} |")


if __name__ == "__main__":
    main()
