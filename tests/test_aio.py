"""sockdemo.aio: the asyncio server and client, on asyncio's loop and uvloop.

Real loops, real sockets on loopback; Python's own socket module and asyncio
streams are the independent peers where one is needed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

import sockdemo
import sockdemo.aio
from conftest import (
    ProactorLikeLoop,
    Script,
    frame,
    read_frame,
    read_until_closed,
    recv_exactly,
)

try:
    import uvloop
except ImportError:  # pragma: no cover - the test group installs it
    uvloop = None

T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed"),
    ),
    # No add_reader or add_writer, as on Windows: sockdemo's threads watch.
    "proactor-like",
]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Run[Any]]:
    """Runs a coroutine to the end on a fresh loop of the kind asked for."""
    loops: list[asyncio.AbstractEventLoop] = []

    def run(main: Awaitable[T]) -> T:
        loop = {
            "asyncio": asyncio.new_event_loop,
            "uvloop": lambda: uvloop.new_event_loop(),
            "proactor-like": ProactorLikeLoop,
        }[request.param]()
        loops.append(loop)
        try:
            return loop.run_until_complete(asyncio.wait_for(main, 60))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    yield run


async def upper(message: str) -> str:
    return message.upper()


# -- round trips --------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["raw", "framed"])
def test_echo_round_trip_in_the_message_type(run, protocol) -> None:
    async def main() -> None:
        async with await sockdemo.aio.start_server(None, protocol=protocol) as server:
            assert server.is_serving()
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port, protocol) as client:
                assert await client.request("hello") == "Server received: hello"
                assert await client.request(b"\xffbytes") == b"Server received: \xffbytes"
                assert await client.request("bye") == sockdemo.BYE_REPLY
        assert not server.is_serving()

    run(main())


@pytest.mark.parametrize("protocol", ["raw", "framed"])
def test_an_async_handler_decides_the_reply(run, protocol) -> None:
    async def handler(message: str) -> str | bytes | None:
        if message == "later":
            await asyncio.sleep(0.01)
            return "LATER"
        if message == "echo":
            return None
        if message == "bytes":
            return b"\x00\xff"
        return message.upper()

    async def main() -> None:
        async with await sockdemo.aio.start_server(handler, protocol=protocol) as server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port, protocol) as client:
                assert await client.request("hello") == "HELLO"
                assert await client.request("later") == "LATER"
                assert await client.request("echo") == "Server received: echo"
                assert await client.request(b"bytes") == b"\x00\xff"
                assert await client.request("bye") == sockdemo.BYE_REPLY

    run(main())


def test_a_plain_function_runs_on_the_loop_thread(run) -> None:
    threads: set[int] = set()

    def handler(message: str) -> str:
        threads.add(threading.get_ident())
        return message[::-1]

    async def main() -> None:
        async with await sockdemo.aio.start_server(handler) as server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port) as client:
                for _ in range(20):
                    assert await client.request("abc") == "cba"

    run(main())
    assert threads == {threading.get_ident()}


def network_thread_switches() -> int:
    """Times the server's network threads have gone to sleep and been woken."""
    switches = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                if comm.read().strip() != "sockdemo-server":
                    continue
            with open(f"/proc/self/task/{task}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):  # a thread that has just ended
            pass
    return switches


def test_the_loop_serves_its_connections_itself(run) -> None:
    """With a handler, the loop's thread reads and writes the connections
    too: the network threads are not woken per request (they would be, at
    least once each, were they reading and handing over)."""
    requests = 2000

    async def main() -> int:
        async with await sockdemo.aio.start_server(upper) as server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port) as client:
                assert await client.request("warm") == "WARM"
                before = network_thread_switches()
                for _ in range(requests):
                    assert await client.request("abc") == "ABC"
                return network_thread_switches() - before

    woken = run(main())
    assert woken < requests / 10, woken


