"""Downloads from signed URLs (archives, traces, external weights) and safe tar extraction.

The one place besides ``_transport`` that imports ``requests``: streamed, resumable GETs of signed
storage URLs are what it is good at, and such a URL is its own credential (no API key, no cookies,
no proxy credentials from the environment are ever sent with it).
"""

from __future__ import annotations

import logging
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ._exceptions import TinkerError

__all__ = [
    "ArchiveRefusedError",
    "DownloadError",
    "ProgressCallback",
    "download_signed_url",
    "safe_extract",
    "tqdm_progress",
]

logger = logging.getLogger(__name__)

# progress(bytes_done, bytes_total or None)
ProgressCallback = Callable[[int, "int | None"], None]

_CHUNK_BYTES = 1 << 16
_DEFAULT_ATTEMPTS = 5
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Extraction cap when none is given: 100x the archive size, at least 256 MiB. Checkpoint files
# (safetensors, optimizer state) barely compress, so a real archive stays far below it, while a
# 1 MB archive cannot unpack to gigabytes.
_DEFAULT_RATIO = 100
_DEFAULT_MIN_CAP = 256 << 20


class DownloadError(TinkerError, OSError):
    """A signed-URL download failed (HTTP status, connection, or short body after every retry)."""


class ArchiveRefusedError(TinkerError, ValueError):
    """A tar archive was refused before anything was extracted (unsafe member or too big)."""


def tqdm_progress(desc: str) -> ProgressCallback | None:
    """A progress callback drawing a tqdm bar, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    bar: Any = None

    def update(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return update


def _session() -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # no ~/.netrc or proxy credentials: the signed URL is the only credential
    session.headers["User-Agent"] = "tinker-sync"
    return session


def _total_from(resp: Any, offset: int) -> int | None:
    if resp.status_code == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    if resp.headers.get("Content-Encoding") or not (length and length.isdigit()):
        return None  # a decoded body's size is not the encoded Content-Length
    return offset + int(length)


def download_signed_url(
    url: str,
    target: str | os.PathLike[str],
    *,
    timeout_s: float = 60.0,
    progress: ProgressCallback | None = None,
    max_attempts: int = _DEFAULT_ATTEMPTS,
    sleep: Callable[[float], Any] | None = None,
) -> int:
    """Stream ``url`` into ``target``; returns the byte count.

    Connection errors, short bodies and 408/425/429/5xx are retried up to ``max_attempts`` times with
    exponential backoff; a retry resumes with a ``Range`` request when the server supports it
    (206), else starts over. ``timeout_s`` bounds each connect and each read, not the whole download.

    Raises:
        ValueError: ``url`` is not http(s).
        DownloadError: a final HTTP status, or the retries ran out.
    """
    import requests

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"refusing to download from a non-HTTP URL: {str(url)[:60]!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    wait = sleep if sleep is not None else threading.Event().wait
    done = 0
    last_error = "no attempt made"
    with _session() as session, open(target, "wb") as fh:
        for attempt in range(max_attempts):
            if attempt:
                wait(min(30.0, 0.5 * 2**attempt))
            headers = {"Range": f"bytes={done}-"} if done else {}
            try:
                with session.get(url, headers=headers, stream=True, timeout=timeout_s, allow_redirects=True) as resp:
                    if resp.status_code in _RETRY_STATUSES:
                        last_error = f"HTTP {resp.status_code}"
                        continue
                    if resp.status_code not in (200, 206):
                        raise DownloadError(f"download failed: HTTP {resp.status_code} from the storage host")
                    if resp.status_code == 200 and done:
                        fh.seek(0)  # the server ignored Range: start over
                        fh.truncate()
                        done = 0
                    total = _total_from(resp, done)
                    for block in resp.iter_content(_CHUNK_BYTES):
                        fh.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                    if total is None or done >= total:
                        return done
                    last_error = f"connection closed after {done} of {total} bytes"
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                last_error = type(exc).__name__  # never the URL: it is a credential
            logger.info("download attempt %d failed (%s); retrying", attempt + 1, last_error)
    raise DownloadError(f"download failed after {max_attempts} attempt(s): {last_error}")


def _refuse_member(m: tarfile.TarInfo, dest: Path) -> None:
    name = m.name
    if m.issym() or m.islnk():
        raise ArchiveRefusedError(f"refusing archive: member {name!r} is a link")
    if m.issparse() or not (m.isfile() or m.isdir()):
        raise ArchiveRefusedError(f"refusing archive: member {name!r} is not a regular file or directory")
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or name.startswith(("/", "\\")) or ".." in pure.parts or "\\" in name:
        raise ArchiveRefusedError(f"refusing archive: member {name!r} has an unsafe path")
    target = (dest / name).resolve()
    if target != dest and dest not in target.parents:
        raise ArchiveRefusedError(f"refusing archive: member {name!r} would escape the destination")


def safe_extract(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, max_total_bytes: int | None = None
) -> list[str]:
    """Extract a tar archive (any compression) into ``dest``; returns the extracted file names.

    Refused before anything is written: links, devices, fifos, sparse files, absolute paths, paths
    escaping ``dest``, and archives whose files add up to more than ``max_total_bytes`` (default:
    100x the archive's size, at least 256 MiB). Where Python has tarfile's ``data`` filter it also
    applies (safe permissions, no ownership changes).

    Raises:
        ArchiveRefusedError: the archive was refused (nothing extracted).
    """
    dest_path = Path(dest).resolve()
    cap = max_total_bytes
    if cap is None:
        cap = max(_DEFAULT_MIN_CAP, _DEFAULT_RATIO * os.path.getsize(archive))
    with tarfile.open(archive, "r") as tar:
        members = tar.getmembers()
        for m in members:
            _refuse_member(m, dest_path)
        total = sum(m.size for m in members if m.isfile())
        if total > cap:
            raise ArchiveRefusedError(
                f"refusing archive: its files add up to {total} bytes, over the {cap}-byte cap "
                "(pass max_total_bytes to allow more)"
            )
        dest_path.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest_path, members=members, filter="data")
        else:  # pragma: no cover - Python without extraction filters (< 3.10.12 / 3.11.4)
            _extract_plain(tar, members, dest_path)
    return [m.name for m in members if m.isfile()]


def _extract_plain(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    import shutil

    for m in members:
        target = dest / m.name
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        if src is not None:
            with src, open(target, "wb") as fh:
                shutil.copyfileobj(src, fh)
