"""Who may act on Careweave: roles, the verified identity of a caller, and user accounts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from sqlmodel import Field, SQLModel


class Role(StrEnum):
    # Decides reviews (approve, reject, retry, skip, edit) and may decode payloads.
    REVIEWER = "reviewer"
    # Operates the engine: lists reviews and decodes payloads, but decides nothing.
    OPS = "ops"


class Identity(BaseModel):
    """A caller whose token was verified: signature, issuer, audience and lifetime."""

    model_config = ConfigDict(frozen=True)

    subject: str
    roles: frozenset[Role]
    issuer: str

    def has_any(self, *roles: Role) -> bool:
        return any(role in self.roles for role in roles)


class UserAccount(SQLModel, table=True):
    """A person who logs in to Careweave's own token issuer (argon2 hash, never the password)."""

    __tablename__ = "user_account"

    username: str = Field(primary_key=True)
    password_hash: str
    # Comma-separated Role values; a handful per user, read with `role_set`.
    roles: str
    created_at: datetime

    @property
    def role_set(self) -> frozenset[Role]:
        return frozenset(Role(value) for value in self.roles.split(",") if value)
