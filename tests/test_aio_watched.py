"""sockdemo.aio on a loop that cannot watch a descriptor, as Windows' Proactor
loop cannot: a thread of sockdemo's watches the connections and asks the loop
for each turn.

The loop here is asyncio's own with its public ``add_reader`` refused the way
the Proactor loop refuses it (``NotImplementedError``); its transports still
work, so asyncio streams and plain sockets are the peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

import sockdemo
import sockdemo.aio

T = TypeVar("T")


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop whose ``add_reader`` is refused, as the Proactor loop's is."""

    refused = 0

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        NoReaderLoop.refused += 1
        raise NotImplementedError


def run(main: Awaitable[T]) -> T:
    loop = NoReaderLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, 60))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def watchers() -> int:
    """Threads of this process watching for a loop (Linux names them)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "sockdemo-watch"
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return count


def await_watchers(count: int) -> None:
    """Waits (bounded: a loaded machine may be slow to end a thread) until
    ``count`` watching threads are left."""
    deadline = time.monotonic() + 30
    while watchers() != count:
        assert time.monotonic() < deadline, f"{watchers()} watching threads, not {count}"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def every_watching_thread_ends() -> Iterator[None]:
    """Each test's watching threads end once its server has finished (and
    later tests count from a steady number)."""
    before = watchers()
    yield
    await_watchers(before)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    return await reader.readexactly(length)


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def test_a_handler_is_served_through_the_watching_thread() -> None:
    before = watchers()
    refused = NoReaderLoop.refused

    async def handler(message: str) -> str | None:
        if message == "later":
            await asyncio.sleep(0.01)  # suspends: finished in a Task
            return "LATER"
        if message == "echo":
            return None
        return message.upper()

    async def main() -> None:
        async with await sockdemo.aio.start_server(handler, port=0) as server:
            assert NoReaderLoop.refused == refused + 1, "add_reader was not tried"
            await_watchers(before + 1)  # named by the thread itself, once it runs
            reader, writer = await asyncio.open_connection(*server.server_address[:2])
            for message, reply in [
                ("hello", "HELLO"),
                ("later", "LATER"),
                ("echo", "Server received: echo"),
                ("bye", sockdemo.BYE_REPLY),
            ]:
                writer.write(message.encode())
                assert (await reader.read(1024)).decode() == reply
            assert await reader.read(1024) == b""
            writer.close()

    run(main())
    await_watchers(before)


def test_fifty_sleeping_handlers_are_answered_together() -> None:
    async def handler(message: str) -> str:
        await asyncio.sleep(0.2)
        return message

    async def main() -> None:
        async with await sockdemo.aio.start_server(handler, port=0, protocol="framed") as server:
            peers = [await asyncio.open_connection(*server.server_address[:2]) for _ in range(50)]
            started = time.monotonic()
            for n, (_, writer) in enumerate(peers):
                writer.write(frame(str(n).encode()))
            replies = [await read_frame(reader) for reader, _ in peers]
            elapsed = time.monotonic() - started
            assert replies == [str(n).encode() for n in range(50)]
            # One after another would take 10 s; concurrently, 0.2 s. The
            # bound is generous for a loaded machine and still far below 10 s.
            assert elapsed < 5, elapsed
            for _, writer in peers:
                writer.close()

    run(main())


def test_a_session_server_relays_between_its_connections() -> None:
    joined: list[int] = []

    async def relay(conn: sockdemo.aio.Connection) -> None:
        joined.append(conn.id)
        async for message in conn:
            conn.server.broadcast(message, exclude=conn)

    async def main() -> None:
        server = await sockdemo.aio.start_server(session=relay, port=0, protocol="framed")
        async with server:
            peers = [await asyncio.open_connection(*server.server_address[:2]) for _ in range(5)]
            while len(joined) < 5:
                await asyncio.sleep(0.005)
            speaker = peers[0][1]
            for i in range(20):
                speaker.write(frame(f"line {i}".encode()))
            for reader, _ in peers[1:]:
                assert [await read_frame(reader) for _ in range(20)] == [
                    f"line {i}".encode() for i in range(20)
                ]
            for _, writer in peers:
                writer.close()

    run(main())


def test_closing_the_server_ends_its_sessions_and_the_watching_thread() -> None:
    before = watchers()

    async def wait_for_ever(conn: sockdemo.aio.Connection) -> None:
        async for _ in conn:
            pass

    async def main() -> None:
        server = await sockdemo.aio.start_server(
            session=wait_for_ever, port=0, shutdown_timeout=0.1
        )
        peers = [await asyncio.open_connection(*server.server_address[:2]) for _ in range(3)]
        for _, writer in peers:
            writer.write(b"hi")
            await writer.drain()
        server.close()
        await server.wait_closed()
        for reader, writer in peers:
            # Closed: an end, or a reset if the close beat "hi" to the session.
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
            writer.close()

    run(main())
    await_watchers(before)


def test_a_server_left_open_lets_its_thread_go_once_the_loop_is_closed() -> None:
    before = watchers()
    kept: list[Any] = []

    async def main() -> None:
        server = await sockdemo.aio.start_server(lambda message: message, port=0)
        reader, writer = await asyncio.open_connection(*server.server_address[:2])
        writer.write(b"x")
        assert await reader.read(1) == b"x"
        await_watchers(before + 1)
        writer.close()
        kept.append(server)

    run(main())
    # The loop is closed with the server still open. The thread ends at the
    # next thing it would ask the loop for: the client's close (maybe seen
    # already), or the server's stop once it is dropped.
    kept.clear()
    gc.collect()
    await_watchers(before)


@pytest.mark.parametrize("protocol", ["raw", "framed"])
def test_many_clients_through_the_watching_thread(protocol: str) -> None:
    async def main() -> None:
        async with await sockdemo.aio.start_server(upper, port=0, protocol=protocol) as server:
            address = server.server_address[:2]

            async def client(n: int) -> None:
                reader, writer = await asyncio.open_connection(*address)
                for i in range(10):
                    message = f"client {n} message {i}".encode()
                    if protocol == "framed":
                        writer.write(frame(message))
                        assert await read_frame(reader) == message.upper()
                    else:
                        writer.write(message)
                        assert await reader.read(1024) == message.upper()
                writer.close()

            await asyncio.gather(*(client(n) for n in range(200)))
            assert server.stats()["messages"] == 2000

    run(main())


async def upper(message: str) -> str:
    return message.upper()
