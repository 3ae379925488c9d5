//! Answering the whole messages at the front of a connection's buffer: the
//! echo, written back with its prefix; the no-prefix pass-through, written
//! straight from the read buffer; or the handler's replies, made here and
//! written like the echo when a quick handler has a free lane, else one job
//! whose replies come back through the outbox. `bye` and refused frames are
//! answered here, never by the handler.

use bytes::{Buf, BytesMut};
use log::log;

use super::connection::{Batch, Connection, End, FLUSH_AT};
use crate::error::{Error, Result};
use crate::handling::job::Stage;
use crate::handling::runner::{Answered, Runner};
use crate::protocol::{BYE_REPLY, Decoded, Protocol, Reply, is_bye};
use crate::socket::Socket;

/// What is left of the replies a handler made on the connection's thread
/// once the socket has taken what it takes at once.
enum Unsent {
    /// Nothing: all written.
    Nothing,
    /// They wait in the outbox, behind what the handler sent.
    Queued,
    /// Everything from this offset on.
    From(usize),
}

impl<S: Socket> Connection<'_, S> {
    /// Answers every whole message at the front of `inbuf` with the echo,
    /// at most `allowance` of them.
    pub(super) async fn echo(
        &mut self,
        inbuf: &mut BytesMut,
        allowance: Option<u64>,
    ) -> Result<Batch> {
        if let Some(batch) = self.pass_through(inbuf, allowance).await? {
            return Ok(batch);
        }
        let shared = self.shared;
        let codec = &shared.codec;
        let mut batch = Batch::default();
        let mut out = Vec::new();
        let mut unflushed: u64 = 0;
        loop {
            if allowance.is_some_and(|max| batch.taken >= max) {
                batch.end = Some(End::Limit);
                break;
            }
            let frame = match codec.decode(inbuf) {
                Ok(Decoded::Message(frame)) => frame,
                Ok(Decoded::Incomplete { needed }) => {
                    batch.needed = needed;
                    break;
                }
                Err(e) => {
                    self.refuse(&e, out, unflushed).await;
                    return Err(e);
                }
            };
            let message = &inbuf[frame.payload.clone()];
            self.log_message(message);
            if codec.encode_reply(&shared.config.reply_prefix, message, &mut out)? == Reply::Bye {
                batch.end = Some(End::Bye);
            }
            inbuf.advance(frame.consumed());
            batch.taken += 1;
            unflushed += 1;
            if batch.end.is_some() {
                break;
            }
            if out.len() >= FLUSH_AT {
                self.flush(&mut out, unflushed).await?;
                unflushed = 0;
            }
        }
        self.flush(&mut out, unflushed).await?;
        Ok(batch)
    }

    /// Raw with no prefix, the replies are the bytes read, cut as a raw read
    /// would have cut them: written back from the read buffer as they are,
    /// in one write, unless one of them is a `bye` (or a message limit or
    /// per-message logging asks for the messages one by one).
    pub(super) async fn pass_through(
        &mut self,
        inbuf: &mut BytesMut,
        allowance: Option<u64>,
    ) -> Result<Option<Batch>> {
        let shared = self.shared;
        let codec = &shared.codec;
        if codec.protocol() != Protocol::Raw
            || !shared.config.reply_prefix.is_empty()
            || allowance.is_some()
            || self.log_messages
            || inbuf.is_empty()
        {
            return Ok(None);
        }
        let size = codec.buffer_size();
        if inbuf.chunks(size).any(is_bye) {
            return Ok(None);
        }
        let messages = inbuf.len().div_ceil(size) as u64;
        // Counted before the peer can see the replies, as `flush` does.
        shared.stats.answered(messages, inbuf.len());
        self.write(inbuf).await?;
        inbuf.clear();
        Ok(Some(Batch {
            taken: messages,
            ..Batch::default()
        }))
    }

    /// Hands every whole message at the front of `inbuf` (at most
    /// `allowance`, and none past a `bye`) to the handler as one job, and
    /// writes its answer; answers the `bye` itself.
    pub(super) async fn dispatch(
        &mut self,
        runner: &Runner,
        inbuf: &mut BytesMut,
        allowance: Option<u64>,
    ) -> Result<Batch> {
        let shared = self.shared;
        let codec = &shared.codec;
        let mut batch = Batch::default();
        let mut messages = Vec::new();
        let mut cut = 0;
        let mut bye = false;
        let mut refused = None;
        loop {
            if allowance.is_some_and(|max| messages.len() as u64 >= max) {
                batch.end = Some(End::Limit);
                break;
            }
            let frame = match codec.decode(&inbuf[cut..]) {
                Ok(Decoded::Message(frame)) => frame,
                Ok(Decoded::Incomplete { needed }) => {
                    batch.needed = needed;
                    break;
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            };
            let payload = cut + frame.payload.start..cut + frame.payload.end;
            cut += frame.consumed();
            let message = &inbuf[payload.clone()];
            self.log_message(message);
            // A session owns its protocol: `bye` is a message like any other.
            if !runner.is_session() && is_bye(message) {
                bye = true;
                break;
            }
            messages.push(payload);
        }
        batch.taken = messages.len() as u64;
        if messages.is_empty() {
            inbuf.advance(cut);
        } else {
            // One job in flight per connection: replies stay in order.
            // (Asked here as well as inside `settle`, so that the usual
            // answer, with nothing owed, enters no await at all.)
            if self.owes() {
                self.settle().await?;
            }
            let conn = self.conn();
            let mut out = Vec::new();
            match runner.answer_now(conn, &inbuf[..cut], &messages, &mut out) {
                Some(answered) => {
                    inbuf.advance(cut);
                    // Written at once, with no failure to report: the usual
                    // case needs no waiting at all.
                    let unsent = self.send_answered(runner, &answered, &out);
                    if !matches!(unsent, Ok(Unsent::Nothing)) || answered.error.is_some() {
                        // Boxed, being rare (see `Connection::refuse`).
                        Box::pin(self.finish_answered(unsent, answered.error, out)).await?;
                    }
                }
                None => {
                    let conn = conn.clone();
                    let data = inbuf.split_to(cut).freeze();
                    self.hand_over(runner, conn, Stage::Messages, data, messages);
                }
            }
        }
        if bye || refused.is_some() || batch.end.is_some() {
            // What ends the session goes out after every reply owed.
            self.settle().await?;
        }
        let mut out = Vec::new();
        if bye {
            codec.encode(&[BYE_REPLY.as_bytes()], &mut out)?;
            batch.taken += 1;
            batch.end = Some(End::Bye);
            self.flush(&mut out, 1).await?;
        }
        if let Some(e) = refused {
            self.refuse(&e, out, 0).await;
            return Err(e);
        }
        Ok(batch)
    }

    /// Sends the replies a plain handler made on this thread
    /// ([`Runner::answer_now`]) as far as that needs no waiting: behind
    /// anything its calls queued in the outbox, else straight into the
    /// socket, as much as it takes at once. Then the jobs other connections
    /// queued meanwhile are answered, before this connection waits for
    /// anything. The rest is [`Connection::finish_answered`]'s.
    fn send_answered(
        &mut self,
        runner: &Runner,
        answered: &Answered,
        out: &[u8],
    ) -> Result<Unsent> {
        let stats = &self.shared.stats;
        stats.handled(answered.took);
        let queued = self
            .outbox()
            .is_some_and(|outbox| outbox.queue_behind(out, answered.messages));
        let unsent = if queued {
            Ok(Unsent::Queued)
        } else {
            // Counted before the peer can see the replies, as `flush` does.
            stats.answered(answered.messages, out.len());
            match self.transport.write_now(out) {
                Ok(n) if n < out.len() => Ok(Unsent::From(n)),
                Ok(_) => Ok(Unsent::Nothing),
                Err(e) => Err(e.into()),
            }
        };
        if answered.left {
            runner.answer_left();
        }
        unsent
    }

    /// Writes what [`Connection::send_answered`] could not send at once,
    /// then reports `error`, the failure that stopped the answers, if any.
    async fn finish_answered(
        &mut self,
        unsent: Result<Unsent>,
        error: Option<Error>,
        out: Vec<u8>,
    ) -> Result<()> {
        let written = match unsent {
            Ok(Unsent::Nothing) => Ok(()),
            Ok(Unsent::Queued) => {
                let delivered = self.outbox().map(|o| o.take()).unwrap_or_default();
                self.absorb(delivered).await
            }
            Ok(Unsent::From(n)) => self.write_rest(&out[n..]).await,
            Err(e) => Err(e),
        };
        self.report(written, error).await
    }

    pub(super) fn log_message(&self, message: &[u8]) {
        let level = self.shared.message_level;
        if self.log_messages {
            let text = String::from_utf8_lossy(message);
            log!(
                level,
                "Received from client: {}",
                text.trim_end_matches(['\r', '\n'])
            );
        }
    }
}
