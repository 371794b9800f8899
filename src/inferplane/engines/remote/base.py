"""What every remote adapter shares: the engine interface over its one HTTP call.

An adapter implements `request` (one generation against its API, as events) and
`check`; this base prepares requests (a remote model's tokenizer is not here: prompt
tokens are estimated, and the upstream's reported usage settles the real count) and
calls it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.interface import Caller, Dispatched, GenerationInput, Prepared, Refusals
from inferplane.events import GenerationEvent


class RemoteEngine(Refusals):
    spec: RemoteDeployment
    default_max_tokens: int = 256  # reserved when the caller asks for no limit

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.engine

    @property
    def version(self) -> str:
        return f"{self.spec.engine}:{self.spec.model}"

    @property
    def counts(self) -> bool:
        return False

    @property
    def timeout_s(self) -> float | None:
        return self.spec.timeout_s

    async def prepare(self, request: GenerationInput) -> Prepared:
        payload = request.capped()
        asked = payload.get("max_tokens") or self.default_max_tokens
        return Prepared(request.estimate_tokens(), asked, payload)

    def generate(
        self,
        prepared: Prepared,
        sampling: dict[str, Any],
        *,
        endpoint: str,
        stream: bool,
        caller: Caller,
        dispatched: Dispatched,
    ) -> AsyncIterator[GenerationEvent]:
        dispatched(prepared.prompt_tokens)  # on its way upstream
        return self.request(
            endpoint,
            prepared.payload,
            sampling,
            stream=stream,
            prompt_estimate=prepared.prompt_tokens,
        )

    def request(
        self,
        endpoint: str,
        prompt_input: dict[str, Any],
        sampling: dict[str, Any],
        *,
        stream: bool,
        prompt_estimate: int,
    ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError
