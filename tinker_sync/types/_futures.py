"""Future handles and the retrieve_future poll payloads (docs/protocol.rst §3)."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

import enum
from typing import Any, Literal

import attrs

from ._common import (
    _conv,
    bool_field,
    choice_field,
    converted_field,
    float_field,
    instance_field,
    int_field,
    str_field,
    str_list_field,
    tag_field,
)
from ._training import (
    CreateModelResponse,
    ForwardBackwardOutput,
    LoadWeightsResponse,
    OptimStepResponse,
    SaveWeightsExternalResponse,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
    UnloadModelResponse,
)

__all__ = [
    "CompleteMetadataResponse",
    "FutureCompletion",
    "FutureFailed",
    "FutureFinished",
    "FutureRetrieveRequest",
    "FutureRetrieveResponse",
    "FuturesRetrieveRequest",
    "FuturesRetrieveResponse",
    "ModelID",
    "QueueState",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "RequestID",
    "SamplingSessionFuturesTarget",
    "TryAgainResponse",
    "UntypedAPIFuture",
]

ModelID = str
RequestID = str


class RequestErrorCategory(str, enum.Enum):
    """Who a failed request's error is blamed on; a ``str``, so ``category == "user"`` also works."""

    Unknown = "unknown"
    Server = "server"
    User = "user"

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


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


def _category(value: Any, self_: Any, field: Any) -> RequestErrorCategory:
    # An unparseable category is treated as "unknown" (docs/protocol.rst §3.3), never as a decode error.
    if isinstance(value, str):
        try:
            return RequestErrorCategory(value.lower())
        except ValueError:
            pass
    return RequestErrorCategory.Unknown


@attrs.frozen
class RequestFailedResponse:
    """Poll answer: the request failed on the server."""

    error: str = str_field()
    category: RequestErrorCategory = converted_field(_conv(_category), default=RequestErrorCategory.Unknown)


@attrs.frozen
class CompleteMetadataResponse:
    """Poll answer while ``allow_metadata_only``: the result is ready and this big (bytes)."""

    response_payload_size: int = int_field(minimum=0)
    status: Literal["complete_metadata"] = choice_field(("complete_metadata",), default="complete_metadata")


@attrs.frozen
class FutureFinished:
    """``retrieve_futures`` event: a request finished (fetch its payload with retrieve_future)."""

    request_id: str = str_field()
    response_payload_uncompressed_size: int | None = int_field(default=None, minimum=0)
    state: Literal["finished"] = choice_field(("finished",), default="finished")


@attrs.frozen
class FutureFailed:
    """``retrieve_futures`` event: a request failed (its error comes from retrieve_future)."""

    request_id: str = str_field()
    state: Literal["failed"] = choice_field(("failed",), default="failed")


# One completion event of ``retrieve_futures``, tagged by ``state``.
FutureCompletion = FutureFinished | FutureFailed


@attrs.frozen
class SamplingSessionFuturesTarget:
    """What a ``retrieve_futures`` long poll covers: one (possibly cloned) sampling session."""

    sampling_session_id: str = str_field()
    cloned_sampler_id: int = int_field(default=0, minimum=0)
    type: Literal["sampling_session"] = tag_field("sampling_session")


@attrs.frozen
class FuturesRetrieveRequest:
    """Body of ``POST /api/v1/retrieve_futures``: completions after ``prev_cursor`` (a long poll)."""

    target: SamplingSessionFuturesTarget = instance_field(SamplingSessionFuturesTarget)
    prev_cursor: int = int_field(default=0, minimum=0)
    timeout: float | None = float_field(default=None, minimum=0.0)
    retrieved_request_ids: list[str] = str_list_field(factory=list)


def _completions(value: Any, self_: Any, field: Any) -> list[FutureCompletion]:
    items = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") else None
    if items is None or not all(isinstance(i, (FutureFinished, FutureFailed)) for i in items):
        raise TypeError("FuturesRetrieveResponse.completions must be a list of FutureFinished/FutureFailed")
    return items


@attrs.frozen
class FuturesRetrieveResponse:
    """Answer of ``retrieve_futures``: new completions and the cursor to pass back."""

    completions: list[FutureCompletion] = converted_field(_conv(_completions))
    cursor: int = int_field(minimum=0)


# What ``retrieve_future`` may answer (a name for the documented union; the poller decides by shape).
FutureRetrieveResponse = (
    TryAgainResponse
    | ForwardBackwardOutput
    | OptimStepResponse
    | SaveWeightsResponse
    | LoadWeightsResponse
    | SaveWeightsForSamplerResponse
    | SaveWeightsExternalResponse
    | CreateModelResponse
    | UnloadModelResponse
    | RequestFailedResponse
)
