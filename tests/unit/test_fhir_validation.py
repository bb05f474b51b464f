"""The compiled FHIR check (mappings/fhir_validation) agrees with fhir.resources R4B.

It replaced fhir.resources on the per-message path for speed, so it must accept what the
mappers emit and reject what fhir.resources rejects; where it is stricter (a uri with
whitespace) the test says so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.hl7v2.adt_messages import parse_adt_event
from adapters.hl7v2.lab_messages import parse_lab_results
from mappings.discharge_sync.fhir_builders import encounter_transaction_for
from mappings.discharge_sync.mapping import load_adt_mapping
from mappings.fhir_validation import FhirInvalid, validate_bundle, validate_resource
from mappings.order_to_result.concept_map import load_lab_mapping
from mappings.order_to_result.fhir_builders import result_transaction_for
from tests.unit.test_adt_messages import DISCHARGE_SYNC_FILES
from tests.unit.test_adt_messages import corpus as adt_corpus
from tests.unit.test_lab_messages import REFUSED, RESULT_FILES, corpus
from workers import sample_messages as sm

JSON = dict[str, Any]
LAB = load_lab_mapping("v1")


def _lab_bundles() -> list[JSON]:
    return [
        result_transaction_for(result, LAB)
        for name in RESULT_FILES
        if name not in REFUSED
        for result in parse_lab_results(corpus(name))
    ]


def test_every_mapped_corpus_bundle_passes_both_checks() -> None:
    bundles = _lab_bundles()
    adt = load_adt_mapping()
    bundles += [
        encounter_transaction_for(parse_adt_event(adt_corpus(name)), adt)
        for name in DISCHARGE_SYNC_FILES
    ]
    assert len(bundles) >= 10
    for bundle in bundles:
        assert validate_bundle(bundle) is bundle  # returned as is: nothing re-serialised
        Bundle.model_validate(bundle)


def _observation_index(bundle: JSON) -> int:
    return next(
        i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Observation"
    )


def _observation(bundle: JSON) -> JSON:
    resource: JSON = bundle["entry"][_observation_index(bundle)]["resource"]
    return resource


BROKEN: dict[str, Callable[[JSON], object]] = {
    "missing required status": lambda b: _observation(b).pop("status"),
    "missing required code": lambda b: _observation(b).pop("code"),
    "code with leading space": lambda b: _observation(b).update(status=" final"),
    "unknown element": lambda b: _observation(b).update(valueText="7"),
    "impossible dateTime": lambda b: _observation(b).update(effectiveDateTime="2026-13-45"),
    "time without offset": lambda b: _observation(b).update(effectiveDateTime="2026-11-25T08:30"),
    "two value[x]": lambda b: _observation(b).update(valueString="7"),
    "object where a list is": lambda b: _observation(b).update(identifier={"value": "x"}),
    "number as text": lambda b: _observation(b)["valueQuantity"].update(value="seven"),
    "wrong resourceType": lambda b: _observation(b).update(resourceType="Observaton"),
    "Bundle without type": lambda b: b.pop("type"),
    "entry request without method": lambda b: b["entry"][0]["request"].pop("method"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_an_invalid_resource_in_the_bundle_is_caught_like_fhir_resources_does(
    breakage: str,
) -> None:
    bundle = copy.deepcopy(_lab_bundles()[0])
    assert "valueQuantity" in _observation(bundle)
    BROKEN[breakage](bundle)
    # (fhir.resources answers an unknown resourceType with a KeyError of its own)
    with pytest.raises((ValidationError, KeyError)):
        Bundle.model_validate(bundle)
    with pytest.raises(FhirInvalid):
        validate_bundle(bundle)


def test_a_uri_with_spaces_is_caught_though_fhir_resources_lets_it_through() -> None:
    bundle = copy.deepcopy(_lab_bundles()[0])
    _observation(bundle)["code"]["coding"][0]["system"] = "urn:local:Lab Result Codes"
    Bundle.model_validate(bundle)  # fhir.resources applies FHIR's \S* unanchored
    with pytest.raises(FhirInvalid) as caught:
        validate_bundle(bundle)
    where = ("entry", _observation_index(bundle), "resource", "code", "coding", 0, "system")
    assert caught.value.errors[0]["loc"] == where


def test_a_local_coding_system_with_spaces_is_encoded_into_a_valid_uri() -> None:
    system = LAB.system_uri("Lab Result Codes")
    assert " " not in system and system.endswith("Lab%20Result%20Codes")


def test_the_error_names_the_element_and_an_unknown_type_is_refused() -> None:
    with pytest.raises(FhirInvalid, match=r"Observation\.status: Field required"):
        validate_resource({"resourceType": "Observation", "code": {"text": "K"}})
    with pytest.raises(FhirInvalid, match="unknown resource type"):
        validate_resource({"resourceType": "NoSuchThing"})


# --- property: whatever a sender puts in an OBX, the mapper emits valid FHIR -----------------

_TEXT = st.text(
    alphabet=st.characters(
        whitelist_categories=("L", "N", "Zs", "Pd", "Po"), blacklist_characters="|^~\\&"
    ),
    max_size=20,
).map(str.strip)
_VALUES = st.builds(
    sm.ResultValue,
    local_code=_TEXT.filter(bool),
    text=_TEXT,
    value=st.one_of(_TEXT, st.decimals(-1e6, 1e6, places=3).map(str)),
    units=_TEXT,
    reference_range=st.sampled_from(["", "3.5-5.1", "<10", "> 2", "neg"]),
    flag=st.sampled_from(["", "N", "H", "LL", "HH", "A"]),
    value_type=st.sampled_from(["NM", "ST", "SN", "CWE", "TX"]),
    coding_system=st.one_of(st.sampled_from(["L", "LN", "99zzz or L", ""]), _TEXT),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_VALUES, min_size=1, max_size=6))
def test_every_bundle_the_mapper_emits_validates_with_only_valid_uris(
    values: list[sm.ResultValue],
) -> None:
    text = sm.lab_result(sm.SampleOrder("PROP-1"), "PROP-1", values)
    for result in parse_lab_results(text):
        bundle = result_transaction_for(result, LAB)  # raises FhirInvalid if not valid
        Bundle.model_validate(bundle)
        for system in _systems(bundle):
            assert system and not any(c.isspace() for c in system), system


def _systems(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "system" and isinstance(value, str):
                yield value
            else:
                yield from _systems(value)
    elif isinstance(node, list):
        for item in node:
            yield from _systems(item)
