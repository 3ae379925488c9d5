"""sockdemo: the classic socket echo example on a Rust core.

A TCP server that answers every message with ``Server received: <message>``
and says goodbye to ``bye``, and a client for it; the networking is Rust
(tokio, rustls), reached through this package::

    import sockdemo

    with sockdemo.Server(port=0) as srv:
        srv.start()
        with sockdemo.Client("127.0.0.1", srv.server_address[1]) as c:
            print(c.request("hello"))        # Server received: hello
        srv.shutdown()

:mod:`sockdemo.aio` is the same for asyncio: ``await
sockdemo.aio.start_server(handler)`` and ``await sockdemo.aio.connect(...)``.

Errors are the standard ones (``ConnectionRefusedError``, ``TimeoutError``,
``ValueError``...) or subclasses of them from :mod:`sockdemo.errors`. Rust's
log records go to :mod:`logging` under the ``sockdemo`` logger.
"""

from __future__ import annotations

import atexit
import importlib
from typing import Any

from ._sockdemo import (
    BYE_REPLY,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_EVICT_IDLE_AFTER,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Client,
    Server,
    __version__,
    _shutdown_all,
    bench,
    generate_self_signed,
)
from .errors import MessageTooLarge, ProtocolError, ServerClosedError, TLSError
from .session import Session

__all__ = [
    "BYE_REPLY",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_EVICT_IDLE_AFTER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MESSAGE_TIMEOUT",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "Client",
    "MessageTooLarge",
    "ProtocolError",
    "Server",
    "ServerClosedError",
    "Session",
    "TLSError",
    "__version__",
    "bench",
    "generate_self_signed",
]


def __getattr__(name: str) -> Any:
    # `sockdemo.aio` on first use: a blocking program never loads asyncio.
    if name == "aio":
        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Servers started in the background serve on Rust threads that log through
# Python; stop them while the interpreter is still whole.
atexit.register(_shutdown_all)
