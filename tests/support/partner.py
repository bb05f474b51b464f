"""Start a partner system (partners/partner.js) for a test and talk to its control endpoint."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PARTNERS_DIR = Path(__file__).resolve().parents[2] / "partners"
STARTUP_SECONDS = 30


@dataclass
class Partner:
    name: str
    host: str
    mllp_port: int
    control_url: str

    def messages(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = httpx.get(f"{self.control_url}/messages").json()
        return records

    async def amessages(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            records: list[dict[str, Any]] = (await http.get(f"{self.control_url}/messages")).json()
            return records

    def set_mode(
        self, mode: str, *, code: str = "207", text: str = "", times: int | None = None
    ) -> None:
        body: dict[str, Any] = {"mode": mode, "code": code, "text": text}
        if times is not None:
            body["times"] = times
        httpx.post(f"{self.control_url}/mode", json=body).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.control_url}/reset").raise_for_status()


@contextmanager
def running_partner(name: str) -> Iterator[Partner]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; `make test` installs it (apt-get nodejs npm)")
    if not (PARTNERS_DIR / "node_modules").is_dir():
        raise RuntimeError(f"the partner packages are missing: npm ci --prefix {PARTNERS_DIR}")
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                node,
                str(PARTNERS_DIR / "partner.js"),
                "--name",
                name,
                "--port",
                "0",
                "--control-port",
                "0",
                "--host",
                "127.0.0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            yield _wait_until_ready(name, process, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_ready(name: str, process: subprocess.Popen[bytes], log: Any) -> Partner:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_SECONDS
    line = b""
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if line.startswith(b"PARTNER "):
            fields = dict(part.split("=", 1) for part in line.decode().split()[2:])
            control_url = f"http://127.0.0.1:{fields['control']}"
            return Partner(name, "127.0.0.1", int(fields["mllp"]), control_url)
    log.seek(0)
    raise RuntimeError(f"partner {name} did not start: {log.read().decode(errors='replace')}")
