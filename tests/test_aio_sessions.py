"""Async sessions (``sockdemo.aio.start_server(session=...)``) on asyncio's
loop and uvloop, with Python's own sockets and sockdemo's aio client as
peers."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

import sockdemo
import sockdemo.aio
from conftest import frame

try:
    import uvloop
except ImportError:  # pragma: no cover - the test group installs it
    uvloop = None

T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
    ),
]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Run[Any]]:
    """Runs a coroutine to the end on a fresh loop of the kind asked for."""

    def run(main: Awaitable[T]) -> T:
        loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(main, 60))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    yield run


async def open_framed(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio streams peer: independent of sockdemo's client."""
    return await asyncio.open_connection("127.0.0.1", port)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    return await reader.readexactly(length)


joined: list[int] = []


async def relay(conn: sockdemo.aio.Connection) -> None:
    joined.append(conn.id)  # broadcasts reach it from now on
    async for message in conn:
        conn.server.broadcast(message, exclude=conn)


def test_relays_keep_each_senders_order(run: Run[None]) -> None:
    async def main() -> None:
        server = await sockdemo.aio.start_server(session=relay, protocol="framed")
        async with server:
            port = server.server_address[1]
            joined.clear()
            peers = [await open_framed(port) for _ in range(20)]
            while len(joined) < 20:
                await asyncio.sleep(0.005)
            senders = peers[:4]
            for i in range(50):
                for n, (_, writer) in enumerate(senders):
                    writer.write(frame(f"{n}:{i}".encode()))
            for reader, _ in peers[4:]:
                seen: dict[str, list[int]] = {str(n): [] for n in range(4)}
                for _ in range(200):
                    sender, i = (await read_frame(reader)).decode().split(":")
                    seen[sender].append(int(i))
                assert all(order == list(range(50)) for order in seen.values())
            for _, writer in peers:
                writer.close()

    run(main())


def test_state_lives_in_the_coroutine_and_send_replies_in_order(run: Run[None]) -> None:
    async def counter(conn: sockdemo.aio.Connection) -> None:
        total = 0
        async for message in conn:
            total += int(message)
            await conn.send(f"total {total}")
            await conn.send(b"then bytes")

    async def main() -> None:
        server = await sockdemo.aio.start_server(session=counter, protocol="framed")
        async with server:
            port = server.server_address[1]
            client = await sockdemo.aio.connect("127.0.0.1", port, protocol="framed", timeout=10)
            async with client:
                await client.send("2")
                await client.send("3")
                replies = [await client.receive() for _ in range(4)]
            assert replies == [b"total 2", b"then bytes", b"total 5", b"then bytes"]

    run(main())


def test_the_coroutine_returning_closes_the_connection(run: Run[None]) -> None:
    async def greet_once(conn: sockdemo.aio.Connection) -> None:
        await conn.send(f"hello {conn.peer[0]}")

    async def main() -> None:
        server = await sockdemo.aio.start_server(session=greet_once, protocol="framed")
        async with server:
            port = server.server_address[1]
            client = await sockdemo.aio.connect("127.0.0.1", port, protocol="framed", timeout=10)
            async with client:
                assert [m async for m in client] == ["hello 127.0.0.1"]

    run(main())


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_an_exception_closes_only_that_connection(
    run: Run[None], exception: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    async def fragile(conn: sockdemo.aio.Connection) -> None:
        async for message in conn:
            if message == "boom":
                await asyncio.sleep(0)
                raise exception("boom")
            await conn.send("fine")

    async def main() -> None:
        server = await sockdemo.aio.start_server(session=fragile, protocol="framed")
        async with server:
            port = server.server_address[1]
            ok = await sockdemo.aio.connect("127.0.0.1", port, protocol="framed", timeout=10)
            doomed = await sockdemo.aio.connect("127.0.0.1", port, protocol="framed", timeout=10)
            await doomed.send("boom")
            assert [m async for m in doomed] == []
            assert await ok.request("still") == "fine"
            assert server.is_serving()
            await ok.close()
            await doomed.close()

    with caplog.at_level(logging.ERROR, logger="sockdemo.handler"):
        run(main())
    assert "Session failed" in caplog.text


def test_closing_the_server_ends_every_session(run: Run[None]) -> None:
    ended: list[int] = []
    started: list[int] = []

    async def wait_for_ever(conn: sockdemo.aio.Connection) -> None:
        started.append(conn.id)
        try:
            async for _ in conn:
                pass
        finally:
            ended.append(conn.id)

    async def main() -> None:
        server = await sockdemo.aio.start_server(
            session=wait_for_ever, protocol="framed", shutdown_timeout=1.0
        )
        port = server.server_address[1]
        peers = [await open_framed(port) for _ in range(3)]
        while len(started) < 3:
            await asyncio.sleep(0.005)
        server.close()
        await server.wait_closed()
        for reader, writer in peers:
            assert await reader.read() == b""
            writer.close()

    run(main())
    assert sorted(ended) == [1, 2, 3]


def test_send_waits_for_a_slow_reader_and_says_false_once_it_is_gone(run: Run[None]) -> None:
    results: list[bool] = []

    async def flood(conn: sockdemo.aio.Connection) -> None:
        chunk = "x" * 60_000
        for _ in range(500):  # 30 MB, more than the kernel's buffers
            if not await conn.send(chunk):
                results.append(False)
                return
        results.append(True)

    async def main() -> None:
        server = await sockdemo.aio.start_server(
            session=flood, protocol="framed", max_message_size=1 << 20
        )
        async with server:
            port = server.server_address[1]
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            received = 0
            # Read a little; then go away while the session waits.
            while received < 100_000:
                received += len(await loop.sock_recv(sock, 65536))
            sock.close()
            while not results:
                await asyncio.sleep(0.01)

    run(main())
    assert results == [False]


def test_an_async_session_behind_tls(run: Run[None], tmp_path: Any) -> None:
    cert, key = sockdemo.generate_self_signed(str(tmp_path))

    async def echo(conn: sockdemo.aio.Connection) -> None:
        async for message in conn:
            await conn.send(message[::-1])

    async def main() -> None:
        server = await sockdemo.aio.start_server(
            session=echo, protocol="framed", certfile=cert, keyfile=key
        )
        async with server:
            port = server.server_address[1]
            client = await sockdemo.aio.connect(
                "127.0.0.1", port, protocol="framed", cafile=cert, server_hostname="localhost"
            )
            async with client:
                assert await client.request("stressed") == "desserts"

    run(main())


def test_a_handler_and_a_session_are_exclusive(run: Run[None]) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="not both"):
            await sockdemo.aio.start_server(lambda m: m, session=relay)
        with pytest.raises(TypeError, match="async def"):
            await sockdemo.aio.start_server(session="relay")  # type: ignore[arg-type]

    run(main())
