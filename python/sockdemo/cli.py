"""The command-line programs: ``python -m sockdemo server|client|bench|cert``.

The four scripts of the original example (``server.py``, ``client.py``,
``server.v2.py``, ``client.v2.py``) are thin shims over the functions at the
bottom of this file; they differ from the subcommands only in their defaults.

Every program prints its output lines exactly as the original did, turns
network conditions and bad input into one ``Error: ...`` line and a non-zero
exit status, and treats Ctrl+C (and SIGTERM for servers) as a normal ending.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NoReturn

from . import _sockdemo
from ._sockdemo import (
    BYE_REPLY,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HOST,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    Client,
    Server,
)
from .errors import ProtocolError, ServerClosedError, TLSError

#: What ``client.py`` sends when given no message.
HELLO = "Hello from the client!"

Main = Callable[[argparse.Namespace], int]


def _say(line: str) -> None:
    """Prints a line at once: the output is often a pipe read line by line."""
    print(line, flush=True)


def _shown(text: str) -> str:
    """Text safe to print: undecodable bytes (kept as surrogates) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return port


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return seconds


def _describe(exc: OSError, host: str, port: int) -> str:
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


def _stopping() -> None:
    """Says the server is stopping; on a terminal, below the echoed ^C."""
    _say(("\n" if sys.stdout.isatty() else "") + "Server shutting down.")


def _fail(message: str) -> int:
    _say(f"Error: {message}")
    return 1


def _refuse(exc: OSError | ValueError, args: argparse.Namespace) -> int:
    """One `Error:` line for a network failure or a bad argument; exit status 1."""
    if isinstance(exc, OSError):
        return _fail(_describe(exc, args.host, args.port))
    return _fail(str(exc))


def _interrupt_on_sigterm() -> None:
    """Makes SIGTERM end a server the way Ctrl+C does: drain, then exit 0."""

    def handler(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _configure_logging(level: str) -> None:
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


# -- arguments -----------------------------------------------------------------


def _add_address(parser: argparse.ArgumentParser, server: bool = False) -> None:
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to {'listen on' if server else 'connect to'} (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}"
        + ("; 0 picks a free port, shown on the first line)" if server else ")"),
    )


def _add_protocol(parser: argparse.ArgumentParser, server: bool = False) -> None:
    parser.add_argument(
        "--protocol",
        choices=("raw", "framed"),
        default="raw",
        help=(
            "raw: one read of up to --buffer-size bytes is one message (the original); "
            if server
            else "raw: one read is one message, 1024 bytes at most (the original); "
        )
        + "framed: 4-byte big-endian length + payload, any size (default raw)",
    )


def _add_server_arguments(parser: argparse.ArgumentParser, max_clients: int) -> None:
    _add_address(parser, server=True)
    parser.add_argument(
        "--max-clients",
        type=_positive,
        default=max_clients,
        help=f"clients served at once; later ones wait their turn (default {max_clients})",
    )
    _add_protocol(parser, server=True)
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"text before every echoed message (default {DEFAULT_PREFIX!r})",
    )
    parser.add_argument(
        "--buffer-size",
        type=_positive,
        default=DEFAULT_BUFFER_SIZE,
        metavar="BYTES",
        help=f"size of one raw message (default {DEFAULT_BUFFER_SIZE})",
    )
    parser.add_argument(
        "--max-message-size",
        type=_positive,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help=f"largest framed message accepted (default {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="close connections that send nothing for this long (default: never)",
    )
    parser.add_argument(
        "--max-buffered",
        type=_positive,
        default=64 << 20,
        metavar="BYTES",
        help="bytes of half-received messages all connections together may hold; past it "
        "they stop reading until memory frees (default 67108864, 64 MiB)",
    )
    parser.add_argument(
        "--evict-idle-after",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="when every slot is taken and a client waits, close the connection idle the "
        "longest once it has been idle this long (default 10; 0 at once)",
    )
    parser.add_argument(
        "--message-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a message (or TLS handshake) once started must arrive within this (default 30)",
    )
    parser.add_argument(
        "--write-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a reply must be written within this; a client that never reads is "
        "dropped (default 30)",
    )
    parser.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        help="reply with FUNCTION(message) from MODULE (imported from the current "
        "directory first) instead of the echo; it returns str, bytes, or None for the echo",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="run the handler on this event loop (sockdemo.aio); auto: an async def "
        "handler on uvloop if installed, else asyncio; a plain one on handler threads",
    )
    parser.add_argument(
        "--handler-threads",
        type=_positive,
        metavar="N",
        help="most threads running a Python handler at once (default min(32, cpus + 4))",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="on Ctrl+C or SIGTERM, wait this long for handlers still running; "
        "a second Ctrl+C stops at once (default 5)",
    )
    parser.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy-v2) first on "
        "every connection; the client it names is what logs and handlers see",
    )
    parser.add_argument(
        "--proxy-allow",
        metavar="CIDR,...",
        help="believe PROXY headers only from these networks or addresses "
        "(default 127.0.0.0/8,::1; needs --proxy-protocol)",
    )
    parser.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="N",
        help="run N worker processes sharing the port (SO_REUSEPORT) under a supervisor "
        "that restarts them; 0: one per CPU; SIGHUP replaces them one at a time (default 1)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve the counters at http://HOST:PORT/metrics in Prometheus' text format "
        "(with --workers, one endpoint adds up every worker's)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other sockdemo processes (SO_REUSEPORT); "
        "--workers does this for you",
    )
    parser.add_argument("--certfile", metavar="PEM", help="serve TLS with this certificate chain")
    parser.add_argument(
        "--keyfile", metavar="PEM", help="the certificate's private key (default: in --certfile)"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="info shows connections (and messages when --max-clients is 1); "
        "debug shows every message (default info)",
    )


