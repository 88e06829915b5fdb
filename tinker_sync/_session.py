"""Session: what the clients of one ServiceClient share (runtime, server limits, session id, heartbeat, counters)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from . import types
from ._auth import JwtCredentials, exchange_credential, token_exchange
from ._batch_poller import PollFeatures
from ._checks import ServerLimits
from ._exceptions import APIStatusError, ClientClosedError, NotFoundError
from ._executor import flatten, start_internal_thread
from ._runtime import Runtime

__all__ = [
    "CLOSE_STATUSES", "CONSOLE_URL", "DynamicConfigSchedule", "Heartbeat", "Session", "configure_from_server",
    "heartbeat_should_warn", "read_dynamic_config", "server_limits",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_HEARTBEAT_TIMEOUT_S = 10.0
_HEARTBEAT_WARN_AFTER_S = 120.0
_FINISH_TIMEOUT_S = 10.0
_DEFAULT_MAX_CHUNK_LEN = 1024
_DEFAULT_MAX_CHUNK_BYTES = 5_000_000
CLOSE_STATUSES = ("success", "errored", "interrupted")
CONSOLE_URL = "https://tinker.thinkingmachines.ai"  # the hosted console, linked as the official SDK does


def heartbeat_should_warn(silent_s: float) -> bool:
    """Whether a failed heartbeat warns: only after nothing succeeded for ``_HEARTBEAT_WARN_AFTER_S``."""
    return silent_s > _HEARTBEAT_WARN_AFTER_S


class Heartbeat:
    """The thread that keeps one server session alive (``session_heartbeat`` every ``interval_s``).

    Stops on ``stop()``, on a 410 (the session is finished) or when the runtime closes. Failures are
    logged, never raised: DEBUG at first, a WARNING once no heartbeat succeeded for two minutes.
    """

    def __init__(
        self, runtime: Runtime, session_id: str, interval_s: float, *, clock: Callable[[], float] = time.monotonic,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._on_tick = on_tick  # runs on this thread after each beat (the dynamic-config refresh); never raises
        self.session_id = session_id
        self._interval_s = interval_s
        self._clock = clock
        self._last_ok = clock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tinker-sync-heartbeat", daemon=True)

    def start(self) -> None:
        start_internal_thread(self.thread)

    def stop(self) -> None:
        """Stop beating and wait (bounded) for the thread to end."""
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=_HEARTBEAT_TIMEOUT_S + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._runtime.request(
                    "POST",
                    "/api/v1/session_heartbeat",
                    body=types.SessionHeartbeatRequest(session_id=self.session_id),
                    timeout_s=_HEARTBEAT_TIMEOUT_S,
                    retry=False,
                    rate_limited=False,  # keep the session alive while other calls wait out a 429 window
                )
            except APIStatusError as exc:
                if exc.status_code == 410:
                    logger.info("session %s is finished (heartbeat answered 410); stopping heartbeats", self.session_id)
                    return
                self.failed(exc)
            except ClientClosedError:
                return
            except Exception as exc:  # noqa: BLE001 - heartbeats never raise; they log
                self.failed(exc)
            else:
                self._last_ok = self._clock()
            if self._on_tick is not None:
                self._on_tick()

    def failed(self, exc: BaseException) -> None:
        """Log one failed heartbeat (a WARNING only after a long silence)."""
        if self._stop.is_set():
            return
        silent_s = self._clock() - self._last_ok
        if heartbeat_should_warn(silent_s):
            logger.warning(
                "no successful heartbeat for %.0f s (last error: %s); the server may end session %s",
                silent_s, exc, self.session_id,
            )
        else:
            logger.debug("heartbeat failed: %s", exc)


def read_dynamic_config(runtime: Runtime, cfg: types.ClientConfigResponse) -> types.ClientDynamicConfigResponse | None:
    """Read ``/client/dynamic_config`` and apply it with ``cfg`` to the poller (batched polling, cancel_future).

    A server without the endpoint (404) offers none of its features: None.
    """
    body = types.ClientConfigRequest(sdk_version=runtime.config.sdk_version)
    try:
        dynamic: types.ClientDynamicConfigResponse | None = runtime.request(
            "POST", "/api/v1/client/dynamic_config", body=body, response_type=types.ClientDynamicConfigResponse
        )
    except NotFoundError:
        dynamic = None
    runtime.poller.set_features(PollFeatures.from_config(cfg, dynamic))
    return dynamic


def configure_from_server(
    runtime: Runtime,
) -> tuple[types.ClientConfigResponse, types.ClientDynamicConfigResponse | None]:
    """Read the server's client config and dynamic config (blocking) and use what they offer on ``runtime``.

    JWT credentials (``pjwt_auth_enabled``), batched ``retrieve_futures`` polling and ``cancel_future``. A
    Session re-reads the dynamic config every ``refresh_interval_sec`` (``DynamicConfigSchedule``).
    """
    body = types.ClientConfigRequest(sdk_version=runtime.config.sdk_version)
    cfg: types.ClientConfigResponse = runtime.request(
        "POST", "/api/v1/client/config", body=body, response_type=types.ClientConfigResponse
    )
    if cfg.pjwt_auth_enabled:
        credential = exchange_credential(runtime.config.api_key, cfg.credential_default_source)
        runtime.transport.credentials = JwtCredentials(token_exchange(runtime.request, credential))
        logger.info("the server asks for JWT credentials: requests carry a token exchanged for the key")
    return cfg, read_dynamic_config(runtime, cfg)


class DynamicConfigSchedule:
    """When to re-read ``/client/dynamic_config``: ``refresh_interval_sec`` after the last read (0 = never).

    Pure bookkeeping on an injected clock; the heartbeat thread asks ``due()`` after each beat.
    """

    def __init__(self, dynamic: types.ClientDynamicConfigResponse | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self.interval_s = 0.0
        self.read(dynamic)

    def due(self) -> bool:
        return self.interval_s > 0 and self._clock() - self._last >= self.interval_s

    def read(self, dynamic: types.ClientDynamicConfigResponse | None) -> None:
        """A read happened now (``dynamic`` None: the server has no dynamic config, so stop asking)."""
        self._last = self._clock()
        self.interval_s = float(dynamic.refresh_interval_sec) if dynamic is not None else 0.0

    def failed(self) -> None:
        """A read failed: try again one interval later (the features in use stay)."""
        self._last = self._clock()


def server_limits(runtime: Runtime) -> ServerLimits:
    """The models' limits (``get_server_capabilities``, read on first use) for the client-side input checks."""
    return ServerLimits(lambda: runtime.request(
        "GET", "/api/v1/get_server_capabilities", response_type=types.GetServerCapabilitiesResponse))


