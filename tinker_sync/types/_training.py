"""Training wire types: Datum, forward/backward, optimizer step, checkpoints, model lifecycle."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ._common import (
    OMIT_DEFAULT,
    _describe,
    bool_field,
    check_choice,
    choice_field,
    converted_field,
    float_dict_field,
    instance_field,
    int_field,
    json_dict_field,
    list_of_field,
    str_field,
    str_list_field,
    tag_field,
)
from ._console import checkpoint_console_url, checkpoint_playground_url
from ._model_input import ModelInput
from ._numbers import NumberArray
from ._optimizer import (
    AdamOptimizerConfig,
    AdamParams,
    DimuonParams,
    OptimizerConfig,
    OptimParams,
    check_optimizer_config,
)
from ._provenance import ProvenanceSpans, check_spans, check_tiling
from ._rest import ParsedCheckpointTinkerPath
from ._tensor import TensorData

__all__ = [
    "CreateModelRequest",
    "CreateModelResponse",
    "Datum",
    "ForwardBackwardInput",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "ForwardRequest",
    "GetInfoRequest",
    "GetInfoResponse",
    "LegacyForwardBackwardRequest",
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "LoraConfig",
    "LossFnInputs",
    "LossFnOutput",
    "LossFnType",
    "ModelData",
    "OptimStepRequest",
    "OptimStepResponse",
    "SamplingClientKind",
    "SaveWeightsExternalRequest",
    "SaveWeightsExternalResponse",
    "SaveWeightsExternalResponseInternal",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsForSamplerResponseInternal",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
    "UnloadModelRequest",
    "UnloadModelResponse",
]

LossFnType = Literal[
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce", "custom"
]
LOSS_FNS: tuple[str, ...] = (
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "gspo",
    "stable_reinforce",
    "custom",
)
SamplingClientKind = Literal["snapshot", "inflight"]
_SAMPLING_CLIENT_KINDS: tuple[str, ...] = ("snapshot", "inflight")
LossFnInputs = dict[str, TensorData]
LossFnOutput = dict[str, TensorData]

# dtype used when a loss input is given as a plain Python list (docs/protocol.rst §6.1).
_LIST_KEY_DTYPES: dict[str, str] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}


def _list_to_tensor(key: str, value: list[Any] | tuple[Any, ...] | NumberArray) -> TensorData:
    dtype = _LIST_KEY_DTYPES.get(key)
    if dtype is None:
        raise ValueError(
            f"Datum.loss_fn_inputs[{key!r}] is a plain list, but the dtype of key {key!r} is unknown; "
            f"pass a TensorData (or a numpy array) instead. "
            f"Lists are accepted for: {', '.join(sorted(_LIST_KEY_DTYPES))}"
        )
    if value and isinstance(value[0], (list, tuple)):
        ncols = len(value[0])
        flat: list[Any] = []
        for i, row in enumerate(value):
            if not isinstance(row, (list, tuple)) or len(row) != ncols:
                raise ValueError(
                    f"Datum.loss_fn_inputs[{key!r}] must be a rectangular 2-D list; row {i} is {_describe(row)} "
                    f"(expected {ncols} items)"
                )
            flat.extend(row)
        return TensorData(data=flat, dtype=dtype, shape=[len(value), ncols])  # type: ignore[arg-type]
    return TensorData(data=value, dtype=dtype, shape=[len(value)])  # type: ignore[arg-type]


def _coerce_loss_fn_inputs(value: Any) -> dict[str, TensorData]:
    if not isinstance(value, Mapping):
        raise TypeError(f"Datum.loss_fn_inputs must be a dict of str -> TensorData, got {type(value).__name__}")
    out: dict[str, TensorData] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"Datum.loss_fn_inputs keys must be str, got {_describe(key)}")
        if isinstance(item, TensorData):
            out[key] = item
        elif isinstance(item, (list, tuple, NumberArray)):  # NumberArray: e.g. a sampled sequence's tokens
            try:
                out[key] = _list_to_tensor(key, item)
            except (TypeError, ValueError) as exc:
                if str(exc).startswith("Datum."):
                    raise
                raise type(exc)(f"Datum.loss_fn_inputs[{key!r}]: {exc}") from None
        elif type(item).__module__.split(".")[0] == "torch":
            out[key] = TensorData.from_torch(item)
        elif type(item).__module__.split(".")[0] == "numpy" or hasattr(item, "__array_interface__"):
            out[key] = TensorData.from_numpy(item)
        else:
            raise TypeError(
                f"Datum.loss_fn_inputs[{key!r}] must be a TensorData, numpy array, torch tensor or list; "
                f"got {type(item).__name__}"
            )
    return out


@attrs.frozen
class Datum:
    """One training example: the model input and the per-token loss inputs.

    ``loss_fn_inputs`` values may be TensorData, numpy arrays, torch tensors or (for the known keys
    ``target_tokens``, ``weights``, ``advantages``, ``logprobs``, ...) plain Python lists.
    """

    model_input: ModelInput = instance_field(ModelInput)
    loss_fn_inputs: dict[str, TensorData] = converted_field(_coerce_loss_fn_inputs, factory=dict)
    model_input_spans: ProvenanceSpans | None = converted_field(
        lambda v: check_spans(v, "Datum.model_input_spans"), default=None
    )
    loss_fn_input_spans: ProvenanceSpans | None = converted_field(
        lambda v: check_spans(v, "Datum.loss_fn_input_spans"), default=None
    )

    def __attrs_post_init__(self) -> None:
        if (self.model_input_spans is None) != (self.loss_fn_input_spans is None):
            raise ValueError(
                "Datum provenance comes as a pair: set both model_input_spans and loss_fn_input_spans or neither"
            )

    def with_provenance(self, model_input: ProvenanceSpans, loss_fn_inputs: ProvenanceSpans) -> Datum:
        """A copy carrying provenance spans for ``model_input`` and ``loss_fn_inputs["target_tokens"]``.

        Raises:
            ValueError: the spans do not tile the field they annotate exactly.
        """
        check_tiling("model_input", check_spans(model_input, "model_input") or [], self.model_input.length)
        target = self.loss_fn_inputs.get("target_tokens")
        if target is not None and target.shape is not None and len(target.shape) == 1:
            check_tiling("loss_fn_inputs", check_spans(loss_fn_inputs, "loss_fn_inputs") or [], target.shape[0])
        return attrs.evolve(self, model_input_spans=model_input, loss_fn_input_spans=loss_fn_inputs)


def _loss_fn(where: str):  # type: ignore[no-untyped-def]
    def convert(value: Any) -> str:
        return check_choice(value, where, LOSS_FNS)  # type: ignore[no-any-return]

    return convert


@attrs.frozen
class ForwardBackwardInput:
    """The data and loss of a forward(-backward) pass."""

    data: list[Datum] = list_of_field(Datum)
    loss_fn: LossFnType = converted_field(_loss_fn("ForwardBackwardInput.loss_fn"))
    loss_fn_config: dict[str, float] | None = float_dict_field(default=None)


@attrs.frozen(init=False)
class ForwardBackwardRequest:
    """A forward_backward request: ``forward_backward_input`` for ``model_id`` (protobuf on the 0.25+ wire).

    Built as officially, ``ForwardBackwardRequest(forward_backward_input=..., model_id=..., seq_id=...)``, or
    from the parts, ``ForwardBackwardRequest(model_id=..., data=..., loss_fn=..., loss_fn_config=...)``.
    ``forward_only`` makes it a forward pass (no gradients). ``seq_id`` 0/None means unset.
    """

    forward_backward_input: ForwardBackwardInput = instance_field(ForwardBackwardInput)
    model_id: str = str_field()
    seq_id: int | None = int_field(default=None, minimum=0)
    forward_only: bool = bool_field(default=False)

    def __init__(
        self,
        forward_backward_input: ForwardBackwardInput | None = None,
        model_id: str | None = None,
        seq_id: int | None = None,
        *,
        forward_only: bool = False,
        data: list[Datum] | None = None,
        loss_fn: LossFnType | None = None,
        loss_fn_config: dict[str, float] | None = None,
    ) -> None:
        if forward_backward_input is None:
            if data is None or loss_fn is None:
                raise TypeError("ForwardBackwardRequest needs forward_backward_input (or data and loss_fn)")
            forward_backward_input = ForwardBackwardInput(data=data, loss_fn=loss_fn, loss_fn_config=loss_fn_config)
        elif data is not None or loss_fn is not None or loss_fn_config is not None:
            raise TypeError(
                "ForwardBackwardRequest takes forward_backward_input or data/loss_fn/loss_fn_config, not both"
            )
        if model_id is None:
            raise TypeError("ForwardBackwardRequest needs model_id")
        self.__attrs_init__(forward_backward_input, model_id, seq_id, forward_only)

    @classmethod
    def from_input(
        cls, fb_input: ForwardBackwardInput, *, model_id: str, seq_id: int | None = None, forward_only: bool = False
    ) -> ForwardBackwardRequest:
        """Build from a ForwardBackwardInput."""
        return cls(fb_input, model_id, seq_id, forward_only=forward_only)

    @property
    def data(self) -> list[Datum]:
        """The examples (``forward_backward_input.data``)."""
        return self.forward_backward_input.data

    @property
    def loss_fn(self) -> LossFnType:
        """The loss (``forward_backward_input.loss_fn``)."""
        return self.forward_backward_input.loss_fn

    @property
    def loss_fn_config(self) -> dict[str, float] | None:
        """The loss settings (``forward_backward_input.loss_fn_config``)."""
        return self.forward_backward_input.loss_fn_config


@attrs.frozen
class LegacyForwardBackwardRequest:
    """The JSON forward_backward body of SDK <= 0.24 (``POST /api/v1/forward_backward``)."""

    forward_backward_input: ForwardBackwardInput = instance_field(ForwardBackwardInput)
    model_id: str = str_field()
    seq_id: int | None = int_field(default=None, minimum=0)


@attrs.frozen
class ForwardRequest:
    """The JSON forward-only body of SDK <= 0.24 (``POST /api/v1/forward``)."""

    forward_input: ForwardBackwardInput = instance_field(ForwardBackwardInput)
    model_id: str = str_field()
    seq_id: int | None = int_field(default=None, minimum=0)


def _loss_fn_outputs(value: Any) -> list[dict[str, TensorData]]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"ForwardBackwardOutput.loss_fn_outputs must be a list of dicts, got {type(value).__name__}")
    out = list(value)
    for i, item in enumerate(out):
        if not isinstance(item, Mapping):
            raise TypeError(f"ForwardBackwardOutput.loss_fn_outputs item {i} must be a dict, got {type(item).__name__}")
        for k, v in item.items():
            if not isinstance(k, str) or not isinstance(v, TensorData):
                raise TypeError(
                    f"ForwardBackwardOutput.loss_fn_outputs[{i}] must map str -> TensorData; "
                    f"key {_describe(k)} has a {type(v).__name__}"
                )
    return out


@attrs.frozen
class ForwardBackwardOutput:
    """The result of forward/forward_backward: one output dict per datum, plus metrics."""

    loss_fn_output_type: str = str_field()
    loss_fn_outputs: list[dict[str, TensorData]] = converted_field(_loss_fn_outputs)
    metrics: dict[str, float] = float_dict_field()


def _optim_params(value: Any) -> OptimParams:
    if not isinstance(value, (AdamParams, DimuonParams)):
        raise TypeError(f"OptimStepRequest.optim_params must be AdamParams or DimuonParams, got {type(value).__name__}")
    return value


@attrs.frozen(init=False)
class OptimStepRequest:
    """Apply one optimizer step to the accumulated gradients.

    ``optim_params`` travels as ``adam_params`` (AdamParams) or ``optimizer_params`` (other families), as
    the official SDK sends it; ``adam_params=`` is accepted as the 0.25 spelling.
    """

    optim_params: OptimParams = converted_field(_optim_params)
    model_id: str = str_field()
    seq_id: int | None = int_field(default=None, minimum=0)
    type: Literal["optim_step"] = tag_field("optim_step")

    def __init__(
        self,
        optim_params: OptimParams | None = None,
        model_id: str | None = None,
        seq_id: int | None = None,
        type: Literal["optim_step"] = "optim_step",  # the wire name (cattrs passes it); shadows the builtin here
        *,
        adam_params: AdamParams | None = None,
        optimizer_params: OptimParams | None = None,
    ) -> None:
        given = [p for p in (optim_params, adam_params, optimizer_params) if p is not None]
        if len(given) != 1:
            raise TypeError("OptimStepRequest needs exactly one of optim_params, adam_params, optimizer_params")
        if adam_params is not None and not isinstance(adam_params, AdamParams):
            raise TypeError(f"OptimStepRequest.adam_params must be AdamParams, got {adam_params.__class__.__name__}")
        if model_id is None:
            raise TypeError("OptimStepRequest needs model_id")
        self.__attrs_init__(given[0], model_id, seq_id, type)

    @property
    def adam_params(self) -> AdamParams | None:
        """``optim_params`` when it is AdamParams, else None (the 0.25 attribute)."""
        return self.optim_params if isinstance(self.optim_params, AdamParams) else None


@attrs.frozen
class OptimStepResponse:
    """Result of optim_step."""

    metrics: dict[str, float] | None = float_dict_field(default=None)
    type: Literal["optim_step"] = tag_field("optim_step")


@attrs.frozen
class LoraConfig:
    """LoRA settings of a training run."""

    rank: int = int_field(default=32, minimum=1)
    seed: int | None = int_field(default=None)
    train_unembed: bool = bool_field(default=True)
    train_mlp: bool = bool_field(default=True)
    train_attn: bool = bool_field(default=True)

    def __attrs_post_init__(self) -> None:
        if not (self.train_unembed or self.train_mlp or self.train_attn):
            raise ValueError("LoraConfig needs at least one of train_unembed, train_mlp, train_attn set to True")


@attrs.frozen
class CreateModelRequest:
    """Create a LoRA training run on a base model."""

    session_id: str = str_field()
    model_seq_id: int = int_field(minimum=0)
    base_model: str = str_field()
    user_metadata: dict[str, Any] | None = json_dict_field(default=None)
    lora_config: LoraConfig | None = instance_field(LoraConfig, default=None)
    # Sent only when not Adam (the server's default), so servers older than 0.38 see no new key.
    optimizer_config: OptimizerConfig = converted_field(
        check_optimizer_config, default=AdamOptimizerConfig(), metadata=OMIT_DEFAULT
    )
    type: Literal["create_model"] = tag_field("create_model")


@attrs.frozen
class CreateModelResponse:
    """Result of create_model."""

    model_id: str = str_field()
    type: Literal["create_model"] = tag_field("create_model")


@attrs.frozen
class SaveWeightsRequest:
    """Save training state (weights + optimizer) as a named checkpoint."""

    model_id: str = str_field()
    path: str | None = str_field(default=None)
    seq_id: int | None = int_field(default=None, minimum=0)
    ttl_seconds: int | None = int_field(default=None, minimum=1)
    overwrite: bool = bool_field(default=False)
    user_metadata: dict[str, str] | None = json_dict_field(default=None)
    type: Literal["save_weights"] = tag_field("save_weights")


def _checkpoint_console_url(tinker_path: str) -> str:
    parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
    return checkpoint_console_url(parsed.training_run_id, parsed.checkpoint_id)


@attrs.frozen
class SaveWeightsResponse:
    """Result of save_weights: the ``tinker://RUN/weights/NAME`` path."""

    path: str = str_field()
    type: Literal["save_weights"] = tag_field("save_weights")

    def get_console_url(self) -> str:
        """The Tinker Console page of this checkpoint."""
        return _checkpoint_console_url(self.path)


