"""asyncio on sockdemo's Rust core: :func:`start_server` and :func:`connect`.

Shaped after :func:`asyncio.start_server` and :func:`asyncio.open_connection`,
for asyncio's own loop and uvloop alike::

    import asyncio
    import sockdemo.aio

    async def handler(message: str) -> str:
        return "Server received: " + message

    async def main() -> None:
        server = await sockdemo.aio.start_server(handler, port=0)
        async with server:
            port = server.server_address[1]
            async with await sockdemo.aio.connect("127.0.0.1", port) as client:
                print(await client.request("hello"))   # Server received: hello

    asyncio.run(main())

The server lives in :mod:`sockdemo.aio.server`, the client in
:mod:`sockdemo.aio.client`. Replies keep their order per connection, and
while a connection's handler runs, that connection reads nothing more, so a
loop that falls behind pushes back on its clients.
"""

from .client import Client, connect
from .server import AsyncHandler, Server, start_server
from .session import AsyncSession, Connection

__all__ = [
    "AsyncHandler",
    "AsyncSession",
    "Client",
    "Connection",
    "Server",
    "connect",
    "start_server",
]

# Shown, documented and pickled as the public names they are.
for _public in (Client, Connection, Server, connect, start_server):
    _public.__module__ = __name__
del _public
