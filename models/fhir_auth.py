"""How Careweave proves who it is to a FHIR server: the configuration, validated.

One shape for both places that configure it: a FHIR destination's `auth` table in the
routing file, and the lab-result server's CAREWEAVE_FHIR_* settings. Secrets never sit
in either: a bearer token is named by its environment variable, a private key by its file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class FhirAuthConfigError(ValueError):
    """FHIR credentials that cannot be used; the message names where they were configured."""
