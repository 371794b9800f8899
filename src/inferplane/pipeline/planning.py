"""The count and route stages: how many tokens a request holds, and which deployments
may serve it, in what order.

The prompt is counted by the alias's first engine with a tokenizer (a local model),
else estimated from its bytes; the count is what admission reserves and what the
router's size rules read. The data policy's strictest class (the request's header, its
key's, its team's) says which deployments may see it at all; a deployment whose engine
cannot honour one of its sampling parameters is left out too (none left: 400 naming
the parameter, never a request sent with it dropped). The complexity classifier,
if the alias has one, may then reorder the plan towards `large` deployments: it runs
after admission and the cache lookup, so a refused or cached request costs no embedding.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inferplane.engines.interface import Engine, GenerationInput, Prepared
from inferplane.errors import ContextLengthExceeded, NoDeployment
from inferplane.pipeline.context import RequestContext
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.policy import DataPolicy
from inferplane.routing.router import Router
from inferplane.routing.strategies import RouteRequest
from inferplane.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A counted, routed request: what admission reserves and who may serve it."""

    request: GenerationInput
    route: RouteRequest
    deployments: list[tuple[Alias, Deployment]]
    prompt_tokens: int
    max_tokens: int  # the completion tokens to reserve
    prepared: dict[int, Prepared] = field(default_factory=dict)  # by id(engine)
    sampling: Mapping[str, Any] = field(default_factory=dict)

    @property
    def versions(self) -> frozenset[str]:
        return frozenset(dep.version for _, dep in self.deployments)

    async def prepared_for(self, engine: Engine) -> Prepared:
        """The request made ready for `engine` (once per engine). An engine without a
        tokenizer is told the count the request was admitted with."""
        prepared = self.prepared.get(id(engine))
        if prepared is None:
            prepared = await engine.prepare(self.request)
            if not engine.counts:
                prepared = Prepared(
                    self.prompt_tokens,
                    prepared.max_tokens,
                    prepared.payload,
                    prepared.dropped_turns,
                )
            self.prepared[id(engine)] = prepared
        return prepared


class Planner:
    def __init__(self, router: Router, policy: DataPolicy, metrics: Metrics):
        self.router = router
        self.policy = policy
        self._metrics = metrics

    async def plan(
        self,
        ctx: RequestContext,
        alias: Alias,
        request: GenerationInput,
        asked: RouteRequest | None,
        sampling: Mapping[str, Any] | None = None,
    ) -> Plan:
        """The prompt counted (by the first local deployment's tokenizer, else a byte
        estimate), the deployments that may serve it, and the max_tokens to reserve."""
        prompt_tokens, max_tokens, prepared = await self._count(ctx, alias, request)
        team = ctx.principal.team
        data_class = self.policy.strictest(
            asked.data_class if asked else None,
            ctx.principal.key.data_class,
            team.data_class if team else None,
        )
        route = RouteRequest(
            data_class=data_class,
            needs=self.policy.needs(data_class),
            region=asked.region if asked else None,
            prompt_tokens=prompt_tokens,
        )
        sampling = sampling or {}
        deployments = self.router.plan(alias, route)
        if not deployments:
            raise NoDeployment(alias.id)
        deployments = _honouring(deployments, request.prompt, sampling)
        plan = Plan(request, route, deployments, prompt_tokens, max_tokens, prepared, sampling)
        # Engines without a tokenizer are prepared now (no work but a dict): their
        # attempts then start without another step.
        for _, dep in deployments:
            if not dep.engine.counts:
                await plan.prepared_for(dep.engine)
        return plan

    async def _count(
        self, ctx: RequestContext, alias: Alias, request: GenerationInput
    ) -> tuple[int, int, dict[int, Prepared]]:
        asked = request.capped().get("max_tokens") or alias.default_max_tokens
        counter = alias.counter
        if counter is None:
            return request.estimate_tokens(), asked, {}
        try:
            prepared = await counter.prepare(request)
        except ContextLengthExceeded as exc:
            if len(alias.deployments) == 1 and not alias.fallbacks:
                raise
            # Another deployment may serve it: reserve what it is asked (the caller's
            # max_tokens) and the prompt as counted, or estimated where the refusal
            # came before tokenizing (max_tokens over this model's whole context).
            return exc.prompt_tokens or request.estimate_tokens(), asked, {}
        ctx.outcome.dropped_turns = prepared.dropped_turns
        return prepared.prompt_tokens, prepared.max_tokens, {id(counter): prepared}

    async def by_complexity(self, alias: Alias, plan: Plan) -> None:
        """Reorder the plan for a complex request, if the alias's classifier says so. A
        classifier that fails decides nothing."""
        long = alias.complexity_tokens is not None and plan.prompt_tokens > alias.complexity_tokens
        if alias.classifier is None or long:
            return
        try:
            large = await alias.classifier.judge(plan.request.prompt)
        except Exception:
            log.warning("complexity classifier of '%s' failed", alias.id, exc_info=True)
            self._metrics.route_complexity.labels(alias.id, "failed").inc()
            return
        self._metrics.route_complexity.labels(alias.id, "large" if large else "small").inc()
        if large:
            route = dataclasses.replace(plan.route, complex=True)
            plan.deployments = _honouring(
                self.router.plan(alias, route), plan.request.prompt, plan.sampling
            )


def _honouring(
    deployments: list[tuple[Alias, Deployment]],
    prompt: Mapping[str, Any],
    sampling: Mapping[str, Any],
) -> list[tuple[Alias, Deployment]]:
    """The deployments whose engines honour every parameter of the request; if there
    were some and none does, the first refusal is raised."""
    honouring, refusal = [], None
    for owner, dep in deployments:
        refused = dep.engine.refusal(prompt, sampling)
        if refused is None:
            honouring.append((owner, dep))
        else:
            refusal = refusal or refused
    if refusal is not None and not honouring:
        raise refusal
    return honouring