def test_the_limits_hold_for_connections_served_on_the_loop(run) -> None:
    """The connection code the loop runs is the one the threads run: the
    client limit, the idle timeout and the size limit all hold."""

    async def reply(reader: asyncio.StreamReader) -> bytes:
        (length,) = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), 10))
        return await reader.readexactly(length)

    async def main() -> None:
        server = await sockdemo.aio.start_server(
            upper, protocol="framed", max_clients=1, idle_timeout=0.3, max_message_size=16
        )
        async with server:
            address = server.server_address
            first = await asyncio.open_connection(*address)
            first[1].write(frame(b"first"))
            assert await reply(first[0]) == b"FIRST"
            # The only slot is taken: the second client is connected (the
            # kernel queued it) but not served until the first is gone.
            second = await asyncio.open_connection(*address)
            second[1].write(frame(b"second"))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(second[0].read(100), 0.1)
            # The first falls silent: the idle timeout closes it, which
            # frees the slot for the second.
            assert await asyncio.wait_for(first[0].read(100), 10) == b""
            assert await reply(second[0]) == b"SECOND"
            second[1].write(frame(b"x" * 40))
            refused = await reply(second[0])
            assert refused == b"Error: message of 40 bytes exceeds the limit of 16 bytes"
            assert await asyncio.wait_for(second[0].read(), 10) == b""
            for _, writer in (first, second):
                writer.close()

    run(main())


def test_a_client_that_sends_then_closes_is_answered_and_let_go(run) -> None:
    """The client's end, arriving with its last message, is seen: the server
    answers, then closes its side too."""

    async def main() -> None:
        async with await sockdemo.aio.start_server(upper) as server:
            for i in range(20):
                reader, writer = await asyncio.open_connection(*server.server_address)
                writer.write(f"last {i}".encode())
                writer.write_eof()
                # Everything up to the server's own end: it closes once it
                # has read the client's.
                reply = await asyncio.wait_for(reader.read(), 10)
                assert reply == f"LAST {i}".encode()
                writer.close()
            while server.stats()["connections_active"]:
                await asyncio.sleep(0.01)

    run(main())


def test_any_asyncio_streams_client_is_served(run) -> None:
    """The server speaks the same protocol to a client that is not sockdemo's."""

    async def main() -> None:
        async with await sockdemo.aio.start_server(upper, protocol="framed") as server:
            reader, writer = await asyncio.open_connection(*server.server_address)
            writer.write(frame(b"one") + frame(b"two"))
            for expected in (b"ONE", b"TWO"):
                header = await reader.readexactly(4)
                assert await reader.readexactly(int.from_bytes(header, "big")) == expected
            writer.close()
            await writer.wait_closed()

    run(main())


# -- many at once ---------------------------------------------------------------


def test_fifty_sleeping_handlers_are_answered_together(run) -> None:
    async def handler(message: str) -> str:
        await asyncio.sleep(1)
        return "slept " + message

    async def one(port: int, i: int) -> str:
        async with await sockdemo.aio.connect("127.0.0.1", port, timeout=10) as client:
            return await client.request(str(i))

    async def main() -> float:
        async with await sockdemo.aio.start_server(handler) as server:
            port = server.server_address[1]
            started = time.monotonic()
            replies = await asyncio.gather(*(one(port, i) for i in range(50)))
            elapsed = time.monotonic() - started
            assert replies == [f"slept {i}" for i in range(50)]
            return elapsed

    elapsed = run(main())
    # Fifty one-second handlers one after another would take fifty seconds.
    assert 0.9 < elapsed < 5, elapsed


def test_pipelined_replies_keep_their_order(run) -> None:
    rng = random.Random(7)

    async def handler(message: str) -> str:
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() / 200)
        return "re " + message

    async def one(port: int, c: int) -> None:
        async with await sockdemo.aio.connect("127.0.0.1", port, "framed", timeout=10) as client:
            for i in range(50):
                await client.send(f"{c}:{i}")
            for i in range(50):
                assert await client.receive() == f"re {c}:{i}".encode()

    async def main() -> None:
        async with await sockdemo.aio.start_server(handler, protocol="framed") as server:
            await asyncio.gather(*(one(server.server_address[1], c) for c in range(20)))

    run(main())


