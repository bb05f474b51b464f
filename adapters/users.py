"""User accounts of Careweave's own token issuer, in Careweave's database.

Passwords are stored as argon2id hashes (argon2-cffi); checking a password of an
unknown user still spends one hash so timing does not tell which usernames exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from adapters.database import open_engine
from models.identity import Role, UserAccount

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both paths cost one argon2 hash.
_UNKNOWN_USER_HASH = _hasher.hash("careweave-no-such-user")


class UserDirectory:
    """Add users and check their passwords; synchronous, so async callers use a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def from_url(cls, url: str) -> UserDirectory:
        return cls(open_engine(url))

    @property
    def engine(self) -> Engine:
        """The database it keeps accounts in (Careweave's own), for the API's other tables."""
        return self._engine

    def add(self, username: str, password: str, roles: Iterable[Role]) -> UserAccount:
        """Create or replace a user (a new password and roles for an existing name)."""
        role_values = sorted({Role(role).value for role in roles})
        if not username.strip():
            raise ValueError("a user needs a name")
        if not role_values:
            raise ValueError("a user needs at least one role")
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        account = UserAccount(
            username=username,
            password_hash=_hasher.hash(password),
            roles=",".join(role_values),
            created_at=datetime.now(UTC),
        )
        with Session(self._engine) as session:
            session.merge(account)
            session.commit()
        return account

    def remove(self, username: str) -> bool:
        """Delete a user; False when there was none by that name."""
        with Session(self._engine) as session:
            account = session.get(UserAccount, username)
            if account is None:
                return False
            session.delete(account)
            session.commit()
            return True

    def accounts(self) -> list[UserAccount]:
        with Session(self._engine) as session:
            return list(session.exec(select(UserAccount).order_by(col(UserAccount.username))))

    def get(self, username: str) -> UserAccount | None:
        with Session(self._engine) as session:
            return session.get(UserAccount, username)

    def authenticate(self, username: str, password: str) -> UserAccount | None:
        """The account if the password matches; None for a wrong password or unknown user."""
        account = self.get(username)
        try:
            _hasher.verify(account.password_hash if account else _UNKNOWN_USER_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return account
