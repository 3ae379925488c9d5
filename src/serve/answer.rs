//! Answering the whole messages at the front of a connection's buffer: the
//! echo, written back with its prefix; the no-prefix pass-through, written
//! straight from the read buffer; or the handler's replies, made here and
//! written like the echo when a quick handler has a free lane, else one job
//! whose replies come back through the outbox. `bye` and refused frames are
//! answered here, never by the handler.

use std::io::IoSlice;
use std::ops::Range;

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

/// Echo replies on their way out: headers, prefixes and small payloads
/// copied into `out`; large payloads left where they were read, each
/// recorded with the point of `out` it follows, and written with it in one
/// `sendmsg`. A copy of 100 KiB can cost more than the `recv` and `send`
/// that move it: on the AMD EPYC (Zen 3) the benchmarks run on, glibc's
/// `memcpy` moves 2 GB/s instead of 45 when source and destination sit at
/// nearly the same offset in their pages, as two large allocations do.
#[derive(Default)]
struct Echoes {
    out: Vec<u8>,
    borrowed: Vec<(usize, Range<usize>)>,
    borrowed_len: usize,
}

impl Echoes {
    /// A payload this large is borrowed, not copied: a page, past which a
    /// copy costs more than the `iovec` that spares it. A flush of
    /// [`FLUSH_AT`] bytes then has at most 65 borrowed payloads, 131 parts,
    /// far below the limit on one `sendmsg` (1,024 on Linux and macOS).
    const BORROW_AT: usize = 4096;

    /// The payload at `payload` in the read buffer follows what `out` holds.
    fn borrow(&mut self, payload: Range<usize>) {
        self.borrowed_len += payload.len();
        self.borrowed.push((self.out.len(), payload));
    }

    /// Bytes of replies, borrowed ones included.
    fn len(&self) -> usize {
        self.out.len() + self.borrowed_len
    }
}

impl<S: Socket> Connection<'_, S> {
    /// Answers every whole message at the front of `inbuf` with the echo,
    /// at most `allowance` of them. A large payload is written from `inbuf`
    /// itself, beside its header and prefix, rather than copied into the
    /// reply (see [`Echoes`]); `inbuf` lets go of the messages once their
    /// replies are written.
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
        let mut echoes = Echoes::default();
        // How much of `inbuf` is answered, its replies not yet written.
        let mut answered = 0;
        let mut unflushed: u64 = 0;
        loop {
            if allowance.is_some_and(|max| batch.taken >= max) {
                batch.end = Some(End::Limit);
                break;
            }
            let frame = match codec.decode(&inbuf[answered..]) {
                Ok(Decoded::Message(frame)) => frame,
                Ok(Decoded::Incomplete { needed }) => {
                    batch.needed = needed;
                    break;
                }
                Err(e) => {
                    // The replies due first, then the refusal.
                    let written = self.flush_echoes(inbuf, &mut echoes, unflushed).await;
                    inbuf.advance(answered);
                    if written.is_ok() {
                        self.refuse(&e, Vec::new(), 0).await;
                    }
                    return Err(e);
                }
            };
            let payload = answered + frame.payload.start..answered + frame.payload.end;
            let message = &inbuf[payload.clone()];
            self.log_message(message);
            let prefix = shared.config.reply_prefix.as_slice();
            let reply = if message.len() >= Echoes::BORROW_AT && !is_bye(message) {
                codec.encode_head(&[prefix], message.len(), &mut echoes.out)?;
                echoes.borrow(payload);
                Reply::Echo
            } else {
                codec.encode_reply(prefix, message, &mut echoes.out)?
            };
            if reply == Reply::Bye {
                batch.end = Some(End::Bye);
            }
            answered += frame.consumed();
            batch.taken += 1;
            unflushed += 1;
            if batch.end.is_some() {
                break;
            }
            if echoes.len() >= FLUSH_AT {
                self.flush_echoes(inbuf, &mut echoes, unflushed).await?;
                inbuf.advance(answered);
                answered = 0;
                unflushed = 0;
            }
        }
        let written = self.flush_echoes(inbuf, &mut echoes, unflushed).await;
        inbuf.advance(answered);
        written?;
        Ok(batch)
    }

    /// Writes `echoes`, the replies to `messages` messages whose large
    /// payloads are still in `inbuf`, in one system call when the socket
    /// takes them; `echoes` is empty again after.
    async fn flush_echoes(
        &mut self,
        inbuf: &[u8],
        echoes: &mut Echoes,
        messages: u64,
    ) -> Result<()> {
        if echoes.borrowed.is_empty() {
            return self.flush(&mut echoes.out, messages).await;
        }
        // Boxed: a connection's task is as large as the largest future it
        // may await (`a_connection_task_stays_small`), and this one, for
        // payloads of a page or more, costs an allocation beside them.
        Box::pin(self.flush_borrowed(inbuf, echoes, messages)).await
    }

    async fn flush_borrowed(
        &mut self,
        inbuf: &[u8],
        echoes: &mut Echoes,
        messages: u64,
    ) -> Result<()> {
        let mut parts = Vec::with_capacity(2 * echoes.borrowed.len() + 1);
        let mut from = 0;
        for (at, payload) in &echoes.borrowed {
            // Two borrowed payloads in a row have nothing copied between them.
            if *at > from {
                parts.push(IoSlice::new(&echoes.out[from..*at]));
            }
            parts.push(IoSlice::new(&inbuf[payload.clone()]));
            from = *at;
        }
        if echoes.out.len() > from {
            parts.push(IoSlice::new(&echoes.out[from..]));
        }
        // Counted before the peer can see the replies, as `flush` does.
        self.shared.stats.answered(messages, echoes.len());
        let written = self.write_parts(&mut parts).await;
        *echoes = Echoes::default();
        written
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
            Ok(Unsent::From(n)) => self.write_rest(self.write_deadline(), &out[n..]).await,
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
