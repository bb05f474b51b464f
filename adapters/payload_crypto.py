"""AES-256-GCM with a ring of named keys: the newest encrypts, every key decrypts.

Used for Temporal payloads (through the codec in workers/payload_codec.py) and for
columns of Careweave's own tables that hold raw messages. The key id travels with each
ciphertext, so keys rotate by adding a line to the key file: what was written with an
older key stays readable as long as that key stays in the ring.

Key file format, one key per line (blank lines and `#` comments ignored):

    <key id> <base64 of 32 random bytes>

The last key listed is the one that encrypts.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from models.errors import ConfigurationError, SecurityError

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,40}$")
# Prefix of a sealed column value; the version lets the format change without guessing.
_SEALED_PREFIX = b"cw-gcm1:"


class PayloadKeyError(ConfigurationError, ValueError):
    """The key ring is missing, malformed, or lacks the key a ciphertext names."""


class PayloadDecryptError(SecurityError, ValueError):
    """A ciphertext did not authenticate under the key its id names (wrong key or tampered)."""


@dataclass(frozen=True)
class Ciphertext:
    key_id: str
    data: bytes  # nonce || AES-GCM ciphertext and tag


class KeyRing:
    def __init__(self, keys: dict[str, bytes], current_key_id: str) -> None:
        if current_key_id not in keys:
            raise PayloadKeyError(f"current key {current_key_id!r} is not in the ring")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.current_key_id = current_key_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def encrypt(self, plaintext: bytes, *, context: bytes, key_id: str | None = None) -> Ciphertext:
        """Encrypt with the newest key (or the one named); `context` is authenticated, not
        stored."""
        key_id = key_id or self.current_key_id
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, plaintext, _associated_data(key_id, context))
        return Ciphertext(key_id, nonce + sealed)

    def decrypt(self, ciphertext: Ciphertext, *, context: bytes) -> bytes:
        cipher = self._ciphers.get(ciphertext.key_id)
        if cipher is None:
            raise PayloadKeyError(
                f"data was encrypted with key {ciphertext.key_id!r}, which is not in the key "
                f"ring (ring has {', '.join(self._ciphers)}); keep retired keys in the key file"
            )
        nonce, sealed = ciphertext.data[:NONCE_BYTES], ciphertext.data[NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, sealed, _associated_data(ciphertext.key_id, context))
        except InvalidTag as err:
            raise PayloadDecryptError(
                f"data under key id {ciphertext.key_id!r} does not authenticate: the key with "
                "that id is not the one it was written with, or the data was altered"
            ) from err

    # -- columns of Careweave's own tables ------------------------------------

    def seal(self, plaintext: bytes, *, column: str) -> bytes:
        """A self-describing encrypted column value: prefix, key id, nonce + ciphertext."""
        return self.seal_ciphertext(self.encrypt(plaintext, context=column.encode()))

    @staticmethod
    def seal_ciphertext(encrypted: Ciphertext) -> bytes:
        return _SEALED_PREFIX + encrypted.key_id.encode() + b":" + encrypted.data

    def unseal(self, value: bytes, *, column: str) -> bytes:
        if not value.startswith(_SEALED_PREFIX):
            raise PayloadDecryptError(f"{column}: value is not sealed by Careweave")
        key_id, separator, data = value[len(_SEALED_PREFIX) :].partition(b":")
        if not separator:
            raise PayloadDecryptError(f"{column}: sealed value has no key id")
        return self.decrypt(Ciphertext(key_id.decode(), data), context=column.encode())


def _associated_data(key_id: str, context: bytes) -> bytes:
    # Binding the key id means a ciphertext cannot be relabelled to another key's id.
    return b"careweave/v1|" + key_id.encode() + b"|" + context


def parse_key_ring(text: str, *, source: str) -> KeyRing:
    """Read the key file format; errors name the source and line, never key material."""
    keys: dict[str, bytes] = {}
    last = ""
    entries = [
        (number, entry.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        # An env var cannot hold newlines easily, so `;` separates keys too.
        for entry in line.split("#", 1)[0].split(";")
    ]
    for number, entry in entries:
        if not entry:
            continue
        fields = entry.split()
        if len(fields) != 2:
            raise PayloadKeyError(f"{source}, line {number}: expected '<key id> <base64 key>'")
        key_id, encoded = fields
        if not _KEY_ID.match(key_id):
            raise PayloadKeyError(
                f"{source}, line {number}: key id must be 1-40 letters, digits, '.', '_' or '-'"
            )
        if key_id in keys:
            raise PayloadKeyError(f"{source}, line {number}: key id {key_id!r} appears twice")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error as err:
            raise PayloadKeyError(f"{source}, line {number}: key is not valid base64") from err
        if len(key) != KEY_BYTES:
            raise PayloadKeyError(
                f"{source}, line {number}: key is {len(key)} bytes, AES-256 needs {KEY_BYTES}"
            )
        keys[key_id] = key
        last = key_id
    if not keys:
        raise PayloadKeyError(f"{source}: no keys")
    return KeyRing(keys, last)


def read_key_file(path: Path) -> KeyRing:
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise PayloadKeyError(f"payload key file {path} does not exist") from err
    except OSError as err:
        raise PayloadKeyError(f"payload key file {path} cannot be read: {err.strerror}") from err
    return parse_key_ring(text, source=str(path))


def _default_key_id() -> str:
    return datetime.now(UTC).strftime("k%Y%m%d%H%M%S")


def new_key_line(key_id: str | None = None) -> str:
    key_id = key_id or _default_key_id()
    if not _KEY_ID.match(key_id):
        raise PayloadKeyError("key id must be 1-40 letters, digits, '.', '_' or '-'")
    return f"{key_id} {base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def add_key(path: Path, key_id: str | None = None) -> str:
    """Append a new key (it becomes the one that encrypts); creates the file 0600 if needed."""
    key_id = key_id or _default_key_id()
    if path.exists():
        existing = read_key_file(path)
        if key_id in existing.key_ids:
            raise PayloadKeyError(f"{path}: key id {key_id!r} already exists")
    line = new_key_line(key_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as key_file:
        if path.stat().st_size == 0:
            key_file.write(
                "# Careweave payload keys: '<key id> <base64 32 bytes>' per line. The last "
                "line encrypts; keep older lines so older data stays readable.\n"
            )
        key_file.write(line + "\n")
    return line.split()[0]
