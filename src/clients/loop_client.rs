//! A client for someone else's event loop: every call returns at once, and
//! says what it would wait for.
//!
//! `sockdemo.aio.connect` drives this from asyncio. The loop owns the waits
//! (it watches [`LoopClient::fd`]); this owns the bytes: the non-blocking
//! socket, the TLS state, the codec and the received replies. A request is a
//! [`LoopClient::send`] and [`LoopClient::flush`], then, whenever the loop
//! says the socket is readable, [`LoopClient::fill`] until
//! [`LoopClient::reply`] has one. The system calls are the ones asyncio's
//! own streams make; the buffering, framing and TLS are Rust.
//!
//! Replies are checked exactly as the blocking client checks them (one raw
//! read is one reply; a server that frames, or speaks TLS, when the client
//! does not, is said so plainly).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use rustls::ClientConnection;
use socket2::{Domain, Protocol as IpProtocol, SockAddr, Socket, Type};

use super::config::Config;
use super::replies::{check_raw_reply, decode_framed_reply, reply_codec};
use crate::error::{Error, Result};
use crate::protocol::{Codec, Decoded, Protocol};
use crate::socket::RawDescriptor;

/// What a non-blocking connect says while it is under way.
#[cfg(unix)]
const CONNECTING: i32 = libc::EINPROGRESS;
/// What a non-blocking connect says while it is under way (WSAEWOULDBLOCK).
#[cfg(windows)]
const CONNECTING: i32 = 10035;

/// The most one read takes in.
const READ: usize = 64 * 1024;

thread_local! {
    /// Where a loop's thread reads into, zeroed once rather than per read
    /// (a fresh buffer for every reply cost more than the reply).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ].into_boxed_slice());
}

/// What a call is waiting for before it can go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Nothing: done.
    Nothing,
    /// The socket to be readable.
    Read,
    /// The socket to be writable.
    Write,
}

/// One connection, driven by an event loop.
pub struct LoopClient {
    socket: Socket,
    peer: SocketAddr,
    tls: Option<Box<ClientConnection>>,
    codec: Codec,
    reply_codec: Codec,
    /// Bytes to write (plaintext connections; TLS keeps its own).
    out: Vec<u8>,
    /// Framed: bytes received and not yet returned.
    inbuf: Vec<u8>,
    /// Raw: replies received and not yet returned, one per read.
    raw: VecDeque<Vec<u8>>,
    /// The server has closed its side.
    eof: bool,
}

impl LoopClient {
    /// Starts connecting to `addr`; the connection is made once the socket
    /// is writable and [`LoopClient::connected`] says so.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the connection fails at once, [`Error::InvalidArgument`]
    /// for a bad configuration.
    pub fn connect(addr: SocketAddr, config: &Config) -> Result<Self> {
        let codec = Codec::new(config.protocol, config.buffer_size, config.max_message_size)?;
        let reply_codec = reply_codec(config)?;
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM,
            Some(IpProtocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        // Each request is one write; Nagle would only hold it back.
        socket.set_tcp_nodelay(true)?;
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            // A non-blocking connect under way.
            Err(e) if e.raw_os_error() == Some(CONNECTING) => {}
            Err(e) => return Err(Error::from_io(e)),
        }
        let tls = match &config.tls {
            Some((tls, name)) => {
                let mut conn = ClientConnection::new(tls.clone(), name.clone())?;
                // A message is queued whole, then written as the socket takes
                // it; its size is already bounded by `max_message_size`.
                conn.set_buffer_limit(None);
                Some(Box::new(conn))
            }
            None => None,
        };
        Ok(LoopClient {
            socket,
            peer: addr,
            tls,
            codec,
            reply_codec,
            out: Vec::new(),
            inbuf: Vec::new(),
            raw: VecDeque::new(),
            eof: false,
        })
    }

