"""Crash recovery over real HTTP: a sequenced call the server lost (404 on its poll) is re-sent with the same
seq_id and idempotency key; a lane that cannot progress fails fast with SequenceGapError, never hangs.

The scripted model runs each model's requests strictly in seq order, as the Tinker server does: a seq whose
predecessor never arrives is held (try_again) forever.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import BadRequestError, NotFoundError, TinkerError
from tinker_sync._executor import LanePoisonedError
from tinker_sync._poller import SequenceGapError
from tinker_sync._runtime import Runtime

RF = "/api/v1/retrieve_future"
OP = "/api/v1/forward_backward"
T = 15.0
KEY = "tml-poller-recovery-0123456789"


class OrderedModel:
    """Accepts (model, seq) requests and finishes them in seq order.

    ``lose``: seqs whose accepted request the server forgets at once (a restart): its polls answer 404
    and a re-POST of the seq is accepted again (``lose_always``: lost again every time).
    ``refuse_repost``: seqs whose re-POST is refused with 400.
    """

    def __init__(self, *, hold_s: float = 0.3) -> None:
        self.hold_s = hold_s
        self.cond = threading.Condition()
        self.lose: set[int] = set()
        self.lose_always: set[int] = set()
        self.refuse_repost: set[int] = set()
        self.posts: list[tuple[int, str | None]] = []  # (seq, idempotency key)
        self.rids: dict[str, int] = {}
        self.lost_rids: set[str] = set()
        self.done: set[int] = set()

    def post(self, rec: RecordedRequest) -> Reply:
        seq = int(rec.json()["seq"])
        with self.cond:
            repost = any(s == seq for s, _ in self.posts)
            self.posts.append((seq, rec.header("X-Idempotency-Key")))
            if repost and seq in self.refuse_repost:
                return Reply(400, {"detail": f"seq_id {seq} refused"})
            rid = f"m-{seq}-{len(self.posts)}"
            self.rids[rid] = seq
            if seq in self.lose_always or (seq in self.lose and not repost):
                self.lost_rids.add(rid)
            return Reply(200, {"request_id": rid})

    def _runnable(self, seq: int) -> bool:
        return all(s in self.done for s in range(seq))

    def retrieve(self, rec: RecordedRequest) -> Reply:
        rid = rec.json()["request_id"]
        with self.cond:
            if rid in self.lost_rids or rid not in self.rids:
                return Reply(404, {"detail": f"request {rid} not found"})
            seq = self.rids[rid]
            if not self.cond.wait_for(lambda: self._runnable(seq), self.hold_s):
                return Reply(200, {"type": "try_again", "request_id": rid, "queue_state": "active"})
            self.done.add(seq)
            self.cond.notify_all()
            return Reply(200, {"seq": seq})


@pytest.fixture
def model() -> Iterator[tuple[ScriptedServer, OrderedModel, Runtime]]:
    sim = OrderedModel()
    with ScriptedServer() as srv:
        srv.default(OP, sim.post)
        srv.default(RF, sim.retrieve)
        rt = Runtime(ClientConfig(base_url=srv.url, api_key=KEY))
        try:
            yield srv, sim, rt
        finally:
            rt.close(cancel_pending=True, timeout_s=5.0)


def _submit(rt: Runtime, lane: Any, seq: int) -> Future[Any]:
    return rt.submit_polled(OP, {"seq": seq}, None, request_type="ForwardBackward", lane=lane, label=f"fb seq_id={seq}")


def test_a_lost_call_is_resent_with_the_same_seq_and_key(model: tuple[ScriptedServer, OrderedModel, Runtime]) -> None:
    srv, sim, rt = model
    sim.lose = {2, 4}
    lane = rt.new_lane("model m")
    futs = [_submit(rt, lane, i) for i in range(6)]
    assert [f.result(timeout=T) for f in futs] == [{"seq": i} for i in range(6)]
    by_seq: dict[int, list[str | None]] = {}
    for seq, key in sim.posts:
        by_seq.setdefault(seq, []).append(key)
    assert {s: len(k) for s, k in by_seq.items()} == {0: 1, 1: 1, 2: 2, 3: 1, 4: 2, 5: 1}
    assert len(set(by_seq[2])) == 1 and len(set(by_seq[4])) == 1  # the same idempotency key
    bodies = [r.body for r in srv.requests_to(OP) if r.json()["seq"] == 2]
    assert bodies[0] == bodies[1]  # the same body: the same seq_id slot


def test_a_lost_call_that_cannot_be_resent_fails_the_rest_of_the_lane_fast(
    model: tuple[ScriptedServer, OrderedModel, Runtime],
) -> None:
    _, sim, rt = model
    sim.lose = {1}
    sim.refuse_repost = {1}
    lane = rt.new_lane("model m")
    futs = [_submit(rt, lane, i) for i in range(5)]
    assert futs[0].result(timeout=T) == {"seq": 0}
    with pytest.raises(BadRequestError, match="seq_id 1 refused"):
        futs[1].result(timeout=T)
    lost_rid = next(rid for rid, seq in sim.rids.items() if seq == 1)
    for f in futs[2:]:  # the server would hold these forever: they fail at once instead
        with pytest.raises(SequenceGapError) as info:
            f.result(timeout=T)
        assert isinstance(info.value, TinkerError) and lost_rid in str(info.value)
        assert isinstance(info.value.__cause__, BadRequestError)
    later = _submit(rt, lane, 5)  # the lane is poisoned: nothing more is sent for this model
    with pytest.raises(LanePoisonedError):
        later.result(timeout=T)
    assert not any(seq == 5 for seq, _ in sim.posts)


def test_a_call_lost_on_every_resend_gives_up(model: tuple[ScriptedServer, OrderedModel, Runtime]) -> None:
    _, sim, rt = model
    sim.lose_always = {0}
    lane = rt.new_lane("model m")
    futs = [_submit(rt, lane, i) for i in range(3)]
    with pytest.raises(NotFoundError):
        futs[0].result(timeout=T)
    for f in futs[1:]:
        with pytest.raises(SequenceGapError, match="fb seq_id=0|ForwardBackward"):
            f.result(timeout=T)
    assert sum(1 for seq, _ in sim.posts if seq == 0) == 4  # the first POST and 3 re-sends


def test_an_unsequenced_call_is_not_resent_after_a_404(model: tuple[ScriptedServer, OrderedModel, Runtime]) -> None:
    _, sim, rt = model
    sim.lose = {7}
    fut = rt.submit_polled(OP, {"seq": 7}, None, request_type="Sample")
    with pytest.raises(NotFoundError):
        fut.result(timeout=T)
    assert [seq for seq, _ in sim.posts] == [7]
