"""REST resources: training runs, checkpoints, sessions, samplers, capabilities (docs/protocol.rst §8, §9)."""

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
    instance_field,
    int_field,
    json_dict_field,
    list_of_field,
    str_field,
    str_list_field,
)
from ._optimizer import AdamOptimizerConfig, OptimizerConfig, check_optimizer_config

__all__ = [
    "AssignSessionProjectRequest",
    "AuditLogEntry",
    "AuditLogResponse",
    "Checkpoint",
    "CheckpointArchiveUrlResponse",
    "CheckpointType",
    "CheckpointsListResponse",
    "CopyWeightsRequest",
    "CopyWeightsResponse",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "GetSamplerResponse",
    "GetServerCapabilitiesResponse",
    "GetSessionResponse",
    "HealthResponse",
    "ListSessionsResponse",
    "ParsedCheckpointTinkerPath",
    "SetCheckpointTtlRequest",
    "SupportedModel",
    "TraceExportResponse",
    "TrainingRun",
    "TrainingRunsResponse",
    "WeightsInfoRequest",
    "WeightsInfoResponse",
    "WhoamiResponse",
]

CheckpointType = Literal["training", "sampler", "external"]
_CHECKPOINT_TYPES = ("training", "sampler", "external")
_KIND_TO_TYPE = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
TINKER_SCHEME = "tinker://"


@attrs.frozen
class Checkpoint:
    """A saved checkpoint (training state or sampler weights)."""

    checkpoint_id: str = str_field()
    checkpoint_type: CheckpointType = choice_field(_CHECKPOINT_TYPES)
    time: datetime = datetime_field()
    tinker_path: str = str_field()
    size_bytes: int | None = int_field(default=None, minimum=0)
    public: bool = bool_field(default=False)
    user_metadata: dict[str, str] | None = json_dict_field(default=None)
    expires_at: datetime | None = datetime_field(default=None)


@attrs.frozen
class ParsedCheckpointTinkerPath:
    """A ``tinker://<run>/<kind>/<name>`` path split into its parts."""

    tinker_path: str = str_field()
    training_run_id: str = str_field()
    checkpoint_type: CheckpointType = choice_field(_CHECKPOINT_TYPES)
    checkpoint_id: str = str_field()

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        """Parse a tinker path (exactly ``run/kind/name``; kind ``weights``, ``sampler_weights``, ``external_weights``).

        Raises:
            ValueError: the path does not have that form.
        """
        check_str(tinker_path, "tinker_path")
        if not tinker_path.startswith(TINKER_SCHEME):
            raise ValueError(f"Invalid tinker path: {tinker_path!r} (it must start with 'tinker://')")
        parts = tinker_path[len(TINKER_SCHEME) :].split("/")
        if len(parts) != 3:
            raise ValueError(
                f"Invalid tinker path: {tinker_path!r} (expected tinker://<training_run_id>/<kind>/<name>, "
                f"got {len(parts)} segment(s))"
            )
        run_id, kind, name = parts
        ckpt_type = _KIND_TO_TYPE.get(kind)
        if ckpt_type is None:
            raise ValueError(
                f"Invalid tinker path: {tinker_path!r} (kind {kind!r} is not one of "
                f"{', '.join(sorted(_KIND_TO_TYPE))})"
            )
        return cls(
            tinker_path=tinker_path,
            training_run_id=run_id,
            checkpoint_type=ckpt_type,  # type: ignore[arg-type]
            checkpoint_id=f"{kind}/{name}",
        )


@attrs.frozen
class TrainingRun:
    """A training run (one LoRA model) and its latest checkpoints."""

    training_run_id: str = str_field()
    base_model: str = str_field()
    model_owner: str = str_field()
    is_lora: bool = bool_field()
    last_request_time: datetime = datetime_field()
    corrupted: bool = bool_field(default=False)
    lora_rank: int | None = int_field(default=None, minimum=0)
    last_checkpoint: Checkpoint | None = instance_field(Checkpoint, default=None)
    last_sampler_checkpoint: Checkpoint | None = instance_field(Checkpoint, default=None)
    user_metadata: dict[str, str] | None = json_dict_field(default=None)


@attrs.frozen
class Cursor:
    """Pagination echo: offset, limit and the total number of items."""

    offset: int = int_field(minimum=0)
    limit: int = int_field(minimum=0)
    total_count: int = int_field(minimum=0)


@attrs.frozen
class TrainingRunsResponse:
    """A page of training runs."""

    training_runs: list[TrainingRun] = list_of_field(TrainingRun)
    cursor: Cursor = instance_field(Cursor)


@attrs.frozen
class CheckpointsListResponse:
    """A list of checkpoints (``cursor`` only for the cross-run listing)."""

    checkpoints: list[Checkpoint] = list_of_field(Checkpoint)
    cursor: Cursor | None = instance_field(Cursor, default=None)


