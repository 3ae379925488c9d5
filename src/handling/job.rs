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
//! failure, so its connection closes instead of waiting for ever.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use log::error;

use crate::address::py_address;
use crate::error::Error;
use crate::handling::outbox::Outbox;
use crate::protocol::{Codec, Protocol};

/// How replies are encoded: the server's codec, and the prefix of the echo a
/// handler asks for by answering nothing.
#[derive(Debug)]
pub(crate) struct Replies {
    pub codec: Codec,
    pub prefix: Vec<u8>,
}

/// Every whole message one connection has read, with the replies so far.
pub struct Job {
    peer: SocketAddr,
    data: Bytes,
    messages: Vec<Range<usize>>,
    /// How many messages have their reply in `out`.
    answered: usize,
    out: Vec<u8>,
    /// Why the job stopped before its last message.
    error: Option<Error>,
    replies: Arc<Replies>,
    /// Where the replies go; taken when the job is settled.
    outbox: Option<Arc<Outbox>>,
    /// When the job was handed over.
    since: Instant,
}

impl Job {
    /// A job of `messages` (ranges of `data`) from `peer`, whose replies go
    /// to `outbox`, which the caller has marked as having a job in flight.
    pub(crate) fn new(
        peer: SocketAddr,
        data: Bytes,
        messages: Vec<Range<usize>>,
        replies: Arc<Replies>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Job {
            peer,
            data,
            messages,
            answered: 0,
            out: Vec::new(),
            error: None,
            replies,
            outbox: Some(outbox),
            since: Instant::now(),
        }
    }

    /// The client's address (behind a proxy, the one its header gave).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Where the replies go, until the job is settled.
    pub(crate) fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.outbox.as_ref()
    }

    /// How many messages the job carries.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Does the job carry no message? (Never, as connections make them.)
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
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
            Ok(Some(reply)) => match self.refusal(reply) {
                None => self.replies.codec.encode(&[reply], &mut self.out),
                Some(refused) => {
                    error!(
                        target: "sockdemo::handler",
                        "Handler reply to {} refused: {refused}",
                        py_address(self.peer)
                    );
                    Err(refused)
                }
            },
            Ok(None) => {
                let echo = [self.replies.prefix.as_slice(), &self.data[range]];
                self.replies.codec.encode(&echo, &mut self.out)
            }
            Err(e) => Err(Error::Handler(e)),
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

    /// Stops the job: the replies so far go out, then the connection closes
    /// with `error`.
    pub fn fail(&mut self, error: Error) {
        self.error.get_or_insert(error);
    }

    /// What the protocol cannot carry: an empty raw message (the client
    /// would wait for ever) and a framed one over the size limit (the client
    /// would have to refuse it).
    fn refusal(&self, reply: &[u8]) -> Option<Error> {
        let codec = &self.replies.codec;
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

    /// Delivers the replies to the connection; with `write`, straight into
    /// its socket when it can take them (see `outbox`). A job that stopped
    /// short without saying why (it was settled before its last reply)
    /// closes its connection.
    pub fn settle(mut self, write: bool) {
        self.deliver(write);
    }

    fn deliver(&mut self, write: bool) {
        let Some(outbox) = self.outbox.take() else {
            return;
        };
        if self.error.is_none() && self.answered < self.messages.len() {
            self.error = Some(Error::Handler(
                "the handler stopped before answering every message".into(),
            ));
        }
        let out = std::mem::take(&mut self.out);
        let took = self.since.elapsed();
        outbox.deliver(out, self.answered as u64, self.error.take(), write, took);
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
            .field("peer", &self.peer)
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
        let data: Vec<u8> = messages.concat();
        let mut at = 0;
        let ranges = messages
            .iter()
            .map(|m| {
                at += m.len();
                at - m.len()..at
            })
            .collect();
        let replies = Arc::new(Replies {
            codec: Codec::new(protocol, 1024, 8).expect("codec"), // valid sizes: test only
            prefix: b"> ".to_vec(),
        });
        let stats = Arc::new(Stats::default());
        let outbox = Arc::new(Outbox::new(None, false, stats.clone()));
        outbox.begin();
        let job = Job::new(
            ([127, 0, 0, 1], 5555).into(),
            Bytes::from(data),
            ranges,
            replies,
            outbox.clone(),
        );
        (job, Pending { outbox, stats })
    }

    impl Pending {
        /// What was delivered so far, without waiting.
        pub fn take(&self) -> crate::handling::outbox::Delivered {
            self.outbox.take()
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
    use super::testing::{job, wait};
    use super::*;

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
