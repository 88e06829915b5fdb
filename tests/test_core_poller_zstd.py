"""zstd forward_backward bodies over real HTTP: the encode helper's body and headers as a server receives them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer
from tinker_sync import _compress
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import APIStatusError
from tinker_sync._runtime import Runtime

KEY = "tml-poller-zstd-0123456789"
FB = "/api/v1/forward_backward"
BODY = b"\x0a\x20" + b"".join(i.to_bytes(4, "little") for i in range(5000))


def _receiver(require_zstd: bool) -> object:
    def handle(rec: RecordedRequest) -> Reply:
        encoding = rec.header("Content-Encoding")
        if encoding == "zstd":
            import zstandard

            data = zstandard.ZstdDecompressor().decompress(rec.body)
        elif require_zstd:
            return Reply(415, {"detail": "forward_backward bodies must be zstd-compressed"})
        else:
            data = rec.body
        return Reply(200, {"request_id": "fb-1", "bytes": len(data), "intact": data == BODY})

    return handle


@pytest.fixture
def runtime() -> Iterator[tuple[ScriptedServer, Runtime]]:
    with ScriptedServer() as srv:
        rt = Runtime(ClientConfig(base_url=srv.url, api_key=KEY))
        try:
            yield srv, rt
        finally:
            rt.close(cancel_pending=True, timeout_s=5.0)


def _send(rt: Runtime, server_asks: bool) -> object:
    data, headers = _compress.encode_fwdbwd(BODY, server_asks=server_asks)
    try:
        return rt.request("POST", FB, body=data, content_type="application/x-protobuf", headers=headers)
    except APIStatusError as exc:
        raise _compress.explain_refusal(exc, headers_sent=headers, server_asks=server_asks) from exc


def test_compressed_when_the_server_asks(runtime: tuple[ScriptedServer, Runtime]) -> None:
    pytest.importorskip("zstandard")
    srv, rt = runtime
    srv.default(FB, _receiver(require_zstd=True))
    assert _send(rt, server_asks=True) == {"request_id": "fb-1", "bytes": len(BODY), "intact": True}
    (rec,) = srv.requests_to(FB)
    assert rec.header("Content-Encoding") == "zstd" and len(rec.body) < len(BODY)
    assert rec.header("Content-Type") == "application/x-protobuf"


def test_plain_when_the_server_does_not_ask(runtime: tuple[ScriptedServer, Runtime]) -> None:
    srv, rt = runtime
    srv.default(FB, _receiver(require_zstd=False))
    assert _send(rt, server_asks=False) == {"request_id": "fb-1", "bytes": len(BODY), "intact": True}
    assert srv.requests_to(FB)[0].header("Content-Encoding") is None


def test_without_zstandard_a_server_that_requires_it_gets_a_named_refusal(
    runtime: tuple[ScriptedServer, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, rt = runtime
    monkeypatch.setattr(_compress, "_zstd", lambda: None)
    srv.default(FB, _receiver(require_zstd=False))
    assert _send(rt, server_asks=True) == {"request_id": "fb-1", "bytes": len(BODY), "intact": True}  # accepted plain
    srv.default(FB, _receiver(require_zstd=True))
    with pytest.raises(_compress.CompressionUnavailableError, match=r"pip install 'tinker_sync\[zstd\]'"):
        _send(rt, server_asks=True)


def _submit(rt: Runtime, server_asks: bool) -> object:
    data, headers = _compress.encode_fwdbwd(BODY, server_asks=server_asks)
    fut = rt.submit_polled(
        FB, None, None, request_type="ForwardBackward", body=data, content_type="application/x-protobuf",
        headers=headers,
    )
    return _compress.explain_refusals(fut, headers_sent=headers, server_asks=server_asks).result(timeout=10)


def test_submit_polled_sends_the_encoding_header(runtime: tuple[ScriptedServer, Runtime]) -> None:
    pytest.importorskip("zstandard")
    srv, rt = runtime
    srv.default(FB, _receiver(require_zstd=True))
    srv.default("/api/v1/retrieve_future", Reply(200, {"loss": 1.0}))
    assert _submit(rt, server_asks=True) == {"loss": 1.0}
    assert srv.requests_to(FB)[0].header("Content-Encoding") == "zstd"


def test_submit_polled_refusal_names_the_extra(
    runtime: tuple[ScriptedServer, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, rt = runtime
    monkeypatch.setattr(_compress, "_zstd", lambda: None)
    srv.default(FB, _receiver(require_zstd=True))
    with pytest.raises(_compress.CompressionUnavailableError, match="zstandard"):
        _submit(rt, server_asks=True)
