"""``sockdemo client``, ``bench`` and ``cert``, and the two client scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .. import _sockdemo
from .._sockdemo import BYE_REPLY, Client
from ..errors import ServerClosedError
from .output import describe, fail, refuse, say, shown

#: What ``client.py`` sends when given no message.
HELLO = "Hello from the client!"


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
        return refuse(exc, args)
    except KeyboardInterrupt:
        say("Interrupted by user.")
        return 0
    try:
        say(f"Connected to server {args.host}:{args.port}")
        if args.messages:
            return _send_all(client, args.messages)
        return _converse(client)
    except KeyboardInterrupt:  # between prompts: still a normal ending
        say("Interrupted by user.")
        return 0
    except OSError as exc:
        return fail(describe(exc, args.host, args.port))
    finally:
        say("Closing connection.")
        client.close()


def _send_all(client: Client, messages: Sequence[str]) -> int:
    try:
        for message in messages:
            say(f"Sending: {shown(message)}")
            reply = client.request(message)
            say(f"Received from server: {shown(reply)}")
            if reply == BYE_REPLY:
                break
    except ValueError as exc:
        return fail(str(exc))
    return 0


def _converse(client: Client) -> int:
    """The interactive loop of ``client.v2.py``, worded as the original."""
    say("Enter messages to send (type 'quit' or 'exit' to stop):")
    while True:
        try:
            message = input("> ")
        except EOFError:
            say("\nInput stream closed.")
            return 0
        except KeyboardInterrupt:
            say("\nInterrupted by user.")
            return 0
        command = message.strip().lower()
        if command in ("quit", "exit"):
            return 0
        if not command:
            # The original sent an empty message and then waited forever for
            # a reply that an empty send never asks for.
            continue
        say(f"Sending: {shown(message)}")
        try:
            reply = client.request(message)
        except KeyboardInterrupt:
            say("\nInterrupted by user.")
            return 0
        except ServerClosedError:
            # The server going away (an idle timeout, a restart) ends an
            # interactive session normally, as in the original.
            say("Server closed the connection.")
            return 0
        except ValueError as exc:  # too large: say so, keep the session
            say(f"Error: {exc}")
            continue
        say(f"Received from server: {shown(reply)}")
        if command == "bye":
            return 0


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
        return refuse(exc, args)
    except KeyboardInterrupt:
        say("Interrupted by user.")
        return 130
    say(json.dumps(report, indent=2) if args.json else _summary(report, args))
    # A run in which nothing was answered failed, even with no error counted.
    return 1 if report["errors"] or not report["requests"] else 0


def run_cert(args: argparse.Namespace) -> int:
    """Writes a development certificate for localhost and 127.0.0.1."""
    try:
        cert, key = _sockdemo.generate_self_signed(args.dir)
    except OSError as exc:
        return fail(describe(exc, "", 0))
    say(f"Wrote {cert} and {key} (self-signed for localhost, 127.0.0.1 and ::1).")
    say(f"Serve:   python -m sockdemo server --certfile {cert} --keyfile {key}")
    say(f"Connect: python -m sockdemo client --cafile {cert}")
    return 0
