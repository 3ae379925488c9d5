//! A job: every whole message one connection has read, handed to whatever
//! runs the handler, and the replies it collects on the way back.
//!
//! Two runners take jobs: the pool of handler threads (`pool`) and an
//! event loop fed through a [`LoopBridge`](crate::handling::bridge::LoopBridge). Both go
//! through the same three steps, so the rules of a reply are written once:
//!
//! 1. [`Job::next`] is the message waiting for its reply;
//! 2. [`Job::answer`] encodes the handler's reply to it, refusing what the
//!    protocol cannot carry, and tells whether to go on;
//! 3. [`Job::settle`] delivers the replies to the connection's outbox.
//!
//! A job dropped before it is settled (its runner went away: a thread that
//! could not start, an event loop that closed) settles itself with a
//! failure, so its connection closes instead of waiting for ever. A session
//! server also hands over a job with no message when a connection opens and
//! when it closes ([`Stage`]), so that its hooks run in order with the rest.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use log::error;

use crate::address::py_address;
use crate::error::Error;
use crate::handling::conn::{Conn, encode};
use crate::handling::outbox::Outbox;
use crate::protocol::{Codec, Protocol};

/// How replies are encoded: the server's codec, and the prefix of the echo a
/// handler asks for by answering nothing.
#[derive(Debug)]
pub(crate) struct Replies {
    pub codec: Codec,
    pub prefix: Vec<u8>,
    /// A session answers: nothing is added to what it sends (no echo for
    /// `None`), and each reply leaves at once, in order with its pushes.
    pub session: bool,
}

impl Replies {
    /// Encodes a plain handler's `reply` to `message` from `peer` into
    /// `out`: the bytes it returned, or the echo for `None`. Refuses what the
    /// protocol cannot carry, and turns a failure (which the handler has
    /// logged) into the error that closes the connection.
    pub fn encode(
        &self,
        peer: SocketAddr,
        message: &[u8],
        reply: Result<Option<&[u8]>, String>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        match reply {
            Ok(Some(reply)) => match self.refusal(reply) {
                None => self.codec.encode(&[reply], out),
                Some(refused) => {
                    error!(
                        target: "sockdemo::handler",
                        "Handler reply to {} refused: {refused}",
                        py_address(peer)
                    );
                    Err(refused)
                }
            },
            Ok(None) => self.codec.encode(&[self.prefix.as_slice(), message], out),
            Err(e) => Err(Error::Handler(e)),
        }
    }

    /// What the protocol cannot carry: an empty raw message (the client
    /// would wait for ever) and a framed one over the size limit (the client
    /// would have to refuse it).
    fn refusal(&self, reply: &[u8]) -> Option<Error> {
        let codec = &self.codec;
        match codec.protocol() {
            Protocol::Raw if reply.is_empty() => Some(Error::Handler(
                "the handler returned an empty reply, which the raw protocol cannot carry".into(),
            )),
            Protocol::Framed if reply.len() > codec.max_message_size() => {
                Some(Error::MessageTooLarge {
                    size: reply.len(),
                    limit: codec.max_message_size(),
                    hint: " (the handler's reply)",
                })
            }
            _ => None,
        }
    }
}

/// What a job asks of the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The connection has opened (sessions only): no message yet.
    Open,
    /// Answer the messages.
    Messages,
    /// The connection has closed (sessions only): no message any more.
    Close,
}

/// Every whole message one connection has read, with the replies so far.
pub struct Job {
    conn: Arc<Conn>,
    stage: Stage,
    data: Bytes,
    messages: Vec<Range<usize>>,
    /// How many messages have their reply in `out`.
    answered: usize,
    out: Vec<u8>,
    /// Why the job stopped before its last message.
    error: Option<Error>,
    replies: Arc<Replies>,
    /// The replies have gone to the connection's outbox.
    settled: bool,
    /// A session's replies are written at once by whoever answers (else
    /// queued for the connection to write).
    write_now: bool,
    /// When the job was handed over.
    since: Instant,
}

impl Job {
    /// A job of `messages` (ranges of `data`) from `conn`, whose outbox the
    /// caller has marked as having a job in flight.
    pub(crate) fn new(
        conn: Arc<Conn>,
        stage: Stage,
        data: Bytes,
        messages: Vec<Range<usize>>,
        replies: Arc<Replies>,
    ) -> Self {
        Job {
            conn,
            stage,
            data,
            messages,
            answered: 0,
            out: Vec::new(),
            error: None,
            replies,
            settled: false,
            write_now: true,
            since: Instant::now(),
        }
    }

    /// Whether a session's replies are written by whoever answers, at once
    /// (the default), or queued for the connection's network thread: a pool
    /// with a backlog spares its own time for the next job.
    pub fn write_now(&mut self, now: bool) {
        self.write_now = now;
    }

    /// What the job asks of the handler.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The connection the job came from.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// The client's address (behind a proxy, the one its header gave).
    pub fn peer(&self) -> SocketAddr {
        self.conn.peer()
    }

