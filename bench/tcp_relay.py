"""A bare TCP relay: the floor of any extra hop through a user-space process.

Each client connection gets its own upstream connection and bytes are copied both ways
(uvloop), with no HTTP parsing. Placed on the gateway's core, it shows how much of a
gateway's added latency is the hop itself (two more socket reads and writes and a core
crossing) rather than the gateway's own work.

    python bench/tcp_relay.py --port 9101 --upstream 9100
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
    finally:
        writer.close()


async def _serve(port: int, upstream: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(
            _copy(reader, up_writer), _copy(up_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(_serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
