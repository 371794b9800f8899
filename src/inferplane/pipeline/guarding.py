"""The guardrails in the request path: the input stage applies the effective policy's
input rules to every text of the prompt (refusing it, or passing it on redacted or
pseudonymised); the output stage turns the placeholders in the answer back into the
values they stand for, also when a stream splits one across chunks.

The effective policy of a request: its model's (`policy:` on a model or an alias in
the config), else the server's default (`guardrails.default_policy`): see
`guardrails.policy.Policies`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, get_args

from inferplane.config.routes import RemoteEngine
from inferplane.engines.interface import GenerationInput
from inferplane.errors import Conflict, InferplaneError, InvalidRequest
from inferplane.events import Finished, GenerationEvent, TextDelta, ToolCallDelta
from inferplane.guardrails.guard import Hit, Pseudonyms, apply, rewritten
from inferplane.guardrails.policy import Policies, Policy, Rule
from inferplane.guardrails.restore import Restorer
from inferplane.guardrails.reviews import APPROVED, EXPIRED, PENDING, ReviewStore
from inferplane.guardrails.window import Blocked, OutputWindow
from inferplane.pipeline.context import RequestContext
from inferplane.routing.router import Router
from inferplane.telemetry.metrics import Metrics

_REMOTE = frozenset(get_args(RemoteEngine))
_POLL_S = 0.25  # how often a request held for review reads its decision


class ContentPolicyViolation(InferplaneError):
    status = 400
    type = "invalid_request_error"
    code = "content_policy_violation"


class GuardInput:
    """The input stage (`pipeline.stages.InputStage`)."""

    name = "guard-input"

    def __init__(
        self,
        policies: Callable[[], Policies],
        metrics: Metrics,
        router: Router,
        reviews: ReviewStore,
    ):
        self._policies = policies  # those in force now (the admin API changes them)
        self._metrics = metrics
        self._router = router
        self._reviews = reviews

    @property
    def active(self) -> bool:
        """Whether any policy is in force (else requests skip this stage's admission step)."""
        return bool(self._policies().by_id)

    async def inspect(self, ctx: RequestContext, request: GenerationInput) -> GenerationInput:
        policy = self._policies().effective(ctx.outcome.model, ctx.principal)
        if policy is None or not policy.input:
            return request
        if any(r.external_only for r in policy.input) and self._private(ctx.outcome.model):
            rules = tuple(r for r in policy.input if not r.external_only)
            policy = policy.model_copy(update={"input": rules})
        pseudonyms = Pseudonyms()
        scan = _Scan(policy, pseudonyms, _Record(policy.id, self._version(policy), ctx))
        prompt = dict(request.prompt)
        if "messages" in prompt:
            prompt["messages"] = [
                self._message(scan, m, f"messages[{i}]") for i, m in enumerate(prompt["messages"])
            ]
        else:
            prompt["prompt"] = self._prompt(scan, prompt.get("prompt"))
        if scan.escalated:
            await self._review(ctx, scan)
        if pseudonyms:
            ctx.outcome.pseudonyms = pseudonyms.values
        return GenerationInput(request.endpoint, prompt, request.size_hint, request.cap)

    async def _review(self, ctx: RequestContext, scan: _Scan) -> None:
        """A person decides: the request waits for them (`hold: wait`: approved, it goes
        on; rejected or not decided within `timeout_s`, it is refused) or is answered at
        once with the rule's message (`hold: reply`)."""
        rule, excerpt = scan.escalated[0]
        review_id = await asyncio.to_thread(
            self._reviews.open,
            policy=scan.policy.id,
            rule=rule.id,
            key_id=ctx.principal.key.id,
            model=ctx.outcome.model or "",
            excerpt=excerpt,
        )
        ctx.outcome.review_id = review_id
        if rule.hold == "reply":
            ctx.outcome.held_reply = rule.message
            return
        status = await self._decision(review_id, rule.timeout_s)
        if status != APPROVED:
            raise ContentPolicyViolation(
                f"The request was held by guardrail rule '{rule.id}' of policy "
                f"'{scan.policy.id}' for review '{review_id}', which was {status}."
            )

    async def _decision(self, review_id: str, timeout_s: float) -> str:
        """The review's outcome once decided, or `expired` after `timeout_s` (read from
        the store: another replica's admin may decide it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            review = await asyncio.to_thread(self._reviews.get, review_id)
            if review["status"] != PENDING:
                return str(review["status"])
            await asyncio.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        try:
            await asyncio.to_thread(self._reviews.decide, review_id, EXPIRED, "not decided in time")
        except Conflict:  # decided at the last moment
            return str((await asyncio.to_thread(self._reviews.get, review_id))["status"])
        return EXPIRED

    def _version(self, policy: Policy) -> int:
        return self._policies().versions.get(policy.id, 1)

    def _private(self, model: str | None) -> bool:
        """Whether every deployment the request may reach keeps the data inside: tagged
        `private`, or a local worker. Unknown: not private (fails closed)."""
        reachable = self._router.reachable(model or "")
        return bool(reachable) and all(
            "private" in d.routing.tags or d.engine.kind not in _REMOTE for d in reachable
        )

    def _message(self, scan: _Scan, message: Any, param: str) -> Any:
        if not isinstance(message, dict):
            return message
        out = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = self._text(scan, content, f"{param}.content")
        elif isinstance(content, list):
            out["content"] = [
                {**part, "text": self._text(scan, part["text"], f"{param}.content")}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        if message.get("tool_calls"):
            out["tool_calls"] = [self._call(scan, c, param) for c in message["tool_calls"]]
        return out

    def _call(self, scan: _Scan, call: Any, param: str) -> Any:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
            return call
        arguments = self._text(scan, function["arguments"], f"{param}.tool_calls")
        return {**call, "function": {**function, "arguments": arguments}}

    def _prompt(self, scan: _Scan, prompt: Any) -> Any:
        if isinstance(prompt, str):
            return self._text(scan, prompt, "prompt")
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return [self._text(scan, p, "prompt") for p in prompt]
        # Token ids cannot be read as text: a policy that must see the prompt refuses them.
        raise InvalidRequest(
            "This model's guardrail policy reads prompts as text: send text, not token ids.",
            param="prompt",
            code="content_policy_violation",
        )

    def _text(self, scan: _Scan, text: str, param: str) -> str:
        policy = scan.policy
        verdict = apply(policy.input, text, scan.pseudonyms)
        _count(self._metrics, scan.record, verdict.hits, verdict.timings)
        rule = verdict.blocked_by
        if rule is not None:
            raise ContentPolicyViolation(
                f"The request was refused by guardrail rule '{rule.id}' of policy '{policy.id}'.",
                param=param,
            )
        escalating = [h.rule for h in verdict.hits if h.rule.action == "escalate"]
        if escalating:  # for the reviewer: the text with every value found masked
            masked = [
                Hit(h.rule.model_copy(update={"action": "redact"}), h.finding) for h in verdict.hits
            ]
            scan.escalated.append((escalating[0], rewritten(text, masked, Pseudonyms())))
        return verdict.text


class GuardOutput:
    """The output stage (`pipeline.stages.OutputStage`): the policy's output rules over
    the model's own text (`guardrails.window`), then the input's placeholders turned
    back into their values (the caller's own data is no leak). Tool calls' arguments
    get their values back; the rules read text only."""

    name = "guard-output"

    def __init__(self, policies: Callable[[], Policies], metrics: Metrics):
        self._policies = policies
        self._metrics = metrics

    async def watch(
        self, ctx: RequestContext, events: AsyncGenerator[GenerationEvent, None]
    ) -> AsyncGenerator[GenerationEvent, None]:
        policy = self._policies().effective(ctx.outcome.model, ctx.principal)
        rules = policy.output if policy is not None else ()
        values = ctx.outcome.pseudonyms or {}
        if not rules and not values:
            async for event in events:
                yield event
            return
        report = self._reporter(ctx, policy) if policy is not None else _unreported
        texts: dict[int, tuple[_Answer, TextDelta]] = {}
        calls: dict[tuple[int, int], tuple[Restorer, ToolCallDelta]] = {}
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    answer = texts[event.choice][0] if event.choice in texts else None
                    answer = answer or _Answer(rules, values, report)
                    texts[event.choice] = (answer, event)
                    text = answer.feed(event.text)
                    if text or event.logprobs:
                        yield replace(event, text=text)
                elif isinstance(event, ToolCallDelta):
                    key = (event.choice, event.index)
                    restorer = calls[key][0] if key in calls else Restorer(values)
                    calls[key] = (restorer, event)
                    yield replace(event, arguments=restorer.feed(event.arguments))
                else:
                    if isinstance(event, Finished):  # what was kept back, as it came
                        for answer, last in texts.values():
                            if held := answer.flush():
                                yield replace(last, text=held, logprobs=None, more=False)
                        for restorer, call in calls.values():
                            if held := restorer.flush():
                                yield replace(call, arguments=held, id=None, name=None)
                    yield event
        except Blocked as exc:  # only output rules block here: the policy has some
            name = policy.id if policy is not None else ""
            raise ContentPolicyViolation(
                f"The answer was stopped by guardrail rule '{exc.rule.id}' of policy '{name}'."
            ) from None

    def _reporter(
        self, ctx: RequestContext, policy: Policy
    ) -> Callable[[list[Hit], dict[str, float]], None]:
        """Where the output rules' findings go: once per request, whatever its answers."""
        record = _Record(policy.id, self._policies().versions.get(policy.id, 1), ctx)

        def report(hits: list[Hit], timings: dict[str, float]) -> None:
            _count(self._metrics, record, hits, timings)

        return report


def _unreported(hits: list[Hit], timings: dict[str, float]) -> None:
    """No policy, no output rules: nothing is ever found."""


class _Answer:
    """One answer's text on its way out: the output rules, then the placeholders."""

    def __init__(
        self,
        rules: tuple[Rule, ...],
        values: dict[str, str],
        report: Callable[[list[Hit], dict[str, float]], None],
    ):
        self._window = OutputWindow(rules, report) if rules else None
        self._restorer = Restorer(values) if values else None

    def feed(self, piece: str) -> str:
        if self._window is not None:
            piece = self._window.feed(piece)
        return self._restorer.feed(piece) if self._restorer is not None else piece

    def flush(self) -> str:
        piece = self._window.flush() if self._window is not None else ""
        if self._restorer is None:
            return piece
        return self._restorer.feed(piece) + self._restorer.flush()


@dataclass(frozen=True, slots=True)
class _Record:
    """Where a request's guardrail decisions go: its policy (and version), its outcome."""

    policy: str
    version: int
    ctx: RequestContext


@dataclass(frozen=True, slots=True)
class _Scan:
    """One request's input scan: its policy, its placeholders, where decisions go."""

    policy: Policy
    pseudonyms: Pseudonyms
    record: _Record
    # The escalate rules that found something, with the text they found it in, masked.
    escalated: list[tuple[Rule, str]] = field(default_factory=list)


def _count(metrics: Metrics, record: _Record, hits: list[Hit], timings: dict[str, float]) -> None:
    """Metrics for the detectors' time and the rules that found something; each finding
    on the request's outcome, for its ledger record (the type, never the value)."""
    for detector, seconds in timings.items():
        metrics.guardrail_seconds.labels(detector).observe(seconds)
    for rule in {h.rule.id: h.rule for h in hits}.values():
        labels = (record.policy, rule.id, rule.detector, rule.action)
        metrics.guardrail_decisions.labels(*labels).inc()
    record.ctx.outcome.guardrails.extend(
        {
            "policy": record.policy,
            "version": record.version,
            "rule": h.rule.id,
            "detector": h.rule.detector,
            "type": h.finding.type,
            "action": h.rule.action,
            "score": h.finding.score,
        }
        for h in hits
    )
