"""Tokenizer resolution (docs/protocol.rst §10) over the ``tokenizers`` library, plus text <-> ModelInput helpers.

Order: the packaged byte tokenizer of the local models (names starting ``tinker-sync/``), then a local
file or directory (only for names the USER gave), then the Hugging Face hub (needs network; a clear
error offline). Ids that came from the server never open local files. Cached per id.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tokenizers

    from .types import ModelInput

__all__ = [
    "Tokenizer",
    "clear_tokenizer_cache",
    "decode_model_input",
    "get_server_tokenizer",
    "get_tokenizer",
    "model_input_from_text",
    "resolve_tokenizer_id",
]

logger = logging.getLogger(__name__)

PACKAGED_PREFIX = "tinker-sync/"
_PACKAGED_PATH = Path(__file__).resolve().parent / "local" / "assets" / "byte_tokenizer.json"
_LLAMA3_TOKENIZER = "thinkingmachineslabinc/meta-llama-3-instruct-tokenizer"
_CACHE_SIZE = 32
# What a Hugging Face hub repo id may look like ("name" or "org/name"); anything else from the server
# (an absolute or relative path, "~", "..", a drive letter, a URL) is refused, never opened.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class Tokenizer:
    """A thin, transformers-like wrapper: ``encode(text) -> list[int]``, ``decode(ids) -> str``.

    The underlying ``tokenizers.Tokenizer`` is ``.backend``.
    """

    def __init__(self, backend: tokenizers.Tokenizer, name: str) -> None:
        self.backend = backend
        self.name = name
        self.eos_token_id = self._find_special(("<|endoftext|>", "</s>", "<|eot_id|>", "<|end_of_text|>", "<eos>"))
        self.bos_token_id = self._find_special(("<|begin_of_text|>", "<s>", "<bos>"))

    def _find_special(self, candidates: tuple[str, ...]) -> int | None:
        for tok in candidates:
            tid = self.backend.token_to_id(tok)
            if tid is not None:
                return int(tid)
        return None

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"encode() needs a str, got {type(text).__name__}")
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return str(self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def __call__(self, text: str) -> list[int]:
        return self.encode(text)


def resolve_tokenizer_id(model_name: str, tokenizer_id: str | None = None) -> str:
    """The tokenizer id for a model name (docs/protocol.rst §10 rules 1-2)."""
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model name must be a non-empty str, got {model_name!r}")
    if tokenizer_id:
        return tokenizer_id.split(":", 1)[0]
    name = model_name.split(":", 1)[0]
    if name.startswith("meta-llama/Llama-3"):
        return _LLAMA3_TOKENIZER
    parts = name.split("/")
    if len(parts) == 3:
        return "/".join(parts[:2])
    return name


_cache: OrderedDict[tuple[str, bool], Tokenizer] = OrderedDict()
_cache_lock = threading.Lock()


def clear_tokenizer_cache() -> None:
    """Forget every loaded tokenizer."""
    with _cache_lock:
        _cache.clear()


def _load(tid: str, local_files: bool) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as _HFTokenizer
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise ImportError("get_tokenizer needs the 'tokenizers' package: pip install tokenizers") from exc

    if tid.startswith(PACKAGED_PREFIX):
        return Tokenizer(_HFTokenizer.from_file(str(_PACKAGED_PATH)), tid)
    if local_files:
        local = Path(os.path.expanduser(tid))
        if local.is_file():
            return Tokenizer(_HFTokenizer.from_file(str(local)), tid)
        if local.is_dir():
            candidate = local / "tokenizer.json"
            if not candidate.is_file():
                raise ValueError(f"tokenizer directory {tid!r} has no tokenizer.json")
            return Tokenizer(_HFTokenizer.from_file(str(candidate)), tid)
    elif not _HUB_ID.fullmatch(tid) or ".." in tid:
        raise ValueError(
            f"the server named tokenizer {tid[:200]!r}, which is not a Hugging Face hub id; tinker_sync never "
            "opens local files named by the server. Pass a local tokenizer.json to "
            "tinker_sync.tokenizer.get_tokenizer() yourself if you trust it"
        )
    if tid.startswith(("TML/", "thinkingmachines/")):
        raise RuntimeError(
            f"tokenizer {tid!r} is a Thinking Machines tokenizer that tinker_sync cannot load; "
            "pass a local tokenizer.json path to get_tokenizer() instead"
        )
    try:
        backend = _HFTokenizer.from_pretrained(tid)
    except Exception as exc:
        raise RuntimeError(
            f"could not load tokenizer {tid!r} from the Hugging Face hub ({exc}). Offline? Download its "
            "tokenizer.json and pass the file path to get_tokenizer(), or set HF_TOKEN for gated models"
        ) from exc
    return Tokenizer(backend, tid)


def get_tokenizer(model_name: str, tokenizer_id: str | None = None, *, local_files: bool = True) -> Tokenizer:
    """The tokenizer for ``model_name`` (or an explicit ``tokenizer_id`` / local path), cached.

    Args:
        local_files: whether the name may be a local ``tokenizer.json`` file or a directory holding one.
            True for names the user typed; False for names that came from the server (``get_info``,
            ``/samplers``): those resolve only to the packaged tokenizer or a hub id, so a buggy or
            hostile server cannot make the client open local files. See ``get_server_tokenizer``.

    Raises:
        ValueError: empty name, a directory without tokenizer.json, or (``local_files=False``) a name
            that is not a hub id.
        RuntimeError: a hub id that cannot be downloaded (e.g. offline), or a TML-internal id.
    """
    tid = resolve_tokenizer_id(model_name, tokenizer_id)
    key = (tid, local_files)
    with _cache_lock:
        tok = _cache.get(key)
        if tok is not None:
            _cache.move_to_end(key)
            return tok
    tok = _load(tid, local_files)
    with _cache_lock:
        _cache[key] = tok
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return tok


def get_server_tokenizer(model_name: str, tokenizer_id: str | None = None) -> Tokenizer:
    """The tokenizer for a model name / tokenizer id reported by the SERVER: packaged or hub, never a local path."""
    return get_tokenizer(model_name, tokenizer_id, local_files=False)


def model_input_from_text(tokenizer: Tokenizer | Any, text: str, *, add_special_tokens: bool = False) -> ModelInput:
    """A ModelInput with the tokens of ``text``."""
    from .types import ModelInput

    if isinstance(tokenizer, Tokenizer):
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    else:
        ids = list(tokenizer.encode(text))
    return ModelInput.from_ints(ids)


def decode_model_input(tokenizer: Tokenizer | Any, model_input: ModelInput) -> str:
    """The text of a text-only ModelInput."""
    return str(tokenizer.decode(model_input.to_ints()))
