"""Billing and storage usage: hourly usage events, current checkpoint storage (admin endpoints)."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import attrs

from ._common import (
    _conv,
    _where,
    bool_field,
    check_str,
    choice_field,
    converted_field,
    datetime_field,
    float_field,
    int_field,
    json_dict_field,
    list_of_field,
    str_field,
)

__all__ = [
    "BillingEventInfo",
    "BillingUsageEvent",
    "BillingUsageResponse",
    "BillingUsageSession",
    "CheckpointBillingEvent",
    "CurrentCheckpointStorageUsageItem",
    "CurrentCheckpointStorageUsageResponse",
    "GetBillingUsageRequest",
    "GetCurrentCheckpointStorageUsageRequest",
    "OtherBillingEvent",
    "SamplingPrefillBillingEvent",
    "SamplingSampleBillingEvent",
    "StorageBillingEvent",
    "TrainingBillingEvent",
]


@attrs.frozen
class TrainingBillingEvent:
    """Training tokens processed by forward/backward passes."""

    token_count: int = int_field(minimum=0)
    type: Literal["training"] = choice_field(("training",), default="training")


@attrs.frozen
class SamplingPrefillBillingEvent:
    """Prompt (prefill) tokens processed while sampling; ``cached`` ones are billed at the cached rate."""

    cached: bool = bool_field()
    token_count: int = int_field(minimum=0)
    type: Literal["sampling_prefill"] = choice_field(("sampling_prefill",), default="sampling_prefill")


@attrs.frozen
class SamplingSampleBillingEvent:
    """Tokens generated while sampling."""

    token_count: int = int_field(minimum=0)
    type: Literal["sampling_sample"] = choice_field(("sampling_sample",), default="sampling_sample")


@attrs.frozen
class CheckpointBillingEvent:
    """Checkpoint operations (billed per checkpoint)."""

    count: int = int_field(minimum=0)
    type: Literal["checkpoint"] = choice_field(("checkpoint",), default="checkpoint")


@attrs.frozen
class StorageBillingEvent:
    """Checkpoint storage in gigabyte-hours (``free`` storage is not billed)."""

    gigabyte_hours: float = float_field()
    free: bool = bool_field(default=False)
    type: Literal["storage"] = choice_field(("storage",), default="storage")


@attrs.frozen
class OtherBillingEvent:
    """A usage kind this client does not know yet (kept so one new kind does not fail the whole listing)."""

    type: str = str_field()


# What one billing bucket counts, tagged by ``type``; unknown kinds parse as OtherBillingEvent.
BillingEventInfo = (
    TrainingBillingEvent
    | SamplingPrefillBillingEvent
    | SamplingSampleBillingEvent
    | CheckpointBillingEvent
    | StorageBillingEvent
    | OtherBillingEvent
)
_EVENT_CLASSES = (
    TrainingBillingEvent,
    SamplingPrefillBillingEvent,
    SamplingSampleBillingEvent,
    CheckpointBillingEvent,
    StorageBillingEvent,
    OtherBillingEvent,
)


def _event_info(value: Any, self_: Any, field: Any) -> Any:
    if not isinstance(value, _EVENT_CLASSES):
        raise TypeError(f"{_where(self_, field)} must be a billing event (e.g. TrainingBillingEvent), got {value!r}")
    return value


@attrs.frozen
class BillingUsageEvent:
    """Usage of one kind in one hour bucket, with its estimated cost where known."""

    bucket_start: datetime = datetime_field()
    bucket_end: datetime = datetime_field()
    event_info: BillingEventInfo = converted_field(_conv(_event_info))
    base_model: str | None = str_field(default=None)
    user_id: str | None = str_field(default=None)
    user_name: str | None = str_field(default=None)
    session_id: str | None = str_field(default=None)
    project_id: str | None = str_field(default=None)
    estimated_cost_usd: float | None = float_field(default=None)
    effective_rate_usd_per_million_tokens: float | None = float_field(default=None)
    effective_rate_usd_per_gigabyte_month: float | None = float_field(default=None)


@attrs.frozen
class BillingUsageSession:
    """Per-session facts attached to a billing report."""

    user_metadata: dict[str, str] | None = json_dict_field(default=None)


def _sessions(value: Any, self_: Any, field: Any) -> dict[str, BillingUsageSession]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{_where(self_, field)} must be a dict of session id -> BillingUsageSession")
    for key, item in value.items():
        check_str(key, f"{_where(self_, field)} key")
        if not isinstance(item, BillingUsageSession):
            raise TypeError(f"{_where(self_, field)}[{key!r}] must be a BillingUsageSession, got {type(item).__name__}")
    return dict(value)


@attrs.frozen
class BillingUsageResponse:
    """Billing usage events of a time range and the sessions they belong to."""

    data: list[BillingUsageEvent] = list_of_field(BillingUsageEvent)
    sessions: dict[str, BillingUsageSession] = converted_field(_conv(_sessions), factory=dict)
    cost_data_through: datetime | None = datetime_field(default=None)


@attrs.frozen
class GetBillingUsageRequest:
    """Query of ``GET /api/v1/billing/usage/events``: an hour-aligned UTC window of at most 14 days."""

    starting_on: datetime = datetime_field()
    ending_before: datetime = datetime_field()


@attrs.frozen
class GetCurrentCheckpointStorageUsageRequest:
    """Query of ``GET /api/v1/billing/usage/checkpoints/current``; no project = the whole organization."""

    project_id: str | None = str_field(default=None)


@attrs.frozen
class CurrentCheckpointStorageUsageItem:
    """Active checkpoint storage of one project and session owner."""

    checkpoint_count: int = int_field(minimum=0)
    size_bytes: int = int_field(minimum=0)
    size_gigabytes: float = float_field()
    project_id: str | None = str_field(default=None)
    org_user_urn: str | None = str_field(default=None)
    user_email: str | None = str_field(default=None)
    user_name: str | None = str_field(default=None)
    estimated_monthly_cost_usd: float | None = float_field(default=None)


@attrs.frozen
class CurrentCheckpointStorageUsageResponse:
    """Current checkpoint storage grouped by project and owner (may lag by 1-2 hours)."""

    data: list[CurrentCheckpointStorageUsageItem] = list_of_field(CurrentCheckpointStorageUsageItem)
    effective_rate_usd_per_gigabyte_month: float | None = float_field(default=None)
