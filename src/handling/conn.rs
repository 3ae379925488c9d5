//! A connection as the code that answers it sees it: who the client is,
//! how to send to it at any time, and the state a session keeps for it.
//!
//! A [`Conn`] is shared by the connection's task, the jobs it hands over,
//! and whoever holds it to push later (a session's timer thread, a
//! broadcast). Everything it sends goes through the connection's outbox, so
//! pushes and replies leave in the order they were made.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::handling::outbox::{Outbox, Pushed};
use crate::protocol::{Codec, Protocol};

/// One connection, for the code that answers it.
pub struct Conn {
    id: u64,
    peer: SocketAddr,
    codec: Codec,
    outbox: Arc<Outbox>,
    /// What a session keeps for this connection (the Python object, say).
    state: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Conn {
    pub(crate) fn new(id: u64, peer: SocketAddr, codec: Codec, outbox: Arc<Outbox>) -> Self {
        Conn {
            id,
            peer,
            codec,
            outbox,
            state: OnceLock::new(),
        }
    }

    /// The connection's number, unique within its server.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address (behind a proxy, the one its header gave).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Sends `message` to the client, after everything sent before, without
    /// waiting. Returns `false` once the connection is closing or gone
    /// (including when this message would have put it past the server's
    /// bound on unsent bytes: it is then closed as a slow reader).
    ///
    /// # Errors
    ///
    /// A message the protocol cannot carry: an empty raw message, a framed
    /// one over the size limit.
    pub fn send(&self, message: &[u8]) -> Result<bool> {
        let mut encoded = Vec::new();
        encode(&self.codec, message, &mut encoded)?;
        Ok(self.outbox.push(&encoded, true) == Pushed::Sent)
    }

    /// Queues bytes already encoded (a broadcast's), telling whether they
    /// were taken.
    pub(crate) fn push_encoded(&self, encoded: &[u8]) -> bool {
        self.outbox.push(encoded, false) == Pushed::Sent
    }

    /// Bytes sent that the client has not taken yet, queued in the server.
    pub fn pending(&self) -> usize {
        self.outbox.pending()
    }

    /// Closes the connection once what was sent before it is out.
    pub fn close(&self) {
        self.outbox.end();
    }

    /// Keeps `state` for this connection; `false` if some was kept already.
    pub fn set_state(&self, state: Box<dyn Any + Send + Sync>) -> bool {
        self.state.set(state).is_ok()
    }

    /// The state kept for this connection, if it is a `T`.
    pub fn state<T: Any>(&self) -> Option<&T> {
        self.state.get()?.downcast_ref()
    }
}

/// Encodes one message a session sends, refusing what the protocol cannot
/// carry.
pub(crate) fn encode(codec: &Codec, message: &[u8], out: &mut Vec<u8>) -> Result<()> {
    match codec.protocol() {
        Protocol::Raw if message.is_empty() => Err(Error::invalid(
            "the raw protocol cannot carry an empty message",
        )),
        Protocol::Framed if message.len() > codec.max_message_size() => {
            Err(Error::MessageTooLarge {
                size: message.len(),
                limit: codec.max_message_size(),
                hint: "",
            })
        }
        _ => codec.encode(&[message], out),
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(protocol: Protocol, max_pending: usize) -> Result<Conn> {
        let codec = Codec::new(protocol, 1024, 16)?;
        // No socket: everything sent is queued for the connection to write.
        let outbox = Outbox::new(None, false, Arc::default(), max_pending);
        let peer = ([127, 0, 0, 1], 5000).into();
        Ok(Conn::new(7, peer, codec, Arc::new(outbox)))
    }

    #[test]
    fn sends_are_encoded_for_the_protocol_and_queued_in_order() -> Result<()> {
        let framed = conn(Protocol::Framed, 1024)?;
        assert_eq!(framed.id(), 7);
        assert!(framed.send(b"hi")?);
        assert!(framed.push_encoded(b"\0\0\0\x01!"));
        assert_eq!(framed.pending(), 6 + 5);
        assert_eq!(framed.outbox().take().unwritten, b"\0\0\0\x02hi\0\0\0\x01!");
        // Exactly the limit is carried; one byte more is refused, and
        // nothing is queued for it.
        assert!(framed.send(&[b'x'; 16])?);
        assert!(matches!(
            framed.send(&[b'x'; 17]),
            Err(Error::MessageTooLarge {
                size: 17,
                limit: 16,
                ..
            })
        ));
        assert_eq!(framed.pending(), 20);
        // An empty frame is a message like any other.
        assert!(framed.send(b"")?);

        let raw = conn(Protocol::Raw, 1024)?;
        assert!(raw.send(&[b'y'; 40])?, "raw has no frame limit");
        assert!(matches!(raw.send(b""), Err(Error::InvalidArgument(_))));
        assert_eq!(raw.pending(), 40);
        Ok(())
    }

    #[test]
    fn a_closed_or_overfull_connection_takes_nothing_more() -> Result<()> {
        let slow = conn(Protocol::Raw, 4)?;
        assert!(!slow.send(b"12345")?, "past the bound");
        assert!(!slow.send(b"1")?);
        assert!(!slow.push_encoded(b"1"));
        let closing = conn(Protocol::Raw, 1024)?;
        assert!(closing.send(b"last")?);
        closing.close();
        assert!(!closing.send(b"late")?);
        assert!(closing.outbox().take().ended);
        Ok(())
    }

    #[test]
    fn state_is_kept_once() -> Result<()> {
        let conn = conn(Protocol::Raw, 1024)?;
        assert!(conn.state::<String>().is_none());
        assert!(conn.set_state(Box::new(String::from("alice"))));
        assert!(!conn.set_state(Box::new(String::from("bob"))));
        assert_eq!(conn.state::<String>().map(String::as_str), Some("alice"));
        assert!(conn.state::<u32>().is_none());
        Ok(())
    }
}
