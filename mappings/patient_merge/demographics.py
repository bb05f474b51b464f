"""Pure: the two sides a merge is scored on, as the match score reads them.

The survivor is what the merge message's PID says (the sender's registration, now); the
retired record is what the FHIR server holds for it (the message carries only MRG-7, a
prior name). Values are PHI: they live only in activity results and workflow state,
which the payload codec encrypts, and on the reviewer's page.
"""

from __future__ import annotations

from typing import Any

from models.demographics import PersonDemographics
from models.patient_match import Demographics

__all__ = ["demographics_of_patient", "demographics_of_person"]

JSON = dict[str, Any]
_FHIR_GENDER = {"female": "F", "male": "M", "other": "O", "unknown": "U"}


def demographics_of_person(person: PersonDemographics) -> Demographics:
    """A PID as the match score compares it: the first name (the legal one, v2.4+), the
    first address and the first home number."""
    name = person.names[0] if person.names else None
    address = person.addresses[0] if person.addresses else None
    phone = next((c.number for c in person.home_contacts if c.number), "")
    return Demographics(
        family=name.family if name else "",
        given=name.given if name else (),
        birth_date=person.birth_date,
        sex=person.sex,
        address_line=address.lines[0] if address and address.lines else "",
        city=address.city if address else "",
        postal_code=address.postal_code if address else "",
        phone=phone,
    )


def demographics_of_patient(patient: JSON) -> Demographics:
    """A FHIR R4 Patient as the match score compares it: its official name (else the
    first), its home address (else the first), its first phone."""
    names: list[JSON] = patient.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    addresses: list[JSON] = patient.get("address") or []
    address = next(
        (a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else {}
    )
    phones = [t for t in patient.get("telecom") or [] if t.get("system") == "phone"]
    return Demographics(
        family=str(name.get("family") or ""),
        given=tuple(str(g) for g in name.get("given") or ()),
        birth_date=str(patient.get("birthDate") or ""),
        sex=_FHIR_GENDER.get(str(patient.get("gender") or ""), ""),
        address_line=str((address.get("line") or [""])[0]),
        city=str(address.get("city") or ""),
        postal_code=str(address.get("postalCode") or ""),
        phone=str(phones[0].get("value") or "") if phones else "",
    )
