"""Pure-logic unit tests of the clients: chunking, metric merging, pagination, tokenizer ids, CLI helpers."""

from __future__ import annotations

import io
import tarfile
from concurrent.futures import CancelledError, Future
from pathlib import Path

import pytest

from tinker_sync import types
from tinker_sync._chunking import (
    chunk_data,
    combine_forward_backward_outputs,
    estimate_datum_bytes,
    reduce_metrics,
)
from tinker_sync._client_future import ClientFuture, forward_client_methods
from tinker_sync.cli import CLIError, _human_size, format_table, safe_extract
from tinker_sync.rest_client import iter_pages
from tinker_sync.tokenizer import (
    decode_model_input,
    get_tokenizer,
    model_input_from_text,
    resolve_tokenizer_id,
)


def _datum(n: int) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(list(range(n))),
        loss_fn_inputs={"target_tokens": list(range(n)), "weights": [1.0] * n},
    )


# ---- size estimate and chunking ---------------------------------------------------------------


def test_estimate_datum_bytes_counts_tokens_and_tensors() -> None:
    # 4 bytes per token + int64 targets (8/elt) + float32 weights (4/elt)
    assert estimate_datum_bytes(_datum(10)) == 10 * 4 + 10 * 8 + 10 * 4


def test_chunk_by_count() -> None:
    data = [_datum(2) for _ in range(7)]
    chunks = chunk_data(data, max_len=3, max_bytes=10**9)
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [d for c in chunks for d in c] == data


def test_chunk_by_bytes_and_oversized_datum_alone() -> None:
    sizes = {"a": 40, "b": 40, "c": 200, "d": 10, "e": 10}
    chunks = chunk_data(list(sizes), max_len=100, max_bytes=100, size_of=sizes.__getitem__)
    assert chunks == [["a", "b"], ["c"], ["d", "e"]]


def test_chunk_rejects_bad_limit() -> None:
    with pytest.raises(ValueError):
        chunk_data([1], max_len=0, size_of=lambda x: 1)


# ---- metric reduction ---------------------------------------------------------------------------


def test_reduce_metrics_all_reductions() -> None:
    m1 = {"loss:sum": 1.0, "lo:min": 3.0, "hi:max": 1.0, "lr:mean": 1.0, "s:slack": 1.0, "h:hash_unordered": 5.0,
          "u:unique": 7.0, "gone:sum": 1.0, "weird:median": 2.0}
    m2 = {"loss:sum": 2.5, "lo:min": 2.0, "hi:max": 4.0, "lr:mean": 4.0, "s:slack": 4.0, "h:hash_unordered": 6.0,
          "u:unique": 8.0}
    out = reduce_metrics([m1, m2], [1, 2])
    assert out["loss:sum"] == 3.5
    assert out["lo:min"] == 2.0 and out["hi:max"] == 4.0
    assert out["lr:mean"] == pytest.approx(3.0)  # (1*1 + 4*2) / 3
    assert out["s:slack"] == pytest.approx(1.0)  # 4 - 3
    assert out["h:hash_unordered"] == 11.0
    assert out["u:unique"] == 7.0 and out["u:unique_2"] == 8.0
    assert "gone:sum" not in out and "weird:median" not in out


def test_hash_is_order_insensitive_and_mean_falls_back_without_weights() -> None:
    a = reduce_metrics([{"h:hash2": 3.0}, {"h:hash2": 9.0}], [1, 1])
    b = reduce_metrics([{"h:hash2": 9.0}, {"h:hash2": 3.0}], [1, 1])
    assert a == b
    assert reduce_metrics([{"x:mean": 2.0}, {"x:mean": 4.0}], [0, 0]) == {"x:mean": 3.0}


def test_reduce_metrics_rejects_malformed_names() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        reduce_metrics([{"a:b:sum": 1.0}], [1])
    with pytest.raises(ValueError, match="exactly one"):
        reduce_metrics([{"loss": 1.0}], [1])


def test_combine_outputs_concatenates_in_order() -> None:
    def out(vals: list[float], loss: float) -> types.ForwardBackwardOutput:
        return types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[{"logprobs": types.TensorData(data=[v], dtype="float32", shape=[1])} for v in vals],
            metrics={"loss:sum": loss},
        )

    merged = combine_forward_backward_outputs([out([1.0, 2.0], 1.0), out([3.0], 2.0)])
    assert [o["logprobs"].data[0] for o in merged.loss_fn_outputs] == [1.0, 2.0, 3.0]
    assert merged.metrics == {"loss:sum": 3.0}
    assert merged.loss_fn_output_type == "ArrayRecord"


# ---- pagination ---------------------------------------------------------------------------------


def _fetcher(total: int, calls: list[tuple[int, int]], *, report_total: bool = True):  # type: ignore[no-untyped-def]
    items = list(range(total))

    def fetch(offset: int, limit: int) -> tuple[list[int], int | None]:
        calls.append((offset, limit))
        return items[offset : offset + limit], (total if report_total else None)

    return fetch


def test_iter_pages_walks_all_pages() -> None:
    calls: list[tuple[int, int]] = []
    assert list(iter_pages(_fetcher(25, calls), page_size=10)) == list(range(25))
    assert calls == [(0, 10), (10, 10), (20, 10)]


