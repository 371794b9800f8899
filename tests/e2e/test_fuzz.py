"""Property-based fuzzing (hypothesis) of every public and admin endpoint, against one
real server: the bundled gemma-3-270m and all-MiniLM-L6-v2, and an alias whose
deployments are the bench's fast upstream, so both the local and the remote paths run.

Whatever a request holds (odd bodies, headers, path ids, queries, keys), the answer is
below 500, an OpenAI error envelope when it is an error, free of tracebacks, and comes
within `BOUND_S`; a stream ends with [DONE] and carries no error event. A failure
prints the request and the server's log lines for it (examples are not shrunk: see
`fuzz`). Malformed HTTP that clients refuse to send goes over a raw socket.

Generation stays cheap: data-plane requests use a key capped at 2 completion tokens
per request (or one that may use only the remote alias). Admin changes that could lock
the suite out (revoking, rotating or patching a key) only touch throwaway keys.
Examples are derandomized, so CI runs the same requests every time.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from tests.e2e import fuzz_strategies as fz
from tests.e2e.fuzz_strategies import ADMIN_KEY_ID, EMB, LLM, REMOTE
from tests.e2e.server import Server, running_server
from tests.e2e.upstreams import fast_upstream

pytestmark = pytest.mark.e2e

BOUND_S = 30.0  # per request, connection to last byte
TRACEBACK = re.compile(r'Traceback \(most recent call last\)|File "[^"\n]*\.py", line \d+')
ENVELOPE_FIELDS = {"message", "type", "param", "code"}


def fuzz(examples: int) -> settings:
    # No shrinking: a failure already prints its request and the server's log lines,
    # and shrinking one that crashes a model worker (seconds a try, up to 5 minutes)
    # would make a failing run far longer than a passing one.
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
    )


# -- the server, and how each answer is judged -------------------------------------------


def _config(upstream: str) -> str:
    # The response cache is on (exact and semantic) so Cache-Control has something to do.
    return (
        "cache:\n  mode: deterministic\n  ttl_s: 60\n"
        f"  semantic: {{embedding_model: {EMB}, threshold: 0.9}}\n"
        "models:\n"
        f"  - id: {LLM}\n    engine: llamacpp\n    bundled: gemma3-270m-q4-k-m\n"
        "    parallel: 2\n"
        "    pricing: {input_per_million: 0.1, output_per_million: 0.3}\n"
        f"  - id: {EMB}\n    engine: sentence_transformers\n    bundled: all-minilm-l6-v2\n"
        f"  - id: {REMOTE}\n"
        "    deployments:\n"
        "      - name: fast\n        engine: openai_compatible\n"
        f"        base_url: {upstream}\n        model: fast\n        context_size: 4096\n"
        "      - name: fast-private\n        engine: openai_compatible\n"
        f"        base_url: {upstream}\n        model: fast\n"
        "        tags: [private]\n        region: eu-west\n"
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with fast_upstream() as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = tmp / "inferplane.yaml"
    config.write_text(_config(upstream))
    with running_server(tmp / "data", config=config) as srv:
        yield srv


@dataclass
class Target:
    """The server under fuzz, the keys it is fuzzed with and the ids bodies may name.

    Bodies and paths carry placeholders (`<ORG>`, `<TEAM>`, `<KEY>`, `<DEP>`,
    `<UPSTREAM>`, `<SECRET>`) that become real ids just before a request is sent."""

    server: Server
    http: httpx.Client
    secrets: dict[str, str]  # admin, capped (2 tokens a request), remote (REMOTE only)
    protected: set[str]  # key ids never patched, rotated or revoked
    ids: dict[str, str] = field(default_factory=dict)
    # Requests that got no answer: hypothesis replays a failing example, and waiting
    # out BOUND_S twice for one finding is no use.
    unanswered: dict[tuple[str, str, bytes], str] = field(default_factory=dict)

    # Hypothesis prints the fixture with each failing example: the URL is enough.
    def __repr__(self) -> str:
        return f"Target({self.server.base_url})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def call(
        self,
        method: str,
        path: str,
        *,
        key: str | bytes | None = "admin",
        body: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        query: Sequence[tuple[str, str]] = (),
        chunked: bool = False,
    ) -> httpx.Response:
        """Send one request and check its answer (see the module docstring); `chunked`
        sends the body in two chunks, without a Content-Length."""
        sent_headers = [(k.encode(), self.fill(v)) for k, v in headers]
        if body is not None and not any(k == b"content-type" for k, _ in sent_headers):
            sent_headers.insert(0, (b"content-type", b"application/json"))
        if isinstance(key, bytes):
            sent_headers.append((b"authorization", self.fill(key)))
        elif key is not None:
            sent_headers.append((b"authorization", f"Bearer {self.secrets[key]}".encode()))
        raw = b"" if body is None else self.fill(body)
        content: bytes | Iterator[bytes] | None = None if body is None else raw
        if chunked:
            content = iter([raw[: len(raw) // 2], raw[len(raw) // 2 :]])
        request = self.http.build_request(
            method,
            self.fill(path.encode()).decode(),
            content=content,
            headers=sent_headers,
            params=[(k, self.fill(v.encode()).decode()) for k, v in query],
        )
        mark = len(self.server.output)
        sent = (method, str(request.url), raw)
        if sent in self.unanswered:
            _fail(self.unanswered[sent] + "\n  (replayed by hypothesis: not sent again)")
        started = time.monotonic()
        try:
            response = self.http.send(request)
        except httpx.TimeoutException:
            problem = f"no answer within {BOUND_S} s"
            self.unanswered[sent] = self._describe(request, raw, None, problem, mark)
            _fail(self.unanswered[sent])
        except httpx.TransportError as exc:
            _fail(self._describe(request, raw, None, f"transport error: {exc!r}", mark))
        problems = _problems(request, raw, response, time.monotonic() - started)
        if self.server.process.poll() is not None:
            problems.append("the server exited")
        if problems:
            _fail(self._describe(request, raw, response, "; ".join(problems), mark))
        return response

    def new_key(self) -> str:
        """A throwaway key's id (to patch, rotate or revoke)."""
        resp = self.call("POST", "/admin/v1/keys", body=b'{"name": "fuzz-throwaway"}')
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def protects(self, raw_id: str) -> bool:
        """Whether a path id could name a key the suite needs (however it is encoded)."""
        text = raw_id
        for _ in range(4):
            text = unquote(text)
        return any(p.lower() in text.lower() for p in self.protected)

    def fill(self, raw: bytes) -> bytes:
        """The placeholders in `raw` replaced with real ids."""
        for name, value in self.ids.items():
            raw = raw.replace(f"<{name}>".encode(), value.encode())
        return raw.replace(b"<SECRET>", self.secrets["capped"].encode())

    def _describe(
        self,
        request: httpx.Request,
        body: bytes,
        response: httpx.Response | None,
        problem: str,
        mark: int,
    ) -> str:
        time.sleep(0.3)  # the server's log lines for it, written just after the answer
        shown = repr(body[:1500]) + (f" ... ({len(body)} bytes)" if len(body) > 1500 else "")
        skip = {"host", "accept", "accept-encoding", "connection", "user-agent"}
        headers = [(k, v) for k, v in request.headers.raw if k.decode().lower() not in skip]
        answer = (
            "(none)"
            if response is None
            else f"{response.status_code} {response.headers.get('content-type')}: "
            f"{response.text[:1500]!r}"
        )
        log = _log_excerpt(self.server.output[mark:])
        target = request.url.raw_path.decode()
        if len(target) > 600:
            target = f"{target[:600]} ... ({len(target)} characters)"
        return (
            f"{problem}\n  request: {request.method} {target}\n"
            f"  headers: {headers}\n  body: {shown}\n  answer: {answer}\n"
            f"  server log:\n{log}"
        )


