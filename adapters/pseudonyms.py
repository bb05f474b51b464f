"""Keyed pseudonyms: stable, PHI-free stand-ins for identifiers (MRNs, visit and control
numbers) wherever a value must be found again but never read: workflow ids, search
attributes, the identity index's lookups."""

from __future__ import annotations

import base64
import hashlib
import hmac


def pseudonym(key: bytes, *parts: str) -> str:
    """A stable, PHI-free stand-in for an identifier (visit number, MRN) in workflow ids.

    Keyed, because a plain hash of a medical record number is reversed by trying them all.
    """
    if not key:
        raise ValueError("a pseudonym key is required (Settings.resolved_pseudonym_key)")
    digest = hmac.new(key, "|".join(parts).encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:20].lower()
