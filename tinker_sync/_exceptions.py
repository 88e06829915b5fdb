"""The exception hierarchy of tinker_sync (names follow the official Tinker SDK).

::

    TinkerError
    ├── APIError
    │   ├── APIConnectionError (.request_sent)
    │   │   ├── APITimeoutError
    │   │   └── APICertificateError (the server's TLS certificate was refused; never retried)
    │   ├── APIStatusError (.status_code, .body, .request_id)
    │   │   ├── BadRequestError           400
    │   │   ├── AuthenticationError       401
    │   │   ├── BillingError              402
    │   │   ├── PermissionDeniedError     403
    │   │   ├── NotFoundError             404
    │   │   ├── ConflictError             409
    │   │   ├── UnprocessableEntityError  422
    │   │   ├── RateLimitError            429 (raised only once the rate-limit wait budget is spent)
    │   │   └── InternalServerError       5xx
    │   └── APIResponseValidationError (a 2xx body that does not fit the expected type)
    ├── RequestFailedError (a server-side future failed; .category is "user", "server" or "unknown")
    └── ClientClosedError (the client was closed while the call was pending)

Every error pickles, and none of them ever carries a secret: messages are built from the status, the
request id and a truncated body, and every known secret (``register_secret``: the API key, secret
header values, URL passwords, weights access tokens) is redacted from the message, body and headers
when the error is built, even when a server or proxy echoes the request's headers back.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APICertificateError",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BillingError",
    "ClientClosedError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestFailedError",
    "TinkerError",
    "UnprocessableEntityError",
    "from_response",
    "parse_error_body",
    "redact",
    "register_secret",
    "unregister_secret",
]

_MAX_BODY_CHARS = 500
_MIN_SECRET_CHARS = 4  # shorter values would redact ordinary words
_REDACTED = "<redacted>"

_secrets_lock = threading.Lock()
_secret_counts: collections.Counter[str] = collections.Counter()
_secrets_longest_first: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every error built from now on (until as many ``unregister_secret`` calls)."""
    global _secrets_longest_first
    if not value or len(value) < _MIN_SECRET_CHARS:
        return
    with _secrets_lock:
        _secret_counts[value] += 1
        _secrets_longest_first = tuple(sorted(_secret_counts, key=len, reverse=True))


def unregister_secret(value: str | None) -> None:
    """Undo one ``register_secret(value)``."""
    global _secrets_longest_first
    if not value or len(value) < _MIN_SECRET_CHARS:
        return
    with _secrets_lock:
        _secret_counts[value] -= 1
        if _secret_counts[value] <= 0:
            del _secret_counts[value]
        _secrets_longest_first = tuple(sorted(_secret_counts, key=len, reverse=True))


def redact(value: Any) -> Any:
    """``value`` (str, bytes, or JSON-like containers of them) with every registered secret replaced."""
    secrets = _secrets_longest_first
    if not secrets:
        return value
    return _redact(value, secrets)


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, _REDACTED)
        return value
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace")
        clean = _redact(text, secrets)
        return bytes(value) if clean == text else clean.encode("utf-8")
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, secrets) for v in value)
    return value


def parse_error_body(content: bytes) -> Any:
    """An error response's body: parsed JSON, else the text (None when empty)."""
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def _short(body: Any) -> str:
    """Render a response body for an error message, truncated so a huge body cannot flood logs."""
    if body is None:
        return ""
    if isinstance(body, (bytes, bytearray)):
        text = bytes(body[: _MAX_BODY_CHARS + 1]).decode("utf-8", "replace")
    elif isinstance(body, str):
        text = body
    else:
        try:
            text = json.dumps(body, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = repr(body)
    if len(text) > _MAX_BODY_CHARS:
        text = text[:_MAX_BODY_CHARS] + "...(truncated)"
    return text


class TinkerError(Exception):
    """Base class of every error raised by tinker_sync."""


class APIError(TinkerError):
    """An error talking to the Tinker API."""

    def __init__(self, message: str, *, body: Any = None) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.body = redact(body)

    def __reduce__(self) -> Any:  # keep keyword-only constructors picklable
        return (_rebuild, (type(self), self.__dict__.copy(), self.args))


def _rebuild(cls: type[BaseException], state: dict[str, Any], args: tuple[Any, ...]) -> BaseException:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class APIConnectionError(APIError):
    """The request never got an HTTP response (DNS, refused, reset, TLS...).

    ``request_sent`` tells whether any byte of the request may have reached the server; when it is
    False the request is certainly safe to repeat.
    """

    def __init__(self, message: str = "Connection error.", *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError):
    """The server did not answer within the read (or connect) timeout."""

    def __init__(self, message: str = "Request timed out.", *, request_sent: bool = True) -> None:
        super().__init__(message, request_sent=request_sent)


class APICertificateError(APIConnectionError):
    """The server's TLS certificate was not accepted (unknown CA, wrong host name, expired): never retried.

    The message names the settings that choose the trusted CAs: ``ClientConfig.ca_bundle`` and the
    ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` environment variables.
    """

    def __init__(self, message: str = "TLS certificate verification failed.") -> None:
        super().__init__(message, request_sent=False)


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, body=body)
        self.status_code = status_code
        self.request_id = request_id
        self.headers = redact(dict(headers or {}))


class BadRequestError(APIStatusError):
    """HTTP 400: the server refused the request as malformed."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key was missing, malformed or not accepted."""


class BillingError(APIStatusError):
    """HTTP 402: billing blocks the request (and the pause window, if any, has run out)."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key may not touch this resource."""


class NotFoundError(APIStatusError):
    """HTTP 404: no such resource (or it belongs to another account and is private)."""


class ConflictError(APIStatusError):
    """HTTP 409: the resource is not in a state that allows the request."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the body was well-formed but its values were refused."""


class RateLimitError(APIStatusError):
    """HTTP 429, raised only after the shared rate-limit window outlasted the wait budget."""


class InternalServerError(APIStatusError):
    """HTTP 5xx, raised once the retry policy gave up."""


class APIResponseValidationError(APIError):
    """A successful response whose body does not fit the expected type (the raw body is kept)."""

    def __init__(self, message: str, *, body: Any = None, expected_type: str | None = None) -> None:
        super().__init__(message, body=body)
        self.expected_type = expected_type


class RequestFailedError(TinkerError):
    """A long-running request finished with an error on the server.

    ``category`` is ``"user"`` when the request itself was at fault (fix the input and retry),
    ``"server"`` for a server-side failure, ``"unknown"`` otherwise.
    """

    def __init__(self, message: str, *, request_id: str | None = None, category: str = "unknown") -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.category = category if category in ("user", "server", "unknown") else "unknown"

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request_id={self.request_id}, category={self.category})"
        return f"{self.message} (category={self.category})"

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.__dict__.copy(), self.args))


class ClientClosedError(TinkerError):
    """The client was closed before this call could finish."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def from_response(
    status_code: int,
    body: Any,
    *,
    method: str = "",
    path: str = "",
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> APIStatusError:
    """Build the APIStatusError subclass for an HTTP error status.

    The message reads ``Error code: <status> - <body>`` like the official SDK's, prefixed with the
    method and path when known, and never includes a registered secret, even one the body echoes.
    """
    body = redact(body)  # before truncating: a cut could leave a prefix of a secret behind
    cls = _STATUS_CLASSES.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    where = f"{method} {path}: ".lstrip() if (method or path) else ""
    message = f"{where}Error code: {status_code} - {_short(body)}".rstrip(" -")
    if request_id:
        message += f" (request_id={request_id})"
    return cls(message, status_code=status_code, body=body, request_id=request_id, headers=headers)
