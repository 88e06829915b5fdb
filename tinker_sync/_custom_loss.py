"""forward_backward_custom: a loss computed client-side from the forward pass, sent back as a weighted backward."""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

import attrs

from . import types
from ._chunking import PreparedRequest, combine_forward_backward_outputs, model_input_bytes, tensor_bytes
from ._exceptions import TinkerError
from ._executor import LaneSlot, chain, copy_outcome, gather, set_exception

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = [
    "CustomLossCall",
    "LossHandle",
    "backward_bytes",
    "custom_loss_data",
    "handle_loss_fn",
    "make_loss_handle",
    "resolve_backend",
]

_MAX_INPUTS = 8
_INPUT_NAME = re.compile(r"[a-z][a-z0-9_]*")


@attrs.frozen
class LossHandle:
    """A loss made by ``ServiceClient.create_custom_loss``; pass it to ``forward_backward_custom``.

    It runs client-side (``loss_id`` is None): per datum, ``fn(logprobs, *inputs)`` on torch tensors.
    """

    name: str
    inputs: tuple[types.CustomLossInput, ...]  # logprobs first, then the loss_fn_inputs keys fn reads
    session_id: str
    fn: Callable[..., Any] = attrs.field(repr=False, eq=False)
    loss_id: str | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``loss_fn_inputs`` keys the loss reads, in the order it takes them."""
        return tuple(i.name for i in self.inputs[1:])


def make_loss_handle(fn: Any, input_ranks: Any, session_id: str) -> LossHandle:
    """Check ``fn``'s signature against ``input_ranks`` (caller's thread) and wrap it in a LossHandle.

    Raises:
        ImportError: torch is not installed (the loss runs on torch tensors).
        TypeError/ValueError: ``fn`` or ``input_ranks`` do not fit the custom-loss contract.
    """
    where = "create_custom_loss"
    importlib.import_module("torch")  # ImportError now, naming torch
    if not callable(fn):
        raise TypeError(f"{where}: fn must be callable (logprobs, *loss_fn_inputs) -> (loss, metrics)")
    if not isinstance(input_ranks, Mapping):
        raise TypeError(f"{where}: input_ranks must be a dict of parameter name -> rank (0, 1 or 2)")
    name = getattr(fn, "__name__", type(fn).__name__)
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "logprobs":
        raise ValueError(f"{where}: {name} must take logprobs first, then the loss_fn_inputs it reads")
    if len(params) > _MAX_INPUTS:
        raise ValueError(f"{where}: {name} takes {len(params)} parameters; at most {_MAX_INPUTS}, logprobs included")
    for param in params:
        if (not _INPUT_NAME.fullmatch(param.name) or param.default is not param.empty
                or param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)):
            raise ValueError(f"{where}: {name} parameter {param.name!r} must be a plain, required, lowercase "
                             "positional parameter")
    names = [p.name for p in params]
    if set(input_ranks) != set(names):
        raise ValueError(f"{where}: input_ranks must give a rank for each parameter of {name} "
                         f"({', '.join(names)}), got {sorted(input_ranks)}")
    if any(input_ranks[n] not in (0, 1, 2) or isinstance(input_ranks[n], bool) for n in names):
        raise ValueError(f"{where}: every rank must be 0 (scalar), 1 ([T]) or 2 ([T, K])")
    if input_ranks["logprobs"] == 0:
        raise ValueError(f"{where}: logprobs has rank 1 ([T]) or 2 ([T, K])")
    inputs = tuple(types.CustomLossInput(name=n, rank=input_ranks[n]) for n in names)
    return LossHandle(name=name, inputs=inputs, session_id=session_id, fn=fn)


def _check_handle_inputs(handle: LossHandle, data: list[types.Datum], where: str) -> None:
    logprobs, *inputs = handle.inputs
    for i, datum in enumerate(data):
        for declared, key in [(logprobs, "target_tokens"), *((x, x.name) for x in inputs)]:
            tensor = datum.loss_fn_inputs.get(key)
            if tensor is None:
                raise ValueError(f"{where}: data[{i}] has no loss_fn_inputs[{key!r}], which loss {handle.name!r} takes")
            rank = len(tensor.dense_shape())
            if rank != declared.rank:
                raise ValueError(f"{where}: data[{i}].loss_fn_inputs[{key!r}] has rank {rank}, but loss "
                                 f"{handle.name!r} declared {declared.name} with rank {declared.rank}")


def handle_loss_fn(handle: LossHandle, data: list[types.Datum], where: str) -> Callable[..., Any]:
    """The torch-backend ``loss_fn(data, logprobs)`` running ``handle`` on each datum of ``data`` (summed).

    Metrics named ``...:mean`` are averaged over the datums, the others summed.
    """
    _check_handle_inputs(handle, data, where)

    def loss_fn(_forward_data: list[types.Datum], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
        total: Any = None
        sums: dict[str, float] = {}
        for datum, lp in zip(data, logprobs):
            loss, metrics = handle.fn(lp, *[datum.loss_fn_inputs[n].to_torch() for n in handle.input_names])
            if getattr(loss, "ndim", 0) != 0:
                raise ValueError(f"loss {handle.name!r} must return a scalar loss, got shape {tuple(loss.shape)}")
            total = loss if total is None else total + loss
            for key, value in dict(metrics).items():
                sums[key] = sums.get(key, 0.0) + float(value.detach().item() if hasattr(value, "detach") else value)
        return total, {k: v / len(data) if k.endswith(":mean") else v for k, v in sums.items()}

    return loss_fn


def resolve_backend(backend: str, where: str) -> str:
    """``"torch"`` or ``"numpy"`` for ``backend`` (``"auto"``: torch when importable); ImportError now."""
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"{where}: backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
    try:
        import numpy  # noqa: F401
    except ImportError as exc:  # pragma: no cover - numpy is a test/extra dependency
        raise ImportError(f"{where} needs numpy: pip install 'tinker_sync[numpy]'") from exc
    if backend == "auto":
        try:
            importlib.import_module("torch")
        except ImportError:
            return "numpy"
        return "torch"
    if backend == "torch":
        importlib.import_module("torch")  # ImportError now, in the caller's thread
    return backend


def custom_loss_data(data: list[types.Datum], where: str, read_by_loss: tuple[str, ...] = ()) -> list[types.Datum]:
    """The datums of a custom-loss call: ``target_tokens`` required, ``weights`` optional (zeros if absent).

    Keys in ``read_by_loss`` (the inputs a LossHandle reads) stay client-side: they are left out.

    Raises:
        ValueError: a datum without ``target_tokens`` or with other loss inputs.
    """
    prepared: list[types.Datum] = []
    for i, d in enumerate(data):
        if read_by_loss:
            d = types.Datum(model_input=d.model_input,
                            loss_fn_inputs={k: v for k, v in d.loss_fn_inputs.items() if k not in read_by_loss})
        keys = set(d.loss_fn_inputs)
        if "target_tokens" not in keys:
            raise ValueError(f"{where}: data[{i}] needs loss_fn_inputs['target_tokens']")
        extra = keys - {"target_tokens", "weights"}
        if extra:
            raise ValueError(
                f"{where}: data[{i}] has unsupported loss_fn_inputs {sorted(extra)}; "
                "only 'target_tokens' and 'weights' are allowed (pass other values through your loss_fn closure)"
            )
        if "weights" not in keys:
            target = d.loss_fn_inputs["target_tokens"]
            n = math.prod(target.dense_shape())
            inputs = dict(d.loss_fn_inputs)
            inputs["weights"] = types.TensorData(data=[0.0] * n, dtype="float32", shape=target.dense_shape())
            d = types.Datum(model_input=d.model_input, loss_fn_inputs=inputs)
        prepared.append(d)
    return prepared


def backward_bytes(datum: types.Datum) -> int:
    """Estimated size of ``datum`` in the backward request: same input, dense float32 weights like target_tokens."""
    target = datum.loss_fn_inputs["target_tokens"]
    return model_input_bytes(datum.model_input) + tensor_bytes(target) + 4 * math.prod(target.dense_shape())


class CustomLossCall:
    """The second half of forward_backward_custom: its backward fills lane slots reserved at call time.

    Runs without blocking any thread: the forward's completion (a poller thread) hands the user's loss
    to a worker; the worker encodes the backward (``prepare_backward``) and fills the reserved slots.
    Every path either fills every slot or fails the unfilled ones (which poisons the lane with a message
    naming the cause).
    """

    def __init__(
        self, runtime: Runtime, data: list[types.Datum], loss_fn: Callable[..., Any], backend: str,
        prepare_backward: Callable[[list[types.Datum]], list[PreparedRequest]],
        slots: list[tuple[int, LaneSlot]], result: Future[types.ForwardBackwardOutput],
    ) -> None:
        self.runtime = runtime
        self.data = data
        self.loss_fn = loss_fn
        self.backend = backend
        self.prepare_backward = prepare_backward
        self.slots = slots
        self.result = result

    def start(self, forward: Future[list[types.ForwardBackwardOutput]]) -> Future[types.ForwardBackwardOutput]:
        forward.add_done_callback(self._after_forward)
        return self.result

    def _give_up(self, exc: BaseException, stage: str) -> None:
        seqs = [s for s, _ in self.slots]
        reason = TinkerError(
            f"forward_backward_custom could not send its backward pass (seq_ids {seqs[0]}..{seqs[-1]}, reserved "
            f"when it was called) because {stage} failed with {type(exc).__name__}: {exc}"
        )
        reason.__cause__ = exc
        for _seq, slot in self.slots:
            if not slot.filled:
                slot.fail(reason)
        set_exception(self.result, exc)

    def _after_forward(self, fwd: Future[list[types.ForwardBackwardOutput]]) -> None:
        if fwd.cancelled():
            self._give_up(CancelledError("the forward pass was cancelled"), "its forward pass")
            return
        exc = fwd.exception()
        if exc is not None:
            self._give_up(exc, "its forward pass")
            return
        try:
            self.runtime.executor.submit(self._backward, fwd.result())
        except BaseException as err:  # noqa: BLE001 - e.g. ClientClosedError
            self._give_up(err, "scheduling the loss function")

    def _backward(self, parts: list[types.ForwardBackwardOutput]) -> None:
        try:
            out = combine_forward_backward_outputs(parts)
            new_data, loss_value, user_metrics = _custom_gradients(self.data, out, self.loss_fn, self.backend)
            requests = self.prepare_backward(new_data)
        except BaseException as exc:  # noqa: BLE001 - the user's loss_fn may raise anything
            self._give_up(exc, "the loss function (or turning its gradient into a request)")
            return
        futures: list[Future[Any]] = []
        try:
            for (seq, slot), p in zip(self.slots, requests):
                futures.append(p.submit(self.runtime, seq, slot))  # a LaneSlot has the lane's submit(fn, label=)
        except BaseException as exc:  # noqa: BLE001 - ClientClosedError while closing
            self._give_up(exc, "sending it")
            return

        def merge(results: list[types.ForwardBackwardOutput]) -> types.ForwardBackwardOutput:
            merged = combine_forward_backward_outputs(results)
            metrics = dict(merged.metrics)
            if "loss:sum" in metrics:
                metrics["surrogate_loss:sum"] = metrics["loss:sum"]
            metrics["loss:sum"] = loss_value
            metrics.update(user_metrics)
            return attrs.evolve(merged, metrics=metrics)

        chain(gather(futures), merge).add_done_callback(lambda f: copy_outcome(f, self.result))


def _custom_gradients(
    data: list[types.Datum], out: types.ForwardBackwardOutput, loss_fn: Callable[..., Any], backend: str
) -> tuple[list[types.Datum], float, dict[str, float]]:
    import numpy as np

    if len(out.loss_fn_outputs) != len(data):
        raise ValueError(f"forward returned {len(out.loss_fn_outputs)} outputs for {len(data)} datums")
    arrays = [np.asarray(o["logprobs"].to_numpy(), dtype=np.float32) for o in out.loss_fn_outputs]
    if backend == "torch":
        torch: Any = importlib.import_module("torch")

        leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
        result = loss_fn(data, leaves)
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError("forward_backward_custom: loss_fn must return (loss_tensor, metrics)")
        loss, metrics = result
        loss.backward()
        grads = [
            (leaf.grad.detach().cpu().numpy() if leaf.grad is not None else np.zeros_like(a))
            for leaf, a in zip(leaves, arrays)
        ]
        loss_value = float(loss.detach().cpu().item())
    else:
        result = loss_fn(data, arrays)
        if not isinstance(result, tuple) or len(result) != 3:
            raise TypeError(
                "forward_backward_custom (numpy backend): loss_fn must return (loss, metrics, grads) where "
                "grads[i] = dLoss/dlogprobs[i]"
            )
        loss, metrics, grads = result
        loss_value = float(loss)
        if len(grads) != len(arrays):
            raise ValueError(f"forward_backward_custom: loss_fn returned {len(grads)} grads for {len(arrays)} datums")
    new_data: list[types.Datum] = []
    for i, (d, g, a) in enumerate(zip(data, grads, arrays)):
        g = np.asarray(g, dtype=np.float32)
        if g.shape != a.shape:
            raise ValueError(f"forward_backward_custom: grads[{i}] has shape {g.shape}, expected {a.shape}")
        target = d.loss_fn_inputs["target_tokens"]
        weights = types.TensorData(data=[float(x) for x in (-g).reshape(-1)], dtype="float32", shape=list(g.shape))
        new_data.append(
            types.Datum(model_input=d.model_input, loss_fn_inputs={"target_tokens": target, "weights": weights})
        )
    return new_data, loss_value, {str(k): float(v) for k, v in dict(metrics or {}).items()}