def _add_client_tls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cafile", metavar="PEM", help="use TLS, trusting the certificates in this file"
    )
    parser.add_argument(
        "--server-hostname",
        metavar="NAME",
        help="name the server's certificate must carry (default: --host; needs --cafile)",
    )


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    _add_address(parser)
    _add_protocol(parser)
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="give up on connecting or on a reply after this long (default: wait)",
    )
    _add_client_tls(parser)


# -- servers -------------------------------------------------------------------


class HandlerError(Exception):
    """A ``--handler`` that cannot be loaded; the message says why."""


def load_handler(spec: str) -> Callable[[str], Any]:
    """Imports ``module:function`` (dots allowed on both sides) as uvicorn
    loads an app: the current directory comes first on the import path."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise HandlerError(f"--handler {spec!r} must look like module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"--handler {spec!r}: cannot import {module_name!r}: {exc}") from None
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise HandlerError(f"--handler {spec!r}: {module_name} has no {attribute!r}") from None
    if not callable(found):
        raise HandlerError(f"--handler {spec!r}: {attribute} is not callable")
    handler: Callable[[str], Any] = found
    return handler


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
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
        "max_buffered_bytes": args.max_buffered,
        "shutdown_timeout": args.shutdown_timeout,
        "proxy_protocol": args.proxy_protocol,
        "proxy_allow": args.proxy_allow.split(",") if args.proxy_allow else None,
        "reuse_port": args.reuse_port,
    }


def _open_server(args: argparse.Namespace) -> Server | None:
    _configure_logging(getattr(args, "log_level", "info"))
    try:
        return Server(
            args.host,
            args.port,
            handler=args.handler_function,
            handler_threads=args.handler_threads,
            **_server_options(args),
        )
    except (OSError, ValueError) as exc:
        _refuse(exc, args)
    return None


@contextlib.contextmanager
def _metrics_endpoint(args: argparse.Namespace, collect: Callable[[], str]) -> Iterator[None]:
    """Serves ``collect()`` at ``/metrics`` if ``--metrics-port`` asks for it."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        yield
        return
    from . import metrics

    host = getattr(args, "metrics_host", None) or args.host
    try:
        httpd = metrics.serve(host, port, collect)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    bound_port = httpd.server_address[1]
    _say(f"Metrics at http://{host}:{bound_port}/metrics")
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()


def _listening(address: tuple[Any, ...]) -> None:
    host, port = address[:2]
    _say(f"Server listening on {host}:{port}")


def run_server(args: argparse.Namespace) -> int:
    """Serves clients until Ctrl+C or SIGTERM (``server.v2.py``); with
    ``--workers``, supervises worker processes that do."""
    if getattr(args, "workers", 1) != 1:
        return _supervise(args)
    return _serve(args, _serve_forever)


def _supervise(args: argparse.Namespace) -> int:
    from . import supervisor

    try:
        load_handler(args.handler) if args.handler else None
    except HandlerError as exc:
        _say(f"Error: {exc}")
        return 2
    count = args.workers or os.cpu_count() or 1
    try:
        reserved = supervisor.reserve_port(args.host, args.port)
    except OSError as exc:
        return _refuse(exc, args)
    with reserved:
        host, port = reserved.getsockname()[:2]
        options = {k: v for k, v in vars(args).items() if k not in ("main", "handler_function")}
        options.update(port=port, reuse_port=True, workers=1)
        if args.metrics_port is not None:
            # Each worker's own endpoint, private; the supervisor's adds them up.
            options.update(metrics_port=0, metrics_host="127.0.0.1")

        boss = supervisor.Supervisor(options, count, args.shutdown_timeout, _say)
        with contextlib.ExitStack() as endpoint:

            def ready() -> None:
                _listening((host, port))
                _say(f"Started {count} workers.")
                endpoint.enter_context(_metrics_endpoint(args, boss.metrics))

            try:
                return boss.run(ready)
            except OSError as exc:
                return _fail(str(exc))


