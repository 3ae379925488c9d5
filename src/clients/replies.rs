//! What a client makes of a reply: the codec it reads with, and the checks
//! that turn a server speaking the other protocol (or TLS) into a plain
//! error instead of garbage.

use std::net::SocketAddr;

use super::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{Codec, Decoded};

/// How much larger than `max_message_size` a reply may be: room for the
/// server's prefix around an echoed message of the largest size.
const REPLY_ALLOWANCE: usize = 64 * 1024;

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
