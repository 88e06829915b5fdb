"""The official SDK's full public surface (tests/sdk_flows/full_flow.py) against LocalTinkerServer.

Each era runs in the official SDK's own Python, named by an environment variable (``.ci/run`` makes the
venvs): TINKER_SDK018_PYTHON for 0.18.0 (the last JSON-only client; its archive download follows the
302 form), TINKER_SDK_PYTHON for 0.25.0 and TINKER_SDK038_PYTHON for 0.38.0. Without one, its test is
skipped and says why.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinker_sync.local import LocalTinkerServer
from tinker_sync.local._tokenizer import install_hub_cache

FLOW = Path(__file__).parent / "sdk_flows" / "full_flow.py"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalTinkerServer]:
    # JWT exchange on: the SDK trades its key for a token first (and whoami has claims to read).
    with LocalTinkerServer(data_dir=tmp_path / "data", jwt_auth=True) as srv:
        yield srv


@pytest.mark.parametrize("env_var", ["TINKER_SDK018_PYTHON", "TINKER_SDK_PYTHON", "TINKER_SDK038_PYTHON"])
def test_official_sdk_full_flow(env_var: str, server: LocalTinkerServer, tmp_path: Path) -> None:
    sdk_python = os.environ.get(env_var)
    if not sdk_python:
        pytest.skip(f"set {env_var} to a python with the official tinker SDK")
    # The SDK's get_tokenizer() loads the model's tokenizer with transformers from the hub cache, offline.
    install_hub_cache(tmp_path / "hf" / "hub")
    env = {**os.environ, "TINKER_TELEMETRY": "0", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TINKER_PROJECT_ID": "sdk-flow-project"}
    out = subprocess.run(
        [sdk_python, str(FLOW), server.url], capture_output=True, text=True, timeout=600, env=env,
        check=False, cwd=tmp_path,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
    failures = "\n".join(f"{f['step']}: {f['error']}" for f in summary.get("failures", []))
    assert out.returncode == 0 and summary.get("failed") == 0, (failures or out.stderr[-3000:])
    assert summary["steps"] >= 40
