//! The one error type of the crate.
//!
//! Every fallible public function returns [`Error`]. Its variants are chosen so
//! that each maps onto an exception a Python socket user already catches
//! (see `python/`): I/O failures keep their `errno`, bad arguments are
//! `ValueError`s, TLS failures are `ssl.SSLError`s. Messages are lowercase and
//! say what happened, never how the crate is built.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in sockdemo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system level failure (refused, reset, address in use…);
    /// `raw_os_error()` carries the errno.
    #[error("{0}")]
    Io(#[from] io::Error),

    /// A host name could not be resolved to an address.
    #[error("cannot resolve host {host:?}: {source}")]
    Resolve { host: String, source: io::Error },

    /// A file the caller named could not be read or written.
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },

    /// The peer did not answer (or the client could not write) in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// The peer closed the connection before a whole reply arrived.
    #[error("connection closed by the server")]
    Closed,

    /// A message (or a declared frame length) is larger than the limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes{hint}")]
    MessageTooLarge {
        size: usize,
        limit: usize,
        /// Extra advice, such as switching to the framed protocol.
        hint: &'static str,
    },

    /// The peer broke the wire protocol (for example a malformed frame).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A connection's PROXY protocol header was missing, malformed, or came
    /// from a source not allowed to send one.
    #[error("{0}")]
    Proxy(String),

    /// A connection's unsent bytes passed the server's bound: its client
    /// reads too slowly (or not at all) for what is sent to it.
    #[error("the client reads too slowly: {pending} bytes unsent, over the limit of {limit}")]
    SlowReader { pending: usize, limit: usize },

    /// A server's reply handler failed (it has logged the details).
    #[error("handler failed: {0}")]
    Handler(String),

    /// A TLS client met a server that answered in plaintext.
    #[error(
        "the server at {0} does not speak TLS (it answered in plaintext): connect without a CA file"
    )]
    NotTls(std::net::SocketAddr),

    /// The TLS handshake or a TLS record failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),

    /// A certificate or key file held no usable PEM, or it did not fit.
    #[error("{0}")]
    Certificate(String),

    /// An argument is out of range or inconsistent with another.
    #[error("{0}")]
    InvalidArgument(String),

    /// The operation was cancelled by the caller's interrupt check (for
    /// Python: a pending `KeyboardInterrupt`).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// Converts an I/O error, lifting out the TLS error that rustls and
    /// tokio-rustls carry inside `io::Error`s so it is reported as TLS.
    pub fn from_io(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            if let Some(Ok(tls)) = e
                .into_inner()
                .map(|inner| inner.downcast::<rustls::Error>())
            {
                return Error::Tls(*tls);
            }
            return Error::Protocol("tls failure".into());
        }
        Error::Io(e)
    }

    /// Wraps a name-resolution failure so that the message names the host.
    pub fn resolve(host: &str, source: io::Error) -> Self {
        Error::Resolve {
            host: host.to_owned(),
            source,
        }
    }

    /// Wraps an I/O error on `path` so that the message names the file.
    pub fn file(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }
}
