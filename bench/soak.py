"""Soak under faults: a mixed feed through the production shape while its parts are killed.

    .venv/bin/python bench/soak.py --messages 10000 --senders 8 --rate 10

The production shape on loopback (tests/support/production_shape.py): a throwaway
PostgreSQL, the Temporal dev server on a database file, the demo FHIR server, the
`billing` MLLP partner, two `careweave worker` and two `careweave gateway` processes.
Concurrent MLLP senders (one interface each, its own patients) send lab orders, results,
corrections, discharges, A08 amendments and deliberate resends, and resend each message
until it is answered AA. Along the way: SIGKILL and restart of a worker, a gateway and the
Temporal dev server, and the FHIR server frozen (SIGSTOP) for 30 s. At the end, from the
FHIR server and the partner's log: acknowledged messages lost, duplicates, patients out
of order (all must be 0), and the figures: sent, acknowledged, resends, time to drain.
Exits 1 when anything acknowledged was lost, duplicated or reordered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.postgres import running_postgres
from tests.support.production_shape import production_shape
from tests.support.soak import (
    at,
    fhir_frozen,
    gateway_killed,
    mixed_feed,
    run_soak,
    temporal_killed,
    worker_killed,
)


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000, help="distinct messages")
    parser.add_argument("--senders", type=int, default=8, help="concurrent MLLP interfaces")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="messages/s over all senders (0: unpaced)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--freeze", type=float, default=30.0, help="seconds the FHIR server stops")
    parser.add_argument("--drain-timeout", type=float, default=3600.0)
    args = parser.parse_args()

    scripts = mixed_feed(args.messages, tag=time.strftime("%H%M"))
    faults = [
        at(0.15, worker_killed(0)),
        at(0.35, gateway_killed(0)),
        at(0.55, temporal_killed()),
        at(0.75, fhir_frozen(args.freeze)),
    ]
    with running_postgres() as postgres, tempfile.TemporaryDirectory(prefix="soak-") as root:
        async with production_shape(
            Path(root),
            postgres.new_database(),
            workers=args.workers,
            gateways=args.gateways,
            task_queue="careweave-soak",
        ) as shape:
            log(
                f"production shape up: {args.workers} workers, {args.gateways} gateways; "
                f"sending {args.messages} messages from {args.senders} senders"
            )
            report = await run_soak(
                shape,
                scripts,
                faults,
                senders=args.senders,
                rate=args.rate or None,
                drain_timeout=args.drain_timeout,
                log=log,
            )
            starts = {s.name: s.starts for s in [*shape.workers, *shape.gateways]}

    figures, found = report.figures, report.findings
    kinds: dict[str, int] = {}
    for script in scripts:
        for kind in script.kinds:
            kinds[kind] = kinds.get(kind, 0) + 1
    print(
        f"\n{figures.sent} messages ({', '.join(f'{n} {k}s' for k, n in kinds.items())}) "
        f"+ {figures.deliberate_resends} deliberate resends, {args.senders} senders at "
        f"{args.rate or 'unpaced'} msg/s, {args.workers} workers, {args.gateways} gateways, "
        f"{os.cpu_count()} cores\n"
    )
    print("| figure | value |")
    print("|---|---|")
    rows = [
        ("sent (distinct messages)", figures.sent),
        ("acknowledged AA", figures.acknowledged),
        ("deliberate resends (same MSH-10 after AA)", figures.deliberate_resends),
        ("resends until AA (AE, timeout, dropped connection)", figures.resends_until_aa),
        ("answers on the wire", ", ".join(f"{k} {v}" for k, v in figures.answers.most_common())),
        ("given up (never AA)", len(figures.gave_up)),
        ("seconds sending", f"{report.seconds_sending:.0f}"),
        ("seconds to drain after the last AA", f"{report.seconds_to_drain:.0f}"),
        ("acknowledged messages lost", len(found.lost)),
        ("duplicates", len(found.duplicates)),
        ("patients out of order", len(found.out_of_order)),
        ("partner redeliveries under the same MSH-10", found.same_control_id_redeliveries),
        ("process starts", ", ".join(f"{k} {v}" for k, v in starts.items())),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nfaults: " + "; ".join(report.faults))
    for label, items in (
        ("lost", found.lost),
        ("duplicates", found.duplicates),
        ("out of order", found.out_of_order),
    ):
        if items:
            print(f"{label}: {items[:20]}")
    return 0 if found.clean and not figures.gave_up else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
