"""Future handles and the retrieve_future poll payloads (docs/protocol.rst §3)."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from typing import Any, Literal

import attrs

from ._common import (
    _conv,
    bool_field,
    choice_field,
    converted_field,
    int_field,
    str_field,
    str_list_field,
    tag_field,
)

__all__ = [
    "CompleteMetadataResponse",
    "FutureRetrieveRequest",
    "ModelID",
    "QueueState",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "RequestID",
    "TryAgainResponse",
    "UntypedAPIFuture",
]

ModelID = str
RequestID = str
RequestErrorCategory = Literal["unknown", "server", "user"]
QueueState = Literal["active", "paused_capacity", "paused_rate_limit"]


@attrs.frozen
class UntypedAPIFuture:
    """The immediate answer of a future-returning endpoint: the request id to poll."""

    request_id: str = str_field()
    model_id: str | None = str_field(default=None)
    sample_sequence_ids: list[str] | None = str_list_field(default=None)


@attrs.frozen
class FutureRetrieveRequest:
    """Body of ``POST /api/v1/retrieve_future``."""

    request_id: str = str_field()
    allow_metadata_only: bool = bool_field(default=False)


@attrs.frozen
class TryAgainResponse:
    """Poll answer: the result is not ready yet (poll again at once)."""

    request_id: str = str_field()
    queue_state: str | None = str_field(default=None)
    queue_state_reason: str | None = str_field(default=None)
    type: Literal["try_again"] = tag_field("try_again")


def _category(value: Any, self_: Any, field: Any) -> str:
    # An unparseable category is treated as "unknown" (docs/protocol.rst §3.3), never as a decode error.
    return value if value in ("unknown", "server", "user") else "unknown"


@attrs.frozen
class RequestFailedResponse:
    """Poll answer: the request failed on the server."""

    error: str = str_field()
    category: RequestErrorCategory = converted_field(_conv(_category), default="unknown")


@attrs.frozen
class CompleteMetadataResponse:
    """Poll answer while ``allow_metadata_only``: the result is ready and this big (bytes)."""

    response_payload_size: int = int_field(minimum=0)
    status: Literal["complete_metadata"] = choice_field(("complete_metadata",), default="complete_metadata")
