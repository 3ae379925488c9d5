"""What every program prints, and how it treats signals.

Every program prints its output lines exactly as the original did, turns
network conditions and bad input into one ``Error: ...`` line and a
non-zero exit status, and treats Ctrl+C (and SIGTERM for servers) as a
normal ending.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
from typing import NoReturn

from ..errors import ProtocolError, TLSError


def say(line: str) -> None:
    """Prints a line at once: the output is often a pipe read line by line."""
    print(line, flush=True)


def shown(text: str) -> str:
    """Text safe to print: undecodable bytes (kept as surrogates) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def describe(exc: OSError, host: str, port: int) -> str:
    """One sentence for a network failure, in the original's words where it had them."""
    if isinstance(exc, socket.gaierror):
        text = str(exc.strerror or exc)
        return text[:1].upper() + text[1:] + "."
    if isinstance(exc, ConnectionRefusedError):
        return f"Connection refused. Is the server running on {host}:{port}?"
    if isinstance(exc, TimeoutError):
        return f"Timed out talking to {host}:{port}."
    if isinstance(exc, TLSError):
        return f"TLS with {host}:{port} failed: {exc}"
    if isinstance(exc, ProtocolError):
        return f"{exc.strerror or exc}."
    if isinstance(exc, ConnectionError):
        return f"Connection to {host}:{port} lost: {exc.strerror or exc}."
    if exc.errno == errno.EADDRINUSE:
        return f"Address {host}:{port} is already in use. Is another server running on it?"
    if exc.errno == errno.EACCES:
        return f"Permission denied binding {host}:{port} (ports below 1024 need privileges)."
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc.strerror or exc)


def stopping() -> None:
    """Says the server is stopping; on a terminal, below the echoed ^C."""
    say(("\n" if sys.stdout.isatty() else "") + "Server shutting down.")


def fail(message: str) -> int:
    say(f"Error: {message}")
    return 1


def refuse(exc: OSError | ValueError, args: argparse.Namespace) -> int:
    """One `Error:` line for a network failure or a bad argument; exit status 1."""
    if isinstance(exc, OSError):
        return fail(describe(exc, args.host, args.port))
    return fail(str(exc))


def interrupt_on_sigterm() -> None:
    """Makes SIGTERM end a server the way Ctrl+C does: drain, then exit 0."""

    def handler(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def configure_logging(level: str) -> None:
    """Shows sockdemo's log records as plain lines on stdout, like the original's prints."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("sockdemo")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    # A server whose stdout has gone keeps serving; logging must not print a
    # traceback to stderr for every line it can no longer write.
    logging.raiseExceptions = False
