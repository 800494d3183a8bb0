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

X509_V_ERR_CERT_HAS_EXPIRED = 10  # OpenSSL's verification code

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
    if _has_expired(context, cert_pem):
        # Python's ssl and gRPC both load an expired certificate without a word, and then
        # every client fails its handshake ("certificate has expired"): say it here instead.
        raise ConfigError(
            f"{FLAGS['tls_cert']}: {cert!r} has expired (its notAfter date is past): renew it"
        )
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


def _has_expired(server: ssl.SSLContext, cert_pem: bytes) -> bool:
    """Whether the served (first) certificate is past its notAfter date.

    The standard library decodes no certificate dates, so this shakes hands in memory
    with a client that trusts exactly that certificate (a partial chain: the issuer is
    not needed); the only verification that can then fail is the certificate's validity
    period. Called before a client CA is set: the client here presents no certificate.
    """
    text = cert_pem.decode("ascii", "replace")
    begin, end = text.find("-----BEGIN CERTIFICATE-----"), text.find("-----END CERTIFICATE-----")
    if begin < 0 or end < begin:
        return False  # an older PEM label: left to the client's own checks
    leaf = text[begin : end + len("-----END CERTIFICATE-----")]
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    client.load_verify_locations(cadata=leaf)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    client_side = client.wrap_bio(to_client, to_server)
    for _ in range(8):  # TLS 1.3 needs two round trips; 1.2 three
        for side in (client_side, server_side):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLCertVerificationError as exc:
                return exc.verify_code == X509_V_ERR_CERT_HAS_EXPIRED
            except ssl.SSLError:
                return False  # not a date problem: left to the client's own checks
        if client_side.version() is not None and server_side.version() is not None:
            return False
    return False


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{FLAGS[name]}: cannot read {path!r}: {exc.strerror or exc}") from None


def _no_password() -> str:
    raise ValueError("encrypted private keys are not supported")
