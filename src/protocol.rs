//! The wire protocols, written once and used by the server, the clients and
//! the load generator.
//!
//! This module does no I/O ("sans-IO"): it looks at bytes that someone else
//! read and says where the next whole message is, and it appends replies to a
//! buffer that someone else will write, so one codec serves blocking and async
//! code alike, and property tests can feed it arbitrary bytes. Two protocols
//! exist, [`Protocol::Raw`] and [`Protocol::Framed`] (see `PROTOCOL.md` for
//! the bytes on the wire); in both, `bye` is answered with [`BYE_REPLY`] and
//! ends the session.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::error::Error;

/// Where the original example listens.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// The original example's port.
pub const DEFAULT_PORT: u16 = 65432;
/// What the server puts before every echoed message.
pub const DEFAULT_PREFIX: &str = "Server received: ";
/// The answer to `bye`, after which the server closes the connection.
pub const BYE_REPLY: &str = "Server acknowledging bye. Goodbye!";
/// The original's `recv(1024)`: the size of one raw message.
pub const DEFAULT_BUFFER_SIZE: usize = 1024;
/// The largest framed message accepted by default (1 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;
/// Size of the length header of a framed message.
pub const FRAME_HEADER_LEN: usize = 4;
/// The largest length a frame header can express.
pub const MAX_FRAME_LEN: usize = u32::MAX as usize;

/// Which wire format a connection speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// One read of up to `buffer_size` bytes is one message (the original).
    #[default]
    Raw,
    /// A 4-byte big-endian length followed by the payload.
    Framed,
}

impl Protocol {
    /// The name used on command lines and in Python (`"raw"`, `"framed"`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Raw => "raw",
            Protocol::Framed => "framed",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "raw" => Ok(Protocol::Raw),
            "framed" => Ok(Protocol::Framed),
            other => Err(Error::invalid(format!(
                "unknown protocol {other:?}: expected \"raw\" or \"framed\""
            ))),
        }
    }
}

/// Is this message the session-ending `bye`?
///
/// ASCII case and surrounding ASCII whitespace are ignored, so netcat's
/// `bye\n` and a shouted `BYE` both count.
pub fn is_bye(message: &[u8]) -> bool {
    message.trim_ascii().eq_ignore_ascii_case(b"bye")
}

/// Do these bytes open a TLS record (a handshake or an alert)? A plaintext
/// peer that finds them where a reply should be is talking to a TLS server.
/// Neither protocol's replies can start this way: a raw reply starts with the
/// prefix, and a framed reply of 352 MB or more is far over any limit.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

/// Where the next whole message sits in a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The payload's bytes within the buffer.
    pub payload: Range<usize>,
}

impl Frame {
    /// How many bytes of the buffer this message used, header included:
    /// advance the buffer by this much once the message is handled.
    pub fn consumed(&self) -> usize {
        self.payload.end
    }
}

/// The result of looking for a message in the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole message is at the front of the buffer.
    Message(Frame),
    /// More bytes are needed; at least `needed` more complete the message.
    /// Readers use it to size their buffer to need.
    Incomplete { needed: usize },
}

