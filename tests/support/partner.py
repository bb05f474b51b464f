"""Start a partner system (partners/partner.js) for a test and talk to its control endpoint.

The partner receives HL7 v2 over MLLP (an @medplum/hl7 Hl7Server) and answers AA, AE or AR,
or nothing at all, as told through its JSON control endpoint::

    with running_partner("billing") as billing:
        billing.set_mode("AE", code="206", text="Record locked", times=3)
        ...  # send to ("127.0.0.1", billing.mllp_port)
        records = billing.messages()  # [{received_at, control_id, message_type, text, answered}]
"""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

PARTNERS_DIR = Path(__file__).resolve().parents[2] / "partners"
STARTUP_SECONDS = 30
HTTP_TIMEOUT = 10.0
_READY = re.compile(r"PARTNER (?P<name>.+) mllp=(?P<mllp>\d+) control=(?P<control>\d+)")


@dataclass
class Partner:
    """A running partner: where it listens for MLLP and how to steer it."""

    name: str
    host: str
    mllp_port: int
    control_url: str

    def messages(self) -> list[dict[str, Any]]:
        """Every message received since start (or reset), in arrival order."""
        response = httpx.get(f"{self.control_url}/messages", timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def set_mode(
        self,
        mode: str,
        *,
        code: str = "207",
        text: str = "",
        times: int | None = None,
        patient_id: str | None = None,
    ) -> None:
        """Answer AA, AE or AR (with ERR-3 ``code^text^HL70357``), or "silent" (no ACK).

        With ``times`` the mode applies to that many messages, then the partner answers AA.
        With ``patient_id`` it applies to that patient's messages (PID-3) only; the others
        are answered AA and do not count towards ``times``.
        """
        response = httpx.post(
            f"{self.control_url}/mode",
            json=_mode_body(mode, code, text, times, patient_id),
            timeout=HTTP_TIMEOUT,
        )
        _raise_for_status(response)

    def reset(self) -> None:
        """Forget the received messages and go back to answering AA."""
        _raise_for_status(httpx.post(f"{self.control_url}/reset", timeout=HTTP_TIMEOUT))

    async def amessages(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            response = await http.get(f"{self.control_url}/messages")
            response.raise_for_status()
            records: list[dict[str, Any]] = response.json()
            return records

    async def aset_mode(
        self,
        mode: str,
        *,
        code: str = "207",
        text: str = "",
        times: int | None = None,
        patient_id: str | None = None,
    ) -> None:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            response = await http.post(
                f"{self.control_url}/mode", json=_mode_body(mode, code, text, times, patient_id)
            )
            _raise_for_status(response)

    async def areset(self) -> None:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            _raise_for_status(await http.post(f"{self.control_url}/reset"))


def _mode_body(
    mode: str, code: str, text: str, times: int | None, patient_id: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"mode": mode, "code": code, "text": text}
    if times is not None:
        body["times"] = times
    if patient_id is not None:
        body["patient_id"] = patient_id
    return body


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise RuntimeError(
            f"partner control {response.request.method} {response.request.url} "
            f"answered {response.status_code}: {response.text}"
        )


@contextmanager
def running_partner(
    name: str,
    *,
    host: str = "127.0.0.1",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
) -> Iterator[Partner]:
    """Start ``node partners/partner.js`` on free ports of ``host``; stop it on exit.

    With ``tls_cert``/``tls_key`` its MLLP port speaks TLS; with ``tls_client_ca`` too it
    requires a client certificate issued by that CA.
    """
    tls_args: list[str] = []
    for option, value in (
        ("--tls-cert", tls_cert),
        ("--tls-key", tls_key),
        ("--tls-client-ca", tls_client_ca),
    ):
        if value is not None:
            tls_args += [option, str(value)]
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; `make test` installs it (apt-get nodejs npm)")
    if not (PARTNERS_DIR / "node_modules").is_dir():
        raise RuntimeError(
            "the partner systems' packages are missing; run `npm ci --prefix partners` "
            f"(in {PARTNERS_DIR.parent}) or `make setup`"
        )
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
                host,
                *tls_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert process.stdout is not None
        stdout = process.stdout
        lines: queue.Queue[bytes] = queue.Queue()

        def pump() -> None:
            # Drains stdout for the partner's lifetime, so it never blocks on a full pipe
            # and the startup timeout holds even when the partner prints nothing.
            for raw in iter(stdout.readline, b""):
                lines.put(raw)
            lines.put(b"")

        reader = threading.Thread(target=pump, name=f"partner-{name}-stdout", daemon=True)
        reader.start()
        try:
            yield _wait_until_ready(name, host, process, lines, log)
        finally:
            _stop(process)
            reader.join(timeout=5)
            stdout.close()


def _wait_until_ready(
    name: str,
    host: str,
    process: subprocess.Popen[bytes],
    lines: queue.Queue[bytes],
    log: IO[bytes],
) -> Partner:
    """Wait for the line ``PARTNER <name> mllp=<port> control=<port>`` on the partner's stdout."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining).decode(errors="replace")
        except queue.Empty:
            break
        if not line:  # stdout closed: the process ended
            break
        ready = _READY.fullmatch(line.strip())
        if ready is not None and ready["name"] == name:
            return Partner(
                name=name,
                host=host,
                mllp_port=int(ready["mllp"]),
                control_url=f"http://{host}:{ready['control']}",
            )
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass
    status = (
        f"exited with {process.returncode}"
        if process.returncode is not None
        else f"did not start in {STARTUP_SECONDS} s"
    )
    log.seek(0)
    output = log.read().decode(errors="replace")[-2000:]
    raise RuntimeError(f"partner {name} {status}: {output}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
