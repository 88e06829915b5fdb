"""Interop check: the OFFICIAL tinker SDK trains and samples against LocalTinkerServer.

Skipped unless TINKER_SDK_PYTHON names a Python interpreter with the official ``tinker`` package
installed (e.g. ``python -m venv /tmp/sdk && /tmp/sdk/bin/pip install tinker==0.25.0``; 0.38.0 works too).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinker_sync.local import LocalTinkerServer

SDK_PYTHON = os.environ.get("TINKER_SDK_PYTHON")
pytestmark = pytest.mark.skipif(not SDK_PYTHON, reason="set TINKER_SDK_PYTHON to a python with the official tinker SDK")

FLOW = r'''
import sys
import tinker
from tinker import types

sc = tinker.ServiceClient(base_url=sys.argv[1], api_key="tml-sdk-interop")
assert "tinker-sync/tiny-byte" in [m.model_name for m in sc.get_server_capabilities().supported_models]
tc = sc.create_lora_training_client(base_model="tinker-sync/tiny-byte", rank=4)
if hasattr(tc, "result"):
    tc = tc.result()
def datum(p, c):
    toks = list((p + c).encode())
    w = [0.0] * (len(p) - 1) + [1.0] * len(c)
    return types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                       loss_fn_inputs={"target_tokens": toks[1:], "weights": w})
data = [datum("Q: hi\nA:", " hello"), datum("Q: 2+2\nA:", " 4")]
losses = []
for _ in range(8):
    fb = tc.forward_backward(data, "cross_entropy")
    op = tc.optim_step(types.AdamParams(learning_rate=1e-2))
    losses.append(fb.result(timeout=60).metrics["loss:sum"])
    op.result(timeout=60)
assert losses[-1] < losses[0] / 2, losses
state = tc.save_state("state").result(timeout=60).path
sp = tc.save_weights_for_sampler("s").result(timeout=60).path
samp = sc.create_sampling_client(model_path=sp)
if hasattr(samp, "result") and not hasattr(samp, "sample"):
    samp = samp.result()
res = samp.sample(prompt=types.ModelInput.from_ints(list(b"Q: hi\nA:")), num_samples=2,
                  sampling_params=types.SamplingParams(max_tokens=6), include_prompt_logprobs=True).result(timeout=60)
assert len(res.sequences) == 2 and res.prompt_logprobs[0] is None
tc2 = sc.create_training_client_from_state(state)
if hasattr(tc2, "result") and not hasattr(tc2, "forward"):
    tc2 = tc2.result()
tc2.forward(data, "cross_entropy").result(timeout=60)
print("SDK-INTEROP-OK", tinker.__version__ if hasattr(tinker, "__version__") else "")
'''


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalTinkerServer]:
    with LocalTinkerServer(data_dir=tmp_path / "data") as srv:
        yield srv


def test_official_sdk_train_and_sample(server: LocalTinkerServer, tmp_path: Path) -> None:
    assert SDK_PYTHON is not None
    script = tmp_path / "flow.py"
    script.write_text(FLOW)
    env = {**os.environ, "TINKER_TELEMETRY": "0"}
    out = subprocess.run([SDK_PYTHON, str(script), server.url], capture_output=True, text=True, timeout=240, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SDK-INTEROP-OK" in out.stdout
