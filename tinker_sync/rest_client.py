"""RestClient: training runs, checkpoints, sessions and other direct REST resources (docs/protocol.rst §8)."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

from . import types
from ._download import ProgressCallback, download_signed_url, safe_extract
from ._exceptions import APIResponseValidationError, APIStatusError, TinkerError
from ._executor import chain
from ._retry import SERVER_ERRORS, parse_http_date

if TYPE_CHECKING:
    from ._runtime import Runtime
    from ._transport import HTTPResponse

__all__ = [
    "RestClient",
    "TraceExportError",
    "TraceExportTimeoutError",
    "WhoamiUnavailableError",
    "archive_url_from_response",
    "download_signed_url",
    "iter_pages",
    "whoami_from_jwt",
]

logger = logging.getLogger(__name__)

_UTC = _dt.timezone.utc

T = TypeVar("T")

_ACCESS_SCOPES = ("owned", "accessible")
# Statuses retried by calls whose 409 is a final answer ("already public", ...): the default minus 409.
_FINAL_409 = frozenset({408, 429}) | SERVER_ERRORS
# The archive request while the archive may still be building: 503 is handled by its own slower loop.
_ARCHIVE_RETRY = frozenset({408, 409, 429}) | (SERVER_ERRORS - {503})
_ARCHIVE_BUILDING_RETRY_S = 30.0
_ARCHIVE_BUILDING_ATTEMPTS = 6
_ARCHIVE_STILL_RUNNING_S = 150.0
_ARCHIVE_DEFAULT_EXPIRY_S = 15 * 60
_TRACE_POLL_INTERVAL_S = 5.0
_AUDIT_EVENT_TYPES = ("all", "checkpoints", "projects", "teams", "organizations")  # 0.25 knows the first two


def iter_pages(
    fetch: Callable[[int, int], tuple[list[T], int | None]], *, page_size: int, limit: int | None = None
) -> Iterator[T]:
    """Walk an offset/limit listing; ``fetch(offset, limit) -> (items, total_count or None)``.

    Stops after ``limit`` items (None = all), on a short or empty page, or when ``offset`` reaches the
    server's ``total_count``.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    offset = 0
    yielded = 0
    while limit is None or yielded < limit:
        want = page_size if limit is None else min(page_size, limit - yielded)
        items, total = fetch(offset, want)
        for item in items:
            if limit is not None and yielded >= limit:
                return
            yield item
            yielded += 1
        offset += len(items)
        if len(items) < want or (total is not None and offset >= total):
            return


def archive_url_from_response(resp: HTTPResponse, request_url: str) -> types.CheckpointArchiveUrlResponse:
    """Read either archive answer: a 3xx with ``Location`` (+ ``Expires``) or a 2xx ``{"url", "expires"}``."""
    if 300 <= resp.status < 400:
        location = resp.headers.get("location")
        if not location:
            raise APIResponseValidationError(
                f"the archive endpoint answered {resp.status} without a Location header", body=resp.content[:1000],
                expected_type="CheckpointArchiveUrlResponse",
            )
        expires = parse_http_date(resp.headers.get("expires"))
        if expires is None:
            expires = _dt.datetime.now(_UTC) + _dt.timedelta(seconds=_ARCHIVE_DEFAULT_EXPIRY_S)
        return types.CheckpointArchiveUrlResponse(url=urljoin(request_url, location), expires=expires)
    from . import _serde

    result: types.CheckpointArchiveUrlResponse = _serde.loads(resp.content, types.CheckpointArchiveUrlResponse)
    return result


class TraceExportError(TinkerError, RuntimeError):
    """The server could not export a session trace (``export_session_trace``)."""


class TraceExportTimeoutError(TinkerError, TimeoutError):
    """A session trace export was not ready in time (``export_session_trace``)."""


class WhoamiUnavailableError(TinkerError, RuntimeError):
    """``whoami`` has no JWT credential to read the caller's identity from."""


