"""`policy:` in the config file: where data may go, as closed vocabularies.

A restriction fails closed: a data class or region that is not in the vocabulary is
refused (400 on a request, 400 when an admin stores it in a key's or team's metadata),
never read as "no restriction". Values are compared after trimming and lowercasing.

Upstream URLs (`check_upstream`): http(s) with a host and nothing else (no credentials,
query or fragment); link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
100.100.100.200, fd00:ec2::254, their well-known names) are refused unless
`allow_link_local_upstreams`, and with `upstream_hosts` set, so is every host no pattern
matches. Checked when a deployment is configured, without a DNS lookup (nothing is sent
anywhere), and again on the address each connection reaches (`peer_allowed`), so a name
that resolves to a metadata address is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from fnmatch import fnmatchcase
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Lowercase words: what a header, key metadata or a deployment's region may spell.
PolicyWord = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
HostPattern = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9*.:\[\]-]+$")]

DEFAULT_DATA_CLASSES: dict[str, list[str]] = {
    "public": [],
    "internal": [],
    "confidential": ["private"],
    "restricted": ["private"],
}


def normalize(value: str) -> str:
    """How every policy value is compared: trimmed, lowercase."""
    return value.strip().lower()


_METADATA_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local: AWS, GCP, Azure, OCI metadata at 169.254.169.254
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
    )
)
_NEVER_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "::/128", "ff00::/8")
)
_METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
    }
)


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Least to most sensitive; each class sends data only to deployments carrying every
    # tag listed for it. A request's class is the strictest of its header
    # (x-inferplane-data-class), its key's and its team's metadata `data_class`.
    data_classes: Annotated[dict[PolicyWord, list[PolicyWord]], Field(min_length=1)] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_DATA_CLASSES.items()}
    )
    # The regions deployments and callers (x-inferplane-region) may name; unset: any
    # region name (an unknown one then matches only deployments without a region).
    regions: list[PolicyWord] | None = None
    # Hosts remote deployments may point at (fnmatch patterns: "*.internal", "10.0.0.*",
    # "api.openai.com"); unset: any host but link-local and cloud metadata addresses.
    upstream_hosts: list[HostPattern] | None = None
    allow_link_local_upstreams: bool = False

    @field_validator("data_classes", "regions", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        if isinstance(value, dict):
            return {normalize(k) if isinstance(k, str) else k: v for k, v in value.items()}
        if isinstance(value, list):
            return [normalize(v) if isinstance(v, str) else v for v in value]
        return value


def check_upstream(policy: PolicySettings, url: str) -> None:
    """Refuse (ValueError) a deployment URL the policy does not allow."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("base_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("base_url must not carry credentials; use api_key")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not have a query or fragment")
    try:
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise ValueError("base_url has an invalid port") from None
    if not policy.allow_link_local_upstreams and host in _METADATA_NAMES:
        raise ValueError(f"base_url host '{host}' is a cloud metadata service")
    address = _literal_address(host)
    if address is not None and not peer_allowed(policy, str(address)):
        raise ValueError(f"base_url address '{host}' is link-local or not routable")
    patterns = policy.upstream_hosts
    if patterns is not None and not any(fnmatchcase(host, p.lower()) for p in patterns):
        raise ValueError(f"base_url host '{host}' is not in policy.upstream_hosts")


def peer_allowed(policy: PolicySettings, address: str) -> bool:
    """Whether a connection may go to this IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    if any(ip in net for net in _NEVER_NETS):
        return False
    link_local = any(ip in net for net in _METADATA_NETS)
    return policy.allow_link_local_upstreams or not link_local


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a URL host spells, in any form the system resolver takes without a lookup
    (inet_aton also reads 2852039166, 0xa9fea9fe, 169.254.43518), or None for a name."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        pass
    try:
        return ipaddress.IPv6Address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
