"""Pure functions: a PersonUpdate -> the changes it asks of a FHIR Patient, and the merge of
those changes into a Patient that other sources write too.

The merge is the whole point of patient-sync (README.md has the table): the message
replaces only what it speaks for (the names of the uses it sends, the addresses of the
uses it sends, the telecom of the system and use it sends, birth date, gender), adds the
identifiers it carries, removes what it sends as HL7's explicit null ``""``, and leaves
everything else -- other sources' telecom, identifiers, links, extensions -- as it was.
Merging the same changes twice gives the same Patient, so a retried write is no write.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from mappings.fhir_identifiers import (
    patient_identifier,
    patient_query,
    qualified_system,
)
from mappings.fhir_validation import FhirInvalid, validate_resource
from mappings.patient_sync.mapping import PatientMapping
from models.errors import Hl7Error
from models.person import ContactNumber, PersonAddress, PersonDemographics, PersonName

__all__ = [
    "PatientChanges",
    "PatientInvalid",
    "merge_patient",
    "new_patient",
    "patient_changes",
]

JSON = dict[str, Any]


class PatientInvalid(Hl7Error, ValueError):
    """The Patient built or merged is not valid R4; names element paths only (no values)."""


class PatientChanges(BaseModel):
    """What one A28/A31 asks of the Patient, as FHIR elements (PHI: payloads only)."""

    model_config = ConfigDict(frozen=True)

    mapping_version: str
    # The Patient is found (or created) by this identifier: PID-3, MR preferred.
    key_identifier: dict[str, str]
    identifiers: list[JSON]
    names: list[JSON] = []
    birth_date: str = ""
    gender: str = ""
    addresses: list[JSON] = []
    telecom: list[JSON] = []
    remove_birth_date: bool = False
    remove_gender: bool = False
    remove_address_uses: list[str] = []
    remove_telecom_uses: list[str] = []
    # PID-29 as a FHIR date, PID-30 Y/N (None: not sent); an explicit null removes both.
    deceased_date: str = ""
    deceased: bool | None = None
    remove_deceased: bool = False
    # How the merge counts a name without use (mapping data, carried for a pure merge).
    name_without_use: str = "official"
    tag: dict[str, str]

    @property
    def search(self) -> str:
        """The If-None-Exist query that finds the Patient: ``identifier=<system>|<value>``."""
        return patient_query(self.key_identifier)


# --- the message's fields as FHIR elements -------------------------------------------------


def patient_changes(update: PersonDemographics, mapping: PatientMapping) -> PatientChanges:
    """Map what one PID says (a person update, or the PID of a lab order or result) with
    one mapping version. Pure; never reads the server."""
    key = patient_identifier(update.patient, mapping.patient_system)
    identifiers = _unique(
        [
            _identifier(i.value, i.assigning_authority, i.identifier_type, mapping)
            for i in update.identifiers
        ]
    )
    if not any(_same_identifier(i, key) for i in identifiers):
        identifiers.insert(0, dict(key))
    nulls = set(update.explicit_nulls)
    removes = mapping.null_removes_uses
    return PatientChanges(
        mapping_version=mapping.version,
        key_identifier=key,
        identifiers=identifiers,
        names=[_name(name, index, mapping) for index, name in enumerate(update.names)],
        birth_date=update.birth_date,
        gender=mapping.administrative_sex.get(update.sex.upper(), ""),
        addresses=_unique([_address(address, mapping) for address in update.addresses]),
        telecom=_unique(
            [_contact_point(c, "PID-13", mapping) for c in update.home_contacts]
            + [_contact_point(c, "PID-14", mapping) for c in update.business_contacts]
        ),
        remove_birth_date="PID-7" in nulls and mapping.null_removes_birth_date,
        remove_gender="PID-8" in nulls and mapping.null_removes_gender,
        remove_address_uses=list(removes.get("PID-11", ())) if "PID-11" in nulls else [],
        remove_telecom_uses=sorted(
            {
                use
                for field in ("PID-13", "PID-14")
                if field in nulls
                for use in removes.get(field, ())
            }
        ),
        deceased_date=update.deceased_at,
        deceased=update.deceased,
        remove_deceased="PID-29" in nulls and "PID-30" in nulls,
        name_without_use=mapping.server_name_without_use,
        tag={"system": mapping.mapping_tag_system, "code": mapping.mapping_tag_code},
    )


def _identifier(value: str, authority: str, kind: str, mapping: PatientMapping) -> JSON:
    identifier: JSON = {
        "system": qualified_system(mapping.patient_system, authority),
        "value": value,
    }
    if kind:
        identifier["type"] = {"coding": [{"system": mapping.identifier_type_system, "code": kind}]}
    return identifier


def _name(name: PersonName, index: int, mapping: PatientMapping) -> JSON:
    use = mapping.name_use.get(name.name_type, "")
    if not name.name_type and index == 0:
        use = mapping.first_name_use
    human_name: JSON = {}
    if use:
        human_name["use"] = use
    if name.family:
        human_name["family"] = name.family
    if name.given:
        human_name["given"] = list(name.given)
    if name.prefix:
        human_name["prefix"] = [name.prefix]
    if name.suffix:
        human_name["suffix"] = list(name.suffix)
    return human_name


def _address(address: PersonAddress, mapping: PatientMapping) -> JSON:
    fhir_address: JSON = {}
    use = mapping.address_use.get(address.address_type, "")
    if use:
        fhir_address["use"] = use
    if address.lines:
        fhir_address["line"] = list(address.lines)
    for element, value in (
        ("city", address.city),
        ("district", address.district),
        ("state", address.state),
        ("postalCode", address.postal_code),
        ("country", address.country),
    ):
        if value:
            fhir_address[element] = value
    return fhir_address


def _contact_point(contact: ContactNumber, field: str, mapping: PatientMapping) -> JSON:
    system = (
        mapping.telecom_system.get(contact.equipment_type)
        or mapping.telecom_system_by_use.get(contact.use_code)
        or ("email" if contact.email and not contact.number else "phone")
    )
    # An email system reads XTN-4 first; older senders put the address in XTN-1.
    value = (
        (contact.email or contact.number)
        if system == "email"
        else (contact.number or contact.email)
    )
    use = (
        mapping.telecom_use_by_equipment.get(contact.equipment_type)
        or mapping.telecom_use.get(contact.use_code)
        or mapping.telecom_default_use[field]
    )
    return {"system": system, "value": value, "use": use}


def _unique(items: list[JSON]) -> list[JSON]:
    kept: list[JSON] = []
    for item in items:
        if item not in kept:
            kept.append(item)
    return kept


# --- the merge -----------------------------------------------------------------------------


def new_patient(changes: PatientChanges) -> JSON:
    """The Patient to create when none has the key identifier: the message's fields only."""
    return merge_patient({"resourceType": "Patient"}, changes)