def test_a_thousand_clients_on_one_loop(run) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2500:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}: 1,000 clients need about 2,100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))

    async def main() -> None:
        async with await sockdemo.aio.start_server(upper, max_clients=1000) as server:
            port = server.server_address[1]
            clients = await asyncio.gather(
                *(sockdemo.aio.connect("127.0.0.1", port, timeout=30) for _ in range(1000))
            )
            replies = await asyncio.gather(*(c.request(f"m{i}") for i, c in enumerate(clients)))
            assert replies == [f"M{i}" for i in range(1000)]
            assert server.stats()["connections_active"] == 1000
            await asyncio.gather(*(c.close() for c in clients))

    try:
        run(main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- failures ---------------------------------------------------------------------


def test_a_handler_that_raises_closes_only_its_connection(run, caplog) -> None:
    async def handler(message: str) -> str:
        if message == "boom now":
            raise RuntimeError("boom at once")
        if message == "boom later":
            await asyncio.sleep(0.01)
            raise RuntimeError("boom after a wait")
        if message == "wrong type":
            return 42  # type: ignore[return-value]
        return message

    async def main() -> None:
        async with await sockdemo.aio.start_server(handler) as server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port) as bystander:
                for bad in ("boom now", "boom later", "wrong type"):
                    async with await sockdemo.aio.connect("127.0.0.1", port) as client:
                        with pytest.raises(sockdemo.ServerClosedError):
                            await client.request(bad)
                    assert await bystander.request("still here") == "still here"

    with caplog.at_level(logging.ERROR, logger="sockdemo.handler"):
        run(main())
    logged = [r for r in caplog.records if r.name == "sockdemo.handler"]
    assert len(logged) == 3, logged
    texts = "\n".join(str(r.exc_info[1]) for r in logged if r.exc_info)
    assert "boom at once" in texts
    assert "boom after a wait" in texts
    assert "not int" in texts


def test_a_cancelled_request_closes_the_connection_and_leaves_nothing(run) -> None:
    async def main() -> None:
        held = asyncio.Event()

        async def handler(message: str) -> str:
            await held.wait()
            return message

        async with await sockdemo.aio.start_server(handler, shutdown_timeout=0.2) as server:
            port = server.server_address[1]
            client = await sockdemo.aio.connect("127.0.0.1", port)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.request("held"), 0.2)
            with pytest.raises(ConnectionAbortedError, match="cancelled"):
                await client.request("again")
            # Nothing is left running for the client: only this test, the
            # fixture's timeout and the server's handler, still held.
            left = {
                t.get_coro().__name__  # type: ignore[union-attr]
                for t in asyncio.all_tasks()
                if not t.done() and t is not asyncio.current_task()
            }
            assert left <= {"wait_for", "_answer"}, left

            other = await sockdemo.aio.connect("127.0.0.1", port)
            task = asyncio.ensure_future(other.request("held too"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(ConnectionError):
                await other.send("after")
            held.set()

    run(main())


def test_a_client_timeout_is_a_timeout_error_then_the_connection_is_closed(run) -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def handler(message: str) -> str:
            await never.wait()
            return message

        async with await sockdemo.aio.start_server(handler, shutdown_timeout=0.2) as server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port, timeout=0.2) as client:
                with pytest.raises(TimeoutError):
                    await client.request("held")
                with pytest.raises(ConnectionAbortedError, match="timed out"):
                    await client.request("again")

    run(main())


def test_close_cancels_suspended_handlers_after_the_grace_period(run) -> None:
    cancelled: list[str] = []
    entered: list[str] = []

    async def main() -> float:
        async def handler(message: str) -> str:
            entered.append(message)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(message)
                raise
            return message

        server = await sockdemo.aio.start_server(handler, shutdown_timeout=0.3)
        port = server.server_address[1]
        clients = [await sockdemo.aio.connect("127.0.0.1", port) for _ in range(3)]
        for i, client in enumerate(clients):
            await client.send(f"held {i}")
        while len(entered) < 3:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        server.close()
        assert not server.is_serving()
        await server.wait_closed()
        elapsed = time.monotonic() - started
        for client in clients:
            with pytest.raises(sockdemo.ServerClosedError):
                await client.receive()
            await client.close()
        return elapsed

    elapsed = run(main())
    assert sorted(cancelled) == ["held 0", "held 1", "held 2"]
    assert 0.25 < elapsed < 5, elapsed


def test_a_loop_that_stops_turning_does_not_hold_up_the_shutdown(run) -> None:
    async def main() -> None:
        server = await sockdemo.aio.start_server(upper, shutdown_timeout=0.3)
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(server.server_address, timeout=10)
        sock.setblocking(False)
        await loop.sock_sendall(sock, b"still here")
        assert await loop.sock_recv(sock, 100) == b"STILL HERE"
        sock.setblocking(True)
        cut = threading.Event()

        def watch() -> None:
            if read_until_closed(sock) == b"":
                cut.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        server.close()
        # Synchronous code holds the loop, which can no longer serve the
        # connections on it: past the grace period the server cuts them.
        assert cut.wait(10), "the shutdown waited for a loop that did not turn"
        watcher.join()
        sock.close()
        await server.wait_closed()
        assert server.stats()["connections_active"] == 0

    run(main())


def test_serve_forever_returns_once_closed(run) -> None:
    async def main() -> None:
        server = await sockdemo.aio.start_server(upper)
        serving = asyncio.ensure_future(server.serve_forever())
        async with await sockdemo.aio.connect("127.0.0.1", server.server_address[1]) as client:
            assert await client.request("up") == "UP"
        with pytest.raises(RuntimeError, match="already running"):
            await server.serve_forever()
        server.close()
        await serving
        with pytest.raises(RuntimeError, match="closed"):
            await server.serve_forever()

    run(main())


def test_connecting_to_nothing_is_connection_refused(run) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError):
            await sockdemo.aio.connect("127.0.0.1", port)

    run(main())


