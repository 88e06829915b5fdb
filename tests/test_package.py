"""Package hygiene: the public surface of ``tinker_sync`` matches what ported code expects."""

from __future__ import annotations

import subprocess
import sys

import tinker_sync

# Names a script written for the official SDK reaches through ``import tinker`` (clients, errors and
# the commonly used types); ``import tinker_sync as tinker`` must provide every one of them.
_OFFICIAL_TOP_LEVEL = [
    "APIConnectionError", "APIError", "APIResponseValidationError", "APIStatusError", "APITimeoutError",
    "AdamParams", "AuthenticationError", "BadRequestError", "BillingError", "Checkpoint", "CheckpointType",
    "ConflictError", "Datum", "DmelChunk", "EncodedTextChunk", "ForwardBackwardOutput", "InternalServerError",
    "LoraConfig", "ModelID", "ModelInput", "ModelInputChunk", "NotFoundError", "OptimStepRequest",
    "OptimStepResponse", "ParsedCheckpointTinkerPath", "PermissionDeniedError", "RateLimitError",
    "RequestFailedError", "SampleRequest", "SampleResponse", "SampledSequence", "SamplingClient",
    "SamplingParams", "ServiceClient", "StopReason", "TensorData", "TensorDtype", "TinkerError",
    "TrainingClient", "TrainingRun", "UnprocessableEntityError", "types",
]


def test_all_is_sorted_complete_and_importable() -> None:
    assert tinker_sync.__all__ == sorted(tinker_sync.__all__)
    assert all(hasattr(tinker_sync, name) for name in tinker_sync.__all__)


def test_official_top_level_names_are_there() -> None:
    missing = [name for name in _OFFICIAL_TOP_LEVEL if name not in tinker_sync.__all__]
    assert missing == []


def test_importing_the_client_loads_neither_numpy_nor_the_local_server() -> None:
    code = (
        "import sys, tinker_sync; "
        "print(sorted(m for m in ('numpy', 'tinker_sync.local', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_local_server_without_numpy_says_how_to_install_it() -> None:
    # sys.modules[name] = None makes the import machinery report the package as absent.
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from tinker_sync.local import LocalTinkerServer\n"
        "try:\n"
        "    LocalTinkerServer().start()\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'tinker_sync[local]'" in out.stdout
