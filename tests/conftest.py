"""Shared fixtures: servers on port 0, raw socket peers, and script runners.

Nothing here sleeps to wait for a server: a server made through the API is
listening when its constructor returns, and a script prints its real port on
its first line, which the runner reads before going on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import sockdemo

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "python"
PREFIX = sockdemo.DEFAULT_PREFIX.encode()
BYE = sockdemo.BYE_REPLY.encode()


class ProactorLikeLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with ``add_reader`` and ``add_writer`` refused
    (``NotImplementedError``) the way Windows' Proactor loop refuses them:
    what sockdemo.aio does there, tested here. Its own transports still
    work, so asyncio streams and plain sockets are the peers."""

    #: Calls refused so far, by every such loop.
    refused = 0

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        ProactorLikeLoop.refused += 1
        raise NotImplementedError

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        ProactorLikeLoop.refused += 1
        raise NotImplementedError


@pytest.fixture
def serve() -> Iterator[Callable[..., sockdemo.Server]]:
    """Starts API servers on 127.0.0.1:0 in the background; closes them after the test."""
    servers: list[sockdemo.Server] = []

    def start(**options: Any) -> sockdemo.Server:
        options.setdefault("port", 0)
        server = sockdemo.Server(**options)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.server_close()


def connect(server: sockdemo.Server, timeout: float = 10) -> socket.socket:
    """A plain Python socket connected to `server`: an independent peer."""
    return socket.create_connection(server.server_address[:2], timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Reads exactly n bytes (raises if the peer closes first)."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes: {bytes(data)!r}")
        data += chunk
    return bytes(data)


def recv_until_closed(sock: socket.socket) -> bytes:
    """Reads until the peer closes."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes `sock` (EOF or reset).
    Fails the test (socket timeout) if it is still open after `timeout`."""
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Polls `condition` until it holds; fails the test after `timeout`.
    For state with no event to wait on (a server's counters)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.005)


def frame(payload: bytes) -> bytes:
    """A framed message as Python's struct module writes it."""
    return struct.pack("!I", len(payload)) + payload


def read_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!I", recv_exactly(sock, 4))
    return recv_exactly(sock, length)


def reset(sock: socket.socket) -> None:
    """Closes with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def default_signals() -> None:
    """In a child, before it runs: Ctrl+C and SIGTERM do what they do by
    default, whatever the test run inherited (CI and `nohup` start jobs with
    SIGINT ignored, and an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Script:
    """A script or `python -m sockdemo` run as a child process.

    Output is read by a thread into a queue, so a test waits for a line with a
    deadline instead of sleeping or blocking forever.
    """

    def __init__(
        self,
        *argv: str,
        stdin: int | None = subprocess.DEVNULL,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            cwd=cwd,
            env=env or dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=default_signals,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout: float = 15) -> str:
        """The next output line; fails the test if none comes in time."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output within {timeout}s; so far: {self.seen}")
        if line is None:
            pytest.fail(f"the program ended; its output was: {self.seen}")
        self.seen.append(line)
        return line

    def drain(self) -> list[str]:
        """Every output line printed so far, without waiting."""
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                self.seen.append(line)
        return self.seen

    def wait_for(self, text: str, timeout: float = 15) -> str:
        """Reads lines until one contains `text`."""
        while True:
            line = self.line(timeout)
            if text in line:
                return line

    def port(self) -> int:
        """Reads the `... listening on HOST:PORT` first line."""
        first = self.line()
        assert first.startswith("Server listening on 127.0.0.1:"), first
        return int(first.rsplit(":", 1)[1])

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 15) -> tuple[int, list[str]]:
        """Waits for the exit; returns the status and every output line."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"did not exit within {timeout}s; output: {self.seen}")
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code, self.seen

    def kill(self) -> None:
        """Ends the process if still running and closes its pipes."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        self.pump.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def run() -> Iterator[Callable[..., Script]]:
    """Runs scripts (`run("server.v2.py", "--port", "0")`), `python -m sockdemo ...`
    (`run("-m", "server")`) or `python -c CODE` (`run("-c", CODE)`); kills leftovers."""
    started: list[Script] = []

    def start(name: str, *args: str, stdin: int | None = subprocess.DEVNULL) -> Script:
        if name == "-m":
            argv = ["-m", "sockdemo", *args]
        elif name == "-c":
            argv = ["-c", *args]
        else:
            argv = [str(SCRIPTS / name), *args]
        script = Script(*argv, stdin=stdin)
        started.append(script)
        return script

    yield start
    for script in started:
        script.kill()
