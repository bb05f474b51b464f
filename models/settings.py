"""Runtime settings, read from CAREWEAVE_* environment variables (see README)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.fhir_auth import (
    FhirAuthConfig,
    FhirAuthConfigError,
    SmartAlgorithm,
    plain_http_refusal,
)

_FHIR_AUTH = TypeAdapter[FhirAuthConfig](FhirAuthConfig)


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
    # A frame must arrive whole within this long of its first byte, so a sender trickling
    # bytes just inside the idle timeout cannot hold a connection slot for ever.
    mllp_frame_timeout_seconds: float = 60.0
    # TLS on the gateway: both files set turn it on; a client CA file makes a client
    # certificate issued by that CA mandatory (mutual TLS).
    mllp_tls_cert_file: Path | None = None
    mllp_tls_key_file: Path | None = None
    mllp_tls_client_ca_file: Path | None = None
    # A client that opens a connection and never finishes the handshake is closed after this.
    mllp_tls_handshake_timeout_seconds: float = 10.0
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
    # Credentials for fhir_base_url (the lab-result server); see fhir_auth().
    fhir_auth_kind: Literal["none", "bearer", "smart-backend"] = "none"
    fhir_bearer_token_env: str | None = None
    fhir_smart_token_url: str | None = None
    fhir_smart_client_id: str | None = None
    fhir_smart_private_key_file: Path | None = None
    fhir_smart_key_id: str | None = None
    fhir_smart_algorithm: SmartAlgorithm = "RS384"
    fhir_smart_scope: str | None = None
    # HTTPS toward fhir_base_url: a private CA to trust instead of the system's, and a client
    # certificate for a server that asks for one (both files); only with an https:// URL.
    fhir_tls_ca_file: Path | None = None
    fhir_tls_cert_file: Path | None = None
    fhir_tls_key_file: Path | None = None

    # Orthanc, the PACS of imaging order-to-result (config/orthanc.json, workers/orthanc.py).
    # `careweave up` runs it on loopback unless pointed at another one (orthanc_url).
    orthanc_embedded: bool = True
    orthanc_url: str | None = None
    orthanc_http_port: int = 8042
    orthanc_dicom_port: int = 4242
    orthanc_aet: str = "CAREWEAVE_PACS"
    # HTTP basic credentials Careweave uses (and the embedded Orthanc accepts); unset
    # password: a random one kept in state_dir/orthanc.password, made on first use.
    orthanc_username: str = "careweave"
    orthanc_password: str | None = None
    # A study is "stable" (complete enough to publish) this long after its last instance.
    orthanc_stable_age_seconds: int = Field(default=60, ge=1)
    # Modalities allowed to query the worklist and store images: AE title -> host.
    orthanc_modalities: dict[str, str] = Field(default_factory=lambda: {"MODALITY": "127.0.0.1"})
    # Folder of .wl worklist files Orthanc's worklist plugin answers C-FIND from; default
    # state_dir/worklists (Orthanc's storage is state_dir/orthanc).
    worklist_dir: Path | None = None
    # Imaging timing: how often the change-feed poller asks Orthanc, how long a study with
    # no order waits for one before a reviewer decides.
    imaging_poll_seconds: float = Field(default=5.0, gt=0)
    imaging_unknown_order_wait_seconds: float = 4 * 3600

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
    # A patient-sync exchange (one patient's A28/A31) completes after this long without a
    # message; the next message starts a new run. Order holds either way.
    patient_sync_close_after_seconds: float = 600
    # A patient-merge exchange stays open this long after its last merge message.
    patient_merge_close_after_seconds: float = 600
    # A destination's per-patient queue that stays empty this long completes (a new event
    # starts it again).
    delivery_idle_close_seconds: float = 24 * 3600
    # Destination health (one workflow per destination, `careweave destination`): this many
    # deliveries in a row finding a destination unavailable (across its patients' queues)
    # trip it down and hold its queues; keep it below the destinations' max_attempts.
    # While down it is probed after destination_first_probe_seconds, doubling up to
    # destination_max_probe_seconds. On recovery the held queues drain at most
    # replay_parallel_patients at a time, together at most replay_events_per_second.
    destination_failures_to_trip: int = Field(default=5, ge=2)
    destination_first_probe_seconds: float = Field(default=5.0, gt=0)
    destination_max_probe_seconds: float = Field(default=300.0, gt=0)
    destination_probe_timeout_seconds: float = Field(default=15.0, gt=0)
    replay_parallel_patients: int = Field(default=20, ge=1)
    replay_events_per_second: float = Field(default=20.0, gt=0)
    # The worker's concurrency (`careweave worker`). On a small machine more workflow
    # tasks at once than there are cores only makes each one slower: past the 10 s task
    # timeout it is redone ("workflow task not found" on the late completion), wasting the
    # CPU when load is highest. Sized to the machine, overload waits in the task queue
    # instead. Activities mostly wait on I/O (FHIR, MLLP) and can be many more.
    worker_max_concurrent_workflow_tasks: int = Field(default=8, ge=2)
    worker_max_concurrent_activities: int = Field(default=32, ge=1)
    worker_max_concurrent_local_activities: int = Field(default=8, ge=1)
    # Upstream downtime batches (`careweave ingest-batch`): the watched inbox (processed
    # files go to its processed/, held/ or failed/ folder, never deleted), how fast its
    # messages are committed so a recovering engine is not flooded, and the zone an MSH-7
    # without offset is read in (the sending EHR's local time, an IANA name).
    batch_inbox: Path | None = None
    batch_rate_per_second: float = Field(default=20.0, gt=0)
    batch_local_timezone: str = "UTC"
    batch_inbox_poll_seconds: float = Field(default=2.0, gt=0)
    # A file is picked up once its size and modification time stayed the same this long
    # (a sender still copying it changes both).
    batch_inbox_settle_seconds: float = Field(default=2.0, ge=0)
    # `careweave up` runs the demo's two MLLP partner systems (primary care, billing).
    partners_embedded: bool = True
    # Key for the pseudonyms in workflow ids (encounter and patient keys); unset: a random
    # key kept in state_dir/pseudonym.key, made on first use.
    pseudonym_key: str | None = None
    # Lab exchanges started before their ids became pseudonyms run under
    # order-to-result/<facility>/<placer number in clear>. While on, a lab message whose
    # legacy id is among the runs open when the gateway last listed them (every
    # legacy_workflow_ids_refresh_seconds) is signalled to that run; other messages pay
    # nothing (docs/benchmarks.md). Turn it off once no such run is open.
    legacy_lab_workflow_ids: bool = True
    legacy_workflow_ids_refresh_seconds: int = Field(default=300, ge=1)

    # Payload encryption keys (AES-256-GCM, see adapters/payload_crypto.py for the format):
    # the env var named here wins; else the file; unset file means state_dir/payload.keys.
    payload_keys_env: str = "CAREWEAVE_PAYLOAD_KEYS"
    payload_keys_file: Path | None = None
    # The worker and Careweave's Temporal clients refuse payloads that are not encrypted with
    # the key ring (a plaintext signal, update or workflow input is refused and audited).
    # True only for a Temporal namespace holding histories written before payload encryption
    # existed; the UI's codec endpoint shows plaintext payloads as they are either way.
    payload_accept_unencrypted: bool = False

    # The review and codec API (`careweave api`, and in-process in `careweave up`).
    api_host: str = "127.0.0.1"
    api_port: int = 8088
    api_url: str | None = Field(
        default=None, description="Where the CLI reaches the API; default from api_host/port"
    )
    # Browser origins of the Temporal UI allowed to call the codec endpoint with credentials;
    # default: the embedded UI on 127.0.0.1 and localhost.
    api_ui_origins: list[str] | None = None
    # The Temporal UI behind the API's sign-in (workers/api/temporal_ui.py): browsers open
    # the API's /temporal/, the API forwards to the UI listening here under /temporal
    # (default: the embedded dev server's UI on loopback, http://127.0.0.1:temporal_ui_port).
    temporal_ui_upstream: str | None = None

    # Tokens: Careweave's own issuer signs ES256 with the key in auth_signing_key_file
    # (default state_dir/auth-signing-key.pem, made on first use); an external IdP's
    # tokens are accepted too when auth_jwks_url and auth_jwks_issuer are set.
    auth_issuer: str = "careweave"
    auth_audience: str = "careweave-api"
    auth_token_ttl_seconds: int = 8 * 3600
    # Failed password logins allowed per username per minute (4x that per client address).
    auth_login_failures_per_minute: int = Field(default=5, ge=1)
    auth_signing_key_file: Path | None = None
    auth_jwks_url: str | None = None
    auth_jwks_issuer: str | None = None
    # Review decisions carry the API's signature (adapters/decision_proof.py), valid this
    # long: the API signs just before it sends the update, so seconds would do.
    review_decision_proof_ttl_seconds: int = Field(default=120, ge=5)
    # PEM public keys whose decision proofs the worker accepts (one per API signing key in
    # use); unset: the public key the API writes beside its signing key
    # (auth-signing-key.pub.pem). The worker never needs the private key.
    review_decision_public_key_files: list[Path] | None = None
    # Where `careweave login` keeps the token the other commands send (0600).
    token_file: Path | None = None

    # The reviewer inbox (/ui/): how long each kind of review may wait before it is overdue
    # (keys are review reasons; others use review_sla_default_minutes), and how often the
    # inbox list refreshes itself.
    review_sla_minutes: dict[str, int] = Field(
        default_factory=lambda: {
            "delivery-failed": 30,
            # A result held as another patient's may be the one a clinician waits for.
            "patient-mismatch": 30,
            "unknown-order": 60,
            "fhir-rejected": 60,
            "invalid-message": 120,
            "unmapped-code": 240,
            "update-after-close": 240,
        }
    )
    review_sla_default_minutes: int = Field(default=120, ge=1)
    web_refresh_seconds: int = Field(default=15, ge=2)

    # Probes (workers/health.py): /healthz and /readyz of `careweave gateway` and `careweave
    # worker` on a listener of their own, off unless its port is set (0: a free port, logged);
    # the API serves them on api_port. In a container, set health_host to 0.0.0.0.
    health_host: str = "127.0.0.1"
    gateway_health_port: int | None = Field(default=None, ge=0, le=65535)
    worker_health_port: int | None = Field(default=None, ge=0, le=65535)

    # Metrics (workers/metrics.py): Careweave's at /metrics beside the probes (and on the
    # API), the Temporal SDK's on temporal_metrics_port (bound on health_host) when set.
    metrics_exporter: Literal["none", "prometheus"] = "prometheus"
    temporal_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # The worker counts reviews pending and deliveries held from Temporal visibility this
    # often (workers/visibility_metrics.py); a scrape serves the last counts. 0: off (run
    # it on one or two workers of many: each counts the same cluster).
    visibility_metrics_seconds: float = Field(default=30.0, ge=0)

    otel_exporter: str = Field(default="none", description="none | console | otlp")
    otel_otlp_endpoint: str | None = None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'careweave.db').resolve()}"

    @property
    def resolved_api_url(self) -> str:
        return (self.api_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def resolved_ui_origins(self) -> list[str]:
        if self.api_ui_origins is not None:
            return self.api_ui_origins
        port = self.temporal_ui_port
        return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]

    @property
    def resolved_temporal_ui_upstream(self) -> str:
        return (self.temporal_ui_upstream or f"http://127.0.0.1:{self.temporal_ui_port}").rstrip(
            "/"
        )

    @property
    def resolved_signing_key_file(self) -> Path:
        return self.auth_signing_key_file or self.state_dir / "auth-signing-key.pem"

    @property
    def resolved_signing_public_key_file(self) -> Path:
        """The public half of the API's signing key, written by the API beside it."""
        private = self.resolved_signing_key_file
        return private.with_name(private.name.removesuffix(".pem") + ".pub.pem")

    @property
    def resolved_decision_public_key_files(self) -> list[Path]:
        if self.review_decision_public_key_files is not None:
            return self.review_decision_public_key_files
        return [self.resolved_signing_public_key_file]

    @property
    def resolved_token_file(self) -> Path:
        return self.token_file or self.state_dir / "token"

    def fhir_auth(self) -> FhirAuthConfig | None:
        """The lab-result server's credentials in the routing file's shape, or None.

        Raises FhirAuthConfigError naming the CAREWEAVE_* variables that are missing or bad,
        or the URL the credentials would go to in clear (http:// to a host not loopback).
        """
        if self.fhir_auth_kind == "none":
            return None
        prefix = "fhir_bearer_" if self.fhir_auth_kind == "bearer" else "fhir_smart_"
        fields = {
            name.removeprefix(prefix): value
            for name, value in self
            if name.startswith(prefix) and value is not None
        }
        where = f"CAREWEAVE_FHIR_AUTH_KIND={self.fhir_auth_kind}"
        try:
            auth = _FHIR_AUTH.validate_python({"kind": self.fhir_auth_kind, **fields})
        except ValidationError as err:
            problems = "; ".join(
                f"CAREWEAVE_{prefix.upper()}{str(error['loc'][-1]).upper()}: {error['msg']}"
                for error in err.errors()
            )
            raise FhirAuthConfigError(f"{where}: {problems}") from err
        refusal = plain_http_refusal(
            self.fhir_base_url,
            auth,
            base_url_name="CAREWEAVE_FHIR_BASE_URL",
            token_url_name="CAREWEAVE_FHIR_SMART_TOKEN_URL",
        )
        if refusal:
            raise FhirAuthConfigError(f"{where}: {refusal}")
        return auth

    @property
    def resolved_orthanc_url(self) -> str:
        return (self.orthanc_url or f"http://127.0.0.1:{self.orthanc_http_port}").rstrip("/")

    @property
    def pacs_configured(self) -> bool:
        """A PACS to follow: the embedded Orthanc, or one at ``orthanc_url``. Without one
        the imaging exchange still routes orders, but no change-feed poller runs."""
        return self.orthanc_embedded or self.orthanc_url is not None

    @property
    def resolved_worklist_dir(self) -> Path:
        return self.worklist_dir or self.state_dir / "worklists"

    def resolved_orthanc_password(self) -> str:
        if self.orthanc_password:
            return self.orthanc_password
        password_file = self.state_dir / "orthanc.password"
        if not password_file.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            password_file.write_text(secrets.token_urlsafe(24))
            password_file.chmod(0o600)
        return password_file.read_text().strip()

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
