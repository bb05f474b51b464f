"""fuzz/fuzz_mllp_hl7.py under atheris (libFuzzer) for a bounded time, seeded with the corpus.

The hypothesis properties in test_fuzz_hl7.py run everywhere; this adds coverage-guided
inputs where atheris installs (Linux x86_64 wheels). libFuzzer exits non-zero and writes
a crash-* file when the target raises anything but the parsers' declared refusals.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 15


def test_framer_and_fast_path_survive_coverage_guided_fuzzing(tmp_path: Path) -> None:
    scratch = tmp_path / "corpus"
    scratch.mkdir()
    seeds = sorted(
        str(folder)
        for folder in (ROOT / "tests" / "fixtures" / "corpus").iterdir()
        if folder.is_dir()
    )
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_mllp_hl7.py"),
            f"-max_total_time={SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            str(scratch),
            *seeds,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        check=False,
    )
    crashes = sorted(path.name for path in tmp_path.glob("crash-*"))
    assert run.returncode == 0 and not crashes, run.stderr[-3000:]
    assert "Done" in run.stderr  # libFuzzer reports the runs it made
