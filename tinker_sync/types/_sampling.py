"""Sampling wire types: SamplingParams, SampleRequest/Response, sampling sessions."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._common import (
    OMIT_DEFAULT,
    _conv,
    _describe,
    _where,
    bool_field,
    check_str_list,
    choice_field,
    converted_field,
    float_field,
    instance_field,
    int_field,
    list_of_field,
    str_field,
    tag_field,
    token_list,
)
from ._model_input import ModelInput
from ._numbers import NumberArray, numpy_of, require_numpy, to_numbers, to_optional_floats
from ._tensor import TensorData

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = [
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "JoinSamplingSessionRequest",
    "JoinSamplingSessionResponse",
    "PromptAltTokens",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "StopReason",
    "TopkLogprobs",
]

StopReason = Literal["length", "stop"]
STOP_REASONS: tuple[str, ...] = ("length", "stop")

# Stop condition: stop strings, stop token ids, or None (= the model's EOS).
StopCondition = str | list[str] | list[int] | None


def _stop(value: Any, self_: Any, field: Any) -> Any:
    where = _where(self_, field)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{where} must be a str, a list of str or a list of token ids, got {_describe(value)}")
    items = list(value)
    if not items:
        return items
    if isinstance(items[0], str):
        return check_str_list(items, f"{where} (stop strings)")
    try:
        return token_list(items, f"{where} (stop token ids)")
    except TypeError:
        raise TypeError(
            f"{where} must be a str, a list of str or a list of token ids (not mixed); got {_describe(value)}"
        ) from None


@attrs.frozen
class SamplingParams:
    """How to sample: length limit, seed, stop condition, temperature, top-k, top-p."""

    max_tokens: int | None = int_field(default=None, minimum=0)
    seed: int | None = int_field(default=None)
    stop: StopCondition = converted_field(_conv(_stop), default=None)
    temperature: float = float_field(default=1.0, minimum=0.0)
    top_k: int = int_field(default=-1, minimum=-1)
    top_p: float = float_field(default=1.0, minimum=0.0, maximum=1.0, min_exclusive=True)

    def __attrs_post_init__(self) -> None:
        if self.top_k == 0:
            raise ValueError("SamplingParams.top_k must be -1 (no limit) or >= 1, got 0")


@attrs.frozen
class SampleRequest:
    """Sample completions of a prompt (``POST /api/v1/asample``)."""

    prompt: ModelInput = instance_field(ModelInput)
    sampling_params: SamplingParams = instance_field(SamplingParams)
    num_samples: int = int_field(default=1, minimum=1)
    base_model: str | None = str_field(default=None)
    model_path: str | None = str_field(default=None)
    sampling_session_id: str | None = str_field(default=None)
    seq_id: int | None = int_field(default=None, minimum=0)
    prompt_logprobs: bool | None = bool_field(default=None)
    topk_prompt_logprobs: int = int_field(default=0, minimum=0)
    # 0.38 options: sent only when set, so servers predating them see no new key.
    topk_sample_logprobs: int = int_field(default=0, minimum=0, metadata=OMIT_DEFAULT)
    target_prompt_logprobs: TensorData | None = instance_field(TensorData, default=None)
    prompt_alt_tokens_k: int = int_field(default=0, minimum=0, metadata=OMIT_DEFAULT)
    prompt_logprobs_last_n: int | None = int_field(default=None, minimum=1)
    record_stability_info: bool | None = bool_field(default=None)
    type: Literal["sample"] = tag_field("sample")


def _logprobs(value: Any, self_: Any, field: Any) -> Any:
    if value is None:
        return None
    return to_numbers(value, "d", _where(self_, field))  # one typed buffer, list-like


# A top-k row: up to k (token_id, logprob) pairs, or None where nothing was reported.
TopkRows = list[list[tuple[int, float]] | None]
_MASK_LOGPROB = -99999.0  # fills empty top-k cells in the dense (numpy) form, as the official SDK does


@attrs.frozen
class TopkLogprobs:
    """Top-k logprobs as two dense ``(length, k)`` numpy matrices (empty cells: token 0, logprob -99999)."""

    token_ids: numpy.ndarray
    logprobs: numpy.ndarray


def _topk_dense(rows: TopkRows) -> TopkLogprobs:
    np = require_numpy("the *_np properties")
    k = max((len(r) for r in rows if r), default=0)
    ids = np.zeros((len(rows), k), dtype=np.int32)
    lps = np.full((len(rows), k), _MASK_LOGPROB, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, (tok, lp) in enumerate(row or ()):
            ids[i, j] = tok
            lps[i, j] = lp
    return TopkLogprobs(token_ids=ids, logprobs=lps)


class _WireSpans:
    """Base of SampledSequence: room for where a decoded sequence's numbers are in the response body.

    A protobuf decoder (``decoded_sequences``) sets this span only; the fields are built on the first read of
    any of them (all at once: views of the body, as the eager decoder builds them) and kept in their slots, so
    later reads are plain slot reads. Everything that reads fields goes through attribute access (equality,
    repr, pickling, copying, attrs.evolve/asdict, serialisation), so a decoded sequence and an eagerly built
    one behave the same.
    """

    __slots__ = ("_wire",)

    if not TYPE_CHECKING:  # keeps attribute checking for type checkers: only decoded fields come from here

        def __getattr__(self, name: str) -> Any:
            if name in _LAZY_FIELDS:
                try:
                    span = _get_span(self)
                except AttributeError:
                    pass
                else:
                    _fill_from_span(self, span)  # two threads may both fill: the same values
                    return object.__getattribute__(self, name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# A decoded sequence's span: (stop reason, body, tokens start, tokens end, logprobs start (-1: none), logprobs end,
# end of the entry), offsets in bytes into ``body``, a little-endian protobuf body already checked by the decoder.
WireSpan = tuple[str, memoryview, int, int, int, int, int]
_LAZY_FIELDS = frozenset({"stop_reason", "tokens", "logprobs", "sequence_id", "topk_logprobs"})
_get_span = _WireSpans.__dict__["_wire"].__get__
_set_span = _WireSpans.__dict__["_wire"].__set__


@attrs.frozen
class SampledSequence(_WireSpans):
    """One generated sequence; ``tokens_np``/``logprobs_np`` give numpy views when numpy is installed.

    ``sequence_id`` (0.38) names the sequence for later requests (provenance spans, stability info).
    """

    stop_reason: StopReason = choice_field(STOP_REASONS)
    tokens: list[int] = converted_field(_conv(lambda v, s, f: to_numbers(v, "I", _where(s, f))))
    logprobs: list[float] | None = converted_field(_conv(_logprobs), default=None)
    sequence_id: str | None = str_field(default=None)
    topk_logprobs: TopkRows | None = converted_field(_conv(lambda v, s, f: _topk(v, s, f)), default=None)

    @property
    def tokens_np(self) -> numpy.ndarray:
        """The tokens as a 1-D int32 numpy array (needs numpy), a view of the buffer."""
        array: numpy.ndarray = numpy_of(self.tokens, "I")
        return array

    @property
    def logprobs_np(self) -> numpy.ndarray | None:
        """The logprobs as a 1-D float32 numpy array, or None when not requested (needs numpy).

        A view of a decoded response's buffer."""
        return None if self.logprobs is None else numpy_of(self.logprobs, "f")

    @property
    def topk_logprobs_np(self) -> TopkLogprobs | None:
        """The per-token top-k logprobs as dense matrices, or None when not requested (needs numpy)."""
        return None if self.topk_logprobs is None else _topk_dense(self.topk_logprobs)

    def __attrs_post_init__(self) -> None:
        if self.logprobs is not None and len(self.logprobs) != len(self.tokens):
            raise ValueError(
                f"SampledSequence.logprobs must have one entry per token ({len(self.tokens)}), got {len(self.logprobs)}"
            )


