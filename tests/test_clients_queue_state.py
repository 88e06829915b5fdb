"""SamplingClient.on_queue_state_change is called by the poller (0.38 semantics), over HTTP to a scripted server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.scripted_server import Reply, ScriptedServer
from tinker_sync import types
from tinker_sync._config import ClientConfig
from tinker_sync._runtime import Runtime
from tinker_sync.sampling_client import SamplingClient

T = 30.0
RETRIEVE = "/api/v1/retrieve_future"
RESULT = {"type": "sample", "sequences": [{"stop_reason": "length", "tokens": [5]}]}


class WatchingSampler(SamplingClient):
    """A user's subclass that records what the hook is told."""

    seen: list[tuple[str, str | None]]

    def on_queue_state_change(self, queue_state: object, queue_state_reason: str | None) -> None:
        self.seen.append((str(queue_state), queue_state_reason))


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        srv.default("/api/v1/asample", Reply(200, {"request_id": "r1"}))
        yield srv


def _sampler(server: ScriptedServer, cls: type[SamplingClient]) -> SamplingClient:
    runtime = Runtime(ClientConfig(base_url=server.url, api_key=f"tml-{uuid.uuid4().hex}"))
    return cls(None, sampling_session_id="s:sample:0", runtime=runtime)


def _sample(sampler: SamplingClient) -> types.SampleResponse:
    prompt = types.ModelInput.from_ints([1, 2])
    return sampler.sample(prompt, 1, types.SamplingParams(max_tokens=1)).result(T)


def test_try_again_queue_states_reach_the_override_then_active(server: ScriptedServer) -> None:
    server.script(
        RETRIEVE,
        Reply(200, {"type": "try_again", "request_id": "r1", "queue_state": "paused_capacity",
                    "queue_state_reason": "busy"}),
        Reply(200, {"type": "try_again", "request_id": "r1"}),  # no state: nothing to tell
        Reply(408, {"queue_state": "paused_rate_limit", "queue_state_reason": "too many samplers"}),
        Reply(200, RESULT),
    )
    sampler = _sampler(server, WatchingSampler)
    assert isinstance(sampler, WatchingSampler)
    sampler.seen = []
    try:
        assert _sample(sampler).sequences[0].tokens == [5]
    finally:
        sampler.close()
    assert sampler.seen == [("paused_capacity", "busy"), ("paused_rate_limit", "too many samplers"),
                            ("active", None)]
    assert len(server.requests_to(RETRIEVE)) == 4


def test_a_raising_override_does_not_stop_polling(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(SamplingClient):
        def on_queue_state_change(self, queue_state: object, queue_state_reason: str | None) -> None:
            raise RuntimeError("observer bug")

    server.script(RETRIEVE, Reply(200, {"type": "try_again", "request_id": "r1", "queue_state": "paused_capacity"}),
                  Reply(200, RESULT))
    sampler = _sampler(server, Broken)
    try:
        assert _sample(sampler).sequences[0].tokens == [5]
    finally:
        sampler.close()
    assert "on_queue_state_change of sampler s:sample:0 raised" in caplog.text


def test_the_default_hook_warns_once_for_a_pause(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    server.script(RETRIEVE,
                  *[Reply(200, {"type": "try_again", "request_id": "r1", "queue_state": "paused_capacity"})] * 2,
                  Reply(200, RESULT))
    sampler = _sampler(server, SamplingClient)
    try:
        with caplog.at_level("WARNING", logger="tinker_sync.sampling_client"):
            _sample(sampler)
    finally:
        sampler.close()
    warnings = [r for r in caplog.records if r.name == "tinker_sync.sampling_client"]
    assert len(warnings) == 1 and "Sampling is paused for sampler s:sample:0" in warnings[0].getMessage()
