"""Session and bootstrap wire types: client config, sessions, heartbeats, telemetry answer."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from typing import Any, Literal

import attrs

from ._common import (
    bool_field,
    int_field,
    json_dict_field,
    str_field,
    str_list_field,
    tag_field,
)

__all__ = [
    "AuthTokenResponse",
    "ClientConfigRequest",
    "ClientConfigResponse",
    "ClientDynamicConfigResponse",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "SessionHeartbeatRequest",
    "SessionHeartbeatResponse",
    "TelemetryResponse",
]


@attrs.frozen
class ClientConfigRequest:
    """Body of ``POST /api/v1/client/config`` and ``/client/dynamic_config``."""

    sdk_version: str = str_field()


@attrs.frozen
class ClientConfigResponse:
    """Server-chosen client settings (all optional; docs/protocol.rst §1.5 defaults)."""

    pjwt_auth_enabled: bool = bool_field(default=False)
    credential_default_source: str = str_field(default="api_key")
    sample_dispatch_bytes_semaphore_size: int = int_field(default=10 * 1024 * 1024, minimum=0)
    inflight_response_bytes_semaphore_size: int = int_field(default=50 * 1024 * 1024, minimum=0)
    parallel_fwdbwd_chunks: bool = bool_field(default=True)
    proto_compress_fwdbwd: bool = bool_field(default=False)
    fwdbwd_max_chunk_len: int = int_field(default=1024, minimum=1)
    fwdbwd_max_chunk_bytes_count: int = int_field(default=5_000_000, minimum=1)
    fwdbwd_dispatch_bytes_semaphore_size: int = int_field(default=50_000_000, minimum=0)
    billing_exception_max_pause_duration_sec: int = int_field(default=3600, minimum=0)
    sample_no_retries: bool = bool_field(default=False)
    sample_enable_stuck_detection: bool = bool_field(default=True)
    sample_max_concurrent_requests: int = int_field(default=2000, minimum=1)
    use_pyqwest_transport: bool = bool_field(default=True)
    sample_use_retrieve_futures: bool = bool_field(default=False)
    custom_loss_server_side: bool = bool_field(default=False)
    sample_join_sampling_session: bool = bool_field(default=False)
    create_model_via_load_weights: bool = bool_field(default=False)


@attrs.frozen
class ClientDynamicConfigResponse:
    """Settings refreshed periodically (``/client/dynamic_config``)."""

    refresh_interval_sec: int = int_field(default=300, minimum=0)
    sample_cancel_enabled: bool = bool_field(default=False)
    sample_cancel_max_batch_size: int = int_field(default=64, minimum=1)


@attrs.frozen
class AuthTokenResponse:
    """Answer of ``POST /api/v1/auth/token``."""

    jwt: str = str_field(repr=False)


@attrs.frozen
class CreateSessionRequest:
    """Open a client session."""

    sdk_version: str = str_field()
    tags: list[str] = str_list_field(factory=list)
    user_metadata: dict[str, Any] = json_dict_field(factory=dict, none_as_empty=True)
    project_id: str | None = str_field(default=None)
    display_name: str | None = str_field(default=None)
    type: Literal["create_session"] = tag_field("create_session")


@attrs.frozen
class CreateSessionResponse:
    """Result of create_session (messages are logged by the client)."""

    session_id: str = str_field()
    info_message: str | None = str_field(default=None)
    warning_message: str | None = str_field(default=None)
    error_message: str | None = str_field(default=None)
    type: Literal["create_session"] = tag_field("create_session")


@attrs.frozen
class SessionHeartbeatRequest:
    """Keep a session alive."""

    session_id: str = str_field()
    type: Literal["session_heartbeat"] = tag_field("session_heartbeat")


@attrs.frozen
class SessionHeartbeatResponse:
    """Answer to a heartbeat."""

    type: Literal["session_heartbeat"] = tag_field("session_heartbeat")


@attrs.frozen
class TelemetryResponse:
    """Answer of ``POST /api/v1/telemetry``."""

    status: str = str_field(default="accepted")
