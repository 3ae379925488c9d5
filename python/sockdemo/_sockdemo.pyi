"""The compiled core of sockdemo (Rust: tokio, rustls), reached through pyo3.

Import from :mod:`sockdemo`, which re-exports everything here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, final, overload

from .session import Session

__all__ = [
    "BYE_REPLY",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_EVICT_IDLE_AFTER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MESSAGE_TIMEOUT",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "Client",
    "Connection",
    "LoopClient",
    "LoopHandler",
    "PendingJob",
    "Server",
    "__version__",
    "_shutdown_all",
    "bench",
    "generate_self_signed",
]

__version__: str
DEFAULT_HOST: str
"""``"127.0.0.1"``, where the original example listens."""
DEFAULT_PORT: int
"""``65432``, the original example's port."""
DEFAULT_PREFIX: str
"""``"Server received: "``, what precedes every echoed message."""
BYE_REPLY: str
"""``"Server acknowledging bye. Goodbye!"``, the answer to ``bye``."""
DEFAULT_BUFFER_SIZE: int
"""``1024``: the size of one raw message (the original's ``recv(1024)``)."""
DEFAULT_MAX_MESSAGE_SIZE: int
"""``1048576``: the largest framed message accepted by default."""
DEFAULT_MAX_PENDING_BYTES: int
"""``1048576``: bytes sent to one client and not yet read, past which it is too slow."""
DEFAULT_MAX_CLIENTS: int
"""``100``: clients a server serves at once by default."""
DEFAULT_MAX_HANDSHAKES: int
"""``1024``: connections that may be opening at once (not yet served) by default."""
DEFAULT_MAX_BUFFERED_BYTES: int
"""``67108864`` (64 MiB): bytes of half-received messages all connections may hold."""
DEFAULT_EVICT_IDLE_AFTER: float
"""``10.0`` seconds quiet before a full server closes a connection for a waiting client."""
DEFAULT_HANDSHAKE_TIMEOUT: float
"""``10.0`` seconds for a PROXY header and a TLS handshake to complete."""
DEFAULT_MESSAGE_TIMEOUT: float
"""``30.0`` seconds for a started message to arrive whole."""
DEFAULT_WRITE_TIMEOUT: float
"""``30.0`` seconds for a reply to be written."""
DEFAULT_SHUTDOWN_TIMEOUT: float
"""``5.0`` seconds a shutdown waits for handlers still running."""

_Protocol = Literal["raw", "framed"]
# `handler(message)`, or `handler(message, peer)` to learn the client's
# `(host, port)` (the real client's behind a PROXY header).
_Handler = (
    Callable[[str], "str | bytes | None"] | Callable[[str, tuple[Any, ...]], "str | bytes | None"]
)
_StrPath = str | os.PathLike[str]

