"""Key pairs for SMART Backend Services clients: the private key in a PEM file (what
Careweave is configured with) and the public key as a JWKS file (what the FHIR server's
--smart-client registers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from models.fhir_auth import SmartBackendAuth


@dataclass(frozen=True)
class SmartClientKeys:
    client_id: str
    key_id: str
    algorithm: Literal["RS384", "ES384"]
    private_key_file: Path
    jwks_file: Path

    def config(
        self, token_url: str, scope: str = "system/*.read system/*.write"
    ) -> SmartBackendAuth:
        return SmartBackendAuth(
            kind="smart-backend",
            token_url=token_url,
            client_id=self.client_id,
            private_key_file=self.private_key_file,
            key_id=self.key_id,
            algorithm=self.algorithm,
            scope=scope,
        )


def make_client_keys(
    directory: Path, client_id: str, algorithm: Literal["RS384", "ES384"] = "RS384"
) -> SmartClientKeys:
    key_id = f"{client_id}-{algorithm.lower()}"
    if algorithm == "RS384":
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        jwk = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))
    else:
        private_key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
    jwk.update({"kid": key_id, "alg": algorithm, "use": "sig"})
    private_key_file = directory / f"{key_id}.pem"
    private_key_file.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    jwks_file = directory / f"{key_id}.jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    return SmartClientKeys(client_id, key_id, algorithm, private_key_file, jwks_file)
