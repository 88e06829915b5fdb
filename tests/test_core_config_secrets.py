"""ClientConfig credential hygiene: clear-text warning, no process-wide key hoarding, redacted reprs."""

from __future__ import annotations

import gc
import logging
import pickle
import uuid

import pytest

from tinker_sync import _config
from tinker_sync._config import ClientConfig


def _key() -> str:
    return f"tml-{uuid.uuid4().hex}"


def _cleartext_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "unencrypted" in r.getMessage()]


def test_warns_once_when_the_key_would_go_over_plain_http_to_a_remote_host(caplog: pytest.LogCaptureFixture) -> None:
    host = f"http://{uuid.uuid4().hex[:8]}.example.com:8000"
    with caplog.at_level(logging.WARNING, logger="tinker_sync"):
        ClientConfig(base_url=host, api_key=_key())
        ClientConfig(base_url=host, api_key=_key())
    msgs = _cleartext_warnings(caplog)
    assert len(msgs) == 1 and host in msgs[0]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:9", "http://[::1]:80", "http://a.localhost", "https://example.com"]
)
def test_no_warning_for_loopback_or_https(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tinker_sync"):
        ClientConfig(base_url=url, api_key=_key())
    assert not _cleartext_warnings(caplog)


def test_warning_and_repr_never_show_url_credentials(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://bob:hunter2pw@{uuid.uuid4().hex[:8]}.example.org"
    with caplog.at_level(logging.WARNING, logger="tinker_sync"):
        cfg = ClientConfig(base_url=url, api_key=_key())
    assert "hunter2pw" not in caplog.text
    assert "hunter2pw" not in repr(cfg)


def test_credential_registry_forgets_a_key_once_no_config_uses_it() -> None:
    key = _key()
    fingerprint = _config._fingerprint(key, {})
    cfg = ClientConfig(base_url="http://127.0.0.1:1", api_key=key)
    copy = pickle.loads(pickle.dumps(cfg))  # resolved from the registry while cfg lives
    assert copy.api_key == key
    assert fingerprint in _config._credentials
    del cfg, copy
    gc.collect()
    assert fingerprint not in _config._credentials
