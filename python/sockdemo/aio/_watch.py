"""Readiness of a client's socket, on any asyncio loop.

A selector loop watches the socket itself (``add_reader``/``add_writer``).
Windows' Proactor loop cannot: it completes operations rather than
reporting readiness, and refuses both calls with ``NotImplementedError``.
There a thread of the client's own waits in ``select()`` and hands each
readiness to the loop through ``call_soon_threadsafe``; it then waits for
the loop to have run the callbacks before it looks again, so a socket that
stays readable is reported once per turn, as the loop itself would.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import threading
from typing import Callable

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

#: How long the watching thread waits, for the socket or for a loop that
#: stopped turning, before it looks whether the loop was closed (and then
#: leaves: a client never closed must not keep a thread for ever).
_LOOK_AGAIN = 0.5
#: How long closing waits for the watching thread to leave.
_LEAVE_WITHIN = 5.0


class Watch:
    """Calls back on the loop when the socket ``fd`` is readable or
    writable, while asked to; see the module's docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._thread: _WatchingThread | None = None

    @property
    def threaded(self) -> bool:
        """Does a thread watch, because the loop cannot?"""
        return self._thread is not None

    def on(self, event: int, callback: Callable[[], None]) -> None:
        """Calls ``callback`` on the loop whenever ``event`` (``READ`` or
        ``WRITE``) holds, until :meth:`off`."""
        if self._thread is None:
            add = self._loop.add_reader if event == READ else self._loop.add_writer
            try:
                add(self._fd, callback)
                return
            except NotImplementedError:
                self._thread = _WatchingThread(self._loop, self._fd)
        self._thread.set(event, callback)

    def off(self, event: int) -> None:
        """Stops calling back for ``event``."""
        if self._thread is not None:
            self._thread.set(event, None)
        elif not self._loop.is_closed():
            remove = self._loop.remove_reader if event == READ else self._loop.remove_writer
            remove(self._fd)

    def close(self) -> None:
        """Stops watching, before the socket closes; the thread, if any, has
        left when this returns. Unclosed, the thread leaves by itself once
        the loop is closed."""
        if self._thread is not None:
            self._thread.close()
            self._thread = None


class _WatchingThread:
    """The thread that watches for a loop that cannot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._closed = False
        # Wakes the thread from select() when what it watches changes.
        self._bell, self._ringer = socket.socketpair()
        self._bell.setblocking(False)
        self._ringer.setblocking(False)
        # Set once the loop has run the callbacks of the last readiness.
        self._turned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sockdemo-aio-watch", daemon=True)
        self._thread.start()

    def set(self, event: int, callback: Callable[[], None] | None) -> None:
        with self._lock:
            if callback is None:
                self._callbacks.pop(event, None)
            else:
                self._callbacks[event] = callback
        self._ring()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._callbacks.clear()
        self._turned.set()
        self._ring()
        if threading.current_thread() is not self._thread:
            self._thread.join(_LEAVE_WITHIN)

    def _ring(self) -> None:
        # Full (the thread will look anyway) or already closed: no matter.
        with contextlib.suppress(OSError):
            self._ringer.send(b"\0")

    def _run(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._bell, READ)
                self._watch(selector)
        finally:
            self._bell.close()
            self._ringer.close()

    def _watch(self, selector: selectors.BaseSelector) -> None:
        watched = 0
        while True:
            with self._lock:
                if self._closed:
                    return
                wanted = sum(self._callbacks)
            if wanted != watched:
                if watched:
                    selector.unregister(self._fd)
                if wanted:
                    selector.register(self._fd, wanted)
                watched = wanted
            if self._loop.is_closed():
                return
            ready = 0
            for key, events in selector.select(_LOOK_AGAIN):
                if key.fileobj is self._bell:
                    _drain(self._bell)
                else:
                    ready |= events & watched
            if not ready:
                continue
            self._turned.clear()
            try:
                self._loop.call_soon_threadsafe(self._fire, ready)
            except RuntimeError:
                return  # The loop is closed.
            while not self._turned.wait(_LOOK_AGAIN):
                if self._loop.is_closed():
                    return

    def _fire(self, ready: int) -> None:
        """On the loop: the callbacks of the events that hold and are still
        wanted."""
        try:
            for event in (READ, WRITE):
                if ready & event:
                    with self._lock:
                        callback = self._callbacks.get(event)
                    if callback is not None:
                        callback()
        finally:
            self._turned.set()


def _drain(bell: socket.socket) -> None:
    try:
        while bell.recv(512):
            pass
    except OSError:
        pass  # Empty (BlockingIOError) or closed.