    /// The descriptor the loop watches.
    pub fn fd(&self) -> RawDescriptor {
        #[cfg(unix)]
        return std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        #[cfg(windows)]
        return std::os::windows::io::AsRawSocket::as_raw_socket(&self.socket);
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Is this connection encrypted?
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Goes on connecting once the socket is writable: checks the
    /// connection was made, then runs the TLS handshake as far as it can.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (`ECONNREFUSED`…), [`Error::Tls`], [`Error::NotTls`].
    pub fn connected(&mut self) -> Result<Want> {
        if let Some(e) = self.socket.take_error()? {
            return Err(Error::from_io(e));
        }
        let Some(tls) = &mut self.tls else {
            return Ok(Want::Nothing);
        };
        while tls.is_handshaking() {
            if tls.wants_write() {
                match tls.write_tls(&mut &self.socket) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Want::Write),
                    Err(e) => return Err(Error::from_io(e)),
                }
            }
            match tls.read_tls(&mut &self.socket) {
                Ok(0) => {
                    return Err(Error::Protocol(
                        "the server closed the connection during the TLS handshake".into(),
                    ));
                }
                Ok(_) => {
                    tls.process_new_packets().map_err(|e| match e {
                        // What a plaintext server sends back is no TLS record.
                        rustls::Error::InvalidMessage(_) => Error::NotTls(self.peer),
                        other => Error::Tls(other),
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Want::Read),
                Err(e) => return Err(Error::from_io(e)),
            }
        }
        // The handshake's last flight, if any.
        self.flush()
            .map(|done| if done { Want::Nothing } else { Want::Write })
    }

    /// Queues one message; [`LoopClient::flush`] writes it.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] (nothing is queued), [`Error::Closed`].
    pub fn send(&mut self, message: &[u8]) -> Result<()> {
        self.codec.check_outgoing(message)?;
        let mut frame = Vec::new();
        let bytes = match self.codec.protocol() {
            Protocol::Raw => message,
            Protocol::Framed => {
                self.codec.encode(&[message], &mut frame)?;
                &frame
            }
        };
        match &mut self.tls {
            Some(tls) => tls.writer().write_all(bytes)?,
            None => self.out.extend_from_slice(bytes),
        }
        Ok(())
    }

    /// Writes what is queued, as far as the socket takes it; `true` when
    /// everything is out, `false` to go on once the socket is writable.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (a reset, say).
    pub fn flush(&mut self) -> Result<bool> {
        let written = match &mut self.tls {
            Some(tls) => {
                let mut result = Ok(());
                while tls.wants_write() {
                    if let Err(e) = tls.write_tls(&mut &self.socket) {
                        result = Err(e);
                        break;
                    }
                }
                result
            }
            None => {
                let mut result = Ok(());
                let mut at = 0;
                while at < self.out.len() {
                    match self.socket.send(&self.out[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                self.out.drain(..at);
                result
            }
        };
        match written {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(Error::from_io(e)),
        }
    }

    /// Reads what the socket has; `true` when a whole reply is waiting, or
    /// the server has closed, so [`LoopClient::reply`] has news.
    ///
    /// Plain TCP takes one read: the loop calls again while the socket stays
    /// readable. TLS reads until it would block, since records it has taken
    /// in may hold plaintext the socket will never announce again.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (a reset, say), [`Error::Tls`].
    pub fn fill(&mut self) -> Result<bool> {
        SCRATCH.with_borrow_mut(|buf| self.fill_from(buf))
    }

    fn fill_from(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut chunk = Vec::new();
        loop {
            match self.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => match self.codec.protocol() {
                    Protocol::Raw => chunk.extend_from_slice(&buf[..n]),
                    Protocol::Framed => self.inbuf.extend_from_slice(&buf[..n]),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
            if self.tls.is_none() {
                break;
            }
        }
        // One read is one raw reply, as in the original.
        if !chunk.is_empty() {
            self.raw.push_back(chunk);
        }
        Ok(self.eof || self.has_reply())
    }

    /// One read of plaintext: from the socket, or through TLS.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let Some(tls) = &mut self.tls else {
            return Ok((&self.socket).read(buf)?);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                // A server that closes without close_notify has still closed.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            if tls.read_tls(&mut &self.socket)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets().map_err(ReadError::Tls)?;
            // An answer TLS owes the server (a key update) goes out now.
            while tls.wants_write() {
                match tls.write_tls(&mut &self.socket) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// Is a whole reply waiting?
    fn has_reply(&self) -> bool {
        match self.codec.protocol() {
            Protocol::Raw => !self.raw.is_empty(),
            Protocol::Framed => matches!(
                self.reply_codec.decode(&self.inbuf),
                Ok(Decoded::Message(_)) | Err(_)
            ),
        }
    }

    /// Has the server closed its side? (Replies received before may still
    /// wait.)
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Bytes received and not yet returned.
    pub fn buffered(&self) -> usize {
        self.inbuf.len() + self.raw.iter().map(Vec::len).sum::<usize>()
    }

    /// The next whole reply, or `None` until more is read.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the server has closed and every reply before
    /// has been returned; [`Error::Protocol`] or [`Error::MessageTooLarge`]
    /// for a reply the client cannot accept.
    pub fn reply(&mut self) -> Result<Option<Vec<u8>>> {
        let reply = match self.codec.protocol() {
            Protocol::Raw => match self.raw.pop_front() {
                Some(reply) => {
                    check_raw_reply(&reply, self.peer, self.is_tls())?;
                    Some(reply)
                }
                None => None,
            },
            Protocol::Framed => {
                match decode_framed_reply(&self.reply_codec, &self.inbuf, self.peer, self.is_tls())?
                {
                    Decoded::Message(frame) => {
                        let reply = self.inbuf[frame.payload.clone()].to_vec();
                        self.inbuf.drain(..frame.consumed());
                        Some(reply)
                    }
                    Decoded::Incomplete { .. } => None,
                }
            }
        };
        match reply {
            Some(reply) => Ok(Some(reply)),
            None if !self.eof => Ok(None),
            None if self.inbuf.is_empty() => Err(Error::Closed),
            None => Err(Error::Protocol(
                "the server closed the connection in the middle of a reply".into(),
            )),
        }
    }

    /// Closes the connection (with close_notify under TLS). Best effort,
    /// never waits.
    pub fn close(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut &self.socket);
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// A read's failure: the socket's, or TLS's.
enum ReadError {
    Io(io::Error),
    Tls(rustls::Error),
}

impl ReadError {
    fn kind(&self) -> io::ErrorKind {
        match self {
            ReadError::Io(e) => e.kind(),
            ReadError::Tls(_) => io::ErrorKind::InvalidData,
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Error::from_io(e),
            ReadError::Tls(e) => Error::Tls(e),
        }
    }
}
