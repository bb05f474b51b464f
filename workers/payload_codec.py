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
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Self

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    EncodingPayloadConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
)
from temporalio.exceptions import ApplicationError

from adapters.payload_crypto import (
    Ciphertext,
    KeyRing,
    PayloadDecryptError,
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


REFUSED_ENCODING = b"binary/careweave-refused"
METADATA_REFUSED_REASON = "careweave-refused-reason"
PAYLOAD_REFUSED = "PayloadRefused"

# Told each payload the codec refuses: the workflow id it was addressed to (when the SDK
# gives it), a digest of the payload (never its content) and why it was refused.
RefusalReporter = Callable[[str | None, str, str], Awaitable[None]]


class EncryptionCodec(PayloadCodec, WithSerializationContext):
    """AES-256-GCM over the serialized payload; the key id rides in the metadata.

    Decoding is strict: a payload that is not encrypted (unless ``accept_unencrypted``, for
    histories written before encryption existed), or that does not authenticate under the
    key its id names, is not raised on here but replaced by a refused marker without its
    data, logged, and reported to ``report_refusal`` (the worker audits it). The SDK
    decodes a whole workflow activation through this codec, so raising would fail the
    workflow task of a legitimate exchange at every replay once a forged signal is in its
    history; the marker instead fails only where the payload is turned into a value
    (RefusedPayloadConverter): the SDK drops a signal whose argument fails, rejects such an
    update before it enters the history, and fails a workflow whose input is refused. A
    ciphertext naming a key id the ring lacks still raises: that is a key missing from the
    key file, and the task is retried until it is back rather than turning legitimate data
    into refusals.
    """

    def __init__(
        self,
        key_ring: KeyRing,
        *,
        accept_unencrypted: bool = False,
        report_refusal: RefusalReporter | None = None,
        workflow_id: str | None = None,
        display: bool = False,
    ) -> None:
        self.key_ring = key_ring
        self.accept_unencrypted = accept_unencrypted or display
        self.report_refusal = report_refusal
        self.workflow_id = workflow_id
        # Shown to a person, not turned into values: a ciphertext that does not authenticate
        # is an error for them to see rather than a marker.
        self.display = display

    def for_display(self) -> EncryptionCodec:
        """The same keys, showing plaintext payloads as they are: for the UI's codec endpoint
        (an operator must see a forged payload) and for decoding whole histories, whose
        search attributes are plaintext by design."""
        return EncryptionCodec(self.key_ring, display=True)

    def reporting_refusals(self, report_refusal: RefusalReporter) -> EncryptionCodec:
        return EncryptionCodec(
            self.key_ring,
            accept_unencrypted=self.accept_unencrypted,
            report_refusal=report_refusal,
        )

    def with_context(self, context: SerializationContext) -> Self:
        # The SDK hands each workflow's and activity's payloads over with its workflow id.
        workflow_id = getattr(context, "workflow_id", None)
        return type(self)(
            self.key_ring,
            accept_unencrypted=self.accept_unencrypted,
            report_refusal=self.report_refusal,
            workflow_id=workflow_id if isinstance(workflow_id, str) else None,
            display=self.display,
        )

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
        return [await self._decode_one(payload) for payload in payloads]

    async def _decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get(METADATA_ENCODING) != ENCODING:
            if self.accept_unencrypted:
                return payload
            return await self._refuse(payload, "not encrypted with Careweave's payload key")
        key_id = payload.metadata.get(METADATA_KEY_ID, b"").decode(errors="replace")
        try:
            plaintext = self.key_ring.decrypt(Ciphertext(key_id, payload.data), context=_CONTEXT)
        except PayloadDecryptError:
            if self.display:
                raise
            return await self._refuse(payload, "does not authenticate under Careweave's key")
        return Payload.FromString(plaintext)

    async def _refuse(self, payload: Payload, why: str) -> Payload:
        digest = hashlib.sha256(payload.SerializeToString()).hexdigest()[:16]
        # Never the payload's content: it is whatever whoever wrote it chose to send.
        log.warning(
            "refused a payload for workflow %s: %s (sha256 %s)",
            self.workflow_id or "-",
            why,
            digest,
        )
        if self.report_refusal is not None:
            await self.report_refusal(self.workflow_id, digest, why)
        return Payload(
            metadata={METADATA_ENCODING: REFUSED_ENCODING, METADATA_REFUSED_REASON: why.encode()}
        )


class RefusedPayloadConverter(EncodingPayloadConverter):
    """Turns the codec's refused marker into a PayloadRefused error where a value is read."""

    @property
    def encoding(self) -> str:
        return REFUSED_ENCODING.decode()

    def to_payload(self, value: Any) -> Payload | None:
        return None

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        why = payload.metadata.get(METADATA_REFUSED_REASON, b"refused").decode()
        raise ApplicationError(
            f"payload refused: {why}; only Careweave's processes may address an exchange",
            type=PAYLOAD_REFUSED,
            non_retryable=True,
        )


class CareweavePayloadConverter(PydanticPayloadConverter):
    """Pydantic models, plus the refused marker read as a PayloadRefused error."""

    def __init__(self) -> None:
        super().__init__()
        self.converters = {REFUSED_ENCODING: RefusedPayloadConverter(), **self.converters}


def display_codec(client: Client) -> PayloadCodec | None:
    """The codec the UI's decode endpoint uses: the client's keys, plaintext shown as it is
    (EncryptionCodec.for_display); None when the client encrypts nothing."""
    codec = client.data_converter.payload_codec
    return codec.for_display() if isinstance(codec, EncryptionCodec) else codec


def plain_data_converter() -> DataConverter:
    """Careweave's converter without the codec: pydantic models, failure text in encoded
    attributes. Replaying histories whose payloads were decoded when recorded needs exactly
    this (tests/replay); everything that talks to Temporal uses the encrypted one."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_converter_class=CareweavePayloadConverter,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def encrypted_data_converter(
    key_ring: KeyRing, *, accept_unencrypted: bool = False
) -> DataConverter:
    """Careweave's converter: pydantic models, encrypted payloads (strict unless
    ``accept_unencrypted``, see EncryptionCodec), encoded failure text."""
    return dataclasses.replace(
        plain_data_converter(),
        payload_codec=EncryptionCodec(key_ring, accept_unencrypted=accept_unencrypted),
    )


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
