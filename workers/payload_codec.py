"""Every payload Careweave hands to Temporal is encrypted before it leaves the process.

Workflow inputs, signals, updates, query answers, activity arguments and results,
memos, activity summaries, and (through the failure converter's encoded attributes)
failure messages and stack traces all pass through this codec, so Temporal's
database and its UI hold only ciphertext. The UI reads them through Careweave's
authenticated codec endpoint. Search attributes are not payloads the codec sees:
they carry pseudonymous keys and codes only (see workflows/search_attributes.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from adapters.payload_crypto import (
    Ciphertext,
    KeyRing,
    PayloadKeyError,
    add_key,
    parse_key_ring,
    read_key_file,
)
from models.settings import Settings

log = logging.getLogger("careweave.codec")

ENCODING = b"binary/encrypted"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
# Bound into each ciphertext so a payload cannot be passed off as a sealed table column.
_CONTEXT = b"temporal-payload"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over the serialized payload; the key id rides in the metadata."""

    def __init__(self, key_ring: KeyRing) -> None:
        self.key_ring = key_ring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        encoded = []
        for payload in payloads:
            ciphertext = self.key_ring.encrypt(payload.SerializeToString(), context=_CONTEXT)
            encoded.append(
                Payload(
                    metadata={
                        METADATA_ENCODING: ENCODING,
                        METADATA_KEY_ID: ciphertext.key_id.encode(),
                    },
                    data=ciphertext.data,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            # Payloads written before encryption was turned on stay readable as they are.
            if payload.metadata.get(METADATA_ENCODING) != ENCODING:
                decoded.append(payload)
                continue
            key_id = payload.metadata.get(METADATA_KEY_ID, b"").decode()
            plaintext = self.key_ring.decrypt(Ciphertext(key_id, payload.data), context=_CONTEXT)
            decoded.append(Payload.FromString(plaintext))
        return decoded


def plain_data_converter() -> DataConverter:
    """Careweave's converter without the codec: pydantic models, failure text in encoded
    attributes. Replaying histories whose payloads were decoded when recorded needs exactly
    this (tests/replay); everything that talks to Temporal uses the encrypted one."""
    return dataclasses.replace(
        pydantic_data_converter,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def encrypted_data_converter(key_ring: KeyRing) -> DataConverter:
    """Careweave's converter: pydantic models, encrypted payloads, encoded failure text."""
    return dataclasses.replace(plain_data_converter(), payload_codec=EncryptionCodec(key_ring))


def payload_key_file(settings: Settings) -> Path:
    return settings.payload_keys_file or settings.state_dir / "payload.keys"


def load_payload_keys(settings: Settings, *, create_if_new_state: bool = False) -> KeyRing:
    """The key ring from the env var named in settings, else the key file.

    `create_if_new_state` is for the embedded stack only: a state folder without a
    Temporal database yet gets a fresh key file. Anywhere else a missing key is an
    error, never a silent switch to plaintext.
    """
    from_env = os.environ.get(settings.payload_keys_env) if settings.payload_keys_env else None
    if from_env:
        return parse_key_ring(from_env, source=f"environment variable {settings.payload_keys_env}")
    path = payload_key_file(settings)
    if not path.exists():
        history = settings.state_dir / "temporal.db"
        if create_if_new_state and not history.exists():
            key_id = add_key(path)
            log.info("created payload key %s in %s", key_id, path)
        else:
            raise PayloadKeyError(
                f"no payload encryption key: {path} does not exist and "
                f"{settings.payload_keys_env} is not set. "
                + (
                    f"{history} holds histories encrypted with the missing key."
                    if history.exists()
                    else "Create one with `careweave keys new`."
                )
            )
    if path.stat().st_mode & 0o077:
        log.warning("payload key file %s is readable by other users; chmod 600 it", path)
    return read_key_file(path)
