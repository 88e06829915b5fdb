"""ClientConfig: where to connect, with which credential, and the timeouts / pool / retry knobs.

``ClientConfig.from_env()`` applies the official SDK's rules (docs/protocol.rst §1.1-1.2). The API key (and the
default header values) are never part of a repr, a log line, an error message or a pickle.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs

from ._exceptions import TinkerError, register_secret, unregister_secret
from ._retry import RetryPolicy

__all__ = ["WIRE_SDK_VERSION", "ClientConfig", "InvalidConfigError", "redact_url"]

logger = logging.getLogger(__name__)

_DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
WIRE_SDK_VERSION = "0.25.0"  # the official SDK wire level we speak (sent as sdk_version)

_KEY_PREFIXES = ("tml-", "eyJ")


class InvalidConfigError(TinkerError, ValueError):
    """The client configuration (API key, base URL, a knob) is unusable; the message says what to fix."""


def redact_url(url: str) -> str:
    """``url`` without a ``user:password@`` part (for reprs and messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="<redacted>@" + parts.netloc.rpartition("@")[2]))


def _split_userinfo(url: str) -> tuple[str, str]:
    """(``url`` without its ``user:password@`` part, that part without the ``@``)."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    if not userinfo:
        return url, ""
    return urlunsplit(parts._replace(netloc=host)), userinfo


def _with_userinfo(url: str, userinfo: str) -> str:
    if not userinfo:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def _check_ca_bundle(_inst: Any, _attr: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not os.path.isfile(value):
        raise InvalidConfigError(
            f"ClientConfig.ca_bundle must be the path of a PEM file of CA certificates; {value!r} is not a file"
        )


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
    headers = dict(value or {})
    for name, val in headers.items():
        if not isinstance(name, str) or not isinstance(val, str):
            raise InvalidConfigError(
                f"default_headers must map str to str; header {name!r} has a {type(val).__name__} value"
            )
        # requests would refuse these later with an error quoting the value (often a secret)
        if val != val.strip() or any(c in val for c in "\r\n\0"):
            raise InvalidConfigError(
                f"default header {name!r} has leading/trailing whitespace, a line break or NUL in its value; "
                "check the environment variable it came from"
            )
    return MappingProxyType(headers)


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise InvalidConfigError(f"ClientConfig.{attr.name} must be > 0, got {value!r}")


@attrs.frozen
class ClientConfig:
    """Connection settings shared by every client of one ServiceClient.

    ``max_workers`` bounds the threads that submit requests, ``max_pollers`` the threads that
    long-poll results, ``max_sample_dispatchers`` the threads that send samples; the HTTP pool holds
    ``max_workers + max_sample_dispatchers + max_pollers + 2`` connections.
    """

    base_url: str = attrs.field(converter=_normalize_base_url, repr=lambda url: repr(redact_url(url)))
    api_key: str = attrs.field(repr=False, converter=_check_api_key)
    connect_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    read_timeout_s: float = attrs.field(default=60.0, validator=_positive)
    poll_timeout_s: float = attrs.field(default=45.0, validator=_positive)
    max_workers: int = attrs.field(default=16, validator=_positive)
    # Poll threads start on demand (one per call awaiting a poll) and retire when idle; a bound below
    # the number of pending calls delays finished results behind long polls (head-of-line blocking).
    max_pollers: int = attrs.field(default=64, validator=_positive)
    # Threads that dispatch samples (POST asample; the result is then polled like any other). Their
    # own pool, so training lanes in a retry pause cannot starve sampling; also the bound on
    # concurrent sample dispatches (at most 400, the official SDK's; 10 while a 429 is recent).
    max_sample_dispatchers: int = attrs.field(default=16, validator=_positive)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    rate_limit_max_wait_s: float = attrs.field(default=300.0, validator=_positive)
    # Sent on every request; may hold secrets (Cloudflare Access), so it is never logged or repr'd.
    default_headers: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_headers, repr=False)
    sdk_version: str = WIRE_SDK_VERSION
    # 402 on a poll: pause billing_pause_s between polls for at most billing_max_pause_s (docs/protocol.rst §3.4).
    billing_pause_s: float = 5.0
    billing_max_pause_s: float = 3600.0
    # PEM file of the CAs to trust for https:// (None: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE, certifi).
    ca_bundle: str | None = attrs.field(default=None, validator=_check_ca_bundle)
    # Keeps this config's entry in the in-process credential registry alive (see _remember_credentials).
    _credential: Any = attrs.field(init=False, default=None, repr=False, eq=False)

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
        if cf_id and cf_id.strip():
            headers.setdefault("CF-Access-Client-Id", cf_id.strip())
        if cf_secret and cf_secret.strip():
            headers.setdefault("CF-Access-Client-Secret", cf_secret.strip())
        return cls(base_url=url, api_key=key, default_headers=headers, **overrides)

    @property
    def rate_limit_key(self) -> tuple[str, str]:
        """``(base_url, sha256(api_key))``; clients sharing it share one rate-limit window."""
        return (self.base_url, hashlib.sha256(self.api_key.encode("utf-8")).hexdigest())

    def __attrs_post_init__(self) -> None:
        userinfo = _split_userinfo(self.base_url)[1]
        object.__setattr__(self, "_credential", _remember_credentials(self.api_key, self.default_headers, userinfo))
        _warn_if_cleartext(self.base_url)

    # Pickling: the pickle carries no secret. It keeps a fingerprint of the key, the default headers
    # and the base URL's user:password, the NAMES of the headers and the URL without its user part;
    # unpickling takes the values from a ClientConfig already built in this process (including the
    # parent of a fork()ed worker) or, failing that, from TINKER_API_KEY, TINKER_BASE_URL and the
    # CLOUDFLARE_ACCESS_* variables (inherited by spawn()ed workers), if they match the fingerprint.
    def __getstate__(self) -> dict[str, Any]:
        state = {a.name: getattr(self, a.name) for a in attrs.fields(type(self)) if a.name != "_credential"}
        del state["api_key"]
        state["base_url"], userinfo = _split_userinfo(self.base_url)
        state["default_headers"] = sorted(self.default_headers)
        state["_credential_fingerprint"] = _fingerprint(self.api_key, self.default_headers, userinfo)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        fingerprint = state.pop("_credential_fingerprint", None)
        if fingerprint is None:  # a pickle of an older version that carried the secrets itself
            api_key, headers = state.pop("api_key"), dict(state.pop("default_headers"))
            userinfo = ""
        else:
            api_key, headers, userinfo = _recall_credentials(fingerprint, list(state.pop("default_headers")))
        state["base_url"] = _with_userinfo(state["base_url"], userinfo)
        state.setdefault("ca_bundle", None)
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "api_key", _check_api_key(api_key))
        object.__setattr__(self, "default_headers", _freeze_headers(headers))
        userinfo = _split_userinfo(self.base_url)[1]
        object.__setattr__(self, "_credential", _remember_credentials(self.api_key, self.default_headers, userinfo))


_CF_ENV = {
    "CF-Access-Client-Id": "CLOUDFLARE_ACCESS_CLIENT_ID",
    "CF-Access-Client-Secret": "CLOUDFLARE_ACCESS_CLIENT_SECRET",
}
_credentials_lock = threading.Lock()


class _Credential:
    """An API key, default headers and URL user:password, held (strongly) by every live ClientConfig
    that uses them. While one lives, its secret values are redacted from every error message."""

    __slots__ = ("__weakref__", "api_key", "headers", "userinfo")

    def __init__(self, api_key: str, headers: Mapping[str, str], userinfo: str) -> None:
        self.api_key = api_key
        self.headers = dict(headers)
        self.userinfo = userinfo


# fingerprint -> credential, for unpickling in this process (or a fork()ed child). Weak: an entry
# lives exactly as long as some ClientConfig with that key does, so keys are not kept forever.
_credentials: weakref.WeakValueDictionary[str, _Credential] = weakref.WeakValueDictionary()


def _fingerprint(api_key: str, headers: Mapping[str, str], userinfo: str = "") -> str:
    h = hashlib.sha256(b"tinker-sync-credentials\0" + api_key.encode("utf-8"))
    for name in sorted(headers):
        h.update(b"\0" + name.encode("utf-8") + b"\0" + headers[name].encode("utf-8"))
    if userinfo:
        h.update(b"\0@" + userinfo.encode("utf-8"))
    return h.hexdigest()


def _secret_values(api_key: str, headers: Mapping[str, str], userinfo: str) -> list[str]:
    """Every form in which these credentials could show up in a text: the values, and the URL user part
    raw, decoded, its password alone and as the Basic authorization token made from it."""
    values = [api_key, *headers.values()]
    if userinfo:
        plain = unquote(userinfo)
        values += [userinfo, plain, userinfo.partition(":")[2], plain.partition(":")[2]]
        values.append(base64.b64encode(plain.encode("latin-1", "replace")).decode("ascii"))
    return [v for v in values if v]


def _remember_credentials(api_key: str, headers: Mapping[str, str], userinfo: str = "") -> _Credential:
    fingerprint = _fingerprint(api_key, headers, userinfo)
    with _credentials_lock:
        cred = _credentials.get(fingerprint)
        if cred is None:
            cred = _Credential(api_key, headers, userinfo)
            _credentials[fingerprint] = cred
            secrets = _secret_values(api_key, headers, userinfo)
            for value in secrets:
                register_secret(value)
            weakref.finalize(cred, _forget_secrets, secrets)
        return cred


def _forget_secrets(secrets: list[str]) -> None:
    for value in secrets:
        unregister_secret(value)


_warned_cleartext: set[str] = set()


def _warn_if_cleartext(base_url: str) -> None:
    """WARN (once per base URL) when the API key would cross the network unencrypted."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or _is_loopback(parts.hostname or ""):
        return
    with _credentials_lock:
        if base_url in _warned_cleartext:
            return
        _warned_cleartext.add(base_url)
    logger.warning(
        "base_url %s uses plain http:// to a non-loopback host: the API key is sent unencrypted on every "
        "request; use https:// unless this network is trusted",
        redact_url(base_url),
    )


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _recall_credentials(fingerprint: str, header_names: list[str]) -> tuple[str, dict[str, str], str]:
    with _credentials_lock:
        known = _credentials.get(fingerprint)
    if known is not None:
        return known.api_key, dict(known.headers), known.userinfo
    key = (os.environ.get("TINKER_API_KEY") or "").strip()
    headers = {name: (os.environ.get(_CF_ENV.get(name, "")) or "").strip() for name in header_names}
    for userinfo in {"", _split_userinfo((os.environ.get("TINKER_BASE_URL") or "").strip())[1]}:
        if key and _fingerprint(key, headers, userinfo) == fingerprint:
            return key, headers, userinfo
    raise InvalidConfigError(
        "this pickled client carries no API key (by design) and none known in this process matches it: set "
        "TINKER_API_KEY (and CLOUDFLARE_ACCESS_CLIENT_ID/SECRET, and TINKER_BASE_URL if it holds a user:password, "
        "if used) to the same values as in the process that pickled it, or build a ClientConfig/ServiceClient with "
        "that key in this process first (e.g. in a multiprocessing Pool initializer)"
    )
