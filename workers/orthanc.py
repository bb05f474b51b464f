"""Orthanc, the PACS of imaging order-to-result, as the embedded stack and the tests run it.

The project ships config/orthanc.json (loopback only, authentication on, the worklist and
DICOMweb plugins); ``write_orthanc_config`` fills in what comes from settings (ports, AE
title, credentials, folders under the state dir, StableAge, the modalities allowed to
query and store) and ``orthanc_command`` runs Debian's Orthanc on it as the current user.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx

from models.errors import ConfigurationError
from models.settings import Settings

ORTHANC_TEMPLATE = Path(__file__).resolve().parent.parent / "config" / "orthanc.json"
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb dcmtk (`make test` does it)"


class OrthancMissing(ConfigurationError):
    """Orthanc or one of its plugins is not installed."""


def orthanc_configuration(settings: Settings) -> dict[str, Any]:
    """The shipped template with the settings' values in; no file is written."""
    config: dict[str, Any] = json.loads(ORTHANC_TEMPLATE.read_text())
    storage = (settings.state_dir / "orthanc").resolve()
    config["StorageDirectory"] = str(storage)
    config["IndexDirectory"] = str(storage)
    config["HttpPort"] = settings.orthanc_http_port
    config["DicomPort"] = settings.orthanc_dicom_port
    config["DicomAet"] = settings.orthanc_aet
    config["RegisteredUsers"] = {settings.orthanc_username: settings.resolved_orthanc_password()}
    config["StableAge"] = settings.orthanc_stable_age_seconds
    config["Worklists"]["Database"] = str(settings.resolved_worklist_dir.resolve())
    # Only these modalities, from these hosts, may echo, query the worklist and store
    # (DicomCheckModalityHost); the DICOM port itself has no bind option in Orthanc 1.10.
    config["DicomModalities"] = {
        aet.lower(): {
            "AET": aet,
            "Host": host,
            "Port": 104,
            "AllowEcho": True,
            "AllowFind": False,
            "AllowFindWorklist": True,
            "AllowStore": True,
            "AllowGet": False,
            "AllowMove": False,
        }
        for aet, host in settings.orthanc_modalities.items()
    }
    return config


def write_orthanc_config(settings: Settings) -> Path:
    """Write the configuration to state_dir/orthanc.json (0600: it holds the password) and
    make the storage and worklist folders; returns the file."""
    config = orthanc_configuration(settings)
    for plugin in config["Plugins"]:
        if not Path(plugin).exists():
            raise OrthancMissing(f"the Orthanc plugin {plugin} is missing: {INSTALL_HINT}")
    Path(config["StorageDirectory"]).mkdir(parents=True, exist_ok=True)
    Path(config["Worklists"]["Database"]).mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / "orthanc.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(config, indent=2))
    return path


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    if not found:
        raise OrthancMissing(f"Orthanc is not installed: {INSTALL_HINT}")
    return found


def orthanc_command(config_file: Path) -> list[str]:
    # No --verbose: Orthanc's info log names patients (DeidentifyLogs covers only some).
    return [orthanc_binary(), str(config_file)]


async def wait_for_orthanc(
    base_url: str, auth: tuple[str, str], *, alive: Any, seconds: float = 60
) -> None:
    """Until GET /system answers 200 with these credentials. ``alive()`` says whether the
    process still runs; raises RuntimeError when it exited or did not answer in time."""
    deadline = asyncio.get_running_loop().time() + seconds
    async with httpx.AsyncClient(timeout=2, auth=auth) as http:
        while asyncio.get_running_loop().time() < deadline:
            if not alive():
                raise RuntimeError("Orthanc exited")
            try:
                if (await http.get(f"{base_url}/system")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer in {seconds:.0f} s")
