"""Sessions (``Server(session=...)``): state per connection, pushes at any
time, broadcasts reached from Rust, slow readers cut off, and the clients
that listen (``for message in client``)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import socket
import ssl
import struct
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

import sockdemo
from conftest import connect, frame, read_frame, read_until_closed, wait_until


class Joined(sockdemo.Session):
    """Counts the sessions that have joined (broadcasts reach them)."""

    count: ClassVar[list[int]] = []

    def connected(self) -> None:
        self.count.append(self.id)


class Relay(Joined):
    """Relays every message to every other connection."""

    def received(self, message: str) -> None:
        self.server.broadcast(message, exclude=self)


class Counter(sockdemo.Session):
    """State across messages: the running total of the numbers sent."""

    def connected(self) -> None:
        self.total = 0

    def received(self, message: str) -> str:
        self.total += int(message)
        return str(self.total)


class Recorder(sockdemo.Session):
    """Records each hook, by connection, into the class's list."""

    events: ClassVar[list[tuple[str, int]]] = []
    ended: ClassVar[threading.Event] = threading.Event()

    def connected(self) -> None:
        self.events.append(("connected", self.id))

    def received(self, message: str) -> str | None:
        self.events.append(("received", self.id))
        if message == "close":
            self.close()
        return None

    def closed(self) -> None:
        self.events.append(("closed", self.id))
        Recorder.ended.set()


@pytest.fixture
def recorder() -> type[Recorder]:
    Recorder.events = []
    Recorder.ended = threading.Event()
    return Recorder


def framed_socket(server: sockdemo.Server) -> socket.socket:
    return connect(server)


def test_relays_keep_each_senders_order_among_fifty_clients(
    serve: Callable[..., sockdemo.Server],
) -> None:
    Relay.count = []
    server = serve(protocol="framed", session=Relay, max_clients=60)
    clients = [framed_socket(server) for _ in range(50)]
    wait_until(lambda: len(Relay.count) == 50)
    senders, per_sender = clients[:5], 40
    for i in range(per_sender):
        for n, sender in enumerate(senders):
            sender.sendall(frame(f"{n}:{i}".encode()))
    # Every listener gets every sender's messages, each sender's in order.
    for listener in clients[5:]:
        seen: dict[str, list[int]] = {str(n): [] for n in range(len(senders))}
        for _ in range(per_sender * len(senders)):
            sender, i = read_frame(listener).decode().split(":")
            seen[sender].append(int(i))
        assert all(order == list(range(per_sender)) for order in seen.values()), seen
    for client in clients:
        client.close()


def test_a_session_keeps_state_across_messages_and_replies_without_a_prefix(
    serve: Callable[..., sockdemo.Server],
) -> None:
    server = serve(protocol="framed", session=Counter)
    with sockdemo.Client(*server.server_address[:2], protocol="framed", timeout=10) as a:
        with sockdemo.Client(*server.server_address[:2], protocol="framed", timeout=10) as b:
            assert [a.request(n) for n in ("1", "2", "3")] == ["1", "3", "6"]
            assert b.request("10") == "10"
            assert a.request("4") == "10"


def test_bye_is_a_message_like_any_other_and_raw_sessions_add_nothing(
    serve: Callable[..., sockdemo.Server],
) -> None:
    class Upper(sockdemo.Session):
        def received(self, message: str) -> str:
            return message.upper()

    server = serve(session=Upper)
    with connect(server) as sock:
        sock.sendall(b"bye")
        assert sock.recv(1024) == b"BYE"
        sock.sendall(b"still here")
        assert sock.recv(1024) == b"STILL HERE"


def test_a_hundred_pushes_from_a_timer_thread_arrive_in_order(
    serve: Callable[..., sockdemo.Server],
) -> None:
    done = threading.Event()

    class Ticker(sockdemo.Session):
        def connected(self) -> None:
            def tick() -> None:
                for i in range(100):
                    assert self.send(f"tick {i}")
                done.set()

            threading.Thread(target=tick).start()

    server = serve(protocol="framed", session=Ticker)
    with sockdemo.Client(*server.server_address[:2], protocol="framed", timeout=10) as client:
        received = [next(client) for _ in range(100)]
    assert received == [f"tick {i}" for i in range(100)]
    assert done.wait(10)


def test_closed_runs_once_when_the_client_leaves(
    serve: Callable[..., sockdemo.Server], recorder: type[Recorder]
) -> None:
    server = serve(protocol="framed", session=recorder)
    with connect(server) as sock:
        sock.sendall(frame(b"one") + frame(b"two"))
        wait_until(lambda: len(recorder.events) == 3)
    assert recorder.ended.wait(10)
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["connected", "received", "received", "closed"]


