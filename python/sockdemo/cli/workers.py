"""``--workers``: the supervisor's side. Each worker runs
:mod:`sockdemo.cli.worker` as a program.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys

from .. import supervisor
from .output import fail, refuse, say
from .server import HandlerError, listening, load_callables, metrics_endpoint

#: How the supervisor starts a worker: :mod:`sockdemo.cli.worker` as a program.
WORKER_COMMAND = (sys.executable, "-m", "sockdemo.cli.worker")


def supervise(args: argparse.Namespace) -> int:
    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(signal, "SIGHUP"):
        return fail(
            "--workers needs SO_REUSEPORT and POSIX signals, which this system does not have; "
            "run one server (it uses every core for the network) or several behind a balancer"
        )
    try:
        load_callables(args)
    except HandlerError as exc:
        say(f"Error: {exc}")
        return 2
    count = args.workers or os.cpu_count() or 1
    try:
        reserved = supervisor.reserve_port(args.host, args.port)
    except OSError as exc:
        return refuse(exc, args)
    with reserved:
        host, port = reserved.getsockname()[:2]
        loaded = ("main", "handler_function", "session_object")
        options = {k: v for k, v in vars(args).items() if k not in loaded}
        options.update(port=port, reuse_port=True, workers=1)
        if args.metrics_port is not None:
            # Each worker's own endpoint, private; the supervisor's adds them up.
            options.update(metrics_port=0, metrics_host="127.0.0.1")

        boss = supervisor.Supervisor(options, count, args.shutdown_timeout, say, WORKER_COMMAND)
        with contextlib.ExitStack() as endpoint:

            def ready() -> None:
                listening((host, port))
                say(f"Started {count} workers.")
                endpoint.enter_context(metrics_endpoint(args, boss.metrics))

            try:
                return boss.run(ready)
            except OSError as exc:
                return fail(str(exc))
