"""The response cache: what may be cached, under which key, and what a hit returns.

Key = SHA-256 of (tenant scope, model, endpoint, the canonical request: messages or
prompt, max_tokens, stop and every sampling parameter). The scope comes from the caller's
key alone (its organisation by default; team or key when configured), never from
anything the request says, so no header reaches another tenant's entries. The model
version is checked, not hashed: an entry records the version that produced it and
answers only while that version is among the deployments the request could be routed
to now (after its policy rules), so a new version, or one the caller may not use,
misses. A new system prompt is part of the messages, so it misses too.

By default only deterministic requests are cached (temperature 0, or a seed); the
`cache` setting of the key, else its team, else the model, else the server, says
`off`, `deterministic` or `all`. `Cache-Control: no-cache` skips the lookup, `no-store`
the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from inferplane.cache.semantic import SemanticIndex, normalised
from inferplane.cache.shared import SemanticFeed
from inferplane.cache.store import EntryStore
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.records import Principal

log = logging.getLogger(__name__)

Mode = Literal["off", "deterministic", "all"]
ScopeKind = Literal["org", "team", "key"]


@dataclass(frozen=True)
class Directives:
    """The caller's Cache-Control: `no-cache` (do not answer from the cache) and
    `no-store` (do not keep this answer)."""

    lookup: bool = True
    store: bool = True

    @classmethod
    def parse(cls, header: str | None) -> Directives:
        if not header:
            return cls()
        words = {w.strip().split("=", 1)[0].lower() for w in header.split(",")}
        return cls(lookup="no-cache" not in words, store="no-store" not in words)


@dataclass(frozen=True)
class Answer:
    """A finished generation as cached: replayed as the same events on a hit."""

    parts: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    deployment: str
    version: str
    stored_at: float  # time.time()
    cost_nusd: int  # what it cost when it was generated: a hit saves this much

    def dumps(self) -> bytes:
        return orjson.dumps(
            [
                list(self.parts),
                self.finish_reason,
                self.prompt_tokens,
                self.completion_tokens,
                self.deployment,
                self.version,
                self.stored_at,
                self.cost_nusd,
            ]
        )

    @classmethod
    def loads(cls, data: bytes) -> Answer:
        parts, finish, prompt, completion, deployment, version, at, cost = orjson.loads(data)
        return cls(tuple(parts), finish, prompt, completion, deployment, version, at, cost)


@dataclass(frozen=True)
class Hit:
    answer: Answer
    kind: Literal["hit", "semantic-hit"]
    score: float | None = None  # the similarity of a semantic hit

    @property
    def age_s(self) -> int:
        return max(0, int(time.time() - self.answer.stored_at))


@dataclass
class Lookup:
    """One request's place in the cache, decided before it runs."""

    key: str
    scope: str  # the tenant boundary the entry lives in
    model: str
    versions: frozenset[str]  # model versions that may answer it
    lookup: bool
    store: bool
    # Semantic: the partition (all but the final user turn) and that turn's text.
    partition: str | None = None
    text: str | None = None
    vector: np.ndarray | None = None  # the text's embedding, once computed


