"""The key ring, the sealed columns and the Temporal payload codec, without a server."""

from __future__ import annotations

import base64
import concurrent.futures
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import WorkflowSerializationContext
from temporalio.exceptions import ApplicationError

from adapters.database import CareweaveStore
from adapters.payload_crypto import (
    KeyRing,
    PayloadDecryptError,
    PayloadKeyError,
    add_key,
    new_key_line,
    parse_key_ring,
    read_key_file,
)
from models.records import QuarantinedMessage
from models.settings import Settings
from tests.support.database_dump import stored_bytes
from workers.payload_codec import (
    ENCODING,
    METADATA_KEY_ID,
    PAYLOAD_REFUSED,
    REFUSED_ENCODING,
    EncryptionCodec,
    encrypted_data_converter,
    load_payload_keys,
)

MESSAGE = b"MSH|^~\\&|LAB|GENHOSP|||20261125||ORU^R01|1|P|2.5.1\rPID|1||MRN100234||Testpatient^Alma"


def ring(*lines: str) -> KeyRing:
    return parse_key_ring("\n".join(lines), source="test")


def test_round_trip_and_the_last_key_encrypts() -> None:
    keys = ring(new_key_line("old"), new_key_line("new"))
    encrypted = keys.encrypt(MESSAGE, context=b"c")
    assert encrypted.key_id == "new"
    assert MESSAGE not in encrypted.data
    assert keys.decrypt(encrypted, context=b"c") == MESSAGE


def test_rotation_keeps_what_the_old_key_wrote_readable() -> None:
    old_line = new_key_line("k1")
    before = ring(old_line)
    written_before = before.encrypt(MESSAGE, context=b"c")
    after = ring(old_line, new_key_line("k2"))
    assert after.decrypt(written_before, context=b"c") == MESSAGE
    assert after.encrypt(MESSAGE, context=b"c").key_id == "k2"


def test_a_key_with_the_right_id_but_other_bytes_is_refused() -> None:
    written = ring(new_key_line("k1")).encrypt(MESSAGE, context=b"c")
    with pytest.raises(PayloadDecryptError, match="k1"):
        ring(new_key_line("k1")).decrypt(written, context=b"c")


def test_a_missing_key_id_names_the_key() -> None:
    written = ring(new_key_line("k1")).encrypt(MESSAGE, context=b"c")
    with pytest.raises(PayloadKeyError, match=r"'k1'.*not in the key ring"):
        ring(new_key_line("k2")).decrypt(written, context=b"c")


def test_context_and_key_id_are_bound_to_the_ciphertext() -> None:
    keys = ring(new_key_line("a"), new_key_line("b"))
    written = keys.encrypt(MESSAGE, context=b"payload")
    with pytest.raises(PayloadDecryptError):
        keys.decrypt(written, context=b"column")
    relabelled = type(written)("a", written.data)
    with pytest.raises(PayloadDecryptError):
        keys.decrypt(relabelled, context=b"payload")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no keys"),
        ("k1", "line 1: expected"),
        ("# comment\nk1 not-base64!", "line 2: key is not valid base64"),
        (f"k1 {base64.b64encode(b'short').decode()}", "5 bytes, AES-256 needs 32"),
        (f"{new_key_line('k1')}\n{new_key_line('k1')}", "appears twice"),
        (f"bad/id {base64.b64encode(bytes(32)).decode()}", "key id must be"),
    ],
)
def test_bad_key_text_names_the_line(text: str, error: str) -> None:
    with pytest.raises(PayloadKeyError, match=error):
        parse_key_ring(text, source="keys.txt")


def test_env_style_semicolons_and_comments() -> None:
    keys = parse_key_ring(f"{new_key_line('a')};{new_key_line('b')} # newest", source="env")
    assert keys.key_ids == ["a", "b"]
    assert keys.current_key_id == "b"


def test_add_key_creates_a_private_file_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "payload.keys"
    add_key(path, "k1")
    assert path.stat().st_mode & 0o777 == 0o600
    add_key(path, "k2")
    keys = read_key_file(path)
    assert keys.key_ids == ["k1", "k2"]
    assert keys.current_key_id == "k2"
    with pytest.raises(PayloadKeyError, match="already exists"):
        add_key(path, "k2")


def test_missing_key_file_is_an_error_unless_the_state_is_new(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, payload_keys_env="CAREWEAVE_TEST_NO_SUCH_VAR")
    with pytest.raises(PayloadKeyError, match="careweave keys new"):
        load_payload_keys(settings)
    created = load_payload_keys(settings, create_if_new_state=True)
    assert (tmp_path / "payload.keys").exists()
    assert load_payload_keys(settings).key_ids == created.key_ids


def test_existing_history_without_its_key_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "temporal.db").write_bytes(b"")
    settings = Settings(state_dir=tmp_path, payload_keys_env="CAREWEAVE_TEST_NO_SUCH_VAR")
    with pytest.raises(PayloadKeyError, match="histories encrypted with the missing key"):
        load_payload_keys(settings, create_if_new_state=True)


def test_keys_from_the_env_var_named_in_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREWEAVE_TEST_KEYS", new_key_line("from-env"))
    settings = Settings(payload_keys_env="CAREWEAVE_TEST_KEYS")
    assert load_payload_keys(settings).key_ids == ["from-env"]


async def test_codec_encrypts_every_payload_and_records_the_key_id() -> None:
    codec = EncryptionCodec(ring(new_key_line("k1")))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"mrn":"MRN100234"}')
    [encoded] = await codec.encode([plain])
    assert encoded.metadata["encoding"] == ENCODING
    assert encoded.metadata[METADATA_KEY_ID] == b"k1"
    assert b"MRN100234" not in encoded.SerializeToString()
    assert await codec.decode([encoded]) == [plain]


