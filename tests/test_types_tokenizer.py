"""get_tokenizer backends and the tokenizers wrapper's chat template, pad token and batch encoding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tinker_sync import tokenizer as tok_mod
from tinker_sync._chat_template import ChatTemplateError

PACKAGED = Path(tok_mod.__file__).parent / "local" / "assets" / "byte_tokenizer.json"
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    tok_mod.clear_tokenizer_cache()


@pytest.fixture
def tok_dir(tmp_path: Path) -> Path:
    vocab = json.loads(PACKAGED.read_text())["added_tokens"]
    specials = [t["content"] for t in vocab]
    shutil.copy(PACKAGED, tmp_path / "tokenizer.json")
    config = {"chat_template": TEMPLATE, "eos_token": specials[0], "bos_token": specials[-1],
              "pad_token": {"__type": "AddedToken", "content": specials[0], "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_wrapper_renders_the_tokenizers_own_template(tok_dir: Path) -> None:
    tok = tok_mod.get_tokenizer(str(tok_dir), backend="tokenizers")
    assert isinstance(tok, tok_mod.Tokenizer)
    bos, eos = tok.bos_token, tok.eos_token
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == f"{bos}<|system|>be brief{eos}\n<|user|>hi{eos}\n<|assistant|>"
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True) == tok.encode(text, add_special_tokens=False)
    partial = [*CHAT, {"role": "assistant", "content": "hel"}]
    assert tok.apply_chat_template(partial, tokenize=False, continue_final_message=True).endswith("<|assistant|>hel")
    batch = tok.apply_chat_template([CHAT, CHAT[:1]], tokenize=False)
    assert len(batch) == 2 and batch[1] == f"{bos}<|system|>be brief{eos}\n"


def test_wrapper_chat_template_errors(tok_dir: Path) -> None:
    tok = tok_mod.get_tokenizer(str(tok_dir), backend="tokenizers")
    with pytest.raises(ChatTemplateError, match="bad role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(TypeError, match="return_tensors"):
        tok.apply_chat_template(CHAT, return_tensors="pt")
    assert tok.apply_chat_template(CHAT, padding=False, tokenize=False)  # defaults are fine
    with pytest.raises(ValueError, match="cannot both"):
        tok.apply_chat_template(CHAT, add_generation_prompt=True, continue_final_message=True)
    bare = tok_mod.get_tokenizer(str(tok_dir / "tokenizer.json"), backend="tokenizers")
    (tok_dir / "tokenizer_config.json").unlink()
    tok_mod.clear_tokenizer_cache()
    bare = tok_mod.get_tokenizer(str(tok_dir / "tokenizer.json"), backend="tokenizers")
    with pytest.raises(ValueError, match="no chat_template"):
        bare.apply_chat_template(CHAT)
    assert bare.apply_chat_template(CHAT, chat_template="{{ messages[1]['content'] }}", tokenize=False) == "hi"


def test_wrapper_pad_token_and_encode_batch(tok_dir: Path) -> None:
    tok = tok_mod.get_tokenizer(str(tok_dir), backend="tokenizers")
    assert tok.pad_token_id is not None and tok.pad_token_id == tok.eos_token_id
    assert tok.encode_batch(["ab", "c"]) == [tok.encode("ab"), tok.encode("c")]
    with pytest.raises(TypeError):
        tok.encode_batch("ab")


def test_bad_backend_name() -> None:
    with pytest.raises(ValueError, match="backend"):
        tok_mod.get_tokenizer("tinker-sync/tiny-byte", backend="sentencepiece")  # type: ignore[arg-type]


def test_backend_chosen_by_the_environment(tok_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tok_mod.BACKEND_ENV, "tokenizers")
    assert isinstance(tok_mod.get_tokenizer(str(tok_dir)), tok_mod.Tokenizer)
    monkeypatch.setenv(tok_mod.BACKEND_ENV, "sentencepiece")
    with pytest.raises(ValueError, match="TINKER_SYNC_TOKENIZER_BACKEND must be"):
        tok_mod.get_tokenizer(str(tok_dir))
    # an explicit backend= wins over the environment
    assert isinstance(tok_mod.get_tokenizer(str(tok_dir), backend="tokenizers"), tok_mod.Tokenizer)


def test_transformers_backend_matches_the_wrapper(tok_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = tok_mod.get_tokenizer(str(tok_dir), backend="transformers")
    assert isinstance(hf, transformers.PreTrainedTokenizerBase)
    ours = tok_mod.get_tokenizer(str(tok_dir), backend="tokenizers")
    for kwargs in ({"add_generation_prompt": True}, {"add_generation_prompt": False}):
        assert ours.apply_chat_template(CHAT, tokenize=False, **kwargs) == hf.apply_chat_template(
            CHAT, tokenize=False, **kwargs
        )
    theirs = hf.apply_chat_template(CHAT, return_dict=True)  # transformers 4 returns a list by default, 5 a dict
    assert ours.apply_chat_template(CHAT, return_dict=True) == {
        "input_ids": list(theirs["input_ids"]), "attention_mask": list(theirs["attention_mask"])
    }
    assert hf.encode("abc", add_special_tokens=False) == ours.encode("abc", add_special_tokens=False)
    # "auto" is transformers when it is installed, as the official get_tokenizer returns
    assert isinstance(tok_mod.get_tokenizer(str(tok_dir)), transformers.PreTrainedTokenizerBase)


def test_transformers_backend_for_packaged_and_server_names() -> None:
    transformers = pytest.importorskip("transformers")
    tok = tok_mod.get_server_tokenizer("tinker-sync/tiny-byte", backend="transformers")
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert tok.decode(tok.encode("héllo", add_special_tokens=False)) == "héllo"
    with pytest.raises(ValueError, match="not a Hugging Face hub id"):
        tok_mod.get_server_tokenizer("m", "../etc", backend="transformers")


def test_auto_without_transformers_is_the_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    tok = tok_mod.get_tokenizer("tinker-sync/tiny-byte")
    assert isinstance(tok, tok_mod.Tokenizer)
    assert tok.decode(tok.encode("abc", add_special_tokens=False)) == "abc"


def test_packaged_models_have_a_chat_template() -> None:
    from tinker_sync.local import _tokenizer as local_tokenizer

    if not hasattr(local_tokenizer, "tokenizer_config"):
        pytest.skip("the local models' tokenizer_config (engine branch) is not merged yet")
    tok = tok_mod.get_tokenizer("tinker-sync/tiny-byte", backend="tokenizers")
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    assert ids and "hi" in tok.decode(ids)