def serve_worker() -> int:
    """A ``--workers`` worker: the server with the supervisor's options."""
    from .supervisor import worker_options

    options = worker_options()
    if options is None:
        return _fail("not started by a sockdemo supervisor")
    return _serve(argparse.Namespace(**options), _serve_forever)


def _serve_forever(server: Server) -> None:
    server.serve_forever()


def _event_loop(args: argparse.Namespace) -> str | None:
    """The event loop to run the handler on (``"asyncio"``, ``"uvloop"``), or
    ``None`` for handler threads. ``auto`` runs an ``async def`` handler on
    uvloop when it is installed, asyncio's loop otherwise."""
    choice: str = getattr(args, "loop", "auto")
    if choice != "auto":
        return choice
    if not inspect.iscoroutinefunction(args.handler_function):
        return None
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _serve_on_loop(args: argparse.Namespace, kind: str) -> int:
    """Serves with ``sockdemo.aio``, the handler on an event loop of ``kind``."""
    from . import aio

    if args.handler_threads is not None:
        return _fail("--handler-threads has no meaning with --loop: handlers run on the loop")
    _configure_logging(args.log_level)

    async def serve() -> None:
        try:
            server = await aio.start_server(
                args.handler_function, args.host, args.port, **_server_options(args)
            )
        except (OSError, ValueError) as exc:
            raise _Refused(exc) from None
        async with server:
            _listening(server.server_address)
            with _metrics_endpoint(args, server.metrics):
                await server.serve_forever()

    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            return _fail("--loop uvloop: uvloop is not installed (pip install uvloop)")
        uvloop.install()
    try:
        asyncio.run(serve())
    except _Refused as refused:
        return _refuse(refused.error, args)
    except KeyboardInterrupt:
        _stopping()
    return 0


class _Refused(Exception):
    """The server could not start; ``error`` says why."""

    def __init__(self, error: OSError | ValueError) -> None:
        self.error = error


def run_basic_server(args: argparse.Namespace) -> int:
    """Serves one client one message, like the original ``server.py``."""
    if getattr(args, "workers", 1) != 1:
        return _fail("--workers needs a server that serves until stopped (server.v2.py)")

    def once(server: Server) -> None:
        server.handle_request(max_messages=1)
        _say("Connection closed.")

    return _serve(args, once)


def _serve(args: argparse.Namespace, serve: Callable[[Server], None]) -> int:
    # Signals are set up first and everything after is inside the `try`:
    # a Ctrl+C or SIGTERM that arrives right after the "listening" line is
    # printed is still a clean shutdown, never a traceback or a kill.
    _interrupt_on_sigterm()
    try:
        args.handler_function = load_handler(args.handler) if args.handler else None
    except HandlerError as exc:
        _say(f"Error: {exc}")
        return 2
    loop = _event_loop(args)
    if loop is not None:
        if serve is not _serve_forever:
            return _fail("an async handler (or --loop) needs a server that serves until stopped")
        return _serve_on_loop(args, loop)
    try:
        server = _open_server(args)
        if server is None:
            return 1
        with server:
            _listening(server.server_address)
            with _metrics_endpoint(args, server.metrics):
                serve(server)
    except KeyboardInterrupt:
        _stopping()
    except OSError as exc:
        return _fail(f"the server stopped: {exc}")
    return 0


# -- clients -------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Client:
    return Client(
        args.host,
        args.port,
        protocol=args.protocol,
        timeout=args.timeout,
        cafile=args.cafile,
        server_hostname=args.server_hostname,
    )


def run_client(args: argparse.Namespace) -> int:
    """Sends the messages given, or holds an interactive session if none."""
    try:
        client = _connect(args)
    except (OSError, ValueError) as exc:
        return _refuse(exc, args)
    except KeyboardInterrupt:
        _say("Interrupted by user.")
        return 0
    try:
        _say(f"Connected to server {args.host}:{args.port}")
        if args.messages:
            return _send_all(client, args.messages)
        return _converse(client)
    except KeyboardInterrupt:  # between prompts: still a normal ending
        _say("Interrupted by user.")
        return 0
    except OSError as exc:
        return _fail(_describe(exc, args.host, args.port))
    finally:
        _say("Closing connection.")
        client.close()


