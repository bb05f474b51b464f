"""Patient merge on FHIR JSON: the two Patients ($merge semantics), re-pointing, the
Provenance, and the exact undo from the Provenance alone (property-tested)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mappings.fhir_validation import FhirInvalid, validate_resource
from mappings.patient_merge.fhir_merge import (
    RepointedWrite,
    WrittenVersion,
    merge_patients,
    merge_provenance,
    read_merge_provenance,
    repoint_references,
    restore_references,
    unmerge_patients,
)
from mappings.patient_merge.mapping import available_versions, load_merge_mapping

MAPPING = load_merge_mapping("v1")
WHEN = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
SYSTEM = "urn:careweave:patient-id:GENHOSP"
SOURCE: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "old",
    "meta": {"versionId": "3"},
    "active": True,
    "identifier": [
        {"system": SYSTEM, "value": "MRN9002", "use": "usual"},
        {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "999-00-9001"},
    ],
    "name": [{"family": "Merge", "given": ["Mia"]}],
}
TARGET: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "new",
    "meta": {"versionId": "7"},
    "identifier": [
        {"system": SYSTEM, "value": "MRN9001"},
        {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "999-00-9001"},
    ],
    "link": [{"other": {"reference": "Patient/someone"}, "type": "seealso"}],
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs1",
    "status": "final",
    "code": {"text": "glucose"},
    "subject": {"reference": "Patient/old"},
    "performer": [
        {"reference": "Practitioner/p1"},
        {"reference": "https://fhir.example/Patient/old"},
    ],
    "derivedFrom": [{"reference": "Patient/old/_history/2"}],
    "basedOn": [{"reference": "ServiceRequest/sr1"}],
}


def test_mapping_versions_and_refusal_of_an_unknown_one() -> None:
    assert available_versions() == ["v1"]
    with pytest.raises(ValueError, match="known: v1"):
        load_merge_mapping("v9")


def test_source_is_retired_and_points_at_the_target() -> None:
    merged = merge_patients(SOURCE, TARGET, MAPPING)
    assert merged.source["active"] is False
    assert merged.source["link"] == [{"other": {"reference": "Patient/new"}, "type": "replaced-by"}]
    assert merged.source["identifier"] == SOURCE["identifier"]  # nothing taken away
    assert merged.source_previous_active is True
    validate_resource(merged.source)
    assert SOURCE["active"] is True and "link" not in SOURCE  # the input is not modified


def test_target_replaces_the_source_and_gains_its_identifiers_as_old() -> None:
    merged = merge_patients(SOURCE, TARGET, MAPPING)
    assert merged.target["link"] == [
        {"other": {"reference": "Patient/someone"}, "type": "seealso"},
        {"other": {"reference": "Patient/old"}, "type": "replaces"},
    ]
    # The SSN was already there (same system and value): not added twice.
    assert merged.target["identifier"] == [
        *TARGET["identifier"],
        {"system": SYSTEM, "value": "MRN9002", "use": "old"},
    ]
    assert merged.added_identifiers == ({"system": SYSTEM, "value": "MRN9002", "use": "old"},)
    validate_resource(merged.target)


def test_merging_again_changes_nothing() -> None:
    once = merge_patients(SOURCE, TARGET, MAPPING)
    twice = merge_patients(once.source, once.target, MAPPING)
    assert (twice.source, twice.target) == (once.source, once.target)
    assert twice.added_identifiers == ()


def test_a_patient_cannot_merge_into_itself() -> None:
    with pytest.raises(ValueError, match="same Patient"):
        merge_patients(SOURCE, SOURCE, MAPPING)
    with pytest.raises(ValueError, match="target is not a Patient"):
        merge_patients(SOURCE, OBSERVATION, MAPPING)


def test_repoint_changes_literal_references_only_and_names_their_paths() -> None:
    repointed, paths = repoint_references(OBSERVATION, "old", "new", MAPPING)
    assert paths == ("/subject/reference", "/performer/1/reference")
    assert repointed["subject"] == {"reference": "Patient/new"}
    assert repointed["performer"][1] == {"reference": "https://fhir.example/Patient/new"}
    # A versioned reference names one version on purpose: kept.
    assert repointed["derivedFrom"] == OBSERVATION["derivedFrom"]
    assert OBSERVATION["subject"] == {"reference": "Patient/old"}
    validate_resource(repointed)


def test_a_resource_without_the_source_is_returned_unchanged() -> None:
    other = {**OBSERVATION, "subject": {"reference": "Patient/oldest"}, "performer": []}
    other.pop("derivedFrom")
    same, paths = repoint_references(other, "old", "new", MAPPING)
    assert same is other and paths == ()


def test_history_resources_and_the_merged_patients_are_never_repointed() -> None:
    provenance = {"resourceType": "Provenance", "target": [{"reference": "Patient/old"}]}
    assert repoint_references(provenance, "old", "new", MAPPING) == (provenance, ())
    target = {**TARGET, "link": [{"other": {"reference": "Patient/old"}, "type": "replaces"}]}
    assert repoint_references(target, "old", "new", MAPPING) == (target, ())


def _writes() -> tuple[Any, ...]:
    merged = merge_patients(SOURCE, TARGET, MAPPING)
    repointed, paths = repoint_references(OBSERVATION, "old", "new", MAPPING)
    patients = (
        WrittenVersion(resource_type="Patient", id="old", version_id="4", previous_version_id="3"),
        WrittenVersion(resource_type="Patient", id="new", version_id="8", previous_version_id="7"),
        merged,
    )
    page = [
        RepointedWrite(
            written=WrittenVersion(
                resource_type="Observation", id="obs1", version_id="2", previous_version_id="1"
            ),
            paths=paths,
        )
    ]
    return merged, repointed, patients, page


def test_provenance_lists_every_write_versioned_with_its_previous_version() -> None:
    _, _, patients, page = _writes()
    provenance = merge_provenance(
        source_id="old",
        target_id="new",
        recorded=WHEN,
        reason="ADT^A40 from GENHOSP, approved by a reviewer",
        mapping=MAPPING,
        patients=patients,
        repointed=page,
    )
    validate_resource(provenance)
    assert [t["reference"] for t in provenance["target"]] == [
        "Patient/old/_history/4",
        "Patient/new/_history/8",
        "Observation/obs1/_history/2",
    ]
    assert provenance["entity"] == [
        {"role": "revision", "what": {"reference": "Patient/old/_history/3"}},
        {"role": "revision", "what": {"reference": "Patient/new/_history/7"}},
        {"role": "revision", "what": {"reference": "Observation/obs1/_history/1"}},
    ]
    assert provenance["activity"]["coding"][0]["code"] == "merge"
    assert provenance["agent"][0]["who"] == {"reference": "Device/careweave"}
    assert provenance["reason"] == [{"text": "ADT^A40 from GENHOSP, approved by a reviewer"}]


def test_provenance_refuses_no_write_and_a_naive_time() -> None:
    with pytest.raises(ValueError, match="at least one write"):
        merge_provenance(source_id="o", target_id="n", recorded=WHEN, reason="", mapping=MAPPING)
    _, _, patients, _ = _writes()
    with pytest.raises(ValueError, match="time zone"):
        merge_provenance(
            source_id="old",
            target_id="new",
            recorded=datetime(2026, 3, 1),
            reason="",
            mapping=MAPPING,
            patients=patients,
        )


def test_the_provenance_alone_undoes_the_merge_exactly() -> None:
    merged, repointed, patients, page = _writes()
    provenance = merge_provenance(
        source_id="old",
        target_id="new",
        recorded=WHEN,
        reason="merge",
        mapping=MAPPING,
        patients=patients,
        repointed=page,
    )
    record = read_merge_provenance(provenance, MAPPING)
    assert (record.source_id, record.target_id) == ("old", "new")
    assert record.repointed == tuple(page)
    assert record.source == patients[0] and record.target == patients[1]
    source, target = unmerge_patients(merged.source, merged.target, record, MAPPING)
    assert (source, target) == (SOURCE, TARGET)
    (entry,) = record.repointed
    restored, refused = restore_references(repointed, "old", "new", entry.paths)
    assert (restored, refused) == (OBSERVATION, ())


def test_undo_keeps_what_was_written_since_and_reports_what_it_cannot_restore() -> None:
    merged, repointed, patients, page = _writes()
    record = read_merge_provenance(
        merge_provenance(
            source_id="old",
            target_id="new",
            recorded=WHEN,
            reason="",
            mapping=MAPPING,
            patients=patients,
            repointed=page,
        ),
        MAPPING,
    )
    later_target = {**merged.target, "gender": "female"}
    _, target = unmerge_patients(merged.source, later_target, record, MAPPING)
    assert target == {**TARGET, "gender": "female"}
    # Someone moved the subject to another patient after the merge: left alone, reported.
    moved = {**repointed, "subject": {"reference": "Patient/third"}}
    restored, refused = restore_references(moved, "old", "new", page[0].paths)
    assert refused == ("/subject/reference",)
    assert restored["subject"] == {"reference": "Patient/third"}
    assert restored["performer"][1] == {"reference": "https://fhir.example/Patient/old"}


def test_a_previously_absent_active_is_absent_again_after_undo() -> None:
    source = {k: v for k, v in SOURCE.items() if k != "active"}
    merged = merge_patients(source, TARGET, MAPPING)
    provenance = merge_provenance(
        source_id="old",
        target_id="new",
        recorded=WHEN,
        reason="",
        mapping=MAPPING,
        patients=(
            WrittenVersion(resource_type="Patient", id="old", version_id="2"),
            WrittenVersion(resource_type="Patient", id="new", version_id="2"),
            merged,
        ),
    )
    validate_resource(provenance)
    record = read_merge_provenance(provenance, MAPPING)
    assert unmerge_patients(merged.source, merged.target, record, MAPPING)[0] == source


def test_a_provenance_of_something_else_is_refused() -> None:
    with pytest.raises(ValueError, match="not a merge Provenance"):
        read_merge_provenance({"resourceType": "Provenance", "target": []}, MAPPING)


def test_validation_catches_a_broken_provenance() -> None:
    _, _, patients, _ = _writes()
    provenance = merge_provenance(
        source_id="old",
        target_id="new",
        recorded=WHEN,
        reason="",
        mapping=MAPPING,
        patients=patients,
    )
    broken = {**provenance, "agent": [{"type": provenance["agent"][0]["type"]}]}  # no who
    with pytest.raises(FhirInvalid):
        validate_resource(broken)


# --- property: re-point then restore gives the original back, whatever the shape -----------

_REFERENCES = st.sampled_from(
    [
        "Patient/old",
        "Patient/new",
        "Patient/other",
        "Patient/old/_history/1",
        "https://fhir.example/r4/Patient/old",
        "Observation/old",
        "Patient/olde",
        "#contained",
    ]
)
_KEYS = st.sampled_from(["subject", "patient", "a/b", "x~y", "entry", "item", "who", "0"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), _REFERENCES)
_NODES = st.recursive(
    st.one_of(_SCALARS, st.builds(lambda r: {"reference": r}, _REFERENCES)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_KEYS, children, max_size=4),
        st.builds(lambda r, d: {"reference": r, "display": d}, _REFERENCES, st.text(max_size=3)),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(_KEYS, _NODES, max_size=5))
def test_repoint_then_restore_is_the_identity(body: dict[str, Any]) -> None:
    resource = {"resourceType": "Observation", **body}
    repointed, paths = repoint_references(resource, "old", "new", MAPPING)
    again, more = repoint_references(repointed, "old", "new", MAPPING)
    assert (again, more) == (repointed, ())  # idempotent: nothing left to re-point
    restored, refused = restore_references(repointed, "old", "new", paths)
    assert refused == ()
    assert restored == resource
    assert (repointed == resource) == (paths == ())
