"""Links into the hosted Tinker Console, built as the official SDK builds them (no request is made)."""

from __future__ import annotations

from urllib.parse import quote

__all__ = [
    "CONSOLE_URL",
    "checkpoint_console_url",
    "checkpoint_playground_url",
    "session_console_url",
    "training_run_console_url",
]

CONSOLE_URL = "https://tinker.thinkingmachines.ai"


def session_console_url(session_id: str) -> str:
    """The Console page of a session."""
    return f"{CONSOLE_URL}/sessions/{session_id}"


def training_run_console_url(training_run_id: str) -> str:
    """The Console page of a training run."""
    return f"{CONSOLE_URL}/training_runs/{training_run_id}"


def checkpoint_console_url(training_run_id: str, checkpoint_id: str) -> str:
    """The Console page of a checkpoint."""
    return f"{CONSOLE_URL}/checkpoints/{quote(training_run_id, safe='')}/{quote(checkpoint_id, safe='')}"


def checkpoint_playground_url(tinker_path: str) -> str:
    """The Console playground, set up to sample a sampler checkpoint."""
    return f"{CONSOLE_URL}/playground?mode=checkpoint&checkpoint={quote(tinker_path, safe='')}"