@final
class Server:
    """A TCP echo server, shaped after :class:`socketserver.TCPServer`.

    The constructor binds at once (``OSError`` on failure; ``port=0`` picks a
    free port, read it back from :attr:`server_address`). Every message gets
    ``reply_prefix + message`` back, byte for byte; ``bye`` gets
    :data:`BYE_REPLY` and the connection closes. Up to ``max_clients`` clients
    are served at once; later ones wait their turn, they are not refused. A
    connection takes its slot once it has opened (PROXY header, TLS handshake
    and, unless ``session`` is given, a whole first message), so connections
    that say nothing cannot hold slots: up to ``max_handshakes`` (default
    1024, and at least ``max_clients``) may be opening at once, and when
    another client connects past that, the opening connection that has made
    the least progress is closed.

    ``handler``, if given, is called with each message (as ``str``, undecodable
    bytes kept as surrogates) and returns the reply instead (``None`` keeps the
    echo). A quick one is called on the network thread that read the message;
    one that blocks or computes for long runs on a pool of Python threads
    instead, up to ``handler_threads`` calls at once (default
    ``min(32, cpus + 4)``), so it may block: a slow handler delays only its
    own client while a thread is free.
    Replies keep their order per connection; while its handler runs, a
    connection reads nothing more, so a busy pool pushes back on clients
    instead of buffering. An exception in it, a wrong return type, an empty
    raw reply or a framed reply over ``max_message_size`` is logged under
    ``sockdemo.handler`` and closes only that client.

    ``certfile``/``keyfile`` (PEM) turn on TLS. Timeouts are in seconds:
    ``idle_timeout`` closes connections silent that long (default never);
    ``evict_idle_after``: when every slot is taken and a client waits, the
    slot holder quiet the longest (no bytes arriving) is closed once it has
    been quiet that long (default 10; ``None`` never);
    ``max_buffered_bytes`` bounds the bytes of half-received messages all
    connections together hold (default 64 MiB): past it, connections with a
    message under way stop reading until memory frees;
    ``handshake_timeout`` bounds the PROXY header and the TLS handshake
    (default 10), ``message_timeout`` bounds receiving a message once started
    (default 30), ``write_timeout`` bounds writing a reply, ``shutdown_timeout``
    bounds how long a shutdown waits for handlers still running.

    Behind a load balancer, ``proxy_protocol=True`` expects a PROXY header
    (v1 or v2, as HAProxy's ``send-proxy-v2``) first on every connection,
    believed only from ``proxy_allow`` (networks like ``"10.0.0.0/8"``;
    default loopback); a connection without one, or from elsewhere, is
    refused. The header's client address is what logs and handlers see.
    ``reuse_port=True`` shares the port with other processes
    (``SO_REUSEPORT``), which the kernel spreads connections among.

    A handler that takes two arguments is called as ``handler(message,
    peer)``, ``peer`` being the client's ``(host, port)``: the real client
    behind a proxy.

    ``session``, in place of a handler, is a :class:`sockdemo.Session`
    subclass: one instance per connection holds its state, and its hooks
    (``connected``, ``received``, ``closed``) run like a handler. Nothing is
    added to what a session sends (no prefix, no goodbye to ``bye``), and it
    may send at any time; a client that leaves more than
    ``max_pending_bytes`` (default 1 MiB) unread is too slow, and is
    disconnected. :meth:`broadcast` reaches every connection.
    """

    def __new__(
        cls,
        host: str = ...,
        port: int = 0,
        max_clients: int = 100,
        protocol: _Protocol | str = "raw",
        reply_prefix: str = ...,
        idle_timeout: float | None = None,
        certfile: _StrPath | None = None,
        keyfile: _StrPath | None = None,
        handler: _Handler | LoopHandler | None = None,
        *,
        buffer_size: int = ...,
        max_message_size: int = ...,
        message_timeout: float | None = ...,
        write_timeout: float | None = ...,
        handler_threads: int | None = None,
        shutdown_timeout: float = 5.0,
        evict_idle_after: float | None = 10.0,
        max_buffered_bytes: int = 67108864,
        proxy_protocol: bool = False,
        proxy_allow: Sequence[str] | None = None,
        reuse_port: bool = False,
        session: type[Session] | None = None,
        max_pending_bytes: int = 1048576,
        max_handshakes: int = 1024,
        handshake_timeout: float | None = 10.0,
    ) -> Server: ...
    @property
    def server_address(self) -> tuple[Any, ...]:
        """``(host, port)`` actually bound (``(host, port, flowinfo, scope_id)`` for IPv6)."""
    @property
    def protocol(self) -> str:
        """``"raw"`` or ``"framed"``."""
    @property
    def max_clients(self) -> int:
        """How many clients are served at once."""
    def serve_forever(self) -> None:
        """Serves until :meth:`shutdown` is called from another thread.

        The interpreter is released while serving. Ctrl+C (any exception from
        a signal handler) shuts the server down gracefully, then propagates; a
        second Ctrl+C while handlers are still draining stops at once.
        """
    def handle_request(self, max_messages: int | None = None) -> None:
        """Serves a single client, then returns (``server.py``).

        With ``max_messages`` the connection is closed after that many replies.
        """
    def start(self) -> None:
        """Serves in the background (on Rust threads) and returns at once."""
    def shutdown(self) -> None:
        """Stops serving: the port refuses new clients at once (``start()``
        listens again), replies in flight go out, every connection closes.
        Returns when that is done, waiting for handlers still running at
        most ``shutdown_timeout``. Safe from any thread; from inside a
        handler it only asks, and the handler's reply still goes out."""
    def server_close(self) -> None:
        """Shuts down if serving, then releases the listening socket."""
    def broadcast(self, message: str | bytes, exclude: object = None) -> int:
        """Sends ``message`` to every connection of a session server but
        ``exclude`` (a session, a connection, or its ``id``), without waiting
        for any: encoded once and queued in Rust. Returns how many connections
        took it; a connection too far behind is closed rather than waited
        for."""
    def metrics(self) -> str:
        """Every counter in Prometheus' text format, as ``/metrics`` serves it:
        connections accepted, active and closed (by reason), messages and bytes
        each way, errors by kind, TLS handshake failures, the handler's latency
        histogram and queue depth."""
    def stats(self) -> dict[str, int]:
        """Counters: ``connections_accepted``, ``connections_active`` (holding
        a client slot), ``connections_opening`` (accepted, not yet served),
        ``messages``, ``bytes_in``, ``bytes_out``, ``errors``, and the handler
        pool: ``handler_queued`` (messages waiting for a thread),
        ``handler_threads`` (running) and ``handler_busy`` (not idle)."""
    def __enter__(self) -> Server: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None:
        """Calls :meth:`server_close`."""

