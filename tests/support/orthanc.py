"""Start Debian's Orthanc (the PACS) for a test session, on free ports, with the project's
own configuration (workers/orthanc.py over config/orthanc.json) and a short StableAge."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from models.settings import Settings
from tests.support.fhir_server import free_port
from workers.orthanc import orthanc_command, write_orthanc_config

STARTUP_SECONDS = 60
# The AE title the tests' dcmtk "modality" (findscu, storescu) calls from.
MODALITY_AET = "TESTMODALITY"
STABLE_AGE_SECONDS = 2


@dataclass
class RunningOrthanc:
    base_url: str
    dicom_port: int
    aet: str
    username: str
    password: str
    worklist_dir: Path
    state_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def setting_overrides(self) -> dict[str, object]:
        """What an engine's settings need to reach this Orthanc."""
        return {
            "orthanc_embedded": False,
            "orthanc_url": self.base_url,
            "orthanc_dicom_port": self.dicom_port,
            "orthanc_aet": self.aet,
            "orthanc_username": self.username,
            "orthanc_password": self.password,
            "worklist_dir": self.worklist_dir,
        }


def orthanc_settings(state_dir: Path) -> Settings:
    return Settings(
        state_dir=state_dir,
        orthanc_http_port=free_port(),
        orthanc_dicom_port=free_port(),
        orthanc_password="orthanc-test-password",
        orthanc_stable_age_seconds=STABLE_AGE_SECONDS,
        orthanc_modalities={MODALITY_AET: "127.0.0.1"},
    )


@contextmanager
def running_orthanc(state_dir: Path | None = None) -> Iterator[RunningOrthanc]:
    """Yield a fresh Orthanc (empty storage unless ``state_dir`` holds one); stop it after."""
    with tempfile.TemporaryDirectory(prefix="orthanc-") as scratch:
        settings = orthanc_settings(state_dir or Path(scratch))
        with started_orthanc(settings) as running:
            yield running


@contextmanager
def started_orthanc(settings: Settings) -> Iterator[RunningOrthanc]:
    """Run Orthanc on these settings (a restart test starts it twice on the same ones)."""
    config = write_orthanc_config(settings)
    log_path = settings.state_dir / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(orthanc_command(config), stdout=log, stderr=subprocess.STDOUT)
    running = RunningOrthanc(
        base_url=settings.resolved_orthanc_url,
        dicom_port=settings.orthanc_dicom_port,
        aet=settings.orthanc_aet,
        username=settings.orthanc_username,
        password=settings.resolved_orthanc_password(),
        worklist_dir=settings.resolved_worklist_dir,
        state_dir=settings.state_dir,
        process=process,
    )
    try:
        _wait_until_up(running, log_path)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(running: RunningOrthanc, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {log_path.read_text()[-2000:]}")
        try:
            answer = httpx.get(f"{running.base_url}/system", auth=running.auth, timeout=2)
            if answer.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer in {STARTUP_SECONDS} s")
