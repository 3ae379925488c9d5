"""Many clients at once: the connection limit, timeouts, faults, shutdown,
handlers and counters. Peers are plain `socket` and `asyncio` clients."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import struct
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sockdemo
from conftest import (
    BYE,
    PREFIX,
    connect,
    frame,
    read_frame,
    read_until_closed,
    recv_exactly,
    recv_until_closed,
    reset,
    wait_until,
)

# Letters and digits only: no "S", so the prefix can never appear inside a
# message and raw replies can be checked even if the kernel splits a write.
ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
TO_ALPHABET = bytes(ALPHABET[b % len(ALPHABET)] for b in range(256))


def payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size).translate(TO_ALPHABET)


async def read_raw_reply(reader: asyncio.StreamReader, message: bytes) -> bytes:
    """Reads the raw replies to one message, however many pieces it came in,
    and returns the message bytes they carried."""
    data = b""
    while len(data.replace(PREFIX, b"")) < len(message):
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    assert data.startswith(PREFIX), data[:40]
    return data.replace(PREFIX, b"")


def test_hundreds_of_concurrent_clients_random_sizes_zero_mismatches(serve) -> None:
    server = serve(protocol="framed", max_clients=1000)
    port = server.server_address[1]
    clients, rounds = 300, 20

    async def one(seed: int) -> int:
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mismatches = 0
        for _ in range(rounds):
            message = payload(rng, rng.choice([0, 1, 100, 1024, 5000, 70000]))
            writer.write(frame(message))
            header = await reader.readexactly(4)
            reply = await reader.readexactly(struct.unpack("!I", header)[0])
            mismatches += reply != PREFIX + message
        writer.close()
        await writer.wait_closed()
        return mismatches

    async def everyone() -> list[int]:
        return await asyncio.gather(*(one(seed) for seed in range(clients)))

    assert sum(asyncio.run(everyone())) == 0
    stats = server.stats()
    assert stats["messages"] == clients * rounds
    assert stats["connections_accepted"] == clients
    assert stats["errors"] == 0


def test_hundreds_of_raw_clients(serve) -> None:
    server = serve(max_clients=500)
    port = server.server_address[1]

    async def one(seed: int) -> int:
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mismatches = 0
        for _ in range(10):
            message = payload(rng, rng.randint(1, 1024))
            writer.write(message)
            mismatches += await read_raw_reply(reader, message) != message
        writer.write(b"bye")
        mismatches += await reader.read() != BYE
        writer.close()
        return mismatches

    async def everyone() -> list[int]:
        return await asyncio.gather(*(one(seed) for seed in range(200)))

    assert sum(asyncio.run(everyone())) == 0


def test_clients_past_the_limit_wait_their_turn(serve) -> None:
    server = serve(max_clients=2)
    first, second, third = connect(server), connect(server), connect(server)
    for sock in (first, second):
        sock.sendall(b"in")
        assert recv_exactly(sock, len(PREFIX) + 2) == PREFIX + b"in"
    # The third connected (the kernel queued it) but is not served yet.
    third.sendall(b"waiting")
    third.settimeout(0.5)
    with pytest.raises(socket.timeout):
        third.recv(100)
    assert server.stats()["connections_active"] == 2
    first.close()
    third.settimeout(10)
    assert recv_exactly(third, len(PREFIX) + 7) == PREFIX + b"waiting"
    second.close()
    third.close()


def test_one_client_at_a_time_like_the_original(serve) -> None:
    """With one slot, the client that spoke first is served until it leaves;
    the next one's message waits, then is answered."""
    server = serve(max_clients=1)
    first, second = connect(server), connect(server)
    first.sendall(b"first")
    assert recv_exactly(first, len(PREFIX) + 5) == PREFIX + b"first"
    second.sendall(b"second")
    second.settimeout(0.5)
    with pytest.raises(socket.timeout):
        second.recv(100)
    first.sendall(b"bye")
    assert recv_until_closed(first) == BYE
    second.settimeout(10)
    assert recv_exactly(second, len(PREFIX) + 6) == PREFIX + b"second"
    first.close()
    second.close()


def test_idle_timeout_closes_silent_connections_only(serve) -> None:
    server = serve(idle_timeout=0.5)
    silent = connect(server)
    active = connect(server)
    for i in range(12):  # ~1.2 s of activity, more than twice the idle timeout
        active.sendall(b"ping")
        assert recv_exactly(active, len(PREFIX) + 4) == PREFIX + b"ping", i
        time.sleep(0.1)
    assert read_until_closed(silent) == b""
    active.sendall(b"still here")
    assert recv_exactly(active, len(PREFIX) + 10) == PREFIX + b"still here"
    silent.close()
    active.close()
    server.shutdown()
    assert server.stats()["errors"] == 0  # an idle close is policy, not a failure


