"""Hypothesis strategies for the fuzz suite (`test_fuzz.py`): generic ones first, then
the shapes of inferplane's requests.

Bodies are bytes: a mostly valid request with a few fields mutated (wrong types, huge
or negative integers, NaN and Infinity as raw JSON tokens, long, unicode and
control-character strings, lone surrogates, nested junk, unknown fields), arbitrary
JSON, or bytes that are not JSON at all. Header values are latin-1 bytes an HTTP/1.1
client may send; path ids are sent percent-encoded as given; queries may repeat a name.
Ids only known at run time are placeholders (`<ORG>`, `<TEAM>`, `<KEY>`, `<DEP>`,
`<UPSTREAM>`, `<SECRET>`) that the suite fills in just before sending.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

SearchStrategy = st.SearchStrategy


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is: NaN, Infinity, 1e400, 5000 nested arrays..."""

    token: str


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """JSON with `Raw` tokens; lone surrogates become \\ud800 escapes (or, with
    `ascii_only` false, the invalid UTF-8 bytes themselves)."""
    return _encode(value, ascii_only).encode("utf-8", "surrogatepass")


def _encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, dict):
        items = (
            json.dumps(str(k), ensure_ascii=ascii_only) + ":" + _encode(v, ascii_only)
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN / Infinity for such floats


BIG_INTS = [
    0,
    -1,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**64 + 1,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    10**30,
    -(10**30),
    10**400,
]
RAW_TOKENS = [
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1e-400"),
    Raw("-0"),
    Raw("1E+2"),
    Raw("1.0000000000000000000000000001"),
    Raw("123456789012345678901234567890.5"),
    Raw("[" * 5000 + "]" * 5000),
    Raw('{"a":' * 3000 + "1" + "}" * 3000),
]
SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "\x00\x01\x1b[31m\x7f",
    "\r\n\r\n",
    "\t",
    "null",
    "true",
    "0",
    "-1",
    "1e400",
    "NaN",
    "Infinity",
    "\ufeff",
    "\u202e\u200b",
    "\U0001f600\U0001d518",
    "\uffff\ufffe",
    "%",
    "%00",
    "%s%s%n",
    "{{ 7 * 7 }}",
    "{% for m in messages %}",
    "<|im_end|>",
    "\nUser:",
    "\nAssistant:",
    "' OR 1=1 --",
    "../../etc/passwd",
    "*",
    "gemma-*",
    "/",
    "a" * 129,
    "a" * 201,
    "a" * 4097,
]


def mostly(
    likely: SearchStrategy[Any], other: SearchStrategy[Any], tenths: int = 7
) -> SearchStrategy[Any]:
    """`likely` in about `tenths` draws of ten, else `other`."""
    choice = st.sampled_from([True] * tenths + [False] * (10 - tenths))
    return choice.flatmap(lambda pick: likely if pick else other)


def lone_surrogates() -> SearchStrategy[str]:
    surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    return st.tuples(st.text(max_size=4), surrogate, st.text(max_size=4)).map("".join)


def odd_text() -> SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(SPECIAL_STRINGS),
        lone_surrogates(),
        st.tuples(st.sampled_from("a \x00\u65e5\U0001f600"), st.integers(300, 20_000)).map(
            lambda t: t[0] * t[1]
        ),
    )


def odd_numbers() -> SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(BIG_INTS),
        st.integers(),
        st.floats(),  # NaN and +-Infinity become raw tokens
        st.sampled_from([1e308, -1e308, 5e-324, -0.0, 0.5, 2.5]),
        st.sampled_from(RAW_TOKENS),
    )


def odd_scalars() -> SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), odd_numbers(), odd_text())


