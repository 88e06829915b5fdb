"""Live training models of the local server: lookup, sequenced submission, persistence and restart recovery.

Restart: live training models (adapter, gradients, AdamW state, next seq_id, recent results) are persisted
under ``<data_dir>/live`` before each result is published, and every accepted sequenced request is
journaled there before its handle is returned (see ``_persist``). After a restart (even SIGKILL) on the
same data dir, models with journaled work are restored at once and that work runs in seq_id order, so a
client's pipeline continues; a retried seq_id gets its first answer instead of being applied twice.
A request refused at submission consumes its seq_id (a skip, also journaled): the lane never waits for it.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ._api_common import PROTO_CONTENT_TYPE, ApiBase, Call, HTTPError
from ._inflight import InflightTargets
from ._jobs import JobError, ServerFuture, request_id_for
from ._live import LiveModel, adapter_tensors, decode_result, encode_result

logger = logging.getLogger(__name__)

_PERSISTED_RESULTS = 64  # results of the most recent seq_ids kept on disk per model (retry de-duplication)
# request types after which the adapter's tensors changed and are rewritten
_MUTATING = frozenset({"CreateModel", "ForwardBackward", "OptimStep", "LoadWeights"})
_RESUME_WAIT_S = 30.0  # how long a poll for an unknown request id waits for the startup recovery


def seq_of(value: Any, where: str) -> int | None:
    """A request's ``seq_id``: None when absent, else a non-negative int (400 otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HTTPError(400, f"{where}: field 'seq_id' must be a non-negative integer, got {value!r}")
    return value


