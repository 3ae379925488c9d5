"""The framed protocol and message size validation, against `struct`-framed sockets."""

from __future__ import annotations

import os
import socket
import struct

import pytest

import sockdemo
from conftest import (
    BYE,
    PREFIX,
    Script,
    connect,
    frame,
    read_frame,
    recv_exactly,
    recv_until_closed,
)


def test_frames_of_any_size_round_trip_exactly(serve) -> None:
    server = serve(protocol="framed")
    with connect(server) as sock:
        for size in (0, 1, 1023, 1024, 1025, 65536, 300_000, 1 << 20):
            message = os.urandom(size)
            sock.sendall(frame(message))
            assert read_frame(sock) == PREFIX + message, size


def test_empty_frame_gets_the_bare_prefix(serve) -> None:
    server = serve(protocol="framed")
    with connect(server) as sock:
        sock.sendall(frame(b""))
        assert read_frame(sock) == PREFIX


def test_five_thousand_pipelined_frames_are_answered_in_order(serve) -> None:
    server = serve(protocol="framed")
    messages = [f"message {i}".encode() * (i % 7) for i in range(5000)]
    with connect(server) as sock:
        sock.sendall(b"".join(frame(m) for m in messages))
        for message in messages:
            assert read_frame(sock) == PREFIX + message


def test_bye_works_framed(serve) -> None:
    server = serve(protocol="framed")
    with connect(server) as sock:
        sock.sendall(frame(b"first") + frame(b" Bye\n") + frame(b"never answered"))
        assert read_frame(sock) == PREFIX + b"first"
        assert read_frame(sock) == BYE
        assert recv_until_closed(sock) == b""


def test_oversized_declared_length_is_refused_with_a_clear_error(serve) -> None:
    server = serve(protocol="framed", max_message_size=1000)
    with connect(server) as sock:
        sock.sendall(frame(b"fine"))
        sock.sendall(struct.pack("!I", 1001) + b"x" * 1001)
        assert read_frame(sock) == PREFIX + b"fine"
        error = read_frame(sock)
        assert error == b"Error: message of 1001 bytes exceeds the limit of 1000 bytes"
        assert recv_until_closed(sock) == b""
    with sockdemo.Client(
        "127.0.0.1", server.server_address[1], "framed", max_message_size=1000, timeout=5
    ) as client:
        assert client.request("others are served") == "Server received: others are served"


def test_truncated_frame_is_a_contained_protocol_error(serve) -> None:
    server = serve(protocol="framed")
    with connect(server) as sock:
        sock.sendall(struct.pack("!I", 100) + b"only forty bytes of the hundred........")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == b""
    with sockdemo.Client("127.0.0.1", server.server_address[1], "framed", timeout=5) as client:
        assert client.request("next") == "Server received: next"
    server.shutdown()  # every connection counted
    assert server.stats()["errors"] == 1


def test_client_refuses_oversized_messages_before_sending(serve) -> None:
    server = serve(protocol="framed", max_message_size=100)
    port = server.server_address[1]
    with sockdemo.Client("127.0.0.1", port, "framed", max_message_size=100, timeout=5) as client:
        with pytest.raises(sockdemo.MessageTooLarge, match="101 bytes exceeds the limit of 100"):
            client.request("x" * 101)
        assert client.request("x" * 100) == "Server received: " + "x" * 100
    assert issubclass(sockdemo.MessageTooLarge, ValueError)


def test_raw_client_refuses_what_cannot_round_trip_and_says_use_framed(serve) -> None:
    server = serve()
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        with pytest.raises(sockdemo.MessageTooLarge, match="framed"):
            client.request("x" * 1025)
        assert client.request("x" * 1024) == "Server received: " + "x" * 1024


def test_framed_client_reads_replies_exactly(serve) -> None:
    server = serve(protocol="framed")
    with sockdemo.Client("127.0.0.1", server.server_address[1], "framed", timeout=5) as client:
        big = os.urandom(500_000)
        assert client.request(big) == PREFIX + big
        client.send(b"one")
        client.send(b"two")
        assert client.receive() == PREFIX + b"one"
        assert client.receive() == PREFIX + b"two"
        assert client.request(b"") == PREFIX


