"""ClientConfig: where to connect, with which credential, and the timeouts / pool / retry knobs.

``ClientConfig.from_env()`` applies the official SDK's rules (PROTOCOL §1.1-1.2). The API key is never
part of a repr, a log line or an error message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._exceptions import TinkerError
from ._retry import RetryPolicy

__all__ = ["WIRE_SDK_VERSION", "ClientConfig", "InvalidConfigError"]

_DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
WIRE_SDK_VERSION = "0.25.0"  # the official SDK wire level we speak (sent as sdk_version)

_KEY_PREFIXES = ("tml-", "eyJ")


class InvalidConfigError(TinkerError, ValueError):
    """The client configuration (API key, base URL, a knob) is unusable; the message says what to fix."""


def _normalize_base_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidConfigError(
            f"base_url must be an absolute http(s) URL such as 'http://127.0.0.1:8000' or "
            f"'https://host/prefix', got {url!r}"
        )
    if parts.query or parts.fragment:
        raise InvalidConfigError(f"base_url must not carry a query string or fragment, got {url!r}")
    # Request paths ("/api/v1/...") are appended to the base *path*, so keep any prefix and drop the
    # trailing slash once here.
    return url.rstrip("/")


def _check_api_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidConfigError(
            "No Tinker API key: pass api_key=... or set the TINKER_API_KEY environment variable"
        )
    key_text: str = str(key).strip()
    if not key_text.startswith(_KEY_PREFIXES):
        # never echo the key itself, not even a prefix of it
        raise InvalidConfigError(
            "The api_key must start with the 'tml-' prefix (or be a JWT starting with 'eyJ'); "
            "check TINKER_API_KEY or the api_key argument"
        )
    if any(c in key_text for c in "\r\n\0"):
        raise InvalidConfigError("The api_key contains a line break or NUL character; check how it was pasted")
    return key_text


def _freeze_headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise InvalidConfigError(f"ClientConfig.{attr.name} must be > 0, got {value!r}")


@attrs.frozen
class ClientConfig:
    """Connection settings shared by every client of one ServiceClient.

    ``max_workers`` bounds the threads that submit requests, ``max_pollers`` the threads that
    long-poll results; the HTTP pool holds ``max_workers + max_pollers + 2`` connections.
    """

    base_url: str = attrs.field(converter=_normalize_base_url)
    api_key: str = attrs.field(repr=False, converter=_check_api_key)
    connect_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    read_timeout_s: float = attrs.field(default=60.0, validator=_positive)
    poll_timeout_s: float = attrs.field(default=45.0, validator=_positive)
    max_workers: int = attrs.field(default=16, validator=_positive)
    max_pollers: int = attrs.field(default=16, validator=_positive)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    rate_limit_max_wait_s: float = attrs.field(default=300.0, validator=_positive)
    # Sent on every request; may hold secrets (Cloudflare Access), so it is never logged or repr'd.
    default_headers: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_headers, repr=False)
    sdk_version: str = WIRE_SDK_VERSION
    # 402 on a poll: pause billing_pause_s between polls for at most billing_max_pause_s (PROTOCOL §3.4).
    billing_pause_s: float = 5.0
    billing_max_pause_s: float = 3600.0

    @classmethod
    def from_env(cls, *, api_key: str | None = None, base_url: str | None = None, **overrides: Any) -> ClientConfig:
        """Build a config from arguments, falling back to TINKER_API_KEY / TINKER_BASE_URL.

        Raises:
            InvalidConfigError: no key, a key without the ``tml-``/``eyJ`` prefix, or a bad base URL.
        """
        key = api_key if api_key is not None else os.environ.get("TINKER_API_KEY")
        url = base_url or os.environ.get("TINKER_BASE_URL") or _DEFAULT_BASE_URL  # empty = unset
        headers = dict(overrides.pop("default_headers", None) or {})
        cf_id = os.environ.get("CLOUDFLARE_ACCESS_CLIENT_ID")
        cf_secret = os.environ.get("CLOUDFLARE_ACCESS_CLIENT_SECRET")
        if cf_id:
            headers.setdefault("CF-Access-Client-Id", cf_id)
        if cf_secret:
            headers.setdefault("CF-Access-Client-Secret", cf_secret)
        return cls(base_url=url, api_key=key, default_headers=headers, **overrides)

    @property
    def rate_limit_key(self) -> tuple[str, str]:
        """(base_url, sha256(api_key)): clients sharing it share one rate-limit window."""
        return (self.base_url, hashlib.sha256(self.api_key.encode("utf-8")).hexdigest())

    def __getstate__(self) -> dict[str, Any]:
        state = {a.name: getattr(self, a.name) for a in attrs.fields(type(self))}
        state["default_headers"] = dict(self.default_headers)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            if name == "default_headers":
                value = _freeze_headers(value)
            object.__setattr__(self, name, value)
