"""Tokenizer resolution (docs/protocol.rst §10), plus text <-> ModelInput helpers.

With ``transformers`` installed (extra ``[hf]``) ``get_tokenizer`` returns a transformers tokenizer, as
the official SDK does; without it, a ``Tokenizer`` over the ``tokenizers`` library with ``encode``,
``decode``, ``encode_batch``, ``pad_token_id`` and ``apply_chat_template`` (Jinja, extra ``[jinja]``).
Order: the packaged byte tokenizer of the local models (names starting ``tinker-sync/``), then a local
file or directory (only for names the USER gave), then the Hugging Face hub (needs network; a clear
error offline). Ids that came from the server never open local files. Cached per id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._exceptions import TinkerError

if TYPE_CHECKING:
    import tokenizers

    from .types import ModelInput

__all__ = [
    "Tokenizer",
    "TokenizerLike",
    "TokenizerLoadError",
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


Backend = Literal["auto", "transformers", "tokenizers"]


class TokenizerLoadError(TinkerError, RuntimeError):
    """A tokenizer could not be loaded (hub unreachable, gated, or a Thinking Machines internal id)."""



class TokenizerLike(Protocol):
    """What get_tokenizer returns: a transformers tokenizer or a ``Tokenizer`` (the common part)."""

    eos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        """Render a conversation with the tokenizer's chat template (ids, or text with ``tokenize=False``)."""
# transformers options apply_chat_template cannot honour here: refused by name unless left at their defaults.
_UNSUPPORTED_CHAT_OPTIONS = ("padding", "truncation", "max_length", "return_tensors",
                             "return_assistant_tokens_mask", "tokenizer_kwargs")


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a str or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A thin, transformers-like wrapper: ``encode(text) -> list[int]``, ``decode(ids) -> str``,
    ``encode_batch``, ``pad_token_id`` and ``apply_chat_template`` from the tokenizer's own chat template.

    The underlying ``tokenizers.Tokenizer`` is ``.backend``; ``config`` is its ``tokenizer_config.json``
    (special tokens, ``chat_template``) when one was found.
    """

    def __init__(self, backend: tokenizers.Tokenizer, name: str, config: Mapping[str, Any] | None = None) -> None:
        self.backend = backend
        self.name = name
        self.config: dict[str, Any] = dict(config or {})
        self.eos_token = self._special("eos_token", ("<|endoftext|>", "</s>", "<|eot_id|>", "<|end_of_text|>", "<eos>"))
        self.bos_token = self._special("bos_token", ("<|begin_of_text|>", "<s>", "<bos>"))
        self.pad_token = self._special("pad_token", ("<|pad|>", "<pad>", "[PAD]"))
        self.eos_token_id = self._id_of(self.eos_token)
        self.bos_token_id = self._id_of(self.bos_token)
        self.pad_token_id = self._id_of(self.pad_token)
        padding = backend.padding
        if self.pad_token_id is None and padding:
            self.pad_token_id = int(padding["pad_id"])
        self.chat_template: Any = self.config.get("chat_template")

    def _special(self, key: str, candidates: tuple[str, ...]) -> str | None:
        configured = _token_text(self.config.get(key))
        if configured is not None:
            return configured
        for tok in candidates:
            if self.backend.token_to_id(tok) is not None:
                return tok
        return None

    def _id_of(self, token: str | None) -> int | None:
        tid = self.backend.token_to_id(token) if token is not None else None
        return int(tid) if tid is not None else None


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

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text (encoded in parallel by the Rust backend)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch() needs a list of str")
        return [list(e.ids) for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        tools: list[Any] | None = None,
        documents: list[Any] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Render ``conversation`` (a list of ``{"role", "content"}`` messages, or a list of them) with the
        tokenizer's chat template, as transformers does; returns token ids (``tokenize=True``) or text.

        Extra keyword arguments are template variables, as in transformers. ``chat_template`` is a
        template string or the name of one of the tokenizer's named templates. ``return_dict=True`` (with
        ``tokenize``) gives ``{"input_ids", "attention_mask"}`` as transformers 5 does by default.

        Raises:
            ValueError: the tokenizer has no chat template, or the template refused the conversation.
            TypeError: a transformers option this wrapper cannot honour (padding, return_tensors, ...).
            ImportError: jinja2 is not installed (``pip install 'tinker-sync[jinja]'``).
        """
        from ._chat_template import render_chat_template

        _refuse_unsupported(kwargs)
        template = self._chat_template(chat_template)
        batched = bool(conversation) and not isinstance(conversation[0], Mapping)
        conversations = list(conversation) if batched else [conversation]
        variables = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
                     "pad_token": self.pad_token or "", "tools": tools, "documents": documents, **kwargs}
        rendered = [
            render_chat_template(
                template, list(conv),  # type: ignore[arg-type]
                add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                variables=variables,
            )
            for conv in conversations
        ]
        if not tokenize:
            return rendered if batched else rendered[0]
        out = [self._encoded(r, return_dict) for r in rendered]
        return out if batched else out[0]

    def _chat_template(self, chat_template: str | None) -> str:
        from ._chat_template import select_chat_template

        if chat_template and "{" in chat_template:  # a template string, not the name of a named template
            return chat_template
        template = select_chat_template(self.chat_template, chat_template)
        if not template:
            raise ValueError(f"tokenizer {self.name!r} has no chat_template; pass chat_template=... explicitly")
        return template

    def _encoded(self, text: str, return_dict: bool) -> Any:
        ids = self.encode(text, add_special_tokens=False)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if return_dict else ids


