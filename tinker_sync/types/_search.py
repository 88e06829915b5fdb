"""Session search (``POST /api/v1/sessions/search``): queries, statuses and result pages."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import attrs

from ._common import (
    _conv,
    _where,
    choice_field,
    converted_field,
    datetime_field,
    instance_field,
    int_field,
    json_dict_field,
    list_of_field,
    str_field,
    str_list_field,
    tag_field,
)

__all__ = [
    "AccessibleSearchOwner",
    "ActiveSessionStatusQuery",
    "CancelledSessionStatusQuery",
    "ClientFinishedSessionStatusQuery",
    "ClientSessionFinishErrored",
    "ClientSessionFinishInterrupted",
    "ClientSessionFinishReason",
    "ClientSessionFinishReasonType",
    "ClientSessionFinishSuccess",
    "ClientSessionFinished",
    "FailedSessionStatusQuery",
    "OwnSearchOwner",
    "SearchOwner",
    "SessionActive",
    "SessionCancelled",
    "SessionFailed",
    "SessionFailedReason",
    "SessionFailedRequestReason",
    "SessionFailedSamplingSessionReason",
    "SessionFailedTrainingRunReason",
    "SessionSearchCursor",
    "SessionSearchRequest",
    "SessionSearchResponse",
    "SessionStatus",
    "SessionStatusQuery",
    "SessionSummary",
    "UserSearchOwner",
]

ClientSessionFinishReasonType = Literal["success", "errored", "interrupted"]
_FINISH_REASONS = ("success", "errored", "interrupted")


def _one_of(where: str, *classes: type) -> Any:
    """attrs converter: the value must be an instance of one of ``classes`` (a tagged union member)."""

    def convert(value: Any) -> Any:
        if not isinstance(value, classes):
            names = "/".join(c.__name__ for c in classes)
            raise TypeError(f"{where} must be a {names}, got {type(value).__name__}")
        return value

    return convert


def _list_of_union(where: str, *classes: type, min_length: int = 0, optional: bool = False) -> Any:
    def convert(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"{where} must be a list")
        items = [_one_of(where, *classes)(v) for v in value]
        if len(items) < min_length:
            raise ValueError(f"{where} must have at least {min_length} item(s)")
        return items

    return convert


# ---- who: search owners ------------------------------------------------------------------------


@attrs.frozen
class OwnSearchOwner:
    """The caller's own sessions."""

    type: Literal["own"] = tag_field("own")


@attrs.frozen
class AccessibleSearchOwner:
    """Every owner's sessions the caller may list."""

    type: Literal["accessible"] = tag_field("accessible")


def _owner_urns(value: Any, self_: Any, field: Any) -> list[str]:
    from ._common import check_str_list

    urns = check_str_list(value, _where(self_, field))
    if not 1 <= len(urns) <= 10:
        raise ValueError(f"{_where(self_, field)} must list 1 to 10 owner URNs, got {len(urns)}")
    return urns


@attrs.frozen
class UserSearchOwner:
    """The listed users' sessions (1 to 10 owner URNs)."""

    owner_urns: list[str] = converted_field(_conv(_owner_urns))
    type: Literal["user"] = tag_field("user")


SearchOwner = OwnSearchOwner | AccessibleSearchOwner | UserSearchOwner

# ---- what: status queries --------------------------------------------------------------------


@attrs.frozen
class ActiveSessionStatusQuery:
    """Sessions still running."""

    type: Literal["active"] = tag_field("active")


@attrs.frozen
class CancelledSessionStatusQuery:
    """Sessions cancelled from the console."""

    type: Literal["cancelled"] = tag_field("cancelled")


@attrs.frozen
class FailedSessionStatusQuery:
    """Sessions failed by a request, training run or sampling session."""

    type: Literal["failed"] = tag_field("failed")


def _reasons(value: Any, self_: Any, field: Any) -> list[str] | None:
    if value is None:
        return None
    from ._common import check_choice, check_str_list

    items = check_str_list(value, _where(self_, field))
    if not items:
        raise ValueError(f"{_where(self_, field)} must list at least one reason (or be None for every reason)")
    return [check_choice(v, _where(self_, field), _FINISH_REASONS) for v in items]


@attrs.frozen
class ClientFinishedSessionStatusQuery:
    """Sessions whose client reported it was done (optionally only with the listed reasons)."""

    reasons: list[ClientSessionFinishReasonType] | None = converted_field(_conv(_reasons), default=None)
    type: Literal["client_finished"] = tag_field("client_finished")


SessionStatusQuery = (
    ActiveSessionStatusQuery | CancelledSessionStatusQuery | FailedSessionStatusQuery | ClientFinishedSessionStatusQuery
)
_STATUS_QUERIES = (
    ActiveSessionStatusQuery, CancelledSessionStatusQuery, FailedSessionStatusQuery, ClientFinishedSessionStatusQuery
)

# ---- session statuses (answers) -----------------------------------------------------------------


@attrs.frozen
class SessionFailedRequestReason:
    """A session failed by one of its requests."""

    request_id: str = str_field()
    request_type: str = str_field()
    type: Literal["request"] = tag_field("request")


