"""Where policy stages plug into the request path.

The pipeline runs, in order: admit (the request), the input stages, count and route,
admit (its tokens), cache lookup, invoke (with the output stages around the events),
cache store, meter. An input stage (a guardrail on the prompt, retrieval grounding)
sees the request once it is counted as a request, before its tokens are counted, the
cache and the model: it may pass it on, change it (redact, pseudonymise, add retrieved
context) or refuse it by raising an `InferplaneError`. An output stage sees the events
on their way back to the caller: it may pass them on, change them, or end the answer
with an error.

Stages are configured in order, and each is given the request's context, whose
`Outcome` it may write to (decisions made, for the response and the ledger).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from inferplane.engines.interface import GenerationInput
from inferplane.events import GenerationEvent
from inferplane.pipeline.context import RequestContext


class InputStage(Protocol):
    name: str

    @property
    def active(self) -> bool:
        """Whether the stage has anything to do now (else the pipeline skips it)."""
        ...

    async def inspect(self, ctx: RequestContext, request: GenerationInput) -> GenerationInput:
        """The request to pass on (the same, or changed); raise to refuse it."""
        ...


class OutputStage(Protocol):
    name: str

    def watch(
        self, ctx: RequestContext, events: AsyncGenerator[GenerationEvent, None]
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The events to pass on to the caller (the pipeline closes `events` itself when
        the caller stops reading)."""
        ...


async def run_inputs(
    stages: tuple[InputStage, ...], ctx: RequestContext, request: GenerationInput
) -> GenerationInput:
    for stage in stages:
        if stage.active:
            request = await stage.inspect(ctx, request)
    return request


def run_outputs(
    stages: tuple[OutputStage, ...],
    ctx: RequestContext,
    events: AsyncGenerator[GenerationEvent, None],
) -> AsyncGenerator[GenerationEvent, None]:
    for stage in stages:
        events = stage.watch(ctx, events)
    return events
