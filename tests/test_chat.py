"""The chat examples, ``sockdemo server --session`` and ``sockdemo chat``,
run as users run them: separate processes talking over loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from conftest import ROOT, Script

EXAMPLES = ROOT / "examples"


@pytest.fixture
def spawn() -> Iterator[Callable[..., Script]]:
    """Runs `python ARGS...` from the checkout; kills leftovers."""
    started: list[Script] = []

    def start(*argv: str, stdin: int | None = subprocess.DEVNULL) -> Script:
        script = Script(*argv, stdin=stdin)
        started.append(script)
        return script

    yield start
    for script in started:
        script.kill()


def chat_port(server: Script) -> int:
    first = server.line()
    assert "listening on 127.0.0.1:" in first, first
    return int(first.rsplit(":", 1)[1])


def join(spawn: Callable[..., Script], port: int) -> Script:
    """A `sockdemo chat` client, ready once it has said how to leave."""
    client = spawn("-m", "sockdemo", "chat", "--port", str(port), stdin=subprocess.PIPE)
    assert client.line() == f"Connected to server 127.0.0.1:{port}"
    client.wait_for("Ctrl+D or Ctrl+C leaves")
    return client


@pytest.mark.parametrize(
    "server_argv",
    [
        [str(EXAMPLES / "chat_server.py"), "0"],
        [str(EXAMPLES / "chat_server_aio.py"), "0"],
        [
            "-m",
            "sockdemo",
            "server",
            "--port",
            "0",
            "--protocol",
            "framed",
            "--session",
            "examples.chat_server:Chat",
        ],
        [
            "-m",
            "sockdemo",
            "server",
            "--port",
            "0",
            "--protocol",
            "framed",
            "--session",
            "examples.chat_server_aio:chat",
        ],
    ],
    ids=["example", "example-aio", "session-class", "session-async-def"],
)
def test_two_people_chat_with_nicknames(
    spawn: Callable[..., Script], server_argv: list[str]
) -> None:
    server = spawn(*server_argv)
    port = chat_port(server)
    alice = join(spawn, port)
    # A reply to /who comes after the session has joined: bob's arrival
    # is then sure to be told to alice.
    alice.send("/who\n")
    alice.wait_for("here:")
    bob = join(spawn, port)
    alice.wait_for("joined")  # bob's arrival
    alice.send("/nick alice\n")
    bob.wait_for("is now alice")
    bob.send("/nick bob\n")
    alice.wait_for("is now bob")
    bob.send("hello alice\n")
    assert alice.wait_for("hello alice") == "bob: hello alice"
    alice.send("/who\n")
    assert alice.wait_for("here: alice") == "here: alice, bob"
    bob.proc.stdin.close()  # type: ignore[union-attr]  # Ctrl+D
    assert bob.wait_for("Input stream closed.") == "Input stream closed."
    code, lines = bob.finish()
    assert code == 0 and lines[-1] == "Closing connection.", lines
    assert alice.wait_for("left") == "bob left"
    alice.interrupt()  # Ctrl+C
    code, lines = alice.finish()
    assert code == 0, lines
    assert "Interrupted by user." in lines and lines[-1] == "Closing connection.", lines


def test_a_chat_ends_cleanly_when_the_server_goes(spawn: Callable[..., Script]) -> None:
    server = spawn(str(EXAMPLES / "chat_server.py"), "0")
    alice = join(spawn, chat_port(server))
    server.interrupt()
    assert server.finish()[0] == 0
    alice.wait_for("Server closed the connection.")
    code, lines = alice.finish()
    assert code == 0 and "Traceback" not in "\n".join(lines), lines


def test_a_chat_to_nobody_says_so(spawn: Callable[..., Script]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = spawn("-m", "sockdemo", "chat", "--port", str(port))
    code, lines = client.finish()
    assert code == 1
    assert lines == [f"Error: Connection refused. Is the server running on 127.0.0.1:{port}?"]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("nomodule", "must look like module:Class"),
        ("examples.chat_server:Nope", "has no 'Nope'"),
        ("examples.chat_server:sys", "is not callable"),
        ("json:dumps", "must be a sockdemo.Session subclass or an async def function"),
    ],
)
def test_a_bad_session_is_a_clear_error(
    spawn: Callable[..., Script], spec: str, error: str
) -> None:
    server = spawn("-m", "sockdemo", "server", "--port", "0", "--session", spec)
    code, lines = server.finish()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("Error: --session") and error in lines[0], lines


def test_handler_and_session_together_are_refused(spawn: Callable[..., Script]) -> None:
    server = spawn(
        "-m", "sockdemo", "server", "--port", "0",
        "--handler", "json:dumps", "--session", "examples.chat_server:Chat",
    )  # fmt: skip
    code, lines = server.finish()
    assert code == 2
    assert lines == ["Error: --handler and --session cannot be used together"]