async def test_strict_codec_turns_foreign_payloads_into_refusals_without_their_data() -> None:
    keys = ring(new_key_line("k1"))
    refused: list[tuple[str | None, str, str]] = []

    async def report(workflow_id: str | None, digest: str, why: str) -> None:
        refused.append((workflow_id, digest, why))

    codec = EncryptionCodec(keys).reporting_refusals(report)
    for_workflow = codec.with_context(WorkflowSerializationContext("default", "exchange/1"))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"reviewer":"mallory"}')
    [encoded] = await codec.encode([plain])
    tampered = Payload()
    tampered.CopyFrom(encoded)
    tampered.data = encoded.data[:-1] + bytes([encoded.data[-1] ^ 1])

    decoded = await for_workflow.decode([plain, encoded, tampered])
    assert decoded[1] == plain
    for marker in (decoded[0], decoded[2]):
        assert marker.metadata["encoding"] == REFUSED_ENCODING
        assert marker.data == b""
    assert [(wid, why) for wid, _, why in refused] == [
        ("exchange/1", "not encrypted with Careweave's payload key"),
        ("exchange/1", "does not authenticate under Careweave's key"),
    ]
    # Where the marker becomes a value, the refusal is an error that names no content.
    converter = encrypted_data_converter(keys).payload_converter
    with pytest.raises(ApplicationError, match="payload refused: not encrypted") as error:
        converter.from_payloads([decoded[0]], [dict])
    assert error.value.type == PAYLOAD_REFUSED and error.value.non_retryable
    assert "mallory" not in str(error.value)

    # A key id the ring lacks is a missing key, not a forgery: an error, retried until fixed.
    unknown = Payload(metadata={"encoding": ENCODING, METADATA_KEY_ID: b"gone"}, data=b"x" * 40)
    with pytest.raises(PayloadKeyError):
        await codec.decode([unknown])


async def test_display_and_legacy_codecs_pass_plaintext_through() -> None:
    keys = ring(new_key_line("k1"))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"mrn":"MRN100234"}')
    # The UI's endpoint shows what is there, forged or from before encryption was on.
    assert await EncryptionCodec(keys).for_display().decode([plain]) == [plain]
    # Histories written before encryption existed (settings.payload_accept_unencrypted).
    assert await EncryptionCodec(keys, accept_unencrypted=True).decode([plain]) == [plain]


def test_quarantined_raw_bytes_are_sealed_at_rest(database_url: str) -> None:
    keys = ring(new_key_line("k1"))
    store = CareweaveStore.from_url(database_url, keys)
    message_id = store.quarantine(
        QuarantinedMessage(
            received_at=datetime.now(UTC),
            peer="127.0.0.1",
            ack_code="AR",
            error_code="100",
            reason="test",
            raw=MESSAGE,
        )
    )
    stored = store.quarantined_message(message_id)
    assert stored is not None and stored.raw == MESSAGE
    assert [row.raw for row in store.quarantined()] == [MESSAGE]
    on_disk = stored_bytes(store.engine)
    assert b"AR" in on_disk  # the dump sees what is kept in clear
    assert b"Testpatient" not in on_disk and b"MRN100234" not in on_disk


def test_store_refuses_a_wrong_key_and_a_dropped_key(database_url: str) -> None:
    url = database_url
    first = new_key_line("k1")
    assert CareweaveStore.from_url(url, ring(first)).verify_payload_keys() == ["k1"]
    assert CareweaveStore.from_url(url, ring(first)).verify_payload_keys() == []
    with pytest.raises(PayloadKeyError, match="not the key that id had"):
        CareweaveStore.from_url(url, ring(new_key_line("k1"))).verify_payload_keys()
    with pytest.raises(PayloadKeyError, match="'k1' was used before"):
        CareweaveStore.from_url(url, ring(new_key_line("k2"))).verify_payload_keys()
    assert CareweaveStore.from_url(url, ring(first, new_key_line("k2"))).verify_payload_keys() == [
        "k2"
    ]


def test_processes_starting_together_record_a_new_key_once(database_url: str) -> None:
    """A gateway and a worker started at once on a fresh database both see the key id as
    new; the one that loses the insert checks its key against the winner's instead of
    failing to start (bench/e2e.py's worker died of this: UNIQUE constraint failed)."""
    line = new_key_line("k1")
    stores = [CareweaveStore.from_url(database_url, ring(line)) for _ in range(6)]
    start = threading.Barrier(len(stores))

    def verify(store: CareweaveStore) -> list[str]:
        start.wait()
        return store.verify_payload_keys()

    with concurrent.futures.ThreadPoolExecutor(len(stores)) as pool:
        added = list(pool.map(verify, stores))
    assert sorted(added) == [[]] * (len(stores) - 1) + [["k1"]]

    with pytest.raises(PayloadKeyError, match="not the key that id had"):
        CareweaveStore.from_url(database_url, ring(new_key_line("k1"))).verify_payload_keys()


async def test_failure_message_and_stack_trace_are_encrypted() -> None:
    from temporalio.api.failure.v1 import Failure
    from temporalio.exceptions import ApplicationError

    converter = encrypted_data_converter(ring(new_key_line("k1")))
    failure = Failure()
    try:
        raise ApplicationError("FHIR rejected Patient Testpatient", type="DestinationRejected")
    except ApplicationError as err:
        await converter.encode_failure(err, failure)
    assert failure.message == "Encoded failure"
    assert failure.stack_trace == ""
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    assert b"Testpatient" not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert "Testpatient" in str(decoded)