def _log_excerpt(lines: list[str], keep: int = 50) -> str:
    """The server's log lines, less the traceback frames of libraries and the stdlib
    (each frame is its `File` line and the indented source lines under it)."""
    out, skipping = [], False
    for line in lines:
        if line.startswith('  File "'):
            skipping = "site-packages" in line or "/lib/python3" in line
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            out.append(line)
    return "".join(out[-keep:])


def _fail(message: str) -> NoReturn:
    raise AssertionError(message)


def _problems(
    request: httpx.Request, body: bytes, response: httpx.Response, elapsed: float
) -> list[str]:
    problems = []
    if response.status_code >= 500:
        problems.append(f"status {response.status_code}")
    if not response.headers.get("x-request-id"):
        problems.append("no x-request-id")
    if elapsed > BOUND_S:
        problems.append(f"took {elapsed:.1f} s")
    sent = body.decode("utf-8", "replace") + str(request.url)
    if TRACEBACK.search(response.text) and not TRACEBACK.search(sent):
        problems.append("a traceback in the answer")
    content_type = response.headers.get("content-type", "")
    if response.status_code >= 400 and not _is_envelope(response.content):
        problems.append("not an OpenAI error envelope")
    elif content_type.startswith("text/event-stream"):
        problems += _stream_problems(response.text)
    elif content_type.startswith("application/json") and _strict_json(response.content) is None:
        problems.append("a 2xx answer that is not strict JSON")
    return problems


