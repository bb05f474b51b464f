"""Business-key pseudonyms: what a message carries is findable from what a person types,
and nothing in clear reaches the search attributes."""

from __future__ import annotations

from adapters.hl7v2.header import decode_message
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS, read_business_keys, search_pseudonym
from models.search import BusinessKeyKind, BusinessKeys
from workers import sample_messages as sm

KEY = b"business-key-test"


def keys_of(text: str) -> BusinessKeys:
    message = decode_message(
        text.encode(),
        supported_types=REGISTRY.supported_types,
        supported_versions=SUPPORTED_VERSIONS,
        required_segments=REGISTRY.required_segments,
    )
    return read_business_keys(message, KEY)


def test_a_result_is_findable_by_mrn_placer_filler_and_control_id() -> None:
    order = sm.SampleOrder("PO-501", patient=sm.SamplePatient(mrn="MRN8501"))
    keys = keys_of(sm.lab_result(order, "CTRL-1", [sm.SODIUM], filler_order_number="F-9"))
    assert search_pseudonym(KEY, BusinessKeyKind.MRN, "MRN8501") in keys.patient
    assert search_pseudonym(KEY, BusinessKeyKind.PLACER, "PO-501") in keys.order
    assert search_pseudonym(KEY, BusinessKeyKind.FILLER, "F-9") in keys.order
    assert keys.message == (search_pseudonym(KEY, BusinessKeyKind.CONTROL_ID, "CTRL-1"),)
    flat = " ".join((*keys.patient, *keys.order, *keys.message))
    for clear in ("MRN8501", "PO-501", "F-9", "CTRL-1", "GENHOSP"):
        assert clear not in flat


def test_a_typed_value_with_spaces_finds_it_and_the_kind_keeps_keys_apart() -> None:
    typed = search_pseudonym(KEY, BusinessKeyKind.PLACER, "  PO-501 ")
    assert typed == search_pseudonym(KEY, BusinessKeyKind.PLACER, "PO-501")
    assert typed != search_pseudonym(KEY, BusinessKeyKind.VISIT, "PO-501")
    assert typed != search_pseudonym(b"another key", BusinessKeyKind.PLACER, "PO-501")


def test_the_registry_route_carries_the_keys() -> None:
    order = sm.SampleOrder("PO-502")
    message = decode_message(
        sm.lab_order(order, "CTRL-2").encode(),
        supported_types=REGISTRY.supported_types,
        supported_versions=SUPPORTED_VERSIONS,
        required_segments=REGISTRY.required_segments,
    )
    route = REGISTRY.route(message, pseudonym_key=KEY)
    assert route.business_keys == read_business_keys(message, KEY)
    assert route.business_keys.order
