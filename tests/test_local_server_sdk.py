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


FLOW_038 = r'''
import pickle
import sys
import urllib.request
import warnings
import tinker
from tinker import types

warnings.simplefilter("ignore")
sc = tinker.ServiceClient(base_url=sys.argv[1], api_key="tml-sdk-interop")
tc = sc.create_lora_training_client(base_model="tinker-sync/tiny-byte", rank=4)
if hasattr(tc, "result"):
    tc = tc.result()
toks = list(b"Q: hi\nA: hello")
datum = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                    loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)})
tc.forward_backward([datum], "cross_entropy").result(timeout=60)
tc.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
rest = sc.create_rest_client()
assert rest.whoami().result(timeout=60).user_urn.startswith("tml:user:")  # JWT exchange (pjwt_auth_enabled)

# sampling through retrieve_futures (sample_use_retrieve_futures), a pickled clone joins the session
samp = tc.save_weights_and_get_sampling_client()
prompt = types.ModelInput.from_ints(list(b"Q: hi\nA:"))
futs = [samp.sample(prompt=prompt, num_samples=1, sampling_params=types.SamplingParams(max_tokens=4, seed=i))
        for i in range(6)]
assert all(len(f.result(timeout=60).sequences) == 1 for f in futs)
clone = pickle.loads(pickle.dumps(samp))
assert len(clone.sample(prompt=prompt, num_samples=2, sampling_params=types.SamplingParams(max_tokens=3)
                        ).result(timeout=60).sequences) == 2

# external weights: export, signed per-file URLs, unauthenticated download
ext = tc.save_weights_external("export-1", ttl_seconds=7200).result(timeout=60)
assert ext.path.endswith("/external_weights/export-1"), ext
urls = rest.get_external_weights_urls(ext.path).result(timeout=60).urls
assert "adapter_model.safetensors" in urls, urls
assert len(urllib.request.urlopen(urls["adapter_model.safetensors"], timeout=30).read()) > 0

# copy_weights (service: new session; rest: into a project), storage usage, session search, trace export
state = tc.save_state("state").result(timeout=60).path
copied = rest.copy_weights(state, "proj-archive", ttl_seconds=3600).result(timeout=60)
assert copied.startswith("tinker://copy-") and copied.endswith("/weights/state"), copied
usage = rest.get_current_checkpoint_storage_usage().result(timeout=60)
assert "proj-archive" in [item.project_id for item in usage.data], usage
found = rest.search_sessions(types.SessionSearchRequest(limit=5)).result(timeout=60)
assert found.sessions and found.sessions[0].status is not None
trace_url = rest.export_session_trace(found.sessions[0].session_id).result(timeout=60)
assert b"traceEvents" in urllib.request.urlopen(trace_url, timeout=30).read()
print("SDK-038-OK")
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
    out = subprocess.run(
        [SDK_PYTHON, str(script), server.url], capture_output=True, text=True, timeout=240, env=env, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SDK-INTEROP-OK" in out.stdout


def test_official_038_sdk_new_endpoints(tmp_path: Path) -> None:
    """0.38 paths with the server flags on: retrieve_futures, join, external weights, copy, search, JWT, trace."""
    assert SDK_PYTHON is not None
    probe = "import sys, tinker; sys.exit(0 if hasattr(tinker.types, 'SessionSearchRequest') else 1)"
    check = subprocess.run([SDK_PYTHON, "-c", probe], capture_output=True, check=False, timeout=60)
    if check.returncode != 0:
        pytest.skip("the SDK at TINKER_SDK_PYTHON predates 0.38")
    script = tmp_path / "flow038.py"
    script.write_text(FLOW_038)
    env = {**os.environ, "TINKER_TELEMETRY": "0"}
    with LocalTinkerServer(data_dir=tmp_path / "data", jwt_auth=True) as srv:
        out = subprocess.run([SDK_PYTHON, str(script), srv.url], capture_output=True, text=True, timeout=240, env=env,
                             check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "SDK-038-OK" in out.stdout
        paths = {r.path for r in srv.requests}
        assert {"/api/v1/retrieve_futures", "/api/v1/join_sampling_session", "/api/v1/auth/token",
                "/api/v1/save_weights_external", "/api/v1/copy_weights", "/api/v1/sessions/search"} <= paths
        encodings = {next((v for k, v in r.headers.items() if k.lower() == "content-encoding"), None)
                     for r in srv.requests if r.path == "/api/v1/forward_backward"}
        assert encodings == {"zstd"}  # proto_compress_fwdbwd is on where zstandard is installed