def _strict_json(raw: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(token)

    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError:
        return None


def _is_envelope(raw: bytes) -> bool:
    body = _strict_json(raw)
    err = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(err, dict)
        and set(err) == ENVELOPE_FIELDS
        and isinstance(err["message"], str)
        and isinstance(err["type"], str)
        and (err["param"] is None or isinstance(err["param"], str))
        and (err["code"] is None or isinstance(err["code"], str))
    )


def _stream_problems(text: str) -> list[str]:
    """An SSE answer: JSON events ending with [DONE]. An error event (a failure after
    the first token) is a stream's 5xx: none is expected here."""
    events = [line[5:].strip() for line in text.split("\n") if line.startswith("data:")]
    problems = []
    if not events or events[-1] != "[DONE]":
        problems.append("a stream that does not end with [DONE]")
    for event in events[:-1]:
        data = _strict_json(event.encode())
        if not isinstance(data, dict):
            problems.append(f"a stream event that is not a JSON object: {event[:200]!r}")
        elif "error" in data:
            envelope = "" if _is_envelope(event.encode()) else " (not an OpenAI envelope)"
            problems.append(f"an error event mid-stream{envelope}: {event[:300]!r}")
    return problems


@pytest.fixture(scope="module")
def target(server: Server, upstream: str) -> Iterator[Target]:
    admin = server.admin_key
    assert admin is not None
    secrets, protected = {"admin": admin}, {ADMIN_KEY_ID}
    with server.http() as http:
        keys: dict[str, dict[str, Any]] = {
            "capped": {"limits": {"max_tokens": 2}},
            "remote": {"models": [REMOTE]},
        }
        for name, fields in keys.items():
            resp = http.post("/admin/v1/keys", json={"name": f"fuzz-{name}", **fields})
            assert resp.status_code == 201, resp.text
            secrets[name] = resp.json()["key"]
            protected.add(resp.json()["id"])
        org = http.post("/admin/v1/orgs", json={"name": "fuzz-org"}).json()
        team = http.post("/admin/v1/teams", json={"name": "fuzz-team", "org_id": org["id"]})
        assert team.status_code == 201, team.text
    ids = {"ORG": org["id"], "TEAM": team.json()["id"], "UPSTREAM": upstream}
    limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection per request
    client = httpx.Client(base_url=server.base_url, timeout=BOUND_S, limits=limits)
    with client:
        yield Target(server, client, secrets, protected, ids)


@fuzz(300)
@given(
    body=fz.bodies(fz.CHAT),
    headers=fz.odd_headers(),
    key=fz.data_plane_key(),
    chunked=st.booleans(),
)
def test_chat_completions(
    target: Target,
    body: bytes,
    headers: list[tuple[str, bytes]],
    key: str | bytes | None,
    chunked: bool,
) -> None:
    target.call(
        "POST", "/v1/chat/completions", key=key, body=body, headers=headers, chunked=chunked
    )


@fuzz(200)
@given(
    body=fz.bodies(fz.COMPLETION),
    headers=fz.odd_headers(),
    key=fz.data_plane_key(),
    chunked=st.booleans(),
)
def test_completions(
    target: Target,
    body: bytes,
    headers: list[tuple[str, bytes]],
    key: str | bytes | None,
    chunked: bool,
) -> None:
    target.call("POST", "/v1/completions", key=key, body=body, headers=headers, chunked=chunked)