def junk() -> SearchStrategy[Any]:
    """Arbitrary JSON (and Raw tokens): scalars, lists and objects nested a few deep."""
    keys = st.one_of(st.text(max_size=8), st.sampled_from(SPECIAL_STRINGS), lone_surrogates())
    return st.recursive(
        odd_scalars(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=10,
    )


@st.composite
def shaped(
    draw: st.DrawFn,
    fields: dict[str, SearchStrategy[Any]],
    required: tuple[str, ...] = (),
    nested: bool = False,
) -> dict[str, Any]:
    """A valid object (the required fields and some optional ones), then up to three
    fields replaced with junk, removed, or added under an unknown name. A third of top
    level objects (four in five `nested` ones) stay valid, so valid requests run too."""
    body = {k: draw(s) for k, s in fields.items() if k in required or draw(st.booleans())}
    mutations = [0, 0, 0, 0, 1] if nested else [0, 0, 1, 1, 2, 3]
    for _ in range(draw(st.sampled_from(mutations))):
        name = draw(st.sampled_from(sorted(fields)) | st.text(max_size=8))
        if draw(st.integers(0, 4)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(st.one_of(odd_scalars(), junk()))
    return body


RAW_BODIES = [
    b"",
    b" ",
    b"\x00",
    b"{",
    b"}",
    b"null",
    b"[]",
    b"{}",
    b'""',
    b"NaN",
    b'{"a": 1, "a": 2}',
    b"\xef\xbb\xbf{}",
    b"\xff\xfe{\x00}\x00",
    b'{"model": "\\ud800"}',
    b'{"model": "\xc3\x28"}',
    b'{"model": "gemma-3-270m"} trailing',
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
]


@st.composite
def truncated(draw: st.DrawFn, objects: SearchStrategy[dict[str, Any]]) -> bytes:
    raw = encode(draw(objects))
    return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]


def bodies(objects: SearchStrategy[dict[str, Any]]) -> SearchStrategy[bytes]:
    """Mostly (7 in 10) `objects` as JSON, escaped or raw UTF-8; else junk or not JSON."""
    as_json = st.tuples(objects, st.booleans()).map(lambda t: encode(*t))
    other = st.one_of(
        junk().map(encode),
        st.sampled_from(RAW_BODIES),
        st.binary(max_size=64),
        truncated(objects),
    )
    # sampled_from is uniform over its list (one_of would merge repeated branches).
    return st.sampled_from([True] * 7 + [False] * 3).flatmap(lambda j: as_json if j else other)


# Header values an HTTP/1.1 client may send: visible ASCII and latin-1 bytes, with
# spaces and tabs inside only (h11 refuses the rest before anything is sent).
_HEADER_BYTE = st.sampled_from([bytes([b]) for b in [*range(0x21, 0x7F), *range(0x80, 0x100)]])
_HEADER_INNER = st.sampled_from([b" ", b"\t"]) | _HEADER_BYTE


@st.composite
def header_value(draw: st.DrawFn, plausible: list[str]) -> bytes:
    pick_plausible = draw(st.booleans())
    if plausible and pick_plausible:
        return draw(st.sampled_from(plausible)).encode("latin-1")
    first = draw(_HEADER_BYTE)
    inner = b"".join(draw(st.lists(_HEADER_INNER, max_size=40)))
    last = draw(_HEADER_BYTE)
    return (first + inner + last) if draw(st.booleans()) else first


PLAUSIBLE_HEADERS = {
    "x-inferplane-data-class": ["confidential", "restricted", "public", "CONFIDENTIAL", "none"],
    "x-inferplane-region": ["eu-west", "us-east", "EU-WEST", "*", ".."],
    "x-inferplane-timeout": [
        "0",
        "-1",
        "1e-300",
        "0.000001",
        "1e9",
        "1e999",
        "nan",
        "inf",
        "-inf",
        "0x10",
        "30",
        "1_0",
    ],
    "cache-control": ["no-cache", "no-store", "no-cache, no-store", "max-age=abc", "NO-CACHE"],
    "x-request-id": ["my-trace", "a" * 128, "a" * 129, "a b", "..", "\xe9t\xe9"],
    "content-type": ["application/json", "text/plain", "application/x-www-form-urlencoded"],
}


def odd_headers() -> SearchStrategy[list[tuple[str, bytes]]]:
    """0 to 4 of the gateway's request headers (a name may repeat), with odd values."""
    one = st.sampled_from(sorted(PLAUSIBLE_HEADERS)).flatmap(
        lambda name: st.tuples(st.just(name), header_value(PLAUSIBLE_HEADERS[name]))
    )
    return st.lists(one, max_size=4)


def odd_authorization(secret: str) -> SearchStrategy[bytes]:
    s = secret.encode()
    return st.one_of(
        st.sampled_from(
            [
                b"Bearer",
                b"Bearer\t" + s,
                b"bearer " + s,
                b"BEARER  " + s,
                b"Bearer " + s + b"x",
                b"Bearer " + s[:-1],
                b"Basic " + s,
                b"Bearer \xe9\xff",
                b"Bearer " + b"x" * 10_000,
                b"Token " + s,
            ]
        ),
        header_value([]),
    )


_ID_SPECIALS = [
    ".",
    "..",
    "%2e%2e",
    "%2E",
    "/",
    "a/b",
    "a%2Fb",
    "%2F",
    "%00",
    "%0A",
    "%ff",
    "%c0%ae%c0%ae",
    "%",
    "%zz",
    "%25",
    "%20",
    ";",
    "~",
    "key_",
    "org_",
    "team_",
    "null",
    "%F0%9F%98%80",
    "%ED%A0%80",
    "a" * 5000,
]


def path_ids() -> SearchStrategy[str]:
    """A path segment as sent: percent-encoded text, or raw odd forms (`/`, `..`, `%zz`)."""
    return st.one_of(
        st.text(min_size=1, max_size=30).map(lambda t: quote(t, safe="")),
        st.sampled_from(_ID_SPECIALS),
        st.text(alphabet="abc-_.:~!$&'()*+,;=@", min_size=1, max_size=20),
    )


@st.composite
def query_pairs(draw: st.DrawFn, params: dict[str, SearchStrategy[str]]) -> list[tuple[str, str]]:
    """Each known parameter in one example of three (its value mostly plausible), then
    up to two more: a known name again (a duplicate) or an unknown one, odd values."""
    odd = st.one_of(
        st.text(max_size=24),
        st.sampled_from([t for t in SPECIAL_STRINGS if len(t) < 300]),
        st.tuples(st.sampled_from("a \x00\u65e5\U0001f600"), st.integers(100, 600)).map(
            lambda t: t[0] * t[1]
        ),
    )
    pairs = [
        (name, draw(mostly(values, odd, 8)))
        for name, values in params.items()
        if draw(st.sampled_from([True, False, False]))
    ]
    names = st.sampled_from(sorted(params)) if params else st.text(max_size=6)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        pairs.append((draw(mostly(names, st.text(max_size=6), 5)), draw(odd)))
    return list(draw(st.permutations(pairs)))


# -- inferplane's requests --------------------------------------------------------------

LLM, EMB, REMOTE = "gemma-3-270m", "all-minilm-l6-v2", "fuzz-remote"
ADMIN_KEY_ID = "key_admin"  # the bootstrap admin key: never patched, rotated or revoked

ROLES = ["system", "developer", "user", "assistant", "tool"]
EDGE_DATES = [
    "2099-01-01T00:00:00Z",
    "2001-01-01T00:00:00",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59+05:00",
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T00:00:00-05:00",
    "0001-01-01",
    "9999-12-31",
    "2099-02-30",
    "2099-01-01T25:00:00Z",
    "2099-01-01T00:00:00+24:00",
    "now",
    "1e20",
    "-1",
    "253402300800",
    "-62135596801",
]
DATES = mostly(
    st.sampled_from(EDGE_DATES),
    st.datetimes().map(lambda d: d.isoformat())
    | st.tuples(st.datetimes(), st.sampled_from(["Z", "+14:00", "-12:00", "+23:59"])).map(
        lambda t: t[0].isoformat() + t[1]
    ),
    6,
)


def _part() -> st.SearchStrategy[dict[str, Any]]:
    text = {"type": st.just("text"), "text": st.text(max_size=20)}
    return shaped(text, ("type", "text"), nested=True)


def _messages() -> st.SearchStrategy[list[Any]]:
    content = st.one_of(st.text(max_size=40), st.lists(_part(), min_size=1, max_size=3), st.none())
    message = shaped(
        {"role": st.sampled_from(ROLES), "content": content, "name": st.text(max_size=8)},
        ("role", "content"),
        nested=True,
    )
    return st.lists(message, min_size=1, max_size=3)


def _sampling(models: list[str]) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "model": st.sampled_from(models),
        "max_tokens": st.integers(1, 2),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(0, 2**31),
        "stop": st.text(min_size=1, max_size=5)
        | st.lists(st.text(min_size=1, max_size=5), max_size=4),
        "n": st.just(1),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "stream": st.booleans(),
        "user": st.text(max_size=10),
    }