def _check_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    if "/" in value and name != "checkpoint_id":
        raise ValueError(f"{name} must not contain '/', got {value!r}")
    return str(value)


def _check_page(limit: Any, offset: Any) -> None:
    for name, v, lo in (("limit", limit, 1), ("offset", offset, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _check_scope(scope: Any) -> str:
    if scope not in _ACCESS_SCOPES:
        raise ValueError(f"access_scope must be one of {_ACCESS_SCOPES}, got {scope!r}")
    return str(scope)


def _check_checkpoint_id(value: Any) -> str:
    # Passed through as the official SDK does: "weights/NAME", "sampler_weights/NAME", "external_weights/NAME"
    # or a bare id ("s1") as servers built from the official models list them; the server judges it.
    return _check_str(value, "checkpoint_id")


def _parse(path: str) -> types.ParsedCheckpointTinkerPath:
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise ValueError(f"Invalid tinker path: {path!r} (expected tinker://RUN/weights/NAME or tinker://RUN/sampler_weights/NAME)")
    return types.ParsedCheckpointTinkerPath.from_tinker_path(path)


def _utc_hour(value: Any, name: str) -> str:
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{name} must be an ISO-8601 datetime, got {value!r}") from exc
    if not isinstance(value, _dt.datetime):
        raise TypeError(f"{name} must be a datetime or ISO-8601 str, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return str(value.astimezone(_UTC).isoformat()).replace("+00:00", "Z")


class RestClient:
    """Direct REST calls; each returns a ``concurrent.futures.Future`` (``iter_*`` are blocking generators).

    ``RestClient(base_url=..., api_key=...)`` works on its own (both default to the environment, as
    ``ServiceClient`` does); no session is created. ``ServiceClient.create_rest_client()`` shares the
    service's connections instead. Arguments (ids, tinker paths, pagination) are checked in the
    caller's thread: ValueError/TypeError immediately, nothing sent. HTTP errors (e.g. NotFoundError)
    come through the Future.
    """

    def __init__(
        self, _runtime: Runtime | None = None, *, base_url: str | None = None, api_key: str | None = None
    ) -> None:
        if _runtime is not None and (base_url is not None or api_key is not None):
            raise ValueError("RestClient takes a runtime or base_url/api_key, not both")
        self._owns_runtime = _runtime is None
        if _runtime is None:
            from ._config import ClientConfig
            from ._runtime import Runtime

            _runtime = Runtime(ClientConfig.from_env(api_key=api_key, base_url=base_url))
        self._runtime = _runtime

    def close(self, *, cancel_pending: bool = False, timeout_s: float | None = 300.0) -> None:
        """Close a standalone RestClient (one from a ServiceClient closes with it).

        A clean close waits at most ``timeout_s`` for pending calls and background tasks (archive
        builds, trace exports), then fails what is left with ClientClosedError; ``cancel_pending=True``
        fails them at once.
        """
        if self._owns_runtime:
            self._runtime.close(cancel_pending=cancel_pending, timeout_s=timeout_s)

    def __enter__(self) -> RestClient:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_telemetry(self) -> None:
        """Always None: tinker_sync collects no telemetry."""

    def get_server_capabilities(self) -> Future[types.GetServerCapabilitiesResponse]:
        """The models the server offers. Returns Future[GetServerCapabilitiesResponse]."""
        return self._get("/api/v1/get_server_capabilities", types.GetServerCapabilitiesResponse)

    def _get(self, path: str, response_type: type | None, params: Mapping[str, Any] | None = None) -> Future[Any]:
        return self._runtime.submit_request("GET", path, params=params, response_type=response_type)

    def _ckpt_path(self, training_run_id: str, checkpoint_id: str) -> str:
        _check_str(training_run_id, "training_run_id")
        _check_checkpoint_id(checkpoint_id)
        return f"/api/v1/training_runs/{training_run_id}/checkpoints/{checkpoint_id}"

    # ---- training runs ------------------------------------------------------------------
    def list_training_runs(
        self, limit: int = 20, offset: int = 0, access_scope: str = "owned", project_id: str | None = None
    ) -> Future[types.TrainingRunsResponse]:
        """One page of training runs. Returns Future[TrainingRunsResponse] (with ``cursor``)."""
        _check_page(limit, offset)
        params: dict[str, Any] = {"limit": limit, "offset": offset, "access_scope": _check_scope(access_scope)}
        if project_id is not None:
            params["project_id"] = _check_str(project_id, "project_id")
        return self._get("/api/v1/training_runs", types.TrainingRunsResponse, params)

    def iter_training_runs(
        self, *, page_size: int = 100, limit: int | None = None, access_scope: str = "owned",
        project_id: str | None = None, timeout_s: float | None = 120.0,
    ) -> Iterator[types.TrainingRun]:
        """All training runs, page by page (blocking generator)."""
        _check_scope(access_scope)

        def fetch(offset: int, lim: int) -> tuple[list[types.TrainingRun], int | None]:
            resp = self.list_training_runs(lim, offset, access_scope, project_id).result(timeout_s)
            return list(resp.training_runs), resp.cursor.total_count

        return iter_pages(fetch, page_size=page_size, limit=limit)

    def get_training_run(self, training_run_id: str, access_scope: str = "owned") -> Future[types.TrainingRun]:
        """Returns Future[TrainingRun]."""
        _check_str(training_run_id, "training_run_id")
        return self._get(
            f"/api/v1/training_runs/{training_run_id}", types.TrainingRun, {"access_scope": _check_scope(access_scope)}
        )

    def get_training_run_by_tinker_path(
        self, tinker_path: str, access_scope: str = "owned"
    ) -> Future[types.TrainingRun]:
        """The training run owning a checkpoint path. Returns Future[TrainingRun]."""
        return self.get_training_run(_parse(tinker_path).training_run_id, access_scope)

    def get_weights_info_by_tinker_path(self, tinker_path: str) -> Future[types.WeightsInfoResponse]:
        """Base model and LoRA settings of a checkpoint. Returns Future[WeightsInfoResponse]."""
        _parse(tinker_path)
        return self._runtime.submit_request(
            "POST", "/api/v1/weights_info", body=types.WeightsInfoRequest(tinker_path=tinker_path),
            response_type=types.WeightsInfoResponse,
        )

    # ---- checkpoints ----------------------------------------------------------------------
    def list_checkpoints(self, training_run_id: str) -> Future[types.CheckpointsListResponse]:
        """All checkpoints (both kinds) of one run. Returns Future[CheckpointsListResponse]."""
        _check_str(training_run_id, "training_run_id")
        return self._get(f"/api/v1/training_runs/{training_run_id}/checkpoints", types.CheckpointsListResponse)

    def list_user_checkpoints(self, limit: int = 100, offset: int = 0) -> Future[types.CheckpointsListResponse]:
        """One page of all the user's checkpoints, newest first. Returns Future[CheckpointsListResponse]."""
        _check_page(limit, offset)
        return self._get("/api/v1/checkpoints", types.CheckpointsListResponse, {"limit": limit, "offset": offset})

    def iter_user_checkpoints(
        self, *, page_size: int = 1000, limit: int | None = None, timeout_s: float | None = 120.0
    ) -> Iterator[types.Checkpoint]:
        """All the user's checkpoints, page by page (blocking generator)."""

        def fetch(offset: int, lim: int) -> tuple[list[types.Checkpoint], int | None]:
            resp = self.list_user_checkpoints(lim, offset).result(timeout_s)
            return list(resp.checkpoints), (resp.cursor.total_count if resp.cursor is not None else None)

        return iter_pages(fetch, page_size=page_size, limit=limit)

    def delete_checkpoint(self, training_run_id: str, checkpoint_id: str) -> Future[None]:
        """Delete one checkpoint (owner only). Returns Future[None].

        Connection errors, 408, 429 and 5xx are retried; 409 is a final answer. A 404 that answers a
        resend after an attempt whose answer was lost counts as success (that attempt deleted it); a 404
        on the first attempt fails the Future with NotFoundError.
        """
        path = self._ckpt_path(training_run_id, checkpoint_id)
        return chain(
            self._runtime.submit_request("DELETE", path, retry_statuses=_FINAL_409, success_on_resend=(404,)),
            lambda _r: None,
        )

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> Future[None]:
        """Delete the checkpoint at ``tinker_path``. Returns Future[None]."""
        p = _parse(tinker_path)
        return self.delete_checkpoint(p.training_run_id, p.checkpoint_id)

    def publish_checkpoint_from_tinker_path(self, tinker_path: str) -> Future[None]:
        """Make a checkpoint public. Returns Future[None]; ConflictError (409) if it already was.

        Connection errors, 408, 429 and 5xx are retried, 409 ("already public") is not. A 409 that
        answers a resend after a lost answer counts as success (the earlier attempt published it).
        """
        p = _parse(tinker_path)
        path = self._ckpt_path(p.training_run_id, p.checkpoint_id) + "/publish"
        return chain(
            # resending is safe: a 409 on the resend means the lost first attempt published it
            self._runtime.submit_request(
                "POST", path, retry_statuses=_FINAL_409, success_on_resend=(409,), idempotent=True
            ),
            lambda _r: None,
        )

    def unpublish_checkpoint_from_tinker_path(self, tinker_path: str) -> Future[None]:
        """Make a checkpoint private again. Returns Future[None]; ConflictError (409) if it already was.

        Retries like ``publish_checkpoint_from_tinker_path``.
        """
        p = _parse(tinker_path)
        path = self._ckpt_path(p.training_run_id, p.checkpoint_id) + "/publish"
        return chain(
            self._runtime.submit_request("DELETE", path, retry_statuses=_FINAL_409, success_on_resend=(409,)),
            lambda _r: None,
        )

    def set_checkpoint_ttl_from_tinker_path(self, tinker_path: str, ttl_seconds: int | None) -> Future[None]:
        """Set (or with None remove) a checkpoint's expiry. Returns Future[None].

        The server accepts 1 hour (3600) to 10 years and answers BadRequestError (400) outside that.
        """
        p = _parse(tinker_path)
        if ttl_seconds is not None and (
            isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0
        ):
            raise ValueError(f"ttl_seconds must be a positive int, or None to remove the expiry; got {ttl_seconds!r}")
        path = self._ckpt_path(p.training_run_id, p.checkpoint_id) + "/ttl"
        body = {"ttl_seconds": ttl_seconds}  # null must be sent explicitly to remove the expiry
        # A PUT is idempotent (resending sets the same value); 409 is a final answer, not retried.
        return chain(self._runtime.submit_request("PUT", path, body=body, retry_statuses=_FINAL_409), lambda _r: None)

    def get_checkpoint_archive_url(
        self, training_run_id: str, checkpoint_id: str, *, building_retry_s: float = _ARCHIVE_BUILDING_RETRY_S,
        building_attempts: int = _ARCHIVE_BUILDING_ATTEMPTS,
    ) -> Future[types.CheckpointArchiveUrlResponse]:
        """Signed download URL of a checkpoint archive. Returns Future[CheckpointArchiveUrlResponse].

        Accepts both answers of docs/protocol.rst §8.3: a 302 redirect (``Location`` = the signed URL, optional
        ``Expires``, default now + 15 min), which is never followed, so the API key stays with the API
        host, and a 200 ``{"url", "expires"}``. A 503 means "still building": asked again every
        ``building_retry_s`` up to ``building_attempts`` times, then the ordinary retry policy applies.
        Download the URL WITHOUT the API key (it is signed); see ``download_signed_url``.
        """
        if not building_retry_s >= 0:
            raise ValueError(f"building_retry_s must be >= 0, got {building_retry_s!r}")
        if isinstance(building_attempts, bool) or not isinstance(building_attempts, int) or building_attempts < 1:
            raise ValueError(f"building_attempts must be an int >= 1, got {building_attempts!r}")
        path = self._ckpt_path(training_run_id, checkpoint_id) + "/archive"
        label = f"{training_run_id}/{checkpoint_id}"
        return self._runtime.spawn(
            lambda: self._archive_url(path, label, building_retry_s, building_attempts),
            name=f"checkpoint archive {label}",
        )

    def _archive_url(
        self, path: str, label: str, building_retry_s: float, building_attempts: int
    ) -> types.CheckpointArchiveUrlResponse:
        runtime = self._runtime
        logger.info("Creating checkpoint archive for %s (this may take a while)", label)
        started = time.monotonic()
        warned = False
        for attempt in range(building_attempts):
            last = attempt == building_attempts - 1
            try:
                resp = runtime.request(
                    "GET", path, return_response=True, retry_statuses=None if last else _ARCHIVE_RETRY
                )
            except APIStatusError as exc:
                if exc.status_code != 503 or last:
                    raise
                if not warned and time.monotonic() - started >= _ARCHIVE_STILL_RUNNING_S:
                    warned = True
                    logger.info("Creating checkpoint archive for %s: still running", label)
                runtime.pause(building_retry_s)  # interrupted (ClientClosedError) by close()
                continue
            return archive_url_from_response(resp, runtime.transport.url(path))
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises

    def get_checkpoint_archive_url_from_tinker_path(
        self, tinker_path: str, *, building_retry_s: float = _ARCHIVE_BUILDING_RETRY_S,
        building_attempts: int = _ARCHIVE_BUILDING_ATTEMPTS,
    ) -> Future[types.CheckpointArchiveUrlResponse]:
        """Signed download URL of the checkpoint at ``tinker_path`` (see ``get_checkpoint_archive_url``)."""
        p = _parse(tinker_path)
        return self.get_checkpoint_archive_url(
            p.training_run_id, p.checkpoint_id, building_retry_s=building_retry_s, building_attempts=building_attempts
        )

    def get_external_weights_urls(self, tinker_path: str) -> Future[types.ExternalWeightsUrlsResponse]:
        """Signed download URLs, one per file, of an external-weights checkpoint.

        Returns Future[ExternalWeightsUrlsResponse] (``urls``: file path -> URL, valid until ``expires``).
        Download them without credentials (``download_signed_url``).

        Raises:
            ValueError: ``tinker_path`` is not ``tinker://RUN/external_weights/NAME``.
        """
        p = _parse(tinker_path)
        if not p.checkpoint_id.startswith("external_weights/"):
            raise ValueError(
                "get_external_weights_urls only accepts external weights checkpoints "
                f"(tinker://<training_run_id>/external_weights/<name>), got {tinker_path!r}"
            )
        path = self._ckpt_path(p.training_run_id, p.checkpoint_id) + "/external_weights_urls"
        return self._get(path, types.ExternalWeightsUrlsResponse)

    def copy_weights(
        self,
        path: str,
        destination_project_id: str | None = None,
        *,
        ttl_seconds: int | None = None,
        weights_access_token: str | None = None,
    ) -> Future[str]:
        """Copy a checkpoint into a project (storage is shared). Returns Future[str]: the copy's tinker path.

        ``destination_project_id`` defaults to ``TINKER_PROJECT_ID``; ``weights_access_token`` reads a
        checkpoint of another account. One idempotency key covers every retry, so a resend after a lost
        answer cannot make two copies.

        Raises:
            ValueError: no destination project (argument or ``TINKER_PROJECT_ID``), or a bad ``path``.
        """
        _parse(path)
        if destination_project_id is None:
            destination_project_id = os.environ.get("TINKER_PROJECT_ID") or None
        if destination_project_id is None:
            raise ValueError("Provide destination_project_id or set TINKER_PROJECT_ID")
        request = types.CopyWeightsRequest(
            source_path=path, destination_project_id=destination_project_id, ttl_seconds=ttl_seconds
        )
        return self.submit_copy_weights(request, weights_access_token)

    def submit_copy_weights(
        self, request: types.CopyWeightsRequest, weights_access_token: str | None = None
    ) -> Future[str]:
        """Send a CopyWeightsRequest (``ServiceClient.copy_weights`` uses the session form). Returns Future[str]."""
        if not isinstance(request, types.CopyWeightsRequest):
            raise TypeError(f"request must be a types.CopyWeightsRequest, got {type(request).__name__}")
        headers = {"X-Tinker-Weights-Access-Token": weights_access_token} if weights_access_token else None
        fut = self._runtime.submit_request(
            "POST", "/api/v1/copy_weights", body=request, response_type=types.CopyWeightsResponse,
            idempotency_key=str(uuid.uuid4()), idempotent=True, headers=headers,
        )
        return chain(fut, lambda r: r.tinker_path)

    def download_checkpoint_archive_from_tinker_path(
        self,
        tinker_path: str,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        max_total_bytes: int | None = None,
        overwrite: bool = False,
    ) -> Future[Path]:
        """Download the checkpoint's archive and extract it into the directory ``dest``.

        The signed URL is fetched without credentials (streamed, resumed on errors; ``progress(done,
        total)`` is called as bytes arrive, e.g. ``tinker_sync.tqdm_progress("ckpt")``) and extracted
        with ``safe_extract`` (links, unsafe paths and more than ``max_total_bytes`` refused) into a
        staging directory next to ``dest``, renamed into place when complete. Returns Future[Path].

        Raises:
            FileExistsError: ``dest`` exists and ``overwrite`` is False (immediately).
        """
        target = Path(dest)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
        p = _parse(tinker_path)
        path = self._ckpt_path(p.training_run_id, p.checkpoint_id) + "/archive"

        def fetch() -> Path:
            resp = self._archive_url(path, tinker_path, _ARCHIVE_BUILDING_RETRY_S, _ARCHIVE_BUILDING_ATTEMPTS)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tinker-download-") as tmp:
                archive = Path(tmp) / "checkpoint.tar"
                download_signed_url(resp.url, archive, progress=progress, sleep=self._runtime.pause)
                staging = Path(tmp) / "extracted"
                safe_extract(archive, staging, max_total_bytes=max_total_bytes)
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            return target

        return self._runtime.spawn(fetch, name=f"checkpoint download {tinker_path}")

    # ---- sessions and samplers ----------------------------------------------------------
    def list_sessions(
        self, limit: int = 20, offset: int = 0, access_scope: str = "owned"
    ) -> Future[types.ListSessionsResponse]:
        """One page of session ids. Returns Future[ListSessionsResponse]."""
        _check_page(limit, offset)
        return self._get(
            "/api/v1/sessions", types.ListSessionsResponse,
            {"limit": limit, "offset": offset, "access_scope": _check_scope(access_scope)},
        )

    def iter_sessions(
        self, *, page_size: int = 100, limit: int | None = None, access_scope: str = "owned",
        timeout_s: float | None = 120.0,
    ) -> Iterator[str]:
        """All session ids (blocking generator; stops on a short page)."""
        _check_scope(access_scope)

        def fetch(offset: int, lim: int) -> tuple[list[str], int | None]:
            return list(self.list_sessions(lim, offset, access_scope).result(timeout_s).sessions), None

        return iter_pages(fetch, page_size=page_size, limit=limit)

    def get_session(self, session_id: str, access_scope: str = "owned") -> Future[types.GetSessionResponse]:
        """Training runs and samplers of a session. Returns Future[GetSessionResponse]."""
        _check_str(session_id, "session_id")
        return self._get(
            f"/api/v1/sessions/{session_id}", types.GetSessionResponse, {"access_scope": _check_scope(access_scope)}
        )

    def get_sampler(self, sampler_id: str) -> Future[types.GetSamplerResponse]:
        """Returns Future[GetSamplerResponse] (``base_model``, ``model_path``)."""
        _check_str(sampler_id, "sampler_id")
        return self._get(f"/api/v1/samplers/{sampler_id}", types.GetSamplerResponse)

    def assign_session_project(self, session_id: str, project_id: str) -> Future[None]:
        """Move a session into a project. Returns Future[None]."""
        _check_str(session_id, "session_id")
        _check_str(project_id, "project_id")
        return chain(
            self._runtime.submit_request(
                "PUT", f"/api/v1/sessions/{session_id}/project",
                body=types.AssignSessionProjectRequest(project_id=project_id),
            ),
            lambda _r: None,
        )

    def export_session_trace(
        self, session_id: str, *, poll_interval_s: float = _TRACE_POLL_INTERVAL_S, timeout_s: float = 600.0
    ) -> Future[str]:
        """Ask for a Perfetto trace of a session and poll until it is ready.

        Returns Future[str]: the signed download URL (``.pftrace``, valid ~1 h), as the official SDK
        does. Download it without credentials (``download_signed_url``). A ``failed`` export fails the
        Future with TraceExportError (a RuntimeError) carrying the server's ``error``; no answer within
        ``timeout_s`` with TraceExportTimeoutError (a TimeoutError).
        """
        _check_str(session_id, "session_id")
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        runtime = self._runtime

        def poll() -> str:
            deadline = time.monotonic() + timeout_s
            while True:
                resp: types.TraceExportResponse = runtime.request(
                    "GET", f"/api/v1/sessions/{session_id}/trace_export", response_type=types.TraceExportResponse
                )
                if resp.status == "ready":
                    if not resp.url:
                        raise APIResponseValidationError(
                            f"trace export of session {session_id} is ready but carries no url",
                            body=None, expected_type="TraceExportResponse",
                        )
                    return resp.url
                if resp.status == "failed":
                    raise TraceExportError(
                        f"trace export of session {session_id} failed: {resp.error or 'unknown error'}"
                    )
                if time.monotonic() + poll_interval_s > deadline:
                    raise TraceExportTimeoutError(
                        f"trace export of session {session_id} not ready after {timeout_s:.0f} s"
                    )
                runtime.pause(poll_interval_s)  # interrupted (ClientClosedError) by close()

        return runtime.spawn(poll, name=f"trace export {session_id}")

    def search_sessions(self, request: types.SessionSearchRequest) -> Future[types.SessionSearchResponse]:
        """One page of the organization's sessions matching ``request``, newest first (experimental).

        Returns Future[SessionSearchResponse]; pass its ``next_cursor`` as the next request's ``cursor``
        (``attrs.evolve(request, cursor=page.next_cursor)``).
        """
        if not isinstance(request, types.SessionSearchRequest):
            raise TypeError(f"request must be a types.SessionSearchRequest, got {type(request).__name__}")
        # A search reads only: resending after a lost answer is safe.
        return self._runtime.submit_request(
            "POST", "/api/v1/sessions/search", body=request, response_type=types.SessionSearchResponse,
            idempotent=True,
        )

    # ---- account ------------------------------------------------------------------------
    def whoami(self) -> Future[types.WhoamiResponse]:
        """The calling principal, decoded locally from a JWT credential (no request is made).

        Returns Future[WhoamiResponse] (``user_urn`` from ``sub``, ``email``, ``org_urn`` from
        ``org_id``). The signature is NOT verified: this only reads what the credential claims.

        The Future fails with WhoamiUnavailableError (a RuntimeError) when the credential is a plain
        ``tml-`` API key, not a JWT.
        """
        fut: Future[types.WhoamiResponse] = Future()
        try:
            fut.set_result(whoami_from_jwt(self._runtime.config.api_key))
        except WhoamiUnavailableError as exc:
            fut.set_exception(exc)
        return fut

    def get_audit_log(
        self, event_type: str = "all", day: str | _dt.date | None = None
    ) -> Future[types.AuditLogResponse]:
        """Audit log entries of one UTC day (admin only). Returns Future[AuditLogResponse]."""
        if event_type not in _AUDIT_EVENT_TYPES:
            raise ValueError(f"event_type must be one of {_AUDIT_EVENT_TYPES}, got {event_type!r}")
        params: dict[str, Any] = {"event_type": event_type}
        if day is not None:
            if isinstance(day, _dt.datetime):
                day = day.astimezone(_UTC).date() if day.tzinfo is not None else day.date()
            if isinstance(day, _dt.date):
                day = day.isoformat()
            try:
                _dt.date.fromisoformat(str(day))
            except ValueError as exc:
                raise ValueError(f"day must be a date or 'YYYY-MM-DD', got {day!r}") from exc
            params["day"] = day
        return self._get("/api/v1/audit", types.AuditLogResponse, params)

    def get_billing_usage(
        self, starting_on: str | _dt.datetime, ending_before: str | _dt.datetime
    ) -> Future[types.BillingUsageResponse]:
        """Billing usage events in [starting_on, ending_before) (hour-aligned UTC, <= 14 days).

        Returns Future[BillingUsageResponse] (``data``: events, ``sessions``: their user metadata).
        """
        params = {
            "starting_on": _utc_hour(starting_on, "starting_on"),
            "ending_before": _utc_hour(ending_before, "ending_before"),
        }
        return self._get("/api/v1/billing/usage/events", types.BillingUsageResponse, params)

    def get_current_checkpoint_storage_usage(
        self, project_id: str | None = None
    ) -> Future[types.CurrentCheckpointStorageUsageResponse]:
        """Current checkpoint count, size and projected storage cost (admin; may lag 1-2 hours).

        No ``project_id``: the whole organization, grouped by project and session owner.
        Returns Future[CurrentCheckpointStorageUsageResponse].
        """
        params = {"project_id": _check_str(project_id, "project_id")} if project_id is not None else None
        return self._get(
            "/api/v1/billing/usage/checkpoints/current", types.CurrentCheckpointStorageUsageResponse, params
        )


def whoami_from_jwt(token: str) -> types.WhoamiResponse:
    """Read ``sub`` / ``email`` / ``org_id`` from a JWT's payload (unverified; docs/protocol.rst §1.2).

    Raises:
        WhoamiUnavailableError: ``token`` is not a JWT (e.g. a ``tml-`` API key) or has no ``sub`` claim.
    """
    parts = token.split(".")
    if not token.startswith("eyJ") or len(parts) != 3:
        raise WhoamiUnavailableError(
            "whoami needs a JWT credential, but the API key is a plain 'tml-' key; tinker_sync does not "
            "exchange keys for JWTs. Pass a JWT (eyJ...) as api_key to use whoami"
        )
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError):
        # from None: the decoding error may hold the token's payload
        raise WhoamiUnavailableError("whoami: the JWT credential's payload is not base64url-encoded JSON") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise WhoamiUnavailableError("whoami: the JWT credential carries no 'sub' (subject) claim")
    email = claims.get("email")
    org_id = claims.get("org_id")
    return types.WhoamiResponse(
        user_urn=claims["sub"],
        email=email if isinstance(email, str) and email else None,
        org_urn=f"tml:organization:{org_id}" if isinstance(org_id, str) and org_id else None,
    )
