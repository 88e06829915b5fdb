"""Render a tokenizer's Jinja chat template the way transformers does (optional extra ``[jinja]``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ._exceptions import TinkerError

__all__ = ["ChatTemplateError", "render_chat_template", "select_chat_template"]


class ChatTemplateError(TinkerError, ValueError):
    """The template called ``raise_exception(...)`` (e.g. roles out of order) or cannot be used."""


def select_chat_template(template: Any, name: str | None = None) -> str | None:
    """The template string from a ``tokenizer_config.json`` ``chat_template`` value (str or named list)."""
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        chosen = named.get(name or "default")
        if chosen is None and name is not None:
            raise ChatTemplateError(
                f"the tokenizer has no chat template named {name!r}; it has {sorted(str(k) for k in named)}"
            )
        return chosen if isinstance(chosen, str) else None
    raise ChatTemplateError(f"chat_template must be a str or a list of named templates, got {type(template).__name__}")


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    try:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError(
            "apply_chat_template needs jinja2 (pip install 'tinker-sync[jinja]'), or install transformers "
            "('tinker-sync[hf]') to get its tokenizers"
        ) from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
    variables: Mapping[str, Any],
    content_of: Callable[[Mapping[str, Any]], str] | None = None,
) -> str:
    """Render one conversation; ``variables`` are the special tokens, tools, documents and extra kwargs."""
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt and continue_final_message cannot both be True")
    text: str = _compile(template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
    )
    if continue_final_message:
        if not messages:
            raise ValueError("continue_final_message needs at least one message")
        final = (content_of or _content)(messages[-1]).strip()
        cut = text.rfind(final)
        if not final or cut < 0:
            raise ValueError("continue_final_message: the final message's content is not in the rendered text")
        text = text[: cut + len(final)]
    return text


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""
