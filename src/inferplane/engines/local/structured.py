"""Structured outputs for local models: OpenAI's `response_format` as the grammar the
worker decodes under (llama.cpp's GBNF, which the worker's llguidance reads; JSON
schemas converted by llama-cpp-python's port of llama.cpp's converter)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from inferplane.errors import InvalidRequest


def grammar_for(response_format: Mapping[str, Any] | None) -> str | None:
    """The GBNF grammar for a `response_format` (None: free text). A JSON schema is
    followed whether or not the caller asked for `strict`: the grammar cannot do less."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    from llama_cpp import llama_grammar

    if kind == "json_object":
        return str(llama_grammar.JSON_GBNF)
    assert response_format is not None and kind == "json_schema"
    schema = (response_format.get("json_schema") or {}).get("schema") or {}
    _, rules = json_rules([(schema, "response_format.json_schema.schema")], names=[""])
    return rules


def json_rules(
    schemas: list[tuple[Any, str]],
    names: list[str] | None = None,
    reserved: frozenset[str] = frozenset(),
) -> tuple[list[str], str]:
    """GBNF rules for JSON values following each of `schemas` ((schema, the parameter
    it came in)): each schema's rule name (`names`, else args0, args1...), and the
    rules, sharing one converter (so one set of JSON primitives). The name "" is
    `root`. A schema whose rules would take a `reserved` name (the caller's own rules;
    in llama.cpp the last definition of a rule wins) or whose grammar would be too
    large for llama.cpp to parse safely is refused by name."""
    from llama_cpp import llama_grammar

    converter = llama_grammar.SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    out: list[str] = []
    for i, (schema, param) in enumerate(schemas):
        name = names[i] if names else f"args{i}"
        if not isinstance(schema, dict):
            raise InvalidRequest("A JSON schema must be an object.", param=param)
        _refuse_unenforced(schema, "schema", param)
        try:
            # The converter writes into what it resolves: the request's own stays as sent.
            resolved = converter.resolve_refs(copy.deepcopy(schema), "request")
            out.append(converter.visit(resolved, name))  # type: ignore[no-untyped-call]
        except Exception as exc:  # the converter raises whatever its schema walk meets
            raise InvalidRequest(
                f"The JSON schema cannot be followed here: {exc}", param=param
            ) from None
        taken = reserved.intersection(converter._rules)
        if taken:
            raise InvalidRequest(
                f"The JSON schema defines '{sorted(taken)[0]}', a name taken here; rename it.",
                param=param,
            )
    # This converter lets raw control characters into strings, which JSON forbids (a
    # tab in a name failed `json.loads`, measured); llama.cpp's own excludes them.
    grammar: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(
            f"The JSON schemas make a grammar of {len(grammar)} bytes, over the "
            f"{MAX_GRAMMAR_BYTES} this server follows; simplify them.",
            param=schemas[0][1],
        )
    return out, grammar.replace(_LAX_CHAR, _JSON_CHAR)


# Counted repetitions become that many nested rules: llama.cpp's grammar parser, which
# the worker used first, overflowed its stack at ~20,000 (a `maxLength` of 20000),
# measured. Counts and sizes stay well below that, whatever reads the grammar.
MAX_REPEAT = 1000
MAX_GRAMMAR_BYTES = 512 * 1024
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_PATTERN_COUNT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


_LAX_CHAR = 'char ::= [^"\\\\] '
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] '


# JSON Schema keywords the grammar converter does not enforce: a schema using one is
# refused by name rather than followed in part (an `age` with a `maximum` of 120 came
# back as 126, measured).
_UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "if",
        "then",
        "else",
        "not",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _refuse_unenforced(schema: Any, path: str, param: str) -> None:
    """Refuse, naming `param`, a schema (at `path`) with a keyword the converter does
    not enforce, a count too large to follow safely, or a malformed shape."""
    if not isinstance(schema, dict):
        return
    for keyword in schema:
        if keyword in _UNENFORCED:
            raise InvalidRequest(
                f"The JSON schema uses '{keyword}' (at {path}), which structured outputs "
                "here cannot enforce; leave it out.",
                param=param,
            )
    counts = [schema.get(k) for k in _COUNTS]
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        counts += [int(n) for m in _PATTERN_COUNT.finditer(pattern) for n in m.groups() if n]
    if any(isinstance(n, int) and n > MAX_REPEAT for n in counts):
        raise InvalidRequest(
            f"The JSON schema asks for a length or a repetition over {MAX_REPEAT} (at "
            f"{path}), more than structured outputs here follow.",
            param=param,
        )
    for key in _SUBSCHEMA_MAPS:
        subs = schema.get(key) or {}
        if not isinstance(subs, dict):
            raise InvalidRequest(f"'{key}' must be an object (at {path}).", param=param)
        for name, sub in subs.items():
            _refuse_unenforced(sub, f"{path}.{key}.{name}", param)
    for key in _SUBSCHEMA_LISTS:
        subs = schema.get(key) or []
        if not isinstance(subs, list):
            raise InvalidRequest(f"'{key}' must be a list (at {path}).", param=param)
        for i, sub in enumerate(subs):
            _refuse_unenforced(sub, f"{path}.{key}[{i}]", param)
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        subs = sub if isinstance(sub, list) else [sub]
        for i, one in enumerate(subs):
            where = f"{path}.{key}" + (f"[{i}]" if isinstance(sub, list) else "")
            _refuse_unenforced(one, where, param)