@st.composite
def with_stream_options(draw: st.DrawFn, objects: st.SearchStrategy[dict[str, Any]]) -> Any:
    """`stream_options` where `stream` is true (elsewhere it is refused)."""
    body = draw(objects)
    if body.get("stream") is True and draw(st.booleans()):
        body["stream_options"] = draw(shaped({"include_usage": st.booleans()}, nested=True))
    return body


GEN_MODELS = [LLM, LLM, LLM, REMOTE, REMOTE, EMB, "no-such-model"]
CHAT = with_stream_options(
    shaped(
        {
            **_sampling(GEN_MODELS),
            "messages": _messages(),
            "max_completion_tokens": st.integers(1, 2),
        },
        ("model", "messages"),
    )
)
COMPLETION = with_stream_options(
    shaped(
        {
            **_sampling(GEN_MODELS),
            "prompt": st.text(max_size=40) | st.lists(st.text(max_size=40), min_size=1, max_size=1),
            "echo": st.booleans(),
        },
        ("model", "prompt"),
    )
)
EMBEDDING = shaped(
    {
        "model": st.sampled_from([EMB, EMB, EMB, LLM, REMOTE, "no-such-model"]),
        "input": st.text(max_size=40) | st.lists(st.text(max_size=40), min_size=1, max_size=4),
        "encoding_format": st.sampled_from(["float", "base64"]),
        "dimensions": st.just(384),
        "user": st.text(max_size=10),
    },
    ("model", "input"),
)


