"""The official SDK's core flow against a foreign-style server (run in the SDK's own Python).

Usage: python foreign_sdk_flow.py URL BARE_IDS(0|1). Prints one JSON line: {"ok": true, ...} or
{"ok": false, "error": ...}. Used by tests/test_foreign_server.py to show the styles the proxy speaks
are ones the official SDK accepts.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import tinker
from tinker import types


def _ready(obj: Any) -> Any:
    """0.38 hands out futures of clients (usable as clients, with a warning); 0.25 the clients."""
    return obj.result() if callable(getattr(obj, "result", None)) else obj


def main(url: str, bare: bool) -> dict[str, Any]:
    service = tinker.ServiceClient(base_url=url, api_key="tml-test-key-0123456789")
    models = [m.model_name for m in service.get_server_capabilities().supported_models]
    assert "tinker-sync/tiny-byte" in models, models
    training = _ready(service.create_lora_training_client("tinker-sync/tiny-byte", rank=8))
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
                        loss_fn_inputs={"target_tokens": [2, 3, 4, 5], "weights": [1.0] * 4})
    losses = []
    for _ in range(4):
        fb = training.forward_backward([datum], "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=2e-2)).result()
        losses.append(fb.result().metrics["loss:sum"])
    assert losses[-1] < losses[0], losses
    info = training.get_info()
    assert info.model_id == training.model_id
    saved = training.save_state("s1").result()
    assert saved.path == f"tinker://{training.model_id}/weights/s1", saved
    try:
        training.save_state("s1").result()
        failed = "no error"
    except Exception as exc:  # noqa: BLE001 - the type is what is reported
        failed = type(exc).__name__
    assert training.load_state(saved.path).result().path in (None, saved.path)
    sampler_path = training.save_weights_for_sampler("smp").result().path
    sampler = _ready(service.create_sampling_client(model_path=sampler_path))
    seqs = sampler.sample(types.ModelInput.from_ints([1, 2]), 2, types.SamplingParams(max_tokens=3)).result().sequences
    assert len(seqs) == 2
    rest = service.create_rest_client()
    ids = sorted(c.checkpoint_id for c in rest.list_checkpoints(training.model_id).result().checkpoints)
    assert ids == (["s1", "smp"] if bare else ["sampler_weights/smp", "weights/s1"]), ids
    rest.publish_checkpoint_from_tinker_path(saved.path).result()
    rest.unpublish_checkpoint_from_tinker_path(saved.path).result()
    rest.delete_checkpoint(training.model_id, "smp" if bare else "sampler_weights/smp").result()
    left = [c.checkpoint_id for c in rest.list_checkpoints(training.model_id).result().checkpoints]
    assert left == ["s1" if bare else "weights/s1"], left
    return {"ok": True, "failed_future": failed, "info_type": getattr(info, "type", "absent")}


if __name__ == "__main__":
    try:
        out = main(sys.argv[1], sys.argv[2] == "1")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "trace": traceback.format_exc()[-3000:]}
    print(json.dumps(out))
