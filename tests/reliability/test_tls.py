"""TLS and mTLS with certificates generated at test time; the client and fashion-predict too."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest

from client.cli import main as predict_main
from client.predictor import PredictClient, PredictError, TlsConfig
from server.config import Settings
from server.errors import ConfigError
from tests.reliability.certs import CertificateAuthority


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path, "test-ca")
    rogue = CertificateAuthority(tmp_path, "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "rogue_client": rogue.issue("rogue-client", server=False),
    }


def predict(target: str, tls: TlsConfig | None) -> int:
    with PredictClient(target, tls=tls, timeout_s=5, retries=False) as client:
        return len(client.predict(np.zeros((2, 28, 28), np.uint8)).predictions)


async def test_tls_serves_encrypted_and_refuses_plaintext(start_app, pki) -> None:
    app = await start_app(tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key))
    target = f"localhost:{app.port}"
    assert await asyncio.to_thread(predict, target, TlsConfig(ca_cert=pki["ca"].pair.cert)) == 2
    with pytest.raises(PredictError) as info:
        await asyncio.to_thread(predict, target, None)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_ca(start_app, pki) -> None:
    app = await start_app(
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=str(pki["ca"].pair.cert),
    )
    target = f"localhost:{app.port}"
    ca = pki["ca"].pair.cert
    good = TlsConfig(ca_cert=ca, client_cert=pki["client"].cert, client_key=pki["client"].key)
    assert await asyncio.to_thread(predict, target, good) == 2
    for refused in (
        TlsConfig(ca_cert=ca),  # no client certificate
        TlsConfig(
            ca_cert=ca, client_cert=pki["rogue_client"].cert, client_key=pki["rogue_client"].key
        ),  # signed by another CA
    ):
        with pytest.raises(PredictError) as info:
            await asyncio.to_thread(predict, target, refused)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # The server keeps serving good clients after refusing bad ones.
    assert await asyncio.to_thread(predict, target, good) == 2


async def test_fashion_predict_cli_speaks_mtls(start_app, pki, tmp_path, capsys) -> None:
    from PIL import Image

    app = await start_app(
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=str(pki["ca"].pair.cert),
    )
    image = tmp_path / "shirt.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    argv = [
        "--target",
        f"localhost:{app.port}",
        "--tls-ca",
        str(pki["ca"].pair.cert),
        "--tls-cert",
        str(pki["client"].cert),
        "--tls-key",
        str(pki["client"].key),
        str(image),
    ]
    assert await asyncio.to_thread(predict_main, argv) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["file"] == str(image) and 0 <= line["label"] <= 9


def test_tls_settings_are_validated(pki, tmp_path) -> None:
    cert = str(pki["server"].cert)
    with pytest.raises(ConfigError, match="go together"):
        Settings(tls_cert=cert)
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        Settings(tls_client_ca=cert)
    with pytest.raises(ConfigError, match="no such file"):
        Settings(tls_cert=cert, tls_key=str(tmp_path / "missing.key"))


def test_expired_server_certificate_is_refused_at_start(pki) -> None:
    """An expired certificate used to start without a word, and then every TLS client
    failed its handshake (UNAVAILABLE, `certificate has expired` only in the client's
    debug string). One line at start-up instead."""
    expired = pki["ca"].issue("expired", server=True, expired=True)
    with pytest.raises(ConfigError, match=r"--tls-cert / FASHION_TLS_CERT: .* has expired"):
        Settings(tls_cert=str(expired.cert), tls_key=str(expired.key))
