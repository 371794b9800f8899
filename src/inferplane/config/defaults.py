"""The embedded default: what `inferplane serve` runs with no config file."""

from __future__ import annotations

# The bundled Gemma 3 270M is a *base* model whose GGUF carries no chat template. Base
# models continue a plain transcript far better than Gemma's instruction-tuned turn
# tokens (measured: the turn format made it echo the question, this one answers), so
# chat messages are rendered as a transcript and generation stops at the next turn.
#
# Tools (OpenAI's `tools`) are listed first, with the form of a call; an assistant's
# calls and the tools' results are turns of the transcript. Calls are written as
# Hermes-style models write them: the form `engines/local/tools.py` decodes and reads.
DEFAULT_CHAT_TEMPLATE = (
    "{% if tools and tool_choice != 'none' %}"
    "You can call functions. To call one, answer with\n"
    '<tool_call>{"name": "the function\'s name", "arguments": {the arguments}}</tool_call>\n'
    "The functions:\n"
    "{% for t in tools %}{{ t.function | tojson }}\n{% endfor %}\n"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m.role in ('system', 'developer') %}{{ m.content }}\n\n"
    "{% elif m.role == 'assistant' %}Assistant: {{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}"
    '<tool_call>{"name": {{ c.function.name | tojson }}, '
    '"arguments": {{ c.function.arguments | tojson }}}</tool_call>'
    "{% endfor %}\n"
    "{% elif m.role == 'tool' %}Tool{% if m.name %} ({{ m.name }}){% endif %}: {{ m.content }}\n"
    "{% else %}User: {{ m.content }}\n"
    "{% endif %}"
    "{% endfor %}"
    "Assistant:"
)
DEFAULT_CHAT_STOP = ("\nUser:", "\nAssistant:")


def default_models() -> list[dict[str, object]]:
    return [
        {
            "id": "gemma-3-270m",
            "engine": "llamacpp",
            "bundled": "gemma3-270m-q4-k-m",
            "context_size": 2048,
            # Continuous batching: up to 16 streams decode together. Measured on 2 cores
            # (bench/batching.py, raw llama_decode loop): 16 sequences decode 1.31x the
            # tokens/s of 8 (231 against 176), 5.2x one; each slot holds 36 MiB of KV
            # cache at this context size.
            "parallel": 16,
        },
        {
            "id": "all-minilm-l6-v2",
            "engine": "sentence_transformers",
            "bundled": "all-minilm-l6-v2",
        },
    ]
