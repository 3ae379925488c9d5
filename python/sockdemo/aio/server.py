"""The asyncio server: :func:`start_server` and the :class:`Server` it returns.

With a handler, the server's connections are served on the loop's own
thread, as uvloop serves its own: the loop watches one descriptor (an epoll
instance holding every connection's socket), and each time it is readable,
one call into Rust reads every ready socket, runs the handler for the whole
messages, and writes the replies. No request crosses a thread. (The echo,
with no handler, is served on Rust threads.) A coroutine handler is started
at once: one that finishes without suspending is answered there and then,
with no Task made; one that suspends finishes in a Task.

A loop with no ``add_reader`` (Windows' Proactor loop) is served the same
way, but a thread of sockdemo's watches the sockets and asks the loop for
each call (see :func:`_watch`).
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar, Union

from .._sockdemo import DEFAULT_HOST, LoopHandler, PendingJob
from .._sockdemo import Server as _CoreServer
from .session import AsyncSession, opener

_Reply = Union[str, bytes, None]
AsyncHandler = Union[
    Callable[[str], Union[_Reply, Awaitable[_Reply]]],
    Callable[[str, tuple[Any, ...]], Union[_Reply, Awaitable[_Reply]]],
]
"""A handler for :func:`start_server`: ``async def handler(message: str) ->
str | bytes | None``, or a plain function of the same shape; with a second
parameter, ``handler(message, peer)`` also gets the client's ``(host, port)``."""

_T = TypeVar("_T")


async def start_server(
    handler: AsyncHandler | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    session: AsyncSession | None = None,
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

    ``session``, in place of a handler, is ``async def session(conn)``, run
    once per connection with a :class:`sockdemo.aio.Connection`: ``async for
    message in conn``, ``await conn.send(m)``, ``conn.server.broadcast(m)``.
    Its return closes the connection; an exception is logged under
    ``sockdemo.handler`` and closes only that connection.
    """
    loop = asyncio.get_running_loop()
    if session is not None:
        if handler is not None:
            raise ValueError("give a handler or a session, not both")
        if not callable(session):
            raise TypeError(f"session must be an async def function, not {session!r}")
    return Server(loop, handler, host, port, options, session)


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
        session: AsyncSession | None = None,
    ) -> None:
        if "handler_threads" in options:
            raise TypeError("handler_threads has no meaning here: handlers run on the loop")
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        # The bridge holds no strong reference to this server: a cycle through
        # a Rust object is one the garbage collector cannot see into.
        follow = _follower(loop, self._tasks)
        finished = _weakly(self._finish)
        self._bridge: LoopHandler | None = None
        if session is not None:
            opened = opener(session, weakref.ref(self), self._tasks, loop)
            self._bridge = LoopHandler(opened, follow, finished, session=True)
        elif handler is not None:
            self._bridge = LoopHandler(handler, follow, finished)
        self._core = _CoreServer(host, port, handler=self._bridge, **options)
        self._closing = False
        self._closed: asyncio.Future[None] = loop.create_future()
        self._serving_forever: asyncio.Future[None] | None = None
        self._unwatch: Callable[[], None] | None = None
        if self._bridge is not None:
            self._unwatch = _watch(loop, self._bridge)
        self._core.start()

    @property
    def server_address(self) -> tuple[Any, ...]:
        """``(host, port)`` actually bound."""
        address: tuple[Any, ...] = self._core.server_address
        return address

    def broadcast(self, message: str | bytes, exclude: Any = None) -> int:
        """Sends ``message`` to every connection of a session server but
        ``exclude`` (a connection or its ``id``), as
        :meth:`sockdemo.Server.broadcast`; returns how many took it."""
        return self._core.broadcast(message, exclude)

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
            # (the connections are served on it), and the bridge says when
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
        assert self._unwatch is not None
        self._unwatch()
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


def _watch(loop: asyncio.AbstractEventLoop, bridge: LoopHandler) -> Callable[[], None]:
    """Has ``loop`` call ``bridge.run`` whenever there is work; returns what
    stops it.

    The loop watches the bridge's descriptor itself where it can. Windows'
    Proactor loop cannot (it has no ``add_reader``, and there is no
    descriptor there anyway): a thread of the bridge's own watches instead
    and asks the loop for each call, at the cost of a thread hop per call.
    """
    fd = bridge.fileno()
    if fd >= 0:
        try:
            loop.add_reader(fd, bridge.run)
        except NotImplementedError:
            pass
        else:
            return functools.partial(_stop_reading, loop, fd)
    bridge.watch(functools.partial(loop.call_soon_threadsafe, bridge.run))
    # The thread stops by itself once the server has finished.
    return lambda: None


def _stop_reading(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    loop.remove_reader(fd)


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
    except BaseException as exc:
        # KeyboardInterrupt and SystemExit too: one client's handler never
        # stops the server, as with handlers on threads (a signal reaches
        # the server through the loop, not through a handler).
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
