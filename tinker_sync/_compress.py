"""zstd-compressed forward_backward bodies (server flag ``proto_compress_fwdbwd``), via the optional ``zstandard``.

The submit path calls ``encode_fwdbwd()`` on the serialized body and sends the headers it returns
(``Runtime.submit_polled(headers=...)``); when the body went uncompressed (the module is missing) and the
server refuses it, ``explain_refusal()`` (or ``explain_refusals()`` on the call's Future) turns the HTTP
error into one that names the extra to install.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

from ._exceptions import APIStatusError, TinkerError
from ._executor import OnDone, set_exception, set_result

__all__ = [
    "ZSTD_INSTALL_HINT",
    "CompressionUnavailableError",
    "encode_fwdbwd",
    "explain_refusal",
    "explain_refusals",
    "fwdbwd_encoding",
    "zstd_available",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ZSTD_INSTALL_HINT = "pip install 'tinker_sync[zstd]'"
_HINTS = ("zstd", "compress", "content-encoding")  # a 400 that names one of these refused the encoding
_local = threading.local()  # a ZstdCompressor must not be shared between threads
_warned = threading.Event()


class CompressionUnavailableError(TinkerError):
    """The server requires zstd-compressed forward_backward bodies and ``zstandard`` is not installed."""


def _zstd() -> Any:
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def zstd_available() -> bool:
    """True when the ``zstandard`` module can be imported."""
    return _zstd() is not None


def fwdbwd_encoding(server_asks: bool, available: bool) -> Literal["zstd", "identity"]:
    """How a forward_backward body is sent: zstd when the server asks and the module is there (pure)."""
    return "zstd" if server_asks and available else "identity"


def encode_fwdbwd(body: bytes, *, server_asks: bool) -> tuple[bytes, dict[str, str]]:
    """Compress ``body`` if the server asks for it (``proto_compress_fwdbwd``) and zstandard is installed.

    Returns the body to send and the extra headers (``Content-Encoding: zstd`` when compressed). The
    official API server also takes uncompressed bodies, so without the module the body goes as is
    (logged once); a server that refuses it gets ``explain_refusal()``'s error.
    """
    zstd = _zstd() if server_asks else None
    if zstd is None or fwdbwd_encoding(server_asks, True) == "identity":
        if server_asks and not _warned.is_set():
            _warned.set()
            logger.warning(
                "the server asks for zstd-compressed forward_backward bodies; sending them uncompressed "
                "because the zstandard module is not installed (%s)", ZSTD_INSTALL_HINT,
            )
        return body, {}
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstd.ZstdCompressor()
    return compressor.compress(body), {"Content-Encoding": "zstd"}


def explain_refusal(exc: BaseException, *, headers_sent: Mapping[str, str], server_asks: bool) -> BaseException:
    """The error to report for a failed forward_backward POST.

    If the body went uncompressed although the server asked for zstd and the server refused it, this
    is CompressionUnavailableError naming the extra to install (``exc`` as its cause); else ``exc``.
    """
    if (
        server_asks
        and "Content-Encoding" not in headers_sent
        and isinstance(exc, APIStatusError)
        and (exc.status_code == 415 or (exc.status_code == 400 and any(h in str(exc).lower() for h in _HINTS)))
    ):
        err = CompressionUnavailableError(
            f"the server refused an uncompressed forward_backward body (HTTP {exc.status_code}); it requires "
            f"zstd compression (proto_compress_fwdbwd), which needs the zstandard module: {ZSTD_INSTALL_HINT}"
        )
        err.__cause__ = exc
        return err
    return exc


def explain_refusals(fut: Future[T], *, headers_sent: Mapping[str, str], server_asks: bool) -> Future[T]:
    """``fut``, or (when the body went uncompressed although the server asked) a Future whose error is
    passed through ``explain_refusal``. Cancelling the returned Future cancels ``fut``."""
    if not server_asks or "Content-Encoding" in headers_sent:
        return fut
    out: Future[T] = Future()

    def done(f: Future[T]) -> None:
        if f.cancelled():
            out.cancel()
            return
        exc = f.exception()
        if exc is None:
            set_result(out, f.result())
        else:
            set_exception(out, explain_refusal(exc, headers_sent=headers_sent, server_asks=server_asks))

    out.add_done_callback(OnDone(lambda o: fut.cancel() if o.cancelled() else None))
    fut.add_done_callback(OnDone(done))
    return out
