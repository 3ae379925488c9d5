"""The benchmark's Python contenders, each the plain way to write the server.

``asyncio`` and ``uvloop`` use asyncio streams (uvloop only swaps the event
loop); ``socketserver`` is the thread-per-client ``ThreadingTCPServer`` of the
standard library, the blocking design of the original example made
concurrent. All speak sockdemo's raw and framed protocols with the same
prefix and ``bye`` rule, and print the same first line as sockdemo's server.

    python tests/bench/py_servers.py --kind asyncio --port 0 --protocol raw

``--kind uvloop-relay`` is the fan-out benchmark's contender instead: every
framed message relayed to every other connection.

``--handler echo|busy|async_echo`` makes the reply the result of that function
from ``handlers.py`` (the same one sockdemo's ``--handler`` runs), called (or
awaited) inline on the event loop or the client's thread: the way a
pure-Python server runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import socketserver
import struct
import sys
from typing import Any, Callable

import handlers

PREFIX = b"Server received: "
BYE = b"Server acknowledging bye. Goodbye!"


def is_bye(message: bytes) -> bool:
    return message.strip().lower() == b"bye"


def framed(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def echo(message: bytes) -> bytes:
    return PREFIX + message


#: Computes a reply; `main` replaces it when a handler is asked for.
reply: Callable[[bytes], Any] = echo
#: Is `reply` a coroutine function, whose result the streams servers await?
AWAIT = False


def with_handler(handler: Callable[[str], Any]) -> Callable[[bytes], Any]:
    if asyncio.iscoroutinefunction(handler):

        async def awaited(message: bytes) -> bytes:
            text = await handler(message.decode("utf-8", "surrogateescape"))
            return text.encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]

        return awaited

    def call(message: bytes) -> bytes:
        text = handler(message.decode("utf-8", "surrogateescape"))
        return text.encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]

    return call


async def serve_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            if is_bye(data):
                writer.write(BYE)
                break
            out = reply(data)
            writer.write(await out if AWAIT else out)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            payload = await reader.readexactly(length)
            if is_bye(payload):
                writer.write(framed(BYE))
                break
            out = reply(payload)
            writer.write(framed(await out if AWAIT else out))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve_asyncio(port: int, protocol: str) -> None:
    handler = serve_framed if protocol == "framed" else serve_raw
    server = await asyncio.start_server(handler, "127.0.0.1", port, backlog=4096)
    print(f"Server listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


#: A relay drops a listener this far behind, as sockdemo's sessions do.
RELAY_BEHIND = 1 << 20


async def serve_relay(port: int) -> None:
    """The fan-out relay written the plain way: a set of writers, and each
    framed message written to every other one."""
    writers: set[asyncio.StreamWriter] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(4)
                message = header + await reader.readexactly(struct.unpack("!I", header)[0])
                for other in list(writers):
                    if other is writer:
                        continue
                    if other.transport.get_write_buffer_size() > RELAY_BEHIND:
                        writers.discard(other)
                        other.close()
                    else:
                        other.write(message)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", port, backlog=4096)
    print(f"Server listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class RawHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(1024):
            if is_bye(data):
                conn.sendall(BYE)
                return
            conn.sendall(reply(data))


class FramedHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while len(header := self.rfile.read(4)) == 4:
            payload = self.rfile.read(struct.unpack("!I", header)[0])
            if is_bye(payload):
                self.request.sendall(framed(BYE))
                return
            self.request.sendall(framed(reply(payload)))


class ThreadingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 4096


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kind", choices=("asyncio", "uvloop", "socketserver", "uvloop-relay"), required=True
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--protocol", choices=("raw", "framed"), default="raw")
    parser.add_argument(
        "--handler", choices=("echo", "busy", "async_echo"), help="reply with this function"
    )
    args = parser.parse_args()
    if args.handler:
        global reply, AWAIT
        reply = with_handler(getattr(handlers, args.handler))
        AWAIT = asyncio.iscoroutinefunction(reply)
        if AWAIT and args.kind == "socketserver":
            parser.error("an async handler needs an event loop: --kind asyncio or uvloop")
    try:
        if args.kind == "socketserver":
            handler = FramedHandler if args.protocol == "framed" else RawHandler
            with ThreadingServer(("127.0.0.1", args.port), handler) as server:
                print(f"Server listening on 127.0.0.1:{server.server_address[1]}", flush=True)
                server.serve_forever()
        elif args.kind == "uvloop":
            import uvloop

            uvloop.install()
            asyncio.run(serve_asyncio(args.port, args.protocol))
        elif args.kind == "uvloop-relay":
            import uvloop

            uvloop.install()
            asyncio.run(serve_relay(args.port))
        else:
            asyncio.run(serve_asyncio(args.port, args.protocol))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
