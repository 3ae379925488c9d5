//! What a connection needs of its socket, whoever watches it.
//!
//! A connection is served by the same code wherever it runs: on the network
//! threads, over tokio's [`TcpStream`], or on an event loop's thread, over a
//! [`LoopStream`](crate::handling::reactor::LoopStream) (the connections of a
//! `sockdemo.aio` server with a handler). Both are byte streams for tokio's
//! I/O traits, which TLS and the PROXY header reader need; this adds the few
//! things the connection asks of the socket itself.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connected TCP socket a connection can be served over.
pub(crate) trait Socket: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static {
    /// Completes when the socket may have bytes to read (or has an error or
    /// the peer's end to tell).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// Writes what the socket takes now, without waiting;
    /// [`io::ErrorKind::WouldBlock`] when it takes nothing.
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;

    /// Sends small writes at once rather than waiting to coalesce them.
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
}

impl Socket for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, data)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        TcpStream::set_nodelay(self, nodelay)
    }
}
