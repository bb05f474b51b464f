"""Runtime settings, read from CAREWEAVE_* environment variables (see README)."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every port, URL and time limit Careweave uses; one place, documented in the README."""

    model_config = SettingsConfigDict(env_prefix="CAREWEAVE_", env_file=None, extra="ignore")

    state_dir: Path = Field(
        default=Path(".state"), description="Temporal SQLite file, Careweave DB"
    )
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_port: int = 8233
    task_queue: str = "careweave"

    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_max_frame_bytes: int = 1_048_576
    mllp_idle_timeout_seconds: float = 300.0
    mllp_max_connections: int = 256
    # Commit-then-ACK can be turned off only to measure the parse+ACK floor (bench/ingest.py).
    mllp_commit: bool = True
    fallback_charset: str | None = Field(
        default=None,
        description="Charset for bytes that are not valid UTF-8 and whose MSH-18 is empty; "
        "unset means such a message is answered AE and quarantined",
    )

    fhir_base_url: str = "http://127.0.0.1:8080/fhir"
    # `careweave up` runs the demo FHIR server itself unless pointed at another one.
    fhir_embedded: bool = True
    fhir_server_port: int = 8080
    fhir_timeout_seconds: float = 15.0

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL for Careweave's tables; default SQLite in state_dir",
    )

    # Order-to-result timing (seconds), configurable so tests can use short timers.
    unknown_order_wait_seconds: float = 4 * 3600
    correction_window_seconds: float = 72 * 3600
    sla_stat_seconds: float = 3600
    sla_asap_seconds: float = 4 * 3600
    sla_routine_seconds: float = 24 * 3600

    # Discharge sync: the routing file (destinations), read by the worker at start.
    destinations_file: Path = Field(
        default=Path(__file__).resolve().parent.parent / "config" / "destinations.toml"
    )
    # A discharge exchange stays open this long after its last event (A13, A08 may follow).
    discharge_close_after_seconds: float = 7 * 24 * 3600
    # A destination's per-patient queue that stays empty this long completes (a new event
    # starts it again).
    delivery_idle_close_seconds: float = 24 * 3600
    # `careweave up` runs the demo's two MLLP partner systems (primary care, billing).
    partners_embedded: bool = True
    # Key for the pseudonyms in workflow ids (encounter and patient keys); unset: a random
    # key kept in state_dir/pseudonym.key, made on first use.
    pseudonym_key: str | None = None

    # Payload encryption keys (AES-256-GCM, see adapters/payload_crypto.py for the format):
    # the env var named here wins; else the file; unset file means state_dir/payload.keys.
    payload_keys_env: str = "CAREWEAVE_PAYLOAD_KEYS"
    payload_keys_file: Path | None = None

    otel_exporter: str = Field(default="none", description="none | console | otlp")
    otel_otlp_endpoint: str | None = None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'careweave.db').resolve()}"

    def resolved_pseudonym_key(self) -> bytes:
        if self.pseudonym_key:
            return self.pseudonym_key.encode()
        key_file = self.state_dir / "pseudonym.key"
        if not key_file.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_hex(32))
            key_file.chmod(0o600)
        return key_file.read_text().strip().encode()


def load_settings() -> Settings:
    return Settings()
