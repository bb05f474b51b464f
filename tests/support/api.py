"""The review and codec API on a free loopback port, against the session's engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from adapters.users import UserDirectory
from models.audit import AuditEntry
from models.identity import Role
from tests.support.engine import TEST_KEY_RING, Engine
from workers.api import create_api, serving_api
from workers.auth import TokenIssuer, TokenVerifier, issuer_and_verifier
from workers.payload_codec import EncryptionCodec


@dataclass
class RunningApi:
    base_url: str
    users: UserDirectory
    issuer: TokenIssuer
    verifier: TokenVerifier
    codec: EncryptionCodec
    audit: list[AuditEntry] = field(default_factory=list)

    def token(self, subject: str, *roles: Role) -> str:
        """A token of Careweave's issuer for a user who holds `roles` (the user is saved:
        the API honours its own tokens only for users that exist)."""
        if roles:
            self.users.add(subject, f"{subject} test password", roles)
        return self.issuer.issue(subject, roles)


@contextlib.asynccontextmanager
async def running_api(engine: Engine, **setting_overrides: object) -> AsyncIterator[RunningApi]:
    """The API as `careweave up` builds it: tokens verified per the (overridden) settings."""
    settings = engine.settings.model_copy(update=setting_overrides)
    users = UserDirectory.from_url(settings.resolved_database_url)
    issuer, verifier = issuer_and_verifier(settings)
    # The product's codec with the session's test key, as the UI's endpoint uses it
    # (plaintext payloads shown as they are).
    codec = EncryptionCodec(TEST_KEY_RING).for_display()
    audit: list[AuditEntry] = []
    # Into the engine's real, hash-chained audit log (as `careweave up` wires it), and into
    # a list the tests can read without guessing which rows other tests wrote.
    audit_log = engine.store.audit_log()

    async def record(entry: AuditEntry) -> None:
        audit.append(entry)
        await audit_log.aappend(entry)

    app = create_api(settings, engine.client, codec, record, users=users, tokens=(issuer, verifier))
    async with serving_api(app, "127.0.0.1", 0) as port:
        yield RunningApi(f"http://127.0.0.1:{port}", users, issuer, verifier, codec, audit)
