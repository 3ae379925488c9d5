//! What a connection needs of its socket, whoever watches it.
//!
//! A connection is served by the same code wherever it runs: on the network
//! threads, over tokio's [`TcpStream`], or on an event loop's thread, over a
//! [`LoopStream`](crate::handling::reactor::LoopStream) (the connections of a
//! `sockdemo.aio` server with a handler). Both are byte streams for tokio's
//! I/O traits, which TLS and the PROXY header reader need; this adds the few
//! things the connection asks of the socket itself.

use std::future::Future;
use std::io::{self, IoSlice};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A socket's number as the operating system knows it, and as an event
/// loop's `add_reader` takes it: a descriptor on Unix, a `SOCKET` on Windows.
#[cfg(unix)]
pub type RawDescriptor = std::os::fd::RawFd;
/// A socket's number as the operating system knows it, and as an event
/// loop's `add_reader` takes it: a descriptor on Unix, a `SOCKET` on Windows.
#[cfg(windows)]
pub type RawDescriptor = std::os::windows::io::RawSocket;

/// A second handle on the socket behind `socket`, for another thread to
/// write to or shut down; `None` if the system refuses one.
#[cfg(unix)]
pub(crate) fn duplicate(socket: &impl std::os::fd::AsFd) -> Option<socket2::Socket> {
    socket
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from)
}

/// A second handle on the socket behind `socket`, for another thread to
/// write to or shut down; `None` if the system refuses one.
#[cfg(windows)]
pub(crate) fn duplicate(socket: &impl std::os::windows::io::AsSocket) -> Option<socket2::Socket> {
    socket
        .as_socket()
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from)
}

/// A connected TCP socket a connection can be served over.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// A second handle on the socket, for other threads to write replies
    /// to without waking the connection (see `outbox`).
    fn duplicate(&self) -> Option<socket2::Socket>;

    /// Completes when the socket may have bytes to read (or has an error or
    /// the peer's end to tell).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// Writes what the socket takes now, without waiting;
    /// [`io::ErrorKind::WouldBlock`] when it takes nothing.
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;

    /// As [`Socket::try_write`], for `parts` sent back to back in one
    /// system call (see [`send_vectored`]).
    fn try_write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Reads what has arrived, without waiting;
    /// [`io::ErrorKind::WouldBlock`] when nothing has.
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Sends small writes at once rather than waiting to coalesce them.
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
}

/// Sends `parts` back to back on `socket` in one `sendmsg`, so that a reply
/// made of pieces in different buffers needs no copy to join them. With
/// `MSG_NOSIGNAL` where there is one, as std's own `send` does: a peer that
/// has gone must be an `EPIPE`, never a signal (`writev` would raise one).
pub(crate) fn send_vectored(
    socket: socket2::SockRef<'_>,
    parts: &[IoSlice<'_>],
) -> io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const NO_SIGNAL: std::ffi::c_int = libc::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const NO_SIGNAL: std::ffi::c_int = 0;
    socket.send_vectored_with_flags(parts, NO_SIGNAL)
}

impl Socket for TcpStream {
    fn duplicate(&self) -> Option<socket2::Socket> {
        duplicate(self)
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, data)
    }

    fn try_write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        // Through tokio, so that a WouldBlock clears its readiness.
        self.try_io(tokio::io::Interest::WRITABLE, || {
            send_vectored(socket2::SockRef::from(self), parts)
        })
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        TcpStream::set_nodelay(self, nodelay)
    }
}