_new_object = object.__new__
# The slots' own setters: trusted values, set once (the class is frozen to everyone else).
_SETTERS = tuple(SampledSequence.__dict__[name].__set__
                 for name in ("stop_reason", "tokens", "logprobs", "sequence_id", "topk_logprobs"))


def _fill_from_span(seq: SampledSequence, span: WireSpan) -> None:
    set_stop, set_tokens, set_logprobs, set_sequence_id, set_topk = _SETTERS
    stop_reason, body, ts, te, ls, le, _ = span
    set_stop(seq, stop_reason)
    # Spans come from little-endian hosts only, their lengths already checked: views of the body as they are.
    set_tokens(seq, NumberArray(body[ts:te].cast("I"), "I"))
    set_logprobs(seq, NumberArray(body[ls:le].cast("f"), "f") if ls >= 0 else None)
    set_sequence_id(seq, None)
    set_topk(seq, None)


def decoded_sequences(spans: list[WireSpan]) -> list[SampledSequence]:
    """Trusted: sequences from their spans in a checked protobuf body; numbers become NumberArray views of the
    body on first read (see ``_WireSpans``). Decoders only."""
    out = []
    for span in spans:
        seq = _new_object(SampledSequence)
        _set_span(seq, span)
        out.append(seq)
    return out


