"""SamplingClient: text generation and prompt scoring on one sampling session."""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from . import types
from ._executor import chain

if TYPE_CHECKING:
    from ._runtime import Runtime
    from .service_client import ServiceClient
    from .tokenizer import TokenizerLike

__all__ = ["SamplingClient"]

logger = logging.getLogger(__name__)

_MAX_NUM_SAMPLES = 10_000


class SamplingClient:
    """Samples from one sampling session (a base model or saved sampler weights). Thread-safe.

    ``sample``/``compute_logprobs`` return ``concurrent.futures.Future`` objects; many may be in flight at once
    (the runtime bounds concurrent submissions and shares the 429 backoff window across threads).

    A SamplingClient pickles to (config, session ids): an unpickled copy opens its own runtime (no new
    session, no heartbeat) and numbers its requests from a random high offset so its seq_ids do not
    collide with the original's.

    The pickle carries no API key and no default-header secret, only a fingerprint of them. Unpickling
    takes the key from a ClientConfig already built in the receiving process (a fork()ed worker inherits
    the parent's), else from TINKER_API_KEY / CLOUDFLARE_ACCESS_* if they match the fingerprint (spawn()ed
    workers inherit the environment); otherwise it raises InvalidConfigError saying what to set. Chosen
    over embedding the key because pickles end up in queues, caches and logs; the cost is that a key
    passed only as ``api_key=`` must also be given to spawn()ed workers (env var or a Pool initializer).
    """

    def __init__(self, service: ServiceClient | None, sampling_session_id: str, *, base_model: str | None = None,
                 runtime: Runtime | None = None, seq_start: int = 0) -> None:
        self._service = service
        if runtime is None:
            if service is None:
                raise ValueError("SamplingClient needs a ServiceClient or a runtime")
            runtime = service._runtime
        self._runtime = runtime
        self._owns_runtime = service is None
        self.sampling_session_id = sampling_session_id
        self._base_model = base_model
        self._lock = threading.Lock()
        self._seq = seq_start

    def __repr__(self) -> str:
        return f"SamplingClient(sampling_session_id={self.sampling_session_id!r})"

    def _next_seq_id(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    # ---- pickling -------------------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_sampling_client, (self._runtime.config, self.sampling_session_id, self._base_model))

    def close(self) -> None:
        """Close the runtime of an unpickled copy (no-op for clients made by a ServiceClient)."""
        if self._owns_runtime:
            self._runtime.close()

    # ---- sampling -------------------------------------------------------------------------
    def _submit(self, request_fields: dict[str, Any]) -> Future[types.SampleResponse]:
        def build() -> types.SampleRequest:
            return types.SampleRequest(
                sampling_session_id=self.sampling_session_id, seq_id=self._next_seq_id(), **request_fields
            )

        request = build()
        # A 410 on the poll (the server dropped the result) re-runs the sample as a NEW call with a fresh
        # seq_id, as the official RetryHandler does (docs/protocol.rst §5.4): the server derives the request id
        # from (sampling_session_id, seq_id), so re-sending the old seq_id could return the same
        # expired future again. 429 re-sends of the same POST keep their seq_id (runtime.request).
        return self._runtime.submit_polled(
            "/api/v1/asample", request, types.SampleResponse, request_type="Sample", sampling=True,
            prompt_bytes_estimate=_prompt_bytes(request.prompt), rebuild=build,
        )

    def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> Future[types.SampleResponse]:
        """Generate ``num_samples`` continuations of ``prompt``. Returns Future[SampleResponse].

        Raises:
            TypeError/ValueError: immediately, for bad arguments (nothing is sent).
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
        if not isinstance(include_prompt_logprobs, bool):
            raise TypeError("sample: include_prompt_logprobs must be a bool")
        if isinstance(topk_prompt_logprobs, bool) or not isinstance(topk_prompt_logprobs, int) or topk_prompt_logprobs < 0:
            raise ValueError(f"sample: topk_prompt_logprobs must be an int >= 0, got {topk_prompt_logprobs!r}")
        return self._submit(
            {
                "prompt": prompt,
                "num_samples": num_samples,
                "sampling_params": sampling_params,
                "prompt_logprobs": include_prompt_logprobs,
                "topk_prompt_logprobs": topk_prompt_logprobs,
            }
        )

    def compute_logprobs(self, prompt: types.ModelInput) -> Future[list[float | None]]:
        """Logprob of each prompt token given the previous ones (first entry None).

        Returns Future[list[float | None]].
        """
        _check_prompt(prompt, "compute_logprobs")
        fut = self._submit(
            {
                "prompt": prompt,
                "num_samples": 1,
                "sampling_params": types.SamplingParams(max_tokens=1),
                "prompt_logprobs": True,
                "topk_prompt_logprobs": 0,
            }
        )

        def extract(resp: types.SampleResponse) -> list[float | None]:
            if resp.prompt_logprobs is None:
                raise ValueError("the server returned no prompt_logprobs for compute_logprobs")
            return list(resp.prompt_logprobs)

        return chain(fut, extract)

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


def _unpickle_sampling_client(config: Any, sampling_session_id: str, base_model: str | None) -> SamplingClient:
    from ._runtime import Runtime

    # A fresh counter range per copy so seq_ids of copies never collide (docs/protocol.rst §5.4).
    start = 1_000_000_000 * random.randint(1, 1_000_000_000)
    return SamplingClient(None, sampling_session_id, base_model=base_model, runtime=Runtime(config), seq_start=start)
