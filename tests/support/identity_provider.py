"""An external identity provider for the API's tests: an RSA signing key and its JWKS
document served over real HTTP (http.server on a free loopback port), the way an
organisation's IdP publishes the keys its access tokens are signed with."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from models.identity import Role

JWKS_PATH = "/.well-known/jwks.json"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class IdentityProvider:
    issuer: str
    key_id: str
    signing_key: rsa.RSAPrivateKey
    jwks_url: str
    # How many times the JWKS document was fetched: the verifier really went to the network.
    jwks_fetches: int = 0

    def token(
        self,
        subject: str,
        roles: Iterable[Role],
        *,
        audience: str,
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        """An RS256 access token with this IdP's issuer and key id; `signing_key` overrides
        the key that actually signs it (a forgery that claims the IdP's kid)."""
        issued = datetime.now(UTC)
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "roles": sorted(role.value for role in roles),
            "iat": issued,
            "nbf": issued,
            "exp": issued + timedelta(minutes=5),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims,
            signing_key or self.signing_key,
            algorithm="RS256",
            headers={"kid": self.key_id},
        )


@contextlib.contextmanager
def running_identity_provider(
    issuer: str = "https://idp.hospital.test",
) -> Iterator[IdentityProvider]:
    key_id = f"idp-{uuid.uuid4().hex[:8]}"
    signing_key = new_rsa_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update({"kid": key_id, "alg": "RS256", "use": "sig"})
    document = json.dumps({"keys": [jwk]}).encode()
    provider: IdentityProvider

    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != JWKS_PATH:
                self.send_error(404)
                return
            provider.jwks_fetches += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, format: str, *args: object) -> None:
            # Quiet: the default writes every request to stderr.
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), JwksHandler)
    port = server.server_address[1]
    provider = IdentityProvider(issuer, key_id, signing_key, f"http://127.0.0.1:{port}{JWKS_PATH}")
    thread = threading.Thread(target=server.serve_forever, name="test-idp", daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
