"""``sockdemo`` / ``python -m sockdemo``, and the four scripts of the original
example, which differ from the subcommands only in their defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Callable

from .. import _sockdemo
from .._sockdemo import DEFAULT_BUFFER_SIZE, DEFAULT_MAX_CLIENTS, DEFAULT_PREFIX
from . import server, workers
from .chat import run_chat
from .options import (
    add_address,
    add_client_arguments,
    add_client_tls,
    add_protocol,
    add_server_arguments,
    positive_arg,
    seconds_arg,
)
from .tools import HELLO, run_bench, run_cert, run_client


def run_server(args: argparse.Namespace) -> int:
    """Serves until stopped; with ``--workers``, supervises worker processes
    that do."""
    if getattr(args, "workers", 1) != 1:
        return workers.supervise(args)
    return server.run_server(args)


Main = Callable[[argparse.Namespace], int]


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
    add_server_arguments(parser, max_clients)
    parser.set_defaults(main=main)
    return parser


def _client_parser(prog: str, description: str, messages: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_client_arguments(parser)
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
    serve = commands.add_parser("server", help="run the echo server", description=SERVER_HELP)
    add_server_arguments(serve, max_clients=DEFAULT_MAX_CLIENTS)
    serve.set_defaults(main=run_server)
    client = commands.add_parser("client", help="talk to a server", description=CLIENT_HELP)
    add_client_arguments(client)
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
    add_address(bench)
    add_protocol(bench)
    bench.add_argument(
        "--connections",
        type=positive_arg,
        default=10,
        metavar="N",
        help="connections open at once, each with one request in flight (default 10)",
    )
    bench.add_argument(
        "--size",
        type=positive_arg,
        default=DEFAULT_BUFFER_SIZE,
        metavar="BYTES",
        help="message size; in raw mode a message larger than the server's read size is a "
        f"burst it answers in pieces (default {DEFAULT_BUFFER_SIZE})",
    )
    bench.add_argument(
        "--duration",
        type=seconds_arg,
        default=10.0,
        metavar="SECONDS",
        help="how long to keep the load on (default 10)",
    )
    bench.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"the reply prefix the server uses (default {DEFAULT_PREFIX!r})",
    )
    add_client_tls(bench)
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(main=run_bench)
    chat = commands.add_parser(
        "chat",
        help="talk to a session server interactively",
        description="Connects to a session server (a chat, say) and sends each line you "
        "type as a message, printing every message the server sends meanwhile. Ctrl+D or "
        "Ctrl+C leaves; the chat also ends when the server closes the connection.",
    )
    add_address(chat)
    chat.add_argument(
        "--protocol",
        choices=("raw", "framed"),
        default="framed",
        help="framed: 4-byte length + payload (default, as the chat examples serve); "
        "raw: each read is a message",
    )
    chat.add_argument(
        "--timeout",
        type=seconds_arg,
        metavar="SECONDS",
        help="give up on connecting after this long (default: wait)",
    )
    add_client_tls(chat)
    chat.set_defaults(main=run_chat)
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
        server.run_basic_server,
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
