"""Server fuzzer: malformed requests to every endpoint of the local server (a subprocess with a memory cap).

Valid requests recorded from a real client flow (through the proxy) are the templates; each case mutates
one thing. The requirement is zero 500s, no request left unanswered and a server that stays alive.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from tests.soak._common import MODEL, ServerProcess, close_bounded, report, soak_client
from tests.soak.proxy import FaultProxy, ProxiedRequest
from tinker_sync import RetryPolicy, ServiceClient, types
from tinker_sync.local import route_table


def _readable(pattern: str) -> str:
    """``training_runs/(?P<run>[^/]+)`` -> ``training_runs/{run}`` (optional groups dropped)."""
    pattern = re.sub(r"\(\?:[^)]*\)\?", "", pattern)
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)


# Every endpoint of the local server, from its own route table: (method, compiled path regex, name).
ENDPOINTS: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(f"^/api/v1/{p}$"), f"{m} {_readable(p)}") for m, p in route_table()
]
_KEY = "tml-soak-0000"
_PROTO = "application/x-protobuf"
# Raw JSON texts put in place of one value (the serializer cannot write most of them).
_HUGE_INT = "1" + "0" * 400
_VALUES: list[tuple[str, str]] = [
    ("null", "null"), ("true", "true"), ("string", '"x"'), ("-1", "-1"), ("0", "0"), ("float", "1.5"),
    ("1e12", "1e12"), ("10**12", str(10**12)), ("2**63", str(2**63)), ("-2**63-1", str(-(2**63) - 1)),
    ("int beyond float", _HUGE_INT), ("-int beyond float", "-" + _HUGE_INT), ("1e400 (inf)", "1e400"),
    ("NaN", "NaN"), ("-Infinity", "-Infinity"),
    ("empty list", "[]"), ("empty object", "{}"), ("lone surrogate", '"\\ud800"'),
    ("surrogate in text", '"run\\udfffx"'), ("long string", json.dumps("a" * 100_000)),
    ("list of nulls", "[null, null]"), ("nested 5000", "[" * 5000 + "]" * 5000),
]
_PATH_SEGMENTS = ["..", "%00", "%ED%A0%80", "%ff%fe", "a" * 5000, "%C3%A9", "%20", "-1", "1e400"]
_QUERIES = ["limit=-1", "limit=" + "9" * 40, "limit=abc", "offset=-5", "offset=1e400", "limit=1e400",
            "access_scope=%ED%A0%80", "access_scope=weird", "limit=%00", "offset=" + "9" * 400]
_SPARSE = [  # TensorData values (for a 2-token datum) with shapes the data cannot fill
    {"data": [1.0], "dtype": "float32", "shape": [2, 2**40], "sparse_crow_indices": [0, 1, 1],
     "sparse_col_indices": [0]},
    {"data": [1.0], "dtype": "float32", "shape": [2, 10**9], "sparse_crow_indices": [0, 1, 1],
     "sparse_col_indices": [0]},
    {"data": [1.0], "dtype": "float32", "shape": [2, 2**62], "sparse_crow_indices": [0, 1, 1],
     "sparse_col_indices": [0]},
    {"data": [1.0], "dtype": "float32", "shape": [2**31, 2**31], "sparse_crow_indices": [0, 1],
     "sparse_col_indices": [0]},
    {"data": [1.0], "dtype": "float32", "shape": [10**30]},
    {"data": [1.0], "dtype": "float32", "shape": [-1]},
    {"data": [1.0], "dtype": "complex128", "shape": [1]},
    {"data": [[1.0]], "dtype": "float32", "shape": [1]},
    {"data": [1e400, 1e400], "dtype": "float32", "shape": [2]},
]


@attrs.frozen
class FuzzOptions:
    """Size and bounds of one fuzz run."""

    cases_per_endpoint: int = 400
    big_bodies: bool = True  # also send bodies just under and over the server's 64 MiB limit
    seed: int = 0
    timeout_s: float = 1800.0
    case_timeout_s: float = 30.0


@attrs.frozen
class Case:
    """One request to send."""

    endpoint: str
    label: str
    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def endpoint_of(method: str, path: str) -> str | None:
    """The endpoint name a request goes to (None: not an API endpoint)."""
    path = path.split("?", 1)[0]
    for m, rx, name in ENDPOINTS:
        if m == method and rx.match(path):
            return name
    return None


# -- templates: a real client flow, recorded by the proxy -----------------------------------------
def _quietly(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        result = fn(*args, **kwargs)
        return result.result(30) if hasattr(result, "result") else result
    except Exception:  # noqa: BLE001 - the flow only needs to send the requests
        return None


def _client_built_cases(proxy: FaultProxy) -> tuple[list[Case], ServiceClient]:
    """Requests the client itself builds from bad values it accepts (its TensorData takes any sparse shape).

    Sent once with a no-retry client (the recording is the case); its session stays open for the fuzzing.
    """
    client = soak_client(proxy.url, retry=RetryPolicy.no_retries())
    cases: list[Case] = []
    try:
        training = client.create_lora_training_client(MODEL, rank=4, seed=0)
        for shape in ([2, 2**40], [2, 10**9]):
            tensor = types.TensorData(data=[1.0], dtype="float32", shape=shape, sparse_crow_indices=[0, 1, 1],
                                      sparse_col_indices=[0])
            datum = types.Datum(model_input=types.ModelInput.from_ints([104, 101]),
                                loss_fn_inputs={"target_tokens": [101, 108], "weights": tensor})
            mark = len(proxy.recorded)
            _quietly(training.forward_backward, [datum], "cross_entropy")
            for req in proxy.recorded[mark:]:
                if req.path == "/api/v1/forward_backward":
                    cases.append(Case("POST forward_backward",
                                      f"client-built sparse weights of shape {shape} (protobuf)",
                                      req.method, req.path, req.body, req.headers))
    except BaseException:
        close_bounded(client)
        raise
    return cases, client


def record_templates(server: ServerProcess) -> tuple[list[ProxiedRequest], list[Case], list[ServiceClient]]:
    """Drive every client call once through a recording proxy; returns what was sent, the cases built by the
    client itself and the clients, whose sessions stay open (close them after fuzzing)."""
    with FaultProxy(server.port, record=True) as proxy:
        client = soak_client(proxy.url)
        try:
            training = client.create_lora_training_client(MODEL, rank=4, seed=0)
            datum = types.Datum(model_input=types.ModelInput.from_ints(list(b"hello")),
                                loss_fn_inputs={"target_tokens": list(b"ello!"), "weights": [1.0] * 5})
            _quietly(training.forward_backward, [datum], "cross_entropy")
            _quietly(training.forward, [datum], "cross_entropy")
            _quietly(training.optim_step, types.AdamParams(learning_rate=1e-3))
            _quietly(training.get_info)
            state = _quietly(training.save_state, "fuzz-a")
            _quietly(training.save_state, "fuzz-b")
            sampler_path = getattr(_quietly(training.save_weights_for_sampler, "fuzz-s"), "path", None)
            if state is not None:
                _quietly(training.load_state, state.path)
            sampler = _quietly(client.create_sampling_client, base_model=MODEL)
            if sampler is not None:
                _quietly(sampler.sample, types.ModelInput.from_ints(list(b"hi")), 1, types.SamplingParams(max_tokens=2))
            rest = client.create_rest_client()
            run_id = training.model_id
            for call in (lambda: rest.list_training_runs(), lambda: rest.get_training_run(run_id),
                         lambda: rest.list_checkpoints(run_id), lambda: rest.list_user_checkpoints(),
                         lambda: rest.list_sessions(), lambda: rest.get_session(client.session_id),
                         lambda: rest.assign_session_project(client.session_id, "fuzz"),
                         lambda: rest.get_audit_log(),
                         lambda: rest.get_billing_usage("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
                         lambda: rest.whoami()):
                _quietly(call)
            if state is not None:
                for by_path in (rest.publish_checkpoint_from_tinker_path, rest.unpublish_checkpoint_from_tinker_path,
                                rest.get_checkpoint_archive_url_from_tinker_path, rest.get_weights_info_by_tinker_path):
                    _quietly(by_path, state.path)
                _quietly(rest.set_checkpoint_ttl_from_tinker_path, state.path, 3600)
                _quietly(rest.delete_checkpoint_from_tinker_path, state.path.replace("fuzz-a", "fuzz-b"))
            if sampler_path:
                _quietly(client.create_sampling_client, model_path=sampler_path)
            _quietly(rest.export_session_trace, client.session_id)
            recorded = list(proxy.recorded)
            extra, other = _client_built_cases(proxy)
        except BaseException:
            close_bounded(client)
            raise
        return recorded, extra, [client, other]


def _fill_missing(templates: dict[str, list[ProxiedRequest]], session_id: str, model_id: str) -> None:
    """Minimal requests for endpoints the client flow did not reach, and JSON forms of the protobuf ones."""
    headers = (("X-API-Key", _KEY), ("Content-Type", "application/json"))
    tensor = {"data": [101, 108], "dtype": "int64", "shape": [2]}
    datum = {"model_input": {"chunks": [{"tokens": [104, 101], "type": "encoded_text"}]},
             "loss_fn_inputs": {"target_tokens": tensor,
                                "weights": {"data": [1.0, 1.0], "dtype": "float32", "shape": [2]}}}
    fb_input = {"data": [datum], "loss_fn": "cross_entropy", "loss_fn_config": {"clip": 1.0}}
    json_forms = {
        "forward_backward": {"forward_backward_input": fb_input, "model_id": model_id, "seq_id": 10_000},
        "forward": {"forward_input": fb_input, "model_id": model_id, "seq_id": 20_000},
    }
    for name, doc in json_forms.items():
        path = f"/api/v1/{name}"
        templates.setdefault(f"POST {name}", []).append(
            ProxiedRequest("POST", path, headers, json.dumps(doc).encode()))
    bodies = {
        "telemetry": {"events": [], "session_id": session_id},
        "unload_model": {"model_id": model_id, "type": "unload_model"},
        "session_heartbeat": {"session_id": session_id, "type": "session_heartbeat"},
        "retrieve_futures": {"request_ids": ["req-0"]},
        "cancel_future": {"request_id": "req-0"},
        "join_sampling_session": {"session_id": session_id, "sampling_session_id": f"{session_id}:sample:0"},
        "copy_weights": {"model_id": model_id, "source_path": f"tinker://{model_id}/weights/fuzz-a"},
        "save_weights_external": {"model_id": model_id, "seq_id": 30_000},
        "sessions/search": {"limit": 10},
    }
    ids = {"run": model_id, "id": session_id, "kind": "weights", "name": "fuzz-a", "token": "abc"}
    for method, _, name in ENDPOINTS:
        if name in templates:
            continue
        readable = name.split(" ", 1)[1]
        path = "/api/v1/" + re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x"), readable)
        doc = bodies.get(readable, {}) if method in ("POST", "PUT") else None
        templates[name] = [ProxiedRequest(method, path, headers, b"" if doc is None else json.dumps(doc).encode())]


# -- mutations ------------------------------------------------------------------------------------
def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every value's path in a JSON document (lists: their first element only)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list) and obj:
        yield from _paths(obj[0], (*prefix, 0))


_MARK = "\u0000soak-mark\u0000"


def _replace(obj: Any, path: tuple[Any, ...], raw: str) -> bytes:
    """``obj`` serialized with the value at ``path`` replaced by the raw JSON text ``raw``."""
    doc = json.loads(json.dumps(obj))
    if not path:
        return raw.encode("utf-8", "surrogatepass")
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = _MARK
    return json.dumps(doc).replace(json.dumps(_MARK), raw).encode("utf-8", "surrogatepass")


def _tensor_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        if "data" in obj and "dtype" in obj:
            yield prefix
        for k, v in obj.items():
            yield from _tensor_paths(v, (*prefix, k))
    elif isinstance(obj, list) and obj:
        yield from _tensor_paths(obj[0], (*prefix, 0))


def _json_mutations(doc: Any) -> Iterator[tuple[str, tuple[Any, ...], str | None]]:
    """(label, path, raw JSON text or None = remove the key) for every single-value mutation of ``doc``."""
    for path in _paths(doc):
        where = "/".join(map(str, path)) or "<body>"
        for label, raw in _VALUES:
            yield f"{where} = {label}", path, raw
        if path and isinstance(path[-1], str):
            yield f"{where} removed", path, None
    for path in _tensor_paths(doc):
        for i, tensor in enumerate(_SPARSE):
            yield f"{'/'.join(map(str, path))} = bad tensor #{i} {json.dumps(tensor)[:90]}", path, json.dumps(tensor)


def _json_cases(name: str, tpl: ProxiedRequest, template_doc: Any) -> Iterator[Case]:
    sequenced = isinstance(template_doc, dict) and isinstance(template_doc.get("seq_id"), int)
    for k, (label, path, raw) in enumerate(_json_mutations(template_doc)):
        doc = json.loads(json.dumps(template_doc))
        if sequenced:
            # a fresh seq_id per case, so the server parses the body instead of matching a queued request
            doc["seq_id"] = template_doc["seq_id"] + 1000 + k
        if raw is not None:
            body = _replace(doc, path, raw)
        else:
            holder = doc
            for key in path[:-1]:
                holder = holder[key]
            del holder[path[-1]]
            body = json.dumps(doc).encode()
        yield Case(name, label, tpl.method, tpl.path, body, tpl.headers)
    if isinstance(template_doc, dict):
        yield Case(name, "unknown extra key", tpl.method, tpl.path,
                   json.dumps({**template_doc, "zz_unknown": 1}).encode(), tpl.headers)


def _body_cases(name: str, tpl: ProxiedRequest, rng: random.Random, big: bool) -> Iterator[Case]:
    m, p, h = tpl.method, tpl.path, tpl.headers
    for label, body in [("empty body", b""), ("not JSON", b"{"), ("JSON null", b"null"), ("JSON list", b"[1]"),
                        ("JSON string", b'"x"'), ("invalid UTF-8", b'{"a": "\xff\xfe"}'),
                        ("deep list nesting 100000", b"[" * 100_000 + b"]" * 100_000),
                        ("deep object nesting 50000", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
                        ("BOM + JSON", b"\xef\xbb\xbf{}")]:
        yield Case(name, label, m, p, body, h)
    for i in range(4):
        yield Case(name, f"random bytes #{i}", m, p, rng.randbytes(rng.randint(1, 512)), h)
    yield Case(name, "Content-Length 10**12 (body not sent)", m, p, b"{}", (*h, ("X-Soak-Content-Length", str(10**12))))
    yield Case(name, "Content-Length not a number", m, p, b"{}", (*h, ("X-Soak-Content-Length", "abc")))
    if big and name in ("POST forward_backward", "POST create_session", "POST asample"):
        yield Case(name, "body of 70 MB (over the limit)", m, p, b'{"x":"' + b"a" * 70_000_000 + b'"}', h)
        yield Case(name, "body of 60 MB (under the limit)", m, p, b'{"x":"' + b"a" * 60_000_000 + b'"}', h)
    if name == "POST forward_backward":
        proto = tuple((k, v) for k, v in h if k.lower() != "content-type") + (("Content-Type", _PROTO),)
        for i in range(6):
            yield Case(name, f"protobuf garbage #{i}", m, p, rng.randbytes(rng.randint(1, 256)), proto)
        if tpl.body and _PROTO in dict(tpl.headers).get("Content-Type", ""):
            for i in range(10):
                flipped = bytearray(tpl.body)
                for _ in range(rng.randint(1, 4)):
                    flipped[rng.randrange(len(flipped))] = rng.randrange(256)
                yield Case(name, f"protobuf with flipped bytes #{i}", m, p, bytes(flipped), proto)
            for cut in (1, len(tpl.body) // 2, len(tpl.body) - 1):
                yield Case(name, f"protobuf truncated to {cut} bytes", m, p, tpl.body[:cut], proto)
            yield Case(name, "protobuf with a huge length prefix", m, p, b"\x0a\xff\xff\xff\xff\x0f" + tpl.body, proto)


def _url_cases(name: str, tpl: ProxiedRequest) -> Iterator[Case]:
    path = tpl.path.split("?", 1)[0]
    segments = path.split("/")
    params = [i + 3 for i, seg in enumerate(name.split(" ", 1)[1].split("/")) if seg.startswith("{")]
    for i in params:  # segment index in "/api/v1/..." split on "/"
        for bad in _PATH_SEGMENTS:
            bent = "/".join([*segments[:i], bad, *segments[i + 1:]])
            if endpoint_of(tpl.method, bent) == name:
                yield Case(name, f"path segment {i} = {bad[:20]}", tpl.method, bent, tpl.body, tpl.headers)
    if tpl.method == "GET":
        for query in _QUERIES:
            yield Case(name, f"query {query[:40]}", tpl.method, f"{path}?{query}", tpl.body, tpl.headers)


def cases_for(name: str, tpl: ProxiedRequest, opts: FuzzOptions, rng: random.Random) -> list[Case]:
    """Every case of one endpoint, capped at ``cases_per_endpoint`` (a seeded sample, specials first)."""
    special = list(_body_cases(name, tpl, rng, opts.big_bodies)) + list(_url_cases(name, tpl))
    doc: Any = None
    if tpl.body and _PROTO not in dict(tpl.headers).get("Content-Type", ""):
        try:
            doc = json.loads(tpl.body)
        except ValueError:
            doc = None
    fields = list(_json_cases(name, tpl, doc)) if doc is not None else []
    rng.shuffle(fields)
    return (special + fields)[:opts.cases_per_endpoint]


# -- sending --------------------------------------------------------------------------------------
def send(port: int, case: Case, timeout_s: float) -> tuple[int, bytes]:
    """Send one case on a fresh connection: (status, body); status 0 = no answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    # The template's idempotency key would let the server answer from its cache without parsing the body.
    headers = {k: v for k, v in case.headers
               if k.lower() not in ("content-length", "x-soak-content-length", "host", "x-idempotency-key")}
    declared = dict(case.headers).get("X-Soak-Content-Length")
    try:
        conn.putrequest(case.method, case.path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", declared or str(len(case.body)))
        conn.endheaders()
        if case.body:
            try:
                conn.send(case.body)
            except OSError:
                pass  # the server may answer (413) and close before it read everything
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()
    finally:
        conn.close()


@attrs.define
class _Tally:
    statuses: Counter[int] = attrs.field(factory=Counter)
    by_endpoint: dict[str, Counter[int]] = attrs.field(factory=dict)
    errors_500: list[str] = attrs.field(factory=list)
    no_answer: list[str] = attrs.field(factory=list)
    deaths: list[str] = attrs.field(factory=list)

    def add(self, case: Case, status: int, body: bytes) -> None:
        self.statuses[status] += 1
        self.by_endpoint.setdefault(case.endpoint, Counter())[status] += 1
        shown = f"{case.method} {case.path[:120]} [{case.label}] -> {status} {body[:200]!r}"
        if status >= 500:
            self.errors_500.append(shown)
        elif status == 0:
            self.no_answer.append(shown)


def _ids_of(recorded: list[ProxiedRequest]) -> tuple[str, str]:
    """(session_id, model_id) seen in the recorded flow."""
    session_id = model_id = "unknown"
    for req in recorded:
        if req.path.startswith("/api/v1/sessions/"):
            session_id = req.path.split("/")[4]
        if req.path == "/api/v1/get_info":
            model_id = str(json.loads(req.body).get("model_id"))
    return session_id, model_id


# Endpoints that end the model or session the other cases use go last.
_LAST = ("POST unload_model", "POST sessions/{id}/finish")
FUZZ_ORDER = [n for _, _, n in ENDPOINTS if n not in _LAST] + [n for n in _LAST if n in {e[2] for e in ENDPOINTS}]


def _cause(shown: str) -> str:
    """The exception class named in a 500 answer (the local server writes "internal server error: Cls: ...")."""
    match = re.search(r"internal server error: (\w+)", shown)
    return match.group(1) if match else "other"


def _valid_statuses(port: int, templates: dict[str, list[ProxiedRequest]], opts: FuzzOptions) -> dict[str, int]:
    """Status of each endpoint's first valid (recorded) request, on the read-only endpoints."""
    return {name: send(port, Case(name, "valid", t[0].method, t[0].path, t[0].body, t[0].headers),
                       opts.case_timeout_s)[0]
            for name, t in templates.items() if t[0].method == "GET"}


def _fuzz_all(server: ServerProcess, templates: dict[str, list[ProxiedRequest]], extra: list[Case],
              opts: FuzzOptions, rng: random.Random, tally: _Tally, started: float) -> tuple[int, list[str]]:
    """Send every case, endpoint by endpoint; returns the count sent and the read endpoints each batch broke."""
    known = _valid_statuses(server.port, templates, opts)
    poisoned: list[str] = []
    sent = 0
    for name in FUZZ_ORDER:
        batch = [c for c in extra if c.endpoint == name]
        for tpl in templates[name]:
            batch += cases_for(name, tpl, opts, rng)
        for case in batch:
            if time.monotonic() - started > opts.timeout_s:
                break
            status, body = send(server.port, case, opts.case_timeout_s)
            tally.add(case, status, body)
            sent += 1
            if status == 0 and not server.alive():
                tally.deaths.append(f"{case.method} {case.path[:120]} [{case.label}]")
                server.start()
        # A case may leave state behind that breaks later, valid requests: name the batch that did it.
        now = _valid_statuses(server.port, templates, opts)
        for other, status in now.items():
            if status >= 500 and known[other] < 500:
                poisoned.append(f"after the {name} cases, the valid GET of {other} answers {status} "
                                f"(it answered {known[other]} before)")
                known[other] = status
    return sent, poisoned


def run(opts: FuzzOptions) -> dict[str, Any]:
    """Run the fuzzer; returns its figures, ``problems`` empty when zero 500s and the server never died."""
    started = time.monotonic()
    rng = random.Random(opts.seed)
    tally = _Tally()
    with tempfile.TemporaryDirectory(prefix="tinker-sync-fuzz-") as tmp:
        server = ServerProcess(Path(tmp) / "data", long_poll_s=1.0, max_memory_bytes=4 * 1024**3)
        server.start()
        try:
            recorded, extra, clients = record_templates(server)
            templates: dict[str, list[ProxiedRequest]] = {}
            for req in recorded:
                name = endpoint_of(req.method, req.path)
                if name is not None and name not in templates:
                    templates[name] = [req]
            _fill_missing(templates, *_ids_of(recorded))
            sent, poisoned = _fuzz_all(server, templates, extra, opts, rng, tally, started)
            alive = server.alive() and server.healthy()
            for client in clients:
                close_bounded(client)
        finally:
            server.stop()
    problems = [f"500: {e}" for e in tally.errors_500] + [f"no answer: {e}" for e in tally.no_answer]
    problems += [f"server died on: {d}" for d in tally.deaths] + [f"poisoned: {p}" for p in poisoned]
    if not alive:
        problems.append("the server was not alive and healthy at the end")
    return {
        "endpoints fuzzed": f"{len(tally.by_endpoint)} of {len(ENDPOINTS)}",
        "cases sent": sent,
        "status codes": dict(sorted(tally.statuses.items())),
        "500s": len(tally.errors_500),
        "500s by cause": dict(Counter(_cause(e) for e in tally.errors_500).most_common()),
        "no answer": len(tally.no_answer),
        "server deaths": len(tally.deaths),
        "read endpoints left answering 500": len(poisoned),
        "time (s)": f"{time.monotonic() - started:.1f}",
        "problems": problems,
    }


def main(opts: FuzzOptions) -> int:
    """Run, print the figures, return the exit code."""
    return report(f"fuzz: up to {opts.cases_per_endpoint} cases per endpoint", run(opts))
