"""Patient merge on FHIR R4 JSON, with R5 $merge semantics, and its exact undo. Pure.

- ``merge_patients``: source (retired) -> active=false, link replaced-by -> target; target
  (survivor) -> link replaces -> source, the source's identifiers added with use=old.
- ``repoint_references``: every literal reference to Patient/<source> inside a resource
  -> Patient/<target>, with the JSON Pointers (RFC 6901) of what changed.
- ``merge_provenance``: the Provenance of the writes (versioned targets, the previous
  versions as entities with role revision, activity merge, agent Careweave's Device),
  carrying in extensions what an undo needs; ``read_merge_provenance`` reads it back.
- ``restore_references`` and ``unmerge_patients``: the undo, from that record alone.

Idempotent: merging or re-pointing a second time changes nothing, so a retried or
replayed step writes nothing new. See README.md for each decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from mappings.patient_merge.mapping import MergeMapping

__all__ = [
    "MergeRecord",
    "MergedPatients",
    "RepointedWrite",
    "WrittenVersion",
    "merge_patients",
    "merge_provenance",
    "read_merge_provenance",
    "repoint_references",
    "restore_references",
    "unmerge_patients",
    "value_at",
]

JSON = dict[str, Any]
# A literal reference to a Patient: relative ("Patient/123") or absolute (a base URL before
# it). A versioned reference (".../_history/N") does not match: it names one version on
# purpose (a document, a signature), and re-pointing it would rewrite what was attested.
_PATIENT_REFERENCE = re.compile(r"(?P<base>(?:.*/)?)Patient/(?P<id>[A-Za-z0-9\-.]{1,64})")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MergedPatients(_Frozen):
    """The two Patients after the merge, and the facts an undo needs about them."""

    source: JSON
    target: JSON
    # Patient.active of the source before the merge; None when it had none.
    source_previous_active: bool | None
    # The identifiers added to the target, exactly as added.
    added_identifiers: tuple[JSON, ...]


class WrittenVersion(_Frozen):
    """One write the FHIR server answered: the resource, its new and its previous version."""

    resource_type: str
    id: str
    version_id: str
    previous_version_id: str | None = None

    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"


class RepointedWrite(_Frozen):
    """A resource re-pointed and written, and the JSON Pointers that were changed."""

    written: WrittenVersion
    paths: tuple[str, ...]


class MergeRecord(_Frozen):
    """What one merge Provenance recorded: everything its undo needs."""

    source_id: str
    target_id: str
    source: WrittenVersion | None = None  # the source Patient's write, when recorded here
    target: WrittenVersion | None = None
    source_previous_active: bool | None = None
    added_identifiers: tuple[JSON, ...] = ()
    repointed: tuple[RepointedWrite, ...] = ()


# --- the two Patients ---------------------------------------------------------------------


def merge_patients(source: JSON, target: JSON, mapping: MergeMapping) -> MergedPatients:
    """R5 $merge's result on the two Patients (R4 JSON). Inputs are not modified.

    Raises ValueError when either is not a Patient with an id, or both are one record.
    """
    source_id, target_id = _patient_id(source, "source"), _patient_id(target, "target")
    if source_id == target_id:
        raise ValueError("source and target are the same Patient")
    new_source = {**source, "active": False}
    new_source["link"] = _with_link(source, target_id, mapping.source_link_type)
    new_target = dict(target)
    new_target["link"] = _with_link(target, source_id, mapping.target_link_type)
    present = {_identity(i) for i in target.get("identifier") or []}
    added = []
    for identifier in source.get("identifier") or []:
        if _identity(identifier) in present:
            continue
        present.add(_identity(identifier))
        added.append({**identifier, "use": mapping.copied_identifier_use})
    if added:
        new_target["identifier"] = [*(target.get("identifier") or []), *added]
    previous = source.get("active")
    return MergedPatients(
        source=new_source,
        target=new_target,
        source_previous_active=previous if isinstance(previous, bool) else None,
        added_identifiers=tuple(added),
    )


def unmerge_patients(
    source: JSON, target: JSON, record: MergeRecord, mapping: MergeMapping
) -> tuple[JSON, JSON]:
    """The two Patients as they were before the merge, as far as the merge changed them:
    the links it added are removed, the source's active restored, the identifiers it added
    to the target removed. Whatever else was written since is kept."""
    if (_patient_id(source, "source"), _patient_id(target, "target")) != (
        record.source_id,
        record.target_id,
    ):
        raise ValueError("the Patients are not the ones this merge record names")
    new_source = _without_link(source, record.target_id, mapping.source_link_type)
    if record.source_previous_active is None:
        new_source.pop("active", None)
    else:
        new_source["active"] = record.source_previous_active
    new_target = _without_link(target, record.source_id, mapping.target_link_type)
    added = list(record.added_identifiers)
    kept = []
    for identifier in target.get("identifier") or []:
        if identifier in added:
            added.remove(identifier)
        else:
            kept.append(identifier)
    if kept:
        new_target["identifier"] = kept
    else:
        new_target.pop("identifier", None)
    return new_source, new_target


def _patient_id(patient: JSON, role: str) -> str:
    if patient.get("resourceType") != "Patient" or not patient.get("id"):
        raise ValueError(f"the {role} is not a Patient with an id")
    return str(patient["id"])


def _identity(identifier: JSON) -> tuple[str, str]:
    return (str(identifier.get("system", "")), str(identifier.get("value", "")))


def _link(other_id: str, link_type: str) -> JSON:
    return {"other": {"reference": f"Patient/{other_id}"}, "type": link_type}


def _with_link(patient: JSON, other_id: str, link_type: str) -> list[JSON]:
    links = list(patient.get("link") or [])
    wanted = _link(other_id, link_type)
    return links if wanted in links else [*links, wanted]


def _without_link(patient: JSON, other_id: str, link_type: str) -> JSON:
    links = [link for link in patient.get("link") or [] if link != _link(other_id, link_type)]
    restored = dict(patient)
    if links:
        restored["link"] = links
    else:
        restored.pop("link", None)
    return restored


# --- references ---------------------------------------------------------------------------


def repoint_references(
    resource: JSON, source_id: str, target_id: str, mapping: MergeMapping
) -> tuple[JSON, tuple[str, ...]]:
    """``resource`` with every literal reference to Patient/<source_id> pointing at
    Patient/<target_id> (the base URL of an absolute reference kept), and the JSON Pointers
    changed, in document order. A resource that does not refer to the source, or of a type
    the mapping never re-points (Provenance, AuditEvent: history), comes back unchanged with
    no paths; the input is never modified."""
    if resource.get("resourceType") in mapping.never_repointed:
        return resource, ()
    if resource.get("resourceType") == "Patient" and resource.get("id") in (source_id, target_id):
        # The two merged records are written by merge_patients, never re-pointed.
        return resource, ()
    paths: list[str] = []
    changed = _walk(resource, "", source_id, target_id, paths)
    return (changed if paths else resource), tuple(paths)


def restore_references(
    resource: JSON, source_id: str, target_id: str, paths: Iterable[str]
) -> tuple[JSON, tuple[str, ...]]:
    """The inverse of ``repoint_references``: at each recorded path a reference that still
    points at Patient/<target_id> points at Patient/<source_id> again. Returns the resource
    and the paths that could not be restored (gone, or changed since the merge): the undo
    reports them for a person instead of guessing. The input is never modified."""
    restored: Any = resource
    refused: list[str] = []
    for path in paths:
        parts = _pointer_parts(path)
        current = _get(restored, parts)
        match = _PATIENT_REFERENCE.fullmatch(current) if isinstance(current, str) else None
        if match is None or match.group("id") != target_id or parts[-1:] != ["reference"]:
            refused.append(path)
            continue
        restored = _set(restored, parts, f"{match.group('base')}Patient/{source_id}")
    return restored, tuple(refused)


def _walk(node: Any, path: str, source_id: str, target_id: str, paths: list[str]) -> Any:
    """A copy of ``node`` re-pointed where needed (untouched branches are shared)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            child = f"{path}/{_escape(key)}"
            if key == "reference" and isinstance(value, str):
                match = _PATIENT_REFERENCE.fullmatch(value)
                if match and match.group("id") == source_id:
                    paths.append(child)
                    value = f"{match.group('base')}Patient/{target_id}"
                out[key] = value
            else:
                out[key] = _walk(value, child, source_id, target_id, paths)
        return out
    if isinstance(node, list):
        return [
            _walk(item, f"{path}/{i}", source_id, target_id, paths) for i, item in enumerate(node)
        ]
    return node


