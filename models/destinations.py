"""Where discharge events and patient merges go: the routing file, validated.

Routing is configuration, not code. The file (TOML) names each destination, what it
subscribes to and how to reach it; the worker reads it at start, and every
discharge-sync workflow records the version it routed with.
"""

from __future__ import annotations

import hashlib
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.errors import ConfigurationError
from models.fhir_auth import FhirAuthConfig, plain_http_refusal


class Subscription(StrEnum):
    DISCHARGE = "A03"
    CANCEL_DISCHARGE = "A13"
    DIAGNOSIS_UPDATE = "A08-diagnosis"
    # Patient-merge announcements: the merge as decided (ADT^A40) and its undo (ADT^A37).
    PATIENT_MERGE = "A40"
    PATIENT_UNMERGE = "A37"


# A destination told of a merge must be told of its undo, and an undo means nothing to one
# that never heard of the merge: these are subscribed to together.
_MERGE_ANNOUNCEMENTS = frozenset({Subscription.PATIENT_MERGE, Subscription.PATIENT_UNMERGE})


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DestinationTls(_Strict):
    """TLS toward a destination (an MLLP partner, or a FHIR server over HTTPS). Every field is
    optional: an empty table verifies the peer against the system's CAs and the host name."""

    # Relative paths are read from the routing file's folder (see load_routing).
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @field_validator("ca_file", "cert_file", "key_file", mode="before")
    @classmethod
    def _beside_the_routing_file(cls, value: object, info: ValidationInfo) -> object:
        base = (info.context or {}).get("base_dir")
        if isinstance(value, str) and base is not None and not Path(value).is_absolute():
            return str(Path(base) / value)
        return value

    @model_validator(mode="after")
    def _client_certificate_whole(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


class MllpTls(DestinationTls):
    """TLS toward an MLLP partner; ``tls = true`` is an empty table."""

    # The name the partner's certificate must carry, when it is not `host`.
    server_name: str | None = Field(default=None, min_length=1)


class FhirEndpoint(_Strict):
    base_url: str
    timeout_seconds: float = Field(default=15.0, gt=0)
    # No table: requests go without credentials.
    auth: FhirAuthConfig | None = None
    # Only with an https:// base_url. No table, or an empty one: the system's CAs and no
    # client certificate, as for MLLP.
    tls: DestinationTls | None = None

    @model_validator(mode="before")
    @classmethod
    def _bearer_token_env_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bearer_token_env" in data:
            raise ValueError(
                "bearer_token_env is replaced by an auth table: "
                '[destination.fhir.auth] kind = "bearer", token_env = "..."'
            )
        return data

    @model_validator(mode="after")
    def _https_for_tls_and_credentials(self) -> FhirEndpoint:
        if self.tls is not None and not self.base_url.lower().startswith("https://"):
            raise ValueError(f"a tls table needs an https:// base_url, not {self.base_url}")
        refusal = plain_http_refusal(
            self.base_url, self.auth, base_url_name="base_url", token_url_name="auth.token_url"
        )
        if refusal:
            raise ValueError(refusal)
        return self


class MllpEndpoint(_Strict):
    host: str
    port: int = Field(ge=1, le=65535)
    receiving_application: str
    receiving_facility: str
    tls: MllpTls | None = None
    ack_timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_flag(cls, value: object) -> object:
        # `tls = true` (the first form of this field) means TLS with the system's CAs.
        if value is True:
            return {}
        if value is False:
            return None
        return value


class DeliveryPolicy(_Strict):
    """How hard to try before a person is asked."""

    max_attempts: int = Field(default=5, ge=1)
    first_retry_seconds: float = Field(default=2.0, gt=0)
    max_retry_seconds: float = Field(default=300.0, gt=0)
    # ERR-3 codes (HL7 table 0357) a partner uses for "try again later".
    temporary_error_codes: tuple[str, ...] = ("206", "207")


class Destination(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    kind: Literal["fhir", "mllp"]
    subscribes: tuple[Subscription, ...] = Field(min_length=1)
    fhir: FhirEndpoint | None = None
    mllp: MllpEndpoint | None = None
    policy: DeliveryPolicy = DeliveryPolicy()

    @model_validator(mode="after")
    def _endpoint_matches_kind(self) -> Destination:
        if self.kind == "fhir" and (self.fhir is None or self.mllp is not None):
            raise ValueError("kind 'fhir' needs a [destination.fhir] table and no mllp table")
        if self.kind == "mllp" and (self.mllp is None or self.fhir is not None):
            raise ValueError("kind 'mllp' needs a [destination.mllp] table and no fhir table")
        if len(set(self.subscribes)) != len(self.subscribes):
            raise ValueError("subscribes lists an event twice")
        merge_subscriptions = _MERGE_ANNOUNCEMENTS & set(self.subscribes)
        if merge_subscriptions and merge_subscriptions != _MERGE_ANNOUNCEMENTS:
            raise ValueError(
                "subscribes A40 and A37 together: a destination told of a merge must be told "
                "of its undo"
            )
        return self


class RoutingConfig(_Strict):
    version: str = Field(min_length=1)
    destinations: tuple[Destination, ...] = Field(alias="destination", min_length=1)
    # sha256 of the file's bytes, set by the loader: the version label alone can be forgotten.
    digest: str = ""

    @model_validator(mode="after")
    def _unique_names(self) -> RoutingConfig:
        names = [destination.name for destination in self.destinations]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique: {', '.join(duplicates)}")
        return self

    @property
    def label(self) -> str:
        return f"{self.version} (sha256 {self.digest[:12]})" if self.digest else self.version

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)

    def subscribers(self, subscription: Subscription) -> list[str]:
        return [d.name for d in self.destinations if subscription in d.subscribes]


class RoutingConfigError(ConfigurationError, ValueError):
    """The routing file cannot be used; the message names the file and the place."""


def load_routing(path: Path) -> RoutingConfig:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RoutingConfigError(f"{path}: cannot read ({err.strerror})") from err
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        # tomllib's message already says "(at line N, column M)".
        raise RoutingConfigError(f"{path}: not valid TOML: {err}") from err
    try:
        config = RoutingConfig.model_validate(document, context={"base_dir": path.parent})
    except ValidationError as err:
        problems = "; ".join(
            f"{_where(document, error['loc'])}: {error['msg']}" for error in err.errors()
        )
        raise RoutingConfigError(f"{path}: {problems}") from err
    return config.model_copy(update={"digest": hashlib.sha256(data).hexdigest()})


def _where(document: object, loc: tuple[int | str, ...]) -> str:
    """`destination[2] (billing).mllp.port` from pydantic's location tuple."""
    parts: list[str] = []
    node = document
    for position, step in enumerate(loc):
        # A tagged union (fhir.auth by `kind`) puts the tag in the location; the file
        # has no such key, so it is left out unless it is the missing field itself.
        if isinstance(step, str) and isinstance(node, dict) and step not in node:
            if position < len(loc) - 1:
                continue
        if isinstance(step, int):
            entry = node[step] if isinstance(node, list) and step < len(node) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            label = f"[{step + 1}]" + (f" ({name})" if isinstance(name, str) else "")
            parts[-1:] = [(parts[-1] if parts else "") + label]
            node = entry
        else:
            parts.append(step)
            node = node.get(step) if isinstance(node, dict) else None
    return ".".join(parts) or "file"
