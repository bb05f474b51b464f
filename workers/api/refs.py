"""Opaque references to exchanges for URLs and pages.

A workflow id carries no names or MRNs, but older lab ids carry a placer order number,
and URLs end up in browser histories, proxies' logs and bookmarks: the pages name an
exchange only by its id encrypted under the payload key ring (AES-GCM, its own context).
"""

from __future__ import annotations

import base64
import binascii

from adapters.payload_crypto import Ciphertext, KeyRing, PayloadDecryptError, PayloadKeyError
from models.errors import RequestRefused

_CONTEXT = b"web-exchange-reference"


class UnknownReference(RequestRefused):
    """The reference was not made by this deployment's key ring (mistyped, or tampered)."""


class ExchangeRefs:
    def __init__(self, key_ring: KeyRing) -> None:
        self._key_ring = key_ring

    def ref(self, workflow_id: str) -> str:
        sealed = self._key_ring.encrypt(workflow_id.encode(), context=_CONTEXT)
        data = base64.urlsafe_b64encode(sealed.data).decode().rstrip("=")
        return f"{sealed.key_id}.{data}"

    def workflow_id(self, ref: str) -> str:
        key_id, _, data = ref.partition(".")
        try:
            raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
            return self._key_ring.decrypt(Ciphertext(key_id, raw), context=_CONTEXT).decode()
        except (binascii.Error, ValueError, PayloadDecryptError, PayloadKeyError) as err:
            raise UnknownReference("no such exchange reference") from err