def value_at(resource: JSON, pointer: str) -> Any:
    """The value at a JSON Pointer (RFC 6901) of ``resource``; None when the path is gone."""
    return _get(resource, _pointer_parts(pointer))


def _escape(key: str) -> str:
    # RFC 6901: "~" and "/" in a member name.
    return key.replace("~", "~0").replace("/", "~1")


def _pointer_parts(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise ValueError("a JSON Pointer starts with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _get(node: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _set(node: Any, parts: Sequence[str], value: Any) -> Any:
    """A copy of ``node`` with ``value`` at ``parts`` (the path exists: checked by _get)."""
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        index = int(head)
        return [*node[:index], _set(node[index], rest, value), *node[index + 1 :]]
    return {**node, head: _set(node[head], rest, value)}


# --- the Provenance ----------------------------------------------------------------------


def merge_provenance(
    *,
    source_id: str,
    target_id: str,
    recorded: datetime,
    reason: str,
    mapping: MergeMapping,
    patients: tuple[WrittenVersion, WrittenVersion, MergedPatients] | None = None,
    repointed: Sequence[RepointedWrite] = (),
) -> JSON:
    """The Provenance of one merge step: the Patients' writes (``patients``: source write,
    target write, and what merge_patients did) and/or a page of re-pointed resources.

    Each write is a versioned target (``Type/id/_history/N``) whose previous version is an
    entity with role revision; the activity is ISO 21089 merge; the agent Careweave's
    Device. What an undo needs that Provenance has no element for (the JSON Pointers of
    each target, the source's previous active, the identifiers added) is carried in
    extensions on the target references, so the Provenance alone is enough to undo.
    ``recorded`` must carry a time zone (FHIR instant). Raises ValueError with no write.
    """
    ext = mapping.extensions
    targets: list[JSON] = []
    entities: list[JSON] = []

    def add(written: WrittenVersion, extensions: list[JSON]) -> None:
        target: JSON = {"reference": written.reference()}
        if extensions:
            target["extension"] = extensions
        targets.append(target)
        if written.previous_version_id:
            previous = (
                f"{written.resource_type}/{written.id}/_history/{written.previous_version_id}"
            )
            entities.append({"role": mapping.entity_role, "what": {"reference": previous}})

    if patients is not None:
        source_write, target_write, merged = patients
        source_facts: list[JSON] = [{"url": ext["merge_role"], "valueCode": "source"}]
        if merged.source_previous_active is not None:
            source_facts.append(
                {"url": ext["previous_active"], "valueBoolean": merged.source_previous_active}
            )
        add(source_write, source_facts)
        add(
            target_write,
            [
                {"url": ext["merge_role"], "valueCode": "target"},
                *(
                    {"url": ext["added_identifier"], "valueIdentifier": identifier}
                    for identifier in merged.added_identifiers
                ),
            ],
        )
    for page_entry in repointed:
        add(
            page_entry.written,
            [{"url": ext["repointed_path"], "valueString": path} for path in page_entry.paths],
        )
    if not targets:
        raise ValueError("a merge Provenance needs at least one write")
    if recorded.tzinfo is None:
        raise ValueError("recorded must carry a time zone (FHIR instant)")
    provenance: JSON = {
        "resourceType": "Provenance",
        "extension": [
            {"url": ext["merge_source"], "valueReference": {"reference": f"Patient/{source_id}"}},
            {"url": ext["merge_target"], "valueReference": {"reference": f"Patient/{target_id}"}},
        ],
        "target": targets,
        "recorded": recorded.isoformat(),
        "activity": {
            "coding": [
                {
                    "system": mapping.activity_system,
                    "code": mapping.activity_code,
                    "display": mapping.activity_display,
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": mapping.agent_type_system,
                            "code": mapping.agent_type_code,
                            "display": mapping.agent_type_display,
                        }
                    ]
                },
                "who": {"reference": mapping.agent},
            }
        ],
    }
    if reason:
        provenance["reason"] = [{"text": reason}]
    if entities:
        provenance["entity"] = entities
    return provenance