/// A codec for one protocol with its limits.
///
/// Cheap to copy; build one per server or client and share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    protocol: Protocol,
    buffer_size: usize,
    max_message_size: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            protocol: Protocol::Raw,
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl Codec {
    /// A codec for `protocol`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `buffer_size` is zero or
    /// `max_message_size` does not fit a frame header.
    pub fn new(
        protocol: Protocol,
        buffer_size: usize,
        max_message_size: usize,
    ) -> crate::Result<Self> {
        if buffer_size == 0 {
            return Err(Error::invalid("buffer_size must be at least 1 byte"));
        }
        if max_message_size > MAX_FRAME_LEN {
            return Err(Error::invalid(format!(
                "max_message_size must be at most {MAX_FRAME_LEN} bytes (a 4-byte length)"
            )));
        }
        Ok(Codec {
            protocol,
            buffer_size,
            max_message_size,
        })
    }

    /// The protocol this codec speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The size of one raw message.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// The largest framed payload accepted.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Finds the next whole message at the front of `buf`.
    ///
    /// Raw: any non-empty buffer holds a message, cut at `buffer_size` bytes
    /// exactly as a `recv(buffer_size)` would have cut it. Framed: the header
    /// is checked against `max_message_size` before the caller is asked for
    /// more bytes, so an absurd length is refused before anything is
    /// allocated for it.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] when a frame declares more than the limit.
    pub fn decode(&self, buf: &[u8]) -> crate::Result<Decoded> {
        match self.protocol {
            Protocol::Raw if buf.is_empty() => Ok(Decoded::Incomplete { needed: 1 }),
            Protocol::Raw => Ok(Decoded::Message(Frame {
                payload: 0..buf.len().min(self.buffer_size),
            })),
            Protocol::Framed => decode_frame(buf, self.max_message_size),
        }
    }

    /// Appends one message made of `parts` (sent back to back) to `out`.
    ///
    /// Raw adds nothing around the bytes; framed puts the length first. Taking
    /// the parts separately lets the server write prefix and echo without
    /// first joining them.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] if a framed message cannot be expressed in
    /// a 4-byte length.
    pub fn encode(&self, parts: &[&[u8]], out: &mut Vec<u8>) -> crate::Result<()> {
        self.encode_head(parts, 0, out)
    }

    /// Appends the start of one message: `parts`, which `then` more bytes
    /// will follow that the caller sends itself (framed, the length counts
    /// them). The server echoes a large payload this way, from where it was
    /// read, without copying it into the reply.
    ///
    /// # Errors
    ///
    /// As [`Codec::encode`].
    pub fn encode_head(
        &self,
        parts: &[&[u8]],
        then: usize,
        out: &mut Vec<u8>,
    ) -> crate::Result<()> {
        let here: usize = parts.iter().map(|p| p.len()).sum();
        if self.protocol == Protocol::Framed {
            let len = here + then;
            let header = u32::try_from(len).map_err(|_| Error::MessageTooLarge {
                size: len,
                limit: MAX_FRAME_LEN,
                hint: "",
            })?;
            out.reserve(FRAME_HEADER_LEN + here);
            out.extend_from_slice(&header.to_be_bytes());
        } else {
            out.reserve(here);
        }
        for part in parts {
            out.extend_from_slice(part);
        }
        Ok(())
    }

    /// Appends the server's answer to `message` and says whether the session
    /// ends with it.
    ///
    /// # Errors
    ///
    /// As [`Codec::encode`].
    pub fn encode_reply(
        &self,
        prefix: &[u8],
        message: &[u8],
        out: &mut Vec<u8>,
    ) -> crate::Result<Reply> {
        if is_bye(message) {
            self.encode(&[BYE_REPLY.as_bytes()], out)?;
            Ok(Reply::Bye)
        } else {
            self.encode(&[prefix, message], out)?;
            Ok(Reply::Echo)
        }
    }

    /// Checks, before sending, that `message` will reach the server as one
    /// message and come back whole.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`]: in raw mode for more than `buffer_size`
    /// bytes (the server would cut it into several messages), in framed mode
    /// for more than `max_message_size`.
    pub fn check_outgoing(&self, message: &[u8]) -> crate::Result<()> {
        let (limit, hint) = match self.protocol {
            Protocol::Raw => (
                self.buffer_size,
                "; a raw message must fit one read, use protocol \"framed\" for larger messages",
            ),
            Protocol::Framed => (self.max_message_size, ""),
        };
        if message.len() > limit {
            return Err(Error::MessageTooLarge {
                size: message.len(),
                limit,
                hint,
            });
        }
        Ok(())
    }
}

/// What the server's answer to a message means for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An ordinary reply; the session goes on.
    Echo,
    /// The goodbye; the server closes the connection after sending it.
    Bye,
}

/// Checks raw replies to one known message as they arrive.
///
/// Raw replies carry no boundaries: a message the network delivered in
/// pieces is answered piece by piece, each piece behind its own prefix. Given
/// the message sent, this accepts any such cutting and nothing else. It needs
/// the message not to contain the prefix's first byte, so that a new prefix
/// can be told from message bytes; the load generator's payloads never do.
#[derive(Clone, Debug)]
pub struct RawReplies<'a> {
    prefix: &'a [u8],
    message: &'a [u8],
    /// Bytes of the current prefix matched so far.
    in_prefix: usize,
    /// Message bytes matched so far, across pieces.
    in_message: usize,
    /// Message bytes matched in the current piece.
    in_piece: usize,
}

