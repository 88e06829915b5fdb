"""Sampling and future endpoints of the local server: sampling sessions, asample, polls, cancel.

``retrieve_future`` long-polls one future. ``retrieve_futures`` long-polls a whole sampling session (one
clone of it): completed sample request ids are appended to a per-(session, clone) log, and the client's
``prev_cursor`` acknowledges (and frees) everything before it. ``cancel_future`` cancels a queued sample.
"""

# Request classes use the types package's validating field factories (str_field(), ...), as tinker_sync.types does.
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs

from ..types import (
    CreateSamplingSessionRequest,
    FutureRetrieveRequest,
    FuturesRetrieveRequest,
    JoinSamplingSessionRequest,
    SampleRequest,
    TensorData,
)
from ..types._common import str_field
from ._api_common import PROTO_CONTENT_TYPE, Answer, Call, HTTPError, parse_tinker_path, text_tokens
from ._api_live import LiveApi
from ._jobs import JobError, ServerFuture, request_id_for
from ._live import FwdBwdResult, LiveSampler, SampleOut

logger = logging.getLogger(__name__)

MAX_SAMPLES_PER_REQUEST = 256
MAX_PENDING_SAMPLES = 512
_CLONE_STRIDE = 1_000_000_000  # a cloned SamplingClient's seq_ids start at clone * 1e9


def _target_ids(td: TensorData | None, where: str) -> tuple[Any, tuple[list[int], list[int]] | None]:
    """``target_prompt_logprobs`` as a dense int64 matrix (-1 = no request) and its CSR layout when sparse."""
    if td is None:
        return None, None
    import numpy as np

    if td.dtype != "int64" or td.shape is None or len(td.shape) != 2:
        raise HTTPError(400, f"{where}: target_prompt_logprobs must be a 2-D int64 tensor [len(prompt) - 1, K], got "
                             f"dtype {td.dtype} and shape {td.shape}")
    values = np.asarray(td.data, dtype=np.int64)
    if td.sparse_crow_indices is None or td.sparse_col_indices is None:
        return values.reshape(td.shape), None
    crow, col = list(td.sparse_crow_indices), list(td.sparse_col_indices)
    dense = np.full(td.shape, -1, dtype=np.int64)  # only the listed cells request anything
    rows = [r for r in range(len(crow) - 1) for _ in range(crow[r + 1] - crow[r])]
    dense[rows, col] = values
    return dense, (crow, col)


@attrs.frozen
class CancelFutureRequest:
    """Body of ``POST /api/v1/cancel_future``."""

    request_id: str = str_field()


class _CompletionLog:
    """Completed request ids of one (sampling session, clone), numbered by a cursor."""

    def __init__(self) -> None:
        self.base = 0  # cursor of entries[0]
        self.entries: list[dict[str, Any]] = []

    @property
    def end(self) -> int:
        return self.base + len(self.entries)

    def ack(self, cursor: int) -> None:
        drop = min(max(0, cursor - self.base), len(self.entries))
        del self.entries[:drop]
        self.base += drop

    def since(self, cursor: int) -> list[dict[str, Any]]:
        return self.entries[max(0, cursor - self.base):]


