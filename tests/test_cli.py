"""CLI tests: argument handling offline, and every command against a LocalTinkerServer over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_API_KEY
from tinker_sync import __version__
from tinker_sync.cli import main

MODEL = "tinker-sync/tiny-byte"
T = 60.0


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_version_and_usage_errors() -> None:
    code, out, _ = run("version")
    assert code == 0 and out.strip() == f"tinker-sync {__version__}"
    code, out, _ = run("-f", "json", "version")
    assert code == 0 and json.loads(out) == {"version": __version__}
    assert run("nonsense")[0] == 2
    assert run("checkpoint")[0] == 2


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tinker_sync", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_errors_go_to_stderr_with_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", TEST_API_KEY)
    code, out, err = run("checkpoint", "info", "s3://x")
    assert code == 1 and out == "" and err.startswith("Error: ") and "tinker path" in err
    monkeypatch.setenv("TINKER_API_KEY", "bad-key")
    code, _, err = run("run", "list")
    assert code == 1 and "tml-" in err and "bad-key" not in err


@pytest.fixture
def env(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TINKER_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("TINKER_BASE_URL", local_server.url)
    from tinker_sync.service_client import ServiceClient

    with ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url) as service:
        training = service.create_lora_training_client(MODEL, rank=4)
        wpath = training.save_state("w1").result(T).path
        spath = training.save_weights_for_sampler("s1").result(T).path
        yield {"run": training.model_id, "w": wpath, "s": spath}


def test_run_commands(env: Any) -> None:
    code, out, err = run("run", "list")
    assert code == 0, err
    assert env["run"] in out and "Base Model" in out
    code, out, _ = run("-f", "json", "run", "list", "--limit", "0")
    assert code == 0 and env["run"] in [r["training_run_id"] for r in json.loads(out)["runs"]]
    code, out, _ = run("run", "list", "-c", "id,owner,checkpoint")
    assert code == 0 and "Owner" in out
    assert run("run", "list", "-c", "id,bogus")[0] == 1
    code, out, _ = run("run", "info", env["run"], "--format", "json")
    assert code == 0 and json.loads(out)["training_run_id"] == env["run"]
    code, _, err = run("run", "info", "missing:train:0")
    assert code == 1 and err.startswith("Error:")


def test_checkpoint_commands(env: Any, tmp_path: Path) -> None:
    code, out, _ = run("checkpoint", "list")
    assert code == 0 and env["w"] in out and env["s"] in out
    code, out, _ = run("-f", "json", "checkpoint", "list", "--run-id", env["run"])
    data = json.loads(out)
    assert code == 0 and data["run_id"] == env["run"] and len(data["checkpoints"]) == 2
    code, out, _ = run("-f", "json", "checkpoint", "info", env["w"])
    info = json.loads(out)
    assert code == 0 and info["tinker_path"] == env["w"] and info["is_lora"] is True and info["lora_rank"] == 4

    assert run("checkpoint", "publish", env["w"])[0] == 0
    code, _, err = run("checkpoint", "publish", env["w"])
    assert code == 1 and "409" in err  # already public
    assert run("checkpoint", "unpublish", env["w"])[0] == 0
    assert run("checkpoint", "set-ttl", env["w"], "--ttl", "3600")[0] == 0
    assert run("checkpoint", "set-ttl", env["w"], "--remove")[0] == 0
    assert run("checkpoint", "set-ttl", env["w"])[0] == 1

    code, out, err = run("-f", "json", "checkpoint", "download", env["w"], "-o", str(tmp_path))
    assert code == 0, err
    result = json.loads(out)
    dest = Path(result["destination"])
    assert dest.parent == tmp_path and result["file_size_bytes"] > 0
    assert (dest / "adapter_config.json").is_file()
    assert run("checkpoint", "download", env["w"], "-o", str(tmp_path))[0] == 1  # exists, no --force
    assert run("checkpoint", "download", env["w"], "-o", str(tmp_path), "--force")[0] == 0

    code, out, _ = run("checkpoint", "delete", env["s"])
    assert code == 1  # no -y and stdin is not a terminal
    code, out, _ = run("-f", "json", "checkpoint", "delete", "--run-id", env["run"], "--type", "sampler", "-y")
    assert code == 0 and json.loads(out) == {"deleted_count": 1, "failed": []}
    code, out, _ = run("checkpoint", "delete", env["w"], "-y")
    assert code == 0 and "Deleted 1 checkpoint(s)" in out
    code, out, _ = run("-f", "json", "checkpoint", "list", "--run-id", env["run"])
    assert json.loads(out)["checkpoints"] == []


def test_serve_subprocess_then_cli_against_it(tmp_path: Path) -> None:
    """`python -m tinker_sync serve` starts the local server; the CLI talks to it; SIGTERM stops it."""
    import os
    import re

    proc = subprocess.Popen(
        [sys.executable, "-m", "tinker_sync", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match, line
        env = dict(os.environ, TINKER_BASE_URL=match.group(1), TINKER_API_KEY=TEST_API_KEY)
        out = subprocess.run([sys.executable, "-m", "tinker_sync", "-f", "json", "run", "list"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"runs": []}
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
