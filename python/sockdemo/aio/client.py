"""The asyncio client: :func:`connect` and the :class:`Client` it returns.

The client's socket, TLS and framing are Rust; the loop does the waiting,
with the same system calls as asyncio's streams. A loop that cannot watch a
socket (Windows' Proactor loop) is served by a thread that does (see
``_watch``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
from typing import Any, Literal, TypeVar

from .._sockdemo import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HOST,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PORT,
    LoopClient,
)
from ..errors import ServerClosedError
from ._watch import READ, WRITE, Watch

_M = TypeVar("_M", str, bytes)

# Room a client keeps for received bytes beyond the largest reply before it
# stops reading: past it, at least one whole reply waits to be taken, so
# pausing can never leave a reply half-read.
_SLACK = 128 * 1024


async def connect(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    protocol: Literal["raw", "framed"] = "raw",
    timeout: float | None = None,
    *,
    cafile: str | None = None,
    server_hostname: str | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> Client:
    """Connects to a sockdemo server, trying each address ``host`` resolves
    to; ``cafile`` turns TLS on. ``timeout`` bounds connecting and each
    reply (``TimeoutError``; default: wait)."""
    loop = asyncio.get_running_loop()
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be a non-negative number of seconds")
    connecting = _connect(
        loop, host, port, protocol, timeout, cafile, server_hostname, buffer_size, max_message_size
    )
    if timeout is None:
        return await connecting
    try:
        return await asyncio.wait_for(connecting, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(errno.ETIMEDOUT, "timed out") from None


async def _connect(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    protocol: str,
    timeout: float | None,
    cafile: str | None,
    server_hostname: str | None,
    buffer_size: int,
    max_message_size: int,
) -> Client:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for ip in dict.fromkeys(str(info[4][0]) for info in infos):
        core = LoopClient(
            ip,
            port,
            host,
            protocol,
            cafile=cafile,
            server_hostname=server_hostname,
            buffer_size=buffer_size,
            max_message_size=max_message_size,
        )
        watch = Watch(loop, core.fileno())
        try:
            await _until(loop, watch, WRITE)
            want = core.connected()
            while want is not None:
                await _until(loop, watch, READ if want == "read" else WRITE)
                want = core.connected()
        except OSError as exc:
            watch.close()
            core.close()
            last = exc
            continue
        except BaseException:
            watch.close()
            core.close()
            raise
        return Client(loop, core, watch, protocol, timeout, max_message_size + _SLACK)
    assert last is not None  # getaddrinfo gives at least one address or raises
    raise last


async def _until(loop: asyncio.AbstractEventLoop, watch: Watch, event: int) -> None:
    """Waits until the watched socket is readable (``READ``) or writable."""
    ready: asyncio.Future[None] = loop.create_future()
    watch.on(event, functools.partial(_wake, ready))
    try:
        await ready
    finally:
        watch.off(event)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class Client:
    """A connection to a sockdemo server, as :func:`connect` returns it.

    ``await request(message)`` sends one message and returns the reply in the
    message's type; ``send``/``receive`` pipeline. A request cancelled or
    timed out closes the connection, since its reply, still on the way, could
    otherwise be read as the next one's; later use raises
    ``ConnectionAbortedError``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: LoopClient,
        watch: Watch,
        protocol: str,
        timeout: float | None,
        room: int,
    ) -> None:
        self._loop = loop
        self._core = core
        self._watch = watch
        # A framed reply is at most the largest message plus the prefix.
        self._room = room
        self._timeout = timeout
        self.protocol = protocol
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._reading = True
        self._closed_because: str | None = None
        watch.on(READ, self._on_readable)

    @property
    def server_address(self) -> tuple[Any, ...]:
        """The server's ``(host, port)``."""
        address: tuple[Any, ...] = self._core.server_address
        return address

    async def request(self, message: _M) -> _M:
        """Sends ``message`` (``str`` or ``bytes``) and returns the reply in
        the same type."""
        # send() and _receive() inlined: this is the loop users time.
        self._check_open()
        core = self._core
        try:
            sent = core.send(message)
        except (ValueError, TypeError):
            raise  # Refused before anything was sent: the connection is fine.
        try:
            if not sent:
                await self._flush()
            text = isinstance(message, str)
            while True:
                reply: Any = core.reply(text)
                if reply is not None:
                    if not self._reading:
                        self._maybe_resume()
                    return reply  # type: ignore[no-any-return]
                if self._error is not None:
                    raise self._error
                self._waiter = waiter = self._loop.create_future()
                if self._timeout is None:
                    await waiter
                    self._waiter = None
                else:
                    await self._wait(waiter)
        except BaseException as exc:
            self._abort(exc)
            raise

    async def send(self, message: str | bytes) -> None:
        """Sends one message without waiting for its reply (pipelining: use
        the framed protocol, raw replies carry no boundaries)."""
        self._check_open()
        try:
            sent = self._core.send(message)
        except (ValueError, TypeError):
            raise  # Refused before anything was sent: the connection is fine.
        try:
            if not sent:
                await self._flush()
        except BaseException as exc:
            self._abort(exc)
            raise

    async def receive(self) -> bytes:
        """Receives the next reply as ``bytes``."""
        reply: Any = await self._receive(False)
        return reply  # type: ignore[no-any-return]

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> str:
        """The next message the server sends, as ``str``, until it closes
        the connection; waits at most ``timeout`` for each."""
        try:
            message: Any = await self._receive(True)
        except ServerClosedError:
            raise StopAsyncIteration from None
        return message  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Closes the connection (TLS: with close_notify). Idempotent."""
        self._shut("the client was closed")

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed_because else "open"
        return f"<sockdemo.aio.Client to {self.server_address} {state}>"

    def __del__(self) -> None:
        # Never left watching a descriptor that is about to close.
        if self._closed_because is None:
            if self._loop.is_closed():
                self._watch.close()
            else:
                self._shut("the client was garbage-collected")

    async def _receive(self, text: bool) -> str | bytes:
        self._check_open()
        try:
            while True:
                reply = self._core.reply(text)
                if reply is not None:
                    if not self._reading:
                        self._maybe_resume()
                    return reply
                if self._error is not None:
                    raise self._error
                await self._wait_readable()
        except BaseException as exc:
            self._abort(exc)
            raise

    async def _flush(self) -> None:
        """Writes what the socket did not take at once."""
        while not self._core.flush():
            await self._wait_writable()

    def _maybe_resume(self) -> None:
        """Reads again if it stopped only because too much waited unread."""
        core = self._core
        if self._error is None and not core.at_eof and core.buffered < self._room:
            self._reading = True
            self._watch.on(READ, self._on_readable)

    def _on_readable(self) -> None:
        try:
            news = self._core.fill()
        except OSError as exc:
            self._error, news = exc, True
        if self._error is not None or self._core.at_eof or self._core.buffered >= self._room:
            # At the end the socket stays readable: stop watching it.
            self._watch.off(READ)
            self._reading = False
        if news and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait_readable(self) -> None:
        self._waiter = waiter = self._loop.create_future()
        await self._wait(waiter)

    async def _wait_writable(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._watch.on(WRITE, functools.partial(_wake, waiter))
        try:
            await self._wait(waiter)
        finally:
            self._watch.off(WRITE)

    async def _wait(self, waiter: asyncio.Future[None]) -> None:
        timer = None
        if self._timeout is not None:
            timer = self._loop.call_later(self._timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            # A send's wait for room must not forget a receive's waiter.
            if self._waiter is waiter:
                self._waiter = None

    def _check_open(self) -> None:
        if self._closed_because is not None:
            raise ConnectionAbortedError(
                errno.ECONNABORTED, f"the connection is closed: {self._closed_because}"
            )

    def _abort(self, exc: BaseException) -> None:
        """A request went wrong half-way: the connection cannot be trusted."""
        if isinstance(exc, (asyncio.CancelledError, TimeoutError)):
            what = "cancelled" if isinstance(exc, asyncio.CancelledError) else "timed out"
            self._shut(
                f"a request was {what}, and its reply could have been taken for the "
                "next one's; connect again"
            )
        else:
            self._shut(f"{type(exc).__name__}: {exc}")

    def _shut(self, because: str) -> None:
        if self._closed_because is not None:
            return
        self._closed_because = because
        if self._reading:
            self._watch.off(READ)
        self._reading = False
        self._watch.close()
        self._core.close()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(errno.ETIMEDOUT, "timed out"))
