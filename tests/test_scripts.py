"""The four scripts and `python -m sockdemo`, run as child processes.

Each test reads the real port from the server's first line; peers are the
scripts themselves or Python's `socket` module.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from conftest import BYE, PREFIX, SCRIPTS, default_signals, recv_exactly, recv_until_closed, reset

ADDRESS = r"\('127\.0\.0\.1', \d+\)"


def assert_no_traceback(lines: list[str]) -> None:
    assert not any("Traceback" in line for line in lines), "\n".join(lines)


def test_server_py_serves_one_message_then_exits(run) -> None:
    server = run("server.py", "--port", "0")
    port = server.port()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"Hello from the client!")
        assert recv_until_closed(sock) == PREFIX + b"Hello from the client!"
    code, lines = server.finish()
    assert code == 0
    assert re.fullmatch(rf"Connected by {ADDRESS}", lines[1]), lines
    assert lines[2:] == ["Received from client: Hello from the client!", "Connection closed."]


def test_client_py_against_server_py(run) -> None:
    server = run("server.py", "--port", "0")
    port = server.port()
    code, lines = run("client.py", "--port", str(port)).finish()
    assert code == 0
    assert lines == [
        f"Connected to server 127.0.0.1:{port}",
        "Sending: Hello from the client!",
        "Received from server: Server received: Hello from the client!",
        "Closing connection.",
    ]
    assert server.finish()[0] == 0


def test_v2_conversation_ends_with_bye_and_server_goes_on(run) -> None:
    server = run("server.v2.py", "--port", "0")
    port = server.port()
    client = run("client.v2.py", "--port", str(port), stdin=subprocess.PIPE)
    # The empty line is ignored (the original sent it and hung waiting).
    client.send("hello\n\n   \nbye\n")
    code, lines = client.finish()
    assert code == 0
    assert lines == [
        f"Connected to server 127.0.0.1:{port}",
        "Enter messages to send (type 'quit' or 'exit' to stop):",
        "> Sending: hello",
        "Received from server: Server received: hello",
        "> > > Sending: bye",
        "Received from server: Server acknowledging bye. Goodbye!",
        "Closing connection.",
    ]
    assert re.fullmatch(rf"Connected by {ADDRESS}", server.line())
    assert server.line() == "Received from client: hello"
    assert server.line() == "Received from client: bye"
    assert server.line() == "Client sent 'bye'. Closing connection."
    assert re.fullmatch(rf"Connection with {ADDRESS} closed\.", server.line())
    # Still serving: a netcat-style peer is answered byte for byte.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"bye\n")
        assert recv_until_closed(sock) == BYE
    server.interrupt()
    code, lines = server.finish()
    assert code == 0
    assert lines[-1] == "Server shutting down."
    assert_no_traceback(lines)


@pytest.mark.parametrize("word", ["quit", "exit", "QUIT"])
def test_quit_and_exit_leave_without_telling_the_server(run, word) -> None:
    server = run("server.v2.py", "--port", "0")
    port = server.port()
    client = run("client.v2.py", "--port", str(port), stdin=subprocess.PIPE)
    client.send(f"{word}\n")
    code, lines = client.finish()
    assert code == 0
    assert lines == [
        f"Connected to server 127.0.0.1:{port}",
        "Enter messages to send (type 'quit' or 'exit' to stop):",
        "> Closing connection.",
    ]
    server.wait_for("Connected by")
    closed = server.line()
    # A clean exit is an ordinary close, not an "unexpected" one.
    assert re.fullmatch(rf"Connection with {ADDRESS} closed\.", closed), closed


def test_ctrl_d_is_a_normal_ending(run) -> None:
    server = run("server.v2.py", "--port", "0")
    port = server.port()
    client = run("client.v2.py", "--port", str(port), stdin=subprocess.PIPE)
    client.send("hi\n")
    assert client.proc.stdin is not None
    client.proc.stdin.close()
    code, lines = client.finish()
    assert code == 0
    assert lines[-2:] == ["Input stream closed.", "Closing connection."]


def test_a_server_that_goes_away_ends_the_session_normally(run) -> None:
    """The original printed "Server closed the connection." and exited 0."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = run("client.v2.py", "--port", str(port), stdin=subprocess.PIPE)
        conn, _ = listener.accept()
        with conn:
            client.send("hello\n")
            assert conn.recv(100) == b"hello"
        # Closed without a reply.
        code, lines = client.finish()
    assert code == 0
    # (the prompt, with no input echoed, shares a line)
    assert lines[-3:] == [
        "> Sending: hello",
        "Server closed the connection.",
        "Closing connection.",
    ]
    assert_no_traceback(lines)


def test_ctrl_c_in_the_client_is_a_normal_ending(run) -> None:
    server = run("server.v2.py", "--port", "0")
    port = server.port()
    client = run("client.v2.py", "--port", str(port), stdin=subprocess.PIPE)
    assert client.line() == f"Connected to server 127.0.0.1:{port}"
    client.interrupt()
    code, lines = client.finish()
    assert code == 0
    assert lines[-2:] == ["Interrupted by user.", "Closing connection."]
    assert_no_traceback(lines)


