"""The PACS as the project configures it (config/orthanc.json): Debian's Orthanc, its
worklist and DICOMweb plugins, authentication on, run as the current user."""

from __future__ import annotations

import httpx

from tests.support.orthanc import RunningOrthanc


def test_orthanc_refuses_requests_without_the_configured_credentials(
    orthanc: RunningOrthanc,
) -> None:
    assert httpx.get(f"{orthanc.base_url}/system", timeout=5).status_code == 401
    wrong = httpx.get(f"{orthanc.base_url}/system", auth=("careweave", "nope"), timeout=5)
    assert wrong.status_code == 401
    system = httpx.get(f"{orthanc.base_url}/system", auth=orthanc.auth, timeout=5).json()
    assert system["DicomPort"] == orthanc.dicom_port
    assert system["DicomAet"] == orthanc.aet


def test_orthanc_runs_the_worklist_and_dicomweb_plugins(orthanc: RunningOrthanc) -> None:
    plugins = httpx.get(f"{orthanc.base_url}/plugins", auth=orthanc.auth, timeout=5).json()
    assert {"worklists", "dicom-web"} <= set(plugins)
    studies = httpx.get(f"{orthanc.dicomweb_url}/studies", auth=orthanc.auth, timeout=5)
    assert studies.status_code in (200, 204)


def test_orthanc_keeps_its_storage_and_worklists_under_the_state_dir(
    orthanc: RunningOrthanc,
) -> None:
    assert orthanc.worklist_dir.is_dir()
    assert orthanc.worklist_dir.is_relative_to(orthanc.state_dir)
    assert (orthanc.state_dir / "orthanc" / "index").exists()
