"""Training endpoints of the local server: models, forward/backward, optimizer steps, checkpoints, copies.

Bodies parse into the package's wire types (``tinker_sync.types``) through ``Call.parse``; protobuf
forward_backward bodies decode into the same ``ForwardBackwardRequest`` through ``tinker_sync._proto``,
so both wire forms share one validation path.
"""

# Request classes use the types package's validating field factories (str_field(), ...), as tinker_sync.types does.
from __future__ import annotations

import io
import logging
import math
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .. import _serde
from ..types import (
    CopyWeightsRequest,
    CreateModelRequest,
    Datum,
    ForwardBackwardRequest,
    ForwardRequest,
    GetInfoRequest,
    LoadWeightsRequest,
    OptimStepRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    UnloadModelRequest,
    WeightsInfoRequest,
)
from ._api_common import (
    PROTO_CONTENT_TYPE,
    Call,
    HTTPError,
    check_name,
    check_ttl,
    check_user_metadata,
    text_tokens,
)
from ._api_live import LiveApi
from ._inflight import inflight_refusal
from ._jobs import JobError, ServerFuture, request_id_for
from ._live import FwdBwdResult, LiveModel, LiveSampler
from ._store import CheckpointRow, RunRow

logger = logging.getLogger(__name__)

R = TypeVar("R")

# A loss input may have trailing dimensions (e.g. [tokens, K]); its dense size is capped so a tiny body
# declaring a huge sparse tensor is refused before anything is allocated.
MAX_TENSOR_ELEMENTS = 1 << 22
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024  # a compressed forward_backward body may expand to this much


def _unzstd(body: bytes) -> bytes:
    """A zstd body decompressed, refusing more than MAX_DECOMPRESSED_BYTES (bounded memory)."""
    try:
        import zstandard
    except ImportError:
        raise HTTPError(415, "forward_backward: this server cannot read zstd bodies (the zstandard module is not "
                             "installed here); send the body uncompressed") from None
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
            out = reader.read(MAX_DECOMPRESSED_BYTES + 1)
    except zstandard.ZstdError as exc:
        raise HTTPError(400, f"forward_backward: the zstd body does not decompress: {exc}") from None
    if len(out) > MAX_DECOMPRESSED_BYTES:
        raise HTTPError(413, f"forward_backward: the zstd body decompresses to more than {MAX_DECOMPRESSED_BYTES} "
                             f"bytes; split the request")
    return bytes(out)


def optimizer_name(config: Any) -> str:
    """The engine's optimizer name for a typed ``optimizer_config`` (None = AdamW)."""
    return "adamw" if config is None else str(config.type)