def test_client_reports_a_server_that_closes_mid_frame() -> None:
    with socket.socket() as fake:
        fake.bind(("127.0.0.1", 0))
        fake.listen()
        client = sockdemo.Client("127.0.0.1", fake.getsockname()[1], "framed", timeout=5)
        peer, _ = fake.accept()
        client.send("hi")
        assert recv_exactly(peer, 6) == frame(b"hi")  # read it all, or close() would reset
        peer.sendall(struct.pack("!I", 50) + b"short")
        peer.close()
        with pytest.raises(sockdemo.ProtocolError, match="middle of a reply"):
            client.receive()
        client.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_declared_lengths_do_not_allocate_memory(run) -> None:
    server: Script = run(
        "-m",
        "server",
        "--port",
        "0",
        "--protocol",
        "framed",
        "--max-clients",
        "1000",
        "--log-level",
        "warning",
    )
    port = server.port()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as warm:
        warm.sendall(frame(b"warm up"))
        read_frame(warm)
    before = rss_kib(server.proc.pid)
    # An absurd length is refused from the header alone...
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"\xff\xff\xff\xff")
            assert read_frame(sock).startswith(b"Error: message of 4294967295 bytes")
    # ...and an allowed one costs memory only as its bytes arrive.
    promises = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    for sock in promises:
        sock.sendall(struct.pack("!I", 1_000_000) + b"a few bytes")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as check:
        check.sendall(frame(b"after"))
        assert read_frame(check) == PREFIX + b"after"
    grown = rss_kib(server.proc.pid) - before
    # 200 promised MiB would be 200,000 KiB; what they sent is ~2 KiB.
    assert grown < 30_000, f"RSS grew by {grown} KiB"
    for sock in promises:
        sock.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_half_sent_messages_share_a_memory_budget(run) -> None:
    """80 peers each send all but the last byte of a 1 MiB frame and stall:
    the server holds about its budget, not 80 MiB, and answers every one of
    them once they finish."""
    server: Script = run(
        "-m", "server", "--port", "0", "--protocol", "framed", "--max-clients", "100",
        "--max-buffered", str(16 << 20), "--log-level", "warning",
    )  # fmt: skip
    port = server.port()
    payload = bytes(range(256)) * 4096  # 1 MiB
    with socket.create_connection(("127.0.0.1", port), timeout=10) as warm:
        warm.sendall(frame(payload))
        assert read_frame(warm) == PREFIX + payload
    before = rss_kib(server.proc.pid)
    peers = []
    for _ in range(80):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(frame(payload)[:-1])
        peers.append(sock)
    # What the server did not take waits in the sockets (TCP pushes back).
    # Another client is still served meanwhile.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as check:
        check.sendall(frame(b"small"))
        assert read_frame(check) == PREFIX + b"small"
    grown = rss_kib(server.proc.pid) - before
    # 80 MiB without the budget; the budget is 16 MiB.
    assert grown < 40_000, f"RSS grew by {grown} KiB for 80 MiB of half-sent frames"
    for sock in peers:
        sock.sendall(frame(payload)[-1:])
    for sock in peers:
        assert read_frame(sock) == PREFIX + payload
        sock.close()


def test_a_protocol_mismatch_is_said_plainly(serve, run) -> None:
    raw_port = serve(protocol="raw").server_address[1]
    with sockdemo.Client("127.0.0.1", raw_port, "framed", timeout=5) as client:
        with pytest.raises(sockdemo.ProtocolError, match="does not answer in frames"):
            client.request("hi")
    framed_port = serve(protocol="framed").server_address[1]
    # (4 bytes or more: a framed server waits for the rest of a shorter header)
    with sockdemo.Client("127.0.0.1", framed_port, "raw", timeout=5) as client:
        with pytest.raises(sockdemo.ProtocolError, match="answers in frames"):
            client.request("hello")
    code, lines = run("-m", "client", "--port", str(framed_port), "hello").finish()
    assert code == 1
    assert "answers in frames: use the framed protocol" in lines[-2], lines
