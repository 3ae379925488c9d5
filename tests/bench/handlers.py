"""The handlers the benchmark runs, under sockdemo and under uvloop alike.

``echo`` is the trivial handler: the reply the echo server gives, computed in
Python; ``async_echo`` is the same as an ``async def``, for ``sockdemo.aio``.
``busy`` does about 10 µs of pure-Python work first (a loop the interpreter
cannot skip), the cost of a small real handler; ``busy100`` ten times that,
for the worker-process benchmark. ``Relay`` and ``relay`` are the fan-out
benchmark's sessions: every message goes to every other connection.
"""

from __future__ import annotations

import sockdemo
import sockdemo.aio

PREFIX = "Server received: "


def echo(message: str) -> str:
    return PREFIX + message


async def async_echo(message: str) -> str:
    return PREFIX + message


def busy(message: str) -> str:
    total = 0
    for i in range(BUSY_LOOPS):
        total += i * i
    return PREFIX + message if total >= 0 else message


def busy100(message: str) -> str:
    """About 100 µs of Python: ten times ``busy``."""
    total = 0
    for i in range(BUSY_LOOPS * 10):
        total += i * i
    return PREFIX + message if total >= 0 else message


#: Iterations that take about 10 µs on this machine's CPython 3.11.
BUSY_LOOPS = 310


class EchoSession(sockdemo.Session):
    """``echo`` as a session: the reply through ``received``'s return value."""

    def received(self, message: str) -> str:
        return PREFIX + message


class Relay(sockdemo.Session):
    """The fan-out relay as a session: one Python call per message, the
    fan-out done by the server."""

    def received(self, message: str) -> None:
        self.server.broadcast(message, exclude=self)


async def relay(conn: sockdemo.aio.Connection) -> None:
    """The same as an ``async def`` session."""
    async for message in conn:
        conn.server.broadcast(message, exclude=conn)
