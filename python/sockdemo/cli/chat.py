"""``sockdemo chat``: an interactive client for session servers. It prints
what others say while you type, and ends cleanly on Ctrl+C, Ctrl+D, or when
the server goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from typing import Any

from .output import describe, fail, refuse, say, shown


def run_chat(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_chat(args))
    except KeyboardInterrupt:
        say("\nInterrupted by user.")
        return 0


async def _chat(args: argparse.Namespace) -> int:
    from .. import aio

    try:
        # The timeout bounds connecting only: a chat may stay quiet for hours.
        connecting = aio.connect(
            args.host,
            args.port,
            protocol=args.protocol,
            cafile=args.cafile,
            server_hostname=args.server_hostname,
        )
        client = await asyncio.wait_for(connecting, args.timeout)
    except asyncio.TimeoutError:
        return fail(f"Timed out connecting to {args.host}:{args.port}.")
    except (OSError, ValueError) as exc:
        return refuse(exc, args)
    say(f"Connected to server {args.host}:{args.port}")
    say("Type a message and press Enter to send it; Ctrl+D or Ctrl+C leaves.")
    loop = asyncio.get_running_loop()
    lines = _stdin_lines(loop)
    listener = asyncio.ensure_future(_listen(client))
    interrupted = _on_ctrl_c(loop)
    try:
        while True:
            line = asyncio.ensure_future(lines.get())
            waiting: set[asyncio.Future[Any]] = {line, listener, interrupted}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if interrupted in done:
                line.cancel()
                say("\nInterrupted by user.")
                return 0
            if listener in done:
                line.cancel()
                return listener.result()
            text = line.result()
            if text is None:
                say("Input stream closed.")
                return 0
            if text.strip():
                await client.send(text)
    except OSError as exc:
        return fail(describe(exc, args.host, args.port))
    finally:
        listener.cancel()
        say("Closing connection.")
        await client.close()


def _on_ctrl_c(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """Done at Ctrl+C, so that the chat ends in its own order: the line,
    then the goodbye. (Where the loop cannot watch signals, Ctrl+C raises
    ``KeyboardInterrupt`` as usual, and :func:`run_chat` says the same.)"""
    pressed: asyncio.Future[None] = loop.create_future()

    def press() -> None:
        if not pressed.done():
            pressed.set_result(None)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, press)
    return pressed


async def _listen(client: object) -> int:
    """Prints every message the server sends until it closes."""
    async for message in client:  # type: ignore[attr-defined]
        say(shown(message))
    say("Server closed the connection.")
    return 0


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines typed, without their newline; ``None`` at the end of input.
    Read on a thread of their own: a terminal cannot be watched by every
    event loop (not by Windows' one, for one)."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:
            pass  # The chat is over and its loop closed.

    # A daemon: it may be blocked reading when the chat ends.
    threading.Thread(target=read, name="sockdemo-chat-stdin", daemon=True).start()
    return lines