def _refuse_unsupported(kwargs: dict[str, Any]) -> None:
    refused = [k for k in _UNSUPPORTED_CHAT_OPTIONS if kwargs.get(k) not in (None, False)]
    if refused:
        raise TypeError(
            f"apply_chat_template: {', '.join(refused)} not supported by the tokenizers wrapper "
            "(install transformers, extra [hf], for the full transformers tokenizer)"
        )
    for k in _UNSUPPORTED_CHAT_OPTIONS:
        kwargs.pop(k, None)


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


_cache: OrderedDict[tuple[str, bool, str], Any] = OrderedDict()
_cache_lock = threading.Lock()
_CONFIG_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "model_max_length")


def clear_tokenizer_cache() -> None:
    """Forget every loaded tokenizer."""
    with _cache_lock:
        _cache.clear()


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _packaged_config(tid: str) -> dict[str, Any] | None:
    # The local models' tokenizer_config.json (special tokens, chat template), where the engine has one.
    from .local import _tokenizer as local_tokenizer

    tokenizer_config = getattr(local_tokenizer, "tokenizer_config", None)
    return dict(tokenizer_config(tid)) if tokenizer_config is not None else None


def _hub_config(tid: str) -> dict[str, Any] | None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - installed with tokenizers
        return None
    try:
        return _read_config(Path(hf_hub_download(tid, "tokenizer_config.json")))
    except Exception:  # noqa: BLE001 - a repo without tokenizer_config.json just has no chat template
        logger.debug("no tokenizer_config.json for %s on the hub", tid)
        return None


def _local_path(tid: str) -> Path | None:
    """The tokenizer.json of a local file/directory name, None when ``tid`` is not a local path."""
    local = Path(os.path.expanduser(tid))
    if local.is_file():
        return local
    if local.is_dir():
        candidate = local / "tokenizer.json"
        if not candidate.is_file():
            raise ValueError(f"tokenizer directory {tid!r} has no tokenizer.json")
        return candidate
    return None


def _check_hub_id(tid: str, local_files: bool) -> None:
    if not local_files and (not _HUB_ID.fullmatch(tid) or ".." in tid):
        raise ValueError(
            f"the server named tokenizer {tid[:200]!r}, which is not a Hugging Face hub id; tinker_sync never "
            "opens local files named by the server. Pass a local tokenizer.json to "
            "tinker_sync.tokenizer.get_tokenizer() yourself if you trust it"
        )
    if tid.startswith(("TML/", "thinkingmachines/")):
        raise TokenizerLoadError(
            f"tokenizer {tid!r} is a Thinking Machines tokenizer that tinker_sync cannot load; "
            "pass a local tokenizer.json path to get_tokenizer() instead"
        )


def _hub_error(tid: str, exc: Exception) -> TokenizerLoadError:
    return TokenizerLoadError(
        f"could not load tokenizer {tid!r} from the Hugging Face hub ({exc}). Offline? Download its "
        "tokenizer.json and pass the file path to get_tokenizer(), or set HF_TOKEN for gated models"
    )


def _load(tid: str, local_files: bool) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as _HFTokenizer
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise ImportError("get_tokenizer needs the 'tokenizers' package: pip install tokenizers") from exc

    if tid.startswith(PACKAGED_PREFIX):
        return Tokenizer(_HFTokenizer.from_file(str(_PACKAGED_PATH)), tid, _packaged_config(tid))
    local = _local_path(tid) if local_files else None
    if local is not None:
        return Tokenizer(_HFTokenizer.from_file(str(local)), tid, _read_config(local.parent / "tokenizer_config.json"))
    _check_hub_id(tid, local_files)
    try:
        backend = _HFTokenizer.from_pretrained(tid)
    except Exception as exc:
        raise _hub_error(tid, exc) from exc
    return Tokenizer(backend, tid, _hub_config(tid))