@st.composite
def data_plane_key(draw: st.DrawFn) -> str | bytes | None:
    """Mostly the capped key; sometimes the remote-only one, none, or a malformed header."""
    choice = draw(st.sampled_from(["capped"] * 6 + ["remote"] * 2 + ["none", "odd"]))
    if choice in ("capped", "remote"):
        return choice
    return None if choice == "none" else draw(odd_authorization("<SECRET>"))


@st.composite
def admin_key(draw: st.DrawFn) -> str | bytes | None:
    """Mostly the admin key; sometimes a user key (403), none, or a malformed header."""
    choice = draw(st.sampled_from(["admin"] * 8 + ["capped", "odd"]))
    if choice != "odd":
        return choice
    return draw(st.none() | odd_authorization("<SECRET>"))


MODEL_IDS = mostly(st.sampled_from([LLM, EMB, REMOTE, "no-such-model"]), path_ids(), 5)
LIST_QUERY = {
    "limit": st.sampled_from(["1", "20", "100", "0", "101", "-1", "1.5", "1e3", "9" * 30, ""]),
    "after": st.sampled_from(["", "org_", "team_", "key_admin", "a" * 64, "a" * 65, "<ORG>"]),
}


NAME = st.text(min_size=1, max_size=20)
LIMITS = shaped(
    {
        "rpm": st.integers(1, 10**9),
        "tpm": st.integers(1, 10**9),
        "max_parallel": st.integers(1, 100),
        "max_tokens": st.integers(1, 4096),
        "cache": st.sampled_from(["off", "deterministic", "all"]),
    },
    nested=True,
)
BUDGET = shaped(
    {
        "usd": st.floats(0.01, 1e9),
        "period": st.sampled_from(["day", "week", "month", "total"]),
        "soft_pct": st.integers(1, 100),
    },
    ("usd",),
    nested=True,
)
METADATA = st.dictionaries(
    mostly(st.just("data_class"), st.text(max_size=6), 3),
    mostly(st.sampled_from(["confidential", "restricted", "public"]), st.text(max_size=6), 5),
    max_size=3,
)
TEAM_FIELDS = {
    "name": NAME,
    "limits": LIMITS,
    "budget": BUDGET,
    "weight": st.floats(0.01, 1000),
    "metadata": METADATA,
}
TEAM = shaped({**TEAM_FIELDS, "org_id": st.just("<ORG>")}, ("name", "org_id"))
KEY_FIELDS = {
    "name": NAME,
    "models": st.lists(st.sampled_from([LLM, "gemma-*", "*", REMOTE]) | NAME, max_size=3),
    "limits": LIMITS,
    "budget": BUDGET,
    "expires_at": st.just("2099-01-01T00:00:00Z") | DATES,
    "priority": st.sampled_from(["interactive", "batch"]),
    "metadata": METADATA,
}
KEY = shaped(
    {**KEY_FIELDS, "team_id": st.sampled_from(["<TEAM>", None]), "role": st.just("user")},
    ("name",),
)
KEY_UPDATE = shaped(KEY_FIELDS)
ROTATE = shaped({"grace_seconds": st.integers(0, 30 * 86400)})
PRICE = shaped(
    {
        "input_per_million": st.floats(0, 1000),
        "output_per_million": st.floats(0, 1000),
        "per_request": st.floats(0, 1),
    },
    nested=True,
)


