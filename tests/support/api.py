"""The review and codec API on a free loopback port, against the session's engine."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from adapters.users import UserDirectory
from models.audit import AuditEntry
from models.identity import Role
from tests.support.engine import Engine
from workers.api import create_api, serving_api
from workers.auth import TokenIssuer, TokenVerifier, issuer_and_verifier

ZLIB_ENCODING = b"binary/zlib"


class ZlibCodec(PayloadCodec):
    """A small real codec for tests (the product's codec encrypts): compresses each payload
    and marks it, so a decode that did nothing is visible."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": ZLIB_ENCODING},
                data=zlib.compress(payload.SerializeToString()),
            )
            for payload in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ZLIB_ENCODING:
                decoded.append(payload)
                continue
            original = Payload()
            original.ParseFromString(zlib.decompress(payload.data))
            decoded.append(original)
        return decoded


@dataclass
class RunningApi:
    base_url: str
    users: UserDirectory
    issuer: TokenIssuer
    verifier: TokenVerifier
    codec: ZlibCodec
    audit: list[AuditEntry] = field(default_factory=list)

    def token(self, subject: str, *roles: Role) -> str:
        return self.issuer.issue(subject, roles)


@contextlib.asynccontextmanager
async def running_api(engine: Engine) -> AsyncIterator[RunningApi]:
    settings = engine.settings
    users = UserDirectory.from_url(settings.resolved_database_url)
    issuer, verifier = issuer_and_verifier(settings)
    codec = ZlibCodec()
    audit: list[AuditEntry] = []

    async def record(entry: AuditEntry) -> None:
        audit.append(entry)

    app = create_api(settings, engine.client, codec, record, users=users, tokens=(issuer, verifier))
    async with serving_api(app, "127.0.0.1", 0) as port:
        yield RunningApi(f"http://127.0.0.1:{port}", users, issuer, verifier, codec, audit)
