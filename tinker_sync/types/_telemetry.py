"""Telemetry events and batches (``POST /api/v1/telemetry``); tinker_sync itself sends none."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import attrs

from ._common import (
    choice_field,
    converted_field,
    datetime_field,
    int_field,
    json_dict_field,
    str_field,
)

__all__ = [
    "EventType",
    "GenericEvent",
    "SessionEndEvent",
    "SessionStartEvent",
    "Severity",
    "TelemetryBatch",
    "TelemetryEvent",
    "TelemetrySendRequest",
    "UnhandledExceptionEvent",
]

EventType = Literal["SESSION_START", "SESSION_END", "UNHANDLED_EXCEPTION", "GENERIC_EVENT"]
Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_SEVERITIES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _event(tag: str) -> Any:
    """The ``event`` discriminator of one event class (defaults to ``tag``, refuses any other value)."""
    return choice_field((tag,), default=tag)


@attrs.frozen(kw_only=True)
class SessionStartEvent:
    """A client session started."""

    event_id: str = str_field()
    event_session_index: int = int_field(minimum=0)
    severity: Severity = choice_field(_SEVERITIES)
    timestamp: datetime = datetime_field()
    event: Literal["SESSION_START"] = _event("SESSION_START")


@attrs.frozen(kw_only=True)
class SessionEndEvent:
    """A client session ended after ``duration`` (ISO 8601 duration)."""

    duration: str = str_field()
    event_id: str = str_field()
    event_session_index: int = int_field(minimum=0)
    severity: Severity = choice_field(_SEVERITIES)
    timestamp: datetime = datetime_field()
    event: Literal["SESSION_END"] = _event("SESSION_END")


@attrs.frozen(kw_only=True)
class UnhandledExceptionEvent:
    """An exception escaped the client."""

    error_message: str = str_field()
    error_type: str = str_field()
    event_id: str = str_field()
    event_session_index: int = int_field(minimum=0)
    severity: Severity = choice_field(_SEVERITIES)
    timestamp: datetime = datetime_field()
    traceback: str | None = str_field(default=None)
    event: Literal["UNHANDLED_EXCEPTION"] = _event("UNHANDLED_EXCEPTION")


@attrs.frozen(kw_only=True)
class GenericEvent:
    """A named event with a free-form JSON payload."""

    event_id: str = str_field()
    event_name: str = str_field()
    event_session_index: int = int_field(minimum=0)
    severity: Severity = choice_field(_SEVERITIES)
    timestamp: datetime = datetime_field()
    event_data: dict[str, Any] = json_dict_field(factory=dict, none_as_empty=True)
    event: Literal["GENERIC_EVENT"] = _event("GENERIC_EVENT")


# One telemetry event, told apart by its ``event`` field.
TelemetryEvent = SessionStartEvent | SessionEndEvent | UnhandledExceptionEvent | GenericEvent
_EVENTS = (SessionStartEvent, SessionEndEvent, UnhandledExceptionEvent, GenericEvent)


def _events(value: Any) -> list[TelemetryEvent]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError("events must be a list of telemetry events")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, _EVENTS):
            raise TypeError(f"events item {i} must be a telemetry event, got {type(item).__name__}")
    return items


@attrs.frozen
class TelemetryBatch:
    """Events of one client session and process."""

    events: list[TelemetryEvent] = converted_field(_events)
    platform: str = str_field()
    sdk_version: str = str_field()
    session_id: str = str_field()
    process_uuid: str = str_field()


@attrs.frozen
class TelemetrySendRequest:
    """Body of ``POST /api/v1/telemetry``."""

    events: list[TelemetryEvent] = converted_field(_events)
    platform: str = str_field()
    sdk_version: str = str_field()
    session_id: str = str_field()
    process_uuid: str = str_field()