@final
class Client:
    """A blocking client for a sockdemo server (or any server of the protocol).

    Connects in the constructor. ``timeout`` (seconds) bounds connecting and
    each reply; ``TimeoutError`` when it passes. ``cafile`` turns on TLS,
    verifying the server against those certificates for ``server_hostname``
    (default: ``host``). Waits wake every 100 ms for signals, so Ctrl+C works.
    """

    def __new__(
        cls,
        host: str = ...,
        port: int = ...,
        protocol: _Protocol | str = "raw",
        timeout: float | None = None,
        *,
        cafile: _StrPath | None = None,
        server_hostname: str | None = None,
        buffer_size: int = ...,
        max_message_size: int = ...,
    ) -> Client: ...
    @property
    def server_address(self) -> tuple[Any, ...]:
        """The server's address."""
    @overload
    def request(self, message: str) -> str:
        """Sends ``message`` and returns the reply, as ``str`` for ``str``.

        Raises :class:`sockdemo.MessageTooLarge` (before sending) for a raw
        message over ``buffer_size`` bytes or a framed one over
        ``max_message_size``; ``ConnectionResetError`` if the server closed.
        In raw mode one read is one reply, as in the original.
        """
    @overload
    def request(self, message: bytes) -> bytes: ...
    def send(self, message: str | bytes) -> None:
        """Sends one message without waiting for its reply (pipelining).

        Pipeline with the ``framed`` protocol: raw replies carry no
        boundaries, so after two raw sends one :meth:`receive` may return
        both replies run together.
        """
    def __iter__(self) -> Client: ...
    def __next__(self) -> str:
        """The next message the server sends, as ``str``, until it closes
        the connection; each waits at most ``timeout`` (``TimeoutError``)."""
    def receive(self) -> bytes:
        """Reads the next reply (framed: one whole reply; raw: one read)."""
    def close(self) -> None:
        """Closes the connection. Idempotent."""
    def __enter__(self) -> Client: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None:
        """Calls :meth:`close`."""

def generate_self_signed(dir: _StrPath) -> tuple[Path, Path]:
    """Writes ``dir/cert.pem`` and ``dir/key.pem``: a self-signed development
    certificate for localhost, 127.0.0.1 and ::1. Returns the two paths."""

