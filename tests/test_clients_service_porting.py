"""Official-SDK signatures on ServiceClient / RestClient (M4), over real HTTP.

tests/scripted_server.py where the exact wire matters (headers, bodies), LocalTinkerServer for flows.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TEST_API_KEY
from tests.scripted_server import RecordedRequest, Reply, ScriptedServer, answer_session
from tinker_sync import ServiceClient, types
from tinker_sync._exceptions import NotFoundError
from tinker_sync._retry import RetryPolicy

MODEL = "tinker-sync/tiny-byte"
RF = "/api/v1/retrieve_future"
T = 30


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield answer_session(srv)


def _key() -> str:
    return f"tml-{uuid.uuid4().hex}"


# ---- constructor ----------------------------------------------------------------------------
def test_unknown_constructor_kwargs_are_named() -> None:
    with pytest.raises(TypeError, match="bogus_knob, display_nam"):
        ServiceClient(api_key=_key(), base_url="http://127.0.0.1:1", bogus_knob=1, display_nam="x")


def test_official_constructor_kwargs_map_onto_the_config(server: ScriptedServer) -> None:
    sc = ServiceClient(
        {"team": "a"}, "p1", api_key=_key(), base_url=server.url, display_name="run 7",
        timeout=12.5, max_retries=3, default_headers={"X-A": "1"}, default_headers_overrides={"X-B": "2"},
    )
    try:
        cfg = sc.config
        assert cfg.read_timeout_s == 12.5 and cfg.connect_timeout_s == 5.0
        assert cfg.retry.max_attempts == 4
        assert dict(cfg.default_headers) == {"X-A": "1", "X-B": "2"}
        sc.session_id  # noqa: B018 - creates the session
    finally:
        sc.close()
    (create,) = server.requests_to("/api/v1/create_session")
    body = create.json()
    assert body["user_metadata"] == {"team": "a"} and body["project_id"] == "p1" and body["display_name"] == "run 7"
    assert create.header("X-B") == "2"


def test_httpx_like_timeout_object() -> None:
    class Timeout:
        read = 33.0
        connect = 2.0

    sc = ServiceClient(api_key=_key(), base_url="http://127.0.0.1:1", timeout=Timeout())
    try:
        assert (sc.config.read_timeout_s, sc.config.connect_timeout_s) == (33.0, 2.0)
    finally:
        sc.close()


def test_positional_api_key_gets_a_porting_hint() -> None:
    with pytest.raises(TypeError, match=r"first positional parameter is user_metadata.*ServiceClient\(api_key=...\)"):
        ServiceClient(_key())  # type: ignore[arg-type]


# ---- create_sampling_client -------------------------------------------------------------------
def test_create_sampling_client_with_both_model_path_and_base_model(server: ScriptedServer) -> None:
    server.default("/api/v1/create_sampling_session", Reply(200, {"sampling_session_id": "s1:sample:0"}))
    with ServiceClient(api_key=_key(), base_url=server.url) as sc:
        sampler = sc.create_sampling_client(
            model_path="tinker://run:train:0/sampler_weights/x", base_model="base/m", retry_config=None
        )
        assert sampler.sampling_session_id == "s1:sample:0"
    (req,) = server.requests_to("/api/v1/create_sampling_session")
    body = req.json()
    assert body["model_path"] == "tinker://run:train:0/sampler_weights/x" and body["base_model"] == "base/m"


def test_create_sampling_client_still_needs_one_of_them(server: ScriptedServer) -> None:
    with ServiceClient(api_key=_key(), base_url=server.url) as sc, pytest.raises(ValueError, match="model_path"):
        sc.create_sampling_client()


# ---- create_training_client_from_state(..., weights_access_token) -----------------------------
def _script_from_state(server: ScriptedServer, path: str, **info: Any) -> None:
    """weights_info answers ``info`` (a LoRA rank-8 checkpoint of base/m); create_model and load_weights succeed."""
    server.default(
        "/api/v1/weights_info", Reply(200, {"base_model": "base/m", "is_lora": True, "lora_rank": 8, **info})
    )
    server.default("/api/v1/create_model", Reply(200, {"request_id": "create"}))
    server.default("/api/v1/load_weights", Reply(200, {"request_id": "load"}))

    def poll(rec: RecordedRequest) -> Reply:
        if rec.json()["request_id"] == "create":
            return Reply(200, {"model_id": "s1:train:0"})
        return Reply(200, {"path": path, "type": "load_weights"})

    server.default(RF, poll)


def test_from_state_sends_the_weights_access_token(server: ScriptedServer) -> None:
    token = "tml-foreign-account-token-42"
    path = "tinker://other:train:0/weights/ckpt"
    _script_from_state(server, path)
    main_key = _key()
    with ServiceClient(api_key=main_key, base_url=server.url, retry=RetryPolicy(max_attempts=1)) as sc:
        tc = sc.create_training_client_from_state_with_optimizer(path, None, {"k": "v"}, weights_access_token=token)
        assert tc.model_id == "s1:train:0"
    (info,) = server.requests_to("/api/v1/weights_info")
    assert info.header("X-API-Key") == token  # the lookup runs as the checkpoint's account
    (create,) = server.requests_to("/api/v1/create_model")
    assert create.header("X-API-Key") == main_key and create.json()["user_metadata"] == {"k": "v"}
    (load,) = server.requests_to("/api/v1/load_weights")
    assert load.json()["weights_access_token"] == token and load.json()["optimizer"] is True
    assert load.header("X-API-Key") == main_key


@pytest.mark.parametrize(("with_optimizer", "given", "expected"), [
    (True, None, {"type": "dimuon", "version": 1}),  # restoring the state needs the checkpoint's family
    (False, None, None),  # weights only: the default (Adam), left off the wire
    (False, types.DimuonOptimizerConfig(), {"type": "dimuon", "version": 1}),
])
def test_from_state_chooses_the_optimizer_family(
    server: ScriptedServer, with_optimizer: bool, given: Any, expected: Any
) -> None:
    path = "tinker://r:train:0/weights/ckpt"
    _script_from_state(server, path, optimizer_config={"type": "dimuon", "version": 1})
    with ServiceClient(api_key=_key(), base_url=server.url, retry=RetryPolicy(max_attempts=1)) as sc:
        if with_optimizer:
            tc = sc.create_training_client_from_state_with_optimizer(path).result(T)
        else:
            tc = sc.create_training_client_from_state(path, optimizer=given).result(T)
        assert tc.model_id == "s1:train:0"
    (create,) = server.requests_to("/api/v1/create_model")
    assert create.json().get("optimizer_config") == expected
    assert create.json()["lora_config"]["rank"] == 8


def test_from_state_refuses_metadata_in_the_base_model_slot(server: ScriptedServer) -> None:
    with ServiceClient(api_key=_key(), base_url=server.url) as sc, pytest.raises(ValueError, match="base_model"):
        sc.create_training_client_from_state("tinker://r/weights/x", {"k": "v"})  # type: ignore[arg-type]


def test_from_state_with_a_token_against_the_local_server(local_server: Any) -> None:
    # account A saves a checkpoint; account B restores it with A's credential as the access token
    with ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url) as owner:
        path = owner.create_lora_training_client(MODEL, rank=4).save_state("ckpt").result(T).path
    with ServiceClient(api_key="tml-other-account-key-01234", base_url=local_server.url) as other:
        restored = other.create_training_client_from_state(path, weights_access_token=TEST_API_KEY)
        assert restored.model_id.startswith(other.session_id)
    loads = [r for r in local_server.requests if r.path == "/api/v1/load_weights"]
    assert json.loads(loads[-1].body)["weights_access_token"] == TEST_API_KEY
    # without the token the other account cannot see the private checkpoint
    with ServiceClient(api_key="tml-other-account-key-01234", base_url=local_server.url) as other, \
            pytest.raises(NotFoundError):
        other.create_training_client_from_state(path).result(T)


# ---- RestClient ---------------------------------------------------------------------------------
def _jwt(claims: dict[str, Any]) -> str:
    def b64(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'none'})}.{b64(claims)}.sig"


def test_whoami_decodes_jwt_claims_without_a_request(server: ScriptedServer) -> None:
    key = _jwt({"sub": "tml:user:42", "email": "a@b.c", "org_id": "o7"})
    assert key.startswith("eyJ")
    with ServiceClient(api_key=key, base_url=server.url) as sc:
        me = sc.create_rest_client().whoami().result(T)
    assert me == types.WhoamiResponse(user_urn="tml:user:42", email="a@b.c", org_urn="tml:organization:o7")
    assert not server.requests


def test_whoami_with_a_plain_key_fails_clearly(server: ScriptedServer) -> None:
    key = _key()
    with ServiceClient(api_key=key, base_url=server.url) as sc:
        fut = sc.create_rest_client().whoami()
        with pytest.raises(RuntimeError, match="needs a JWT") as err:
            fut.result(T)
    assert key not in str(err.value)


def test_audit_log_and_billing_usage_are_typed_and_lenient(server: ScriptedServer) -> None:
    server.default("/api/v1/audit", Reply(200, {"entries": [
        {"timestamp": "2026-01-02T03:04:05Z", "event": "checkpoint.publish", "tinker_path": "tinker://r/weights/x",
         "future_field": 1},
    ]}))
    server.default("/api/v1/billing/usage/events", Reply(200, {
        "data": [
            {"bucket_start": "2026-01-01T00:00:00Z", "bucket_end": "2026-01-01T01:00:00Z", "base_model": "m",
             "event_info": {"type": "sampling_prefill", "cached": True, "token_count": 12}},
            {"bucket_start": "2026-01-01T00:00:00Z", "bucket_end": "2026-01-01T01:00:00Z",
             "event_info": {"type": "storage", "gigabyte_hours": 1.5, "free": False, "new_thing": 3}},
            {"bucket_start": "2026-01-01T00:00:00Z", "bucket_end": "2026-01-01T01:00:00Z",
             "event_info": {"type": "a_kind_added_later"}},
        ],
        "sessions": {"s1": {"user_metadata": {"k": "v"}}},
    }))
    with ServiceClient(api_key=_key(), base_url=server.url) as sc:
        rest = sc.create_rest_client()
        audit = rest.get_audit_log(day="2026-01-02").result(T)
        usage = rest.get_billing_usage("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z").result(T)
    assert isinstance(audit, types.AuditLogResponse)
    assert audit.entries[0].event == "checkpoint.publish" and audit.entries[0].timestamp.year == 2026
    assert isinstance(usage, types.BillingUsageResponse)
    assert usage.data[0].event_info.type == "sampling_prefill" and usage.data[0].event_info.token_count == 12
    assert usage.data[1].event_info.gigabyte_hours == 1.5
    assert usage.data[2].event_info.type == "a_kind_added_later"
    assert usage.sessions["s1"].user_metadata == {"k": "v"}


def test_export_session_trace_returns_the_url(server: ScriptedServer) -> None:
    server.script("/api/v1/sessions/s9/trace_export", Reply(200, {"status": "pending"}))
    server.default("/api/v1/sessions/s9/trace_export", Reply(200, {"status": "ready", "url": "https://x/t.pftrace"}))
    with ServiceClient(api_key=_key(), base_url=server.url) as sc:
        url = sc.create_rest_client().export_session_trace("s9", poll_interval_s=0.01).result(T)
    assert url == "https://x/t.pftrace"