def read_merge_provenance(provenance: JSON, mapping: MergeMapping) -> MergeRecord:
    """What a merge Provenance (built by ``merge_provenance`` with this mapping version)
    recorded. Raises ValueError when it is not one."""
    ext = mapping.extensions
    if provenance.get("resourceType") != "Provenance":
        raise ValueError("not a Provenance")
    top = {e.get("url"): e for e in provenance.get("extension") or []}
    try:
        source_id = _patient_reference_id(top[ext["merge_source"]]["valueReference"])
        target_id = _patient_reference_id(top[ext["merge_target"]]["valueReference"])
    except (KeyError, TypeError):
        raise ValueError("not a merge Provenance: merge source/target extensions missing") from None
    source = target = None
    previous_active: bool | None = None
    added: list[JSON] = []
    repointed: list[RepointedWrite] = []
    previous_versions = {
        "/".join(str(e["what"]["reference"]).split("/")[:2]): str(e["what"]["reference"]).split(
            "/"
        )[-1]
        for e in provenance.get("entity") or []
        if e.get("role") == mapping.entity_role
    }
    for target_reference in provenance.get("target") or []:
        written = _written(str(target_reference.get("reference", "")), previous_versions)
        facts = target_reference.get("extension") or []
        role = next((f["valueCode"] for f in facts if f.get("url") == ext["merge_role"]), None)
        if role == "source":
            source = written
            previous_active = next(
                (f["valueBoolean"] for f in facts if f.get("url") == ext["previous_active"]),
                None,
            )
        elif role == "target":
            target = written
            added = [f["valueIdentifier"] for f in facts if f.get("url") == ext["added_identifier"]]
        else:
            paths = tuple(f["valueString"] for f in facts if f.get("url") == ext["repointed_path"])
            repointed.append(RepointedWrite(written=written, paths=paths))
    return MergeRecord(
        source_id=source_id,
        target_id=target_id,
        source=source,
        target=target,
        source_previous_active=previous_active,
        added_identifiers=tuple(added),
        repointed=tuple(repointed),
    )


def _patient_reference_id(reference: JSON) -> str:
    match = _PATIENT_REFERENCE.fullmatch(str(reference.get("reference", "")))
    if match is None:
        raise ValueError("not a Patient reference")
    return match.group("id")


def _written(reference: str, previous_versions: dict[str, str]) -> WrittenVersion:
    parts = reference.split("/")
    if len(parts) != 4 or parts[2] != "_history":
        raise ValueError("a merge Provenance target is a versioned reference Type/id/_history/N")
    resource_type, resource_id, _, version_id = parts
    return WrittenVersion(
        resource_type=resource_type,
        id=resource_id,
        version_id=version_id,
        previous_version_id=previous_versions.get(f"{resource_type}/{resource_id}"),
    )