@fuzz(150)
@given(
    body=fz.bodies(fz.EMBEDDING),
    headers=fz.odd_headers(),
    key=fz.data_plane_key(),
    chunked=st.booleans(),
)
def test_embeddings(
    target: Target,
    body: bytes,
    headers: list[tuple[str, bytes]],
    key: str | bytes | None,
    chunked: bool,
) -> None:
    target.call("POST", "/v1/embeddings", key=key, body=body, headers=headers, chunked=chunked)


@fuzz(150)
@given(
    model_id=st.none() | fz.MODEL_IDS,
    query=fz.query_pairs({}),
    headers=fz.odd_headers(),
    key=fz.data_plane_key(),
)
def test_models(
    target: Target,
    model_id: str | None,
    query: list[tuple[str, str]],
    headers: list[tuple[str, bytes]],
    key: str | bytes | None,
) -> None:
    path = "/v1/models" if model_id is None else f"/v1/models/{model_id}"
    target.call("GET", path, key=key, query=query, headers=headers)


@fuzz(150)
@given(data=st.data(), key=fz.admin_key())
def test_admin_orgs(target: Target, data: st.DataObject, key: str | bytes | None) -> None:
    action = data.draw(st.sampled_from(["create", "get", "list"]))
    if action == "create":
        body = data.draw(fz.bodies(fz.shaped({"name": fz.NAME}, ("name",))))
        target.call("POST", "/admin/v1/orgs", key=key, body=body)
    elif action == "get":
        org_id = data.draw(fz.mostly(st.just("<ORG>"), fz.path_ids(), 5))
        target.call("GET", f"/admin/v1/orgs/{org_id}", key=key)
    else:
        query = data.draw(fz.query_pairs(fz.LIST_QUERY))
        target.call("GET", "/admin/v1/orgs", key=key, query=query)


@fuzz(200)
@given(data=st.data(), key=fz.admin_key())
def test_admin_teams(target: Target, data: st.DataObject, key: str | bytes | None) -> None:
    action = data.draw(st.sampled_from(["create", "get", "list", "patch", "patch"]))
    team_id = data.draw(fz.mostly(st.just("<TEAM>"), fz.path_ids(), 6))
    if action == "create":
        target.call("POST", "/admin/v1/teams", key=key, body=data.draw(fz.bodies(fz.TEAM)))
    elif action == "get":
        target.call("GET", f"/admin/v1/teams/{team_id}", key=key)
    elif action == "list":
        params = {**fz.LIST_QUERY, "org_id": st.sampled_from(["<ORG>", "org_x", ""])}
        target.call("GET", "/admin/v1/teams", key=key, query=data.draw(fz.query_pairs(params)))
    else:
        body = data.draw(fz.bodies(fz.shaped(fz.TEAM_FIELDS)))
        target.call("PATCH", f"/admin/v1/teams/{team_id}", key=key, body=body)


@fuzz(200)
@given(data=st.data(), key=fz.admin_key())
def test_admin_keys(target: Target, data: st.DataObject, key: str | bytes | None) -> None:
    action = data.draw(st.sampled_from(["create", "create", "get", "list"]))
    if action == "create":
        target.call("POST", "/admin/v1/keys", key=key, body=data.draw(fz.bodies(fz.KEY)))
    elif action == "get":
        key_id = data.draw(fz.mostly(st.just(ADMIN_KEY_ID), fz.path_ids(), 4))
        target.call("GET", f"/admin/v1/keys/{key_id}", key=key)
    else:
        params = {**fz.LIST_QUERY, "team_id": st.sampled_from(["<TEAM>", "team_x", ""])}
        target.call("GET", "/admin/v1/keys", key=key, query=data.draw(fz.query_pairs(params)))


