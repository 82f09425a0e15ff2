"""The ingress over TLS with a certificate made for the test."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from palyra_py.server.daemon import DaemonError
from palyra_py.testing import running_daemon
from tests.helpers import add_integration, send_signed


def make_cert(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_ingress_serves_https(state_dir: Path) -> None:
    cert, key = make_cert(state_dir)
    async with running_daemon(state_dir, daemon__tls_cert=str(cert),
                              daemon__tls_key=str(key)) as daemon:
        url = daemon.ingress_url_for("gh", local=True)
        assert url.startswith("https://127.0.0.1:")
        connector = aiohttp.UnixConnector(path=str(daemon.socket_path))
        async with aiohttp.ClientSession(connector=connector, base_url="http://admin") as admin:
            await add_integration(admin, "gh")
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
            status, body, _ = await send_signed(http, daemon, "gh", b'{"zen": "x"}')
        assert status == 202 and body["status"] == "accepted"


async def test_tls_needs_both_cert_and_key(state_dir: Path) -> None:
    cert, _ = make_cert(state_dir)
    with pytest.raises(DaemonError, match="both"):
        async with running_daemon(state_dir, daemon__tls_cert=str(cert)):
            pass
