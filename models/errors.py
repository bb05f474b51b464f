"""Careweave's one error root: the CLI and the processes catch a family, not a list."""

from __future__ import annotations


class CareweaveError(Exception):
    """Every error Careweave raises on purpose."""


class ConfigurationError(CareweaveError):
    """Settings, routing files, TLS files, credentials, keys or exchange definitions."""


class EngineError(CareweaveError):
    """The engine itself (Temporal, the stack) could not do what was asked."""
