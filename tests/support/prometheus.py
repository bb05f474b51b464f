"""A throwaway Prometheus server for the tests: Debian's `prometheus` package (`make test`
installs it), its data in a temporary folder, its API on a free loopback port, scraping the
given targets every second and evaluating the given rule files as often; stopped and deleted
at the end. The package's own service (and its /etc/prometheus) is not used."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.fhir_server import free_port

START_SECONDS = 30
SCRAPE_SECONDS = 1


def prometheus_binary(name: str = "prometheus") -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        raise RuntimeError(
            f"{name} was not found: install Debian's prometheus package (`make test` does)"
        )
    return found


@dataclass(frozen=True)
class PrometheusServer:
    url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def prometheus_config(jobs: Mapping[str, Sequence[str]], rule_files: Sequence[Path]) -> str:
    """prometheus.yml as JSON (JSON is YAML): one job per name, its host:port targets."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_SECONDS}s",
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }
    return json.dumps(config, indent=2)


@contextlib.contextmanager
def running_prometheus(
    jobs: Mapping[str, Sequence[str]], rule_files: Sequence[Path] = ()
) -> Iterator[PrometheusServer]:
    with tempfile.TemporaryDirectory(prefix="careweave-prometheus-") as folder:
        home = Path(folder)
        config = home / "prometheus.yml"
        config.write_text(prometheus_config(jobs, rule_files))
        port = free_port()
        log = home / "prometheus.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=home,
            )
        server = PrometheusServer(f"http://127.0.0.1:{port}", log)
        try:
            _wait_until_ready(server, process)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_ready(server: PrometheusServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"prometheus not ready in {START_SECONDS}s:\n{server.log_tail()}")


async def instant_query(http: httpx.AsyncClient, server: PrometheusServer, expr: str) -> Any:
    """The answer of /api/v1/query (status, data or errorType/error), whatever its status:
    a refused query answers 400 with the parser's error, which the caller asserts on."""
    answer = await http.get(f"{server.url}/api/v1/query", params={"query": expr})
    return answer.json()
