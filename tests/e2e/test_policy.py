"""The data policy fails closed, end to end: data classes and regions are closed
vocabularies compared after trimming and lowercasing; anything else is refused, never
read as public. Two deployments of one alias on the bench's fast upstream: `external`
(weight 1000) and `private` (weight 1), so a request the policy does not hold back goes
external almost always, and one it holds back can only go private."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, running_server
from tests.e2e.upstreams import fast_upstream

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def _config(tmp: Path, url: str, policy: str = "") -> Path:
    config = tmp / "inferplane.yaml"
    config.write_text(
        f"""{policy}
models:
  - id: chat
    deployments:
      - name: external
        engine: openai_compatible
        base_url: {url}
        model: fast
        tags: [external]
        region: US-East
        weight: 1000
      - name: private
        engine: openai_compatible
        base_url: {url}
        model: fast
        tags: [private]
        region: eu-west
        weight: 1
"""
    )
    return config


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with fast_upstream() as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("policy")
    with running_server(tmp / "data", config=_config(tmp, upstream)) as srv:
        yield srv


def _served_by(server: Server, key: str | None = None, **headers: str) -> str:
    with server.http(key) as http:
        resp = http.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-inferplane-deployment"]


def _refusal(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    return error


def _key(server: Server, **body: Any) -> httpx.Response:
    with server.http() as http:
        return http.post("/admin/v1/keys", json={"name": "k", **body})


@pytest.mark.parametrize(
    "spelling", ["confidential", "Confidential", "CONFIDENTIAL", "cOnFiDeNtIaL", "Restricted"]
)
def test_every_spelling_of_a_class_holds_it_back(server: Server, spelling: str) -> None:
    assert {_served_by(server, **{"x-inferplane-data-class": spelling}) for _ in range(5)} == {
        "private"
    }


def test_public_requests_still_go_anywhere(server: Server) -> None:
    assert _served_by(server, **{"x-inferplane-data-class": "Public"}) == "external"
    assert _served_by(server) == "external"


@pytest.mark.parametrize("value", ["confidentia1", "secret", "", "public,confidential"])
def test_an_unknown_class_is_refused_naming_it(server: Server, value: str) -> None:
    with server.http() as http:
        resp = http.post(
            "/v1/chat/completions", json=CHAT, headers={"x-inferplane-data-class": value}
        )
    error = _refusal(resp, 400)
    assert error["code"] == "invalid_data_class"
    assert error["param"] == "x-inferplane-data-class"
    assert repr(value) in error["message"]


def test_a_class_sent_twice_is_refused(server: Server) -> None:
    with server.http() as http:
        headers = [("x-inferplane-data-class", "public"), ("x-inferplane-data-class", "secret")]
        resp = http.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert _refusal(resp, 400)["param"] == "x-inferplane-data-class"


def test_key_metadata_class_is_validated_and_normalized(server: Server) -> None:
    created = _key(server, metadata={"data_class": " Confidential"})
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["data_class"] == "confidential"
    key = created.json()["key"]
    # The header cannot loosen what the key's metadata requires.
    assert _served_by(server, key, **{"x-inferplane-data-class": "public"}) == "private"
    for bad in ("Secret", "confidentia1"):
        error = _refusal(_key(server, metadata={"data_class": bad}), 400)
        assert (error["code"], error["param"]) == ("invalid_data_class", "metadata.data_class")
    with server.http() as http:
        patched = http.patch(
            f"/admin/v1/keys/{created.json()['id']}", json={"metadata": {"data_class": "nope"}}
        )
    assert _refusal(patched, 400)["code"] == "invalid_data_class"


def test_team_metadata_class_applies_to_its_keys(server: Server) -> None:
    with server.http() as http:
        org = http.post("/admin/v1/orgs", json={"name": "policy-org"}).json()
        bad = http.post(
            "/admin/v1/teams",
            json={"name": "t", "org_id": org["id"], "metadata": {"data_class": "top-secret"}},
        )
        assert _refusal(bad, 400)["param"] == "metadata.data_class"
        team = http.post(
            "/admin/v1/teams",
            json={"name": "t", "org_id": org["id"], "metadata": {"data_class": "RESTRICTED"}},
        ).json()
    key = _key(server, team_id=team["id"]).json()["key"]
    assert {_served_by(server, key) for _ in range(5)} == {"private"}


def test_regions_compare_case_insensitively(server: Server) -> None:
    assert _served_by(server, **{"x-inferplane-region": "EU-West"}) == "private"
    assert _served_by(server, **{"x-inferplane-region": "us-east"}) == "external"
    with server.http() as http:
        resp = http.post(
            "/v1/chat/completions", json=CHAT, headers={"x-inferplane-region": "eu west!"}
        )
    assert _refusal(resp, 400)["code"] == "invalid_region"


def test_configured_vocabularies(tmp_path: Path, upstream: str) -> None:
    """A custom vocabulary replaces the default; a region list closes regions; a key
    whose stored class the vocabulary no longer has is refused (403), not let through."""
    data = tmp_path / "data"
    with running_server(data, config=_config(tmp_path, upstream)) as srv:
        key = _key(srv, metadata={"data_class": "restricted"}).json()["key"]
    policy = """
policy:
  data_classes: {open: [], Pii: [private]}
  regions: [eu-west, us-east]
"""
    with running_server(data, config=_config(tmp_path, upstream, policy)) as srv:
        assert _served_by(srv, **{"x-inferplane-data-class": "PII"}) == "private"
        with srv.http() as http:
            old = http.post(
                "/v1/chat/completions", json=CHAT, headers={"x-inferplane-data-class": "public"}
            )
            assert _refusal(old, 400)["code"] == "invalid_data_class"
            far = http.post(
                "/v1/chat/completions", json=CHAT, headers={"x-inferplane-region": "ap-south"}
            )
            assert _refusal(far, 400)["code"] == "invalid_region"
        with srv.http(key) as http:
            stale = http.post("/v1/chat/completions", json=CHAT)
        assert _refusal(stale, 403)["code"] == "invalid_data_class"
