"""The guardrails in the request path: the input stage applies the effective policy's
input rules to every text of the prompt (refusing it, or passing it on redacted or
pseudonymised); the output stage turns the placeholders in the answer back into the
values they stand for, also when a stream splits one across chunks.

The effective policy of a request: its model's (`policy:` on a model or an alias in
the config), else the server's default (`guardrails.default_policy`): see
`guardrails.policy.Policies`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any, get_args

from inferplane.config.routes import RemoteEngine
from inferplane.engines.interface import GenerationInput
from inferplane.errors import InferplaneError, InvalidRequest
from inferplane.events import Finished, GenerationEvent, TextDelta, ToolCallDelta
from inferplane.guardrails.guard import Hit, Pseudonyms, apply
from inferplane.guardrails.policy import Policies, Policy, Rule
from inferplane.guardrails.restore import Restorer
from inferplane.guardrails.window import Blocked, OutputWindow
from inferplane.pipeline.context import RequestContext
from inferplane.routing.router import Router
from inferplane.telemetry.metrics import Metrics

_REMOTE = frozenset(get_args(RemoteEngine))


class ContentPolicyViolation(InferplaneError):
    status = 400
    type = "invalid_request_error"
    code = "content_policy_violation"


class GuardInput:
    """The input stage (`pipeline.stages.InputStage`)."""

    name = "guard-input"

    def __init__(self, policies: Callable[[], Policies], metrics: Metrics, router: Router):
        self._policies = policies  # those in force now (the admin API changes them)
        self._metrics = metrics
        self._router = router

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
        prompt = dict(request.prompt)
        if "messages" in prompt:
            prompt["messages"] = [
                self._message(policy, m, pseudonyms, f"messages[{i}]")
                for i, m in enumerate(prompt["messages"])
            ]
        else:
            prompt["prompt"] = self._prompt(policy, prompt.get("prompt"), pseudonyms)
        if pseudonyms:
            ctx.outcome.pseudonyms = pseudonyms.values
        return GenerationInput(request.endpoint, prompt, request.size_hint, request.cap)

    def _private(self, model: str | None) -> bool:
        """Whether every deployment the request may reach keeps the data inside: tagged
        `private`, or a local worker. Unknown: not private (fails closed)."""
        reachable = self._router.reachable(model or "")
        return bool(reachable) and all(
            "private" in d.routing.tags or d.engine.kind not in _REMOTE for d in reachable
        )

    def _message(self, policy: Policy, message: Any, pseudonyms: Pseudonyms, param: str) -> Any:
        if not isinstance(message, dict):
            return message
        out = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = self._text(policy, content, pseudonyms, f"{param}.content")
        elif isinstance(content, list):
            out["content"] = [
                {**part, "text": self._text(policy, part["text"], pseudonyms, f"{param}.content")}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        if message.get("tool_calls"):
            out["tool_calls"] = [
                self._call(policy, c, pseudonyms, param) for c in message["tool_calls"]
            ]
        return out

    def _call(self, policy: Policy, call: Any, pseudonyms: Pseudonyms, param: str) -> Any:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
            return call
        arguments = self._text(policy, function["arguments"], pseudonyms, f"{param}.tool_calls")
        return {**call, "function": {**function, "arguments": arguments}}

    def _prompt(self, policy: Policy, prompt: Any, pseudonyms: Pseudonyms) -> Any:
        if isinstance(prompt, str):
            return self._text(policy, prompt, pseudonyms, "prompt")
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return [self._text(policy, p, pseudonyms, "prompt") for p in prompt]
        # Token ids cannot be read as text: a policy that must see the prompt refuses them.
        raise InvalidRequest(
            "This model's guardrail policy reads prompts as text: send text, not token ids.",
            param="prompt",
            code="content_policy_violation",
        )

    def _text(self, policy: Policy, text: str, pseudonyms: Pseudonyms, param: str) -> str:
        verdict = apply(policy.input, text, pseudonyms)
        _count(self._metrics, policy, verdict.hits, verdict.timings)
        rule = verdict.blocked_by
        if rule is not None:
            raise ContentPolicyViolation(
                f"The request was refused by guardrail rule '{rule.id}' of policy '{policy.id}'.",
                param=param,
            )
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
        assert policy is not None or not rules
        texts: dict[int, tuple[_Answer, TextDelta]] = {}
        calls: dict[tuple[int, int], tuple[Restorer, ToolCallDelta]] = {}
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    answer = texts[event.choice][0] if event.choice in texts else None
                    answer = answer or _Answer(rules, values, self._reporter(policy))
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
        except Blocked as exc:
            assert policy is not None
            raise ContentPolicyViolation(
                f"The answer was stopped by guardrail rule '{exc.rule.id}' of policy '{policy.id}'."
            ) from None

    def _reporter(self, policy: Policy | None) -> Callable[[list[Hit], dict[str, float]], None]:
        def report(hits: list[Hit], timings: dict[str, float]) -> None:
            if policy is not None:
                _count(self._metrics, policy, hits, timings)

        return report


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


def _count(metrics: Metrics, policy: Policy, hits: list[Hit], timings: dict[str, float]) -> None:
    for detector, seconds in timings.items():
        metrics.guardrail_seconds.labels(detector).observe(seconds)
    for rule in {h.rule.id: h.rule for h in hits}.values():
        metrics.guardrail_decisions.labels(policy.id, rule.id, rule.detector, rule.action).inc()
