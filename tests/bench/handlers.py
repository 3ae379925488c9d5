"""The handlers the benchmark runs, under sockdemo and under uvloop alike.

``echo`` is the trivial handler: the reply the echo server gives, computed in
Python; ``async_echo`` is the same as an ``async def``, for ``sockdemo.aio``.
``busy`` does about 10 µs of pure-Python work first (a loop the interpreter
cannot skip), the cost of a small real handler; ``busy100`` ten times that,
for the worker-process benchmark.
"""

from __future__ import annotations

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
