"""The count and route stages (`Planner`): who counts the prompt, what is reserved, the
strictest data class, the router's plan, preparing once per engine, and the complexity
classifier's say."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from inferplane.config.policy import PolicySettings
from inferplane.engines.interface import GenerationInput
from inferplane.errors import (
    ContextLengthExceeded,
    NoDeployment,
    PermissionDenied,
    UnsupportedParameter,
)
from inferplane.pipeline.planning import Plan, Planner
from inferplane.routing.complexity import ComplexityClassifier
from inferplane.routing.deployments import Alias
from inferplane.routing.policy import DataPolicy
from inferplane.routing.router import Router
from inferplane.routing.strategies import RouteRequest
from inferplane.telemetry.metrics import Metrics
from tests.unit.pipeline.support import (
    ScriptedEngine,
    alias,
    chat,
    context,
    deployment,
    principal,
    words,
)
from tests.unit.routing.test_complexity import LARGE, SMALL, BagOfWords

REQUEST = chat("say hello to me", max_tokens=8)


def _planner(*aliases: Alias, metrics: Metrics | None = None) -> Planner:
    router = Router({a.id: a for a in aliases})
    return Planner(router, DataPolicy(PolicySettings()), metrics or Metrics())


def _plan(
    target: Alias,
    request: GenerationInput = REQUEST,
    route: RouteRequest | None = None,
    *others: Alias,
) -> tuple[Plan, int]:
    """The plan, and the dropped turns it wrote to the request's outcome."""
    ctx = context()
    plan = asyncio.run(_planner(target, *others).plan(ctx, target, request, route))
    return plan, ctx.outcome.dropped_turns


def _names(plan: Plan) -> list[str]:
    return [dep.name for _, dep in plan.deployments]


def test_the_first_engine_that_counts_counts_the_prompt() -> None:
    remote = ScriptedEngine("remote")
    first = ScriptedEngine("first", counts=True, dropped_turns=2)
    second = ScriptedEngine("second", counts=True)
    target = alias(deployment(remote), deployment(first), deployment(second))
    plan, dropped = _plan(target)
    assert plan.prompt_tokens == words(REQUEST.prompt) == 4 != REQUEST.estimate_tokens()
    assert (plan.max_tokens, plan.route.prompt_tokens, dropped) == (8, 4, 2)
    assert (len(first.prepares), len(second.prepares)) == (1, 0)
    # Its preparation is kept; the engine without a tokenizer is prepared with its count.
    assert plan.prepared[id(first)].prompt_tokens == 4
    assert plan.prepared[id(remote)].prompt_tokens == 4
    assert id(second) not in plan.prepared


def test_without_a_tokenizer_the_prompt_is_estimated() -> None:
    target = alias(deployment(ScriptedEngine("remote")), default_max_tokens=100)
    plan, _ = _plan(target)
    assert (plan.prompt_tokens, plan.max_tokens) == (REQUEST.estimate_tokens(), 8)
    # Without the caller's max_tokens, the alias's default is reserved.
    plan, _ = _plan(target, chat("say hello to me"))
    assert plan.max_tokens == 100


def test_a_prompt_too_long_for_the_only_deployment_is_refused() -> None:
    too_long = ContextLengthExceeded(prompt_tokens=5000, context_size=2048)
    target = alias(deployment(ScriptedEngine("local", counts=True, refuse=too_long)))
    with pytest.raises(ContextLengthExceeded):
        _plan(target)


def test_a_prompt_too_long_for_the_counter_may_go_elsewhere() -> None:
    too_long = ContextLengthExceeded(prompt_tokens=5000, context_size=2048)
    local = ScriptedEngine("local", counts=True, refuse=too_long)
    remote = ScriptedEngine("remote")
    plan, _ = _plan(alias(deployment(local), deployment(remote)))
    # Reserved: the prompt as the refusal counted it, and the caller's max_tokens.
    assert (plan.prompt_tokens, plan.max_tokens) == (5000, 8)
    assert plan.prepared[id(remote)].prompt_tokens == 5000
    assert id(local) not in plan.prepared
    # Refused before tokenizing (no count): estimated; another alias may take it.
    unknown = ContextLengthExceeded(prompt_tokens=0, context_size=2048)
    local = ScriptedEngine("local", counts=True, refuse=unknown)
    fallback = Alias("big", [deployment(ScriptedEngine("big"))])
    plan, _ = _plan(alias(deployment(local), fallbacks=["big"]), REQUEST, None, fallback)
    assert plan.prompt_tokens == REQUEST.estimate_tokens()
    assert _names(plan) == ["local", "big"]


@pytest.mark.parametrize(
    ("header", "key", "team", "strictest"),
    [
        (None, None, None, None),
        ("public", "internal", None, "internal"),
        ("public", "internal", "confidential", "confidential"),
        ("restricted", "internal", "confidential", "restricted"),
    ],
)
def test_the_strictest_data_class_decides_where_it_may_go(
    header: str | None, key: str | None, team: str | None, strictest: str | None
) -> None:
    target = alias(
        deployment(ScriptedEngine("external"), "external"),
        deployment(ScriptedEngine("private"), "private", weight=0),
    )
    ctx = context(principal(data_class=key, team_class=team))
    asked = RouteRequest(data_class=header, region="eu")
    plan = asyncio.run(_planner(target).plan(ctx, target, REQUEST, asked))
    assert (plan.route.data_class, plan.route.region) == (strictest, "eu")
    # confidential and restricted need deployments tagged `private` (the default policy).
    sensitive = strictest in ("confidential", "restricted")
    assert _names(plan) == (["private"] if sensitive else ["external", "private"])