@attrs.frozen
class CheckpointArchiveUrlResponse:
    """Where to download a checkpoint archive, and until when the URL is valid."""

    url: str = str_field()
    expires: datetime = datetime_field()


def _ttl(value: Any, self_: Any, field: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_where(self_, field)} must be an int number of seconds or None, got {value!r}")
    if value <= 0:
        raise ValueError(f"{_where(self_, field)} must be > 0 (or None to remove the expiry), got {value}")
    return value


@attrs.frozen
class SetCheckpointTtlRequest:
    """Body of ``PUT .../ttl``; ``ttl_seconds=None`` (sent as null) removes the expiry."""

    ttl_seconds: int | None = converted_field(_conv(_ttl), default=None, metadata={"serde_keep_none": True})


@attrs.frozen
class AssignSessionProjectRequest:
    """Body of ``PUT /api/v1/sessions/{id}/project``."""

    project_id: str = str_field()


@attrs.frozen
class ListSessionsResponse:
    """A page of session ids."""

    sessions: list[str] = str_list_field()


@attrs.frozen
class GetSessionResponse:
    """The training runs and samplers created in a session."""

    training_run_ids: list[str] = str_list_field()
    sampler_ids: list[str] = str_list_field()
    user_metadata: dict[str, str] | None = json_dict_field(default=None)
    display_name: str | None = str_field(default=None)


@attrs.frozen
class GetSamplerResponse:
    """A sampling session: its base model and (when sampling a checkpoint) the model path."""

    sampler_id: str = str_field()
    base_model: str = str_field()
    model_path: str | None = str_field(default=None)


@attrs.frozen
class TraceExportResponse:
    """State of a session trace export."""

    status: Literal["pending", "ready", "failed"] = choice_field(("pending", "ready", "failed"))
    url: str | None = str_field(default=None)
    error: str | None = str_field(default=None)


@attrs.frozen
class WeightsInfoRequest:
    """Body of ``POST /api/v1/weights_info``."""

    tinker_path: str = str_field()


@attrs.frozen
class WeightsInfoResponse:
    """Facts about a checkpoint's model (used to create a training client from it)."""

    base_model: str = str_field()
    is_lora: bool = bool_field()
    optimizer_config: OptimizerConfig = converted_field(check_optimizer_config, factory=AdamOptimizerConfig)
    lora_rank: int | None = int_field(default=None, minimum=0)
    train_unembed: bool | None = bool_field(default=None)
    train_mlp: bool | None = bool_field(default=None)
    train_attn: bool | None = bool_field(default=None)


@attrs.frozen
class SupportedModel:
    """One model the server offers."""

    model_name: str | None = str_field(default=None)
    max_context_length: int | None = int_field(default=None, minimum=0)
    trainable: bool | None = bool_field(default=None)
    sampleable: bool | None = bool_field(default=None)


@attrs.frozen
class GetServerCapabilitiesResponse:
    """The models the server supports."""

    supported_models: list[SupportedModel] = list_of_field(SupportedModel)


@attrs.frozen
class HealthResponse:
    """Answer of ``GET /api/v1/healthz``."""

    status: str = str_field(default="ok")


@attrs.frozen
class WhoamiResponse:
    """The calling principal, read from the claims of a JWT credential (no request is made)."""

    user_urn: str = str_field()
    email: str | None = str_field(default=None)
    org_urn: str | None = str_field(default=None)


@attrs.frozen
class AuditLogEntry:
    """One audit log event (``GET /api/v1/audit``)."""

    timestamp: datetime = datetime_field()
    event: str = str_field()
    model_id: str | None = str_field(default=None)
    tinker_path: str | None = str_field(default=None)
    purpose: str | None = str_field(default=None)
    event_details: dict[str, Any] | None = json_dict_field(default=None)


@attrs.frozen
class AuditLogResponse:
    """Audit log entries, sorted by timestamp."""

    entries: list[AuditLogEntry] = list_of_field(AuditLogEntry)


@attrs.frozen
class CopyWeightsRequest:
    """Copy a checkpoint into a project: give ``destination_project_id``, or ``session_id`` + ``model_seq_id``."""

    source_path: str = str_field()
    session_id: str | None = str_field(default=None)
    model_seq_id: int | None = int_field(default=None, minimum=0)
    destination_project_id: str | None = str_field(default=None)
    ttl_seconds: int | None = int_field(default=None, minimum=1)
    weights_access_token: str | None = str_field(default=None, repr=False)


@attrs.frozen
class CopyWeightsResponse:
    """Result of copy_weights: the path of the new copy."""

    tinker_path: str = str_field()


def _url_map(value: Any, self_: Any, field: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"{_where(self_, field)} must be a dict of file path -> URL")
    return dict(value)


@attrs.frozen
class ExternalWeightsUrlsResponse:
    """Signed download URLs of an external-weights checkpoint, per file path, valid until ``expires``."""

    urls: dict[str, str] = converted_field(_conv(_url_map))
    expires: datetime = datetime_field()
