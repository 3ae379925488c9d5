"""The command-line options every program shares, each default written once
(in the Rust core, read here through ``sockdemo._sockdemo``).
"""

from __future__ import annotations

import argparse

from .._sockdemo import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_EVICT_IDLE_AFTER,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
)


def port_arg(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return port


def positive_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def count_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value!r}")
    return number


def seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return seconds


def add_address(parser: argparse.ArgumentParser, server: bool = False) -> None:
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to {'listen on' if server else 'connect to'} (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=port_arg,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}"
        + ("; 0 picks a free port, shown on the first line)" if server else ")"),
    )


def add_protocol(parser: argparse.ArgumentParser, server: bool = False) -> None:
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


def add_server_arguments(parser: argparse.ArgumentParser, max_clients: int) -> None:
    add_address(parser, server=True)
    parser.add_argument(
        "--max-clients",
        type=positive_arg,
        default=max_clients,
        help=f"clients served at once; later ones wait their turn (default {max_clients})",
    )
    parser.add_argument(
        "--max-handshakes",
        type=positive_arg,
        default=DEFAULT_MAX_HANDSHAKES,
        metavar="N",
        help="connections that may be opening at once (PROXY header, TLS handshake, first "
        "message) without a slot; past it, the one that has made the least progress is "
        f"closed for a new client (default {DEFAULT_MAX_HANDSHAKES}, and at least --max-clients)",
    )
    add_protocol(parser, server=True)
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"text before every echoed message (default {DEFAULT_PREFIX!r})",
    )
    parser.add_argument(
        "--buffer-size",
        type=positive_arg,
        default=DEFAULT_BUFFER_SIZE,
        metavar="BYTES",
        help=f"size of one raw message (default {DEFAULT_BUFFER_SIZE})",
    )
    parser.add_argument(
        "--max-message-size",
        type=positive_arg,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help=f"largest framed message accepted (default {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=seconds_arg,
        metavar="SECONDS",
        help="close connections that send nothing for this long (default: never)",
    )
    parser.add_argument(
        "--max-buffered",
        type=positive_arg,
        default=DEFAULT_MAX_BUFFERED_BYTES,
        metavar="BYTES",
        help="bytes of half-received messages all connections together may hold; past it "
        f"they stop reading until memory frees (default {DEFAULT_MAX_BUFFERED_BYTES}, "
        f"{DEFAULT_MAX_BUFFERED_BYTES >> 20} MiB)",
    )
    parser.add_argument(
        "--evict-idle-after",
        type=seconds_arg,
        default=DEFAULT_EVICT_IDLE_AFTER,
        metavar="SECONDS",
        help="when every slot is taken and a client waits, close the connection quiet the "
        f"longest once it has been quiet this long (default {DEFAULT_EVICT_IDLE_AFTER:g}; "
        "0 at once)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=seconds_arg,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="a PROXY header and a TLS handshake must each complete within this "
        f"(default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--message-timeout",
        type=seconds_arg,
        default=DEFAULT_MESSAGE_TIMEOUT,
        metavar="SECONDS",
        help="a message once started must arrive within this "
        f"(default {DEFAULT_MESSAGE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--write-timeout",
        type=seconds_arg,
        default=DEFAULT_WRITE_TIMEOUT,
        metavar="SECONDS",
        help="a reply must be written within this; a client that never reads is "
        f"dropped (default {DEFAULT_WRITE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        help="reply with FUNCTION(message) from MODULE (imported from the current "
        "directory first) instead of the echo; it returns str, bytes, or None for the echo",
    )
    parser.add_argument(
        "--session",
        metavar="MODULE:CLASS",
        help="hold a conversation per connection: CLASS is a sockdemo.Session subclass "
        "(run on handler threads) or an async def session(conn) (run on an event loop); "
        "nothing is added to what it sends; with --workers, a broadcast reaches the "
        "connections of its own worker",
    )
    parser.add_argument(
        "--max-pending",
        type=positive_arg,
        default=DEFAULT_MAX_PENDING_BYTES,
        metavar="BYTES",
        help="bytes sent to one client that it has not read yet; past it the client is "
        f"too slow and is disconnected (default {DEFAULT_MAX_PENDING_BYTES}, "
        f"{DEFAULT_MAX_PENDING_BYTES >> 20} MiB)",
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
        type=positive_arg,
        metavar="N",
        help="most threads running a Python handler at once (default min(32, cpus + 4))",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=seconds_arg,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="on Ctrl+C or SIGTERM, wait this long for handlers still running; "
        f"a second Ctrl+C stops at once (default {DEFAULT_SHUTDOWN_TIMEOUT:g})",
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
        type=count_arg,
        default=1,
        metavar="N",
        help="run N worker processes sharing the port (SO_REUSEPORT) under a supervisor "
        "that restarts them; 0: one per CPU; SIGHUP replaces them one at a time (default 1)",
    )
    parser.add_argument(
        "--metrics-port",
        type=port_arg,
        metavar="PORT",
        help="serve the counters at http://127.0.0.1:PORT/metrics (see --metrics-host) in "
        "Prometheus' text format (with --workers, one endpoint adds up every worker's)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the metrics endpoint listens on (default 127.0.0.1: metrics are "
        "not public unless you say so, whatever --host is)",
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


def add_client_tls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cafile", metavar="PEM", help="use TLS, trusting the certificates in this file"
    )
    parser.add_argument(
        "--server-hostname",
        metavar="NAME",
        help="name the server's certificate must carry (default: --host; needs --cafile)",
    )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    add_address(parser)
    add_protocol(parser)
    parser.add_argument(
        "--timeout",
        type=seconds_arg,
        metavar="SECONDS",
        help="give up on connecting or on a reply after this long (default: wait)",
    )
    add_client_tls(parser)
