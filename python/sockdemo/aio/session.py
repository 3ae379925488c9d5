"""Async sessions: ``start_server(session=chat)`` runs ``async def
chat(conn)`` once per connection, on the loop, with a :class:`Connection`.

The connection's messages reach the coroutine through ``async for``. While
it has not taken them all, the connection reads nothing more, so a session
that falls behind pushes back on its client. What it sends goes through the
same outbox as every reply, in order; ``await conn.send()`` waits while too
much is queued, as :meth:`asyncio.StreamWriter.drain` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from .._sockdemo import Connection as _CoreConnection
    from .._sockdemo import PendingJob


class SessionServer(Protocol):
    """What a session sees of its :class:`sockdemo.aio.Server`."""

    @property
    def server_address(self) -> tuple[Any, ...]: ...

    def broadcast(self, message: str | bytes, exclude: Any = None) -> int: ...


__all__ = ["AsyncSession", "Connection"]

AsyncSession = Callable[["Connection"], Awaitable[None]]
"""An async session: ``async def session(conn: Connection) -> None``."""

#: Queued bytes past which ``await send()`` waits for the client to read.
HIGH_WATER = 64 * 1024

_log = logging.getLogger("sockdemo.handler")


class Connection:
    """One connection of an async session server.

    ``async for message in conn`` yields each message (``str``) until the
    client closes; ``await conn.send(m)`` sends; ``conn.close()`` closes.
    ``conn.peer`` is the client's ``(host, port)``, ``conn.id`` the
    connection's number, ``conn.server`` the :class:`sockdemo.aio.Server`.
    """

    def __init__(self, core: _CoreConnection, server: SessionServer) -> None:
        self._core = core
        self.id: int = core.id
        self.peer: tuple[Any, ...] = core.peer
        self.server = server
        self._inbox: deque[str] = deque()
        self._job: PendingJob | None = None
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> str:
        while not self._inbox:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if not self._inbox:
            self._taken()
        return message

    async def send(self, message: str | bytes) -> bool:
        """Sends ``message`` after everything sent before; waits while more
        than ``HIGH_WATER`` bytes are queued for this client. Returns
        ``False`` once the connection is closing or gone."""
        if not self._core.send(message):
            return False
        pause = 0.001
        while self._core.pending > HIGH_WATER:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True

    def close(self) -> None:
        """Closes the connection once what was sent before is out."""
        self._core.close()

    def __repr__(self) -> str:
        return f"<sockdemo.aio.Connection {self.id} from {self.peer}>"

    # -- what the server's bridge calls, on the loop ---------------------

    def _feed(self, messages: list[str], job: PendingJob) -> None:
        """The client sent ``messages``; ``job`` is settled once they are
        all taken, and the connection reads on."""
        self._inbox.extend(messages)
        self._job = job
        self._wake()

    def _end(self) -> None:
        """The connection has closed: ``async for`` ends once the messages
        already here are taken."""
        self._ended = True
        self._taken()
        self._wake()

    def _taken(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.done()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def opener(
    session: AsyncSession,
    server: Callable[[], SessionServer | None],
    tasks: set[asyncio.Task[None]],
    loop: asyncio.AbstractEventLoop,
) -> Callable[[_CoreConnection], Connection]:
    """What the bridge calls for each new connection: starts ``session`` in
    a Task (kept in ``tasks``), whose end closes the connection."""

    def open_session(core: _CoreConnection) -> Connection:
        conn = Connection(core, server())  # type: ignore[arg-type]
        task = loop.create_task(_run(session, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return conn

    return open_session


async def _run(session: AsyncSession, conn: Connection) -> None:
    try:
        await session(conn)
    except asyncio.CancelledError:
        raise
    except BaseException:
        # KeyboardInterrupt and SystemExit too: one connection's session
        # never stops the server (a signal reaches the server, not here).
        _log.exception("Session failed for %s", conn.peer)
    finally:
        conn.close()
