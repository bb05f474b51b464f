"""HL7 v2 protocol I/O: MLLP framing, the one field reader (``fields``), the gateway's fast
path, ACKs, an MLLP client, TLS."""

from adapters.hl7v2.ack import AckParseError, ack_required, build_ack, parse_ack
from adapters.hl7v2.framing import (
    END_BLOCK,
    START_BLOCK,
    BadFrame,
    Frame,
    MllpDecoder,
    encode_frame,
)
from adapters.hl7v2.header import (
    REQUIRED_SEGMENTS,
    DecodedMessage,
    MessageHeader,
    MessageRejected,
    decode_message,
    error_description,
    unescape,
)
from adapters.hl7v2.mllp_client import (
    MllpClient,
    MllpConnectionError,
    MllpError,
    MllpProtocolError,
    MllpTimeout,
    MllpTlsError,
)
from adapters.tls import TlsConfigError, client_tls_context, server_tls_context

__all__ = [
    "END_BLOCK",
    "REQUIRED_SEGMENTS",
    "START_BLOCK",
    "AckParseError",
    "BadFrame",
    "DecodedMessage",
    "Frame",
    "MessageHeader",
    "MessageRejected",
    "MllpClient",
    "MllpConnectionError",
    "MllpDecoder",
    "MllpError",
    "MllpProtocolError",
    "MllpTimeout",
    "MllpTlsError",
    "TlsConfigError",
    "ack_required",
    "build_ack",
    "client_tls_context",
    "decode_message",
    "encode_frame",
    "error_description",
    "parse_ack",
    "server_tls_context",
    "unescape",
]
