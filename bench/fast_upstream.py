"""A minimal, fast OpenAI-compatible upstream for measuring gateway overhead.

Raw asyncio (uvloop) HTTP/1.1 with keep-alive; every POST to .../chat/completions gets
the same short answer: one JSON body, or with `"stream": true` a stream of 20 SSE
chunks and [DONE], written at once. It does almost nothing, so what a gateway in front
of it adds is what the gateway costs.

    python bench/fast_upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvloop

_WORDS = 20
_BODY = json.dumps(
    {
        "id": "chatcmpl-fast",
        "object": "chat.completion",
        "created": 0,
        "model": "fast",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "word " * _WORDS},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": _WORDS, "total_tokens": 12 + _WORDS},
    }
).encode()
_PLAIN = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


def _chunk(obj: object) -> bytes:
    data = b"data: " + json.dumps(obj).encode() + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _stream() -> bytes:
    base = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 0, "model": "f"}
    parts = [
        _chunk({**base, "choices": [{"index": 0, "delta": {"content": "word "}}]})
        for _ in range(_WORDS)
    ]
    done = {"index": 0, "delta": {}, "finish_reason": "stop"}
    parts.append(_chunk({**base, "choices": [done]}))
    usage = {"prompt_tokens": 12, "completion_tokens": _WORDS, "total_tokens": 12 + _WORDS}
    parts.append(_chunk({**base, "choices": [], "usage": usage}))
    end = b"data: [DONE]\n\n"
    parts.append(f"{len(end):x}\r\n".encode() + end + b"\r\n0\r\n\r\n")
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(parts)


_STREAM = _stream()
_MODELS = b'{"object":"list","data":[{"id":"fast","object":"model"}]}'
_MODELS_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_MODELS)}\r\n\r\n".encode()
    + _MODELS
)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if head.startswith(b"GET"):
                writer.write(_MODELS_REPLY)
            else:
                writer.write(_STREAM if b'"stream":true' in body.replace(b" ", b"") else _PLAIN)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
