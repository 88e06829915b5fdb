"""tinker_sync: a synchronous, thread-based client for the Tinker fine-tuning API."""

from __future__ import annotations

import logging

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ClientClosedError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestFailedError,
    TinkerError,
    UnprocessableEntityError,
)
from ._version import __version__
from . import types
from .rest_client import RestClient
from .sampling_client import SamplingClient
from .service_client import ServiceClient
from .tokenizer import Tokenizer
from .training_client import TrainingClient

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
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
    "RestClient",
    "SamplingClient",
    "ServiceClient",
    "TinkerError",
    "Tokenizer",
    "TrainingClient",
    "UnprocessableEntityError",
    "__version__",
    "types",
]
