"""ClientFuture: what creation methods return, a Future of a client that can also be used as the client."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ._executor import copy_outcome

__all__ = ["ClientFuture", "forward_client_methods"]

C = TypeVar("C")
F = TypeVar("F", bound="ClientFuture[Any]")


class ClientFuture(Future[C]):
    """A real ``concurrent.futures.Future`` of a client that also behaves as the client.

    The official SDK 0.38 returns a future of the client from ``create_lora_training_client`` and the
    other creation methods (``.result()``), where 0.25 returned the client itself. This object serves
    both styles: ``.result()`` (or ``wait()``/``as_completed()``) gives the client, and every public
    method or attribute of the client used on it waits for the client first (blocking) and forwards.
    Unlike the official SDK, the second style is not deprecated here and warns nothing.
    """

    _forward_to: Any = None  # the client, once a forwarded call has waited for it

    @classmethod
    def following(cls: type[F], source: Future[Any]) -> F:  # noqa: PYI019 - typing.Self needs 3.11
        """A ClientFuture that completes as ``source`` does (result, error or cancellation)."""
        out = cls()
        source.add_done_callback(lambda f: copy_outcome(f, out))
        return out

    def __getattr__(self, name: str) -> Any:
        # Only called for names the class lacks: the client's instance attributes (model_id...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.result(), name)

    def __repr__(self) -> str:
        if not self.done():
            state = "pending"
        elif self.cancelled():
            state = "cancelled"
        elif self.exception() is not None:
            state = f"failed: {self.exception()!r}"
        else:
            state = repr(self.result())
        return f"<{type(self).__name__}: {state}>"

    def __reduce__(self) -> Any:
        # Pickling the future pickles the client (SamplingClient pickles; others refuse as they would).
        return self.result().__reduce__()


def _forwarder(name: str, doc: str | None) -> Callable[..., Any]:
    def method(self: ClientFuture[Any], *args: Any, **kwargs: Any) -> Any:
        client = self._forward_to
        if client is None:  # a 0.25-style script calls through the future on every sample: wait once
            client = self._forward_to = self.result()
        return getattr(client, name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"Wait for the client, then call its ``{name}``.\n\n{doc or ''}".rstrip()
    return method


def forward_client_methods(future_cls: type[ClientFuture[Any]], client_cls: type) -> None:
    """Make every public method of ``client_cls`` on ``future_cls`` wait for the client and forward to it.

    ``future_cls`` also subclasses ``client_cls`` (so ``isinstance(x, TrainingClient)`` holds) but never
    runs its ``__init__``: without these forwarders the client's methods would run on an empty object.
    """
    for name in dir(client_cls):
        if name.startswith("_") or name in vars(ClientFuture) or hasattr(Future, name):
            continue
        attr = getattr(client_cls, name)
        if callable(attr) and not isinstance(vars(client_cls).get(name), staticmethod):
            setattr(future_cls, name, _forwarder(name, attr.__doc__))