@fuzz(150)
@given(data=st.data(), key=fz.admin_key())
def test_admin_key_changes(target: Target, data: st.DataObject, key: str | bytes | None) -> None:
    """Patch, rotate or revoke a throwaway key (or an odd id that names no key we need)."""
    target.ids["KEY"] = target.new_key()
    key_id = data.draw(fz.mostly(st.just("<KEY>"), fz.path_ids(), 7))
    assume(not target.protects(key_id))
    action = data.draw(st.sampled_from(["patch", "rotate", "rotate-empty", "revoke"]))
    path = f"/admin/v1/keys/{key_id}"
    if action == "patch":
        target.call("PATCH", path, key=key, body=data.draw(fz.bodies(fz.KEY_UPDATE)))
    elif action == "rotate":
        target.call("POST", path + "/rotate", key=key, body=data.draw(fz.bodies(fz.ROTATE)))
    elif action == "rotate-empty":
        target.call("POST", path + "/rotate", key=key)
    else:
        target.call("DELETE", path, key=key)


@fuzz(150)
@given(data=st.data(), key=fz.admin_key())
def test_admin_pricing(target: Target, data: st.DataObject, key: str | bytes | None) -> None:
    if data.draw(st.booleans()):
        target.call("GET", "/admin/v1/pricing", key=key, query=data.draw(fz.query_pairs({})))
        return
    model = data.draw(fz.mostly(st.sampled_from([LLM, EMB, REMOTE, "nope"]), fz.path_ids(), 7))
    body = data.draw(fz.bodies(fz.PRICE))
    target.call("PUT", f"/admin/v1/pricing/{model}", key=key, body=body)


@fuzz(400)
@given(query=fz.query_pairs(fz.USAGE_QUERY), key=fz.admin_key())
def test_admin_usage(target: Target, query: list[tuple[str, str]], key: str | bytes | None) -> None:
    target.call("GET", "/admin/v1/usage", key=key, query=query)


@fuzz(100)
@given(data=st.data())
def test_fuzzed_tenants_serve(target: Target, data: st.DataObject) -> None:
    """A team and a key made from fuzzed bodies (odd limits, budgets, weights, priority,
    model patterns, metadata such as a data class) then send a valid request: it is
    answered or refused, never a 5xx."""
    team = target.call("POST", "/admin/v1/teams", body=data.draw(fz.bodies(fz.TEAM)))
    fields = data.draw(fz.KEY)
    if team.status_code == 201:
        fields["team_id"] = team.json()["id"]
    key = target.call("POST", "/admin/v1/keys", body=fz.encode(fields))
    if key.status_code != 201:
        return
    path, body = data.draw(st.sampled_from(fz.TENANT_REQUESTS))
    if path != "/v1/embeddings":  # the key may have no cap of its own: keep it cheap
        body = {**body, "max_tokens": data.draw(st.integers(1, 2))}
    auth = f"Bearer {key.json()['key']}".encode()
    headers = data.draw(fz.odd_headers())
    target.call("POST", path, key=auth, body=fz.encode(body), headers=headers)


LOOPBACK_ONLY = re.compile(rb"https?://(?!127\.0\.0\.1[:/]|<UPSTREAM>)", re.IGNORECASE)


def _deployment_body(data: st.DataObject, objects: st.SearchStrategy[dict[str, Any]]) -> bytes:
    body = data.draw(fz.bodies(objects))
    assume(not LOOPBACK_ONLY.search(body))  # nothing the server might call leaves 127.0.0.1
    return body


@fuzz(200)
@given(data=st.data(), key=fz.admin_key())
def test_admin_deployments(target: Target, data: st.DataObject, key: str | bytes | None) -> None:
    action = data.draw(st.sampled_from(["list", "create", "create", "patch", "delete"]))
    if action == "list":
        target.call("GET", "/admin/v1/deployments", key=key, query=data.draw(fz.query_pairs({})))
        return
    if action == "create":
        body = _deployment_body(data, fz.mostly(fz.DEPLOYMENT, fz.LOCAL_DEPLOYMENT, 9))
        created = target.call("POST", "/admin/v1/deployments", key=key, body=body)
        if created.status_code == 201:
            name = quote(created.json()["name"], safe="")
            target.call("DELETE", f"/admin/v1/deployments/{name}")
        return
    name = f"fz-throwaway-{time.monotonic_ns()}"
    made = target.call(
        "POST",
        "/admin/v1/deployments",
        body=fz.encode(
            {
                "alias": "fuzz-dep",
                "name": name,
                "engine": "openai_compatible",
                "base_url": "<UPSTREAM>",
                "model": "fast",
            }
        ),
    )
    assert made.status_code == 201, made.text
    target.ids["DEP"] = name
    dep = data.draw(fz.mostly(st.just("<DEP>"), st.sampled_from(["fast", LLM]) | fz.path_ids(), 7))
    if action == "patch":
        body = _deployment_body(data, fz.DEPLOYMENT_CHANGE)
        target.call("PATCH", f"/admin/v1/deployments/{dep}", key=key, body=body)
    else:
        target.call("DELETE", f"/admin/v1/deployments/{dep}", key=key)
    target.call("DELETE", f"/admin/v1/deployments/{name}")


