"""asyncio on sockdemo's Rust core: :func:`start_server` and :func:`connect`.

Shaped after :func:`asyncio.start_server` and :func:`asyncio.open_connection`,
for asyncio's own loop and uvloop alike::

    import asyncio
    import sockdemo.aio

    async def handler(message: str) -> str:
        return "Server received: " + message

    async def main() -> None:
        server = await sockdemo.aio.start_server(handler, port=0)
        async with server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port) as client:
                print(await client.request("hello"))   # Server received: hello

    asyncio.run(main())

With a handler, the server's connections are served on the loop's own
thread, as uvloop serves its own: the loop watches one descriptor (an epoll
instance holding every connection's socket), and each time it is readable,
one call into Rust reads every ready socket, runs the handler for the whole
messages, and writes the replies. No request crosses a thread. (The echo,
with no handler, is served on Rust threads.) A coroutine handler is started
at once: one that finishes without suspending is answered there and then,
with no Task made; one that suspends finishes in a Task, many at once.
Replies keep their order per connection, and while a connection's handler
runs, that connection reads nothing more, so a loop that falls behind pushes
back on its clients.

The client's socket, TLS and framing are Rust too; the loop does the waiting,
with the same system calls as asyncio's streams.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Literal, TypeVar, Union

from ._sockdemo import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HOST,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PORT,
    LoopClient,
    LoopHandler,
    PendingJob,
)
from ._sockdemo import Server as _CoreServer

__all__ = ["AsyncHandler", "Client", "Server", "connect", "start_server"]

_Reply = Union[str, bytes, None]
AsyncHandler = Union[
    Callable[[str], Union[_Reply, Awaitable[_Reply]]],
    Callable[[str, tuple[Any, ...]], Union[_Reply, Awaitable[_Reply]]],
]
"""A handler for :func:`start_server`: ``async def handler(message: str) ->
str | bytes | None``, or a plain function of the same shape; with a second
parameter, ``handler(message, peer)`` also gets the client's ``(host, port)``."""

_T = TypeVar("_T")
_M = TypeVar("_M", str, bytes)

# Room a client keeps for received bytes beyond the largest reply before it
# stops reading: past it, at least one whole reply waits to be taken, so
# pausing can never leave a reply half-read.
_SLACK = 128 * 1024


async def start_server(
    handler: AsyncHandler | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    **options: Any,
) -> Server:
    """Binds ``host:port`` (port 0 picks a free one) and starts serving.

    ``handler`` is ``None`` (the echo), a plain function, or an ``async def``
    taking each message as ``str`` and returning the reply (``str``,
    ``bytes``, or ``None`` for the echo); it runs on the running loop.
    ``options`` are :class:`sockdemo.Server`'s keywords (``max_clients``,
    ``protocol``, ``reply_prefix``, timeouts, ``certfile``/``keyfile``, sizes).
    A handler that raises is logged under ``sockdemo.handler`` and closes only
    its client's connection.
    """
    loop = asyncio.get_running_loop()
    return Server(loop, handler, host, port, options)


class Server:
    """A running server, as :func:`start_server` returns it; behaves like
    :class:`asyncio.Server`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: AsyncHandler | None,
        host: str,
        port: int,
        options: dict[str, Any],
    ) -> None:
        if "handler_threads" in options:
            raise TypeError("handler_threads has no meaning here: handlers run on the loop")
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        # The bridge holds no strong reference to this server: a cycle through
        # a Rust object is one the garbage collector cannot see into.
        follow = _follower(loop, self._tasks)
        finished = _weakly(self._finish)
        self._bridge = None if handler is None else LoopHandler(handler, follow, finished)
        self._core = _CoreServer(host, port, handler=self._bridge, **options)
        self._closing = False
        self._closed: asyncio.Future[None] = loop.create_future()
        self._serving_forever: asyncio.Future[None] | None = None
        if self._bridge is not None:
            loop.add_reader(self._bridge.fileno(), self._bridge.run)
        self._core.start()

    @property
    def server_address(self) -> tuple[Any, ...]:
        """``(host, port)`` actually bound."""
        address: tuple[Any, ...] = self._core.server_address
        return address

    def stats(self) -> dict[str, int]:
        """The server's counters, as :meth:`sockdemo.Server.stats`."""
        return self._core.stats()

    def metrics(self) -> str:
        """The counters in Prometheus' text format, as :meth:`sockdemo.Server.metrics`."""
        return self._core.metrics()

    def is_serving(self) -> bool:
        """Is the server accepting connections?"""
        return not self._closing

    def close(self) -> None:
        """Stops accepting and starts closing: replies in flight go out, a
        handler still suspended after ``shutdown_timeout`` is cancelled, then
        every connection closes. :meth:`wait_closed` waits for all of it."""
        if self._closing:
            return
        self._closing = True
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.set_result(None)
        if self._bridge is not None:
            # On the loop's thread, this only asks: the drain needs the loop
            # (the connections are served on it), and the handoff says when
            # it is over.
            self._core.shutdown()
        else:
            # The echo needs no loop: wait for the drain on a thread.
            stopping = self._loop.run_in_executor(None, self._core.server_close)
            stopping.add_done_callback(self._stopped)

    async def wait_closed(self) -> None:
        """Waits until :meth:`close` is done."""
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        """Serves until :meth:`close`, or until cancelled (then it closes,
        waits for that, and re-raises)."""
        if self._serving_forever is not None:
            raise RuntimeError("serve_forever() is already running")
        if self._closing:
            raise RuntimeError("the server is closed")
        self._serving_forever = self._loop.create_future()
        interrupted = _interrupt_on_sigint(self._loop)
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                if interrupted():
                    raise KeyboardInterrupt from None
                raise
        finally:
            self._serving_forever = None
            interrupted.restore()
        await self.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        state = "serving" if self.is_serving() else "closed"
        return f"<sockdemo.aio.Server {self._core!r} {state}>"

    def _finish(self) -> None:
        """The server has finished serving: so does this side."""
        assert self._bridge is not None
        self._loop.remove_reader(self._bridge.fileno())
        self._closing = True
        # Past the grace period: the connections these would answer are gone.
        for task in self._tasks:
            task.cancel()
        self._core.server_close()
        if self._tasks:
            gathering = asyncio.gather(*self._tasks, return_exceptions=True)
            gathering.add_done_callback(self._stopped)
        else:
            self._stopped(None)

    def _stopped(self, done: asyncio.Future[Any] | None) -> None:
        if done is not None and not done.cancelled() and done.exception() is not None:
            if not self._closed.done():
                self._closed.set_exception(done.exception())  # type: ignore[arg-type]
            return
        if not self._closed.done():
            self._closed.set_result(None)