def test_closed_runs_when_the_session_closes_the_connection(
    serve: Callable[..., sockdemo.Server], recorder: type[Recorder]
) -> None:
    server = serve(protocol="framed", session=recorder)
    with connect(server) as sock:
        sock.sendall(frame(b"close"))
        assert read_until_closed(sock) == b""
    assert recorder.ended.wait(10)
    assert [kind for kind, _ in recorder.events][-1] == "closed"


def test_closed_runs_for_every_connection_when_the_server_shuts_down(
    recorder: type[Recorder],
) -> None:
    server = sockdemo.Server(port=0, protocol="framed", session=recorder)
    server.start()
    socks = [connect(server) for _ in range(3)]
    wait_until(lambda: len(recorder.events) == 3)
    server.server_close()
    closed = sorted(i for kind, i in recorder.events if kind == "closed")
    assert closed == sorted(i for kind, i in recorder.events if kind == "connected")
    for sock in socks:
        assert read_until_closed(sock) == b""
        sock.close()


def test_send_says_false_once_the_connection_is_gone(
    serve: Callable[..., sockdemo.Server],
) -> None:
    kept: list[sockdemo.Session] = []
    left = threading.Event()

    class Keep(sockdemo.Session):
        def connected(self) -> None:
            kept.append(self)

        def closed(self) -> None:
            assert self.send("too late") is False
            left.set()

    server = serve(protocol="framed", session=Keep)
    with connect(server):
        wait_until(lambda: bool(kept))
        assert kept[0].send("hello") is True
    assert left.wait(10)
    assert kept[0].send("gone") is False


