"""The data policy: closed vocabularies, and where remote deployments may point.
Nothing here sends traffic: URLs are refused by what they spell."""

from __future__ import annotations

import pytest

from inferplane.config.policy import PolicySettings, check_upstream, peer_allowed
from inferplane.errors import InvalidRequest, PermissionDenied
from inferplane.routing.policy import DataPolicy

DEFAULT = PolicySettings()


def test_data_classes_are_closed_and_normalized() -> None:
    policy = DataPolicy(DEFAULT)
    assert policy.data_class(" Confidential ", param="h") == "confidential"
    assert policy.data_class(None, param="h") is None
    for unknown in ("confidentia1", "secret", "", "publik"):
        with pytest.raises(InvalidRequest) as err:
            policy.data_class(unknown, param="h")
        assert (err.value.code, err.value.param) == ("invalid_data_class", "h")
    assert policy.needs("restricted") == {"private"}
    assert policy.needs(None) == frozenset()


def test_the_strictest_class_wins_and_a_stale_one_refuses() -> None:
    policy = DataPolicy(DEFAULT)
    assert policy.strictest("public", "confidential", None) == "confidential"
    assert policy.strictest("restricted", "confidential") == "restricted"
    assert policy.strictest(None, None) is None
    with pytest.raises(PermissionDenied):  # a stored class the vocabulary lost
        policy.strictest("public", "made-up")


def test_a_configured_vocabulary_and_regions() -> None:
    policy = DataPolicy(
        PolicySettings.model_validate(
            {"data_classes": {"Open": [], "PII": ["private", "eu"]}, "regions": ["EU-West"]}
        )
    )
    assert policy.data_classes == ["open", "pii"]
    assert policy.needs("pii") == {"private", "eu"}
    assert policy.region("eu-WEST", param="r") == "eu-west"
    with pytest.raises(InvalidRequest):
        policy.region("us-east", param="r")
    with pytest.raises(InvalidRequest):
        policy.data_class("public", param="h")
    # Without a region list any well-formed name passes (it only narrows routing).
    assert DataPolicy(DEFAULT).region("ap-south", param="r") == "ap-south"
    with pytest.raises(InvalidRequest):
        DataPolicy(DEFAULT).region("eu west", param="r")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://169.254.170.2/v1",
        "http://[fe80::1]:8080/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://[fd00:ec2::254]/v1",
        "http://100.100.100.200/v1",
        "http://2852039166/v1",  # 169.254.169.254 as one number
        "http://0xa9fea9fe/v1",
        "http://169.254.43518/v1",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://METADATA/v1",
        "http://0.0.0.0:8000/v1",
        "ftp://127.0.0.1/v1",
        "127.0.0.1:8080/v1",
        "http:///v1",
        "http://user:secret@127.0.0.1:8000/v1",
        "http://127.0.0.1:8000/v1?x=1",
        "http://127.0.0.1:99999/v1",
    ],
)
def test_upstream_urls_refused_by_default(url: str) -> None:
    with pytest.raises(ValueError):
        check_upstream(DEFAULT, url)


def test_upstream_urls_allowed() -> None:
    for url in ("http://127.0.0.1:8000/v1", "https://api.example.com/v1", "http://[::1]:80/"):
        check_upstream(DEFAULT, url)
    opened = PolicySettings(allow_link_local_upstreams=True)
    check_upstream(opened, "http://169.254.169.254/v1")
    listed = PolicySettings(upstream_hosts=["*.internal", "127.0.0.1"])
    check_upstream(listed, "http://vllm.internal:8000/v1")
    check_upstream(listed, "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="upstream_hosts"):
        check_upstream(listed, "http://localhost:9/v1")


def test_peer_addresses() -> None:
    assert peer_allowed(DEFAULT, "127.0.0.1")
    assert peer_allowed(DEFAULT, "10.1.2.3")
    assert not peer_allowed(DEFAULT, "169.254.169.254")
    assert not peer_allowed(DEFAULT, "::ffff:169.254.169.254")
    assert not peer_allowed(DEFAULT, "fe80::1%eth0")
    assert not peer_allowed(DEFAULT, "not an address")
    assert peer_allowed(PolicySettings(allow_link_local_upstreams=True), "169.254.169.254")
