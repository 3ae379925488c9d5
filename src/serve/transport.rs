//! A connection's byte stream, plain or TLS, and the handshake that opens it.
//!
//! Reads reserve memory only once data is there, so an idle plain
//! connection holds no buffer at all; a write first tries the socket
//! without waiting, since most replies fit its buffer whole.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};
use crate::socket::Socket;

/// Turns an accepted socket into a transport, doing the TLS handshake if the
/// server has a certificate. The handshake is bounded by the message timeout,
/// and given up (`Interrupted`) once `stop` resolves.
pub(crate) async fn open<S: Socket>(
    stream: S,
    tls: Option<&TlsAcceptor>,
    limit: Option<Duration>,
    stop: impl Future<Output = ()>,
) -> Result<Transport<S>> {
    // Replies are written whole; waiting for more data to coalesce only adds latency.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return Ok(Transport::Plain(stream));
    };
    // Boxed: a handshake in progress is large, and only TLS connections need it.
    let handshake = until(
        limit.map(|t| Instant::now() + t),
        Box::pin(acceptor.accept(stream)),
    );
    tokio::select! {
        result = handshake => match result {
            Some(Ok(tls)) => Ok(Transport::Tls(Box::new(tls))),
            Some(Err(e)) => Err(Error::from_io(e)),
            None => Err(Error::Timeout(limit.unwrap_or_default())),
        },
        () = stop => Err(Error::Io(io::ErrorKind::Interrupted.into())),
    }
}

/// A plain or TLS byte stream.
pub(crate) enum Transport<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S: Socket> Transport<S> {
    /// Reads what is available into `buf`, reserving `want` bytes only once
    /// data is there, so an idle plain connection holds no buffer at all.
    pub(crate) async fn read_into(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => loop {
                stream.readable().await?;
                buf.reserve(want);
                // One poll of tokio's own read, not a `try_read`: after a
                // short read it marks the socket drained, which spares the
                // next wait a `recv` that would only say EAGAIN.
                let mut read = pin!(stream.read_buf(buf));
                match poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                    Poll::Ready(result) => return result,
                    // Readiness was stale: nothing came. Do not sit on an
                    // empty buffer while waiting again.
                    Poll::Pending => {
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                }
            },
            Transport::Tls(stream) => {
                buf.reserve(want);
                match stream.read_buf(buf).await {
                    // A peer that closes without close_notify has still closed.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    result => result,
                }
            }
        }
    }

    /// Writes what the socket takes without waiting; returns how much.
    /// Most replies fit the socket buffer whole, and then no timer is needed.
    pub(crate) fn write_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let Transport::Plain(stream) = self else {
            return Ok(0);
        };
        let mut written = 0;
        while written < data.len() {
            match stream.try_write(&data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// As [`Transport::write_now`], for `parts` sent back to back in one
    /// system call (a reply whose payload stays in the read buffer);
    /// `parts` is left holding what the socket did not take.
    pub(crate) fn write_now_vectored(&mut self, parts: &mut &mut [IoSlice<'_>]) -> io::Result<()> {
        let Transport::Plain(stream) = self else {
            return Ok(());
        };
        while !parts.is_empty() {
            match stream.try_write_vectored(parts) {
                // The kernel never takes more than it was given.
                Ok(n) if n > 0 => IoSlice::advance_slices(parts, n),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.write_all(data).await,
            Transport::Tls(stream) => {
                stream.write_all(data).await?;
                stream.flush().await
            }
        }
    }

    /// After the goodbye, reads and drops what the client sent that will
    /// never be answered (a pipelined burst past a message limit, say), up
    /// to `limit` bytes or the client's own close. Closing a socket with
    /// unread bytes makes the kernel send a reset, which can destroy replies
    /// the client has not read yet. Nothing unread, nothing to wait for.
    pub(crate) async fn drain(&mut self, limit: usize) {
        let Transport::Plain(stream) = self else {
            return;
        };
        // On the heap: an array here would be part of every connection's
        // task, idle or not, for the one moment it is used.
        let mut scratch = vec![0u8; 4096];
        let mut dropped = 0;
        loop {
            match stream.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(n) => {
                    dropped += n;
                    if dropped >= limit {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && dropped > 0 => {
                    if stream.readable().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Says goodbye at the transport level: FIN, or close_notify then FIN.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.shutdown().await,
            Transport::Tls(stream) => stream.shutdown().await,
        }
    }
}

/// Runs `fut`, or gives up at `deadline` (`None`).
pub(crate) async fn until<F: Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(at) => timeout_at(at, fut).await.ok(),
        None => Some(fut.await),
    }
}