@attrs.frozen
class SessionFailedTrainingRunReason:
    """A session failed by one of its training runs."""

    training_run_id: str = str_field()
    type: Literal["training_run"] = tag_field("training_run")


@attrs.frozen
class SessionFailedSamplingSessionReason:
    """A session failed by one of its sampling sessions."""

    sampling_session_id: str = str_field()
    type: Literal["sampling_session"] = tag_field("sampling_session")


SessionFailedReason = SessionFailedRequestReason | SessionFailedTrainingRunReason | SessionFailedSamplingSessionReason


@attrs.frozen
class SessionFailed:
    """The session was failed by one of its requests, training runs or sampling sessions."""

    category: Literal["user", "internal"] = choice_field(("user", "internal"))
    reason: SessionFailedReason = converted_field(
        _one_of(
            "SessionFailed.reason",
            SessionFailedRequestReason,
            SessionFailedTrainingRunReason,
            SessionFailedSamplingSessionReason,
        )
    )
    message: str = str_field()
    type: Literal["failed"] = tag_field("failed")


@attrs.frozen
class SessionCancelled:
    """The session was cancelled."""

    detail: str | None = str_field(default=None)
    type: Literal["cancelled"] = tag_field("cancelled")


@attrs.frozen
class ClientSessionFinishSuccess:
    """The client finished successfully."""

    type: Literal["success"] = tag_field("success")


@attrs.frozen
class ClientSessionFinishErrored:
    """The client finished with an error."""

    type: Literal["errored"] = tag_field("errored")


@attrs.frozen
class ClientSessionFinishInterrupted:
    """The client was interrupted."""

    type: Literal["interrupted"] = tag_field("interrupted")


ClientSessionFinishReason = ClientSessionFinishSuccess | ClientSessionFinishErrored | ClientSessionFinishInterrupted


@attrs.frozen
class ClientSessionFinished:
    """The session's client reported it was done."""

    reason: ClientSessionFinishReason = converted_field(
        _one_of(
            "ClientSessionFinished.reason",
            ClientSessionFinishSuccess,
            ClientSessionFinishErrored,
            ClientSessionFinishInterrupted,
        )
    )
    detail: str | None = str_field(default=None)
    type: Literal["client_finished"] = tag_field("client_finished")


@attrs.frozen
class SessionActive:
    """The session is running."""

    type: Literal["active"] = tag_field("active")


SessionStatus = SessionFailed | SessionCancelled | ClientSessionFinished | SessionActive
_STATUSES = (SessionFailed, SessionCancelled, ClientSessionFinished, SessionActive)

# ---- the search itself ------------------------------------------------------------------------


@attrs.frozen
class SessionSearchCursor:
    """Where the next page starts; pass a response's ``next_cursor`` back unchanged."""

    last_created_at: datetime = datetime_field()
    last_session_id: str = str_field()


def _display_name(value: Any, self_: Any, field: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{_where(self_, field)} must be a non-empty str or None, got {value!r}")
    return value


@attrs.frozen
class SessionSearchRequest:
    """A session search (restricted to projects the caller may list), newest first."""

    session_id: str | None = str_field(default=None)
    project_ids: list[str] | None = str_list_field(default=None)
    user_metadata: dict[str, str] = json_dict_field(factory=dict, none_as_empty=True)
    display_name: str | None = converted_field(_conv(_display_name), default=None)
    owner: SearchOwner = converted_field(
        _one_of("SessionSearchRequest.owner", OwnSearchOwner, AccessibleSearchOwner, UserSearchOwner),
        factory=OwnSearchOwner,
    )
    statuses: list[SessionStatusQuery] | None = converted_field(
        _list_of_union("SessionSearchRequest.statuses", *_STATUS_QUERIES, min_length=1, optional=True), default=None
    )
    limit: int = int_field(default=50, minimum=1)
    cursor: SessionSearchCursor | None = instance_field(SessionSearchCursor, default=None)

    def __attrs_post_init__(self) -> None:
        if self.limit > 200:
            raise ValueError(f"SessionSearchRequest.limit must be between 1 and 200, got {self.limit}")


def _status(value: Any) -> Any:
    return None if value is None else _one_of("SessionSummary.status", *_STATUSES)(value)


@attrs.frozen
class SessionSummary:
    """One session found by a search."""

    session_id: str = str_field()
    created_at: datetime = datetime_field()
    owner: str = str_field()
    project_id: str = str_field()
    checkpoints_count: int = int_field(minimum=0)
    status: SessionStatus | None = converted_field(_status, default=None)
    display_name: str | None = str_field(default=None)
    user_metadata: dict[str, str] | None = json_dict_field(default=None)
    checkpoint_storage_bytes: int | None = int_field(default=None, minimum=0)


@attrs.frozen
class SessionSearchResponse:
    """One page of search results; ``next_cursor`` is None once the results are exhausted."""

    sessions: list[SessionSummary] = list_of_field(SessionSummary)
    next_cursor: SessionSearchCursor | None = instance_field(SessionSearchCursor, default=None)
