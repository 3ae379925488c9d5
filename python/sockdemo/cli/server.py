"""``sockdemo server`` and the two server scripts: load the handler, choose
where it runs (handler threads or an event loop), start, serve, stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, Callable

from .._sockdemo import Server
from .output import configure_logging, fail, interrupt_on_sigterm, refuse, say, stopping


class HandlerError(Exception):
    """A ``--handler`` or ``--session`` that cannot be loaded; the message
    says why."""


def load_handler(spec: str, flag: str = "--handler") -> Callable[[str], Any]:
    """Imports ``module:function`` (dots allowed on both sides) as uvicorn
    loads an app: the current directory comes first on the import path."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        shape = "module:Class" if flag == "--session" else "module:function"
        raise HandlerError(f"{flag} {spec!r} must look like {shape}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"{flag} {spec!r}: cannot import {module_name!r}: {exc}") from None
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise HandlerError(f"{flag} {spec!r}: {module_name} has no {attribute!r}") from None
    if not callable(found):
        raise HandlerError(f"{flag} {spec!r}: {attribute} is not callable")
    handler: Callable[[str], Any] = found
    return handler


def load_session(spec: str) -> Any:
    """Imports ``module:Class`` (a :class:`sockdemo.Session` subclass) or
    ``module:function`` (an ``async def`` session)."""
    from ..session import Session

    found = load_handler(spec, "--session")
    if isinstance(found, type) and issubclass(found, Session):
        return found
    if inspect.iscoroutinefunction(found):
        return found
    raise HandlerError(
        f"--session {spec!r}: must be a sockdemo.Session subclass or an async def function"
    )


def load_callables(args: argparse.Namespace) -> None:
    """Loads ``--handler`` and ``--session`` into ``args``."""
    if args.handler and getattr(args, "session", None):
        raise HandlerError("--handler and --session cannot be used together")
    args.handler_function = load_handler(args.handler) if args.handler else None
    spec = getattr(args, "session", None)
    args.session_object = load_session(spec) if spec else None


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``Server`` and ``aio.start_server`` the flags give."""
    return {
        "max_clients": args.max_clients,
        "protocol": args.protocol,
        "reply_prefix": args.prefix,
        "idle_timeout": args.idle_timeout,
        "certfile": args.certfile,
        "keyfile": args.keyfile,
        "buffer_size": args.buffer_size,
        "max_message_size": args.max_message_size,
        "message_timeout": args.message_timeout,
        "write_timeout": args.write_timeout,
        "evict_idle_after": args.evict_idle_after,
        "max_handshakes": args.max_handshakes,
        "handshake_timeout": args.handshake_timeout,
        "max_buffered_bytes": args.max_buffered,
        "shutdown_timeout": args.shutdown_timeout,
        "proxy_protocol": args.proxy_protocol,
        "proxy_allow": args.proxy_allow.split(",") if args.proxy_allow else None,
        "reuse_port": args.reuse_port,
        "max_pending_bytes": args.max_pending,
    }


def open_server(args: argparse.Namespace) -> Server | None:
    configure_logging(getattr(args, "log_level", "info"))
    try:
        return Server(
            args.host,
            args.port,
            handler=args.handler_function,
            session=args.session_object,
            handler_threads=args.handler_threads,
            **server_options(args),
        )
    except (OSError, ValueError) as exc:
        refuse(exc, args)
    return None


@contextlib.contextmanager
def metrics_endpoint(args: argparse.Namespace, collect: Callable[[], str]) -> Iterator[None]:
    """Serves ``collect()`` at ``/metrics`` if ``--metrics-port`` asks for it."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        yield
        return
    from .. import metrics

    host = getattr(args, "metrics_host", None) or "127.0.0.1"
    try:
        httpd = metrics.serve(host, port, collect)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    bound_port = httpd.server_address[1]
    say(f"Metrics at http://{host}:{bound_port}/metrics")
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()


def listening(address: tuple[Any, ...]) -> None:
    host, port = address[:2]
    say(f"Server listening on {host}:{port}")


def run_server(args: argparse.Namespace) -> int:
    """Serves clients until Ctrl+C or SIGTERM (``server.v2.py``)."""
    return serve(args, serve_forever)


def serve_forever(server: Server) -> None:
    server.serve_forever()


def _event_loop(args: argparse.Namespace) -> str | None:
    """The event loop to run the handler on (``"asyncio"``, ``"uvloop"``), or
    ``None`` for handler threads. ``auto`` runs an ``async def`` handler on
    uvloop when it is installed, asyncio's loop otherwise."""
    choice: str = getattr(args, "loop", "auto")
    if isinstance(args.session_object, type):
        # A Session class runs on handler threads, whatever the loop.
        return None
    if choice != "auto":
        return choice
    coroutine = args.session_object or args.handler_function
    if not inspect.iscoroutinefunction(coroutine):
        return None
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _serve_on_loop(args: argparse.Namespace, kind: str) -> int:
    """Serves with ``sockdemo.aio``, the handler on an event loop of ``kind``."""
    from .. import aio

    if args.handler_threads is not None:
        return fail("--handler-threads has no meaning with --loop: handlers run on the loop")
    configure_logging(args.log_level)

    async def serve() -> None:
        try:
            server = await aio.start_server(
                args.handler_function,
                args.host,
                args.port,
                session=args.session_object,
                **server_options(args),
            )
        except (OSError, ValueError) as exc:
            raise _Refused(exc) from None
        # SIGTERM through the loop: a flag and a close, never an exception
        # raised into whatever handler happens to be running.
        terminated = _close_on_sigterm(server)
        async with server:
            listening(server.server_address)
            with metrics_endpoint(args, server.metrics):
                await server.serve_forever()
        if terminated():
            stopping()

    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            return fail("--loop uvloop: uvloop is not installed (pip install uvloop)")
        uvloop.install()
    try:
        asyncio.run(serve())
    except _Refused as refused:
        return refuse(refused.error, args)
    except KeyboardInterrupt:
        stopping()
    return 0


def _close_on_sigterm(server: Any) -> Callable[[], bool]:
    """Closes ``server`` on SIGTERM, from the running loop; returns whether
    that happened. (Where the loop cannot watch signals, SIGTERM keeps the
    process-wide handler.)"""
    loop = asyncio.get_running_loop()
    seen: list[bool] = []

    def close() -> None:
        seen.append(True)
        server.close()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, close)
    return lambda: bool(seen)


