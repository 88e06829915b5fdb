"""Server-side custom losses: a traced loss graph as plain data (``POST /api/v1/create_custom_loss``)."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from typing import Any, Literal

import attrs

from ._common import (
    _conv,
    _where,
    choice_field,
    converted_field,
    instance_field,
    int_field,
    json_dict_field,
    list_of_field,
    str_field,
    tag_field,
)

__all__ = [
    "CreateCustomLossRequest",
    "CreateCustomLossResponse",
    "CustomLossGraph",
    "CustomLossInput",
    "CustomLossInputRank",
    "CustomLossNode",
    "CustomLossNodeOp",
]

CustomLossNodeOp = Literal["placeholder", "get_attr", "call_function", "call_method", "call_module", "output"]
_NODE_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
# A custom loss input's rank: 0 is a scalar, 1 is [T] and 2 is [T, K].
CustomLossInputRank = Literal[0, 1, 2]


def _json_list(value: Any, self_: Any, field: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{_where(self_, field)} must be a list of encoded arguments")
    return list(value)


@attrs.frozen
class CustomLossNode:
    """One node of a traced loss, as torch.fx records it (arguments encoded as JSON)."""

    op: CustomLossNodeOp = choice_field(_NODE_OPS)
    name: str = str_field()
    target: str = str_field()
    args: list[Any] = converted_field(_conv(_json_list), factory=list)
    kwargs: dict[str, Any] = json_dict_field(factory=dict, none_as_empty=True)


@attrs.frozen
class CustomLossGraph:
    """A traced loss: its nodes in execution order (``format`` 1)."""

    nodes: list[CustomLossNode] = list_of_field(CustomLossNode)
    format: Literal[1] = attrs.field(default=1, validator=attrs.validators.in_((1,)))


def _rank(value: Any, self_: Any, field: Any) -> int:
    if isinstance(value, bool) or value not in (0, 1, 2):
        raise ValueError(f"{_where(self_, field)} must be 0, 1 or 2, got {value!r}")
    return int(value)


@attrs.frozen
class CustomLossInput:
    """One input of a custom loss (``logprobs`` or a ``loss_fn_inputs`` key) with its rank."""

    name: str = str_field()
    rank: CustomLossInputRank = converted_field(_conv(_rank))


@attrs.frozen
class CreateCustomLossRequest:
    """Upload a traced loss; forward_backward requests of the session then name it by ``loss_id``."""

    session_id: str = str_field()
    custom_loss_seq_id: int = int_field(minimum=0)
    name: str = str_field()
    inputs: list[CustomLossInput] = list_of_field(CustomLossInput)
    graph: CustomLossGraph = instance_field(CustomLossGraph)
    type: Literal["create_custom_loss"] = tag_field("create_custom_loss")


@attrs.frozen
class CreateCustomLossResponse:
    """The stored loss's id."""

    loss_id: str = str_field()
    type: Literal["create_custom_loss"] = tag_field("create_custom_loss")
