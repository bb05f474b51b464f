"""Start the project's Node FHIR R4 server (fhir-server/server.js) for a test session."""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from adapters.tls import client_tls_context
from tests.support.certs import Pki

SERVER_DIR = Path(__file__).resolve().parents[2] / "fhir-server"
STARTUP_SECONDS = 60


def _ephemeral_ports() -> range:
    """The kernel's range for the local end of outgoing connections (Linux)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def free_port() -> int:
    """A loopback port nothing listens on, taken below the kernel's ephemeral range where
    there is room: a port from that range can become the local end of some outgoing
    connection (a client of the dev server, the FHIR server, PostgreSQL...) between this
    pick and the server's bind, which then fails with "Address already in use" (seen once
    in CI, the demo's API port)."""
    ephemeral = _ephemeral_ports()
    if ephemeral.start > 11_000:
        for _ in range(100):
            port = random.randrange(10_000, ephemeral.start)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        picked: int = sock.getsockname()[1]
        return picked


def token_url(base_url: str) -> str:
    """The token endpoint of a server started with authorization on."""
    return base_url.removesuffix("/fhir") + "/auth/token"


def tokens_issued(base_url: str) -> int:
    """How many access tokens the server has issued (GET /auth/stats)."""
    stats = httpx.get(base_url.removesuffix("/fhir") + "/auth/stats", timeout=5).json()
    issued: int = stats["tokens_issued"]
    return issued


@dataclass(frozen=True)
class FhirServerProcess:
    """A running FHIR server: its base URL and its process (to freeze it with SIGSTOP)."""

    base_url: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_fhir_server(
    port: int | None = None,
    *,
    smart_clients: dict[str, Path] | None = None,
    static_token: str | None = None,
    require_auth: bool = False,
    token_lifetime_seconds: float | None = None,
    tls: Pki | None = None,
    require_client_cert: bool = False,
) -> Iterator[str]:
    """Yield the base URL of a fresh, empty in-memory FHIR server; stop it afterwards
    (fhir_server_process tells the options)."""
    with fhir_server_process(
        port,
        smart_clients=smart_clients,
        static_token=static_token,
        require_auth=require_auth,
        token_lifetime_seconds=token_lifetime_seconds,
        tls=tls,
        require_client_cert=require_client_cert,
    ) as server:
        yield server.base_url


@contextmanager
def fhir_server_process(
    port: int | None = None,
    *,
    smart_clients: dict[str, Path] | None = None,
    static_token: str | None = None,
    require_auth: bool = False,
    token_lifetime_seconds: float | None = None,
    tls: Pki | None = None,
    require_client_cert: bool = False,
) -> Iterator[FhirServerProcess]:
    """A fresh, empty in-memory FHIR server until the block ends.

    Authorization is off unless asked for: `smart_clients` registers SMART backend clients
    (client id -> JWKS file of their public keys), `static_token` accepts one fixed bearer
    token, `require_auth` turns it on even with neither (nothing gets in).

    With `tls` the server speaks HTTPS only, with that PKI's server certificate (127.0.0.1);
    `require_client_cert` makes it refuse clients without a certificate from that PKI's CA.
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; `make test` installs it (apt-get nodejs npm)")
    if not (SERVER_DIR / "node_modules").is_dir():
        raise RuntimeError(f"the FHIR server's packages are missing: npm ci --prefix {SERVER_DIR}")
    if require_client_cert and tls is None:
        raise ValueError("require_client_cert needs tls")
    port = port or free_port()
    base_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/fhir"
    with tempfile.TemporaryFile() as log:
        command = [node, str(SERVER_DIR / "server.js"), "--port", str(port), "--host", "127.0.0.1"]
        for client_id, jwks_file in (smart_clients or {}).items():
            command += ["--smart-client", f"{client_id}={jwks_file}"]
        if static_token is not None:
            command += ["--static-token", static_token]
        if require_auth:
            command.append("--require-auth")
        if token_lifetime_seconds is not None:
            command += ["--token-lifetime", str(token_lifetime_seconds)]
        if tls is not None:
            command += ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
            if require_client_cert:
                command += ["--tls-client-ca", str(tls.ca_cert)]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(base_url, process, log, _probe_verify(tls, require_client_cert))
            yield FhirServerProcess(base_url, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _probe_verify(tls: Pki | None, require_client_cert: bool) -> ssl.SSLContext | bool:
    if tls is None:
        return True
    if not require_client_cert:
        return client_tls_context(ca_file=tls.ca_cert)
    return client_tls_context(
        ca_file=tls.ca_cert, cert_file=tls.client_cert, key_file=tls.client_key
    )


def _wait_until_up(
    base_url: str, process: subprocess.Popen[bytes], log: object, verify: ssl.SSLContext | bool
) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the FHIR server exited with {process.returncode}: {_tail(log)}")
        try:
            if httpx.get(f"{base_url}/metadata", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the FHIR server did not answer in {STARTUP_SECONDS} s: {_tail(log)}")


def _tail(log: object) -> str:
    read = getattr(log, "read", None)
    seek = getattr(log, "seek", None)
    if read is None or seek is None:
        return ""
    seek(0)
    text: str = read().decode(errors="replace")
    return text[-2000:]
