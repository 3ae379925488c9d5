//! A blocking client: connect, send a message, read its reply.
//!
//! This is what `client.py` and `sockdemo.Client` use. It is blocking on
//! purpose: one request at a time is the original's model, and a plain socket
//! with no runtime keeps a Python loop of `request()` as cheap as the same
//! loop on the `socket` module.
//!
//! Waits are cut into ticks of [`TICK`] (the socket's own `SO_RCVTIMEO` and
//! `SO_SNDTIMEO`, set once, so a tick costs no system call when data is
//! there). After each tick the caller's `interrupt` check runs, which is how
//! Ctrl+C reaches a Python program blocked here, and the overall `timeout`
//! is enforced.
//!
//! Raw replies have no boundary on the wire, so one read is one reply, as in
//! the original. Framed replies are read exactly.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};

use super::config::{Config, DEFAULT_CONNECT_TIMEOUT};
use super::replies::{check_raw_reply, decode_framed_reply, reply_codec};
use crate::error::{Error, Result};
use crate::protocol::{Codec, Decoded, Protocol};
use crate::wait::{Interrupt, TICK};

/// The most a single raw reply read takes in.
const RAW_READ: usize = 64 * 1024;

/// A connected client.
pub struct Client {
    stream: Stream,
    codec: Codec,
    reply_codec: Codec,
    timeout: Option<Duration>,
    peer: SocketAddr,
    /// The read buffer, kept between replies. Framed: `inbuf[..filled]` are
    /// bytes received and not yet returned (the start of the next reply).
    inbuf: Vec<u8>,
    filled: usize,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Client {
    /// Connects to `host:port`, trying each address the name resolves to.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (`ECONNREFUSED`, resolution failure…), [`Error::Timeout`],
    /// [`Error::Tls`] if the handshake fails, [`Error::InvalidArgument`] for a
    /// bad configuration.
    pub fn connect(
        host: &str,
        port: u16,
        config: Config,
        interrupt: Interrupt<'_>,
    ) -> Result<Self> {
        let codec = Codec::new(config.protocol, config.buffer_size, config.max_message_size)?;
        let reply_codec = reply_codec(&config)?;
        let deadline = config.timeout.map(|t| Instant::now() + t);
        let connect_limit = config.timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut last = None;
        let mut connected = None;
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::resolve(host, e))?;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, connect_limit) {
                Ok(sock) => {
                    connected = Some((sock, addr));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some((sock, peer)) = connected else {
            return Err(match last {
                Some(e) if e.kind() == io::ErrorKind::TimedOut => Error::Timeout(connect_limit),
                Some(e) => Error::Io(e),
                None => Error::Io(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("no address found for {host:?}"),
                )),
            });
        };
        // Each request is one write; Nagle would only hold it back.
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(TICK))?;
        sock.set_write_timeout(Some(TICK))?;
        let stream = match config.tls {
            None => Stream::Plain(sock),
            Some((tls, name)) => {
                let conn = ClientConnection::new(tls, name)?;
                let mut stream = StreamOwned::new(conn, sock);
                handshake(&mut stream, deadline, config.timeout, interrupt).map_err(|e| {
                    // What a plaintext server sends back is no TLS record.
                    match e {
                        Error::Tls(rustls::Error::InvalidMessage(_)) => Error::NotTls(peer),
                        other => other,
                    }
                })?;
                Stream::Tls(Box::new(stream))
            }
        };
        Ok(Client {
            stream,
            codec,
            reply_codec,
            timeout: config.timeout,
            peer,
            inbuf: Vec::new(),
            filled: 0,
        })
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Is this connection encrypted?
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Sends `message` and returns the server's reply.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] before sending anything if the message
    /// cannot make the round trip; then as [`Client::send`] and
    /// [`Client::receive`].
    pub fn request(&mut self, message: &[u8], interrupt: Interrupt<'_>) -> Result<Vec<u8>> {
        self.send(message, interrupt)?;
        self.receive(interrupt)
    }

    /// Sends one message without waiting for its reply.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`], [`Error::Io`], [`Error::Timeout`].
    pub fn send(&mut self, message: &[u8], interrupt: Interrupt<'_>) -> Result<()> {
        self.codec.check_outgoing(message)?;
        let deadline = self.deadline();
        match self.codec.protocol() {
            Protocol::Raw => self.write_all(message, deadline, interrupt),
            Protocol::Framed => {
                let mut frame = Vec::new();
                self.codec.encode(&[message], &mut frame)?;
                self.write_all(&frame, deadline, interrupt)
            }
        }
    }

