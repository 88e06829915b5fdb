"""SamplingClient: text generation and prompt scoring on one sampling session."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import types
from ._checks import check_prompt_limits, check_retry_config, check_tinker_path
from ._client_future import ClientFuture, forward_client_methods
from ._config import ClientConfig
from ._exceptions import TinkerError
from ._executor import chain
from ._runtime import Runtime
from ._session import Session, configure_from_server, server_limits
from .tokenizer import TokenizerLike

__all__ = ["SamplingClient", "SamplingClientFuture"]

logger = logging.getLogger(__name__)

_MAX_NUM_SAMPLES = 10_000
_QUEUE_STATE_LOG_INTERVAL_S = 60.0
_HANDLE_VERSION = 1


class SamplingClient:
    """Samples from one sampling session (a base model or saved sampler weights). Thread-safe.

    ``sample``/``compute_logprobs`` return ``concurrent.futures.Future`` objects; many may be in flight at once
    (the runtime bounds concurrent submissions and shares the 429 backoff window across threads).

    A SamplingClient pickles to (config, session ids), and ``get_sampler_handle()`` gives the same as a
    string: an unpickled copy (or ``from_sampler_handle``) opens its own runtime (no new session, no
    heartbeat) and numbers its requests from a random high offset so its seq_ids do not collide with
    the original's. Before its first request such a copy reads the server's client config (one blocking
    round trip), so it polls and authenticates as the server asks.

    The pickle carries no API key and no default-header secret, only a fingerprint of them. Unpickling
    takes the key from a ClientConfig already built in the receiving process (a fork()ed worker inherits
    the parent's), else from TINKER_API_KEY / CLOUDFLARE_ACCESS_* if they match the fingerprint (spawn()ed
    workers inherit the environment); otherwise it raises InvalidConfigError saying what to set. Chosen
    over embedding the key because pickles end up in queues, caches and logs; the cost is that a key
    passed only as ``api_key=`` must also be given to spawn()ed workers (env var or a Pool initializer).
    """

    def __init__(
        self, holder: Session | None, sampling_session_id: str, *, base_model: str | None = None,
        runtime: Runtime | None = None, seq_start: int = 0, record_stability_info: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Internal: made by ``ServiceClient``/``TrainingClient`` (``holder`` is their Session), by unpickling or
        ``from_sampler_handle`` (no Session: its own ``runtime``)."""
        if runtime is None:
            if holder is None:
                raise ValueError("SamplingClient needs a Session or a runtime")
            runtime = holder.runtime
        self._runtime = runtime
        self._owns_runtime = holder is None
        self._configured = holder is not None  # a Session configures its runtime; a copy does on first use
        self.sampling_session_id = sampling_session_id
        self._base_model = base_model
        self._record_stability_info = record_stability_info
        self._lock = threading.Lock()
        self._seq = seq_start
        self._clock = clock
        self._last_queue_log: float | None = None
        self._limits = holder.limits if holder is not None else server_limits(runtime)

    def __repr__(self) -> str:
        return f"SamplingClient(sampling_session_id={self.sampling_session_id!r})"

    @staticmethod
    def create(
        holder: Session, *, model_path: str | None = None, base_model: str | None = None,
        sampling_session_id: str | None = None, retry_config: Any = None, record_stability_info: bool = False,
    ) -> SamplingClientFuture:
        """A SamplingClient (also a Future of it) on ``model_path``, ``base_model`` or an existing session.

        With ``sampling_session_id`` no request is made; otherwise a sampling session is created in
        ``session`` (``create_sampling_session``). Bad arguments raise ValueError/TypeError now; server
        errors come through the Future.
        """
        where = "create_sampling_client"
        session = holder
        session.check_open()
        check_retry_config(retry_config, where)
        if not isinstance(record_stability_info, bool):
            raise TypeError(f"{where}: record_stability_info must be a bool")
        if model_path is not None:
            check_tinker_path(model_path, where)
        if base_model is not None and (not isinstance(base_model, str) or not base_model):
            raise ValueError(f"{where}: base_model must be a non-empty model name, got {base_model!r}")
        if sampling_session_id is not None:
            done: Future[SamplingClient] = Future()
            done.set_result(SamplingClient(session, sampling_session_id=sampling_session_id, base_model=base_model,
                                           record_stability_info=record_stability_info))
            return SamplingClientFuture.following(done)
        if model_path is None and base_model is None:
            raise ValueError(f"{where} needs model_path (tinker://...) or base_model")
        seq = session.next_sampling_session_seq_id()

        def start() -> Future[SamplingClient]:
            resp = session.runtime.request(
                "POST",
                "/api/v1/create_sampling_session",
                body=types.CreateSamplingSessionRequest(
                    session_id=session.ensure_id(), sampling_session_seq_id=seq, base_model=base_model,
                    model_path=model_path,
                ),
                response_type=types.CreateSamplingSessionResponse,
            )
            out: Future[SamplingClient] = Future()
            # With a model_path the sampler's base model is the checkpoint's (asked lazily if needed).
            known_base = base_model if model_path is None else None
            out.set_result(SamplingClient(session, sampling_session_id=resp.sampling_session_id, base_model=known_base,
                                          record_stability_info=record_stability_info))
            return out

        return SamplingClientFuture.following(session.in_background(start))

    def _next_seq_id(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    # ---- pickling and handles -------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_sampling_client,
                (self._runtime.config, self.sampling_session_id, self._base_model, self._record_stability_info))

    def get_sampler_handle(self) -> str:
        """A string naming this sampler, for other processes: ``SamplingClient.from_sampler_handle(handle)``.

        It carries the base URL, the sampling session id and the base model, never a credential.
        """
        state = {
            "v": _HANDLE_VERSION,
            "base_url": self._runtime.config.base_url,
            "sampling_session_id": self.sampling_session_id,
            "base_model": self._base_model,
            "record_stability_info": self._record_stability_info,
        }
        return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode("ascii")

    @staticmethod
    def from_sampler_handle(handle: str, *, api_key: str | None = None) -> SamplingClient:
        """A new SamplingClient (own runtime; ``close()`` it) on the sampler named by ``handle``.

        It authenticates with ``api_key``, else ``TINKER_API_KEY`` (as ``ServiceClient()`` does).

        Raises:
            ValueError: ``handle`` is not a handle from ``get_sampler_handle``.
            InvalidConfigError: no usable API key.
        """
        try:
            state = json.loads(base64.urlsafe_b64decode(handle.encode("ascii")))
            base_url, sid = state["base_url"], state["sampling_session_id"]
            ok = state.get("v") == _HANDLE_VERSION and isinstance(base_url, str) and isinstance(sid, str)
        except (AttributeError, UnicodeError, binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise ValueError("from_sampler_handle: not a handle made by SamplingClient.get_sampler_handle()") from exc
        if not ok:
            raise ValueError("from_sampler_handle: not a handle made by SamplingClient.get_sampler_handle()")
        config = ClientConfig.from_env(api_key=api_key, base_url=base_url)
        return SamplingClient(
            None, sampling_session_id=sid, base_model=state.get("base_model"), runtime=Runtime(config),
            seq_start=_fresh_seq_start(), record_stability_info=bool(state.get("record_stability_info")),
        )

    def close(self) -> None:
        """Close the runtime of an unpickled copy (no-op for clients made by a ServiceClient)."""
        if self._owns_runtime:
            self._runtime.close()

    def __enter__(self) -> SamplingClient:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sampling -------------------------------------------------------------------------
    def _configure(self) -> None:
        # A copy (unpickled or from a handle) reads the server's client config once, before its first
        # request, so it polls and authenticates as the server asks (batched polling, JWT).
        if self._configured:  # set once, never unset: no lock needed to see it
            return
        with self._lock:
            if self._configured:
                return
            self._configured = True
        try:
            configure_from_server(self._runtime)
        except TinkerError as exc:  # the sample itself will report a server that cannot be reached
            logger.debug("could not read the client config for sampler %s: %s", self.sampling_session_id, exc)

    def _submit(self, request_fields: dict[str, Any]) -> Future[types.SampleResponse]:
        self._configure()
        # New (0.38) fields at their default stay off the wire, so the body of a 0.25-style call is unchanged.
        record = True if self._record_stability_info else None

        def build() -> types.SampleRequest:
            return types.SampleRequest(sampling_session_id=self.sampling_session_id, seq_id=self._next_seq_id(),
                                       record_stability_info=record, **request_fields)

        request = build()
        # A 410 on the poll (the server dropped the result) re-runs the sample as a NEW call with a fresh
        # seq_id, as the official RetryHandler does (docs/protocol.rst §5.4): the server derives the request
        # id from (sampling_session_id, seq_id), so re-sending the old seq_id could return the same
        # expired future again. 429 re-sends of the same POST keep their seq_id (runtime.request).
        return self._runtime.submit_polled(
            "/api/v1/asample", request, types.SampleResponse, request_type="Sample", sampling=True,
            prompt_bytes_estimate=_prompt_bytes(request.prompt), rebuild=build,
            on_queue_state=self._observe_queue_state,
        )

    def _observe_queue_state(self, queue_state: str, queue_state_reason: str | None) -> None:
        # Called by the poller thread; an override's exception is logged, never lets the poll loop die.
        try:
            self.on_queue_state_change(queue_state, queue_state_reason)
        except Exception:
            logger.exception("on_queue_state_change of sampler %s raised", self.sampling_session_id)

    def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: types.TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> Future[types.SampleResponse]:
        """Generate ``num_samples`` continuations of ``prompt``. Returns Future[SampleResponse].

        Args:
            include_prompt_logprobs: also score the prompt (``SampleResponse.prompt_logprobs``).
            topk_prompt_logprobs: the top-k logprobs of each prompt token.
            topk_sample_logprobs: the top-k logprobs of each sampled token (``SampledSequence.topk_logprobs``).
            target_prompt_logprobs: int64 token ids ``[len(prompt) - 1, K]`` whose prompt logprobs to return.
            prompt_alt_tokens_k: draw that many alternative tokens at each prompt position after the first.
            prompt_logprobs_last_n: score only the last N prompt tokens (needs ``include_prompt_logprobs``).

        All of them are sent to the server, which refuses (400, naming the field) what it cannot do.

        Raises:
            TypeError/ValueError: immediately, for bad arguments (nothing is sent), an empty prompt, negative
                token ids, or a prompt + ``max_tokens`` longer than the model's context (from the server's
                capabilities, read once on first use; checks of limits the server does not publish are skipped).
        """
        _check_prompt(prompt, "sample")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise TypeError(f"sample: num_samples must be an int, got {type(num_samples).__name__}")
        if not 1 <= num_samples <= _MAX_NUM_SAMPLES:
            raise ValueError(f"sample: num_samples must be between 1 and {_MAX_NUM_SAMPLES}, got {num_samples}")
        if not isinstance(sampling_params, types.SamplingParams):
            raise TypeError(
                f"sample: sampling_params must be a types.SamplingParams, got {type(sampling_params).__name__}"
            )
        check_prompt_limits(prompt, sampling_params.max_tokens or 0, self._limits.of(self._base_model), "sample")
        if not isinstance(include_prompt_logprobs, bool):
            raise TypeError("sample: include_prompt_logprobs must be a bool")
        for name, value in (("topk_prompt_logprobs", topk_prompt_logprobs),
                            ("topk_sample_logprobs", topk_sample_logprobs),
                            ("prompt_alt_tokens_k", prompt_alt_tokens_k)):
            _check_count(value, name, "sample", minimum=0)
        if target_prompt_logprobs is not None and not isinstance(target_prompt_logprobs, types.TensorData):
            raise TypeError("sample: target_prompt_logprobs must be a types.TensorData (int64 token ids) or None")
        _check_last_n(prompt_logprobs_last_n, include_prompt_logprobs, "sample")
        return self._submit(
            {
                "prompt": prompt,
                "num_samples": num_samples,
                "sampling_params": sampling_params,
                "prompt_logprobs": include_prompt_logprobs,
                "topk_prompt_logprobs": topk_prompt_logprobs,
                "topk_sample_logprobs": topk_sample_logprobs,
                "target_prompt_logprobs": target_prompt_logprobs,
                "prompt_alt_tokens_k": prompt_alt_tokens_k,
                "prompt_logprobs_last_n": prompt_logprobs_last_n,
            }
        )

    def compute_logprobs(
        self, prompt: types.ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> Future[list[float | None]]:
        """Logprob of each prompt token given the previous ones (first entry None).

        With ``prompt_logprobs_last_n`` only the last N tokens are scored (earlier entries None).
        Returns Future[list[float | None]].
        """
        _check_prompt(prompt, "compute_logprobs")
        check_prompt_limits(prompt, 1, self._limits.of(self._base_model), "compute_logprobs")  # it sends max_tokens=1
        _check_last_n(prompt_logprobs_last_n, True, "compute_logprobs")
        fut = self._submit(
            {
                "prompt": prompt,
                "num_samples": 1,
                "sampling_params": types.SamplingParams(max_tokens=1),
                "prompt_logprobs": True,
                "topk_prompt_logprobs": 0,
                "prompt_logprobs_last_n": prompt_logprobs_last_n,
            }
        )

        def extract(resp: types.SampleResponse) -> list[float | None]:
            if resp.prompt_logprobs is None:
                raise ValueError("the server returned no prompt_logprobs for compute_logprobs")
            return list(resp.prompt_logprobs)

        return chain(fut, extract)

    def on_queue_state_change(self, queue_state: Any, queue_state_reason: str | None) -> None:
        """Log that sampling is paused (WARNING, at most once a minute); nothing for the active state.

        The official SDK's observer hook, called from a poller thread for each sample/compute_logprobs call:
        on every try_again poll that names a queue state (``"paused_rate_limit"``, ``"paused_capacity"``,
        ``"active"``...) with the server's reason, and with ``"active"`` once the call resolved. Override it
        (subclass) to watch the queue; it should return quickly (exceptions are logged).
        """
        state = str(getattr(queue_state, "value", queue_state)).lower()
        if state == "active":
            return
        now = self._clock()
        if self._last_queue_log is not None and now - self._last_queue_log < _QUEUE_STATE_LOG_INTERVAL_S:
            return
        self._last_queue_log = now
        reason = queue_state_reason or {
            "paused_rate_limit": "concurrent sampler weights limit hit",
            "paused_capacity": "Tinker backend is running short on capacity, please wait",
        }.get(state, "unknown")
        logger.warning("Sampling is paused for sampler %s. Reason: %s", self.sampling_session_id, reason)

    # ---- info ---------------------------------------------------------------------------------
    def get_sampler(self) -> Future[types.GetSamplerResponse]:
        """``GET /samplers/{id}``. Returns Future[GetSamplerResponse]."""
        return self._runtime.submit_request(
            "GET", f"/api/v1/samplers/{self.sampling_session_id}", response_type=types.GetSamplerResponse
        )

    def get_base_model(self) -> str:
        """The base model name (blocking on first use; cached)."""
        if self._base_model is None:
            self._base_model = self.get_sampler().result().base_model
        return self._base_model

    def get_tokenizer(self) -> TokenizerLike:
        """The tokenizer of the base model (blocking); packaged or from the hub, never a local path."""
        from .tokenizer import get_server_tokenizer

        return get_server_tokenizer(self.get_base_model())

    def get_telemetry(self) -> object | None:
        """Always None: tinker_sync collects no client telemetry (the official SDK's value with telemetry off)."""
        return None


class SamplingClientFuture(ClientFuture[SamplingClient], SamplingClient):
    """What the creation methods return: a Future of the SamplingClient that is also usable as the client.

    ``sc.result()`` (0.38 style) gives the SamplingClient; ``sc.sample(...)`` (0.25 style) waits for the
    client, then calls it. Pickling it pickles the client.
    """


forward_client_methods(SamplingClientFuture, SamplingClient)


def _check_count(value: Any, name: str, where: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")


def _check_last_n(last_n: Any, prompt_logprobs: bool, where: str) -> None:
    if last_n is None:
        return
    _check_count(last_n, "prompt_logprobs_last_n", where, minimum=1)
    if not prompt_logprobs:
        raise ValueError(f"{where}: prompt_logprobs_last_n needs include_prompt_logprobs=True")


def _prompt_bytes(prompt: types.ModelInput) -> int:
    # The dispatch budget's estimate (docs/protocol.rst §7.4): 10 bytes per text token, image byte length.
    total = 0
    for chunk in prompt.chunks:
        if chunk.type == "encoded_text":
            total += 10 * len(chunk.tokens)
        elif chunk.type == "image":
            total += len(chunk.data)
        else:
            total += 10 * (getattr(chunk, "expected_tokens", None) or 1)
    return total


def _check_prompt(prompt: Any, where: str) -> None:
    if not isinstance(prompt, types.ModelInput):
        hint = " (use types.ModelInput.from_ints(tokens))" if isinstance(prompt, (list, tuple)) else ""
        raise TypeError(f"{where}: prompt must be a types.ModelInput, got {type(prompt).__name__}{hint}")
    if not prompt.chunks:
        raise ValueError(f"{where}: prompt is empty; give at least one token")


def _fresh_seq_start() -> int:
    # A fresh counter range per copy so seq_ids of copies never collide (docs/protocol.rst §5.4).
    return 1_000_000_000 * random.randint(1, 1_000_000_000)


def _unpickle_sampling_client(
    config: Any, sampling_session_id: str, base_model: str | None, record_stability_info: bool = False
) -> SamplingClient:
    return SamplingClient(None, sampling_session_id=sampling_session_id, base_model=base_model, runtime=Runtime(config),
                          seq_start=_fresh_seq_start(), record_stability_info=record_stability_info)