def _send_all(client: Client, messages: Sequence[str]) -> int:
    try:
        for message in messages:
            _say(f"Sending: {_shown(message)}")
            reply = client.request(message)
            _say(f"Received from server: {_shown(reply)}")
            if reply == BYE_REPLY:
                break
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def _converse(client: Client) -> int:
    """The interactive loop of ``client.v2.py``."""
    while True:
        try:
            message = input("> ")
        except EOFError:
            _say("\nInput stream closed.")
            return 0
        except KeyboardInterrupt:
            _say("\nInterrupted by user.")
            return 0
        command = message.strip().lower()
        if command in ("quit", "exit"):
            return 0
        if not command:
            # The original sent an empty message and then waited forever for
            # a reply that an empty send never asks for.
            continue
        try:
            reply = client.request(message)
        except KeyboardInterrupt:
            _say("\nInterrupted by user.")
            return 0
        except ServerClosedError:
            # The server going away (an idle timeout, a restart) ends an
            # interactive session normally, as in the original.
            _say("Server closed the connection.")
            return 0
        except ValueError as exc:  # too large: say so, keep the session
            _say(f"Error: {exc}")
            continue
        _say(f"Received from server: {_shown(reply)}")
        if command == "bye":
            return 0


# -- load generator --------------------------------------------------------------


def _progress(elapsed: float, requests: int, errors: int) -> None:
    rate = requests / elapsed if elapsed else 0.0
    print(
        f"  {elapsed:5.1f}s  {requests:>12,} requests  {rate:>12,.0f} req/s  {errors:,} errors",
        file=sys.stderr,
        flush=True,
    )


def _summary(report: dict[str, Any], args: argparse.Namespace) -> str:
    latency = report["latency_ms"]
    percentiles = "  ".join(
        f"{name} {latency[name]:.3f} ms" for name in ("p50", "p90", "p99", "p99.9", "max")
    )
    return "\n".join(
        [
            f"{report['connections']} connections x {report['size']} B {report['protocol']} "
            f"to {args.host}:{args.port} for {report['elapsed']:.1f} s",
            f"requests  {report['requests']:,} ({report['requests_per_second']:,.0f} req/s, "
            f"{report['mib_per_second']:,.1f} MiB/s)",
            f"errors    {report['errors']:,}"
            + (
                f"  ({report['unanswered']:,} requests unanswered at the end)"
                if report["unanswered"]
                else ""
            ),
            f"latency   {percentiles}",
        ]
    )


def run_bench(args: argparse.Namespace) -> int:
    """Closed-loop load against a running server; prints a summary or JSON."""
    if not args.json:
        print(
            f"Running {args.duration:g} s, {args.connections} connections, "
            f"{args.size} B {args.protocol} messages...",
            file=sys.stderr,
            flush=True,
        )
    try:
        report = _sockdemo.bench(
            args.host,
            args.port,
            connections=args.connections,
            size=args.size,
            duration=args.duration,
            protocol=args.protocol,
            prefix=args.prefix,
            cafile=args.cafile,
            server_hostname=args.server_hostname,
            progress=None if args.json else _progress,
        )
    except (OSError, ValueError) as exc:
        return _refuse(exc, args)
    except KeyboardInterrupt:
        _say("Interrupted by user.")
        return 130
    _say(json.dumps(report, indent=2) if args.json else _summary(report, args))
    # A run in which nothing was answered failed, even with no error counted.
    return 1 if report["errors"] or not report["requests"] else 0


# -- certificates --------------------------------------------------------------


def run_cert(args: argparse.Namespace) -> int:
    """Writes a development certificate for localhost and 127.0.0.1."""
    try:
        cert, key = _sockdemo.generate_self_signed(args.dir)
    except OSError as exc:
        return _fail(_describe(exc, "", 0))
    _say(f"Wrote {cert} and {key} (self-signed for localhost, 127.0.0.1 and ::1).")
    _say(f"Serve:   python -m sockdemo server --certfile {cert} --keyfile {key}")
    _say(f"Connect: python -m sockdemo client --cafile {cert}")
    return 0


# -- entry points ----------------------------------------------------------------


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    main: Main = args.main
    try:
        return main(args)
    except BrokenPipeError:
        # Whoever read our output has gone (`| head`, a closed terminal).
        # Nothing more can be said; point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _server_parser(
    prog: str, description: str, max_clients: int, main: Main
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    _add_server_arguments(parser, max_clients)
    parser.set_defaults(main=main)
    return parser