def test_handler_threads_is_refused_with_a_reason(run) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="handlers run on the loop"):
            await sockdemo.aio.start_server(upper, handler_threads=4)

    run(main())


# -- TLS ---------------------------------------------------------------------------


def test_tls_through_the_async_client(run, tmp_path) -> None:
    cert, key = sockdemo.generate_self_signed(tmp_path)

    async def main() -> None:
        server = await sockdemo.aio.start_server(
            upper, certfile=cert, keyfile=key, protocol="framed"
        )
        async with server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect(
                "127.0.0.1", port, "framed", cafile=str(cert), timeout=10
            ) as client:
                assert await client.request("secret") == "SECRET"
                big = "x" * 200_000
                assert await client.request(big) == big.upper()
            # A plaintext client hears that the server speaks TLS.
            async with await sockdemo.aio.connect("127.0.0.1", port, "framed", timeout=10) as plain:
                with pytest.raises(sockdemo.ProtocolError, match="speaks TLS"):
                    await plain.request("hello")
            # A TLS client of a plaintext server is told so. (The echo: a
            # handler that upper-cases the ClientHello could turn its length
            # fields into ones TLS would wait on.)
            async with await sockdemo.aio.start_server(None) as plaintext:
                with pytest.raises(sockdemo.TLSError):
                    await sockdemo.aio.connect(
                        "127.0.0.1", plaintext.server_address[1], cafile=str(cert), timeout=10
                    )

    run(main())


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_big_pipelined_replies_are_all_read(run, tmp_path, tls) -> None:
    """Far more than one reply waits unread: the client stops reading only
    with whole replies in hand, never in the middle of one."""
    cert, key = sockdemo.generate_self_signed(tmp_path)
    options: dict[str, Any] = {"certfile": cert, "keyfile": key} if tls else {}

    async def main() -> None:
        async with await sockdemo.aio.start_server(None, protocol="framed", **options) as server:
            host, port = server.server_address
            async with await sockdemo.aio.connect(
                host, port, "framed", timeout=10, cafile=str(cert) if tls else None
            ) as client:
                messages = [bytes([65 + i]) * 300_000 for i in range(5)]
                for message in messages:
                    await client.send(message)
                for message in messages:
                    assert await client.receive() == b"Server received: " + message

    run(main())


def test_the_async_server_speaks_tls_to_python_ssl(run, tmp_path) -> None:
    """Python's own ssl module as the independent peer."""
    import ssl

    cert, key = sockdemo.generate_self_signed(tmp_path)

    def talk(port: int) -> bytes:
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(frame(b"over tls"))
                return read_frame(tls)

    async def main() -> bytes:
        async with await sockdemo.aio.start_server(
            upper, certfile=cert, keyfile=key, protocol="framed"
        ) as server:
            return await asyncio.get_running_loop().run_in_executor(
                None, talk, server.server_address[1]
            )

    assert run(main()) == b"OVER TLS"


def test_a_blocking_socket_client_is_answered_by_a_sync_handler(run) -> None:
    async def main() -> None:
        async with await sockdemo.aio.start_server(str.upper) as server:

            def talk() -> bytes:
                with socket.create_connection(server.server_address, timeout=10) as sock:
                    sock.sendall(b"plain")
                    return recv_exactly(sock, 5)

            assert await asyncio.get_running_loop().run_in_executor(None, talk) == b"PLAIN"

    run(main())


# -- Ctrl+C -------------------------------------------------------------------------

