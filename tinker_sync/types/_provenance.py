"""Provenance spans: which sampled sequence (prompt or sampled tokens) each run of a Datum came from."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
from __future__ import annotations

from typing import Any, Literal

import attrs

from ._common import int_field, str_field, tag_field

__all__ = ["PromptProvenanceSpan", "ProvenanceSpans", "SampledProvenanceSpan", "check_spans", "check_tiling"]


def _non_empty(self_: Any, attribute: Any, value: str) -> None:
    if not value:
        raise ValueError(f"{type(self_).__name__}.sequence_id must be non-empty")


@attrs.frozen(kw_only=True)
class PromptProvenanceSpan:
    """A run of tokens that were positions ``[offset, offset + length)`` of a sampled sequence's prompt."""

    sequence_id: str = str_field(validator=_non_empty)
    offset: int = int_field(default=0, minimum=0)
    length: int = int_field(minimum=0)
    type: Literal["prompt_tokens"] = tag_field("prompt_tokens")


@attrs.frozen(kw_only=True)
class SampledProvenanceSpan:
    """A run of tokens that were positions ``[offset, offset + length)`` of a sequence's sampled tokens."""

    sequence_id: str = str_field(validator=_non_empty)
    offset: int = int_field(default=0, minimum=0)
    length: int = int_field(minimum=0)
    type: Literal["sampled_tokens"] = tag_field("sampled_tokens")


# One span of either kind (tagged by ``type`` on the JSON wire).
ProvenanceSpan = PromptProvenanceSpan | SampledProvenanceSpan
# Consecutive runs tiling one Datum field (see ``Datum.with_provenance``).
ProvenanceSpans = list[ProvenanceSpan]


def check_spans(value: Any, where: str) -> list[ProvenanceSpan] | None:
    """Validate an optional list of provenance spans (a fresh list, or None)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{where} must be a list of PromptProvenanceSpan/SampledProvenanceSpan")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, (PromptProvenanceSpan, SampledProvenanceSpan)):
            raise TypeError(
                f"{where} entries must be PromptProvenanceSpan or SampledProvenanceSpan; item {i} is a "
                f"{type(item).__name__}"
            )
    return items


def check_tiling(name: str, spans: list[ProvenanceSpan], expected_length: int) -> None:
    """Raise ValueError unless the span lengths add up to ``expected_length``."""
    total = sum(span.length for span in spans)
    if total != expected_length:
        raise ValueError(
            f"with_provenance {name} spans cover {total} positions but the field has {expected_length}; "
            "the runs must tile it exactly"
        )