def _prompt_logprobs(value: Any, self_: Any, field: Any) -> Any:
    if value is None:
        return None
    return to_optional_floats(value, "d", _where(self_, field))  # None entries kept as NaN in the buffer


def _topk(value: Any, self_: Any, field: Any) -> Any:
    if value is None:
        return None
    where = _where(self_, field)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{where} must be a list of rows (list of (token_id, logprob)) or None")
    out: list[list[tuple[int, float]] | None] = []
    for i, row in enumerate(value):
        if row is None:
            out.append(None)
            continue
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise TypeError(f"{where}[{i}] must be a list of (token_id, logprob) pairs or None")
        pairs: list[tuple[int, float]] = []
        for pair in row:
            try:
                tok, lp = pair
            except (TypeError, ValueError):
                raise TypeError(f"{where}[{i}] must hold (token_id, logprob) pairs; got {_describe(pair)}") from None
            if (
                isinstance(tok, bool) or not isinstance(tok, int)
                or isinstance(lp, bool) or not isinstance(lp, (int, float))
            ):
                raise TypeError(f"{where}[{i}] must hold (int token_id, float logprob) pairs; got {_describe(pair)}")
            pairs.append((tok, float(lp)))
        out.append(pairs)
    return out


@attrs.frozen
class PromptAltTokens:
    """``prompt_alt_tokens_k`` draws at every prompt position after the first: two ``[len(prompt) - 1, k]``
    tensors, int64 ``tokens`` and their float32 ``logprobs``."""

    tokens: TensorData = instance_field(TensorData)
    logprobs: TensorData = instance_field(TensorData)


@attrs.frozen
class SampleResponse:
    """Sampled sequences, plus prompt logprobs when requested."""

    sequences: list[SampledSequence] = list_of_field(SampledSequence)
    prompt_logprobs: list[float | None] | None = converted_field(_conv(_prompt_logprobs), default=None)
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = converted_field(
        _conv(_topk), default=None
    )
    prompt_cache_hit_tokens: int = int_field(default=0, minimum=0)
    target_prompt_logprobs: TensorData | None = instance_field(TensorData, default=None)
    prompt_alt_tokens: PromptAltTokens | None = instance_field(PromptAltTokens, default=None)
    type: Literal["sample"] = tag_field("sample")

    @property
    def prompt_logprobs_np(self) -> numpy.ndarray | None:
        """Prompt logprobs as a float32 numpy array, NaN where none was computed (needs numpy)."""
        if self.prompt_logprobs is None:
            return None
        # The buffer holds NaN where the list shows None: a zero-copy view for decoded responses.
        array: numpy.ndarray = numpy_of(self.prompt_logprobs, "f")
        return array

    @property
    def topk_prompt_logprobs_np(self) -> TopkLogprobs | None:
        """Prompt top-k logprobs as dense matrices, or None when not requested (needs numpy)."""
        return None if self.topk_prompt_logprobs is None else _topk_dense(self.topk_prompt_logprobs)


@attrs.frozen
class CreateSamplingSessionRequest:
    """Create a sampling session on a base model or a ``tinker://`` sampler checkpoint."""

    session_id: str = str_field()
    sampling_session_seq_id: int = int_field(minimum=0)
    base_model: str | None = str_field(default=None)
    model_path: str | None = str_field(default=None)
    type: Literal["create_sampling_session"] = tag_field("create_sampling_session")

    def __attrs_post_init__(self) -> None:
        if self.model_path is not None and not self.model_path.startswith("tinker://"):
            raise ValueError(
                f"CreateSamplingSessionRequest.model_path must start with 'tinker://', got {self.model_path!r}"
            )
        if self.base_model is None and self.model_path is None:
            raise ValueError("CreateSamplingSessionRequest needs base_model or model_path")


@attrs.frozen
class CreateSamplingSessionResponse:
    """Result of create_sampling_session."""

    sampling_session_id: str = str_field()
    type: Literal["create_sampling_session"] = tag_field("create_sampling_session")


@attrs.frozen
class JoinSamplingSessionRequest:
    """Join an existing sampling session (an unpickled SamplingClient asks for its clone id)."""

    sampling_session_id: str = str_field()
    type: Literal["join_sampling_session"] = tag_field("join_sampling_session")


@attrs.frozen
class JoinSamplingSessionResponse:
    """The server-allocated clone id of the joining client (the original client is 0)."""

    client_counter: int = int_field(minimum=0)
    type: Literal["join_sampling_session"] = tag_field("join_sampling_session")
