"""TLS contexts for MLLP and FHIR (HTTPS), built from file paths with the stdlib ``ssl`` module.

MLLP itself has no security; sites wrap it in TLS (IHE ITI TF-2 "Secure Node"). FHIR
servers are reached over HTTPS, often behind a hospital's private CA. Both sides refuse
anything older than TLS 1.2. A bad file is reported with its path and what
is wrong with it, so an operator can fix the right file; key files must be unencrypted
(a process started by a service manager has no one to type a passphrase).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from models.errors import ConfigurationError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsConfigError(ConfigurationError, ValueError):
    """A certificate, key or CA file cannot be used; the message names the file."""


def server_tls_context(
    cert_file: Path, key_file: Path, *, client_ca_file: Path | None = None
) -> ssl.SSLContext:
    """The gateway's context; with ``client_ca_file`` every client must present a certificate
    issued by one of those CAs (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_identity(context, cert_file, key_file)
    if client_ca_file is not None:
        _load_trusted(context, client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """An outbound context that verifies the peer's certificate and host name: against
    ``ca_file`` when given, else the system's CAs; ``cert_file``/``key_file`` are our client
    certificate for a peer that asks for one."""
    if (cert_file is None) != (key_file is None):
        raise TlsConfigError("a client certificate needs both cert_file and key_file")
    # PROTOCOL_TLS_CLIENT checks the certificate and the host name by default.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        # A private CA replaces the system's: a partner link trusts only its own PKI.
        _load_trusted(context, ca_file)
    if cert_file is not None and key_file is not None:
        _load_identity(context, cert_file, key_file)
    return context


def _readable(path: Path, what: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise TlsConfigError(f"{what} {path}: cannot read ({err.strerror})") from err


def _load_trusted(context: ssl.SSLContext, ca_file: Path) -> None:
    _readable(ca_file, "CA file")
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as err:
        raise TlsConfigError(f"CA file {ca_file}: no PEM certificate in it ({err.reason})") from err


def _refuse_passphrase() -> bytes:
    raise TlsConfigError("encrypted")


def _load_identity(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    _readable(cert_file, "certificate file")
    _readable(key_file, "key file")
    # load_cert_chain says only "PEM lib" for either file: read the certificate alone first
    # to tell which one is wrong.
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(cert_file))
    except ssl.SSLError as err:
        raise TlsConfigError(f"certificate file {cert_file}: not a PEM certificate") from err
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_refuse_passphrase)
    except TlsConfigError:
        raise TlsConfigError(
            f"key file {key_file}: the key is encrypted; give an unencrypted key file"
        ) from None
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(
                f"key file {key_file}: does not match the certificate in {cert_file}"
            ) from err
        raise TlsConfigError(f"key file {key_file}: not a PEM private key") from err
