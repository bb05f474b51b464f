"""How Careweave proves who it is to a FHIR server: the configuration, validated.

One shape for both places that configure it: a FHIR destination's `auth` table in the
routing file, and the lab-result server's CAREWEAVE_FHIR_* settings. Secrets never sit
in either: a bearer token is named by its environment variable, a private key by its file.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from models.errors import ConfigurationError

# SMART App Launch "Backend Services": clients SHALL support one of these two.
SmartAlgorithm = Literal["RS384", "ES384"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BearerTokenAuth(_Strict):
    """A token issued out of band, sent as ``Authorization: Bearer``."""

    kind: Literal["bearer"]
    token_env: str = Field(min_length=1, description="environment variable holding the token")


class SmartBackendAuth(_Strict):
    """OAuth client_credentials with a private_key_jwt client assertion (SMART Backend Services)."""

    kind: Literal["smart-backend"]
    token_url: str = Field(pattern=r"^https?://\S+$")
    client_id: str = Field(min_length=1)
    private_key_file: Path
    key_id: str = Field(min_length=1)
    algorithm: SmartAlgorithm = "RS384"
    scope: str = Field(min_length=1)


FhirAuthConfig = Annotated[BearerTokenAuth | SmartBackendAuth, Field(discriminator="kind")]


class FhirAuthConfigError(ConfigurationError, ValueError):
    """FHIR credentials that cannot be used; the message names where they were configured."""


def sent_in_clear(url: str) -> bool:
    """True for http:// to a host that is not loopback: whatever is sent there (a bearer
    token, a client assertion) can be read on the network. Loopback http stays allowed for
    the demo and tests, where nothing leaves the machine."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def plain_http_refusal(
    base_url: str,
    auth: FhirAuthConfig | None,
    *,
    base_url_name: str,
    token_url_name: str,
) -> str | None:
    """Why these credentials must not be used with these URLs, or None; names the setting."""
    if auth is None:
        return None
    urls = [(base_url_name, base_url)]
    if isinstance(auth, SmartBackendAuth):
        urls.append((token_url_name, auth.token_url))
    for name, url in urls:
        if sent_in_clear(url):
            return (
                f"{name} {url} is plain http:// to a host that is not loopback, and "
                f"{auth.kind} credentials would cross the network readable; use https:// "
                "(plain http is allowed only to 127.0.0.1, ::1 or localhost)"
            )
    return None