class _Interrupt:
    """Whether Ctrl+C cancelled ``serve_forever``; see :func:`_interrupt_on_sigint`."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.seen = False

    def __call__(self) -> bool:
        return self.seen

    def restore(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_signal_handler(signal.SIGINT)


def _interrupt_on_sigint(loop: asyncio.AbstractEventLoop) -> _Interrupt:
    """Before Python 3.11, ``asyncio.run`` lets Ctrl+C raise
    ``KeyboardInterrupt`` in whatever task happens to run, which then dies
    with it ("Task exception was never retrieved"). As 3.11's runner does,
    turn Ctrl+C into cancelling the task in ``serve_forever`` instead, which
    then closes the server and raises ``KeyboardInterrupt`` itself. Only
    where nobody else handles SIGINT, on the main thread."""
    if (
        sys.version_info >= (3, 11)
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        return _Interrupt(None)
    task = asyncio.current_task()
    interrupt = _Interrupt(loop)

    def on_sigint() -> None:
        interrupt.seen = True
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):
        return _Interrupt(None)
    return interrupt


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """Calls ``method`` if its object is still alive."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        alive = ref()
        if alive is not None:
            alive()

    return call


def _follower(
    loop: asyncio.AbstractEventLoop, tasks: set[asyncio.Task[None]]
) -> Callable[[PendingJob, Awaitable[Any], bool, Any], None]:
    """What the bridge calls when a handler suspends: finish it in a Task,
    kept in ``tasks`` until done."""

    def follow(job: PendingJob, awaitable: Awaitable[Any], started: bool, waiting: Any) -> None:
        step = _resume(awaitable, waiting) if started else awaitable  # type: ignore[arg-type]
        task = loop.create_task(_answer(job, step))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return follow


async def _answer(job: PendingJob, step: Awaitable[Any]) -> None:
    """Finishes a handler in a Task and hands its reply to the job."""
    try:
        reply = await step
    except asyncio.CancelledError:
        job.cancel()
        raise
    except Exception as exc:
        job.fail(exc)
    else:
        job.resume(reply)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, _T], waiting: Any) -> Generator[Any, Any, _T]:
    """Goes on with a coroutine that was started outside any Task and is now
    suspended on ``waiting``.

    Yielding ``waiting`` hands it to the Task running this, which wakes when
    it is done, exactly as if the coroutine had yielded it itself; from then
    on every value and exception passes straight through.
    """
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


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
        try:
            await _until(loop, core, "write")
            want = core.connected()
            while want is not None:
                await _until(loop, core, want)
                want = core.connected()
        except OSError as exc:
            core.close()
            last = exc
            continue
        except BaseException:
            core.close()
            raise
        return Client(loop, core, protocol, timeout, max_message_size + _SLACK)
    assert last is not None  # getaddrinfo gives at least one address or raises
    raise last


async def _until(loop: asyncio.AbstractEventLoop, core: LoopClient, want: str) -> None:
    """Waits until ``core``'s socket is readable (``"read"``) or writable."""
    ready: asyncio.Future[None] = loop.create_future()
    fd = core.fileno()
    watch, unwatch = (
        (loop.add_reader, loop.remove_reader)
        if want == "read"
        else (loop.add_writer, loop.remove_writer)
    )
    watch(fd, _wake, ready)
    try:
        await ready
    finally:
        unwatch(fd)


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
        protocol: str,
        timeout: float | None,
        room: int,
    ) -> None:
        self._loop = loop
        self._core = core
        # A framed reply is at most the largest message plus the prefix.
        self._room = room
        self._fd = core.fileno()
        self._timeout = timeout
        self.protocol = protocol
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._reading = True
        self._closed_because: str | None = None
        loop.add_reader(self._fd, self._on_readable)

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
        if self._closed_because is None and not self._loop.is_closed():
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
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            news = self._core.fill()
        except OSError as exc:
            self._error, news = exc, True
        if self._error is not None or self._core.at_eof or self._core.buffered >= self._room:
            # At the end the socket stays readable: stop watching it.
            self._loop.remove_reader(self._fd)
            self._reading = False
        if news and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait_readable(self) -> None:
        self._waiter = waiter = self._loop.create_future()
        await self._wait(waiter)

    async def _wait_writable(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self._fd, _wake, waiter)
        try:
            await self._wait(waiter)
        finally:
            self._loop.remove_writer(self._fd)

    async def _wait(self, waiter: asyncio.Future[None]) -> None:
        timer = None
        if self._timeout is not None:
            timer = self._loop.call_later(self._timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
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
        if self._reading and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._reading = False
        self._core.close()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(errno.ETIMEDOUT, "timed out"))
