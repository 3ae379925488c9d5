"""sockdemo.aio on a loop that cannot watch a descriptor, as Windows' Proactor
loop cannot: a thread of sockdemo's watches the connections and asks the loop
for each turn.

The loop here is ``conftest.ProactorLikeLoop``: asyncio's own, refusing
``add_reader`` and ``add_writer`` the way the Proactor loop does. The aio
client on it is tested with the rest of ``test_aio.py``, which runs on it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest

import sockdemo
import sockdemo.aio
from conftest import ProactorLikeLoop, recv_exactly

T = TypeVar("T")


def run(main: Awaitable[T]) -> T:
    loop = ProactorLikeLoop()
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
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
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
    refused = ProactorLikeLoop.refused

    async def handler(message: str) -> str | None:
        if message == "later":
            await asyncio.sleep(0.01)  # suspends: finished in a Task
            return "LATER"
        if message == "echo":
            return None
        return message.upper()

    async def main() -> None:
        async with await sockdemo.aio.start_server(handler, port=0) as server:
            assert ProactorLikeLoop.refused == refused + 1, "add_reader was not tried"
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


def test_pipelined_bursts_are_all_answered_through_the_watching_thread() -> None:
    """The watching thread collects readiness while the loop's thread reads
    and writes: an edge that lands between a read and its WouldBlock must
    not be cleared by it, or that connection waits for ever. The clients
    are threads with blocking sockets, so that their bytes arrive while the
    loop's thread is at work."""

    def client(address: tuple[str, int], n: int) -> None:
        with socket.create_connection(address, timeout=10) as sock:
            for burst in range(5):
                messages = [f"{n}:{burst}:{i}".encode() for i in range(50)]
                # One send each: the bytes arrive while the loop reads.
                for message in messages:
                    sock.sendall(frame(message))
                for message in messages:
                    assert recv_frame(sock) == message.upper()

    async def main() -> None:
        async with await sockdemo.aio.start_server(upper, port=0, protocol="framed") as server:
            address = server.server_address[:2]
            loop = asyncio.get_running_loop()
            with concurrent.futures.ThreadPoolExecutor(20) as clients:
                await asyncio.gather(
                    *(loop.run_in_executor(clients, client, address, n) for n in range(20))
                )
            assert server.stats()["messages"] == 20 * 5 * 50

    for _ in range(10):
        run(main())


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!I", recv_exactly(sock, 4))
    return recv_exactly(sock, length)


def client_watchers() -> int:
    """Threads watching an aio client's socket for a loop that cannot."""
    return sum(t.name == "sockdemo-aio-watch" for t in threading.enumerate())


def test_an_aio_client_is_watched_by_a_thread_that_ends_with_it(serve_in_thread) -> None:
    address = serve_in_thread

    async def main() -> None:
        before = client_watchers()
        refused = ProactorLikeLoop.refused
        async with await sockdemo.aio.connect(
            *address, "framed", timeout=10, max_message_size=8 << 20
        ) as client:
            assert ProactorLikeLoop.refused > refused, "add_writer was not tried"
            assert client_watchers() == before + 1
            assert await client.request("hello") == "Server received: hello"
            # Pipelined, and larger than a socket's buffers: the thread
            # watches for writing as well as reading.
            big = "x" * (4 << 20)
            for _ in range(3):
                await client.send(big)
            for _ in range(3):
                assert await client.receive() == b"Server received: " + big.encode()
        assert client_watchers() == before, "closing the client ends its thread"

    run(main())


def test_an_aio_client_left_open_lets_its_thread_go_with_its_loop(serve_in_thread) -> None:
    address = serve_in_thread
    before = client_watchers()
    kept: list[sockdemo.aio.Client] = []

    async def main() -> None:
        client = await sockdemo.aio.connect(*address, "framed", timeout=10)
        assert await client.request("hello") == "Server received: hello"
        kept.append(client)

    run(main())
    # Never closed, and its loop closed: the thread sees that and ends,
    # letting the client go.
    deadline = time.monotonic() + 30
    while client_watchers() != before:
        assert time.monotonic() < deadline, "the client's thread outlived its loop"
        time.sleep(0.01)
    client = weakref.ref(kept.pop())
    gc.collect()
    assert client() is None, "the client was kept"


@pytest.fixture
def serve_in_thread() -> Iterator[tuple[str, int]]:
    """A sockdemo server (threads of its own, no loop) for the aio clients."""
    with sockdemo.Server(port=0, protocol="framed", max_message_size=8 << 20) as server:
        server.start()
        yield server.server_address[:2]
        server.shutdown()