/// Where checking raw replies stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawCheck {
    /// Every byte so far fits; more are due.
    Partial,
    /// The whole message has come back.
    Complete,
    /// A byte that no cutting of the message explains.
    Mismatch,
}

impl<'a> RawReplies<'a> {
    /// Starts checking the replies to `message`.
    pub fn new(prefix: &'a [u8], message: &'a [u8]) -> Self {
        RawReplies {
            prefix,
            message,
            in_prefix: 0,
            in_message: 0,
            in_piece: 0,
        }
    }

    /// Takes the next reply bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> RawCheck {
        for &b in bytes {
            if self.in_message == self.message.len() && self.in_prefix == self.prefix.len() {
                return RawCheck::Mismatch; // bytes past the end of the last piece
            }
            let starts_piece = self.in_prefix == self.prefix.len()
                && self.in_piece > 0
                && self.prefix.first() == Some(&b);
            if starts_piece {
                self.in_prefix = 1;
                self.in_piece = 0;
            } else if self.in_prefix < self.prefix.len() {
                if self.prefix[self.in_prefix] != b {
                    return RawCheck::Mismatch;
                }
                self.in_prefix += 1;
            } else if self.message[self.in_message] == b {
                self.in_message += 1;
                self.in_piece += 1;
            } else {
                return RawCheck::Mismatch;
            }
        }
        if self.in_message == self.message.len() && self.in_prefix == self.prefix.len() {
            RawCheck::Complete
        } else {
            RawCheck::Partial
        }
    }
}

