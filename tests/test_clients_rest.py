"""RestClient over HTTP (scripted server): the 0.38 members, id pass-through, errors, downloads, extraction."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import tinker_sync
from tests.scripted_server import Reply, ScriptedServer
from tinker_sync import types
from tinker_sync._download import ArchiveRefusedError, DownloadError, download_signed_url, safe_extract
from tinker_sync.rest_client import RestClient

T = 10
KEY = "tml-rest-test-key-0123456789"


@pytest.fixture
def api() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def rest(api: ScriptedServer) -> Iterator[RestClient]:
    client = RestClient(base_url=api.url, api_key=KEY)
    yield client
    client.close()


def test_standalone_rest_client_and_capabilities(api: ScriptedServer, rest: RestClient) -> None:
    api.script("/api/v1/get_server_capabilities", Reply(200, {"supported_models": [{"model_name": "m", "x": 1}]}))
    caps = rest.get_server_capabilities().result(T)
    assert caps.supported_models[0].model_name == "m"
    assert api.requests[0].header("X-API-Key") == KEY
    assert rest.get_telemetry() is None
    with pytest.raises(ValueError, match="not both"):
        RestClient(object(), base_url=api.url)  # type: ignore[arg-type]


def test_storage_usage_and_external_urls(api: ScriptedServer, rest: RestClient) -> None:
    api.script("/api/v1/billing/usage/checkpoints/current", Reply(200, {
        "data": [{"checkpoint_count": 2, "size_bytes": 10, "size_gigabytes": 1e-8, "project_id": None}],
        "effective_rate_usd_per_gigabyte_month": None,
    }))
    usage = rest.get_current_checkpoint_storage_usage("proj-1").result(T)
    assert usage.data[0].checkpoint_count == 2 and usage.data[0].project_id is None
    assert api.requests[-1].path.endswith("?project_id=proj-1")
    path = "/api/v1/training_runs/run-1/checkpoints/external_weights/hf/external_weights_urls"
    api.script(path, Reply(200, {"urls": {"model.safetensors": "https://s/x"}, "expires": "2031-01-01T00:00:00Z"}))
    urls = rest.get_external_weights_urls("tinker://run-1/external_weights/hf").result(T)
    assert urls.urls == {"model.safetensors": "https://s/x"}
    with pytest.raises(ValueError, match="external weights"):
        rest.get_external_weights_urls("tinker://run-1/weights/w1")


def test_copy_weights_sends_one_idempotency_key_and_the_token(
    api: ScriptedServer, rest: RestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.script("/api/v1/copy_weights", Reply(503), Reply(200, {"tinker_path": "tinker://run-2/weights/w1"}))
    got = rest.copy_weights("tinker://run-1/weights/w1", "proj-2", ttl_seconds=7200, weights_access_token="tok")
    assert got.result(T) == "tinker://run-2/weights/w1"
    first, second = api.requests_to("/api/v1/copy_weights")
    assert first.json() == {"source_path": "tinker://run-1/weights/w1", "destination_project_id": "proj-2",
                            "ttl_seconds": 7200}
    assert first.header("X-Idempotency-Key") == second.header("X-Idempotency-Key") is not None
    assert first.header("X-Tinker-Weights-Access-Token") == "tok"
    monkeypatch.delenv("TINKER_PROJECT_ID", raising=False)
    with pytest.raises(ValueError, match="TINKER_PROJECT_ID"):
        rest.copy_weights("tinker://run-1/weights/w1")
    monkeypatch.setenv("TINKER_PROJECT_ID", "proj-env")
    api.script("/api/v1/copy_weights", Reply(200, {"tinker_path": "tinker://run-3/weights/w1"}))
    rest.copy_weights("tinker://run-1/weights/w1").result(T)
    assert api.requests_to("/api/v1/copy_weights")[-1].json()["destination_project_id"] == "proj-env"


def test_search_sessions(api: ScriptedServer, rest: RestClient) -> None:
    api.script("/api/v1/sessions/search", Reply(200, {
        "sessions": [{"session_id": "s1", "created_at": "2031-01-01T00:00:00Z", "owner": "u", "project_id": "p",
                      "checkpoints_count": 1, "status": {"type": "active"}, "display_name": None}],
        "next_cursor": None,
    }))
    request = types.SessionSearchRequest(display_name="nightly", owner=types.AccessibleSearchOwner(),
                                         statuses=[types.ActiveSessionStatusQuery()])
    page = rest.search_sessions(request).result(T)
    assert page.sessions[0].status == types.SessionActive() and page.next_cursor is None
    assert api.requests[-1].json() == {"user_metadata": {}, "display_name": "nightly",
                                       "owner": {"type": "accessible"}, "statuses": [{"type": "active"}],
                                       "limit": 50}
    with pytest.raises(TypeError, match="SessionSearchRequest"):
        rest.search_sessions({"display_name": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("checkpoint_id", ["s1", "weights/w1", "sampler_weights/s1", "external_weights/hf"])
def test_checkpoint_ids_pass_through(api: ScriptedServer, rest: RestClient, checkpoint_id: str) -> None:
    path = f"/api/v1/training_runs/run-1/checkpoints/{checkpoint_id}"
    api.script(path, Reply(200, None))
    rest.delete_checkpoint("run-1", checkpoint_id).result(T)
    assert api.requests_to(path)[0].method == "DELETE"


def test_visible_errors_are_tinker_errors(api: ScriptedServer, rest: RestClient) -> None:
    api.default("/api/v1/sessions/s1/trace_export", Reply(200, {"status": "failed", "error": "boom"}))
    with pytest.raises(tinker_sync.TraceExportError, match="boom") as info:
        rest.export_session_trace("s1").result(T)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, tinker_sync.TinkerError)
    api.default("/api/v1/sessions/s2/trace_export", Reply(200, {"status": "pending"}))
    with pytest.raises(TimeoutError) as timeout:
        rest.export_session_trace("s2", poll_interval_s=0.01, timeout_s=0.05).result(T)
    assert isinstance(timeout.value, tinker_sync.TraceExportTimeoutError)
    with pytest.raises(RuntimeError) as who:
        rest.whoami().result(T)
    assert isinstance(who.value, tinker_sync.WhoamiUnavailableError)


def test_every_public_error_is_a_tinker_error() -> None:
    for name in tinker_sync.__all__:
        obj = getattr(tinker_sync, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, tinker_sync.TinkerError), name


# ---- downloads from signed URLs -------------------------------------------------------------------


class _Storage:
    """A storage host that honours Range and cuts the first ``cut`` answers short."""

    def __init__(self, payload: bytes, *, cut: int = 0, ranges: bool = True) -> None:
        self.payload, self.cut, self.ranges = payload, cut, ranges
        self.requests: list[dict[str, str]] = []
        storage = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                storage.requests.append(dict(self.headers.items()))
                start = 0
                rng = self.headers.get("Range")
                if rng and storage.ranges:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(storage.payload) - 1}/{len(storage.payload)}"
                    )
                else:
                    self.send_response(200)
                body = storage.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if storage.cut > 0:
                    storage.cut -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/bucket/file?sig=1"

    def __enter__(self) -> _Storage:  # noqa: PYI034 - typing.Self needs Python 3.11
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_download_resumes_with_range_and_reports_progress(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    seen: list[tuple[int, int | None]] = []
    with _Storage(payload, cut=2) as storage:
        size = download_signed_url(storage.url, tmp_path / "f", progress=lambda d, t: seen.append((d, t)),
                                   sleep=lambda s: None)
    assert size == len(payload) and (tmp_path / "f").read_bytes() == payload
    assert len(storage.requests) == 3 and "Range" not in storage.requests[0]
    resumed_at = [int(r["Range"].removeprefix("bytes=").rstrip("-")) for r in storage.requests[1:]]
    assert 0 < resumed_at[0] < resumed_at[1] < len(payload)  # each retry resumes where the last stopped
    assert seen[-1] == (len(payload), len(payload))
    assert all("X-API-Key" not in r and "Authorization" not in r for r in storage.requests)


def test_download_restarts_when_range_is_ignored_and_gives_up(tmp_path: Path) -> None:
    payload = os.urandom(100_000)
    with _Storage(payload, cut=1, ranges=False) as storage:
        assert download_signed_url(storage.url, tmp_path / "f", sleep=lambda s: None) == len(payload)
    assert (tmp_path / "f").read_bytes() == payload
    with _Storage(payload, cut=5) as storage, pytest.raises(DownloadError, match="3 attempt"):
        download_signed_url(storage.url, tmp_path / "g", max_attempts=3, sleep=lambda s: None)
    with pytest.raises(ValueError, match="non-HTTP"):
        download_signed_url("file:///etc/passwd", tmp_path / "h")


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_safe_extract_caps_the_total_size(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(_tar([_file("zeros.bin", bytes(64 << 20))], mode="w:gz"))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ArchiveRefusedError, match="cap"):
        safe_extract(bomb, tmp_path / "out", max_total_bytes=10 << 20)
    assert not (tmp_path / "out").exists()
    assert safe_extract(bomb, tmp_path / "ok", max_total_bytes=100 << 20) == ["zeros.bin"]
    assert (tmp_path / "ok" / "zeros.bin").stat().st_size == 64 << 20


def test_safe_extract_default_cap_scales_with_the_archive(tmp_path: Path) -> None:
    big = tmp_path / "big.tar.gz"
    big.write_bytes(_tar([_file("zeros.bin", bytes(300 << 20))], mode="w:gz"))  # ~300 KB -> 300 MiB
    with pytest.raises(ArchiveRefusedError, match="cap"):
        safe_extract(big, tmp_path / "out")


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "absolute", "dotdot"])
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, kind: str) -> None:
    info = tarfile.TarInfo({"absolute": "/etc/x", "dotdot": "../x"}.get(kind, "x"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "other"
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar([_file("ok.txt", b"ok"), (info, None)]))
    with pytest.raises(ArchiveRefusedError, match="refusing archive"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_checkpoint_archive(api: ScriptedServer, rest: RestClient, tmp_path: Path) -> None:
    payload = _tar([_file("adapter_config.json", b"{}"), _file("adapter_model.safetensors", b"w" * 1000)])
    with _Storage(payload) as storage:
        archive = "/api/v1/training_runs/run-1/checkpoints/sampler_weights/s1/archive"
        api.script(archive, Reply(302, b"", headers={"Location": storage.url}))
        done = rest.download_checkpoint_archive_from_tinker_path(
            "tinker://run-1/sampler_weights/s1", tmp_path / "ckpt"
        ).result(T)
    assert done == tmp_path / "ckpt" and json.loads((done / "adapter_config.json").read_text()) == {}
    with pytest.raises(FileExistsError):
        rest.download_checkpoint_archive_from_tinker_path("tinker://run-1/sampler_weights/s1", tmp_path / "ckpt")


def test_pydantic_style_answers_parse(api: ScriptedServer, rest: RestClient) -> None:
    # Servers built from the official pydantic models send nulls for unset fields and bare checkpoint ids.
    api.script("/api/v1/training_runs/run-1/checkpoints", Reply(200, {
        "checkpoints": [{"checkpoint_id": "s1", "checkpoint_type": "sampler", "time": "2031-01-01T00:00:00Z",
                         "tinker_path": "tinker://run-1/sampler_weights/s1", "size_bytes": None, "public": None,
                         "user_metadata": None, "expires_at": None}],
        "cursor": None,
    }))
    listed = rest.list_checkpoints("run-1").result(T)
    ckpt = listed.checkpoints[0]
    assert ckpt.checkpoint_id == "s1" and ckpt.public is False and ckpt.size_bytes is None and listed.cursor is None
    api.script("/api/v1/training_runs/run-1/checkpoints/s1", Reply(200, None))
    rest.delete_checkpoint("run-1", ckpt.checkpoint_id).result(T)
