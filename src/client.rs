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
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::error::{Error, Result};
use crate::protocol::{Codec, DEFAULT_BUFFER_SIZE, DEFAULT_MAX_MESSAGE_SIZE, Decoded, Protocol};

/// How often a blocked call wakes to run the interrupt check.
pub const TICK: Duration = Duration::from_millis(100);
/// How long connecting may take when no timeout is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much larger than `max_message_size` a reply may be: room for the
/// server's prefix around an echoed message of the largest size.
const REPLY_ALLOWANCE: usize = 64 * 1024;
/// The most a single raw reply read takes in.
const RAW_READ: usize = 64 * 1024;

/// How a client connects and talks.
#[derive(Clone, Debug)]
pub struct Config {
    /// The wire protocol (default raw).
    pub protocol: Protocol,
    /// Give up on connecting or on a reply after this long (default: wait).
    pub timeout: Option<Duration>,
    /// The size of one raw message; longer raw messages are refused.
    pub buffer_size: usize,
    /// The largest framed message sent (and, plus room for the prefix, read).
    pub max_message_size: usize,
    /// Speak TLS with this configuration and name.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol: Protocol::Raw,
            timeout: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            tls: None,
        }
    }
}

/// The caller's check, run at every tick of a blocked call: return
/// `Err(Error::Interrupted)` to abandon the call.
pub type Interrupt<'a> = &'a mut dyn FnMut() -> Result<()>;

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

/// The codec a client reads replies with: framed replies may exceed the
/// largest message by the server's prefix.
pub(crate) fn reply_codec(config: &Config) -> Result<Codec> {
    Codec::new(
        config.protocol,
        config.buffer_size,
        config
            .max_message_size
            .saturating_add(REPLY_ALLOWANCE)
            .min(crate::protocol::MAX_FRAME_LEN),
    )
}

/// Checks one raw reply from `peer`: a reply that is really a TLS record or
/// a frame means the client speaks the wrong way, and says so.
pub(crate) fn check_raw_reply(reply: &[u8], peer: SocketAddr, tls: bool) -> Result<()> {
    refuse_tls(reply, peer, tls)?;
    // A length that announces exactly the rest: the server frames.
    if let Some(header) = reply.first_chunk::<4>()
        && header[0] == 0
        && u32::from_be_bytes(*header) as usize == reply.len() - 4
    {
        return Err(Error::Protocol(format!(
            "the server at {peer} answers in frames: use the framed protocol"
        )));
    }
    Ok(())
}

/// Decodes the framed reply at the start of `received` from `peer`, saying
/// plainly when the server turns out to speak raw text or TLS.
pub(crate) fn decode_framed_reply(
    codec: &Codec,
    received: &[u8],
    peer: SocketAddr,
    tls: bool,
) -> Result<Decoded> {
    refuse_tls(received, peer, tls)?;
    codec.decode(received).map_err(|e| match e {
        // Text where a length should be: the server does not frame.
        Error::MessageTooLarge { .. }
            if received[..4]
                .iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ') =>
        {
            Error::Protocol(format!(
                "the server at {peer} does not answer in frames (its reply starts {:?}): \
                 use the raw protocol",
                String::from_utf8_lossy(&received[..4])
            ))
        }
        other => other,
    })
}

/// A plaintext client that finds a TLS record where a reply should start
/// is talking to a TLS server: say so, instead of handing the alert back
/// as a reply (raw) or refusing an absurd frame length (framed).
fn refuse_tls(reply: &[u8], peer: SocketAddr, tls: bool) -> Result<()> {
    if !tls && crate::protocol::looks_like_tls(reply) {
        return Err(Error::Protocol(format!(
            "the server at {peer} speaks TLS: connect with a CA file (cafile=..., --cafile)"
        )));
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