PROGRAM = """
import asyncio, sys, sockdemo.aio

async def handler(message):
    await asyncio.sleep(0)
    return "re " + message

async def chatter(port, connected):
    async with await sockdemo.aio.connect("127.0.0.1", port) as client:
        assert await client.request("tick") == "re tick"
        connected.release()
        try:
            while True:
                await client.request("tick")
        except ConnectionError:
            pass  # the server closed first

async def main():
    server = await sockdemo.aio.start_server(handler)
    async with server:
        port = server.server_address[1]
        connected = asyncio.Semaphore(0)
        talking = [asyncio.ensure_future(chatter(port, connected)) for _ in range(4)]
        for _ in talking:
            await connected.acquire()  # Ctrl+C must find every client mid-conversation
        print("ready", flush=True)
        await server.serve_forever()

try:
    {runner}(main())
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


@pytest.mark.parametrize(
    "runner",
    [
        "asyncio.run",
        pytest.param(
            "uvloop.run",
            marks=pytest.mark.skipif(
                uvloop is None or not hasattr(uvloop, "run"), reason="uvloop.run is not available"
            ),
        ),
    ],
)
def test_ctrl_c_stops_an_asyncio_program_quietly(runner) -> None:
    prelude = "import uvloop\n" if runner.startswith("uvloop") else ""
    script = Script("-c", prelude + PROGRAM.format(runner=runner))
    try:
        script.wait_for("ready")
        started = time.monotonic()
        script.proc.send_signal(signal.SIGINT)
        code, lines = script.finish(10)
        elapsed = time.monotonic() - started
    finally:
        script.kill()
    assert code == 0, lines
    assert lines[-1] == "stopped", lines
    noise = [line for line in lines if line not in ("ready", "stopped")]
    assert noise == [], noise
    assert elapsed < 3, elapsed


def test_sockdemo_aio_is_there_after_import_sockdemo_and_only_loaded_on_use() -> None:
    code = (
        "import sys, sockdemo; print('sockdemo.aio' in sys.modules); "
        "print(sockdemo.aio.start_server.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "sockdemo.aio"]


@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_an_async_handler_raising_a_base_exception_closes_only_its_connection(
    run: Run[None], exception: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """As a handler on threads does: logged, that client closed, the server
    serving on."""

    async def handler(message: str) -> str:
        await asyncio.sleep(0)
        if message == "boom":
            raise exception("boom")
        return message.upper()

    async def main() -> None:
        server = await sockdemo.aio.start_server(handler, protocol="framed")
        async with server:
            port = server.server_address[1]
            doomed = await sockdemo.aio.connect("127.0.0.1", port, "framed", timeout=10)
            with pytest.raises(ConnectionError):
                await doomed.request("boom")
            await doomed.close()
            ok = await sockdemo.aio.connect("127.0.0.1", port, "framed", timeout=10)
            async with ok:
                assert await ok.request("fine") == "FINE"
            assert server.is_serving()

    with caplog.at_level(logging.ERROR, logger="sockdemo.handler"):
        run(main())
    assert "boom" in caplog.text


def test_an_aio_handler_that_refers_back_to_its_server_is_collected(run: Run[None]) -> None:
    class App:
        async def start(self) -> None:
            self.server = await sockdemo.aio.start_server(self.handle, port=0)

        async def handle(self, message: str) -> str:
            return message.upper()

    refs = []

    async def main() -> None:
        for _ in range(5):
            app = App()
            await app.start()
            refs.append(weakref.ref(app))
            host, port = app.server.server_address[:2]
            async with await sockdemo.aio.connect(host, port, timeout=10) as client:
                assert await client.request("x") == "X"
            app.server.close()
            await app.server.wait_closed()
            del app

    run(main())
    gc.collect()
    assert [ref() for ref in refs] == [None] * 5


def test_dropping_a_server_while_a_handler_is_suspended_closes_quietly(run: Run[None]) -> None:
    """No panic reaches the loop: the connection closes, nothing raises."""
    failures: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: failures.append(context))
        started = asyncio.Event()

        async def handler(message: str) -> str:
            started.set()
            await asyncio.Event().wait()  # suspended for ever
            return message

        server = await sockdemo.aio.start_server(handler, port=0, protocol="framed")
        host, port = server.server_address[:2]
        client = await sockdemo.aio.connect(host, port, "framed", timeout=10)
        await client.send("hello")
        await started.wait()
        del server
        gc.collect()
        with pytest.raises(ConnectionError):
            await client.receive()
        await client.close()

    run(main())
    assert failures == []