def _client_parser(prog: str, description: str, messages: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    _add_client_arguments(parser)
    parser.add_argument(
        "messages",
        nargs="*",
        default=list(messages),
        metavar="MESSAGE",
        help="send these and print the replies"
        + (f" (default {messages[0]!r})" if messages else "; interactive when none"),
    )
    parser.set_defaults(main=run_client)
    return parser


SERVER_HELP = (
    "Echo server: answers each message with the prefix and the message; "
    "'bye' ends a session. Ctrl+C stops it."
)
CLIENT_HELP = (
    "Client: sends each MESSAGE and prints the reply, or reads lines at a '> ' prompt "
    "(quit/exit leave, bye says goodbye to the server, Ctrl+D or Ctrl+C end)."
)


def _program_name() -> str:
    """``sockdemo`` when run as the installed command, else ``python -m sockdemo``."""
    if os.path.basename(sys.argv[0]) == "sockdemo":
        return "sockdemo"
    return "python -m sockdemo"


def main(argv: Sequence[str] | None = None) -> int:
    """``sockdemo`` and ``python -m sockdemo``."""
    parser = argparse.ArgumentParser(
        prog=_program_name(),
        description="The classic socket echo example on a Rust core.",
    )
    parser.add_argument("--version", action="version", version=f"sockdemo {_sockdemo.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server = commands.add_parser("server", help="run the echo server", description=SERVER_HELP)
    _add_server_arguments(server, max_clients=100)
    server.set_defaults(main=run_server)
    client = commands.add_parser("client", help="talk to a server", description=CLIENT_HELP)
    _add_client_arguments(client)
    client.add_argument(
        "messages", nargs="*", metavar="MESSAGE", help="send these; interactive when none"
    )
    client.set_defaults(main=run_client)
    bench = commands.add_parser(
        "bench",
        help="measure a server with a closed-loop load",
        description="Opens CONNECTIONS connections; each sends a SIZE-byte message, waits "
        "for the reply, checks it byte for byte, and repeats for DURATION seconds. Prints "
        "progress each second, then requests/s, MiB/s, latency percentiles and errors. "
        "Exits 1 if any reply was wrong or missing, or none came.",
    )
    _add_address(bench)
    _add_protocol(bench)
    bench.add_argument(
        "--connections",
        type=_positive,
        default=10,
        metavar="N",
        help="connections open at once, each with one request in flight (default 10)",
    )
    bench.add_argument(
        "--size",
        type=_positive,
        default=DEFAULT_BUFFER_SIZE,
        metavar="BYTES",
        help="message size; in raw mode a message larger than the server's read size is a "
        f"burst it answers in pieces (default {DEFAULT_BUFFER_SIZE})",
    )
    bench.add_argument(
        "--duration",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to keep the load on (default 10)",
    )
    bench.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"the reply prefix the server uses (default {DEFAULT_PREFIX!r})",
    )
    _add_client_tls(bench)
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(main=run_bench)
    cert = commands.add_parser(
        "cert",
        help="write a self-signed development certificate",
        description="Writes DIR/cert.pem and DIR/key.pem, self-signed for localhost, "
        "127.0.0.1 and ::1. Use cert.pem as the server's --certfile and the client's --cafile.",
    )
    cert.add_argument("dir", metavar="DIR", help="where to write the files (created if missing)")
    cert.set_defaults(main=run_cert)
    return _run(parser, argv)


def server_script(argv: Sequence[str] | None = None) -> int:
    """``server.v2.py``: one client at a time by default, until Ctrl+C."""
    parser = _server_parser(
        "server.v2.py", SERVER_HELP + " Serves one client at a time by default.", 1, run_server
    )
    return _run(parser, argv)


def basic_server_script(argv: Sequence[str] | None = None) -> int:
    """``server.py``: one client, one message, then exit."""
    parser = _server_parser(
        "server.py",
        "Waits for one client, answers its first message, closes, exits.",
        1,
        run_basic_server,
    )
    return _run(parser, argv)


def client_script(argv: Sequence[str] | None = None) -> int:
    """``client.v2.py``: interactive unless messages are given."""
    return _run(_client_parser("client.v2.py", CLIENT_HELP, ()), argv)


def basic_client_script(argv: Sequence[str] | None = None) -> int:
    """``client.py``: sends one greeting and prints the reply."""
    parser = _client_parser(
        "client.py", "Sends a greeting (or the MESSAGEs given) and prints the reply.", (HELLO,)
    )
    return _run(parser, argv)