class SamplingApi(LiveApi):
    """Sampling sessions, asample and the future endpoints."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending_samples = 0
        self._logs: dict[tuple[str, int], _CompletionLog] = {}
        self._logs_cond = threading.Condition()
        self._sample_jobs: dict[str, tuple[Future[None], tuple[str, int] | None]] = {}

    # -- sampling sessions ------------------------------------------------------------------------
    def create_sampling_session(self, call: Call) -> Any:
        req, _ = call.parse(CreateSamplingSessionRequest)
        w = "create_sampling_session"
        sess = self.session(call, req.session_id, w)
        self.use_session(sess, w)
        sid = f"{sess.session_id}:sample:{req.sampling_session_seq_id}"
        if self.store.get_sampler(sid) is not None:
            return {"type": "create_sampling_session", "sampling_session_id": sid}
        base = req.base_model
        if req.model_path is not None:
            _, run = self.checkpoint_by_path(call, req.model_path)
            if base is not None and base != run.base_model:
                raise HTTPError(400, f"{w}: base_model {base!r} does not match the checkpoint's {run.base_model!r}")
            base = run.base_model
        base = self.check_base_model(base, w)
        self.store.add_sampler(sid, sess.session_id, call.owner, base, req.model_path)
        return {"type": "create_sampling_session", "sampling_session_id": sid}

    def join_sampling_session(self, call: Call) -> Any:
        req, _ = call.parse(JoinSamplingSessionRequest)
        row = self.store.get_sampler(req.sampling_session_id)
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"join_sampling_session: sampling session {req.sampling_session_id!r} not found")
        self.use_session_id(row.session_id, "join_sampling_session")
        return {"type": "join_sampling_session", "client_counter": self.store.join_sampler(row.sampler_id)}

    def get_sampler(self, call: Call) -> Any:
        row = self.store.get_sampler(call.params["id"])
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"sampler {call.params['id']!r} not found")
        out = {"sampler_id": row.sampler_id, "base_model": row.base_model}
        if row.model_path:
            out["model_path"] = row.model_path
        return out

    def _live_sampler(self, call: Call, sid: str) -> LiveSampler:
        with self.lock:
            s = self.samplers.get(sid)
        if s is not None and s.owner == call.owner:
            self.use_session_id(s.session_id, "asample")
            return s
        row = self.store.get_sampler(sid)
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"sampling session {sid!r} not found (create it with create_sampling_session)")
        persisted = False
        if row.ephemeral and row.model_path is None:
            persisted = self.live.has_sampler(sid)
            if not persisted:
                raise HTTPError(404, f"sampling session {sid!r} held unsaved weights that were lost; save named "
                                     f"sampler weights (a path) to keep them")
        self.use_session_id(row.session_id, "asample")
        with self.lock:
            return self.samplers.setdefault(sid, LiveSampler(sid, row.owner, row.base_model, row.model_path,
                                                             session_id=row.session_id, persisted=persisted,
                                                             inflight_of=row.inflight_of))

    def _sampler_adapter(self, s: LiveSampler) -> Any:
        if s.inflight_of is not None:  # the newest inflight save of its model, looked up per request
            return self.inflight.current(s.inflight_of)
        with s.lock:
            if not s.loaded:
                if s.model_path is not None:
                    run_id, ckpt_id = parse_tinker_path(s.model_path)
                    row = self.store.get_checkpoint(run_id, ckpt_id)
                    if row is None:
                        raise JobError(f"checkpoint {s.model_path} of sampling session {s.sampler_id} no longer "
                                       f"exists", "user")
                    engine = self.engine(s.base_model)
                    s.adapter = self.engine_module.Adapter.load(engine, Path(row.directory), with_optimizer=False)
                elif s.persisted:
                    loaded = self.live.load_sampler(s.sampler_id)
                    if loaded is None:
                        raise JobError(f"the weights of sampling session {s.sampler_id} were deleted", "server")
                    tensors, meta = loaded
                    s.adapter = self.adapter_from_tensors(meta, tensors).snapshot()
                s.loaded = True
            return s.adapter

    # -- asample ----------------------------------------------------------------------------------
    def _sampler_of(self, call: Call, req: SampleRequest) -> LiveSampler:
        if req.sampling_session_id is not None:
            return self._live_sampler(call, req.sampling_session_id)
        base = req.base_model  # legacy direct addressing
        if req.model_path is not None:
            _, run = self.checkpoint_by_path(call, req.model_path)
            base = run.base_model
        elif base is None:
            raise HTTPError(400, "asample: give 'sampling_session_id' (or legacy 'base_model' / 'model_path')")
        base = self.check_base_model(base, "asample")
        key = f"direct:{call.owner}:{req.model_path or base}"
        with self.lock:
            return self.samplers.setdefault(key, LiveSampler(key, call.owner, base, req.model_path))

    def asample(self, call: Call) -> Any:
        w = "asample"
        req, _ = call.parse(SampleRequest)
        sampler = self._sampler_of(call, req)
        if req.seq_id is not None:
            rid = request_id_for(sampler.sampler_id, req.seq_id)
            existing = self.futures.get(rid)
            if existing is not None:
                return self.handle(existing)
        else:
            rid = request_id_for(sampler.sampler_id, "unsequenced", uuid.uuid4().hex)
        if req.num_samples > MAX_SAMPLES_PER_REQUEST:
            raise HTTPError(400, f"{w}: num_samples {req.num_samples} is too large (max {MAX_SAMPLES_PER_REQUEST} "
                                 f"per request)")
        prompt = text_tokens(req.prompt, f"{w}.prompt")
        sp = req.sampling_params
        self.check_tokens(prompt, sampler.base_model, f"{w}.prompt", extra=sp.max_tokens or 0)
        engine = self.engine(sampler.base_model)
        options = {"num_samples": req.num_samples, "max_tokens": sp.max_tokens, "temperature": sp.temperature,
                   "top_k": sp.top_k, "top_p": sp.top_p, "stop": sp.stop, "seed": sp.seed,
                   "prompt_logprobs": bool(req.prompt_logprobs) or bool(req.topk_prompt_logprobs),
                   "topk_prompt_logprobs": req.topk_prompt_logprobs,
                   "prompt_logprobs_last_n": req.prompt_logprobs_last_n,
                   "topk_sample_logprobs": req.topk_sample_logprobs, "prompt_alt_tokens_k": req.prompt_alt_tokens_k}
        options["target_prompt_logprobs"], target_csr = _target_ids(req.target_prompt_logprobs, w)
        try:
            engine.validate_sample(prompt, **options)
        except ValueError as exc:
            raise HTTPError(400, f"{w}: {exc}") from None
        with self.lock:
            if self.pending_samples >= MAX_PENDING_SAMPLES:
                raise HTTPError(429, f"{w}: too many sample requests in flight ({self.pending_samples}); retry "
                                     f"shortly", {"Retry-After": "1"})
        fut, created = self.add_future(ServerFuture(rid, "Sample", call.op, call.owner))
        if created:
            seq_ids = [f"{rid}-{i}" for i in range(req.num_samples)]
            fut.extra["sample_sequence_ids"] = seq_ids
            record = bool(req.record_stability_info)

            def job() -> Any:
                result = engine.sample(self._sampler_adapter(sampler), prompt, record_stability_info=record, **options)
                if record and result.stability is not None:
                    self.keep_stability(sampler.session_id, dict(zip(seq_ids, result.stability, strict=True)))
                return SampleOut(result, target_csr)

            log_key = None
            if req.sampling_session_id is not None:
                log_key = (req.sampling_session_id, (req.seq_id or 0) // _CLONE_STRIDE)
            self._start_sample(fut, job, log_key)
        return self.handle(fut)

    def _start_sample(self, fut: ServerFuture, job: Callable[[], Any], log_key: tuple[str, int] | None) -> None:
        def run() -> None:
            try:
                fut.run(job)
            finally:
                self._sample_done(fut, log_key)

        with self.lock:
            self.pending_samples += 1
        try:
            self._sample_jobs[fut.request_id] = (self.sample_pool.submit(run), log_key)
        except RuntimeError:
            fut.set_error(JobError("the server is shutting down", "server"))
            self._sample_done(fut, log_key)

    def _sample_done(self, fut: ServerFuture, log_key: tuple[str, int] | None) -> None:
        with self.lock:
            self.pending_samples -= 1
        self._sample_jobs.pop(fut.request_id, None)
        if log_key is None:
            return
        session = log_key[0].rsplit(":sample:", 1)[0]
        self.record_trace(session, "Sample", fut.request_id, fut.created_at, time.time(), log_key[0])
        state = "failed" if fut.error is not None else "finished"
        with self._logs_cond:
            self._logs.setdefault(log_key, _CompletionLog()).entries.append(
                {"state": state, "request_id": fut.request_id})
            self._logs_cond.notify_all()

    # -- futures ----------------------------------------------------------------------------------
    def _hold_s(self, call: Call) -> float:
        hold = self.long_poll_s
        hinted = call.headers.get("X-Stainless-Read-Timeout")
        if hinted:
            try:
                hold = min(hold, max(0.0, float(hinted) - 2.0))
            except ValueError:
                pass
        return hold

    def retrieve_future(self, call: Call) -> Any:
        req, _ = call.parse(FutureRetrieveRequest)
        rid = req.request_id
        fut = self.futures.get(rid) or self.find_persisted_future(call, rid)
        if fut is None or fut.owner != call.owner:
            raise HTTPError(404, f"retrieve_future: unknown request_id {rid!r}")
        if fut.model_id is not None:  # a poll is activity of the model's session (no database access)
            with self.lock:
                model = self.models.get(fut.model_id)
                if model is not None and model.session_id in self.session_seen:
                    self.session_seen[model.session_id] = max(self.clock(), self.session_seen[model.session_id])
        if fut.expire_once:
            fut.expire_once = False
            raise HTTPError(410, f"future {rid} expired (injected); submit the request again")
        if fut.try_again_rounds > 0:
            fut.try_again_rounds -= 1
            return {"type": "try_again", "request_id": rid, "queue_state": "active"}
        if not fut.wait(self._hold_s(call)):
            return {"type": "try_again", "request_id": rid, "queue_state": "active"}
        if fut.error is not None:
            return {"error": fut.error.message, "category": fut.error.category}
        result = fut.result
        if isinstance(result, (FwdBwdResult, SampleOut)):
            if PROTO_CONTENT_TYPE in (call.headers.get("Accept") or ""):
                return Answer(200, result.to_proto(), PROTO_CONTENT_TYPE)
            return result.to_json()
        return result

    def retrieve_futures(self, call: Call) -> Any:
        req, _ = call.parse(FuturesRetrieveRequest)
        sid = req.target.sampling_session_id
        row = self.store.get_sampler(sid)
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"retrieve_futures: sampling session {sid!r} not found")
        self.use_session_id(row.session_id, "retrieve_futures")
        for rid in req.retrieved_request_ids:  # their payloads were fetched: forget them
            fut = self.futures.get(rid)
            if fut is not None and fut.done() and fut.owner == call.owner and fut.model_id is None:
                self.futures.remove(rid)
        key = (sid, req.target.cloned_sampler_id)
        hold = self._hold_s(call) if req.timeout is None else min(req.timeout, self._hold_s(call))
        with self._logs_cond:
            log = self._logs.setdefault(key, _CompletionLog())
            log.ack(req.prev_cursor)
            if hold > 0:
                self._logs_cond.wait_for(lambda: log.end > max(req.prev_cursor, log.base) or self.stopped.is_set(),
                                         timeout=hold)
            return {"completions": list(log.since(req.prev_cursor)), "cursor": max(log.end, req.prev_cursor)}

    def cancel_future(self, call: Call) -> Any:
        req, _ = call.parse(CancelFutureRequest)
        fut = self.futures.get(req.request_id)
        if fut is None or fut.owner != call.owner:
            raise HTTPError(404, f"cancel_future: unknown request_id {req.request_id!r}")
        if fut.request_type != "Sample":
            raise HTTPError(400, f"cancel_future: {req.request_id} is a {fut.request_type} request; only sample "
                                 f"requests can be cancelled (training requests run in seq_id order)")
        job, log_key = self._sample_jobs.get(req.request_id) or (None, None)
        cancelled = job is not None and job.cancel()
        if cancelled:
            fut.set_error(JobError("the request was cancelled by the client (cancel_future)", "user"))
            self._sample_done(fut, log_key)
        return {"request_id": req.request_id, "cancelled": cancelled}
