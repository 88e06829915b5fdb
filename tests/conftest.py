"""Shared test configuration: Hypothesis profiles and the local-server fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # the profiles live beside the type tests
    from tests import _hypothesis_profiles
except ImportError:  # pragma: no cover - only while the module does not exist yet
    _hypothesis_profiles = None
else:
    from hypothesis import settings

    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

TEST_API_KEY = "tml-test-key-0123456789"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (self-signed, valid two days), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def sent_forward_backward(record: Any) -> Any:
    """The ForwardBackwardRequest a recorded ``POST /forward_backward`` carried (a zstd body decompressed)."""
    from tinker_sync._proto import decode_forward_backward_request

    body = record.body
    if {k.lower(): v for k, v in record.headers.items()}.get("content-encoding") == "zstd":
        import zstandard

        body = zstandard.ZstdDecompressor().decompress(body)
    return decode_forward_backward_request(body)


@pytest.fixture
def service(local_server: Any) -> Iterator[Any]:
    """A ServiceClient on ``local_server`` (closed with cancel_pending=True after the test)."""
    from tinker_sync import ServiceClient

    client = ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url)
    try:
        yield client
    finally:
        client.close(cancel_pending=True)


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[object]:
    """A fresh embedded Tinker server on 127.0.0.1 with its own data directory."""
    from tinker_sync.local import LocalTinkerServer

    server = LocalTinkerServer(data_dir=tmp_path / "server-data", long_poll_s=5.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