GROUPS = ["org", "team", "key", "user", "model", "deployment", "endpoint", "status"]
USAGE_QUERY = {
    "group_by": st.one_of(
        st.lists(st.sampled_from(GROUPS), max_size=4).map(",".join),
        st.sampled_from(["team,team", ",", "team,,model", " team ", "nope", "TEAM"]),
    ),
    "from": DATES,
    "to": DATES,
    "granularity": st.sampled_from(["hour", "day", "month", "week", ""]),
    "org_id": st.sampled_from(["<ORG>", "org_x"]),
    "team_id": st.sampled_from(["<TEAM>", "team_x"]),
    "key_id": st.sampled_from([ADMIN_KEY_ID, "key_x"]),
    "model": st.sampled_from([LLM, REMOTE, EMB]),
    "user": st.text(max_size=8),
    "format": st.sampled_from(["json", "csv", "CSV", "xml", ""]),
}


TENANT_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": REMOTE, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"model": LLM, "prompt": "The sky is", "temperature": 0}),
    ("/v1/completions", {"model": REMOTE, "prompt": "hi", "stream": True}),
    ("/v1/embeddings", {"model": EMB, "input": ["hi", "there"]}),
]


NAME_CHARS = "abcXYZ019._:/-"
DEPLOYMENT_FIELDS = {
    "alias": st.sampled_from(["fuzz-dep", "fuzz-dep-2", EMB]),
    "engine": st.sampled_from(["openai_compatible", "anthropic"]),
    "base_url": st.sampled_from(["<UPSTREAM>", "http://127.0.0.1:1/v1", "https://127.0.0.1:1"]),
    "model": st.text(min_size=1, max_size=10),
    "api_key": st.text(min_size=1, max_size=10),
    "tags": st.lists(st.sampled_from(["private", "large", "x"]), max_size=2),
    "region": st.sampled_from(["eu-west", "us-east"]),
    "weight": st.floats(0, 1e6),
    "price": PRICE,
    "timeout_s": st.floats(0.01, 3600),
    "connect_timeout_s": st.floats(0.01, 60),
    "context_size": st.integers(16, 10**6),
    "max_connections": st.integers(1, 10_000),
    "api_key_env": st.sampled_from(["FUZZ_UNSET_VARIABLE", "HOME", "1BAD"]),
}
DEPLOYMENT = shaped(
    {
        **DEPLOYMENT_FIELDS,
        "name": st.text(alphabet=NAME_CHARS, min_size=1, max_size=12).map("fz-".__add__),
    },
    ("alias", "name", "engine", "base_url", "model"),
)
DEPLOYMENT_CHANGE = shaped(DEPLOYMENT_FIELDS)  # a PATCH: what changes
# Local deployments: mostly a model that cannot load (its worker starts, fails, and
# nothing is kept), sometimes the bundled gemma with a small context (a worker loads).
_LOCAL = {
    "alias": st.just("fuzz-dep"),
    "name": st.just("fz-local"),
    "engine": st.just("llamacpp"),
    "parallel": st.integers(1, 2),
    "context_size": st.integers(16, 256),
}
LOCAL_DEPLOYMENT = mostly(
    shaped(
        {**_LOCAL, "path": st.sampled_from(["/nonexistent/model.gguf", "/etc/hostname", "/"])},
        ("alias", "name", "engine", "path"),
    ),
    shaped(
        {**_LOCAL, "bundled": st.just("gemma3-270m-q4-k-m")}, ("alias", "name", "engine", "bundled")
    ),
    7,
)
READ_ONLY = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/models",
    "/admin/v1/workers",
    "/admin/v1/deployments",
    "/admin/v1/pricing",
    "/admin/v1/orgs",
]


ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/{id}",
    "/admin/v1/orgs",
    "/admin/v1/orgs/{id}",
    "/admin/v1/teams",
    "/admin/v1/teams/{id}",
    "/admin/v1/keys",
    "/admin/v1/keys/{id}",
    "/admin/v1/keys/{id}/rotate",
    "/admin/v1/pricing",
    "/admin/v1/pricing/{id}",
    "/admin/v1/usage",
    "/admin/v1/workers",
    "/admin/v1/deployments",
    "/admin/v1/deployments/{id}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/{id}",
    "/v1/{id}",
    "/admin/v1/{id}",
]