@attrs.frozen
class SaveWeightsForSamplerRequest:
    """Save sampler weights: named (``path``) or ephemeral (``sampling_session_seq_id``)."""

    model_id: str = str_field()
    path: str | None = str_field(default=None)
    sampling_session_seq_id: int | None = int_field(default=None, minimum=0)
    # Sent only when not the default, so servers older than 0.38 see no new key.
    kind: SamplingClientKind = choice_field(_SAMPLING_CLIENT_KINDS, default="snapshot", metadata=OMIT_DEFAULT)
    seq_id: int | None = int_field(default=None, minimum=0)
    ttl_seconds: int | None = int_field(default=None, minimum=1)
    user_metadata: dict[str, str] | None = json_dict_field(default=None)
    type: Literal["save_weights_for_sampler"] = tag_field("save_weights_for_sampler")


@attrs.frozen
class SaveWeightsForSamplerResponseInternal:
    """What the save_weights_for_sampler future returns: a path and/or a sampling session id."""

    path: str | None = str_field(default=None)
    sampling_session_id: str | None = str_field(default=None)
    type: Literal["save_weights_for_sampler"] = tag_field("save_weights_for_sampler")


@attrs.frozen
class SaveWeightsForSamplerResponse:
    """Public result of a named save_weights_for_sampler: the ``tinker://RUN/sampler_weights/NAME`` path."""

    path: str = str_field()
    type: Literal["save_weights_for_sampler"] = tag_field("save_weights_for_sampler")

    def get_console_url(self) -> str:
        """The Tinker Console page of this sampler checkpoint."""
        return _checkpoint_console_url(self.path)

    def get_playground_url(self) -> str:
        """A Tinker Playground URL set up with this checkpoint."""
        return checkpoint_playground_url(self.path)