def test_idle_timeout_closes_after_its_time_and_not_before(serve) -> None:
    server = serve(idle_timeout=0.5)
    # Read before connecting: the server's clock starts once the connection
    # exists, which may be well before this thread runs again after connect().
    opened = time.monotonic()
    with connect(server) as sock:
        assert read_until_closed(sock, timeout=5) == b""
        assert 0.5 <= time.monotonic() - opened < 1.0


def test_a_message_trickled_too_slowly_is_cut_off(serve) -> None:
    """Slowloris: a frame started must be finished within message_timeout."""
    server = serve(protocol="framed", message_timeout=0.5)
    with connect(server) as slow, connect(server) as other:
        slow.sendall(struct.pack("!I", 100) + b"only part")
        other.sendall(frame(b"meanwhile"))
        assert read_frame(other) == PREFIX + b"meanwhile"
        assert read_until_closed(slow) == b""
    server.shutdown()  # waits until every connection has been counted
    assert server.stats()["errors"] == 1


def test_a_client_that_never_reads_is_dropped_by_the_write_timeout(serve) -> None:
    server = serve(protocol="framed", write_timeout=0.5, max_message_size=1 << 20)
    hog = connect(server)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.settimeout(2)
    message = frame(b"x" * 65536)
    sent = 0
    try:
        for _ in range(2000):  # far more than socket buffers hold
            hog.sendall(message)
            sent += 1
    except (TimeoutError, ConnectionError):
        pass  # the server stopped reading: it is blocked writing to us
    assert sent < 2000
    with connect(server) as other:
        other.sendall(frame(b"others are fine"))
        assert read_frame(other) == PREFIX + b"others are fine"
    read_until_closed(hog)  # the replies it never read, then the close
    hog.close()


def test_faults_are_contained(serve) -> None:
    server = serve(protocol="framed", max_clients=50)
    # Reset in the middle of a message.
    sock = connect(server)
    sock.sendall(struct.pack("!I", 50) + b"half")
    reset(sock)
    # Garbage: an absurd length, then random bytes.
    for garbage in (b"\xff\xff\xff\xff", bytes(random.Random(7).randrange(256) for _ in range(99))):
        (declared,) = struct.unpack("!I", garbage[:4])
        with connect(server) as sock:
            sock.sendall(garbage)
            refusal = read_until_closed(sock)
        assert refusal == frame(
            f"Error: message of {declared} bytes exceeds the limit of 1048576 bytes".encode()
        )
    # Half-close after a whole frame: the reply still comes.
    with connect(server) as sock:
        sock.sendall(frame(b"and done"))
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == frame(PREFIX + b"and done")
    with sockdemo.Client("127.0.0.1", server.server_address[1], "framed", timeout=5) as client:
        assert client.request("still serving") == "Server received: still serving"


def test_shutdown_drains_many_clients_idle_and_busy(serve) -> None:
    server = serve(max_clients=500)
    idle = [connect(server) for _ in range(200)]
    busy = [connect(server) for _ in range(50)]
    for sock in busy:
        sock.sendall(b"in flight")
    for sock in busy:
        assert recv_exactly(sock, len(PREFIX) + 9) == PREFIX + b"in flight"
        sock.sendall(b"in flight")
    # Every second message has been read, so each is owed a reply.
    wait_until(lambda: server.stats()["bytes_in"] == 2 * 9 * len(busy))
    done = threading.Thread(target=server.shutdown)
    done.start()
    for sock in busy:
        assert read_until_closed(sock) == PREFIX + b"in flight"
        sock.close()
    for sock in idle:
        assert read_until_closed(sock) == b""
        sock.close()
    done.join(10)
    assert not done.is_alive()
    assert server.stats()["connections_active"] == 0
    server.server_close()
    with pytest.raises(ConnectionRefusedError):
        sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5)


def test_handler_computes_replies(serve) -> None:
    def handler(message: str) -> str | bytes | None:
        if message == "echo":
            return None
        if message == "raw":
            return b"\xff"
        return message.upper()

    server = serve(handler=handler)
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        assert client.request("shout") == "SHOUT"
        assert client.request("echo") == "Server received: echo"
        assert client.request(b"raw") == b"\xff"
        assert client.request("bye") == sockdemo.BYE_REPLY


def test_failing_handler_is_logged_and_contained(serve, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="sockdemo")

    def handler(message: str) -> str:
        if message == "boom":
            raise RuntimeError("handler exploded")
        return "ok"

    server = serve(handler=handler, max_clients=10)
    port = server.server_address[1]
    with sockdemo.Client("127.0.0.1", port, timeout=5) as bystander:
        with sockdemo.Client("127.0.0.1", port, timeout=5) as victim:
            with pytest.raises(ConnectionError):
                victim.request("boom")
        assert bystander.request("fine?") == "ok"
    failures = [r for r in caplog.records if r.name == "sockdemo.handler"]
    assert failures, caplog.text
    assert failures[0].exc_info is not None
    assert "handler exploded" in caplog.text
    assert "Traceback" in caplog.text