Embedder = Callable[[str], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class Semantic:
    index: SemanticIndex
    embed: Embedder
    threshold: float
    feed: SemanticFeed | None = None  # shares entries with other replicas (Redis)


class ResponseCache:
    def __init__(
        self,
        store: EntryStore,
        metrics: Metrics,
        *,
        mode: Mode = "deterministic",
        scope: ScopeKind = "org",
        ttl_s: float = 3600.0,
        hit_cost_fraction: float = 0.0,
        semantic: Semantic | None = None,
    ):
        self._store = store
        self._metrics = metrics
        self._mode = mode
        self._scope = scope
        self.ttl_s = ttl_s
        self.hit_cost_fraction = hit_cost_fraction
        self._pending: set[asyncio.Task[None]] = set()
        self._semantic = semantic

    def start(self) -> None:
        if self._semantic is not None and self._semantic.feed is not None:
            self._semantic.feed.start()

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._semantic is not None and self._semantic.feed is not None:
            await self._semantic.feed.aclose()

    def lookup(
        self,
        principal: Principal,
        model: str,
        model_mode: Mode | None,
        request: dict[str, Any],
        versions: frozenset[str],
        directives: Directives,
    ) -> Lookup | None:
        """The request's lookup, or None when policy keeps it out of the cache."""
        mode = self._mode_for(principal, model_mode)
        if mode == "off" or not (directives.lookup or directives.store):
            return None
        if request.get("logprobs") is not None:
            return None  # an answer is kept without its log probabilities
        if request.get("tools") or (request.get("n") or 1) > 1:
            return None  # an answer is kept as one text, not as tool calls or several
        if mode == "deterministic" and not _deterministic(request):
            return None
        scope = self._scope_of(principal)
        out = Lookup(
            _digest([scope, model, request]),
            scope,
            model,
            versions,
            directives.lookup,
            directives.store,
        )
        if self._semantic is not None:
            rest, text = _final_turn(request)
            if text:
                out.partition, out.text = _digest([scope, model, rest]), text
        return out

    async def get(self, lookup: Lookup) -> Hit | None:
        if not lookup.lookup:
            return None
        hit = await self._exact(lookup) or await self._nearest(lookup)
        if hit is None:
            self._metrics.cache_requests.labels(lookup.scope, lookup.model, "miss").inc()
        return hit

    async def _exact(self, lookup: Lookup) -> Hit | None:
        data = await self._store.get(lookup.key)
        answer = Answer.loads(data) if data is not None else None
        if answer is None or answer.version not in lookup.versions:
            return None
        return Hit(answer, "hit")

    async def _nearest(self, lookup: Lookup) -> Hit | None:
        sem = self._semantic
        if sem is None or lookup.partition is None or lookup.text is None:
            return None
        started = time.perf_counter()
        lookup.vector = normalised(await sem.embed(lookup.text))
        searched = time.perf_counter()
        self._metrics.cache_lookup_seconds.labels("embed").observe(searched - started)
        candidates = sem.index.search(lookup.partition, lookup.vector)
        self._metrics.cache_lookup_seconds.labels("search").observe(time.perf_counter() - searched)
        for found in candidates:
            if found.score < sem.threshold:
                break
            data = await self._store.get(found.key)
            if data is None:  # its answer expired or was evicted
                sem.index.remove(found.label)
                continue
            answer = Answer.loads(data)
            if answer.version in lookup.versions:
                sem.index.touch(found.label)
                self._metrics.cache_semantic_score.observe(found.score)
                return Hit(answer, "semantic-hit", round(found.score, 4))
        return None

    async def keep(self, lookup: Lookup, answer: Answer) -> None:
        """Store the answer before its response ends (one write, in memory or to Redis:
        the same request sent again right after is a hit), and add it to the semantic
        index in the background (that may embed the prompt first)."""
        if not lookup.store:
            return
        try:
            await self._store.put(lookup.key, answer.dumps(), self.ttl_s)
        except Exception:
            log.exception("response cache: answer not stored")
            return
        if self._semantic is not None and lookup.partition is not None:
            task = asyncio.create_task(self._index(lookup))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _index(self, lookup: Lookup) -> None:
        try:
            sem = self._semantic
            if sem is not None and lookup.partition is not None and lookup.text is not None:
                if lookup.vector is None:  # no lookup ran (no-cache): embed now
                    lookup.vector = normalised(await sem.embed(lookup.text))
                sem.index.add(lookup.partition, lookup.vector, lookup.key)
                if sem.feed is not None:
                    await sem.feed.publish(lookup.partition, lookup.vector, lookup.key)
        except Exception:
            log.exception("response cache: answer not added to the semantic index")

    def count_hit(self, lookup: Lookup, hit: Hit, charged_nusd: int) -> None:
        labels = (lookup.scope, lookup.model)
        self._metrics.cache_requests.labels(*labels, hit.kind).inc()
        tokens = hit.answer.prompt_tokens + hit.answer.completion_tokens
        self._metrics.cache_saved_tokens.labels(*labels).inc(tokens)
        saved = max(0, hit.answer.cost_nusd - charged_nusd)
        self._metrics.cache_saved_usd.labels(*labels).inc(saved / 1e9)

    def _mode_for(self, principal: Principal, model_mode: Mode | None) -> Mode:
        for chosen in (
            principal.key.limits.cache,
            principal.team.limits.cache if principal.team else None,
            model_mode,
        ):
            if chosen is not None:
                return chosen
        return self._mode

    def _scope_of(self, principal: Principal) -> str:
        if self._scope == "key" or principal.team is None:
            return f"key:{principal.key.id}"
        if self._scope == "team":
            return f"team:{principal.team.id}"
        return f"org:{principal.team.org_id}"


def _digest(material: Any) -> str:
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _final_turn(request: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the request without its final user turn, that turn's text); chat requests whose
    last message is not the user's have none (nothing to compare by meaning)."""
    messages = request.get("messages")
    if messages is not None:
        if not messages or messages[-1].get("role") != "user":
            return request, None
        return {**request, "messages": messages[:-1]}, str(messages[-1].get("content") or "")
    prompt = request.get("prompt")
    return {**request, "prompt": None}, str(prompt) if prompt else None


def _deterministic(request: dict[str, Any]) -> bool:
    return request.get("temperature") == 0 or request.get("seed") is not None
