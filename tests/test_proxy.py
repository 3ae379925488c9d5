"""The PROXY protocol: a server behind a load balancer sees the real clients.

Headers are written by hand here, byte for byte from HAProxy's specification,
so the parser is checked against the spec rather than against itself; the
HAProxy tests (test_haproxy.py) then check the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from typing import Any

import pytest

import sockdemo
import sockdemo.aio
from conftest import PREFIX, frame, read_frame, read_until_closed, recv_exactly, wait_until

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(source: tuple[str, int], destination: tuple[str, int], local: bool = False) -> bytes:
    """A version 2 header for TCP over IPv4 (or a LOCAL one: a health check)."""
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    addresses = (
        socket.inet_aton(source[0])
        + socket.inet_aton(destination[0])
        + struct.pack("!HH", source[1], destination[1])
    )
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    return f"PROXY TCP4 {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


CLIENT = ("203.0.113.7", 51234)


def seen_by(peers: list[Any]) -> Any:
    """A handler that records the peer it is given and answers with it."""

    def handler(message: str, peer: tuple[str, int]) -> str:
        peers.append(peer)
        return f"{message} from {peer[0]}:{peer[1]}"

    return handler


@pytest.mark.parametrize("version", [1, 2])
def test_the_header_names_the_client_for_handlers_and_logs(serve, caplog, version) -> None:
    peers: list[Any] = []
    server = serve(handler=seen_by(peers), proxy_protocol=True)
    header = (v1_header if version == 1 else v2_header)(CLIENT, server.server_address)
    with caplog.at_level(logging.INFO, logger="sockdemo"):
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(header + b"hello")
            expected = b"hello from 203.0.113.7:51234"
            assert recv_exactly(sock, len(expected)) == expected
    assert peers == [CLIENT]
    wait_until(lambda: "Connected by ('203.0.113.7', 51234)" in caplog.text)


def test_a_local_header_keeps_the_socket_address(serve) -> None:
    """HAProxy's health checks send LOCAL: no client to name."""
    peers: list[Any] = []
    server = serve(handler=seen_by(peers), proxy_protocol=True)
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(v2_header(CLIENT, server.server_address, local=True) + b"ping")
        own = sock.getsockname()
        expected = f"ping from {own[0]}:{own[1]}".encode()
        assert recv_exactly(sock, len(expected)) == expected
    assert peers == [own]


def test_the_header_comes_before_tls(serve, tmp_path) -> None:
    cert, key = sockdemo.generate_self_signed(tmp_path)
    peers: list[Any] = []
    server = serve(
        handler=seen_by(peers), proxy_protocol=True, certfile=cert, keyfile=key, protocol="framed"
    )
    context = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(server.server_address, timeout=10) as raw:
        raw.sendall(v2_header(CLIENT, server.server_address))
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(frame(b"secret"))
            assert read_frame(tls) == b"secret from 203.0.113.7:51234"
    assert peers == [CLIENT]


@pytest.mark.parametrize(
    ("sent", "logged"),
    [
        (b"hello, no header", "no PROXY header"),
        (b"PROXY TCP4 not an address 1 2\r\n", "malformed PROXY header"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0c\x01\x02", "ended inside its PROXY header"),
        (b"PROXY TCP4 " + b"1" * 120, "longer than 107 bytes"),
    ],
    ids=["missing", "malformed", "truncated", "too long"],
)
def test_a_bad_header_closes_that_connection_only(serve, caplog, sent, logged) -> None:
    server = serve(proxy_protocol=True)
    with caplog.at_level(logging.WARNING, logger="sockdemo"):
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(sent)
            # The end tells the server a truncated header will not go on. A
            # header it can judge from its first bytes may be refused, and the
            # connection reset, before the end is sent.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock) == b""
        wait_until(lambda: logged in caplog.text)
    assert "refused" in caplog.text
    # The server goes on serving clients that come through the proxy.
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(v1_header(CLIENT, server.server_address) + b"fine")
        assert recv_exactly(sock, 21) == b"Server received: fine"


def test_a_header_from_a_source_not_allowed_is_refused(serve, caplog) -> None:
    server = serve(proxy_protocol=True, proxy_allow=["10.0.0.0/8", "192.0.2.1"])
    with caplog.at_level(logging.WARNING, logger="sockdemo"):
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(v1_header(CLIENT, server.server_address) + b"spoofed")
            assert read_until_closed(sock) == b""
        wait_until(lambda: "only accepted from 10.0.0.0/8,192.0.2.1/32" in caplog.text)
    assert server.stats()["errors"] == 1


def test_bad_proxy_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        sockdemo.Server(port=0, proxy_protocol=True, proxy_allow=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="needs proxy_protocol"):
        sockdemo.Server(port=0, proxy_allow=["10.0.0.0/8"])


def test_the_async_server_sees_the_client_too() -> None:
    peers: list[Any] = []

    async def handler(message: str, peer: tuple[str, int]) -> str:
        await asyncio.sleep(0)
        peers.append(peer)
        return "ok"

    async def main() -> bytes:
        async with await sockdemo.aio.start_server(handler, proxy_protocol=True) as server:
            reader, writer = await asyncio.open_connection(*server.server_address)
            writer.write(v2_header(CLIENT, server.server_address) + b"hi")
            reply = await reader.readexactly(2)
            writer.close()
            await writer.wait_closed()
            return reply

    assert asyncio.run(main()) == b"ok"
    assert peers == [CLIENT]


def test_a_client_that_connected_as_shutdown_came_is_served_behind_the_proxy() -> None:
    server = sockdemo.Server(port=0, proxy_protocol=True)
    # Header and message sent before the server accepts anyone: the
    # listener's last client when shutdown comes at once.
    sock = socket.create_connection(server.server_address[:2], timeout=10)
    sock.sendall(v1_header(CLIENT, server.server_address) + b"late")
    server.start()
    server.shutdown()
    assert read_until_closed(sock) == PREFIX + b"late"
    sock.close()
    server.server_close()