class _Refused(Exception):
    """The server could not start; ``error`` says why."""

    def __init__(self, error: OSError | ValueError) -> None:
        self.error = error


def run_basic_server(args: argparse.Namespace) -> int:
    """Serves one client one message, like the original ``server.py``."""
    if getattr(args, "workers", 1) != 1:
        return fail("--workers needs a server that serves until stopped (server.v2.py)")

    def once(server: Server) -> None:
        server.handle_request(max_messages=1)
        say("Connection closed.")

    return serve(args, once)


def serve(args: argparse.Namespace, serve: Callable[[Server], None]) -> int:
    # Signals are set up first and everything after is inside the `try`:
    # a Ctrl+C or SIGTERM that arrives right after the "listening" line is
    # printed is still a clean shutdown, never a traceback or a kill.
    interrupt_on_sigterm()
    try:
        load_callables(args)
    except HandlerError as exc:
        say(f"Error: {exc}")
        return 2
    loop = _event_loop(args)
    if loop is not None:
        if serve is not serve_forever:
            return fail("an async handler (or --loop) needs a server that serves until stopped")
        return _serve_on_loop(args, loop)
    try:
        server = open_server(args)
        if server is None:
            return 1
        with server:
            listening(server.server_address)
            with metrics_endpoint(args, server.metrics):
                serve(server)
    except KeyboardInterrupt:
        stopping()
    except OSError as exc:
        return fail(f"the server stopped: {exc}")
    return 0
