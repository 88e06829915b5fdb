"""The official tinker SDK's full public surface, run against a Tinker server (the local one in CI).

Run with the official SDK's own Python (it is never imported by tinker_sync's tests):

    <sdk python> tests/sdk_flows/full_flow.py <base_url> [--json]

Every public synchronous method of ServiceClient, TrainingClient, SamplingClient and RestClient that the
installed SDK version has, each ``*_async`` twin through asyncio, and the SDK's CLI commands are run as
steps. A step passes when the call returns without an error and its result has the expected shape. The
script prints one line per step and a JSON summary on the last line; it exits 1 if any step failed.
Methods the installed version does not have are skipped (0.25 has no RestClient search, no external
weights, ...), so one script covers both eras.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tinker
from tinker import types

BASE_URL = sys.argv[1]
KEY = "tml-sdk-full-flow"
MODEL = "tinker-sync/tiny-byte"
TIMEOUT = 120

results: list[dict[str, Any]] = []


def step(name: str, fn: Callable[[], Any], check: Callable[[Any], bool] | None = None) -> Any:
    """Run one step; record pass/fail; return its value (None when it failed)."""
    started = time.monotonic()
    try:
        value = fn()
        if check is not None and not check(value):
            raise AssertionError(f"unexpected result: {value!r:.300}")
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, then reported together
        tb = traceback.format_exc(limit=3)
        results.append({"step": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:600], "tb": tb[-1500:]})
        print(f"FAIL {name}: {type(exc).__name__}: {exc}"[:400], flush=True)
        return None
    results.append({"step": name, "ok": True, "s": round(time.monotonic() - started, 2)})
    print(f"ok   {name}", flush=True)
    return value


def has(obj: Any, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _topk_rows(seq: Any) -> int:
    """How many top-k rows of two (token, logprob) pairs a sampled sequence carries (-1: none)."""
    rows = seq.topk_logprobs
    if rows is None or any(row is None or len(row) != 2 for row in rows):
        return -1
    return len(rows)


def resolve(value: Any) -> Any:
    """0.38 creation methods return a client-future; 0.25 returns the client itself."""
    if hasattr(value, "result") and not any(has(value, m) for m in ("sample", "forward", "forward_backward")):
        return value.result(timeout=TIMEOUT)
    return value


def datum(prompt: str, completion: str) -> types.Datum:
    tokens = list((prompt + completion).encode())
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
    )


def rl_datum(prompt: str, completion: str, advantage: float) -> types.Datum:
    tokens = list((prompt + completion).encode())
    n = len(tokens) - 1
    mask = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "logprobs": [-1.0] * n,
            "advantages": [advantage * m for m in mask],
        },
    )


DATA = [datum("Q: hi\nA:", " hello"), datum("Q: 2+2\nA:", " 4")]
RL_DATA = [rl_datum("Q: hi\nA:", " hello", 1.0), rl_datum("Q: hi\nA:", " bye", -1.0)]
PROMPT = types.ModelInput.from_ints(list(b"Q: hi\nA:"))
PARAMS = types.SamplingParams(max_tokens=6, temperature=1.0, seed=3)


def fb_ok(out: Any) -> bool:
    return bool(out.metrics) and len(out.loss_fn_outputs) == len(DATA)


def path_ok(resp: Any) -> bool:
    return str(resp.path).startswith("tinker://")


def inflight_follows(tc: Any) -> bool:
    """An inflight sampler made before a training step samples from the next inflight save's weights."""
    early = resolve(tc.save_weights_and_get_sampling_client(kind="inflight"))
    before = early.compute_logprobs(PROMPT).result(timeout=TIMEOUT)
    tc.forward_backward(DATA, "cross_entropy").result(timeout=TIMEOUT)
    tc.optim_step(types.AdamParams(learning_rate=5e-2)).result(timeout=TIMEOUT)
    late = resolve(tc.save_weights_and_get_sampling_client(kind="inflight"))
    after = late.compute_logprobs(PROMPT).result(timeout=TIMEOUT)
    if after == before or early.compute_logprobs(PROMPT).result(timeout=TIMEOUT) != after:
        raise AssertionError(f"the earlier inflight sampler did not follow the later save: {before} -> {after}")
    return True