    /// Where the replies go, until the job is settled.
    pub(crate) fn outbox(&self) -> Option<&Arc<Outbox>> {
        (!self.settled).then(|| self.conn.outbox())
    }

    /// How many messages the job carries.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Does the job carry no message? (Never, as connections make them.)
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Every message of the job, answered or not.
    pub fn messages(&self) -> impl Iterator<Item = &[u8]> {
        self.messages.iter().map(|range| &self.data[range.clone()])
    }

    /// The message waiting for its reply; `None` once every message is
    /// answered or the job has failed.
    pub fn next(&self) -> Option<&[u8]> {
        if self.error.is_some() {
            return None;
        }
        let range = self.messages.get(self.answered)?;
        Some(&self.data[range.clone()])
    }

    /// Records the handler's reply to [`Job::next`]: the bytes to send,
    /// `Ok(None)` for the echo, or `Err` with a description when the handler
    /// failed (it has logged the details). Returns whether to go on with the
    /// next message; after a failure, or a reply the protocol cannot carry,
    /// the job stops and its connection closes once the replies before are
    /// out.
    pub fn answer(&mut self, reply: Result<Option<&[u8]>, String>) -> bool {
        let Some(range) = self.messages.get(self.answered).cloned() else {
            return false;
        };
        if self.error.is_some() {
            return false;
        }
        let encoded = match reply {
            Ok(Some(reply)) if self.replies.session => self.send(reply),
            Ok(None) if self.replies.session => Ok(()),
            reply => {
                let message = &self.data[range];
                self.replies
                    .encode(self.conn.peer(), message, reply, &mut self.out)
            }
        };
        match encoded {
            Ok(()) => {
                self.answered += 1;
                self.answered < self.messages.len()
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// Sends a session's reply at once, so that it leaves in order with what
    /// the session pushes while answering the next message.
    fn send(&self, reply: &[u8]) -> Result<(), Error> {
        let mut encoded = Vec::new();
        if let Err(refused) = encode(&self.replies.codec, reply, &mut encoded) {
            error!(
                target: "sockdemo::handler",
                "Session reply to {} refused: {refused}",
                py_address(self.peer())
            );
            return Err(refused);
        }
        // A connection already closing has no use for it.
        self.conn.outbox().push(&encoded, self.write_now);
        Ok(())
    }

    /// Stops the job: the replies so far go out, then the connection closes
    /// with `error`.
    pub fn fail(&mut self, error: Error) {
        self.error.get_or_insert(error);
    }

    /// Delivers the replies to the connection; with `write`, straight into
    /// its socket when it can take them (see `outbox`). A job that stopped
    /// short without saying why (it was settled before its last reply)
    /// closes its connection.
    pub fn settle(mut self, write: bool) {
        self.deliver(write);
    }

    fn deliver(&mut self, write: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let outbox = self.conn.outbox().clone();
        if self.error.is_none() && self.answered < self.messages.len() {
            self.error = Some(Error::Handler(
                "the handler stopped before answering every message".into(),
            ));
        }
        let out = std::mem::take(&mut self.out);
        outbox.deliver(
            out,
            self.answered as u64,
            self.error.take(),
            write,
            self.since,
        );
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // A runner that went away: the connection must not wait for ever.
        self.deliver(false);
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("conn", &self.conn)
            .field("stage", &self.stage)
            .field("messages", &self.messages.len())
            .field("answered", &self.answered)
            .finish_non_exhaustive()
    }
}

/// Jobs without a connection, for the runners' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::stats::Stats;

    /// A job in flight, as its connection sees it.
    pub struct Pending {
        outbox: Arc<Outbox>,
        stats: Arc<Stats>,
    }

    /// The replies to a job, as its connection received them.
    #[derive(Debug)]
    pub struct Answer {
        pub out: Vec<u8>,
        pub answered: u64,
        pub error: Option<Error>,
    }

    /// A job of `messages`, replies encoded for `protocol` (messages up to 8
    /// bytes, echo prefix "> "), with no socket: everything is handed back,
    /// as under TLS.
    pub fn job(protocol: Protocol, messages: &[&[u8]]) -> (Job, Pending) {
        made(protocol, messages, false)
    }

    /// As [`job`], for a session: its replies are sent as they are made.
    pub fn session_job(protocol: Protocol, messages: &[&[u8]]) -> (Job, Pending) {
        made(protocol, messages, true)
    }

    fn made(protocol: Protocol, messages: &[&[u8]], session: bool) -> (Job, Pending) {
        let data: Vec<u8> = messages.concat();
        let mut at = 0;
        let ranges = messages
            .iter()
            .map(|m| {
                at += m.len();
                at - m.len()..at
            })
            .collect();
        let codec = Codec::new(protocol, 1024, 8).expect("codec"); // valid sizes: test only
        let replies = Arc::new(Replies {
            codec,
            prefix: b"> ".to_vec(),
            session,
        });
        let stats = Arc::new(Stats::default());
        let outbox = Arc::new(Outbox::new(None, false, stats.clone(), 1 << 20));
        outbox.begin();
        let conn = Arc::new(Conn::new(
            1,
            ([127, 0, 0, 1], 5555).into(),
            codec,
            outbox.clone(),
        ));
        let job = Job::new(conn, Stage::Messages, Bytes::from(data), ranges, replies);
        (job, Pending { outbox, stats })
    }

    impl Pending {
        /// What was delivered so far, without waiting.
        pub fn take(&self) -> crate::handling::outbox::Delivered {
            self.outbox.take()
        }

        /// Has the connection been closed (nothing pushed goes out)?
        pub fn is_closed(&self) -> bool {
            matches!(
                self.outbox.push(b"", false),
                crate::handling::outbox::Pushed::Gone
            )
        }
    }

    /// Waits for the job to be settled.
    pub fn wait(pending: Pending) -> crate::Result<Answer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let delivered = runtime.block_on(pending.outbox.settled());
        Ok(Answer {
            answered: pending.stats.snapshot().messages,
            out: delivered.unwritten,
            error: delivered.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{job, session_job, wait};
    use super::*;

    #[test]
    fn replies_are_encoded_in_order_and_the_last_one_says_stop() -> crate::Result<()> {
        let (mut job, pending) = job(Protocol::Raw, &[b"ab", b"cd"]);
        assert!(!job.is_empty());
        assert_eq!(job.messages().collect::<Vec<_>>(), [b"ab", b"cd"]);
        // Until settled, the pool can reach the connection (to cut it off
        // if the handler is stuck).
        assert!(job.outbox().is_some());
        assert_eq!(job.next(), Some(&b"ab"[..]));
        assert!(job.answer(Ok(Some(b"AB"))), "one message is left");
        assert_eq!(job.next(), Some(&b"cd"[..]));
        assert!(!job.answer(Ok(None)), "none is left");
        assert_eq!(job.next(), None);
        job.settle(true);
        let answer = wait(pending)?;
        assert_eq!(answer.out, b"AB> cd");
        assert_eq!(answer.answered, 2);
        assert!(answer.error.is_none());
        let (empty, _pending) = super::testing::job(Protocol::Raw, &[]);
        assert!(empty.is_empty());
        Ok(())
    }

    #[test]
    fn a_session_reply_leaves_at_once_in_order_with_its_pushes() -> crate::Result<()> {
        let (mut job, pending) = session_job(Protocol::Raw, &[b"ab", b"cd"]);
        assert!(job.answer(Ok(Some(b"AB"))));
        job.conn().send(b"+push")?;
        // No reply is no reply: a session owes none.
        assert!(!job.answer(Ok(None)));
        assert_eq!(pending.take().unwritten, b"AB+push");
        job.settle(true);
        let answer = wait(pending)?;
        assert!(answer.out.is_empty() && answer.error.is_none());
        // A reply the protocol cannot carry stops the session's job.
        let (mut job, pending) = session_job(Protocol::Raw, &[b"ab"]);
        assert!(!job.answer(Ok(Some(b""))));
        job.settle(true);
        assert!(matches!(
            wait(pending)?.error,
            Some(Error::InvalidArgument(_))
        ));
        Ok(())
    }

    #[test]
    fn a_failed_job_stops_and_its_connection_closes_with_the_reason() -> crate::Result<()> {
        let (mut job, pending) = job(Protocol::Raw, &[b"ab", b"cd"]);
        assert!(job.answer(Ok(Some(b"AB"))));
        job.fail(Error::Protocol("gone wrong".into()));
        assert_eq!(job.next(), None);
        job.settle(true);
        let answer = wait(pending)?;
        assert_eq!(answer.out, b"AB");
        assert!(matches!(answer.error, Some(Error::Protocol(e)) if e == "gone wrong"));
        Ok(())
    }

    #[test]
    fn a_dropped_job_closes_its_connection() -> crate::Result<()> {
        let (mut job, pending) = job(Protocol::Raw, &[b"ab", b"cd"]);
        assert!(job.answer(Ok(Some(b"AB"))));
        drop(job);
        let answer = wait(pending)?;
        assert_eq!(answer.out, b"AB");
        assert_eq!(answer.answered, 1);
        assert!(matches!(answer.error, Some(Error::Handler(_))));
        Ok(())
    }

    #[test]
    fn no_reply_is_recorded_after_a_failure() -> crate::Result<()> {
        let (mut job, pending) = job(Protocol::Raw, &[b"ab", b"cd"]);
        assert!(!job.answer(Err("broken".into())));
        assert_eq!(job.next(), None);
        assert!(!job.answer(Ok(Some(b"CD"))));
        job.settle(true);
        let answer = wait(pending)?;
        assert!(answer.out.is_empty());
        assert!(matches!(answer.error, Some(Error::Handler(e)) if e == "broken"));
        Ok(())
    }
}