def test_no_deployment_the_policy_allows_refuses_the_request() -> None:
    target = alias(deployment(ScriptedEngine("external"), "external"))
    with pytest.raises(NoDeployment):
        _plan(target, REQUEST, RouteRequest(data_class="confidential"))


def test_a_data_class_the_policy_no_longer_has_refuses_the_request() -> None:
    target = alias(deployment(ScriptedEngine("remote")))
    ctx = context(principal(data_class="secret"))
    with pytest.raises(PermissionDenied) as info:
        asyncio.run(_planner(target).plan(ctx, target, REQUEST, None))
    assert info.value.code == "invalid_data_class"


def test_a_request_is_prepared_once_per_engine() -> None:
    local = ScriptedEngine("local", counts=True)
    other = ScriptedEngine("other-local", counts=True)
    target = alias(deployment(local), deployment(other))
    plan, _ = _plan(target, chat("one two three four five", max_tokens=8))

    async def twice() -> None:
        first = await plan.prepared_for(other)
        assert await plan.prepared_for(other) is first
        # An engine with a tokenizer keeps its own count.
        assert first.prompt_tokens == 5

    asyncio.run(twice())
    assert (len(local.prepares), len(other.prepares)) == (1, 1)


def test_an_engine_without_a_tokenizer_is_told_the_admitted_count() -> None:
    remote = ScriptedEngine("remote")
    plan = Plan(REQUEST, RouteRequest(), [], prompt_tokens=42, max_tokens=8)
    prepared = asyncio.run(plan.prepared_for(remote))
    assert prepared.prompt_tokens == 42 != REQUEST.estimate_tokens()
    assert prepared.max_tokens == 8


# --- the complexity classifier -------------------------------------------------------


async def _broken(texts: list[str]) -> np.ndarray:
    raise RuntimeError("the embedding model's worker is down")


def _by_complexity(target: Alias, request: GenerationInput, metrics: Metrics) -> list[str]:
    planner = _planner(target, metrics=metrics)

    async def main() -> list[str]:
        plan = await planner.plan(context(), target, request, None)
        await planner.by_complexity(target, plan)
        return _names(plan)

    return asyncio.run(main())


def _verdicts(metrics: Metrics, verdict: str) -> float | None:
    labels = {"model": "m", "verdict": verdict}
    return metrics.registry.get_sample_value("inferplane_route_complexity_total", labels)


def _complex_alias(classifier: ComplexityClassifier, **knobs: int) -> Alias:
    small = deployment(ScriptedEngine("small"))
    large = deployment(ScriptedEngine("large"), "large")
    return alias(small, large, classifier=classifier, **knobs)


def test_the_classifier_sends_a_complex_request_to_large_deployments() -> None:
    metrics = Metrics()
    target = _complex_alias(ComplexityClassifier(BagOfWords(), LARGE, SMALL))
    assert _by_complexity(target, chat("prove the theorem step by step"), metrics) == [
        "large",
        "small",
    ]
    assert _by_complexity(target, chat("hi there"), metrics) == ["small", "large"]
    assert (_verdicts(metrics, "large"), _verdicts(metrics, "small")) == (1.0, 1.0)


def test_a_classifier_that_fails_decides_nothing() -> None:
    metrics = Metrics()
    target = _complex_alias(ComplexityClassifier(_broken, LARGE, SMALL))
    assert _by_complexity(target, chat("prove the theorem step by step"), metrics) == [
        "small",
        "large",
    ]
    assert _verdicts(metrics, "failed") == 1.0


def test_a_prompt_over_the_threshold_needs_no_classifier() -> None:
    metrics, embed = Metrics(), BagOfWords()
    target = _complex_alias(ComplexityClassifier(embed, LARGE, SMALL), complexity_tokens=3)
    assert _by_complexity(target, chat("hi there you all"), metrics) == ["large", "small"]
    assert embed.calls == []


class _NoSeed(ScriptedEngine):
    """An engine whose API has no seed (as Anthropic's)."""

    def refusal(
        self, prompt: Mapping[str, Any], sampling: Mapping[str, Any]
    ) -> UnsupportedParameter | None:
        return UnsupportedParameter("seed") if sampling.get("seed") is not None else None


def test_a_deployment_that_cannot_honour_a_parameter_is_left_out() -> None:
    target = alias(deployment(_NoSeed("no-seed")), deployment(ScriptedEngine("any")))
    ctx = context()
    plan = asyncio.run(_planner(target).plan(ctx, target, REQUEST, None, {"seed": 7}))
    assert _names(plan) == ["any"]
    plan = asyncio.run(_planner(target).plan(ctx, target, REQUEST, None, {"seed": None}))
    assert sorted(_names(plan)) == ["any", "no-seed"]


def test_none_can_honour_it_400_naming_it() -> None:
    target = alias(deployment(_NoSeed("no-seed")))
    with pytest.raises(UnsupportedParameter) as caught:
        asyncio.run(_planner(target).plan(context(), target, REQUEST, None, {"seed": 7}))
    assert (caught.value.status, caught.value.param) == (400, "seed")
    assert caught.value.code == "unsupported_parameter"
