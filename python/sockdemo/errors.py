"""sockdemo's own exceptions.

Each subclasses the standard exception a socket user already catches, so code
written for the ``socket`` and ``ssl`` modules handles sockdemo's errors
without knowing about them.
"""

from __future__ import annotations

import ssl

__all__ = ["MessageTooLarge", "ProtocolError", "ServerClosedError", "TLSError"]


class MessageTooLarge(ValueError):
    """A message is larger than the protocol or the configured limit allows.

    Raised by the client before anything is sent. In raw mode a message must
    fit one server read (``buffer_size``, 1024 bytes by default); use the
    ``framed`` protocol for larger messages.
    """


class ProtocolError(ConnectionError):
    """The peer broke the wire protocol, e.g. closed in the middle of a frame.

    ``errno`` is ``errno.EPROTO``.
    """


class ServerClosedError(ConnectionResetError):
    """The server closed the connection (an orderly close, not a reset)
    before a reply came, as after ``bye`` or an idle timeout.

    ``errno`` is ``errno.ECONNRESET``, as for any connection the peer ended.
    """


class TLSError(ssl.SSLError):
    """The TLS handshake failed (unknown CA, wrong name, not TLS at all...)."""
