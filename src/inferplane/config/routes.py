"""Aliases: a public model id served by a group of deployments (local or remote).

A `models:` entry with `deployments:` is an alias; a plain local model entry is the
one-deployment case of it. Local deployments are declared like local models, named
with `name` instead of `id`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from inferplane.limits.policy import Limits
from inferplane.limits.pricing import Price

# Model ids, alias ids, deployment names and tags: URL-safe, so each can be addressed as
# one path segment (/v1/models/{id}, /admin/v1/deployments/{name}); no `/`, no leading dot.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=NAME_PATTERN)]
# A provider's API key: visible ASCII only (it goes into a request header: no CR/LF).
PROVIDER_KEY_PATTERN = r"^[\x21-\x7e]+$"
ProviderKey = Annotated[str, Field(min_length=1, max_length=4096, pattern=PROVIDER_KEY_PATTERN)]
Strategy = Literal["weighted", "least_busy", "latency", "cost"]
RemoteEngine = Literal["openai_compatible", "anthropic"]
REMOTE_ENGINES = ("openai_compatible", "anthropic")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Routing(_Strict):
    """What routing reads of a deployment, local or remote."""

    tags: list[Name] = Field(default_factory=list)  # e.g. private, external
    region: Name | None = None
    weight: Annotated[float, Field(ge=0, le=1_000_000)] = 1.0
    # What the deployment costs the organisation (the `cost` strategy orders by it).
    price: Price | None = None


class RemoteDeployment(Routing):
    """A model served elsewhere, over HTTP."""

    name: Name
    engine: RemoteEngine
    # http(s) with a host (`routing.policy` also checks it against the config's policy).
    base_url: Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s]+$")]
    model: Annotated[str, Field(min_length=1, max_length=256)]  # the upstream's model name
    # The API key is read from this environment variable at start-up; never from the file.
    api_key_env: str | None = None
    # Per attempt: the longest wait for the first token (for a non-streaming call, for the
    # whole answer), and for each later piece of a stream. Past it, the next deployment.
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    context_size: Annotated[int, Field(ge=16)] | None = None
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 100
    # The longest answer read from it: a whole body, or all of one stream. Past it the
    # answer is dropped (502, not counted against the deployment's health).
    max_response_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 32 << 20

    @model_validator(mode="after")
    def _check_env(self) -> RemoteDeployment:
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise ValueError("api_key_env must name an environment variable")
        return self


def _deployment_kind(value: Any) -> str:
    engine = value.get("engine") if isinstance(value, dict) else getattr(value, "engine", None)
    return "remote" if engine in REMOTE_ENGINES else "local"


class ComplexityClassifierSpec(_Strict):
    """A small local embedding model decides whether a request needs a large model: the
    request's final user turn is compared with examples of each kind (defaults: generic
    English prompts, `routing.complexity`)."""

    embedding_model: Name  # a local model of this config with engine sentence_transformers
    large: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    small: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    # "large" when its examples' similarity beats the small ones' by more than this.
    margin: Annotated[float, Field(ge=-1, le=1)] = 0.0


class AliasSpec(_Strict):
    """`models:` entry with deployments: callers send `id`; routing picks a deployment."""

    id: Name
    strategy: Strategy = "weighted"
    fallbacks: list[Name] = Field(default_factory=list)  # aliases tried after this one
    # Declared as local model specs (engine llamacpp / sentence_transformers) or remote
    # deployments (engine openai_compatible / anthropic).
    deployments: Annotated[
        list[
            Annotated[
                Annotated[dict[str, Any], Tag("local")]
                | Annotated[RemoteDeployment, Tag("remote")],
                Discriminator(_deployment_kind),
            ]
        ],
        Field(min_length=1),
    ]
    # Attempts in all (first try, retries and fallbacks), and the deadline for the first
    # token over all of them (an attempt still waiting at the deadline is abandoned).
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    deadline_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Retry backoff: base * 2^n with full jitter, capped; an upstream's Retry-After wins.
    backoff_base_s: Annotated[float, Field(ge=0, le=60)] = 0.05
    backoff_max_s: Annotated[float, Field(ge=0, le=300)] = 2.0
    # Circuit breaker: this many failures in a row open it; after `cooldown_s` one probe
    # request may pass (half-open); its success closes the breaker.
    breaker_failures: Annotated[int, Field(ge=1, le=1000)] = 3
    breaker_cooldown_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    # Requests whose prompt has more tokens than this prefer deployments tagged `large`.
    complexity_tokens: Annotated[int, Field(ge=1)] | None = None
    # And those a small embedding model judges complex (optional; either rule suffices).
    complexity_classifier: ComplexityClassifierSpec | None = None
    limits: Limits = Limits()
    pricing: Price | None = None  # what callers are charged (as for local models)
    default_max_tokens: Annotated[int, Field(ge=1)] = 256
    # The guardrail policy of requests to this alias (one of `guardrails.policies`).
    policy: Name | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> AliasSpec:
        names = [d["name"] if isinstance(d, dict) else d.name for d in self.deployments]
        if any(not isinstance(n, str) for n in names):
            raise ValueError("every deployment needs a 'name'")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate deployment names: {', '.join(dupes)}")
        if self.id in self.fallbacks:
            raise ValueError("an alias cannot fall back to itself")
        return self

    def local_specs(self) -> list[dict[str, Any]]:
        """Local deployments as model spec mappings (their worker id is their name)."""
        out = []
        for d in self.deployments:
            if isinstance(d, dict):
                spec = {k: v for k, v in d.items() if k != "name"}
                out.append({"id": d["name"], **spec})
        return out

    def remotes(self) -> list[RemoteDeployment]:
        return [d for d in self.deployments if isinstance(d, RemoteDeployment)]