def test_handler_returning_the_wrong_type_is_contained(serve, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="sockdemo")
    server = serve(handler=lambda message: 42)
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        with pytest.raises(ConnectionError):
            client.request("x")
    assert "must return str, bytes or None" in caplog.text


def test_stats_count_what_happened(serve) -> None:
    server = serve()
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        for _ in range(5):
            client.request("12345")
        assert server.stats()["connections_active"] == 1
    server.shutdown()  # waits for the connection to finish its bookkeeping
    stats = server.stats()
    assert stats["connections_accepted"] == 1
    assert stats["connections_active"] == 0
    assert stats["messages"] == 5
    assert stats["bytes_in"] == 25
    assert stats["bytes_out"] == 5 * (len(PREFIX) + 5)
    assert stats["errors"] == 0


def test_messages_are_logged_at_debug_when_many_clients_are_allowed(serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sockdemo")
    server = serve(max_clients=10)
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        client.request("quiet at info")
    server.shutdown()
    text = [r.getMessage() for r in caplog.records]
    assert any(t.startswith("Connected by") for t in text)
    assert not any(t.startswith("Received from client") for t in text)

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="sockdemo")
    server = serve(max_clients=10)
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        client.request("loud at debug")
    server.shutdown()
    debug = [r for r in caplog.records if r.getMessage() == "Received from client: loud at debug"]
    assert debug and debug[0].levelno == logging.DEBUG


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=30),
)
def test_framed_replies_survive_any_split_or_merge_of_writes(serve, messages, cuts) -> None:
    """However the client's writes cut and join frames, every reply comes back in order."""
    server = serve(protocol="framed")
    stream = b"".join(frame(m) for m in messages)
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        position = 0
        for cut in [*cuts, len(stream)]:
            piece = stream[position : position + cut]
            if piece:
                sock.sendall(piece)
            position += len(piece)
        sock.sendall(stream[position:])
        for message in messages:
            assert read_frame(sock) == PREFIX + message
    server.server_close()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=1, max_size=5000).filter(lambda b: b"S" not in b))
def test_raw_replies_carry_every_byte_however_reads_cut_them(serve, data) -> None:
    server = serve()
    with connect(server) as sock:
        sock.sendall(data)
        got = b""
        while len(got.replace(PREFIX, b"")) < len(data):
            got += sock.recv(65536)
    assert got.startswith(PREFIX)
    assert got.replace(PREFIX, b"") == data
    server.server_close()


@pytest.mark.skipif(sys.platform != "linux", reason="reads CPU time from /proc")
def test_descriptor_exhaustion_backs_off_and_recovers(run) -> None:
    """With RLIMIT_NOFILE low, accept fails with EMFILE: no spinning, then recovery."""
    limit = 64
    server = run(
        "-c",
        "import resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "from sockdemo.cli import main; "
        "sys.exit(main(['server', '--port', '0', '--max-clients', '1000']))",
    )
    port = server.port()
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(limit + 40)]
    server.wait_for("Cannot accept a connection")

    def cpu_seconds() -> float:
        with open(f"/proc/{server.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in ticks

    before, start = cpu_seconds(), time.monotonic()
    time.sleep(1.0)  # watch the exhausted server for a while
    used, elapsed = cpu_seconds() - before, time.monotonic() - start
    assert used < 0.5 * elapsed, f"{used:.2f}s CPU in {elapsed:.2f}s: the accept loop spins"

    for sock in clients:
        sock.close()
    server.wait_for("Accepting connections again")
    with sockdemo.Client("127.0.0.1", port, timeout=10) as client:
        assert client.request("recovered") == "Server received: recovered"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_idle_connections_hold_no_buffers(run) -> None:
    """Thousands of idle connections cost a task and a socket each, not a buffer each."""
    server = run(
        "-m", "server", "--port", "0", "--max-clients", "5000", "--max-handshakes", "5000",
        "--log-level", "warning",
    )  # fmt: skip
    port = server.port()

    def rss_kib() -> int:
        with open(f"/proc/{server.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    def round_trip(sock: socket.socket) -> None:
        sock.sendall(b"ping")
        assert recv_exactly(sock, len(PREFIX) + 4) == PREFIX + b"ping"

    with socket.create_connection(("127.0.0.1", port), timeout=10) as warm:
        round_trip(warm)
        before = rss_kib()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2000)]
        for sock in idle[::50]:  # some have talked once, and are idle again
            round_trip(sock)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as last:
            round_trip(last)  # accepted in order: every connection before it is in
        per_connection = (rss_kib() - before) / len(idle)
        for sock in idle:
            sock.close()
    # About 2.3 KiB measured (task, socket, bookkeeping); a 16 KiB read buffer
    # held by each idle connection would show as several times that.
    assert per_connection < 4.5, f"{per_connection:.1f} KiB per idle connection"
