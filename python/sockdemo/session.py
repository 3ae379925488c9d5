"""Sessions: a conversation per connection, for :class:`sockdemo.Server`.

Subclass :class:`Session` and pass the class as ``Server(session=...)``: the
server makes one instance per connection, so attributes are that
connection's state, and calls its hooks on the handler threads, in order
with the connection's messages::

    class Chat(sockdemo.Session):
        def connected(self):
            self.server.broadcast(f"{self.peer} joined", exclude=self)

        def received(self, message):
            self.server.broadcast(message, exclude=self)

        def closed(self):
            self.server.broadcast(f"{self.peer} left", exclude=self)

Nothing is added to what a session sends: no prefix, no goodbye to ``bye``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._sockdemo import Connection, Server

__all__ = ["Session"]


class Session:
    """One connection's conversation. The server sets, before
    :meth:`connected` runs:

    * ``self.peer``: the client's ``(host, port)`` (behind a PROXY header,
      the real client's);
    * ``self.server``: the :class:`sockdemo.Server`, for ``broadcast()``;
    * ``self.id``: the connection's number, unique within the server.

    Instances are made with no arguments: keep ``__init__`` argument-free.
    """

    peer: tuple[Any, ...]
    server: Server
    id: int
    _connection: Connection

    def connected(self) -> None:
        """The client has connected. Runs before any :meth:`received`."""

    def received(self, message: str) -> str | bytes | None:
        """The client sent ``message`` (``str``; undecodable bytes kept as
        surrogates, as handlers get them). A return value other than
        ``None`` is sent back to this connection only."""
        return None

    def closed(self) -> None:
        """The connection has closed, whatever closed it (the client,
        :meth:`close`, a timeout, a slow reader cut off, the server shutting
        down). Runs once, after every :meth:`received`; :meth:`send` now
        returns ``False``."""

    def send(self, message: str | bytes) -> bool:
        """Sends ``message`` to this connection, after everything sent
        before. Works from any thread at any time and never blocks; returns
        ``False`` once the connection is closing or gone."""
        return self._connection.send(message)

    def close(self) -> None:
        """Closes the connection once what was sent before is out."""
        self._connection.close()

    def __repr__(self) -> str:
        peer = getattr(self, "peer", None)
        return f"<{type(self).__qualname__} {getattr(self, 'id', '?')} from {peer}>"