fn decode_frame(buf: &[u8], limit: usize) -> crate::Result<Decoded> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(Decoded::Incomplete {
            needed: FRAME_HEADER_LEN - buf.len(),
        });
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len > limit {
        return Err(Error::MessageTooLarge {
            size: len,
            limit,
            hint: "",
        });
    }
    let end = FRAME_HEADER_LEN + len;
    if buf.len() < end {
        return Ok(Decoded::Incomplete {
            needed: end - buf.len(),
        });
    }
    Ok(Decoded::Message(Frame {
        payload: FRAME_HEADER_LEN..end,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(limit: usize) -> crate::Result<Codec> {
        Codec::new(Protocol::Framed, DEFAULT_BUFFER_SIZE, limit)
    }

    #[test]
    fn tls_records_are_recognised_and_replies_are_not() {
        assert!(looks_like_tls(b"\x15\x03\x03\x00\x02\x02\x32")); // an alert
        assert!(looks_like_tls(b"\x16\x03\x01\x02\x00")); // a handshake
        assert!(!looks_like_tls(b"Server received: hello"));
        assert!(!looks_like_tls(b"\x00\x00\x00\x05hello"));
        assert!(!looks_like_tls(b"\x16\x03"));
    }

    #[test]
    fn protocols_have_names_both_ways() -> crate::Result<()> {
        for protocol in [Protocol::Raw, Protocol::Framed] {
            assert_eq!(protocol.name().parse::<Protocol>()?, protocol);
            assert_eq!(protocol.to_string(), protocol.name());
        }
        assert_eq!(Protocol::Framed.name(), "framed");
        assert!("websocket".parse::<Protocol>().is_err());
        Ok(())
    }

    #[test]
    fn bye_ignores_case_and_surrounding_whitespace() -> crate::Result<()> {
        for yes in [&b"bye"[..], b"BYE", b" Bye\r\n", b"bye\n", b"\tbYe "] {
            assert!(is_bye(yes), "{yes:?}");
        }
        for no in [&b"by e"[..], b"byebye", b"", b"goodbye", b"bye."] {
            assert!(!is_bye(no), "{no:?}");
        }
        Ok(())
    }

    #[test]
    fn raw_cuts_at_buffer_size() -> crate::Result<()> {
        let codec = Codec::default();
        let buf = vec![b'x'; 2500];
        assert_eq!(
            codec.decode(&buf)?,
            Decoded::Message(Frame { payload: 0..1024 })
        );
        assert_eq!(
            codec.decode(&buf[..10])?,
            Decoded::Message(Frame { payload: 0..10 })
        );
        assert_eq!(codec.decode(b"")?, Decoded::Incomplete { needed: 1 });
        Ok(())
    }

    #[test]
    fn raw_reply_is_prefix_then_exact_bytes() -> crate::Result<()> {
        let mut out = Vec::new();
        let reply = Codec::default().encode_reply(b"P: ", b"\xff\xfe caf\xc3", &mut out)?;
        assert_eq!(reply, Reply::Echo);
        assert_eq!(out, b"P: \xff\xfe caf\xc3");
        Ok(())
    }

    #[test]
    fn framed_waits_for_header_and_payload() -> crate::Result<()> {
        let codec = framed(100)?;
        assert_eq!(codec.decode(b"\0\0")?, Decoded::Incomplete { needed: 2 });
        assert_eq!(
            codec.decode(b"\0\0\0\x05he")?,
            Decoded::Incomplete { needed: 3 }
        );
        assert_eq!(
            codec.decode(b"\0\0\0\x05hello+")?,
            Decoded::Message(Frame { payload: 4..9 })
        );
        assert_eq!(
            codec.decode(b"\0\0\0\0")?,
            Decoded::Message(Frame { payload: 4..4 })
        );
        Ok(())
    }

    #[test]
    fn framed_refuses_a_large_declared_length_from_the_header_alone() -> crate::Result<()> {
        let err = framed(100)?.decode(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(
            err,
            Error::MessageTooLarge {
                size: 0xffff_ffff,
                limit: 100,
                ..
            }
        ));
        Ok(())
    }

    #[test]
    fn framed_bye_is_framed() -> crate::Result<()> {
        let mut out = Vec::new();
        let reply = framed(100)?.encode_reply(b"P: ", b"BYE\n", &mut out)?;
        assert_eq!(reply, Reply::Bye);
        assert_eq!(&out[..4], &(BYE_REPLY.len() as u32).to_be_bytes());
        assert_eq!(&out[4..], BYE_REPLY.as_bytes());
        Ok(())
    }

    #[test]
    fn raw_replies_accept_any_cutting_of_the_message() {
        let check = |reply: &[u8]| RawReplies::new(b"P:", b"abcdef").feed(reply);
        assert_eq!(check(b"P:abcdef"), RawCheck::Complete);
        assert_eq!(check(b"P:abcP:def"), RawCheck::Complete);
        assert_eq!(check(b"P:aP:bP:cdeP:f"), RawCheck::Complete);
        assert_eq!(check(b"P:abc"), RawCheck::Partial);
        assert_eq!(check(b"P:abcP"), RawCheck::Partial);
        assert_eq!(check(b"P:abxdef"), RawCheck::Mismatch);
        assert_eq!(check(b"X:abcdef"), RawCheck::Mismatch);
        assert_eq!(check(b"P:abcdefg"), RawCheck::Mismatch);
        assert_eq!(check(b"P:P:abcdef"), RawCheck::Mismatch);
        let mut split = RawReplies::new(b"P:", b"abcdef");
        assert_eq!(split.feed(b"P:ab"), RawCheck::Partial);
        assert_eq!(split.feed(b"cP:d"), RawCheck::Partial);
        assert_eq!(split.feed(b"ef"), RawCheck::Complete);
        assert_eq!(RawReplies::new(b"", b"ab").feed(b"ab"), RawCheck::Complete);
    }

    #[test]
    fn outgoing_limits_depend_on_the_protocol() -> crate::Result<()> {
        assert!(Codec::default().check_outgoing(&[0; 1024]).is_ok());
        assert!(matches!(
            Codec::default().check_outgoing(&[0; 1025]),
            Err(Error::MessageTooLarge { limit: 1024, .. })
        ));
        assert!(framed(2048)?.check_outgoing(&[0; 2048]).is_ok());
        assert!(framed(2048)?.check_outgoing(&[0; 2049]).is_err());
        Ok(())
    }
}
