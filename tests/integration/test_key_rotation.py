"""Key rotation against the real dev server: an exchange written under the old key, a
key added, a new exchange written under the new key; the old history still decodes and
replays with the rotated key ring, and what Temporal stores is ciphertext either way.
"""

from __future__ import annotations

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.common import HeaderCodecBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from adapters.hl7v2.ack import parse_ack
from adapters.payload_crypto import PayloadKeyError, new_key_line, parse_key_ring
from exchanges.registry import REGISTRY
from tests.support.cli import careweave
from tests.support.engine import TEST_PAYLOAD_KEYS, Engine, mllp_send, running_engine
from tests.support.history import nested
from workers import sample_messages as sm
from workers.payload_codec import ENCODING, METADATA_KEY_ID, encrypted_data_converter

pytestmark = pytest.mark.integration


# Plain by design, and free of message content: search attributes (indexed by the server;
# codes and pseudonymous keys only) and the SDK's own local-activity marker bookkeeping
# (sequence number, activity type, timings) and patch markers (the patch's name, written by
# the SDK's core, which has no codec). Everything else must be encrypted.
_PLAIN_FIELDS = frozenset({"search_attributes"})
_PLAIN_PATHS = (
    ".marker_recorded_event_attributes.details[data].payloads",
    ".marker_recorded_event_attributes.details[patch-data].payloads",
)


def _key_ids(history: WorkflowHistory) -> set[str]:
    ids = set()
    for event in history.events:
        for path, payload in nested(event, Payload, skip_fields=_PLAIN_FIELDS):
            if path.endswith(_PLAIN_PATHS):
                continue
            assert payload.metadata.get("encoding") == ENCODING, (event.event_type, path)
            ids.add(payload.metadata[METADATA_KEY_ID].decode())
    return ids


async def _order(engine: Engine, placer: str) -> str:
    order = sm.SampleOrder(placer)
    [ack] = await mllp_send(engine.mllp_port, [sm.lab_order(order, f"{placer}-O")])
    assert parse_ack(ack)[0] == "AA"
    workflow_id = engine.lab_workflow_id(placer)
    await engine.wait_for_status(workflow_id, "ordered")
    return workflow_id


async def test_old_histories_decode_and_replay_after_a_key_is_added(
    engine: Engine, temporal_client: Client, fhir_base_url: str
) -> None:
    old_exchange = await _order(engine, "ROT-1")

    rotated = parse_key_ring(f"{TEST_PAYLOAD_KEYS}\n{new_key_line('test-2')}", source="rotated")
    target = temporal_client.service_client.config.target_host
    rotated_client = await Client.connect(target, data_converter=encrypted_data_converter(rotated))
    async with running_engine(
        rotated_client, fhir_base_url, task_queue="careweave-rotation"
    ) as rotated_engine:
        new_exchange = await _order(rotated_engine, "ROT-2")

        # What Temporal holds: ciphertext only, under the key current when it was written.
        raw = await Client.connect(target, data_converter=pydantic_data_converter)
        old_history = await raw.get_workflow_handle(old_exchange).fetch_history()
        new_history = await raw.get_workflow_handle(new_exchange).fetch_history()
        assert _key_ids(old_history) == {"test-1"}
        assert "test-2" in _key_ids(new_history)
        assert b"MRN100234" not in old_history.to_json().encode()
        assert b"Testpatient" not in new_history.to_json().encode()

        # The rotated ring reads the old exchange and replays its history.
        assert await rotated_client.get_workflow_handle(old_exchange).query("status") == "ordered"
        replayer = Replayer(
            workflows=REGISTRY.workflows(),
            data_converter=encrypted_data_converter(rotated),
            header_codec_behavior=HeaderCodecBehavior.CODEC,
        )
        for workflow_id in (old_exchange, new_exchange):
            history = await rotated_client.get_workflow_handle(workflow_id).fetch_history()
            result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
            assert result.replay_failure is None, f"{workflow_id}: {result.replay_failure}"

        # A process still on the old ring gets a clear error, not garbage, for new data.
        with pytest.raises(Exception) as refused:
            await temporal_client.get_workflow_handle(new_exchange).query("status")
        chain = [refused.value, refused.value.__cause__, refused.value.__context__]
        assert any(isinstance(err, PayloadKeyError) for err in chain), repr(refused.value)


@pytest.mark.parametrize("command", ["worker", "gateway", "api"])
async def test_a_process_given_other_bytes_under_a_known_key_id_refuses_to_start(
    engine: Engine, temporal_client: Client, command: str
) -> None:
    engine.store.verify_payload_keys()  # the check value of "test-1" is on record
    impostor = new_key_line("test-1")
    code, output = await careweave(
        engine,
        temporal_client,
        command,
        env={"CAREWEAVE_PAYLOAD_KEYS": impostor, "CAREWEAVE_MLLP_PORT": "0"},
    )
    assert code == 1, output
    assert "payload key 'test-1' is not the key that id had when first used" in output
    assert impostor.split()[1] not in output  # the key bytes are never printed
