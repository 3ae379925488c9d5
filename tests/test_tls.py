"""TLS with independent peers: Python's `ssl` module and `openssl s_client`."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

import sockdemo
from conftest import (
    BYE,
    PREFIX,
    frame,
    read_frame,
    read_until_closed,
    recv_exactly,
    recv_until_closed,
    wait_until,
)


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    return sockdemo.generate_self_signed(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def other_cert(tmp_path_factory) -> tuple[Path, Path]:
    return sockdemo.generate_self_signed(tmp_path_factory.mktemp("other"))


def python_tls(cafile: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.minimum_version = version
    context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_python_ssl_client_talks_to_the_server(serve, cert, version) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1])
    context = python_tls(cert[0], version)
    with socket.create_connection(server.server_address, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            assert sock.version() == {"TLSv1_3": "TLSv1.3", "TLSv1_2": "TLSv1.2"}[version.name]
            sock.sendall(b"secret \xff bytes")
            assert recv_exactly(sock, len(PREFIX) + 14) == PREFIX + b"secret \xff bytes"
            sock.sendall(b"bye")
            assert recv_until_closed(sock) == BYE


def test_python_ssl_verifies_against_the_generated_certificate(serve, cert, other_cert) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1])
    wrong = ssl.create_default_context(cafile=str(other_cert[0]))
    with socket.create_connection(server.server_address, timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            wrong.wrap_socket(raw, server_hostname="localhost")
    # The failed handshake was logged and contained.
    with sockdemo.Client(
        "127.0.0.1", server.server_address[1], cafile=cert[0], timeout=5
    ) as client:
        assert client.request("after a bad handshake") == "Server received: after a bad handshake"


def test_sockdemo_client_over_tls_both_protocols(serve, cert) -> None:
    for protocol in ("raw", "framed"):
        server = serve(certfile=cert[0], keyfile=cert[1], protocol=protocol)
        port = server.server_address[1]
        with sockdemo.Client("127.0.0.1", port, protocol, cafile=cert[0], timeout=5) as client:
            assert client.request("hello") == "Server received: hello"
            if protocol == "framed":
                big = os.urandom(400_000)
                assert client.request(big) == PREFIX + big
            assert client.request("bye") == sockdemo.BYE_REPLY


def test_framed_over_tls_with_python_ssl(serve, cert) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1], protocol="framed")
    context = ssl.create_default_context(cafile=str(cert[0]))
    with socket.create_connection(server.server_address, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            messages = [os.urandom(n) for n in (0, 10, 70_000, 200_000)]
            sock.sendall(b"".join(frame(m) for m in messages))
            for message in messages:
                assert read_frame(sock) == PREFIX + message


def test_wrong_ca_is_a_tls_error_on_the_client(serve, cert, other_cert) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1])
    with pytest.raises(sockdemo.TLSError) as info:
        sockdemo.Client("127.0.0.1", server.server_address[1], cafile=other_cert[0], timeout=5)
    assert isinstance(info.value, ssl.SSLError)
    assert "certificate" in str(info.value).lower()


def test_wrong_server_name_is_a_tls_error(serve, cert) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1])
    with pytest.raises(sockdemo.TLSError, match=r"(?i)name"):
        sockdemo.Client(
            "127.0.0.1",
            server.server_address[1],
            cafile=cert[0],
            server_hostname="example.com",
            timeout=5,
        )


def test_tls_client_against_a_plain_server_is_a_tls_error(serve, cert) -> None:
    server = serve()
    with pytest.raises(sockdemo.TLSError):
        sockdemo.Client("127.0.0.1", server.server_address[1], cafile=cert[0], timeout=5)


def test_plaintext_client_on_a_tls_port_does_not_disturb_the_server(serve, cert) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1])
    with socket.create_connection(server.server_address, timeout=10) as plain:
        plain.sendall(b"hello in the clear\n")
        reply = recv_until_closed(plain)
    assert b"Server received" not in reply
    with sockdemo.Client(
        "127.0.0.1", server.server_address[1], cafile=cert[0], timeout=5
    ) as client:
        assert client.request("encrypted") == "Server received: encrypted"
    server.shutdown()  # every connection counted
    assert server.stats()["errors"] == 1


def test_closing_without_close_notify_is_a_clean_close(serve, cert) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1])
    context = ssl.create_default_context(cafile=str(cert[0]))
    raw = socket.create_connection(server.server_address, timeout=10)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    sock.sendall(b"leaving abruptly")
    recv_exactly(sock, len(PREFIX) + 16)
    # Close the descriptor under the TLS layer: a FIN with no close_notify.
    os.close(sock.detach())
    wait_until(lambda: server.stats()["connections_active"] == 0)
    assert server.stats()["errors"] == 0


def test_a_stalled_handshake_is_cut_off_by_the_handshake_timeout(serve, cert) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1], handshake_timeout=0.4)
    # Read before connecting: the server's clock starts once the connection
    # exists, which may be well before this thread runs again.
    started = time.monotonic()
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x00\xff")  # a ClientHello header, then nothing
        assert read_until_closed(sock) == b""
        assert 0.4 <= time.monotonic() - started < 3
    wait_until(lambda: server.stats()["connections_opening"] == 0)
    assert server.stats()["errors"] == 1


def test_bad_certificate_files_are_clear_errors(tmp_path, cert) -> None:
    with pytest.raises(FileNotFoundError) as info:
        sockdemo.Server(certfile=tmp_path / "missing.pem", keyfile=cert[1])
    assert info.value.filename == str(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        sockdemo.Server(certfile=garbage, keyfile=cert[1])
    with pytest.raises(ValueError, match="private key"):
        sockdemo.Server(certfile=cert[0], keyfile=garbage)
    with pytest.raises(ValueError, match="no PEM certificate"):
        sockdemo.Client(cafile=garbage)
    with pytest.raises(ValueError, match="needs a cafile"):
        sockdemo.Client(server_hostname="localhost")


def test_cert_command_writes_a_usable_pair(run, tmp_path) -> None:
    code, lines = run("-m", "cert", str(tmp_path / "dev")).finish()
    assert code == 0
    assert "cert.pem" in lines[0]
    cert, key = tmp_path / "dev" / "cert.pem", tmp_path / "dev" / "key.pem"
    assert (key.stat().st_mode & 0o077) == 0  # the private key is private
    server = run("server.v2.py", "--port", "0", "--certfile", str(cert), "--keyfile", str(key))
    port = server.port()
    code, lines = run("client.py", "--port", str(port), "--cafile", str(cert)).finish()
    assert code == 0
    assert lines[2] == "Received from server: Server received: Hello from the client!"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_s_client_interoperates(serve, cert, version) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1])
    port = server.server_address[1]
    result = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(cert[0]),
            "-verify_hostname", "localhost", "-verify_return_error", "-quiet", "-ign_eof",
            version,
        ],
        input=b"bye\n",
        capture_output=True,
        timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == BYE


@pytest.mark.parametrize("protocol", ["raw", "framed"])
def test_plaintext_against_a_tls_server_says_so(serve, cert, protocol) -> None:
    server = serve(certfile=cert[0], keyfile=cert[1], protocol=protocol)
    port = server.server_address[1]
    with sockdemo.Client("127.0.0.1", port, protocol, timeout=5) as client:
        with pytest.raises(sockdemo.ProtocolError, match=f"127.0.0.1:{port} speaks TLS"):
            client.request("hello")


def test_tls_against_a_plaintext_server_says_so(serve, cert) -> None:
    server = serve()
    port = server.server_address[1]
    with pytest.raises(sockdemo.TLSError, match=f"127.0.0.1:{port} does not speak TLS"):
        sockdemo.Client("127.0.0.1", port, timeout=5, cafile=cert[0], server_hostname="localhost")


def test_the_client_command_says_which_side_speaks_tls(run, serve, cert) -> None:
    tls_port = str(serve(certfile=cert[0], keyfile=cert[1]).server_address[1])
    code, lines = run("-m", "client", "--port", tls_port, "hello").finish()
    assert code == 1
    assert f"Error: protocol error: the server at 127.0.0.1:{tls_port} speaks TLS" in lines[-2]
    plain_port = str(serve().server_address[1])
    code, lines = run(
        "-m", "client", "--port", plain_port, "--cafile", str(cert[0]), "hello"
    ).finish()
    assert code == 1
    assert any("does not speak TLS" in line for line in lines), lines


def test_a_client_that_connected_as_shutdown_came_finishes_its_handshake(cert) -> None:
    server = sockdemo.Server(port=0, certfile=cert[0], keyfile=cert[1])
    # Connected, with its ClientHello sent, before the server accepts anyone:
    # the listener's last client when shutdown comes at once.
    raw = socket.create_connection(server.server_address[:2], timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context(cafile=str(cert[0]))
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    raw.sendall(outgoing.read())
    server.start()
    stopping = threading.Thread(target=server.shutdown)
    stopping.start()

    def receive() -> None:
        data = raw.recv(65536)
        assert data, "closed before the reply"
        incoming.write(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            receive()
    tls.write(b"late")
    raw.sendall(outgoing.read())
    reply = b""
    while len(reply) < len(PREFIX) + 4:
        try:
            reply += tls.read(4096)
        except ssl.SSLWantReadError:
            receive()
    assert reply == PREFIX + b"late"
    raw.close()
    stopping.join(10)
    assert not stopping.is_alive()
    server.server_close()