def merge_patient(current: JSON, changes: PatientChanges) -> JSON:
    """``current`` with the message's fields merged in; everything else untouched.

    Raises PatientInvalid if the result is not a valid R4 Patient (never sent then).
    """
    patient = copy.deepcopy(current)
    identifiers = list(patient.get("identifier", []))
    for identifier in changes.identifiers:
        # Identifiers are added, never replaced or removed: another source's MRN, a
        # national id, the identifiers a merge left behind all stay.
        if not any(_same_identifier(existing, identifier) for existing in identifiers):
            identifiers.append(identifier)
    _set_list(patient, "identifier", identifiers)

    def name_use(name: JSON) -> str:
        return str(name.get("use") or changes.name_without_use)

    _set_list(patient, "name", _replace_slices(patient.get("name", []), changes.names, name_use))

    if changes.remove_birth_date:
        patient.pop("birthDate", None)
    elif changes.birth_date:
        patient["birthDate"] = changes.birth_date
    if changes.remove_gender:
        patient.pop("gender", None)
    elif changes.gender:
        patient["gender"] = changes.gender

    _merge_deceased(patient, changes)

    def address_use(address: JSON) -> str:
        return str(address.get("use") or "")

    addresses = [
        a for a in patient.get("address", []) if address_use(a) not in changes.remove_address_uses
    ]
    _set_list(patient, "address", _replace_slices(addresses, changes.addresses, address_use))

    def telecom_slot(contact_point: JSON) -> tuple[str, str]:
        return (str(contact_point.get("system") or ""), str(contact_point.get("use") or ""))

    telecom = [
        t
        for t in patient.get("telecom", [])
        if str(t.get("use") or "") not in changes.remove_telecom_uses
    ]
    _set_list(patient, "telecom", _replace_slices(telecom, changes.telecom, telecom_slot))

    meta = patient.setdefault("meta", {})
    tags = list(meta.get("tag", []))
    if not any(_same_coding(tag, changes.tag) for tag in tags):
        meta["tag"] = [*tags, dict(changes.tag)]
    _validate(patient)
    return patient


def _merge_deceased(patient: JSON, changes: PatientChanges) -> None:
    # Patient.deceased[x] is a choice: exactly one of the two elements may be present.
    if changes.remove_deceased:
        patient.pop("deceasedBoolean", None)
        patient.pop("deceasedDateTime", None)
    elif changes.deceased_date and changes.deceased is not False:
        patient.pop("deceasedBoolean", None)
        patient["deceasedDateTime"] = changes.deceased_date
    elif changes.deceased is True:
        # A date another source recorded says more than "yes": it stays.
        if "deceasedDateTime" not in patient:
            patient["deceasedBoolean"] = True
    elif changes.deceased is False:
        patient.pop("deceasedDateTime", None)
        patient["deceasedBoolean"] = False


def _same_identifier(a: JSON, b: JSON) -> bool:
    return a.get("system") == b.get("system") and a.get("value") == b.get("value")


def _same_coding(a: JSON, b: JSON) -> bool:
    return a.get("system") == b.get("system") and a.get("code") == b.get("code")


def _replace_slices(
    current: Sequence[JSON], incoming: Sequence[JSON], key: Callable[[JSON], Hashable]
) -> list[JSON]:
    """``current`` with every slice (entries of one key) the message sends replaced by the
    message's entries of that key, in the place of the slice's first entry; slices the
    message does not send are kept as they are."""
    sent: dict[Hashable, list[JSON]] = {}
    for item in incoming:
        sent.setdefault(key(item), []).append(item)
    merged: list[JSON] = []
    placed: set[Hashable] = set()
    for item in current:
        slot = key(item)
        if slot not in sent:
            merged.append(item)
        elif slot not in placed:
            merged.extend(copy.deepcopy(sent[slot]))
            placed.add(slot)
    for slot, items in sent.items():
        if slot not in placed:
            merged.extend(copy.deepcopy(items))
    return merged


def _set_list(resource: JSON, element: str, values: list[JSON]) -> None:
    # FHIR has no empty arrays: an element without entries is absent.
    if values:
        resource[element] = values
    else:
        resource.pop(element, None)


def _validate(patient: JSON) -> None:
    # The compiled R4B check the lab path uses: a tenth of fhir.resources' model build, and
    # a lab result may create a Patient on the per-message path.
    try:
        validate_resource(patient)
    except FhirInvalid as err:
        # Element paths only: a validator's message may quote the input (PHI).
        paths = sorted({".".join(str(p) for p in error["loc"][1:]) for error in err.errors})
        raise PatientInvalid(f"not a valid R4 Patient at {', '.join(paths)}") from None
