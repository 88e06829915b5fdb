"""Live objects of the local server: training models and samplers in memory, and job results.

A job result (:class:`FwdBwdResult`, :class:`SampleOut` or a JSON dict) is encoded for the wire (JSON or
protobuf) and for the on-disk result journal (:func:`encode_result` / :func:`decode_result`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._jobs import JobError, ModelLane, ServerFuture, StepCallback


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ----------------------------------------------------------------------------------- results
@attrs.define
class FwdBwdResult:
    outputs: list[dict[str, Any]]  # numpy arrays
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        outs = []
        for out in self.outputs:
            d = {}
            for k, arr in out.items():
                is_float = arr.dtype.kind == "f"
                values = [(_finite(float(x)) or 0.0) if is_float else int(x) for x in arr.ravel().tolist()]
                d[k] = {"data": values, "dtype": "float32" if is_float else "int64", "shape": list(arr.shape)}
            outs.append(d)
        return {"loss_fn_output_type": "ArrayRecord", "loss_fn_outputs": outs,
                "metrics": {k: float(v) for k, v in self.metrics.items()}}

    def to_proto(self) -> bytes:
        from .. import _proto
        from ..types import ForwardBackwardOutput, TensorData

        outs = [{k: TensorData.from_numpy(arr) for k, arr in out.items()} for out in self.outputs]
        return _proto.encode_forward_backward_output(ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outs, metrics=dict(self.metrics)))


def _lp(x: float, filler: float) -> float:
    value = _finite(x)
    return filler if value is None else value


@attrs.define
class SampleOut:
    result: Any  # engine SampleResult
    target_csr: tuple[list[int], list[int]] | None = None  # the request's sparse target_prompt_logprobs layout

    def to_json(self) -> dict[str, Any]:
        r = self.result
        seqs: list[dict[str, Any]] = []
        for s in r.sequences:
            seq: dict[str, Any] = {"stop_reason": s.stop_reason, "tokens": [int(t) for t in s.tokens],
                                   "logprobs": [_lp(x, -9999.0) for x in s.logprobs]}
            if s.topk_logprobs is not None:
                seq["topk_logprobs"] = [[[int(t), _lp(lp, -99999.0)] for t, lp in row] for row in s.topk_logprobs]
            seqs.append(seq)
        out: dict[str, Any] = {"type": "sample", "sequences": seqs, "prompt_cache_hit_tokens": 0,
                               "prompt_logprobs": None, "topk_prompt_logprobs": None}
        if r.prompt_logprobs is not None:
            out["prompt_logprobs"] = [None if x is None else _finite(x) for x in r.prompt_logprobs]
        if r.topk_prompt_logprobs is not None:
            out["topk_prompt_logprobs"] = [
                None if row is None else [[int(t), _lp(lp, -99999.0)] for t, lp in row]
                for row in r.topk_prompt_logprobs]
        extra = self._tensors()
        if extra:
            from .. import _serde

            out.update({k: _serde.unstructure(v) for k, v in extra.items()})
        return out

    def _tensors(self) -> dict[str, Any]:
        """The 0.38 tensor results as wire types: target_prompt_logprobs (CSR if the request was), prompt_alt_tokens."""
        from ..types import PromptAltTokens, TensorData

        r = self.result
        out: dict[str, Any] = {}
        if r.target_prompt_logprobs is not None:
            lps = r.target_prompt_logprobs.astype("float32")
            if self.target_csr is None:
                out["target_prompt_logprobs"] = TensorData.from_numpy(lps)
            else:
                crow, col = self.target_csr
                rows = [r_ for r_ in range(len(crow) - 1) for _ in range(crow[r_ + 1] - crow[r_])]
                out["target_prompt_logprobs"] = TensorData(
                    data=lps[rows, col] if col else [], dtype="float32", shape=list(lps.shape),
                    sparse_crow_indices=crow, sparse_col_indices=col)
        if r.prompt_alt_tokens is not None:
            tokens, logprobs = r.prompt_alt_tokens
            out["prompt_alt_tokens"] = PromptAltTokens(tokens=TensorData.from_numpy(tokens.astype("int64")),
                                                       logprobs=TensorData.from_numpy(logprobs.astype("float32")))
        return out

    def to_proto(self) -> bytes:
        from .. import _proto
        from ..types import SampledSequence, SampleResponse

        j = self.to_json()
        seqs = [SampledSequence(stop_reason=s["stop_reason"], tokens=s["tokens"], logprobs=s["logprobs"],
                                topk_logprobs=s.get("topk_logprobs"))
                for s in j["sequences"]]
        topk = j["topk_prompt_logprobs"]
        if topk is not None:
            topk = [None if row is None else [(t, lp) for t, lp in row] for row in topk]
        return _proto.encode_sample_response(SampleResponse(
            sequences=seqs, prompt_logprobs=j["prompt_logprobs"], topk_prompt_logprobs=topk, **self._tensors()))


# ----------------------------------------------------------------------------------- live state
class LiveModel:
    """A training model held in memory: engine, adapter and its seq-ordered lane."""

    def __init__(self, model_id: str, session_id: str, owner: str, base_model: str, *, first_seq: int,
                 on_step: Callable[[LiveModel, int | None, ServerFuture | None, Any, JobError | None], None]
                 | None = None) -> None:
        self.model_id = model_id
        self.session_id = session_id
        self.owner = owner
        self.base_model = base_model
        self.engine: Any = None
        self.adapter: Any = None
        self.optim_steps = 0
        self.unloaded = False
        self.gens = {"w": 0, "g": 0}  # generations of the persisted tensor groups (see LiveStateStore)
        self.result_keys: list[str] = []  # persisted results ("create" or str(seq_id)), oldest first
        step: StepCallback | None = None
        if on_step is not None:
            def step(seq: int | None, fut: ServerFuture | None, value: Any, error: JobError | None) -> None:
                on_step(self, seq, fut, value, error)
        self.lane = ModelLane(model_id.replace(":", "-"), first_seq=first_seq, on_step=step)


@attrs.define
class LiveSampler:
    sampler_id: str
    owner: str
    base_model: str
    model_path: str | None
    adapter: Any = None  # engine Adapter snapshot, None = base model
    loaded: bool = False
    lock: threading.Lock = attrs.Factory(threading.Lock)
    session_id: str | None = None
    persisted: bool = False  # unsaved weights kept under <data_dir>/live (see LiveStateStore)
    inflight_of: str | None = None  # samples from this training model's shared inflight weights (see _inflight)


def adapter_tensors(adapter: Any, tables: str) -> dict[str, Any]:
    """Arrays of an engine Adapter by a stable name: ``tables`` picks p(arams), g(rads), m/v (AdamW moments).

    No copies: called on the model's lane thread, the only thread that mutates its adapter.
    """
    out: dict[str, Any] = {}
    for prefix, table in (("p", adapter.params), ("g", adapter.grads), ("m", adapter.exp_avg),
                          ("v", adapter.exp_avg_sq)):
        if prefix in tables:
            for module, (a, b) in table.items():
                out[f"{prefix}|{module}|0"] = a
                out[f"{prefix}|{module}|1"] = b
    return out


def encode_result(fut: ServerFuture, value: Any, error: JobError | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"request_type": fut.request_type, "endpoint": fut.endpoint}
    if error is not None:
        entry["error"] = {"message": error.message, "category": error.category}
    elif isinstance(value, FwdBwdResult):
        entry["fwdbwd"] = {
            "outputs": [{k: {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.ravel().tolist()}
                         for k, arr in out.items()} for out in value.outputs],
            "metrics": {k: float(v) for k, v in value.metrics.items()}}
    else:
        entry["value"] = value
    return entry


def decode_result(entry: Mapping[str, Any]) -> tuple[Any, JobError | None]:
    import numpy as np

    if "error" in entry:
        return None, JobError(entry["error"]["message"], entry["error"]["category"])
    if "fwdbwd" in entry:
        fb = entry["fwdbwd"]
        outputs = [{k: np.asarray(t["data"], dtype=np.dtype(t["dtype"])).reshape(t["shape"]) for k, t in out.items()}
                   for out in fb["outputs"]]
        return FwdBwdResult(outputs, dict(fb["metrics"])), None
    return entry.get("value"), None