class LiveApi(ApiBase):
    """Live model lookup, the seq-ordered submission path and its durability."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._persisted_rids: dict[str, str] | None = None  # request id -> model id of pre-restart results
        self.inflight = InflightTargets(self.live, self.adapter_from_tensors)  # kind="inflight" sampler weights
        self.resumed = threading.Event()

    def resume_journaled(self) -> None:
        """Restore, in the background, every model with journaled work so that work runs without a client."""
        pending = list(self.live.models_with_pending())
        if pending:
            threading.Thread(target=self._resume, args=(pending,), name="tinker-sync-local-resume",
                             daemon=True).start()
        else:
            self.resumed.set()

    def _resume(self, model_ids: list[str]) -> None:
        """Restore every model with journaled work so its queued requests run without waiting for a client."""
        try:
            for model_id in model_ids:
                meta = self.live.load_model_meta(model_id)
                if meta is not None and isinstance(meta.get("owner"), str):
                    self.restore_model(model_id, meta["owner"])
                elif not self._recreate(model_id):
                    logger.warning("journaled work of model %s has no model state; dropping it", model_id)
                    self.live.delete_pending(model_id)
        except Exception:  # never leave the pollers waiting on a crashed recovery thread
            logger.exception("resuming journaled work failed")
        finally:
            self.resumed.set()

    # -- lookup -----------------------------------------------------------------------------------
    def model(self, call: Call, model_id: Any, where: str) -> LiveModel:
        model = self.find_model(call, model_id, where)
        self.use_session_id(model.session_id, where)
        return model

    def find_model(self, call: Call, model_id: Any, where: str) -> LiveModel:
        if not isinstance(model_id, str):
            raise HTTPError(400, f"{where}: field 'model_id' must be a string, got {type(model_id).__name__}")
        if not model_id.isascii():  # ids are ASCII; this one (maybe from an unchecked peek) names no model
            raise HTTPError(404, f"{where}: unknown model_id {model_id!r}")
        with self.lock:
            model = self.models.get(model_id)
        if model is None:
            model = self.restore_model(model_id, call.owner)
        if model is None and not self.resumed.is_set():
            # Startup recovery may still be re-creating this model from its journaled create_model: a
            # request that arrives meanwhile waits for it (bounded) instead of getting a 404.
            self.resumed.wait(_RESUME_WAIT_S)
            with self.lock:
                model = self.models.get(model_id)
        if model is not None and model.owner == call.owner:
            return model
        with self.lock:
            mine = sorted(m.model_id for m in self.models.values() if m.owner == call.owner)
        run = self.store.get_run(model_id)
        if run is not None and run.owner == call.owner:
            raise HTTPError(404, f"model {model_id!r} is not loaded on this server (it was unloaded, or its state was "
                                 f"lost); create a new training client, e.g. from a saved checkpoint")
        loaded = ", ".join(mine) if mine else "none"
        raise HTTPError(404, f"unknown model_id {model_id!r}; your loaded models: {loaded}")

    @staticmethod
    def adapter_cfg(adapter: Any) -> dict[str, Any]:
        return {"rank": int(adapter.rank), "seed": int(adapter.seed), "train_attn": bool(adapter.train_attn),
                "train_mlp": bool(adapter.train_mlp), "train_unembed": bool(adapter.train_unembed),
                "optimizer": str(adapter.optimizer)}

    @staticmethod
    def optimizer_config_json(cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The wire ``optimizer_config`` of a run from its stored adapter config."""
        return {"type": "dimuon", "version": 1} if cfg.get("optimizer") == "dimuon" else {"type": "adamw"}

    @staticmethod
    def ready(model: LiveModel) -> Any:
        if model.adapter is None:
            raise JobError(f"model {model.model_id} failed to initialise; create a new one", "user")
        return model.adapter

    # -- restore ----------------------------------------------------------------------------------
    def restore_model(self, model_id: str, owner: str) -> LiveModel | None:
        """Bring back a model persisted before a restart (None when there is none for this owner)."""
        with self.lock:
            model = self.models.get(model_id)
            if model is not None:
                return model
            meta = self.live.load_model_meta(model_id)
            if meta is None or meta.get("owner") != owner:
                return None
            try:
                engine = self.engine(meta["base_model"])
                tensors = self.live.load_model_tensors(model_id, meta["gens"])
                adapter = self.adapter_from_tensors(meta, tensors)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("cannot restore model %s from %s: %s", model_id, self.live.models_dir, exc)
                return None
            model = LiveModel(model_id, meta["session_id"], owner, meta["base_model"],
                              first_seq=int(meta["next_seq"]), on_step=self.after_step)
            model.engine, model.adapter = engine, adapter
            model.optim_steps = int(meta.get("optim_steps", 0))
            model.gens = {k: int(v) for k, v in meta["gens"].items()}
            model.result_keys = [str(k) for k in meta.get("results") or []]
            for key, entry in self.live.load_model_results(model_id, model.result_keys).items():
                rid = request_id_for(model_id, "create") if key == "create" else request_id_for(model_id, int(key))
                fut = ServerFuture(rid, entry["request_type"], entry["endpoint"], owner, model_id=model_id)
                fut.complete(*decode_result(entry))
                self.futures.get_or_add(fut)
            self.models[model_id] = model
            self._replay_pending(model)
        logger.info("restored model %s at seq_id %s", model_id, meta["next_seq"])
        return model

    def _recreate(self, model_id: str) -> bool:
        """Run again the journaled creation of a model the server accepted but never ran, then its queue."""
        entry = self.live.load_pending(model_id).get(0)
        if entry is None or not isinstance(entry.get("owner"), str):
            return False
        with self.lock:
            self._replay(entry, 0, str(entry["owner"]), model_id)
            model = self.models.get(model_id)
            if model is None:
                return False
            self._replay_pending(model, first=1)
        return True

    def _replay(self, entry: Mapping[str, Any], seq: int, owner: str, model_id: str) -> str | None:
        """Send a journaled request through its endpoint again; the refusal's reason, or None."""
        call = Call(method="POST", op=str(entry["op"]), params={}, query={},
                    headers={"Content-Type": str(entry.get("content_type") or "application/json")},
                    body=base64.b64decode(str(entry["body"])), owner=owner)
        try:
            getattr(self, str(entry["fn"]))(call)
        except (HTTPError, KeyError, AttributeError, TypeError, ValueError) as exc:
            detail = exc.detail if isinstance(exc, HTTPError) else f"{type(exc).__name__}: {exc}"
            logger.warning("journaled seq_id %s of model %s cannot run again: %s", seq, model_id, detail)
            return detail
        return None

    def _replay_pending(self, model: LiveModel, *, first: int = 0) -> None:
        """Queue again the journaled requests of ``model`` that had not run when the server stopped."""
        for seq, entry in sorted(self.live.load_pending(model.model_id).items()):
            if seq < first:
                continue
            if seq < model.lane.next_seq:  # ran, but the journal entry was not removed yet
                self.live.drop_pending(model.model_id, seq)
                continue
            if entry.get("skip"):
                model.lane.skip(seq)
                continue
            detail = self._replay(entry, seq, model.owner, model.model_id)
            if detail is not None:
                self._fail_seq(model, seq, entry, detail)
        logger.info("model %s: journaled work resumed", model.model_id)

    def _fail_seq(self, model: LiveModel, seq: int, entry: Mapping[str, Any], detail: str) -> None:
        """A journaled request that cannot run after a restart: its future fails, its seq is consumed."""
        rid = request_id_for(model.model_id, seq)
        fut, created = self.add_future(ServerFuture(rid, str(entry.get("request_type", "Unknown")), str(entry["op"]),
                                                    model.owner, model_id=model.model_id))
        if created:
            error = JobError(f"seq_id {seq} was accepted before a server restart but cannot run again: {detail}",
                             "server")

            def fail() -> Any:
                raise error
            model.lane.submit(seq, fut, fail)
        else:
            model.lane.skip(seq)

    def adapter_from_tensors(self, meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> Any:
        lora = meta["lora"]
        params: dict[str, tuple[Any, Any]] = {}
        tables: dict[str, dict[str, tuple[Any, Any]]] = {"p": params, "g": {}, "m": {}, "v": {}}
        for name, arr in tensors.items():
            prefix, module, idx = name.split("|")
            pair = tables[prefix].setdefault(module, (None, None))
            tables[prefix][module] = (arr, pair[1]) if idx == "0" else (pair[0], arr)
        adapter = self.engine_module.Adapter(
            model_name=meta["base_model"], rank=int(lora["rank"]), seed=int(lora["seed"]),
            train_attn=bool(lora["train_attn"]), train_mlp=bool(lora["train_mlp"]),
            train_unembed=bool(lora["train_unembed"]), params=params, optimizer=str(lora.get("optimizer", "adamw")))
        if tables["g"]:  # missing groups are all zeros, as the constructor makes them
            adapter.grads = tables["g"]
        if tables["m"]:
            adapter.exp_avg, adapter.exp_avg_sq = tables["m"], tables["v"]
        adapter.step = int(meta.get("adam_step", 0))
        adapter.pending_grad_calls = int(meta.get("pending_grad_calls", 0))
        return adapter

    # -- persist ----------------------------------------------------------------------------------
    def after_step(self, model: LiveModel, seq: int | None, fut: ServerFuture | None, value: Any,
                   error: JobError | None) -> None:
        """Persist ``model`` after one lane step (runs on its lane thread before the result is published)."""
        if model.unloaded or model.adapter is None:
            if seq is not None:
                self.live.drop_pending(model.model_id, seq)
            return
        result: tuple[str, dict[str, Any]] | None = None
        dropped: list[str] = []
        if fut is not None:
            key = "create" if fut.request_id == request_id_for(model.model_id, "create") else (
                str(seq) if seq is not None else None)
            if key is not None:
                result = (key, encode_result(fut, value, error))
                if key not in model.result_keys:
                    model.result_keys.append(key)
                seq_keys = [k for k in model.result_keys if k != "create"]
                dropped = seq_keys[:-_PERSISTED_RESULTS]
                model.result_keys = [k for k in model.result_keys if k not in dropped]
        groups = self._changed_tensors(model, fut, error)
        adapter = model.adapter
        meta = {"version": 1, "model_id": model.model_id, "session_id": model.session_id, "owner": model.owner,
                "base_model": model.base_model, "lora": self.adapter_cfg(adapter), "next_seq": model.lane.next_seq,
                "optim_steps": model.optim_steps, "adam_step": int(adapter.step),
                "pending_grad_calls": int(adapter.pending_grad_calls), "gens": dict(model.gens),
                "results": model.result_keys}
        self.live.save_model(model.model_id, meta, groups, result=result, dropped=dropped)
        if seq is not None:
            self.live.drop_pending(model.model_id, seq)
        if fut is not None:
            self.record_trace(model.session_id, fut.request_type, fut.request_id, fut.created_at, time.time(),
                              model.model_id)

    @staticmethod
    def _changed_tensors(model: LiveModel, fut: ServerFuture | None, error: JobError | None
                         ) -> dict[str, dict[str, Any]]:
        adapter = model.adapter
        groups: dict[str, dict[str, Any]] = {}
        if fut is None or error is not None or fut.request_type not in _MUTATING:
            return groups
        if fut.request_type != "ForwardBackward":  # weights (+ AdamW moments once it has stepped)
            model.gens["w"] += 1
            groups["w"] = adapter_tensors(adapter, "pmv" if adapter.step > 0 else "p")
        if adapter.pending_grad_calls == 0:  # no gradients accumulated: they are all zero
            model.gens["g"] = 0
        elif fut.request_type == "ForwardBackward" or model.gens["g"] == 0:
            model.gens["g"] = max(model.gens.values()) + 1
            groups["g"] = adapter_tensors(adapter, "g")
        return groups

    def find_persisted_future(self, call: Call, rid: str) -> ServerFuture | None:
        """A future of a request answered or accepted before a restart (restores its model once)."""
        self.resumed.wait(_RESUME_WAIT_S)
        fut = self.futures.get(rid)
        if fut is not None:
            return fut
        with self.lock:
            if self._persisted_rids is None:
                index: dict[str, str] = {}
                for meta in self.live.all_model_metas():
                    mid = meta.get("model_id")
                    if not isinstance(mid, str):
                        continue
                    for key in meta.get("results") or {}:
                        index[request_id_for(mid, "create") if key == "create" else request_id_for(mid, int(key))] = mid
                self._persisted_rids = index
            mid = self._persisted_rids.get(rid)
        if mid is None or self.restore_model(mid, call.owner) is None:
            return None
        return self.futures.get(rid)

    # -- submission -------------------------------------------------------------------------------
    def submit_sequenced(self, call: Call, model_id: Any, seq_id: Any, *, request_type: str, fn: str,
                         prepare: Callable[[LiveModel], Callable[[], Any]]) -> dict[str, Any]:
        """Queue a request on its model's lane in seq_id order; the handle is returned once it is journaled.

        ``prepare(model)`` parses and checks the request (HTTPError = refused; the seq_id is then consumed
        so later ones run) and returns the job. ``fn`` names the endpoint method that replays the journaled
        body after a restart.
        """
        where = call.op
        if not isinstance(model_id, str) and PROTO_CONTENT_TYPE not in (call.headers.get("Content-Type") or ""):
            call.json()  # an unreadable body: say so (no model, so no seq_id to consume)
        model = self.model(call, model_id, where)
        seq = seq_of(seq_id, where)
        if seq is None:
            rid = request_id_for(model.model_id, "unsequenced", uuid.uuid4().hex)
        else:
            rid = request_id_for(model.model_id, seq)
            dup = self._duplicate(model, rid, seq, request_type, where)
            if dup is not None:
                return dup
        try:
            job = prepare(model)
        except HTTPError as exc:
            if seq is not None:
                self._refuse(model, seq)
                exc.headers["X-Tinker-Seq-Id-Consumed"] = str(seq)  # the client's lane goes on past it
            raise
        fut, created = self.add_future(ServerFuture(rid, request_type, call.op, call.owner, model_id=model.model_id))
        if not created:
            if fut.request_type != request_type:
                raise HTTPError(409, f"{where}: seq_id {seq} of model {model.model_id} was already used by a "
                                     f"{fut.request_type} request; use the next seq_id")
            return self.handle(fut)
        self.store.touch_run(model.model_id)
        if seq is not None:
            try:
                self.live.save_pending(model.model_id, seq, {
                    "fn": fn, "op": call.op, "request_type": request_type, "body": base64.b64encode(call.body).decode(),
                    "content_type": call.headers.get("Content-Type", "") or ""})
            except OSError as exc:  # not durable: refuse rather than hand out a handle a crash would lose
                self.futures.remove(rid)
                self._refuse(model, seq)
                raise HTTPError(503, f"{where}: could not journal the request ({exc}); retry it") from None
        model.lane.submit(seq, fut, job)
        return self.handle(fut)

    def _duplicate(self, model: LiveModel, rid: str, seq: int, request_type: str, where: str
                   ) -> dict[str, Any] | None:
        """The first handle of a retried seq_id (None when it is new); 400/409 when it cannot be queued."""
        def existing() -> dict[str, Any] | None:
            fut = self.futures.get(rid)
            if fut is None:
                return None
            if fut.request_type != request_type:
                raise HTTPError(409, f"{where}: seq_id {seq} of model {model.model_id} was already used by a "
                                     f"{fut.request_type} request; use the next seq_id")
            return self.handle(fut)  # a retry: same request id, first result, applied once

        dup = existing()
        if dup is not None:
            return dup
        why = model.lane.accepts(seq)
        if why is None:
            return None
        dup = existing()  # a concurrent duplicate may have registered (and even run) it meanwhile
        if dup is not None:
            return dup
        raise HTTPError(400, f"{where}: cannot queue seq_id {seq} for model {model.model_id}: {why}")

    def _refuse(self, model: LiveModel, seq: int) -> None:
        """Consume a refused seq_id so the lane does not wait for it (journaled: survives a restart)."""
        if model.lane.accepts(seq) is not None:
            return
        try:
            self.live.save_pending(model.model_id, seq, {"skip": True})
        except OSError:
            logger.warning("could not journal the skip of seq_id %s of model %s", seq, model.model_id)
        model.lane.skip(seq)

    def new_model(self, call: Call, session_id: str, model_seq_id: int, base_model: str,
                  request_type: str, make: Callable[[LiveModel], Callable[[], Any]], *, fn: str) -> dict[str, Any]:
        """Create a model whose first lane job (seq 0) is ``make(model)``; a retry gets the first handle.

        The creation is journaled (as seq 0) before the handle is returned, like every sequenced request.
        """
        model_id = f"{session_id}:train:{model_seq_id}"
        rid = request_id_for(model_id, "create")
        with self.lock:
            existing = self.futures.get(rid)
            if existing is None and self.restore_model(model_id, call.owner) is not None:
                existing = self.futures.get(rid)  # created before a restart: its first answer
            if existing is not None:
                return self.handle(existing)
            if self.models.get(model_id) is not None or self.store.get_run(model_id) is not None:
                raise HTTPError(409, f"model {model_id} already exists (model_seq_id {model_seq_id} was used); "
                                     f"use the next model_seq_id")
            model = LiveModel(model_id, session_id, call.owner, base_model, first_seq=0, on_step=self.after_step)
            job = make(model)
            self.live.save_pending(model_id, 0, {
                "fn": fn, "op": call.op, "request_type": request_type, "owner": call.owner,
                "body": base64.b64encode(call.body).decode(), "content_type": call.headers.get("Content-Type") or ""})
            fut, _ = self.add_future(ServerFuture(rid, request_type, call.op, call.owner, model_id=model_id))
            self.models[model_id] = model
        model.lane.submit(0, fut, job)
        return self.handle(fut)
