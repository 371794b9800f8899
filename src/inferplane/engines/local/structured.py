"""Structured outputs for local models: OpenAI's `response_format` as the grammar the
worker decodes under (llama.cpp's GBNF; JSON schemas converted by llama-cpp-python's
port of llama.cpp's converter)."""

from __future__ import annotations

import copy
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
    schemas: list[tuple[Any, str]], names: list[str] | None = None
) -> tuple[list[str], str]:
    """GBNF rules for JSON values following each of `schemas` ((schema, the parameter
    it came in)): each schema's rule name (`names`, else args0, args1...), and the
    rules, sharing one converter (so one set of JSON primitives). The name "" is
    `root`."""
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
    # This converter lets raw control characters into strings, which JSON forbids (a
    # tab in a name failed `json.loads`, measured); llama.cpp's own excludes them.
    grammar: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    return out, grammar.replace(_LAX_CHAR, _JSON_CHAR)


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
    if not isinstance(schema, dict):
        return
    for keyword in schema:
        if keyword in _UNENFORCED:
            raise InvalidRequest(
                f"The JSON schema uses '{keyword}' (at {path}), which structured outputs "
                "here cannot enforce; leave it out.",
                param=param,
            )
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            _refuse_unenforced(sub, f"{path}.{key}.{name}", param)
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or []):
            _refuse_unenforced(sub, f"{path}.{key}[{i}]", param)
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        subs = sub if isinstance(sub, list) else [sub]
        for i, one in enumerate(subs):
            where = f"{path}.{key}" + (f"[{i}]" if isinstance(sub, list) else "")
            _refuse_unenforced(one, where, param)
