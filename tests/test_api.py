"""The Python API: `sockdemo.Server` and `sockdemo.Client` against real sockets."""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket
import threading
import weakref

import pytest

import sockdemo
from conftest import BYE, PREFIX, connect, recv_exactly, recv_until_closed, wait_until


def test_version_and_constants() -> None:
    assert sockdemo.__version__
    assert sockdemo.DEFAULT_HOST == "127.0.0.1"
    assert sockdemo.DEFAULT_PORT == 65432
    assert sockdemo.DEFAULT_PREFIX == "Server received: "
    assert sockdemo.BYE_REPLY == "Server acknowledging bye. Goodbye!"
    assert set(sockdemo.__all__) <= set(dir(sockdemo))


def test_server_binds_in_constructor_and_reports_the_real_port(serve) -> None:
    server = serve()
    host, port = server.server_address
    assert host == "127.0.0.1"
    assert port > 0


def test_request_round_trip_str_and_bytes(serve) -> None:
    server = serve()
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        assert client.request("hello") == "Server received: hello"
        assert client.request(b"\xff\x00bytes") == PREFIX + b"\xff\x00bytes"
        # Undecodable bytes inside a str survive as surrogates.
        assert client.request("caf\udcc3") == "Server received: caf\udcc3"
        assert client.request("BYE") == sockdemo.BYE_REPLY


def test_python_socket_peer_gets_byte_exact_replies(serve) -> None:
    server = serve()
    with connect(server) as sock:
        for message in [b"hello", b"\xff\xfe\xfd invalid utf-8", "naïve ☃".encode()]:
            sock.sendall(message)
            assert recv_exactly(sock, len(PREFIX) + len(message)) == PREFIX + message


def test_utf8_character_split_at_the_1024_byte_boundary_comes_back_exactly(serve) -> None:
    """The original decoded each 1024-byte read and crashed on a split character."""
    server = serve()
    message = b"a" * 1023 + "é".encode()  # 1025 bytes: é straddles the boundary
    with connect(server) as sock:
        sock.sendall(message)
        data = recv_exactly(sock, 2 * len(PREFIX) + len(message))
    # Cut at byte 1024 exactly, as the original's recv(1024) cut it.
    assert data == PREFIX + message[:1024] + PREFIX + message[1024:]


def test_bye_from_netcat_ends_the_session(serve) -> None:
    server = serve()
    with connect(server) as sock:
        sock.sendall(b"bye\n")
        assert recv_until_closed(sock) == BYE


def test_refused_is_connection_refused_error_with_errno() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refuses
        with pytest.raises(ConnectionRefusedError) as info:
            sockdemo.Client("127.0.0.1", port, timeout=5)
    assert info.value.errno == errno.ECONNREFUSED
    assert "PanicException" not in repr(info.value)


def test_port_in_use_is_os_error_with_errno(serve) -> None:
    server = serve()
    with pytest.raises(OSError) as info:
        sockdemo.Server(port=server.server_address[1])
    assert info.value.errno == errno.EADDRINUSE


def test_reply_timeout_is_timeout_error() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = sockdemo.Client("127.0.0.1", silent.getsockname()[1], timeout=0.3)
        with client, pytest.raises(TimeoutError) as info:
            client.request("anyone there?")
    assert info.value.errno == errno.ETIMEDOUT


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="protocol"):
        sockdemo.Server(protocol="carrier-pigeon")
    with pytest.raises(ValueError, match="max_clients"):
        sockdemo.Server(max_clients=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        sockdemo.Server(idle_timeout=-1)
    with pytest.raises(OverflowError):
        sockdemo.Server(port=70000)


def test_messages_must_be_str_or_bytes(serve) -> None:
    server = serve()
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        with pytest.raises(TypeError, match="str or bytes"):
            client.request(42)  # type: ignore[call-overload]
        assert client.request("still fine") == "Server received: still fine"


def test_closed_client_raises_like_a_closed_socket(serve) -> None:
    server = serve()
    client = sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5)
    client.close()
    client.close()  # idempotent
    with pytest.raises(OSError) as info:
        client.request("hi")
    assert info.value.errno == errno.EBADF


def test_request_after_bye_says_the_server_closed(serve) -> None:
    server = serve()
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        assert client.request("bye") == sockdemo.BYE_REPLY
        with pytest.raises(ConnectionResetError) as info:
            client.request("still there?")
        assert info.value.errno == errno.ECONNRESET


def test_serve_forever_returns_after_shutdown_from_another_thread() -> None:
    server = sockdemo.Server(port=0)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        # Connected and answered: serve_forever is running.
        assert client.request("hi") == "Server received: hi"
    server.shutdown()
    serving.join(10)
    assert not serving.is_alive()
    server.server_close()


def test_server_can_serve_again_after_shutdown(serve) -> None:
    server = serve()
    port = server.server_address[1]
    server.shutdown()
    # Stopped means not listening: refused, not queued.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    server.start()
    with sockdemo.Client("127.0.0.1", port, timeout=5) as client:
        assert client.request("again") == "Server received: again"