def test_iter_pages_exact_multiple_stops_on_total_and_limit() -> None:
    calls: list[tuple[int, int]] = []
    assert list(iter_pages(_fetcher(20, calls), page_size=10)) == list(range(20))
    assert calls == [(0, 10), (10, 10)]  # total_count reached: no empty third page
    calls.clear()
    assert list(iter_pages(_fetcher(20, calls, report_total=False), page_size=10)) == list(range(20))
    assert calls[-1] == (20, 10)  # without a total it needs the short page
    calls.clear()
    assert list(iter_pages(_fetcher(100, calls), page_size=10, limit=15)) == list(range(15))
    assert calls == [(0, 10), (10, 5)]


# ---- tokenizer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tid", "expected"),
    [
        ("Qwen/Qwen3-8B", None, "Qwen/Qwen3-8B"),
        ("Qwen/Qwen3-8B:v1", None, "Qwen/Qwen3-8B"),
        ("org/model/variant", None, "org/model"),
        ("meta-llama/Llama-3.2-1B", None, "thinkingmachineslabinc/meta-llama-3-instruct-tokenizer"),
        ("whatever", "Qwen/Qwen3-8B:v1", "Qwen/Qwen3-8B"),
        ("tinker-sync/tiny-byte", None, "tinker-sync/tiny-byte"),
    ],
)
def test_resolve_tokenizer_id(name: str, tid: str | None, expected: str) -> None:
    assert resolve_tokenizer_id(name, tid) == expected


def test_packaged_tokenizer_roundtrip_and_cache() -> None:
    tok = get_tokenizer("tinker-sync/tiny-byte")
    assert get_tokenizer("tinker-sync/tiny-byte") is tok
    ids = tok.encode("héllo")
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == "héllo"
    mi = model_input_from_text(tok, "abc")
    assert decode_model_input(tok, mi) == "abc"


def test_tokenizer_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer.json"):
        get_tokenizer(str(tmp_path))
    with pytest.raises(RuntimeError, match="local tokenizer.json"):
        get_tokenizer("TML/secret")
    with pytest.raises(ValueError):
        get_tokenizer("")


# ---- CLI helpers ------------------------------------------------------------------------------


def _tar(path: Path, members: list[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    with tarfile.open(path, "w") as tar:
        for m in members:
            if m.isfile():
                m.size = len(payload)
                tar.addfile(m, io.BytesIO(payload))
            else:
                tar.addfile(m)
    return path


def test_safe_extract_ok(tmp_path: Path) -> None:
    d = tarfile.TarInfo("sub")
    d.type = tarfile.DIRTYPE
    archive = _tar(tmp_path / "a.tar", [tarfile.TarInfo("adapter_config.json"), d, tarfile.TarInfo("sub/w.bin")])
    names = safe_extract(archive, tmp_path / "out")
    assert sorted(names) == ["adapter_config.json", "sub/w.bin"]
    assert (tmp_path / "out" / "sub" / "w.bin").read_bytes() == b"x"


@pytest.mark.parametrize("bad", ["../evil", "/abs/evil", "a/../../evil", "sym", "hard"])
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, bad: str) -> None:
    if bad == "sym":
        m = tarfile.TarInfo("link")
        m.type = tarfile.SYMTYPE
        m.linkname = "/etc/passwd"
    elif bad == "hard":
        m = tarfile.TarInfo("link")
        m.type = tarfile.LNKTYPE
        m.linkname = "adapter_config.json"
    else:
        m = tarfile.TarInfo(bad)
    archive = _tar(tmp_path / "a.tar", [tarfile.TarInfo("ok.txt"), m])
    with pytest.raises(CLIError, match="refusing"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing extracted
    assert not (tmp_path / "evil").exists()


def test_format_table_and_sizes() -> None:
    text = format_table("T", ["A", "Long header"], [["x", 1], ["yyyy", 22]])
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].startswith("A     Long header")
    assert _human_size(10) == "10 B" and _human_size(2048) == "2.0 KB" and _human_size(None) == "-"


# ---- ClientFuture: a Future of a client that is also usable as the client ---------------------------


class _Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self._secret = "s"

    def greet(self, who: str, *, punct: str = "!") -> str:
        """Say hello."""
        return f"{self.name} greets {who}{punct}"


class _ClientFuture(ClientFuture[_Client], _Client):
    pass


forward_client_methods(_ClientFuture, _Client)


def test_client_future_forwards_methods_and_attributes_once_resolved() -> None:
    fut = _ClientFuture()
    assert isinstance(fut, Future) and isinstance(fut, _Client)
    assert repr(fut) == "<_ClientFuture: pending>"
    fut.set_result(_Client("a"))
    assert fut.greet("b", punct="?") == "a greets b?" and fut.name == "a"
    assert "Say hello." in (_ClientFuture.greet.__doc__ or "")
    with pytest.raises(AttributeError):
        fut._secret  # noqa: B018 - private attributes are not forwarded
    assert repr(fut).startswith("<_ClientFuture: <")


def test_client_future_failure_and_cancellation_reach_every_use() -> None:
    failed = _ClientFuture.following(_failed(ValueError("no model")))
    assert "failed: ValueError('no model')" in repr(failed)
    with pytest.raises(ValueError, match="no model"):
        failed.greet("x")
    with pytest.raises(ValueError, match="no model"):
        failed.name  # noqa: B018
    source: Future[_Client] = Future()
    follower = _ClientFuture.following(source)
    source.cancel()
    assert follower.cancelled() and repr(follower) == "<_ClientFuture: cancelled>"
    with pytest.raises(CancelledError):
        follower.greet("x")


def _failed(exc: BaseException) -> Future[_Client]:
    fut: Future[_Client] = Future()
    fut.set_exception(exc)
    return fut
