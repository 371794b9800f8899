"""A dry run of a guardrail policy on a text: what it would find and do, without a model.
Operators try a policy on examples before attaching it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from inferplane.api.auth import AnyKey
from inferplane.api.services import services
from inferplane.errors import InvalidRequest, PermissionDenied
from inferplane.guardrails.guard import Pseudonyms, apply

router = APIRouter()


class Analyze(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(max_length=1_000_000)]
    direction: Literal["input", "output"] = "input"
    # A policy by id (the server's default when left out); another than the caller's
    # own needs an admin key.
    policy: str | None = None
    model: str | None = None  # the model whose policy applies (its own, else the default)


@router.post("/v1/guardrails/analyze")
async def analyze(body: Analyze, request: Request, principal: AnyKey) -> dict[str, Any]:
    policies = services(request).guardrails
    own = policies.effective(body.model, principal)
    if body.policy is None:
        policy = own
    else:
        policy = policies.by_id.get(body.policy)
        if policy is None:
            raise InvalidRequest(f"There is no guardrail policy '{body.policy}'.", param="policy")
        if policy is not own and not principal.is_admin:
            raise PermissionDenied("Naming a policy other than your own needs an admin key.")
    if policy is None:
        raise InvalidRequest(
            "No guardrail policy applies here: name one in 'policy'.", param="policy"
        )
    rules = policy.input if body.direction == "input" else policy.output
    verdict = apply(rules, body.text, Pseudonyms())
    return {
        "policy": policy.id,
        "version": policies.versions.get(policy.id, 1),
        "action": verdict.action,
        "findings": [
            {
                "rule": h.rule.id,
                "detector": h.rule.detector,
                "type": h.finding.type,
                "start": h.finding.start,
                "end": h.finding.end,
                "score": h.finding.score,
                "action": h.rule.action,
            }
            for h in verdict.hits
        ],
        # A blocked text is not transformed: nothing of it would pass on.
        "text": None if verdict.action == "block" else verdict.text,
    }