class Session:
    """One Tinker session, handed by the ServiceClient to every client it creates. Thread-safe.

    Owns the runtime, the server's client config (``/client/config``: chunk limits...), the session id
    (created on first use, which also starts the heartbeat) and the two creation counters
    (``model_seq_id`` of created models, ``sampling_session_seq_id`` of sampling sessions).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        project_id: str | None = None,
        user_metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        display_name: str | None = None,
        heartbeat_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.project_id = project_id
        self.user_metadata = dict(user_metadata or {})
        self.tags = sorted(set(tags))
        self.display_name = display_name
        self._heartbeat_interval_s = heartbeat_interval_s
        self._clock = clock
        self._lock = threading.Lock()  # guards the counters and the closed flag
        self._boot_lock = threading.Lock()  # serialises bootstrap (network calls happen under it)
        self._client_config: types.ClientConfigResponse | None = None
        self._dynamic: DynamicConfigSchedule | None = None
        self._id: str | None = None
        self._model_seq = 0
        self._sampling_seq = 0
        self._closed = False
        self.heartbeat: Heartbeat | None = None
        self.limits = server_limits(runtime)  # the models' limits for the client-side input checks

    def __repr__(self) -> str:
        return f"Session(id={self._id!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def id_if_created(self) -> str | None:
        """The session id, or None if no session was created yet (never contacts the server)."""
        return self._id

    def check_open(self) -> None:
        """Raise ClientClosedError once the session is closed."""
        if self._closed:
            raise ClientClosedError("this ServiceClient is closed; create a new one")

    # ---- bootstrap ------------------------------------------------------------------------
    def client_config(self) -> types.ClientConfigResponse:
        """The server's client config (chunk limits...), fetched once (blocking)."""
        cfg = self._client_config
        if cfg is not None:
            return cfg
        with self._boot_lock:
            if self._client_config is None:
                self.check_open()
                cfg, dynamic = configure_from_server(self.runtime)
                self._dynamic = DynamicConfigSchedule(dynamic, clock=self._clock)
                self._client_config = cfg
            return self._client_config

    def refresh_dynamic_config(self) -> None:
        """Re-read ``/client/dynamic_config`` if its ``refresh_interval_sec`` has passed (heartbeat thread)."""
        schedule, cfg = self._dynamic, self._client_config
        if schedule is None or cfg is None or not schedule.due() or self._closed:
            return
        try:
            schedule.read(read_dynamic_config(self.runtime, cfg))
        except Exception as exc:  # noqa: BLE001 - a refresh keeps the features in use; it never raises
            logger.debug("could not refresh the dynamic client config: %s", exc)
            schedule.failed()

    def chunk_limits(self) -> tuple[int, int]:
        """(max datums, max estimated bytes) per forward/forward_backward request (blocking on first use)."""
        cfg = self.client_config()
        return (cfg.fwdbwd_max_chunk_len or _DEFAULT_MAX_CHUNK_LEN,
                cfg.fwdbwd_max_chunk_bytes_count or _DEFAULT_MAX_CHUNK_BYTES)

    def ensure_id(self) -> str:
        """The session id; the first call fetches the client config, creates the session, starts heartbeats."""
        sid = self._id
        if sid is not None:
            return sid
        self.client_config()
        with self._boot_lock:
            self.check_open()
            if self._id is None:
                self._id = self._create()
            return self._id

    def _create(self) -> str:
        resp: types.CreateSessionResponse = self.runtime.request(
            "POST",
            "/api/v1/create_session",
            body=types.CreateSessionRequest(
                sdk_version=self.runtime.config.sdk_version,
                tags=list(self.tags),
                user_metadata=dict(self.user_metadata),
                project_id=self.project_id,
                display_name=self.display_name,
            ),
            response_type=types.CreateSessionResponse,
        )
        for level, msg in (
            (logging.INFO, resp.info_message),
            (logging.WARNING, resp.warning_message),
            (logging.ERROR, resp.error_message),
        ):
            if msg:
                logger.log(level, "server: %s", msg)
        logger.info("created session %s", resp.session_id)
        self.heartbeat = Heartbeat(self.runtime, resp.session_id, self._heartbeat_interval_s, clock=self._clock,
                                   on_tick=self.refresh_dynamic_config)
        self.heartbeat.start()
        return resp.session_id

    # ---- counters -------------------------------------------------------------------------
    def next_model_seq_id(self) -> int:
        with self._lock:
            seq = self._model_seq
            self._model_seq += 1
            return seq

    def next_sampling_session_seq_id(self) -> int:
        with self._lock:
            seq = self._sampling_seq
            self._sampling_seq += 1
            return seq

    def in_background(self, fn: Callable[[], Future[T]]) -> Future[T]:
        """Run ``fn`` (which may block on bootstrap, then returns a Future) on a worker; flatten."""
        return flatten(self.runtime.executor.submit(fn))

    # ---- lifecycle ------------------------------------------------------------------------
    def close(self, status: str, detail: str | None, *, cancel_pending: bool, timeout_s: float | None) -> bool:
        """Wait (bounded) for submitted work, stop heartbeats, finish the session, close the runtime.

        Returns False if it was already closed (nothing done). Heartbeats continue while it waits, so the
        server keeps the session (and the work being waited for) alive.
        """
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        start = self._clock()
        if not cancel_pending:
            self.runtime.drain(timeout_s)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self._id is not None:
            self._finish(self._id, status, detail)
        left = None if timeout_s is None else max(0.0, timeout_s - (self._clock() - start))
        self.runtime.close(cancel_pending=cancel_pending, timeout_s=left)
        return True

    def _finish(self, session_id: str, status: str, detail: str | None) -> None:
        try:
            self.runtime.request(
                "POST",
                f"/api/v1/sessions/{session_id}/finish",
                body={"reason": {"type": status}, "detail": detail},
                timeout_s=_FINISH_TIMEOUT_S,
                retry=False,
                rate_limited=False,
            )
        except NotFoundError:
            logger.debug("server has no sessions/finish endpoint; skipped")
        except Exception as exc:  # noqa: BLE001 - closing must not raise for a bookkeeping call
            logger.info("could not finish session %s: %s", session_id, exc)