@attrs.frozen
class LoadWeightsRequest:
    """Load a checkpoint into a model (legacy: model_id+seq_id; create-via-load: session_id+model_seq_id)."""

    path: str = str_field()
    optimizer: bool = bool_field()
    model_id: str | None = str_field(default=None)
    seq_id: int | None = int_field(default=None, minimum=0)
    session_id: str | None = str_field(default=None)
    model_seq_id: int | None = int_field(default=None, minimum=0)
    base_model: str | None = str_field(default=None)
    user_metadata: dict[str, Any] | None = json_dict_field(default=None)
    optimizer_config: OptimizerConfig | None = converted_field(check_optimizer_config, default=None)
    weights_access_token: str | None = str_field(default=None, repr=False)
    type: Literal["load_weights"] = tag_field("load_weights")

    def __attrs_post_init__(self) -> None:
        if not self.path.startswith("tinker://"):
            raise ValueError(f"LoadWeightsRequest.path must be a tinker:// path, got {self.path!r}")
        if self.model_id is None and self.session_id is None:
            raise ValueError("LoadWeightsRequest needs model_id (load into a model) or session_id + model_seq_id")
        if self.session_id is not None and self.model_seq_id is None:
            raise ValueError("LoadWeightsRequest.model_seq_id is required together with session_id")