class TrainingApi(LiveApi):
    """Model lifecycle, training steps and checkpoint endpoints."""

    # -- plumbing ---------------------------------------------------------------------------------
    def _sequenced(self, call: Call, cls: type[R], *, request_type: str, fn: str,
                   build: Callable[[LiveModel, R, dict[str, Any]], Callable[[], Any]],
                   extras: Collection[str] = ()) -> dict[str, Any]:
        """Parse a JSON body into ``cls`` on the model's lane path; a refused body consumes its seq_id."""
        raw = call.peek()

        def prepare(model: LiveModel) -> Callable[[], Any]:
            req, extra = call.parse(cls, extras=extras)
            return build(model, req, extra)

        return self.submit_sequenced(call, raw.get("model_id"), raw.get("seq_id"), request_type=request_type, fn=fn,
                                     prepare=prepare)

    def _engine_datum(self, datum: Datum, where: str, base_model: str) -> tuple[list[int], dict[str, Any]]:
        tokens = text_tokens(datum.model_input, f"{where}.model_input")
        self.check_tokens(tokens, base_model, where)
        inputs: dict[str, Any] = {}
        for key, td in datum.loss_fn_inputs.items():
            shape = td.dense_shape()
            if not shape or shape[0] != len(tokens):
                raise HTTPError(400, f"{where}.loss_fn_inputs[{key!r}] has shape {shape} but the model input has "
                                     f"{len(tokens)} tokens; the first dimension must equal the number of tokens")
            if math.prod(shape) > MAX_TENSOR_ELEMENTS:
                raise HTTPError(400, f"{where}.loss_fn_inputs[{key!r}]: shape {shape} holds {math.prod(shape)} "
                                     f"elements, more than this server's limit of {MAX_TENSOR_ELEMENTS}")
            inputs[key] = td.to_numpy()
        return tokens, inputs

    def _behaviour_logprobs(self, model: LiveModel, datum: Datum, inputs: dict[str, Any], where: str) -> Any:
        """Sampling-time logprobs of a datum's targets from its provenance spans (record_stability_info)."""
        from ._sampling import behaviour_logprobs

        spans = [("prompt" if span.type == "prompt_tokens" else "sampled", span.sequence_id, span.offset, span.length)
                 for span in datum.loss_fn_input_spans or ()]
        if "target_tokens" not in inputs:
            raise HTTPError(400, f"{where}: loss_fn_input_spans need target_tokens")
        try:
            return behaviour_logprobs(spans, self.stability_records(model.session_id), inputs["target_tokens"])
        except ValueError as exc:
            raise HTTPError(400, f"{where}: {exc}") from None

    # -- models -----------------------------------------------------------------------------------
    def create_model(self, call: Call) -> Any:
        req, _ = call.parse(CreateModelRequest)
        w = "create_model"
        optimizer = optimizer_name(req.optimizer_config)
        sess = self.session(call, req.session_id, w)
        self.use_session(sess, w)
        base = self.check_base_model(req.base_model, w)
        lora = req.lora_config
        if lora is not None and lora.rank > 256:
            raise HTTPError(400, f"{w}.lora_config: rank {lora.rank} is too large for the local models (max 256)")

        def make(model: LiveModel) -> Callable[[], Any]:
            def job() -> Any:
                model.engine = self.engine(base)
                model.adapter = model.engine.new_adapter(
                    rank=lora.rank if lora else 32, seed=lora.seed if lora else None,
                    train_attn=lora.train_attn if lora else True, train_mlp=lora.train_mlp if lora else True,
                    train_unembed=lora.train_unembed if lora else True, optimizer=optimizer)
                self.store.add_run(model.model_id, sess.session_id, call.owner, base, self.adapter_cfg(model.adapter),
                                   req.user_metadata)
                return {"model_id": model.model_id, "type": "create_model"}
            return job

        return self.new_model(call, sess.session_id, req.model_seq_id, base, "CreateModel", make, fn="create_model")

    def get_info(self, call: Call) -> Any:
        req, _ = call.parse(GetInfoRequest)
        model = self.model(call, req.model_id, "get_info")
        run = self.store.get_run(model.model_id)
        rank = run.lora_config.get("rank") if run else None
        return {"type": "get_info", "model_id": model.model_id,
                "model_data": {"arch": "tinker-sync-byte-transformer", "model_name": model.base_model,
                               "tokenizer_id": model.base_model},
                "is_lora": True, "lora_rank": rank, "model_name": model.base_model,
                "optimizer_config": self.optimizer_config_json(run.lora_config if run else {})}

    def unload_model(self, call: Call) -> Any:
        req, _ = call.parse(UnloadModelRequest)
        model = self.model(call, req.model_id, "unload_model")
        rid = request_id_for(model.model_id, "unload")
        fut, created = self.add_future(ServerFuture(rid, "UnloadModel", call.op, call.owner, model_id=model.model_id))
        if created:
            # Unsequenced: runs after the requests already queued, then retires the lane.
            def job() -> Any:
                model.unloaded = True
                with self.lock:
                    self.models.pop(model.model_id, None)
                self.live.delete_model(model.model_id)
                threading.Thread(target=model.lane.close, args=(f"model {model.model_id} was unloaded",),
                                 daemon=True).start()
                return {"model_id": model.model_id, "type": "unload_model"}
            model.lane.submit(None, fut, job)
        return self.handle(fut)

    # -- training ---------------------------------------------------------------------------------
    def forward_backward(self, call: Call) -> Any:
        encoding = (call.headers.get("Content-Encoding") or "").strip().lower()
        if encoding == "zstd":
            call.body = _unzstd(call.body)  # the journal keeps the plain body
        elif encoding not in ("", "identity"):
            raise HTTPError(415, f"forward_backward: Content-Encoding {encoding!r} is not supported; send the body "
                                 f"uncompressed or zstd-compressed")
        if PROTO_CONTENT_TYPE in (call.headers.get("Content-Type", "") or ""):
            from .. import _proto

            try:
                req = _proto.decode_forward_backward_request(call.body)
            except (ValueError, TypeError, IndexError, OverflowError) as exc:
                raise HTTPError(400, f"forward_backward: could not decode the protobuf body: {exc}") from None
            rtype = "Forward" if req.forward_only else "ForwardBackward"
            return self._submit_fwdbwd(call, req.model_id, req.seq_id or None, lambda: req, rtype)
        raw = call.peek()

        def parse() -> ForwardBackwardRequest:
            if "forward_backward_input" not in raw:
                raise HTTPError(400, f"forward_backward: expected a protobuf body (Content-Type: {PROTO_CONTENT_TYPE}) "
                                     f"or JSON {{\"forward_backward_input\": {{\"data\", \"loss_fn\"}}, \"model_id\", "
                                     f"\"seq_id\"}}")
            return call.parse(ForwardBackwardRequest)[0]

        rtype = "Forward" if raw.get("forward_only") is True else "ForwardBackward"
        return self._submit_fwdbwd(call, raw.get("model_id"), raw.get("seq_id"), parse, rtype)

    def forward(self, call: Call) -> Any:
        raw = call.peek()

        def parse() -> ForwardBackwardRequest:
            req, _ = call.parse(ForwardRequest)
            return ForwardBackwardRequest.from_input(req.forward_input, model_id=req.model_id, seq_id=req.seq_id,
                                                     forward_only=True)

        return self._submit_fwdbwd(call, raw.get("model_id"), raw.get("seq_id"), parse, "Forward")

    def _submit_fwdbwd(self, call: Call, model_id: Any, seq_id: Any, parse: Callable[[], ForwardBackwardRequest],
                       rtype: str) -> Any:
        where = call.op

        def prepare(model: LiveModel) -> Callable[[], Any]:
            req = parse()
            if not req.data:
                raise HTTPError(400, f"{where}: 'data' is empty; give at least one Datum")
            known = self.engine_module.LOSS_FUNCTIONS
            if req.loss_fn not in known:
                raise HTTPError(400, f"{where}: loss_fn {req.loss_fn!r} is not supported by the local server; it "
                                     f"supports: {', '.join(known)}")
            required = known[req.loss_fn][0]
            data = []
            for i, datum in enumerate(req.data):
                tokens, inputs = self._engine_datum(datum, f"{where}.data[{i}]", model.base_model)
                if "logprobs" in required and "logprobs" not in inputs and datum.loss_fn_input_spans:
                    inputs["logprobs"] = self._behaviour_logprobs(model, datum, inputs, f"{where}.data[{i}]")
                missing = [k for k in required if k not in inputs]
                if missing:
                    raise HTTPError(400, f"{where}.data[{i}]: loss_fn {req.loss_fn!r} needs loss_fn_inputs "
                                         f"{list(required)}; {missing[0]!r} is missing")
                data.append(self.engine_module.EngineDatum(tokens=tokens, loss_fn_inputs=inputs))
            cfg = dict(req.loss_fn_config or {}) or None

            def job() -> Any:
                adapter = self.ready(model)
                outputs, metrics = model.engine.forward_backward(adapter, data, req.loss_fn, cfg,
                                                                 forward_only=req.forward_only)
                return FwdBwdResult(outputs, metrics)
            return job

        return self.submit_sequenced(call, model_id, seq_id, request_type=rtype, fn=call.op, prepare=prepare)

    def optim_step(self, call: Call) -> Any:
        def build(model: LiveModel, req: OptimStepRequest, extra: dict[str, Any]) -> Callable[[], Any]:
            params = _serde.unstructure(req.optim_params)
            kind = "dimuon" if params.get("type") == "dimuon" else "adamw"
            if model.adapter is not None and model.adapter.optimizer != kind:
                raise HTTPError(400, f"optim_step: model {model.model_id} was created with the "
                                     f"{model.adapter.optimizer!r} optimizer; {kind!r} params cannot step it (send "
                                     f"the params of the optimizer chosen at creation)")

            def job() -> Any:
                metrics = model.engine.step(self.ready(model), params)
                model.optim_steps += 1
                return {"type": "optim_step", "metrics": {k: float(v) for k, v in metrics.items()}}
            return job

        return self._sequenced(call, OptimStepRequest, request_type="OptimStep", fn="optim_step", build=build)

    # -- checkpoints ------------------------------------------------------------------------------
    def _save(self, model: LiveModel, kind: str, name: str, *, with_optimizer: bool, ttl: int | None,
              overwrite: bool, user_metadata: Mapping[str, str] | None = None) -> CheckpointRow:
        ckpt_id = f"{kind}/{name}"
        if not overwrite and self.store.get_checkpoint(model.model_id, ckpt_id) is not None:
            raise JobError(f"checkpoint tinker://{model.model_id}/{ckpt_id} already exists; choose another name or "
                           f"pass overwrite=True", "user")
        final = self.store.checkpoint_dir(model.model_id, ckpt_id)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.ready(model).save(tmp, with_optimizer=with_optimizer)
            (tmp / "checkpoint_complete").write_bytes(b"")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.store.add_checkpoint(model.model_id, ckpt_id, model.owner, final, ttl,
                                         user_metadata=dict(user_metadata) if user_metadata else None)

    def save_weights(self, call: Call) -> Any:
        w = "save_weights"

        def build(model: LiveModel, req: SaveWeightsRequest, extra: dict[str, Any]) -> Callable[[], Any]:
            if req.path is not None:
                check_name(req.path, w)
            ttl = check_ttl(req.ttl_seconds, w)
            meta = check_user_metadata(req.user_metadata, w)

            def job() -> Any:
                nm = req.path or f"step-{model.optim_steps:06d}-{uuid.uuid4().hex[:6]}"
                row = self._save(model, "weights", nm, with_optimizer=True, ttl=ttl, overwrite=req.overwrite,
                                 user_metadata=meta)
                return {"type": "save_weights", "path": row.tinker_path}
            return job

        return self._sequenced(call, SaveWeightsRequest, request_type="SaveWeights", fn="save_weights", build=build)

    def save_weights_for_sampler(self, call: Call) -> Any:
        w = "save_weights_for_sampler"

        def build(model: LiveModel, req: SaveWeightsForSamplerRequest, extra: dict[str, Any]) -> Callable[[], Any]:
            if req.kind == "inflight":
                why = inflight_refusal(path=req.path, sampling_session_seq_id=req.sampling_session_seq_id,
                                       ttl_seconds=req.ttl_seconds, user_metadata=req.user_metadata)
                if why is not None:
                    raise HTTPError(400, f"{w}: {why}")
                seq = req.sampling_session_seq_id
                return lambda: {"type": "save_weights_for_sampler",
                                "sampling_session_id": self._publish_inflight(model, seq)}
            if req.path is not None:
                check_name(req.path, w)
            if req.path is None and req.sampling_session_seq_id is None:
                raise HTTPError(400, f"{w}: give either 'path' (a checkpoint name) or 'sampling_session_seq_id'")
            ttl = check_ttl(req.ttl_seconds, w)
            meta = check_user_metadata(req.user_metadata, w)

            def job() -> Any:
                out: dict[str, Any] = {"type": "save_weights_for_sampler"}
                path = None
                if req.path is not None:
                    row = self._save(model, "sampler_weights", req.path, with_optimizer=False, ttl=ttl,
                                     overwrite=True, user_metadata=meta)
                    path = out["path"] = row.tinker_path
                if req.sampling_session_seq_id is not None:
                    out["sampling_session_id"] = self._bind_sampler(model, req.sampling_session_seq_id, path)
                return out
            return job

        return self._sequenced(call, SaveWeightsForSamplerRequest, request_type="SaveWeightsForSampler",
                               fn="save_weights_for_sampler", build=build)

    def _bind_sampler(self, model: LiveModel, sampling_seq: int, path: str | None) -> str:
        """A sampling session on a snapshot of ``model``'s weights (persisted when they are not saved)."""
        sid = f"{model.session_id}:sample:{sampling_seq}"
        snap = self.ready(model).snapshot()
        if path is None:  # unsaved weights: keep a copy so the sampler survives a restart
            self.live.save_sampler(sid,
                                   {f"p|{m}|{i}": t for m, pair in snap.params.items() for i, t in enumerate(pair)},
                                   {"base_model": model.base_model, "lora": self.adapter_cfg(snap)})
        with self.lock:
            self.samplers[sid] = LiveSampler(sid, model.owner, model.base_model, path, snap, loaded=True,
                                             session_id=model.session_id)
        self.store.add_sampler(sid, model.session_id, model.owner, model.base_model, path, ephemeral=True)
        return sid

    def _publish_inflight(self, model: LiveModel, sampling_seq: int | None) -> str:
        """Replace ``model``'s shared inflight weights with its current ones; a new session sampling from them."""
        sid = f"{model.session_id}:sample:{sampling_seq}"
        snap = self.ready(model).snapshot()
        generation = self.inflight.publish(model.model_id, snap, {"base_model": model.base_model,
                                                                  "lora": self.adapter_cfg(snap)})
        with self.lock:
            self.samplers[sid] = LiveSampler(sid, model.owner, model.base_model, None, loaded=True,
                                             session_id=model.session_id, inflight_of=model.model_id)
        self.store.add_sampler(sid, model.session_id, model.owner, model.base_model, None,
                               inflight_of=model.model_id)
        logger.info("model %s: inflight weights #%d published (after %d optimizer steps); new session %s",
                    model.model_id, generation, model.optim_steps, sid)
        return sid

    def save_weights_external(self, call: Call) -> Any:
        w = "save_weights_external"

        def build(model: LiveModel, req: SaveWeightsExternalRequest, extra: dict[str, Any]) -> Callable[[], Any]:
            check_name(req.path, w)
            ttl = check_ttl(req.ttl_seconds, w)
            if req.age_encryption_recipients:
                raise HTTPError(400, f"{w}: age_encryption_recipients is not supported by the local server (exports "
                                     f"are written unencrypted to its data dir); omit it")

            def job() -> Any:
                row = self._save(model, "external_weights", req.path, with_optimizer=False, ttl=ttl, overwrite=True)
                return {"type": "save_weights_external", "path": row.tinker_path, "size_bytes": row.size_bytes}
            return job

        return self._sequenced(call, SaveWeightsExternalRequest, request_type="SaveWeightsExternal",
                               fn="save_weights_external", build=build)

    def load_weights(self, call: Call) -> Any:
        w = "load_weights"
        if call.peek().get("session_id") is not None:  # create-via-load: this request creates the model (seq 0)
            return self._create_via_load(call)

        def build(model: LiveModel, req: LoadWeightsRequest, extra: dict[str, Any]) -> Callable[[], Any]:
            directory, run = self._load_source(call, req)
            if model.base_model != run.base_model:
                raise HTTPError(400, f"{w}: checkpoint {req.path} was trained on {run.base_model!r}, but model "
                                     f"{model.model_id} uses {model.base_model!r}")
            keep = model.adapter.optimizer if model.adapter is not None else None
            if not req.optimizer and req.optimizer_config is not None and keep is not None \
                    and optimizer_name(req.optimizer_config) != keep:
                raise HTTPError(400, f"{w}: optimizer_config {req.optimizer_config.type!r} differs from model "
                                     f"{model.model_id}'s {keep!r} optimizer (fixed at its creation)")

            def job() -> Any:
                self._load_into(model, req, directory, keep)
                return {"type": "load_weights", "path": req.path, "model_id": model.model_id}
            return job

        return self._sequenced(call, LoadWeightsRequest, request_type="LoadWeights", fn="load_weights", build=build)

    def _load_source(self, call: Call, req: LoadWeightsRequest) -> tuple[Path, RunRow]:
        ckpt, run = self.checkpoint_by_path(call, req.path, access_token=req.weights_access_token)
        if req.optimizer and ckpt.kind != "weights":
            raise HTTPError(400, f"load_weights: {req.path} is a sampler checkpoint without optimizer state; load a "
                                 f"tinker://.../weights/... checkpoint or pass optimizer=false")
        saved = str(run.lora_config.get("optimizer", "adamw"))
        if req.optimizer and req.optimizer_config is not None and optimizer_name(req.optimizer_config) != saved:
            raise HTTPError(400, f"load_weights: optimizer_config {req.optimizer_config.type!r} cannot resume the "
                                 f"{saved!r} optimizer state of {req.path}; pass optimizer=false to load the weights "
                                 f"only, or omit optimizer_config")
        return Path(ckpt.directory), run

    def _load_into(self, model: LiveModel, req: LoadWeightsRequest, directory: Path, keep: str | None) -> None:
        """Load a checkpoint into ``model``: with optimizer state it resumes the saved optimizer; weights alone
        train with the model's optimizer (``keep``), else the requested one, else AdamW."""
        if not directory.exists():
            raise JobError(f"checkpoint {req.path} no longer exists", "user")
        engine = model.engine or self.engine(model.base_model)
        adapter = self.engine_module.Adapter.load(engine, directory, with_optimizer=req.optimizer)
        if not req.optimizer:
            adapter.optimizer = keep or (optimizer_name(req.optimizer_config) if req.optimizer_config else "adamw")
        model.engine, model.adapter = engine, adapter

    def _create_via_load(self, call: Call) -> Any:
        w = "load_weights"
        req, _ = call.parse(LoadWeightsRequest)
        sess = self.session(call, req.session_id, w)
        self.use_session(sess, w)
        seq = int(req.model_seq_id or 0)
        existing = self.futures.get(request_id_for(f"{sess.session_id}:train:{seq}", "create"))
        if existing is not None:
            return self.handle(existing)  # a retry
        directory, run = self._load_source(call, req)
        if (req.base_model or run.base_model) != run.base_model:
            raise HTTPError(400, f"{w}: base_model {req.base_model!r} does not match the checkpoint's base model "
                                 f"{run.base_model!r}")

        def make(model: LiveModel) -> Callable[[], Any]:
            def job() -> Any:
                self._load_into(model, req, directory, None)
                self.store.add_run(model.model_id, sess.session_id, call.owner, run.base_model,
                                   self.adapter_cfg(model.adapter), req.user_metadata)
                return {"type": "load_weights", "path": req.path, "model_id": model.model_id}
            return job

        return self.new_model(call, sess.session_id, seq, run.base_model, "LoadWeights", make, fn="load_weights")

    def weights_info(self, call: Call) -> Any:
        req, _ = call.parse(WeightsInfoRequest)
        _, run = self.checkpoint_by_path(
            call, req.tinker_path, kinds=("weights", "sampler_weights", "external_weights")
        )
        cfg = run.lora_config
        return {"base_model": run.base_model, "is_lora": True, "lora_rank": cfg.get("rank"),
                "train_unembed": cfg.get("train_unembed", True), "train_mlp": cfg.get("train_mlp", True),
                "train_attn": cfg.get("train_attn", True), "optimizer_config": self.optimizer_config_json(cfg)}

    def copy_weights(self, call: Call) -> Any:
        """Copy a checkpoint into a new, untrainable training run (idempotent per X-Idempotency-Key)."""
        w = "copy_weights"
        req, _ = call.parse(CopyWeightsRequest)
        token = req.weights_access_token or call.headers.get("X-Tinker-Weights-Access-Token") or None
        ttl = check_ttl(req.ttl_seconds, w)
        key = call.headers.get("X-Idempotency-Key") or ""
        with self.lock:
            done = self.copies.get((call.owner, key)) if key else None
        if done is not None:
            return {"tinker_path": done}
        src, run = self.checkpoint_by_path(call, req.source_path, access_token=token,
                                           kinds=("weights", "sampler_weights", "external_weights"))
        if req.session_id is not None:
            sess = self.session(call, req.session_id, w)
            if req.model_seq_id is None:
                raise HTTPError(400, f"{w}: model_seq_id is required together with session_id")
            run_id, session_id, project = f"{sess.session_id}:train:{req.model_seq_id}", sess.session_id, None
            if self.store.get_run(run_id) is not None:
                raise HTTPError(409, f"{w}: training run {run_id} already exists; use the next model_seq_id")
        elif req.destination_project_id:
            run_id, session_id, project = f"copy-{uuid.uuid4().hex[:16]}", "", req.destination_project_id
        else:
            raise HTTPError(400, f"{w}: give destination_project_id, or session_id and model_seq_id")
        name = src.checkpoint_id.split("/", 1)[1]
        final = self.store.checkpoint_dir(run_id, src.checkpoint_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src.directory, final, dirs_exist_ok=True)
        self.store.add_run(run_id, session_id, call.owner, run.base_model, run.lora_config, None,
                           project_id=project, trainable=False)
        row = self.store.add_checkpoint(run_id, src.checkpoint_id, call.owner, final, ttl)
        logger.info("copied %s to %s (%s)", req.source_path, row.tinker_path, name)
        if key:
            with self.lock:
                self.copies[(call.owner, key)] = row.tinker_path
        return {"tinker_path": row.tinker_path}