def test_a_reader_that_never_reads_is_cut_off_and_the_others_get_everything(
    serve: Callable[..., sockdemo.Server],
) -> None:
    """30 MB broadcast in 10 KB messages, each paced by the speaker's
    round trip: the reader that never reads passes the 1 MiB bound and is
    cut off; the two that read get every message; the server's memory stays
    within the bound (it does not hold 30 MB for the stalled reader)."""
    cut = threading.Event()
    joined: list[int] = []

    class Broadcast(sockdemo.Session):
        def connected(self) -> None:
            joined.append(self.id)

        def received(self, message: str) -> str:
            self.server.broadcast(message, exclude=self)
            return "ok"

        def closed(self) -> None:
            if self.id == joined[0]:
                cut.set()

    server = serve(protocol="framed", session=Broadcast, max_message_size=1 << 16)
    rss_before = _rss()
    count, size = 3000, 10_000
    totals = [0, 0]
    with contextlib.ExitStack() as sockets:
        stalled = sockets.enter_context(connect(server))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Joined first (the hub's first id), and it never reads.
        wait_until(lambda: len(joined) == 1)
        readers = [sockets.enter_context(connect(server)) for _ in range(2)]
        # Every reader has joined before the first broadcast.
        wait_until(lambda: len(joined) == 3)

        def read(i: int) -> None:
            while totals[i] < count * size:
                totals[i] += len(read_frame(readers[i]))

        threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        with sockdemo.Client(*server.server_address[:2], protocol="framed", timeout=20) as speaker:
            payload = "x" * size
            for _ in range(count):
                assert speaker.request(payload) == "ok"
        for t in threads:
            t.join(30)
        assert totals == [count * size] * 2
        assert cut.wait(10), "the stalled reader was not cut off"
        grown = _rss() - rss_before
        assert grown < 24 << 20, f"server memory grew by {grown >> 20} MiB"


def _rss() -> int:
    """This process's resident memory now, in bytes (the server runs here)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_an_exception_in_each_hook_is_logged_and_closes_only_that_connection(
    serve: Callable[..., sockdemo.Server], caplog: pytest.LogCaptureFixture
) -> None:
    class Faulty(sockdemo.Session):
        def connected(self) -> None:
            if Faulty.fail_connect:
                raise RuntimeError("connected broke")

        def received(self, message: str) -> str:
            if message == "boom":
                raise RuntimeError("received broke")
            return "fine"

        def closed(self) -> None:
            raise RuntimeError("closed broke")

    Faulty.fail_connect = True  # type: ignore[attr-defined]
    server = serve(protocol="framed", session=Faulty)
    with caplog.at_level(logging.ERROR, logger="sockdemo.handler"):
        with connect(server) as sock:
            assert read_until_closed(sock) == b""
        Faulty.fail_connect = False  # type: ignore[attr-defined]
        with sockdemo.Client(*server.server_address[:2], protocol="framed", timeout=10) as ok:
            with connect(server) as sock:
                sock.sendall(frame(b"boom"))
                assert read_until_closed(sock) == b""
            assert ok.request("still") == "fine"
        wait_until(lambda: "closed broke" in caplog.text)
    for hook in ("connected", "received", "closed"):
        assert f"Session {hook}() failed" in caplog.text


def test_a_thousand_sessions_each_get_a_broadcast(serve: Callable[..., sockdemo.Server]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"needs 2,200 descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2200), hard))
    try:
        Joined.count = []
        server = serve(protocol="framed", session=Joined, max_clients=1000)
        socks = [connect(server) for _ in range(1000)]
        wait_until(lambda: len(Joined.count) == 1000)
        assert server.broadcast("to all") == 1000
        assert all(read_frame(sock) == b"to all" for sock in socks)
        for sock in socks:
            sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_broadcast_refuses_what_the_protocol_cannot_carry_and_excludes_by_id(
    serve: Callable[..., sockdemo.Server],
) -> None:
    ids: dict[int, int] = {}

    class Known(sockdemo.Session):
        def connected(self) -> None:
            ids[self.peer[1]] = self.id

    server = serve(session=Known)
    with connect(server) as a, connect(server) as b:
        wait_until(lambda: len(ids) == 2)
        with pytest.raises(ValueError, match="empty"):
            server.broadcast("")
        assert server.broadcast(b"x", exclude=ids[a.getsockname()[1]]) == 1
        assert b.recv(16) == b"x"
        a.settimeout(0.2)
        with pytest.raises(socket.timeout):
            a.recv(16)


def test_session_and_handler_are_exclusive_and_the_session_must_be_a_session() -> None:
    with pytest.raises(ValueError, match="not both"):
        sockdemo.Server(port=0, handler=str.upper, session=Relay)
    with pytest.raises(TypeError, match=r"subclass of sockdemo\.Session"):
        sockdemo.Server(port=0, session=str.upper)


def test_sessions_over_tls_see_a_working_connection(
    serve: Callable[..., sockdemo.Server], tmp_path: Path
) -> None:
    cert, key = sockdemo.generate_self_signed(str(tmp_path))
    server = serve(protocol="framed", session=Counter, certfile=cert, keyfile=key)
    context = ssl.create_default_context(cafile=cert)
    with context.wrap_socket(connect(server), server_hostname="localhost") as tls:
        tls.sendall(frame(b"5") + frame(b"6"))
        assert [read_frame(tls), read_frame(tls)] == [b"5", b"11"]  # type: ignore[arg-type]


def test_behind_a_proxy_a_session_sees_the_real_client(
    serve: Callable[..., sockdemo.Server],
) -> None:
    peers: list[Any] = []

    class Who(sockdemo.Session):
        def connected(self) -> None:
            peers.append(self.peer)
            self.send(f"{self.peer[0]}:{self.peer[1]}")

    server = serve(protocol="framed", session=Who, proxy_protocol=True)
    with connect(server) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 65432\r\n")
        assert read_frame(sock) == b"203.0.113.7:40000"
    assert peers == [("203.0.113.7", 40000)]


def test_iterating_a_client_yields_pushes_until_the_server_closes(
    serve: Callable[..., sockdemo.Server],
) -> None:
    class Three(sockdemo.Session):
        def connected(self) -> None:
            for word in ("one", "two", "three"):
                self.send(word)
            self.close()

    server = serve(protocol="framed", session=Three)
    with sockdemo.Client(*server.server_address[:2], protocol="framed", timeout=10) as client:
        assert list(client) == ["one", "two", "three"]


def test_a_dropped_session_server_frees_its_sessions(
    recorder: type[Recorder],
) -> None:
    server = sockdemo.Server(port=0, protocol="framed", session=recorder)
    server.start()
    with connect(server) as sock:
        sock.sendall(frame(b"hi"))
        wait_until(lambda: len(recorder.events) == 2)
    assert recorder.ended.wait(10)
    alive = weakref.ref(server)
    server.server_close()
    del server
    gc.collect()
    assert alive() is None


def test_the_raw_header_of_a_frame_is_what_the_session_sends(
    serve: Callable[..., sockdemo.Server],
) -> None:
    server = serve(protocol="framed", session=Counter)
    with connect(server) as sock:
        sock.sendall(frame(b"7"))
        header = sock.recv(4)
        assert struct.unpack("!I", header) == (1,)
        assert sock.recv(1) == b"7"