@fuzz(150)
@given(
    path=st.sampled_from(fz.READ_ONLY),
    query=fz.query_pairs({}),
    headers=fz.odd_headers(),
    key=fz.admin_key() | fz.data_plane_key(),
)
def test_read_only_endpoints(
    target: Target,
    path: str,
    query: list[tuple[str, str]],
    headers: list[tuple[str, bytes]],
    key: str | bytes | None,
) -> None:
    target.call("GET", path, key=key, query=query, headers=headers)


@fuzz(400)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    route=st.sampled_from(fz.ROUTES),
    some_id=fz.path_ids(),
    body=st.none() | fz.junk().map(fz.encode) | st.sampled_from(fz.RAW_BODIES),
    key=fz.admin_key(),
)
def test_any_method_on_any_route(
    target: Target,
    method: str,
    route: str,
    some_id: str,
    body: bytes | None,
    key: str | bytes | None,
) -> None:
    """Every route with every method: odd ids and junk bodies (wrong methods get 405)."""
    assume(not target.protects(some_id))
    assume(body is None or not LOOPBACK_ONLY.search(body))
    path = route.replace("{id}", some_id)
    target.call(method, path, key=key, body=body if method in ("POST", "PUT", "PATCH") else None)


def _read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, head and body of one HTTP/1.1 answer (the body by its Content-Length,
    else to the end of the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, b"", b""
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    while length is None or len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), head, body


@fuzz(150)
@given(request=fz.raw_requests())
def test_malformed_http(target: Target, request: bytes) -> None:
    """Bytes an HTTP client would refuse to send: the answer is still an OpenAI one."""
    raw = target.fill(request)
    host, port = target.server.base_url.removeprefix("http://").split(":")
    mark = len(target.server.output)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=BOUND_S) as sock:
        sock.sendall(raw)
        try:
            status, head, body = _read_response(sock)
        except TimeoutError:
            status, head, body = 0, b"", b""
    problems = []
    if status == 0:
        problems.append(f"no answer within {BOUND_S} s")
    if status >= 500:
        problems.append(f"status {status}")
    if status >= 400 and not _is_envelope(body):
        problems.append("not an OpenAI error envelope")
    if status and not re.search(rb"(?im)^x-request-id:", head):
        problems.append("no x-request-id")
    if TRACEBACK.search(body.decode("utf-8", "replace")):
        problems.append("a traceback in the answer")
    if time.monotonic() - started > BOUND_S:
        problems.append("too slow")
    if problems:
        time.sleep(0.3)
        log = _log_excerpt(target.server.output[mark:])
        _fail(
            f"{'; '.join(problems)}\n  sent: {raw!r}\n  answer: {head + b'|' + body[:500]!r}"
            f"\n  server log:\n{log}"
        )


def test_the_fuzzed_server_still_serves(target: Target) -> None:
    """No worker crashed along the way, and the keys the suite needs still work."""
    workers = target.call("GET", "/admin/v1/workers").json()["data"]
    assert workers and all(w["ready"] and w["restarts"] == 0 for w in workers), workers
    body = fz.encode({"model": LLM, "messages": [{"role": "user", "content": "hi"}]})
    chat = target.call("POST", "/v1/chat/completions", key="capped", body=body)
    assert chat.status_code == 200, chat.text
    remote = fz.encode({"model": REMOTE, "prompt": "hi"})
    assert target.call("POST", "/v1/completions", key="remote", body=remote).status_code == 200