def test_ctrl_c_stops_a_server_with_a_client_connected(run) -> None:
    server = run("server.v2.py", "--port", "0")
    port = server.port()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"stay")
        recv_exactly(sock, len(PREFIX) + 4)
        server.interrupt()
        code, lines = server.finish(timeout=5)
        assert recv_until_closed(sock) == b""
    assert code == 0
    assert lines[-1] == "Server shutting down."
    assert_no_traceback(lines)


def test_ctrl_c_stops_the_one_shot_server_while_it_waits(run) -> None:
    server = run("server.py", "--port", "0")
    server.port()
    server.interrupt()
    code, lines = server.finish(timeout=5)
    assert code == 0
    assert_no_traceback(lines)


def test_sigterm_drains_like_ctrl_c(run) -> None:
    server = run("server.v2.py", "--port", "0")
    server.port()
    server.proc.terminate()
    code, lines = server.finish(timeout=5)
    assert code == 0
    assert lines[-1] == "Server shutting down."


def test_reset_client_is_logged_and_survived(run) -> None:
    server = run("server.v2.py", "--port", "0")
    port = server.port()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"about to vanish")
    recv_exactly(sock, len(PREFIX) + 15)
    reset(sock)
    server.wait_for("reset by the client")
    server.wait_for("closed.")
    code, lines = run("client.py", "--port", str(port)).finish()
    assert code == 0, lines
    assert lines[2] == "Received from server: Server received: Hello from the client!"


def test_refused_connection_prints_the_original_message(run) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        for script in ("client.py", "client.v2.py"):
            code, lines = run(script, "--port", str(port)).finish()
            assert code != 0
            assert lines == [
                f"Error: Connection refused. Is the server running on 127.0.0.1:{port}?"
            ]


def test_port_in_use_is_a_clear_message(run) -> None:
    first = run("server.v2.py", "--port", "0")
    port = first.port()
    code, lines = run("server.v2.py", "--port", str(port)).finish()
    assert code == 1
    assert lines == [
        f"Error: Address 127.0.0.1:{port} is already in use. Is another server running on it?"
    ]


def test_v2_server_restarts_on_the_same_port_at_once(run) -> None:
    server = run("server.v2.py", "--port", "0")
    port = server.port()
    # A served and closed connection leaves TIME_WAIT behind on the port.
    code, _ = run("client.py", "--port", str(port)).finish()
    assert code == 0
    server.interrupt()
    assert server.finish()[0] == 0
    again = run("server.v2.py", "--port", str(port))
    assert again.port() == port


def test_bad_arguments_are_clear_errors(run) -> None:
    code, lines = run("server.v2.py", "--port", "99999").finish()
    assert code == 2
    assert "port must be between 0 and 65535" in lines[-1]
    code, lines = run("server.v2.py", "--max-clients", "0").finish()
    assert code == 2
    code, lines = run("client.py", "--cafile", "/nonexistent/ca.pem").finish()
    assert code == 1
    assert lines == ["Error: /nonexistent/ca.pem: No such file or directory"]


@pytest.mark.parametrize(
    "argv",
    [
        ("server.py", "--help"),
        ("server.v2.py", "--help"),
        ("client.py", "--help"),
        ("client.v2.py", "--help"),
        ("-m", "--help"),
        ("-m", "server", "--help"),
        ("-m", "client", "--help"),
        ("-m", "cert", "--help"),
    ],
)
def test_help_explains(run, argv) -> None:
    code, lines = run(*argv).finish()
    assert code == 0
    text = "\n".join(lines)
    assert "usage:" in text
    if "server" in argv[-2] or "server" in argv[0]:
        assert "--max-clients" in text and "--idle-timeout" in text


def test_module_client_sends_messages_given_on_the_command_line(run) -> None:
    server = run("-m", "server", "--port", "0")
    port = server.port()
    code, lines = run("-m", "client", "--port", str(port), "one", "two").finish()
    assert code == 0
    assert lines == [
        f"Connected to server 127.0.0.1:{port}",
        "Sending: one",
        "Received from server: Server received: one",
        "Sending: two",
        "Received from server: Server received: two",
        "Closing connection.",
    ]


def test_server_whose_output_reader_went_away_ends_without_a_traceback(tmp_path) -> None:
    server = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "server.v2.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    assert server.stdout is not None and server.stderr is not None
    port = int(server.stdout.readline().rsplit(":", 1)[1])
    server.stdout.close()  # the reader goes away, e.g. `server.v2.py | head -1`
    code, _ = run_client(port)
    assert code == 0
    server.terminate()
    server.wait(15)
    errors = server.stderr.read()
    server.stderr.close()
    assert "Traceback" not in errors, errors


def run_client(port: int) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "client.py"), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout
