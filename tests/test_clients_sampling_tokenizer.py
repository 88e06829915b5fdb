"""Tokenizer names from the server never open local files (real HTTP against tests/scripted_server.py)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scripted_server import Reply, ScriptedServer
from tinker_sync import tokenizer as tok_mod
from tinker_sync._config import ClientConfig
from tinker_sync._runtime import Runtime
from tinker_sync.sampling_client import SamplingClient


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    target = tmp_path / "tokenizer.json"
    shutil.copy(tok_mod._PACKAGED_PATH, target)
    tok_mod.clear_tokenizer_cache()
    return target


@pytest.mark.parametrize("as_dir", [False, True])
def test_sampler_base_model_that_is_a_local_path_is_refused(
    server: ScriptedServer, tokenizer_file: Path, as_dir: bool
) -> None:
    hostile = str(tokenizer_file.parent if as_dir else tokenizer_file)
    server.default("/api/v1/samplers/s:sample:0", Reply(200, {"sampler_id": "s:sample:0", "base_model": hostile}))
    runtime = Runtime(ClientConfig(base_url=server.url, api_key=f"tml-{uuid.uuid4().hex}"))
    sampler = SamplingClient(None, sampling_session_id="s:sample:0", runtime=runtime)
    try:
        with pytest.raises(ValueError, match="not a Hugging Face hub id"):
            sampler.get_tokenizer()
    finally:
        sampler.close()


def test_user_given_paths_still_load(tokenizer_file: Path) -> None:
    assert tok_mod.get_tokenizer(str(tokenizer_file)).encode("hi")
    assert tok_mod.get_tokenizer(str(tokenizer_file.parent)).encode("hi")


@pytest.mark.parametrize("bad", ["../x", "~/tok", "/etc/passwd", "a\\b", "a/b/../../etc", "./tokenizer.json"])
def test_server_ids_that_are_not_hub_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Hugging Face hub id"):
        tok_mod.get_server_tokenizer("some/model", tokenizer_id=bad)


def test_server_ids_resolve_to_the_packaged_tokenizer() -> None:
    tok = tok_mod.get_server_tokenizer("tinker-sync/tiny-byte")
    assert tok.decode(tok.encode("abc", add_special_tokens=False)) == "abc"
