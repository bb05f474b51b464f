"""The routing file: what a good one yields and how a bad one is refused (file + place)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hl7v2.readdress import readdress
from models.destinations import RoutingConfigError, Subscription, load_routing

DEMO = Path(__file__).resolve().parents[2] / "config" / "destinations.toml"

GOOD = """
version = "t-1"
[[destination]]
name = "billing"
kind = "mllp"
subscribes = ["A03", "A08-diagnosis"]
[destination.mllp]
host = "127.0.0.1"
port = 2577
receiving_application = "BILLING"
receiving_facility = "FIN"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    return path


def test_demo_routing_file_loads_with_its_version_and_digest() -> None:
    routing = load_routing(DEMO)
    assert [d.name for d in routing.destinations] == ["fhir-platform", "primary-care", "billing"]
    assert routing.subscribers(Subscription.DIAGNOSIS_UPDATE) == ["fhir-platform", "billing"]
    assert routing.label.startswith("demo-1 (sha256 ")


def test_digest_changes_with_the_file(tmp_path: Path) -> None:
    first = load_routing(write(tmp_path, GOOD))
    second = load_routing(write(tmp_path, GOOD.replace("2577", "2578")))
    assert first.version == second.version
    assert first.digest != second.digest


def test_bad_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('kind = "mllp"', "kind = mllp"))
    with pytest.raises(RoutingConfigError, match=r"destinations.toml: not valid TOML.*line 5"):
        load_routing(path)


def test_bad_value_names_the_destination_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port = 2577", 'port = "twenty"'))
    with pytest.raises(RoutingConfigError, match=r"destination\[1\] \(billing\)\.mllp\.port"):
        load_routing(path)


def test_unknown_subscription_and_missing_endpoint_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RoutingConfigError, match="subscribes"):
        load_routing(write(tmp_path, GOOD.replace('"A08-diagnosis"', '"A99"')))
    no_endpoint = GOOD.split("[destination.mllp]")[0]
    with pytest.raises(RoutingConfigError, match=r"needs a \[destination\.mllp\] table"):
        load_routing(write(tmp_path, no_endpoint))


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    body = GOOD.split('version = "t-1"')[1]
    with pytest.raises(RoutingConfigError, match="unique: billing"):
        load_routing(write(tmp_path, 'version = "t-1"' + body + body))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingConfigError, match="cannot read"):
        load_routing(tmp_path / "nope.toml")


def test_readdress_changes_only_the_header_addresses_and_control_id() -> None:
    original = "MSH|^~\\&|EHR|GENHOSP|CW|GENHOSP|20261125||ADT^A03|C1|P|2.5.1\nPID|1||X^^^H^MR\n"
    out = readdress(
        original,
        sending_application="CAREWEAVE",
        sending_facility="GENHOSP",
        receiving_application="BILLING",
        receiving_facility="FIN",
        control_id="CW123",
    )
    msh, pid = out.rstrip("\r").split("\r")
    assert msh == "MSH|^~\\&|CAREWEAVE|GENHOSP|BILLING|FIN|20261125||ADT^A03|CW123|P|2.5.1"
    assert pid == "PID|1||X^^^H^MR"


def test_merge_announcements_are_subscribed_together(tmp_path: Path) -> None:
    both = load_routing(write(tmp_path, GOOD.replace('"A08-diagnosis"', '"A40", "A37"')))
    assert both.subscribers(Subscription.PATIENT_MERGE) == ["billing"]
    assert both.subscribers(Subscription.PATIENT_UNMERGE) == ["billing"]
    with pytest.raises(RoutingConfigError, match=r"\(billing\): .*A40 and A37 together"):
        load_routing(write(tmp_path, GOOD.replace('"A08-diagnosis"', '"A40"')))


def test_demo_primary_care_hears_of_merges_and_their_undo() -> None:
    routing = load_routing(DEMO)
    assert routing.subscribers(Subscription.PATIENT_MERGE) == ["primary-care"]
    assert routing.subscribers(Subscription.PATIENT_UNMERGE) == ["primary-care"]
