"""Bootstrap and session endpoints of the local server: client config, JWT exchange, sessions, telemetry."""

# Request classes use the types package's validating field factories (str_field(), ...), as tinker_sync.types does.
from __future__ import annotations

import importlib.util
import logging
import uuid
from typing import Any

import attrs

from ..types import ClientConfigRequest, CreateSessionRequest, SessionHeartbeatRequest
from ..types._common import choice_field, str_field
from . import _jwt
from ._api_common import ApiBase, Call, HTTPError, parse_body

logger = logging.getLogger(__name__)

_JWT_LIFETIME_S = 3600.0
# What /client/config answers; 0.38 flags on so the official 0.38 SDK exercises the new paths.
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "pjwt_auth_enabled": False,
    "credential_default_source": "api_key",
    "sample_dispatch_bytes_semaphore_size": 10 * 1024 * 1024,
    "inflight_response_bytes_semaphore_size": 50 * 1024 * 1024,
    "parallel_fwdbwd_chunks": True,
    "proto_write_fwdbwd": False,
    "proto_compress_fwdbwd": importlib.util.find_spec("zstandard") is not None,  # bodies are read either way
    "fwdbwd_max_chunk_len": 1024,
    "fwdbwd_max_chunk_bytes_count": 5_000_000,
    "fwdbwd_dispatch_bytes_semaphore_size": 50_000_000,
    "create_model_via_load_weights": False,
    "sample_use_retrieve_futures": True,
    "sample_join_sampling_session": True,
    "custom_loss_server_side": False,
}


@attrs.frozen
class _FinishReason:
    type: str = choice_field(("success", "errored", "interrupted"))


@attrs.frozen
class FinishSessionRequest:
    """Body of ``POST /api/v1/sessions/{id}/finish``."""

    reason: _FinishReason = attrs.field()
    detail: str | None = str_field(default=None)


class SessionApi(ApiBase):
    """Bootstrap, JWT exchange and session lifecycle endpoints."""

    def client_config(self, call: Call) -> Any:
        if call.body.strip():
            call.parse(ClientConfigRequest)
        return {**DEFAULT_CLIENT_CONFIG, "pjwt_auth_enabled": self.jwt_secret is not None,
                **self.client_config_overrides}

    def dynamic_config(self, call: Call) -> Any:
        if call.body.strip():
            call.parse(ClientConfigRequest)
        return {"refresh_interval_sec": 300, "sample_cancel_enabled": True, "sample_cancel_max_batch_size": 64}

    def auth_token(self, call: Call) -> Any:
        if self.jwt_secret is None:
            raise HTTPError(404, "auth/token: JWT exchange is off on this server (pjwt_auth_enabled is false); "
                                 "send the API key itself, or start the server with --jwt")
        call.json()  # the body is {} (anything else is ignored, as on the hosted service)
        return {"jwt": _jwt.mint(self.jwt_secret, call.owner, now=self.clock(), lifetime_s=_JWT_LIFETIME_S)}

    def authenticate_jwt(self, token: str) -> str:
        """The owner of a JWT minted here (401 when JWT auth is off or the token does not verify)."""
        if self.jwt_secret is None:
            raise HTTPError(401, "invalid API key: JWTs are not accepted by this server (JWT auth is off); send a "
                                 "key starting with 'tml-'")
        try:
            claims = _jwt.decode(self.jwt_secret, token, now=self.clock())
        except _jwt.JWTError as exc:
            raise HTTPError(401, f"invalid JWT: {exc}", {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        return str(claims["owner"])

    def healthz(self, call: Call) -> Any:
        return {"status": "ok"}

    def capabilities(self, call: Call) -> Any:
        mod = self.engine_module
        return {"supported_models": [
            {"model_name": n, "max_context_length": mod.SPECS[n].max_context, "trainable": True, "sampleable": True}
            for n in mod.MODEL_NAMES]}

    def create_session(self, call: Call) -> Any:
        req, _ = call.parse(CreateSessionRequest)
        display_name = req.display_name
        if display_name is not None and (not display_name.strip() or len(display_name) > 256):
            raise HTTPError(400, "create_session: display_name must be a non-empty string of at most 256 characters")
        session_id = uuid.uuid4().hex[:20]
        self.store.add_session(session_id, call.owner, project_id=req.project_id, tags=list(req.tags),
                               user_metadata=dict(req.user_metadata), display_name=display_name)
        return {"session_id": session_id, "type": "create_session"}

    def heartbeat(self, call: Call) -> Any:
        req, _ = call.parse(SessionHeartbeatRequest)
        row = self.session(call, req.session_id, "session_heartbeat")
        if self.session_expired(row):
            raise self.expired_error(row.session_id, "session_heartbeat")
        if row.finished_reason is not None:
            raise HTTPError(410, f"session_heartbeat: session {row.session_id} is finished ({row.finished_reason}); "
                                 f"stop sending heartbeats for it")
        self.use_session(row, "session_heartbeat")
        self.store.heartbeat(row.session_id)
        return {"type": "session_heartbeat"}

    def finish_session(self, call: Call) -> Any:
        row = self.session(call, call.params["id"], "sessions/finish")
        body = call.json()
        if not isinstance(body.get("reason"), dict):
            raise HTTPError(
                400, "sessions/finish: 'reason' must be {\"type\": \"success\"|\"errored\"|\"interrupted\"}"
            )
        req, _ = parse_body(body, FinishSessionRequest, "sessions/finish")
        self.store.finish_session(row.session_id, req.reason.type, req.detail)
        return {}

    def telemetry(self, call: Call) -> Any:
        call.json()  # must be a JSON object; the events are accepted and dropped (no telemetry sink here)
        return {"status": "accepted"}