@attrs.frozen
class LoadWeightsResponse:
    """Result of load_weights."""

    path: str | None = str_field(default=None)
    model_id: str | None = str_field(default=None)
    type: Literal["load_weights"] = tag_field("load_weights")


@attrs.frozen
class ModelData:
    """Model facts returned by get_info."""

    arch: str | None = str_field(default=None)
    model_name: str | None = str_field(default=None)
    tokenizer_id: str | None = str_field(default=None)


@attrs.frozen
class GetInfoRequest:
    """Ask for a training model's info."""

    model_id: str = str_field()
    type: Literal["get_info"] = tag_field("get_info")


@attrs.frozen
class GetInfoResponse:
    """Info about a training model."""

    model_id: str = str_field()
    model_data: ModelData = instance_field(ModelData)
    optimizer_config: OptimizerConfig = converted_field(check_optimizer_config, factory=AdamOptimizerConfig)
    is_lora: bool | None = bool_field(default=None)
    lora_rank: int | None = int_field(default=None)
    model_name: str | None = str_field(default=None)
    type: Literal["get_info"] = tag_field("get_info")


@attrs.frozen
class UnloadModelRequest:
    """Unload a training model."""

    model_id: str = str_field()
    type: Literal["unload_model"] = tag_field("unload_model")


@attrs.frozen
class UnloadModelResponse:
    """Result of unload_model."""

    model_id: str = str_field()
    type: Literal["unload_model"] = tag_field("unload_model")


@attrs.frozen
class SaveWeightsExternalRequest:
    """Export the weights in an external (Hugging Face) format under ``path``."""

    model_id: str = str_field()
    path: str = str_field()
    seq_id: int | None = int_field(default=None, minimum=0)
    ttl_seconds: int | None = int_field(default=None, minimum=1)
    age_encryption_recipients: list[str] | None = str_list_field(default=None)
    type: Literal["save_weights_external"] = tag_field("save_weights_external")


@attrs.frozen
class SaveWeightsExternalResponseInternal:
    """What the save_weights_external future returns."""

    path: str | None = str_field(default=None)
    size_bytes: int | None = int_field(default=None, minimum=0)
    type: Literal["save_weights_external"] = tag_field("save_weights_external")


@attrs.frozen
class SaveWeightsExternalResponse:
    """Public result of save_weights_external: the ``tinker://RUN/external_weights/NAME`` path."""

    path: str = str_field()
    type: Literal["save_weights_external"] = tag_field("save_weights_external")
