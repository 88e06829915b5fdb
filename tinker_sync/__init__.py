"""tinker_sync: a synchronous, thread-based client for the Tinker fine-tuning API."""

from __future__ import annotations

import logging

from . import types
from ._chat_template import ChatTemplateError
from ._config import ClientConfig, InvalidConfigError
from ._custom_loss import LossHandle
from ._download import ArchiveRefusedError, DownloadError, download_signed_url, safe_extract, tqdm_progress
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
from ._executor import LanePoisonedError
from ._retry import RetryPolicy
from ._version import __version__
from .rest_client import RestClient, TraceExportError, TraceExportTimeoutError, WhoamiUnavailableError
from .sampling_client import SamplingClient, SamplingClientFuture
from .service_client import ServiceClient
from .tokenizer import Tokenizer, TokenizerLoadError
from .training_client import TrainingClient, TrainingClientFuture

# The commonly used wire types, at the top level like the official SDK's (``tinker.ModelInput``...).
from .types import (
    AdamOptimizerConfig,
    AdamParams,
    Checkpoint,
    CheckpointType,
    Datum,
    DimuonOptimizerConfig,
    DimuonParams,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    LoraConfig,
    ModelID,
    ModelInput,
    ModelInputChunk,
    OptimParams,
    OptimStepRequest,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    StopReason,
    TensorData,
    TensorDtype,
    TrainingRun,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdamOptimizerConfig",
    "AdamParams",
    "ArchiveRefusedError",
    "AuthenticationError",
    "BadRequestError",
    "BillingError",
    "ChatTemplateError",
    "Checkpoint",
    "CheckpointType",
    "ClientClosedError",
    "ClientConfig",
    "ConflictError",
    "Datum",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "DmelChunk",
    "DownloadError",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "ImageChunk",
    "InternalServerError",
    "InvalidConfigError",
    "LanePoisonedError",
    "LoraConfig",
    "LossHandle",
    "ModelID",
    "ModelInput",
    "ModelInputChunk",
    "NotFoundError",
    "OptimParams",
    "OptimStepRequest",
    "OptimStepResponse",
    "ParsedCheckpointTinkerPath",
    "PermissionDeniedError",
    "PromptProvenanceSpan",
    "RateLimitError",
    "RequestFailedError",
    "RestClient",
    "RetryPolicy",
    "SampleRequest",
    "SampleResponse",
    "SampledProvenanceSpan",
    "SampledSequence",
    "SamplingClient",
    "SamplingClientFuture",
    "SamplingParams",
    "ServiceClient",
    "StopReason",
    "TensorData",
    "TensorDtype",
    "TinkerError",
    "Tokenizer",
    "TokenizerLoadError",
    "TraceExportError",
    "TraceExportTimeoutError",
    "TrainingClient",
    "TrainingClientFuture",
    "TrainingRun",
    "UnprocessableEntityError",
    "WhoamiUnavailableError",
    "__version__",
    "download_signed_url",
    "safe_extract",
    "tqdm_progress",
    "types",
]