    /// Reads the next reply.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the server closed first, [`Error::Timeout`],
    /// [`Error::Io`], [`Error::MessageTooLarge`] or [`Error::Protocol`] for a
    /// reply the client cannot accept.
    pub fn receive(&mut self, interrupt: Interrupt<'_>) -> Result<Vec<u8>> {
        let deadline = self.deadline();
        if self.codec.protocol() == Protocol::Raw {
            // One read is one reply. The buffer is kept between requests.
            self.inbuf.resize(RAW_READ, 0);
            let n = self.read_some_at(0, deadline, interrupt)?;
            if n == 0 {
                return Err(Error::Closed);
            }
            let reply = &self.inbuf[..n];
            check_raw_reply(reply, self.peer, self.is_tls())?;
            return Ok(reply.to_vec());
        }
        loop {
            let received = &self.inbuf[..self.filled];
            let decoded =
                decode_framed_reply(&self.reply_codec, received, self.peer, self.is_tls())?;
            let needed = match decoded {
                Decoded::Message(frame) => {
                    let reply = received[frame.payload.clone()].to_vec();
                    self.inbuf.copy_within(frame.consumed()..self.filled, 0);
                    self.filled -= frame.consumed();
                    return Ok(reply);
                }
                Decoded::Incomplete { needed } => needed,
            };
            // Grow (and zero) only when the room left is too small.
            let room = self.filled + needed.max(RAW_READ);
            if self.inbuf.len() < room {
                self.inbuf.resize(room, 0);
            }
            let n = self.read_some_at(self.filled, deadline, interrupt)?;
            if n == 0 {
                return Err(if self.filled == 0 {
                    Error::Closed
                } else {
                    Error::Protocol(
                        "the server closed the connection in the middle of a reply".into(),
                    )
                });
            }
            self.filled += n;
        }
    }

    /// Closes the connection (with close_notify under TLS). Best effort.
    pub fn close(self) {
        if let Stream::Tls(mut tls) = self.stream {
            tls.conn.send_close_notify();
            let _ = tls.conn.complete_io(&mut tls.sock);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    fn read_some_at(
        &mut self,
        start: usize,
        deadline: Option<Instant>,
        interrupt: Interrupt<'_>,
    ) -> Result<usize> {
        let mut buf = std::mem::take(&mut self.inbuf);
        let result = self.read_some(&mut buf[start..], deadline, interrupt);
        self.inbuf = buf;
        result
    }

    /// One read, retried across ticks until data, EOF, an error or the deadline.
    fn read_some(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
        interrupt: Interrupt<'_>,
    ) -> Result<usize> {
        loop {
            let result = match &mut self.stream {
                Stream::Plain(s) => s.read(buf),
                Stream::Tls(s) => match s.read(buf) {
                    // A server that closes without close_notify has still closed.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    other => other,
                },
            };
            match result {
                Ok(n) => return Ok(n),
                Err(e) if is_tick(&e) => tick(deadline, self.timeout, interrupt)?,
                Err(e) => return Err(Error::from_io(e)),
            }
        }
    }

    fn write_all(
        &mut self,
        mut data: &[u8],
        deadline: Option<Instant>,
        interrupt: Interrupt<'_>,
    ) -> Result<()> {
        while !data.is_empty() {
            let result = match &mut self.stream {
                Stream::Plain(s) => s.write(data),
                Stream::Tls(s) => s.write(data),
            };
            match result {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => data = &data[n..],
                Err(e) if is_tick(&e) => tick(deadline, self.timeout, interrupt)?,
                Err(e) => return Err(Error::from_io(e)),
            }
        }
        if let Stream::Tls(s) = &mut self.stream {
            // rustls took the plaintext; push the records it made to the socket.
            while s.conn.wants_write() {
                match s.conn.write_tls(&mut s.sock) {
                    Ok(_) => {}
                    Err(e) if is_tick(&e) => tick(deadline, self.timeout, interrupt)?,
                    Err(e) => return Err(Error::from_io(e)),
                }
            }
        }
        Ok(())
    }
}

fn handshake(
    stream: &mut StreamOwned<ClientConnection, TcpStream>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    interrupt: Interrupt<'_>,
) -> Result<()> {
    while stream.conn.is_handshaking() {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok((0, 0)) if stream.conn.is_handshaking() => {
                return Err(Error::Protocol(
                    "the server closed the connection during the TLS handshake".into(),
                ));
            }
            Ok(_) => {}
            Err(e) if is_tick(&e) => tick(deadline, timeout, interrupt)?,
            Err(e) => return Err(Error::from_io(e)),
        }
    }
    Ok(())
}

/// A socket timeout of one tick (or a signal) rather than a failure.
fn is_tick(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn tick(
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    interrupt: Interrupt<'_>,
) -> Result<()> {
    interrupt()?;
    match deadline {
        Some(at) if Instant::now() >= at => Err(Error::Timeout(timeout.unwrap_or_default())),
        _ => Ok(()),
    }
}