def main() -> int:
    sc = tinker.ServiceClient(base_url=BASE_URL, api_key=KEY)
    version = getattr(tinker, "__version__", "?")
    print(f"official tinker {version} against {BASE_URL}", flush=True)

    # -- ServiceClient ---------------------------------------------------------------------
    caps = step("ServiceClient.get_server_capabilities", sc.get_server_capabilities,
                lambda c: MODEL in [m.model_name for m in c.supported_models])
    if has(sc, "get_console_url"):
        step("ServiceClient.get_console_url", sc.get_console_url, lambda u: isinstance(u, str))
    if has(sc, "get_telemetry"):
        step("ServiceClient.get_telemetry", sc.get_telemetry)
    rest = step("ServiceClient.create_rest_client", sc.create_rest_client)
    tc = step("ServiceClient.create_lora_training_client",
              lambda: resolve(sc.create_lora_training_client(base_model=MODEL, rank=4, seed=0)))
    if tc is None or caps is None:
        return finish()

    # -- TrainingClient ----------------------------------------------------------------------
    step("TrainingClient.get_info", tc.get_info, lambda i: i.model_data.model_name == MODEL
         if hasattr(i, "model_data") and hasattr(i.model_data, "model_name") else True)
    if has(tc, "get_console_url"):
        step("TrainingClient.get_console_url", tc.get_console_url, lambda u: isinstance(u, str))
    if has(tc, "get_telemetry"):
        step("TrainingClient.get_telemetry", tc.get_telemetry)
    step("TrainingClient.get_tokenizer", lambda: tc.get_tokenizer().encode("hi"), lambda t: len(t) > 0)
    losses: list[float] = []

    def train_step() -> float:
        fb = tc.forward_backward(DATA, "cross_entropy")
        op = tc.optim_step(types.AdamParams(learning_rate=1e-2))
        loss = float(fb.result(timeout=TIMEOUT).metrics["loss:sum"])
        op.result(timeout=TIMEOUT)
        losses.append(loss)
        return loss

    for i in range(6):
        step(f"TrainingClient.forward_backward+optim_step #{i}", train_step)
    step("training lowers the loss", lambda: losses, lambda ls: len(ls) == 6 and ls[-1] < ls[0] / 2)
    step("TrainingClient.forward", lambda: tc.forward(DATA, "cross_entropy").result(timeout=TIMEOUT), fb_ok)
    for loss_fn in ("importance_sampling", "ppo", "cispo", "dro"):
        cfg = {"beta": 0.1} if loss_fn == "dro" else None
        step(f"TrainingClient.forward_backward[{loss_fn}]",
             lambda lf=loss_fn, c=cfg: tc.forward_backward(RL_DATA, lf, c).result(timeout=TIMEOUT),
             lambda o: bool(o.metrics))
    if "gspo" in str(getattr(types, "LossFnType", "")):
        for loss_fn in ("gspo", "stable_reinforce"):
            step(f"TrainingClient.forward_backward[{loss_fn}]",
                 lambda lf=loss_fn: tc.forward_backward(RL_DATA, lf).result(timeout=TIMEOUT),
                 lambda o: bool(o.metrics))
    try:
        import torch

        has_torch = True
    except ImportError:
        has_torch = False
    if has_torch:
        def custom_loss(data: Any, logprobs: Any) -> Any:
            loss = sum(-(lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum() for d, lp in zip(data, logprobs))
            return loss, {"custom": float(loss)}

        step("TrainingClient.forward_backward_custom",
             lambda: tc.forward_backward_custom(DATA, custom_loss).result(timeout=TIMEOUT), lambda o: bool(o.metrics))
    if hasattr(types, "DimuonParams"):  # 0.38: optim_step's first parameter is optim_params
        step("TrainingClient.optim_step(optim_params=AdamParams)",
             lambda: tc.optim_step(optim_params=types.AdamParams(learning_rate=1e-3)).result(timeout=TIMEOUT))

    state = step("TrainingClient.save_state", lambda: tc.save_state("state").result(timeout=TIMEOUT), path_ok)
    sampler_path = step("TrainingClient.save_weights_for_sampler",
                        lambda: tc.save_weights_for_sampler("s1").result(timeout=TIMEOUT), path_ok)
    if state is not None:
        step("TrainingClient.load_state", lambda: tc.load_state(state.path).result(timeout=TIMEOUT))
        step("TrainingClient.load_state_with_optimizer",
             lambda: tc.load_state_with_optimizer(state.path).result(timeout=TIMEOUT))
    external = None
    if has(tc, "save_weights_external"):
        external = step("TrainingClient.save_weights_external",
                        lambda: tc.save_weights_external("ext1").result(timeout=TIMEOUT), path_ok)

    # -- SamplingClient ------------------------------------------------------------------------
    samp = step("TrainingClient.save_weights_and_get_sampling_client",
                lambda: resolve(tc.save_weights_and_get_sampling_client()))
    if sampler_path is not None:
        samp2 = step("ServiceClient.create_sampling_client(model_path)",
                     lambda: resolve(sc.create_sampling_client(model_path=sampler_path.path)))
        samp = samp or samp2
        step("TrainingClient.create_sampling_client",
             lambda: resolve(tc.create_sampling_client(sampler_path.path)))
    step("ServiceClient.create_sampling_client(base_model)",
         lambda: resolve(sc.create_sampling_client(base_model=MODEL)))
    if samp is not None:
        step("SamplingClient.sample", lambda: samp.sample(PROMPT, 2, PARAMS).result(timeout=TIMEOUT),
             lambda r: len(r.sequences) == 2 and all(len(s.tokens) <= 6 for s in r.sequences))
        step("SamplingClient.sample(include_prompt_logprobs, topk_prompt_logprobs)",
             lambda: samp.sample(PROMPT, 1, PARAMS, include_prompt_logprobs=True,
                                 topk_prompt_logprobs=2).result(timeout=TIMEOUT),
             lambda r: r.prompt_logprobs is not None and r.prompt_logprobs[0] is None)
        step("SamplingClient.compute_logprobs", lambda: samp.compute_logprobs(PROMPT).result(timeout=TIMEOUT),
             lambda lp: len(lp) == len(PROMPT.to_ints()))
        if "topk_sample_logprobs" in inspect.signature(tinker.SamplingClient.sample).parameters:
            step("SamplingClient.sample(topk_sample_logprobs)",
                 lambda: samp.sample(PROMPT, 1, PARAMS, topk_sample_logprobs=2).result(timeout=TIMEOUT),
                 lambda r: _topk_rows(r.sequences[0]) == len(r.sequences[0].tokens))
            step("SamplingClient.sample(prompt_logprobs_last_n)",
                 lambda: samp.sample(PROMPT, 1, PARAMS, include_prompt_logprobs=True,
                                     prompt_logprobs_last_n=3).result(timeout=TIMEOUT))
            step("SamplingClient.compute_logprobs(prompt_logprobs_last_n)",
                 lambda: samp.compute_logprobs(PROMPT, prompt_logprobs_last_n=3).result(timeout=TIMEOUT))
            rows = len(PROMPT.to_ints()) - 1
            dense_targets = types.TensorData(data=[t for i in range(rows) for t in (PROMPT.to_ints()[i + 1], -1)],
                                             dtype="int64", shape=[rows, 2])
            step("SamplingClient.sample(target_prompt_logprobs)",
                 lambda: samp.sample(PROMPT, 1, PARAMS, target_prompt_logprobs=dense_targets).result(timeout=TIMEOUT),
                 lambda r: list(r.target_prompt_logprobs.shape) == [rows, 2]
                 and all(lp < 0 for lp in list(r.target_prompt_logprobs.data)[0::2])
                 and all(lp == 0.0 for lp in list(r.target_prompt_logprobs.data)[1::2]))
            crow = [0, 1] + [1] * (rows - 2) + [2]  # cells (0, 1) and (rows - 1, 0)
            sparse_targets = types.TensorData(data=[104, 65], dtype="int64", shape=[rows, 2],
                                              sparse_crow_indices=crow, sparse_col_indices=[1, 0])
            step("SamplingClient.sample(target_prompt_logprobs, sparse CSR)",
                 lambda: samp.sample(PROMPT, 1, PARAMS, target_prompt_logprobs=sparse_targets).result(timeout=TIMEOUT),
                 lambda r: list(r.target_prompt_logprobs.sparse_crow_indices) == crow
                 and list(r.target_prompt_logprobs.sparse_col_indices) == [1, 0]
                 and len(r.target_prompt_logprobs.data) == 2 and all(lp < 0 for lp in r.target_prompt_logprobs.data))
            step("SamplingClient.sample(prompt_alt_tokens_k)",
                 lambda: samp.sample(PROMPT, 1, PARAMS, prompt_alt_tokens_k=3).result(timeout=TIMEOUT),
                 lambda r: list(r.prompt_alt_tokens.tokens.shape) == [rows, 3]
                 and list(r.prompt_alt_tokens.logprobs.shape) == [rows, 3]
                 and all(lp <= 0 for lp in r.prompt_alt_tokens.logprobs.data))
        if has(samp, "get_base_model"):
            step("SamplingClient.get_base_model", samp.get_base_model, lambda m: m == MODEL)
        step("SamplingClient.get_tokenizer", lambda: samp.get_tokenizer().encode("hi"), lambda t: len(t) > 0)
        if has(samp, "get_sampler_handle"):
            handle = step("SamplingClient.get_sampler_handle", samp.get_sampler_handle, lambda h: isinstance(h, str))
            if handle is not None:
                os.environ["TINKER_BASE_URL"] = BASE_URL
                step("SamplingClient.from_sampler_handle",
                     lambda: tinker.SamplingClient.from_sampler_handle(handle, api_key=KEY)
                     .sample(PROMPT, 1, PARAMS).result(timeout=TIMEOUT))
        if has(samp, "get_telemetry"):
            step("SamplingClient.get_telemetry", samp.get_telemetry)

    if "kind" in inspect.signature(tinker.TrainingClient.save_weights_and_get_sampling_client).parameters:
        step("TrainingClient.save_weights_and_get_sampling_client(kind='inflight')", lambda: inflight_follows(tc))

    # -- state round trips ---------------------------------------------------------------------
    if state is not None:
        step("ServiceClient.create_training_client_from_state",
             lambda: resolve(sc.create_training_client_from_state(state.path)).forward(DATA, "cross_entropy")
             .result(timeout=TIMEOUT))
        step("ServiceClient.create_training_client_from_state_with_optimizer",
             lambda: resolve(sc.create_training_client_from_state_with_optimizer(state.path)))
    if has(sc, "copy_weights") and sampler_path is not None:
        step("ServiceClient.copy_weights", lambda: sc.copy_weights(sampler_path.path).result(timeout=TIMEOUT),
             lambda p: str(p).startswith("tinker://"))

    # -- asyncio twins (the SDK's own event loop; tinker_sync itself has none) --------------------
    async def async_flow() -> None:
        await tc.forward_backward_async(DATA, "cross_entropy")
        fut = await tc.optim_step_async(types.AdamParams(learning_rate=1e-3))
        await fut
        info = await tc.get_info_async() if has(tc, "get_info_async") else None
        assert info is None or info is not None
        caps2 = await sc.get_server_capabilities_async()
        assert caps2.supported_models
        if samp is not None:
            res = await samp.sample_async(PROMPT, 1, PARAMS)
            assert len(res.sequences) == 1
            lp = await samp.compute_logprobs_async(PROMPT)
            assert len(lp) == len(PROMPT.to_ints())
        tc2 = await sc.create_lora_training_client_async(base_model=MODEL, rank=4)
        await (await tc2.forward_async(DATA, "cross_entropy"))
        saved = await (await tc2.save_weights_for_sampler_async("async-s"))
        s2 = await sc.create_sampling_client_async(model_path=saved.path)
        await s2.sample_async(PROMPT, 1, PARAMS)
        if rest is not None and has(rest, "list_training_runs_async"):
            runs = await rest.list_training_runs_async()
            if inspect.isawaitable(runs):  # 0.38 returns a future to await, 0.25 the response itself
                runs = await runs
            assert runs.training_runs

    step("asyncio twins (forward_backward/optim_step/get_info/sample/compute_logprobs/create_*)",
         lambda: asyncio.run(async_flow()))

    # -- RestClient ----------------------------------------------------------------------------------
    sid = None
    if rest is not None:
        run_id = tc.model_id if hasattr(tc, "model_id") else None
        step("RestClient.list_training_runs", lambda: rest.list_training_runs().result(timeout=TIMEOUT),
             lambda r: len(r.training_runs) >= 1)
        if run_id is not None:
            step("RestClient.get_training_run", lambda: rest.get_training_run(run_id).result(timeout=TIMEOUT))
            step("RestClient.list_checkpoints", lambda: rest.list_checkpoints(run_id).result(timeout=TIMEOUT),
                 lambda r: len(r.checkpoints) >= 2)
        step("RestClient.list_user_checkpoints", lambda: rest.list_user_checkpoints().result(timeout=TIMEOUT),
             lambda r: len(r.checkpoints) >= 2)
        listed = step("RestClient.list_sessions", lambda: rest.list_sessions().result(timeout=TIMEOUT),
                      lambda r: len(r.sessions) >= 1)
        sid = listed.sessions[0] if listed is not None else None
        if sid is not None:
            step("RestClient.get_session", lambda: rest.get_session(sid).result(timeout=TIMEOUT))
        if sampler_path is not None:
            tp = sampler_path.path
            step("RestClient.get_training_run_by_tinker_path",
                 lambda: rest.get_training_run_by_tinker_path(tp).result(timeout=TIMEOUT))
            step("RestClient.get_weights_info_by_tinker_path",
                 lambda: rest.get_weights_info_by_tinker_path(tp).result(timeout=TIMEOUT))
            step("RestClient.publish_checkpoint_from_tinker_path",
                 lambda: rest.publish_checkpoint_from_tinker_path(tp).result(timeout=TIMEOUT))
            step("RestClient.unpublish_checkpoint_from_tinker_path",
                 lambda: rest.unpublish_checkpoint_from_tinker_path(tp).result(timeout=TIMEOUT))
            step("RestClient.set_checkpoint_ttl_from_tinker_path",
                 lambda: rest.set_checkpoint_ttl_from_tinker_path(tp, 7200).result(timeout=TIMEOUT))
            if has(rest, "get_checkpoint_archive_url_from_tinker_path"):
                step("RestClient.get_checkpoint_archive_url_from_tinker_path",
                     lambda: rest.get_checkpoint_archive_url_from_tinker_path(tp).result(timeout=TIMEOUT))
            if has(rest, "copy_weights"):
                step("RestClient.copy_weights", lambda: rest.copy_weights(tp).result(timeout=TIMEOUT))
        if external is not None and has(rest, "get_external_weights_urls"):
            step("RestClient.get_external_weights_urls",
                 lambda: rest.get_external_weights_urls(external.path).result(timeout=TIMEOUT))
        if has(rest, "get_current_checkpoint_storage_usage"):
            step("RestClient.get_current_checkpoint_storage_usage",
                 lambda: rest.get_current_checkpoint_storage_usage().result(timeout=TIMEOUT))
        if has(rest, "search_sessions"):
            step("RestClient.search_sessions",
                 lambda: rest.search_sessions(types.SessionSearchRequest()).result(timeout=TIMEOUT))
        if sid is not None and has(rest, "export_session_trace"):
            step("RestClient.export_session_trace", lambda: rest.export_session_trace(sid).result(timeout=TIMEOUT))
        if has(rest, "get_server_capabilities"):
            step("RestClient.get_server_capabilities", lambda: rest.get_server_capabilities().result(timeout=TIMEOUT))
        if has(rest, "whoami"):  # the server runs with JWT exchange on, so the SDK has claims to read
            step("RestClient.whoami", lambda: rest.whoami().result(timeout=TIMEOUT),
                 lambda w: bool(getattr(w, "user_urn", None) or getattr(w, "user_id", None)))
        if has(rest, "get_audit_log"):
            step("RestClient.get_audit_log", lambda: rest.get_audit_log().result(timeout=TIMEOUT))
        if has(rest, "get_billing_usage"):
            step("RestClient.get_billing_usage",
                 lambda: rest.get_billing_usage("2026-01-01", "2026-01-02").result(timeout=TIMEOUT))
        doomed = step("TrainingClient.save_state (to delete)", lambda: tc.save_state("doomed").result(timeout=TIMEOUT),
                      path_ok)
        if doomed is not None:
            step("RestClient.delete_checkpoint_from_tinker_path",
                 lambda: rest.delete_checkpoint_from_tinker_path(doomed.path).result(timeout=TIMEOUT))

    # -- the SDK's CLI ---------------------------------------------------------------------------
    env = {**os.environ, "TINKER_BASE_URL": BASE_URL, "TINKER_API_KEY": KEY, "TINKER_TELEMETRY": "0"}

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "tinker.cli", *args], capture_output=True, text=True,
                             timeout=TIMEOUT, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"exit {out.returncode}: {(out.stderr or out.stdout)[-600:]}")
        return out.stdout

    step("cli version", lambda: cli("version"))
    step("cli run list", lambda: cli("run", "list"))
    if tc is not None and hasattr(tc, "model_id"):
        step("cli run info", lambda: cli("run", "info", tc.model_id))
        step("cli checkpoint list --run-id", lambda: cli("checkpoint", "list", "--run-id", tc.model_id))
    step("cli checkpoint list", lambda: cli("checkpoint", "list"))
    if sampler_path is not None:
        step("cli checkpoint info", lambda: cli("checkpoint", "info", sampler_path.path))
        step("cli checkpoint publish", lambda: cli("checkpoint", "publish", sampler_path.path))
        step("cli checkpoint unpublish", lambda: cli("checkpoint", "unpublish", sampler_path.path))
        step("cli checkpoint set-ttl", lambda: cli("checkpoint", "set-ttl", sampler_path.path, "--ttl", "7200"))
    if state is not None or sampler_path is not None:
        # 0.38's CLI downloads training (weights) checkpoints; 0.25's downloads any archive.
        download_path = (state or sampler_path).path
        with tempfile.TemporaryDirectory() as out_dir:
            def download() -> list[str]:
                cli("checkpoint", "download", download_path, "--output", out_dir, "--force")
                return [str(p) for p in Path(out_dir).rglob("*.safetensors")]

            step("cli checkpoint download", download, lambda files: len(files) >= 1)
    commands = cli("--help")
    if "billing" in commands:
        step("cli billing usage", lambda: cli("billing", "usage", "2026-01-01", "2026-01-02"))
        if "checkpoint-storage" in cli("billing", "--help"):
            step("cli billing checkpoint-storage", lambda: cli("billing", "checkpoint-storage"))
    if "model" in commands:
        step("cli model list", lambda: cli("model", "list"), lambda out: MODEL in out)
    if "auth" in commands:
        step("cli auth status", lambda: cli("auth", "status"))
        step("cli auth whoami", lambda: cli("auth", "whoami"))
    if sid is not None and "session" in commands and "export-trace" in cli("session", "--help"):
        step("cli session export-trace", lambda: cli("session", "export-trace", sid, "--url-only"),
             lambda out: "http" in out)
    return finish()


def finish() -> int:
    failed = [r for r in results if not r["ok"]]
    print(json.dumps({"steps": len(results), "failed": len(failed), "failures": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
