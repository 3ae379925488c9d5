"""Nobody is locked out: with default settings, a new client is served
promptly whatever thousands of connections that have not completed a
message, a TLS handshake or a PROXY header are doing."""

from __future__ import annotations

import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sockdemo
from conftest import (
    PREFIX,
    connect,
    frame,
    read_frame,
    recv_exactly,
    wait_until,
)

CROWD = 2000
# The promise is "within 15 s"; the design serves the newcomer in
# milliseconds (the crowd holds no slots), so 15 s is a bound a busy machine
# cannot reach, and a lock-out (tens of seconds before) still fails.
PROMPTLY = 15


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Any, Any]:
    return sockdemo.generate_self_signed(tmp_path_factory.mktemp("cert"))


@pytest.fixture(autouse=True)
def enough_descriptors() -> Iterator[None]:
    """The crowd's sockets and the server's: about 2 x CROWD descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * CROWD + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}: the crowd needs about {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def proxy_header(server: sockdemo.Server) -> bytes:
    port = server.server_address[1]
    return f"PROXY TCP4 203.0.113.7 127.0.0.1 51234 {port}\r\n".encode()


def plain_silent(sock: socket.socket, server: sockdemo.Server) -> None:
    """Connects and says nothing."""


def framed_header_only(sock: socket.socket, server: sockdemo.Server) -> None:
    sock.sendall(b"\x00\x00\x04\x00")  # announces 1024 bytes, sends none


def tls_partial_hello(sock: socket.socket, server: sockdemo.Server) -> None:
    sock.sendall(b"\x16\x03\x01\x00\xff\x01")  # a ClientHello's first bytes


def proxy_half_header(sock: socket.socket, server: sockdemo.Server) -> None:
    sock.sendall(proxy_header(server)[:9])


Crowd = Callable[[socket.socket, sockdemo.Server], None]


def newcomer_is_served(server: sockdemo.Server, kind: str, cert: Any) -> float:
    """Connects as a well-behaved client; returns the seconds until its reply."""
    started = time.monotonic()
    sock = socket.create_connection(server.server_address, timeout=PROMPTLY + 5)
    if kind == "proxy":
        sock.sendall(proxy_header(server))
    if kind == "tls":
        context = ssl.create_default_context(cafile=str(cert[0]))
        sock = context.wrap_socket(sock, server_hostname="localhost")
    with sock:
        if kind == "framed":
            sock.sendall(frame(b"let me in"))
            assert read_frame(sock) == PREFIX + b"let me in"
        else:
            sock.sendall(b"let me in")
            assert recv_exactly(sock, len(PREFIX) + 9) == PREFIX + b"let me in"
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("kind", "crowd"),
    [
        ("plain", plain_silent),
        ("framed", framed_header_only),
        ("tls", tls_partial_hello),
        ("proxy", proxy_half_header),
    ],
)
def test_a_crowd_that_never_opens_cannot_lock_a_client_out(
    serve, cert, kind: str, crowd: Crowd
) -> None:
    options: dict[str, Any] = {
        "framed": {"protocol": "framed"},
        "tls": {"certfile": cert[0], "keyfile": cert[1]},
        "proxy": {"proxy_protocol": True},
    }.get(kind, {})
    server = serve(**options)  # every limit at its default
    crowd_sockets = []
    try:
        for _ in range(CROWD):
            sock = connect(server)
            crowd(sock, server)
            crowd_sockets.append(sock)
        # The crowd fills every handshake place; the newcomer arrives behind
        # it, accepted as soon as the least advanced of the crowd is closed.
        wait_until(lambda: server.stats()["connections_opening"] >= sockdemo.DEFAULT_MAX_HANDSHAKES)
        took = newcomer_is_served(server, kind, cert)
        assert took < PROMPTLY, f"served after {took:.1f}s"
        stats = server.stats()
        assert stats["connections_opening"] <= sockdemo.DEFAULT_MAX_HANDSHAKES
        assert stats["connections_active"] <= 1
    finally:
        for sock in crowd_sockets:
            sock.close()


def test_quiet_clients_holding_every_slot_make_way_by_default(serve) -> None:
    """Slots held by clients that spoke once and went quiet, and a silent
    crowd besides: a newcomer is served once the quietest slot holder has been
    quiet the eviction time (10 s by default), as nginx treats idle
    keep-alive connections."""
    server = serve()
    holders = [connect(server) for _ in range(sockdemo.DEFAULT_MAX_CLIENTS)]
    for sock in holders:
        sock.sendall(b"hello")
        assert recv_exactly(sock, len(PREFIX) + 5) == PREFIX + b"hello"
    silent = [connect(server) for _ in range(CROWD)]
    try:
        took = newcomer_is_served(server, "plain", None)
        assert took < PROMPTLY, f"served after {took:.1f}s"
        # A slot holder made way (which one went quiet first is the server's
        # clock, not the order the test spoke in); the silent crowd held no
        # slot.
        wait_until(lambda: any(closed(sock) for sock in holders))
    finally:
        for sock in holders + silent:
            sock.close()


def closed(sock: socket.socket) -> bool:
    """Has the server closed `sock`? Looks without waiting."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_a_first_bye_needs_no_slot(serve) -> None:
    """Every slot busy and none quiet: a client whose first message is
    ``bye`` still gets its goodbye at once."""
    server = serve(max_clients=1, evict_idle_after=None)
    holder = connect(server)
    holder.sendall(b"hello")
    assert recv_exactly(holder, len(PREFIX) + 5) == PREFIX + b"hello"
    with connect(server) as leaving:
        leaving.sendall(b"bye")
        assert recv_exactly(leaving, len(sockdemo.BYE_REPLY)) == sockdemo.BYE_REPLY.encode()
    holder.close()
