"""One ``--workers`` worker: ``python -m sockdemo.cli.worker``, started by the
supervisor (:mod:`sockdemo.cli.workers`) with its options in the environment.
"""

from __future__ import annotations

import argparse
import sys

from .. import supervisor
from .output import fail
from .server import serve, serve_forever


def serve_worker() -> int:
    """A ``--workers`` worker: the server with the supervisor's options."""
    options = supervisor.worker_options()
    if options is None:
        return fail("not started by a sockdemo supervisor")
    return serve(argparse.Namespace(**options), serve_forever)


if __name__ == "__main__":
    sys.exit(serve_worker())