def bench(
    host: str = ...,
    port: int = ...,
    *,
    connections: int = 10,
    size: int = ...,
    duration: float = 10.0,
    protocol: _Protocol | str = "raw",
    prefix: str = ...,
    cafile: _StrPath | None = None,
    server_hostname: str | None = None,
    threads: int | None = None,
    progress: Callable[[float, int, int], object] | None = None,
) -> dict[str, Any]:
    """Runs the load generator against a running server.

    Opens ``connections`` connections; each sends a ``size``-byte message,
    waits for the reply, checks it byte for byte against ``prefix`` plus the
    message, and repeats for ``duration`` seconds (closed loop). ``progress``
    is called each second with ``(elapsed_seconds, requests, errors)``.

    Returns ``connections``, ``size``, ``protocol``, ``requests``, ``errors``
    (failed connects, I/O errors, timeouts, wrong replies), ``unanswered``
    (requests still in flight when the run ended), ``elapsed``,
    ``requests_per_second``, ``mib_per_second`` and ``latency_ms`` (``mean``,
    ``p50``, ``p90``, ``p99``, ``p99.9``, ``max``). Raises
    ``ConnectionRefusedError`` if no connection could be opened, ``ValueError``
    for a raw ``size`` over 1024.
    """

def _shutdown_all() -> None:
    """Stops every running server (registered with ``atexit``)."""

# What sockdemo.aio builds on; use sockdemo.aio, not these.

@final
class LoopHandler:
    """A handler run on an asyncio loop: pass it as a Server's ``handler``,
    watch :meth:`fileno` for reading and call :meth:`run` when readable (or,
    for a loop that cannot watch it, :meth:`watch`)."""

    def __new__(
        cls,
        handler: Callable[..., Any],
        follow: Callable[[PendingJob, Any, bool, Any], object],
        finished: Callable[[], object],
        session: bool = False,
    ) -> LoopHandler: ...
    def fileno(self) -> int:
        """The descriptor to watch for reading; -1 where there is none (Windows)."""
    def watch(self, ask: Callable[[], object]) -> None:
        """A thread of ours watches instead, calling ``ask()`` whenever
        :meth:`run` is due; it stops once ``ask`` raises or the server has
        finished."""
    def run(self) -> None:
        """Answers every message queued; calls ``finished()`` once the server has."""

@final
class PendingJob:
    """A message whose handler is running in a Task."""

    @property
    def peer(self) -> tuple[Any, ...] | None: ...
    def resume(self, reply: object) -> None: ...
    def fail(self, error: BaseException) -> None: ...
    def cancel(self) -> None: ...
    def done(self) -> None: ...

@final
class Connection:
    """One connection of a session server: what a session sends through."""

    @property
    def id(self) -> int:
        """The connection's number, unique within its server."""
    @property
    def peer(self) -> tuple[Any, ...]:
        """The client's ``(host, port)`` (the real client's behind a proxy)."""
    @property
    def pending(self) -> int:
        """Bytes sent that the client has not taken yet (0 once gone)."""
    @property
    def is_open(self) -> bool:
        """Is the connection still open?"""
    def send(self, message: str | bytes) -> bool:
        """Sends ``message`` after everything sent before, without waiting;
        ``False`` once the connection is closing or gone."""
    def close(self) -> None:
        """Closes the connection once what was sent before is out."""

@final
class LoopClient:
    """A connection driven by an event loop: every method returns at once."""

    def __new__(
        cls,
        ip: str,
        port: int,
        host: str,
        protocol: str,
        *,
        cafile: _StrPath | None,
        server_hostname: str | None,
        buffer_size: int,
        max_message_size: int,
    ) -> LoopClient: ...
    def fileno(self) -> int: ...
    @property
    def server_address(self) -> tuple[Any, ...]: ...
    def connected(self) -> Literal["read", "write"] | None: ...
    def send(self, message: str | bytes) -> bool: ...
    def flush(self) -> bool: ...
    def fill(self) -> bool: ...
    def reply(self, text: bool) -> str | bytes | None: ...
    @property
    def buffered(self) -> int: ...
    @property
    def at_eof(self) -> bool: ...
    @property
    def is_tls(self) -> bool: ...
    def close(self) -> None: ...
