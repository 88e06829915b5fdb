"""Endpoint logic of the local Tinker server (everything except HTTP framing), assembled by area.

Each handler takes a :class:`Call` and returns a JSON-able answer or raises :class:`HTTPError`; numpy and
the engine are imported lazily, on the first request that needs a model. The handlers live in modules
named after their area:

- ``_api_session``: client config, JWT exchange, sessions, heartbeats, telemetry;
- ``_api_training``: models, forward/backward, optimizer steps, checkpoints, copies;
- ``_api_sampling``: sampling sessions, asample, retrieve_future(s), cancel_future;
- ``_api_rest``: runs, checkpoints, signed downloads, session search, traces, billing, audit;
- ``_api_live`` (live models, sequenced submission, restart recovery) and ``_api_common`` (request
  parsing through ``tinker_sync._serde``, shared state) underneath.

Local choices: audit/billing events are empty; telemetry is accepted and dropped; ``retrieve_future``
ignores ``allow_metadata_only`` and always returns the payload.
"""

from __future__ import annotations

from typing import Any

from ._api_common import Answer, Call, HTTPError
from ._api_rest import RestApi
from ._api_sampling import SamplingApi
from ._api_session import SessionApi
from ._api_training import TrainingApi

__all__ = ["Answer", "Api", "Call", "HTTPError"]


class Api(TrainingApi, SamplingApi, RestApi, SessionApi):
    """All endpoint handlers plus the live state they share."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resume_journaled()  # last: every part of the state exists before journaled work is replayed

    def close(self) -> None:
        """Fail pending work and let running jobs finish persisting (bounded)."""
        self.stopped.set()
        with self.lock:
            models = list(self.models.values())
        for m in models:
            m.lane.close("the server is shutting down", fail_queued=False)  # journaled: resumes on restart
        for m in models:  # let a running job finish persisting, so a restarted server sees its final state
            m.lane.join(10.0)
        self.sample_pool.shutdown(wait=False, cancel_futures=True)
