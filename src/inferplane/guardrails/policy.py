"""Guardrail policies as data: a document of ordered `input` and `output` rules, each a
detector with its options and an action.

    {"id": "baseline", "description": "...",
     "input": [{"id": "no-secrets", "detector": "secrets", "action": "block"}, ...],
     "output": [{"id": "leak", "detector": "pii", "action": "redact"}]}

A document that does not validate is refused with the path of the field at fault
(`input[1].action`), from the config file at start-up or from the admin API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferplane.config import ConfigError, Settings
from inferplane.errors import InvalidRequest, PermissionDenied
from inferplane.guardrails import injection
from inferplane.guardrails.pii import STRUCTURED
from inferplane.tenancy.records import Principal

Detector = Literal["pii", "secrets", "regex", "deny_list", "json_schema", "prompt_injection"]
Action = Literal["block", "redact", "pseudonymise", "flag", "escalate"]
_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: Annotated[str, Field(pattern=_ID)]
    detector: Detector
    action: Action
    # pii: the entity types (Presidio's names); all the structured ones when left out.
    entities: tuple[str, ...] | None = None
    # secrets: the entropy, in bits a character, a secret-named value needs;
    # prompt_injection: the score (0 to 1) from which a text counts as an attack.
    threshold: Annotated[float, Field(ge=0, le=8)] | None = None
    patterns: tuple[str, ...] | None = None  # regex
    words: tuple[str, ...] | None = None  # deny_list: matched whole, case-insensitively
    # json_schema (output rules): the JSON Schema the whole answer must validate against.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    # escalate: a person reviews the request. `wait` keeps it open up to `timeout_s` for
    # the decision; `reply` answers at once with `message` and the review's id.
    hold: Literal["wait", "reply"] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    message: Annotated[str, Field(min_length=1, max_length=2000)] = (
        "Your request is waiting for a review."
    )
    # Only when the request may reach a deployment outside: one not tagged `private`
    # and not a local worker (of the model or of its fallbacks). For redact, pseudonymise.
    external_only: bool = False

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for entity in value or ():
            if entity not in STRUCTURED:
                raise ValueError(
                    f"unknown entity type {entity!r}; this server detects: {', '.join(STRUCTURED)}"
                )
        return value

    @field_validator("patterns")
    @classmethod
    def _compiled(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _options_fit(self) -> Rule:
        if self.external_only and self.action not in ("redact", "pseudonymise"):
            raise ValueError("external_only applies to redact and pseudonymise rules")
        if (self.action == "escalate") != (self.hold is not None):
            raise ValueError("an escalate rule needs 'hold' (wait or reply), and only it")
        if self.detector == "json_schema" and self.action not in ("block", "flag"):
            raise ValueError("a json_schema rule blocks or flags (it judges the whole answer)")
        needs = {"regex": "patterns", "deny_list": "words", "json_schema": "json_schema"}.get(
            self.detector
        )
        if needs is not None and not getattr(self, needs):
            raise ValueError(f"a {self.detector} rule needs '{needs.removeprefix('json_')}'")
        if self.detector == "prompt_injection" and (self.threshold or 0) > 1:
            raise ValueError("a prompt_injection threshold is a score from 0 to 1")
        allowed = {"pii": {"entities"}, "secrets": {"threshold"}, "regex": {"patterns"}}
        allowed["prompt_injection"] = {"threshold"}
        allowed |= {"deny_list": {"words"}, "json_schema": {"json_schema"}}
        for option in ("entities", "threshold", "patterns", "words", "json_schema"):
            if getattr(self, option) is not None and option not in allowed[self.detector]:
                raise ValueError(f"'{option}' does not apply to a {self.detector} rule")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=_ID)]
    description: Annotated[str, Field(max_length=1000)] = ""
    input: tuple[Rule, ...] = ()
    output: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _valid_rules(self) -> Policy:
        seen: set[str] = set()
        for direction, rules in (("input", self.input), ("output", self.output)):
            for i, rule in enumerate(rules):
                if rule.id in seen:
                    raise ValueError(f"{direction}[{i}].id: rule id {rule.id!r} is used twice")
                seen.add(rule.id)
                if direction == "input" and rule.detector == "json_schema":
                    raise ValueError(f"{direction}[{i}].detector: json_schema judges answers")
                if direction == "output" and rule.action == "escalate":
                    raise ValueError(f"{direction}[{i}].action: escalate applies to input rules")
                if direction == "output" and rule.action == "pseudonymise":
                    raise ValueError(
                        f"{direction}[{i}].action: pseudonymise applies to input rules "
                        "(the answer's placeholders are restored)"
                    )
        return self


def parse_policy(document: Any, *, param: str = "policy") -> Policy:
    """A policy from its document; 400 naming the field at fault."""
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = _path(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if ": " in message and not path and message.split(": ", 1)[0].count("[") == 1:
            path, message = message.split(": ", 1)  # a rule found at fault by the policy
        raise InvalidRequest(
            f"Invalid guardrail policy at '{path or param}': {message}", param=path or param
        ) from None


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or str(part).startswith("function-"):
            continue  # pydantic's names for the validators and unions it went through
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class Policies:
    """The policies in force: by id, the server's default, the models' own. The
    effective policy of a request, the most specific: its key's, its team's (their
    metadata `policy`), its model's (the alias or model id the caller named), the
    server's default."""

    by_id: Mapping[str, Policy] = field(default_factory=dict)
    default: str | None = None
    by_model: Mapping[str, str] = field(default_factory=dict)
    # Each policy's version (those of the config file: 1), and which came from the
    # admin API (the others are read-only there: the file is their source).
    versions: Mapping[str, int] = field(default_factory=dict)
    stored: frozenset[str] = frozenset()

    def with_stored(self, stored: Mapping[str, tuple[Policy, int]]) -> Policies:
        """These policies and those made through the admin API (a config file's policy
        of the same id wins)."""
        mine = {k: v for k, v in stored.items() if k not in self.config_ids}
        return replace(
            self,
            by_id={
                **{k: self.by_id[k] for k in self.config_ids},
                **{k: p for k, (p, _) in mine.items()},
            },
            versions={**{k: 1 for k in self.config_ids}, **{k: v for k, (_, v) in mine.items()}},
            stored=frozenset(mine),
        )

    @property
    def config_ids(self) -> frozenset[str]:
        return frozenset(self.by_id) - self.stored

    def effective(self, model: str | None, principal: Principal | None = None) -> Policy | None:
        key = principal.key.policy if principal is not None else None
        team = principal.team.policy if principal is not None and principal.team else None
        name = key or team or self.by_model.get(model or "") or self.default
        if name is None:
            return None
        policy = self.by_id.get(name)
        if policy is None:  # attached, then removed from the config: refuse, not pass
            raise PermissionDenied(
                f"The guardrail policy '{name}' attached to this key or team is not defined "
                "on this server; an admin must attach another.",
                code="policy_not_found",
            )
        return policy


def configured(settings: Settings) -> Policies:
    """The config file's policies; a document at fault stops start-up naming the field
    (`guardrails.policies[0].input[1].action`)."""
    cfg = settings.guardrails
    if cfg is None:
        return Policies()
    by_id: dict[str, Policy] = {}
    for i, document in enumerate(cfg.policies):
        try:
            policy = parse_policy(document)
        except InvalidRequest as exc:
            where = f"guardrails.policies[{i}].{exc.param}"
            raise ConfigError(f"{where}: {exc.message}") from None
        if policy.id in by_id:
            raise ConfigError(f"guardrails.policies[{i}].id: policy '{policy.id}' is defined twice")
        by_id[policy.id] = policy
    if any(r.detector == "prompt_injection" for p in by_id.values() for r in p.input + p.output):
        try:
            injection.model()
        except OSError as exc:  # the shipped weights are missing: stop, naming them
            raise ConfigError(
                f"the prompt_injection detector cannot load its model: {exc}"
            ) from None
    models = {m.id: m.policy for m in settings.models if m.policy}
    models.update({a.id: a.policy for a in settings.aliases if a.policy})
    return Policies(by_id, cfg.default_policy, models, {k: 1 for k in by_id})