def _fast_tokenizer(tokenizer_file: Path, config: Mapping[str, Any] | None) -> Any:
    from transformers import PreTrainedTokenizerFast

    kwargs = {k: v for k, v in (config or {}).items() if k in _CONFIG_TOKENS and v is not None}
    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **kwargs)  # type: ignore[no-untyped-call,unused-ignore]


def _load_transformers(tid: str, local_files: bool) -> Any:
    """A transformers tokenizer for ``tid``, with the same local-file rules as ``_load``."""
    if tid.startswith(PACKAGED_PREFIX):
        return _fast_tokenizer(_PACKAGED_PATH, _packaged_config(tid))
    local = _local_path(tid) if local_files else None
    if local is not None:
        if Path(os.path.expanduser(tid)).is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(local.parent))
        return _fast_tokenizer(local, _read_config(local.parent / "tokenizer_config.json"))
    _check_hub_id(tid, local_files)
    if os.path.exists(tid):  # transformers would open a local directory of that name: only the hub is allowed
        return _load(tid, local_files)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tid)
    except Exception as exc:
        raise _hub_error(tid, exc) from exc


BACKEND_ENV = "TINKER_SYNC_TOKENIZER_BACKEND"


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "transformers", "tokenizers"):
        raise ValueError(f"backend must be 'auto', 'transformers' or 'tokenizers', got {backend!r}")
    if backend != "auto":
        return backend
    env = os.environ.get(BACKEND_ENV, "").strip().lower()
    if env in ("transformers", "tokenizers"):
        return env
    if env not in ("", "auto"):
        raise ValueError(f"{BACKEND_ENV} must be 'auto', 'transformers' or 'tokenizers', got {env!r}")
    import importlib.util

    return "transformers" if importlib.util.find_spec("transformers") is not None else "tokenizers"


def get_tokenizer(
    model_name: str, tokenizer_id: str | None = None, *, local_files: bool = True, backend: Backend = "auto"
) -> TokenizerLike:
    """The tokenizer for ``model_name`` (or an explicit ``tokenizer_id`` / local path), cached.

    Args:
        local_files: whether the name may be a local ``tokenizer.json`` file or a directory holding one.
            True for names the user typed; False for names that came from the server (``get_info``,
            ``/samplers``): those resolve only to the packaged tokenizer or a hub id, so a buggy or
            hostile server cannot make the client open local files. See ``get_server_tokenizer``.
        backend: ``"auto"`` (transformers when installed, as the official SDK returns; else the
            tokenizers wrapper), or force ``"transformers"`` / ``"tokenizers"``. Under ``"auto"``,
            the environment variable ``TINKER_SYNC_TOKENIZER_BACKEND`` may choose one of the two
            (e.g. the light wrapper for a script that calls ``get_tokenizer()`` where transformers
            is installed: it saves the seconds transformers and torch take to import).

    Returns:
        A transformers ``PreTrainedTokenizerFast`` or a ``Tokenizer`` (both have encode/decode,
        ``eos_token_id``, ``pad_token_id`` and ``apply_chat_template``).

    Raises:
        ValueError: empty name, a directory without tokenizer.json, or (``local_files=False``) a name
            that is not a hub id.
        TokenizerLoadError: (a RuntimeError) a hub id that cannot be downloaded (e.g. offline), or a
            TML-internal id.
    """
    tid = resolve_tokenizer_id(model_name, tokenizer_id)
    chosen = _resolve_backend(backend)
    key = (tid, local_files, chosen)
    with _cache_lock:
        cached: TokenizerLike | None = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    tok: TokenizerLike = _load_transformers(tid, local_files) if chosen == "transformers" else _load(tid, local_files)
    with _cache_lock:
        _cache[key] = tok
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return tok


def get_server_tokenizer(
    model_name: str, tokenizer_id: str | None = None, *, backend: Backend = "auto"
) -> TokenizerLike:
    """The tokenizer for a model name / tokenizer id reported by the SERVER: packaged or hub, never a local path."""
    return get_tokenizer(model_name, tokenizer_id, local_files=False, backend=backend)


def model_input_from_text(tokenizer: TokenizerLike, text: str, *, add_special_tokens: bool = False) -> ModelInput:
    """A ModelInput with the tokens of ``text``."""
    from .types import ModelInput

    ids = list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    return ModelInput.from_ints(ids)


def decode_model_input(tokenizer: TokenizerLike, model_input: ModelInput) -> str:
    """The text of a text-only ModelInput."""
    return str(tokenizer.decode(model_input.to_ints()))
