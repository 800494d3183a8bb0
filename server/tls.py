"""TLS material, read once at start-up: gRPC's credentials and HTTPS's context from the same files.

:func:`load_tls` reads and checks the three PEM files in one place (a bad file is
named with its flag at start-up, not as gRPC's bare "Failed to bind"); the gRPC
server and the HTTPS listener both take what it returns, so they can never serve
different certificates.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.errors import ConfigError

if TYPE_CHECKING:  # imported when credentials are made: settings are read before grpc loads
    import grpc

FLAGS = {
    "tls_cert": "--tls-cert / FASHION_TLS_CERT",
    "tls_key": "--tls-key / FASHION_TLS_KEY",
    "tls_client_ca": "--tls-client-ca / FASHION_TLS_CLIENT_CA",
}


@dataclass(frozen=True, eq=False)
class TlsMaterial:
    """The PEM bytes for gRPC and the checked server context for HTTPS."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    ssl_context: ssl.SSLContext  # HTTPS: the same certificate, mTLS with a client CA

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """TLS, and mTLS when a client CA is given (clients without a valid certificate are
        refused)."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def load_tls(cert: str, key: str, client_ca: str) -> TlsMaterial:
    """Read and check the PEM files; ConfigError naming the flag of a bad one."""
    cert_pem, key_pem = _read("tls_cert", cert), _read("tls_key", key)
    ca_pem = _read("tls_client_ca", client_ca) if client_ca else None
    try:
        _server_context().load_verify_locations(cadata=cert_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{FLAGS['tls_cert']}: {cert!r} holds no PEM certificate") from None
    context = _server_context()
    try:
        # A password callback that fails: an encrypted key is refused instead of prompting.
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, ValueError):
        raise ConfigError(
            f"{FLAGS['tls_key']}: {key!r} is not an unencrypted PEM private key matching {cert!r}"
        ) from None
    if ca_pem is not None:
        try:
            context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise ConfigError(
                f"{FLAGS['tls_client_ca']}: {client_ca!r} holds no PEM certificate"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return TlsMaterial(cert_pem, key_pem, ca_pem, context)


def _server_context() -> ssl.SSLContext:
    """A TLS server context that trusts nothing by itself: not ``create_default_context``,
    which would also accept client certificates signed by the system's CAs under mTLS,
    where gRPC accepts only --tls-client-ca."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{FLAGS[name]}: cannot read {path!r}: {exc.strerror or exc}") from None


def _no_password() -> str:
    raise ValueError("encrypted private keys are not supported")