# Malformed HTTP, below what an HTTP client will send (sent over a raw socket).

_LINE_BYTES = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HEAD_TARGETS = [
    b"/healthz",
    b"/v1/models",
    b"/v1/chat/completions",
    b"/admin/v1/keys",
    b"/v1/models/\xff",
    b"/%zz",
    b"*",
    b"http://127.0.0.1/v1/models",
    b"",
]
HEAD_HEADERS = [
    b"Authorization",
    b"x-request-id",
    b"x-inferplane-timeout",
    b"X Bad",
    b"\xff",
    b"",
]
HEAD_VALUES = [b"Bearer <SECRET>", b"chunked", b"5", b"-1", b"0x5", b"\x00", b"\x7f", b"\xff\xfe"]


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request head with odd bytes in its method, target and header lines, then a
    body that fits what it declares (so the server never waits for more)."""
    method = draw(st.sampled_from([b"GET", b"POST", b"DELETE", b"BREW", b"get", b""]))
    target = draw(st.sampled_from(HEAD_TARGETS)) + draw(_LINE_BYTES)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1.1 x"]))
    name = st.sampled_from(HEAD_HEADERS) | _LINE_BYTES
    value = st.sampled_from(HEAD_VALUES) | _LINE_BYTES
    lines = [
        b"Host: 127.0.0.1",
        *[n + b": " + v for n, v in draw(st.lists(st.tuples(name, value), max_size=4))],
    ]
    body = draw(st.sampled_from([b"", b"{}", b'{"model": "gemma-3-270m"}']))
    framing = draw(st.sampled_from(["length", "two-lengths", "chunked", "bad-chunk", "none"]))
    if framing in ("length", "two-lengths"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    if framing == "two-lengths":
        lines.append(b"Content-Length: 0")
    elif framing in ("chunked", "bad-chunk"):
        lines.append(b"Transfer-Encoding: chunked")
        size = b"%x" % len(body) if framing == "chunked" else b"zz"
        body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    lines.append(b"Connection: close")
    return (
        method + b" " + target + b" " + version + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body
    )
