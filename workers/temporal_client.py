"""One way to connect to Temporal: encrypted pydantic payloads and tracing on every call."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import HeaderCodecBehavior
from temporalio.contrib.opentelemetry import TracingInterceptor

from adapters.payload_crypto import KeyRing
from exchanges.registry import REGISTRY
from models.settings import Settings
from workers.payload_codec import encrypted_data_converter, load_payload_keys


async def connect(settings: Settings, key_ring: KeyRing | None = None) -> Client:
    """A client whose payloads are encrypted with the settings' key ring (or the one given)."""
    return await connect_to(
        settings.temporal_address,
        key_ring or load_payload_keys(settings),
        namespace=settings.temporal_namespace,
        accept_unencrypted=settings.payload_accept_unencrypted,
    )


async def connect_to(
    target: str,
    key_ring: KeyRing,
    *,
    namespace: str = "default",
    accept_unencrypted: bool = False,
) -> Client:
    """A client whose codec refuses payloads not encrypted with ``key_ring`` (unless
    ``accept_unencrypted``): a worker built on it never acts on one."""
    return await Client.connect(
        target,
        namespace=namespace,
        data_converter=encrypted_data_converter(key_ring, accept_unencrypted=accept_unencrypted),
        interceptors=[TracingInterceptor()],
        # Headers (the trace context each message carries) go through the codec too.
        header_codec_behavior=HeaderCodecBehavior.CODEC,
    )


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register Careweave's search attributes that the namespace lacks; returns their names.

    `temporal server start-dev --search-attribute` registers them only when it creates its
    database, so a state folder from an older Careweave would lack newer ones.
    """
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = [
        key for key in REGISTRY.search_attributes() if key.name not in listed.custom_attributes
    ]
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={
                    key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
                    for key in missing
                },
            )
        )
    return [key.name for key in missing]
