"""Keep a write that arrives late from overwriting a newer one.

A FHIR server may still hold a request its client gave up on (a timeout while the server
was stalled or busy) and apply it later, after the retry that succeeded and after the
writes that followed it: a lab result's first attempt landing after its correction puts
the final values back over the corrected ones. Seen in the soak (bench/soak.py) when the
FHIR server was frozen and its backlog drained.

A transaction is therefore fenced on one resource it writes (a report: the thing later
messages change), as read just before it is sent:

- the resource exists: its entry becomes a version-aware update (``PUT Type/id`` with
  ``If-Match`` on the version read). A late copy meets a newer version, gets 412, and the
  transaction, atomic, writes nothing.
- it does not exist yet: every conditional update of the transaction becomes a conditional
  create (``POST`` with ``ifNoneExist``). A late copy finds everything already created and
  changes nothing; two copies racing create once.

Servers that skip an update which changes nothing (HAPI, Medplum's own) keep the version
then: two corrections whose reports are alike but whose Observations differ would leave
the report at one version, and a late copy of the first would pass ``If-Match`` and put
its Observations back. The fenced resource therefore carries a digest of the whole
transaction (``WRITE_DIGEST_EXTENSION``): any write that changes any entry changes the
fenced resource, and so its version.

A write fenced on nothing is done only if the server created the fenced resource (201).
If it answers 200, another writer created it between the read and the write (a late copy
of an earlier message), the write's conditional creates found it and wrote nothing: the
write is raced, read again and fenced on what it finds, not taken as done (a cancel or a
discharge would be lost).

A writer that expects the fenced resource not to exist yet (a new order) may skip the read:
it sends the write as fenced on nothing, and the same answer says whether the guess held
(201) or the resource was there (200: the write fenced on a read follows). Only a bundle
whose one conditional PUT is the fenced resource may be presumed new (``presumable``): a
wrong guess, or a late copy of it, then writes nothing the write fenced on a read would not.
A lab result's bundle has Observations beside its report, which a wrong guess would create
unfenced after a correction, so it is always read first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
# On the fenced resource: the sha256 of the transaction that wrote it last (no PHI: a
# digest), so that its version moves whenever anything the transaction writes does.
WRITE_DIGEST_EXTENSION = "https://careweave.org/fhir/StructureDefinition/write-digest"


@dataclass(frozen=True)
class CurrentVersion:
    """The fence resource as the server held it when read."""

    resource_id: str
    version_id: str


def fence_target(bundle: JSON, resource_type: str) -> tuple[str, JSON]:
    """The request url and first identifier of ``bundle``'s one conditional PUT of
    ``resource_type``: what to read before the write and to fence it on."""
    found = [
        entry
        for entry in bundle.get("entry", [])
        if entry["request"]["method"] == "PUT"
        and entry["request"]["url"].startswith(f"{resource_type}?")
    ]
    if len(found) != 1:
        raise ValueError(f"the transaction has {len(found)} conditional PUTs of {resource_type}")
    identifier: JSON = found[0]["resource"]["identifier"][0]
    return found[0]["request"]["url"], identifier


def presumable(bundle: JSON, fence_url: str) -> bool:
    """Whether ``bundle`` may be sent presumed new (fenced on nothing, without a read): only
    when its one conditional PUT is the fenced resource. Then, should the resource be there
    after all, the write (or a late copy of it) changes nothing that the write fenced on a
    read would not also write; with other conditional PUTs it would create or update them
    unfenced."""
    return all(
        entry["request"]["url"] == fence_url
        for entry in bundle.get("entry", [])
        if entry["request"]["method"] == "PUT" and "?" in entry["request"]["url"]
    )


def fence_status(bundle: JSON, fence_url: str, response: JSON) -> str | None:
    """The HTTP status (``"201"``, ``"200"``...) ``response`` (a transaction-response)
    gives the entry of ``bundle`` written to ``fence_url``; None when it says none."""
    position = next(
        index
        for index, entry in enumerate(bundle.get("entry", []))
        if entry["request"]["url"] == fence_url
    )
    entries = response.get("entry") or []
    if position >= len(entries):
        return None
    # "201 Created", "201" (both seen): the code is what counts.
    status = str((entries[position].get("response") or {}).get("status", "")).split(" ")[0]
    return status or None


def fenced(
    bundle: JSON,
    fence_url: str,
    current: CurrentVersion | None,
    *,
    owned: Collection[str] | None = None,
) -> JSON:
    """``bundle`` (a transaction of conditional PUTs) fenced on the entry whose request url
    is ``fence_url`` (``Type?identifier=...``), given what the server held (None: nothing).
    ``owned``: the resource types written with the fenced one, which a late copy must not
    change either (default: every conditional PUT); others keep their conditional PUT."""
    entries = bundle.get("entry", [])
    if not any(entry["request"]["url"] == fence_url for entry in entries):
        raise ValueError(f"the transaction writes no {fence_url.split('?')[0]} to fence on")
    digest = hashlib.sha256(
        json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return {
        **bundle,
        "entry": [_fenced_entry(entry, fence_url, current, owned, digest) for entry in entries],
    }


def _fenced_entry(
    entry: JSON,
    fence_url: str,
    current: CurrentVersion | None,
    owned: Collection[str] | None,
    digest: str,
) -> JSON:
    request = entry["request"]
    if request["method"] != "PUT" or "?" not in request["url"]:
        return entry
    if current is None:
        resource_type, _, query = request["url"].partition("?")
        if owned is not None and resource_type not in owned and request["url"] != fence_url:
            return entry
        return {**entry, "request": {"method": "POST", "url": resource_type, "ifNoneExist": query}}
    if request["url"] != fence_url:
        return entry
    resource_type = request["url"].partition("?")[0]
    extensions = [
        extension
        for extension in entry["resource"].get("extension", [])
        if extension.get("url") != WRITE_DIGEST_EXTENSION
    ]
    extensions.append({"url": WRITE_DIGEST_EXTENSION, "valueString": digest})
    resource = {**entry["resource"], "id": current.resource_id, "extension": extensions}
    return {
        **entry,
        "resource": resource,
        "request": {
            "method": "PUT",
            "url": f"{resource_type}/{current.resource_id}",
            "ifMatch": f'W/"{current.version_id}"',
        },
    }