def test_closed_server_cannot_start() -> None:
    server = sockdemo.Server(port=0)
    server.server_close()
    with pytest.raises(OSError) as info:
        server.start()
    assert info.value.errno == errno.EBADF


def test_starting_twice_is_an_error(serve) -> None:
    server = serve()
    with pytest.raises(ValueError, match="already serving"):
        server.start()


def test_context_manager_closes_the_listener() -> None:
    with sockdemo.Server(port=0) as server:
        server.start()
        port = server.server_address[1]
    with pytest.raises(ConnectionRefusedError):
        sockdemo.Client("127.0.0.1", port, timeout=5)


def test_handle_request_serves_one_client_one_message() -> None:
    with sockdemo.Server(port=0, max_clients=1) as server:
        done = threading.Thread(target=server.handle_request, kwargs={"max_messages": 1})
        done.start()
        with connect(server) as sock:
            sock.sendall(b"only one")
            assert recv_until_closed(sock) == PREFIX + b"only one"
        done.join(10)
        assert not done.is_alive()


def test_rust_logs_reach_python_logging(serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sockdemo")
    server = serve(max_clients=1)
    with sockdemo.Client("127.0.0.1", server.server_address[1], timeout=5) as client:
        client.request("logged")
        client.request("bye")
    server.shutdown()
    records = [r for r in caplog.records if r.name.startswith("sockdemo")]
    text = [r.getMessage() for r in records]
    assert any(t.startswith("Connected by ('127.0.0.1', ") for t in text), text
    assert "Received from client: logged" in text
    assert "Client sent 'bye'. Closing connection." in text
    assert any(t.startswith("Connection with ('127.0.0.1', ") for t in text), text


def test_repr_names_the_address(serve) -> None:
    server = serve()
    assert str(server.server_address[1]) in repr(server)


def test_interpreter_exits_cleanly_with_a_server_still_running(run) -> None:
    """Servers left running are stopped at exit, before Python goes away under them."""
    code = (
        "import logging, sockdemo\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "srv = sockdemo.Server(port=0, max_clients=10)\n"
        "srv.start()\n"
        "c = sockdemo.Client('127.0.0.1', srv.server_address[1], timeout=5)\n"
        "print(c.request('left open'), flush=True)\n"
    )
    status, lines = run("-c", code).finish(timeout=20)
    assert status == 0, lines
    assert "Server received: left open" in lines
    assert not any("Traceback" in line or "panicked" in line for line in lines), lines


def test_localhost_binds_ipv4_like_python_does(serve) -> None:
    server = serve(host="localhost")
    assert server.server_address[0] == "127.0.0.1"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback(serve) -> None:
    try:
        server = serve(host="::1")
    except OSError as exc:  # IPv6 disabled on this machine
        pytest.skip(str(exc))
    assert server.server_address[:2] == ("::1", server.server_address[1])
    assert len(server.server_address) == 4
    with sockdemo.Client("::1", server.server_address[1], timeout=5) as client:
        assert client.request("over v6") == "Server received: over v6"


def test_an_unknown_host_is_a_gaierror_naming_it() -> None:
    with pytest.raises(socket.gaierror, match=r"no-such-host\.invalid") as info:
        sockdemo.Client("no-such-host.invalid", 1, timeout=5)
    assert info.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.gaierror, match=r"no-such-host\.invalid"):
        sockdemo.Server("no-such-host.invalid", 0)


class _App:
    """The common pattern: the handler is a method of an object that holds
    the server, a cycle through the server's Rust side."""

    def __init__(self) -> None:
        self.server = sockdemo.Server(port=0, handler=self.handle)
        self.server.start()
        with sockdemo.Client(*self.server.server_address[:2], timeout=10) as client:
            assert client.request("hi") == "HI"

    def handle(self, message: str) -> str:
        return message.upper()


def _open_resources() -> tuple[int, int]:
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_serving_again_and_again_leaks_no_descriptor() -> None:
    # Each shutdown closes the listening socket; each start opens a new one.
    server = sockdemo.Server(port=0)
    port = server.server_address[1]
    server.start()
    server.shutdown()
    descriptors = _open_resources()[1]
    for i in range(20):
        server.start()
        with sockdemo.Client("127.0.0.1", port, timeout=10) as client:
            assert client.request(f"round {i}") == f"Server received: round {i}"
        server.shutdown()
    assert _open_resources()[1] == descriptors
    server.server_close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_handler_that_refers_back_to_its_server_is_collected() -> None:
    gc.collect()
    before = _open_resources()
    apps = []
    for _ in range(10):
        app = _App()
        apps.append(weakref.ref(app))
        del app
    gc.collect()
    assert [ref() for ref in apps] == [None] * 10
    # Their threads and descriptors go with them (threads end on their own).
    wait_until(lambda: _open_resources() <= before)
