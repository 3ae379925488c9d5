//! Who runs a server's handler: a pool of threads, or an event loop.
//!
//! A server built with [`RunOn::Pool`] runs a [`Handler`] on its own
//! pool of handler threads (`pool`); one built with [`RunOn::Loop`]
//! queues its jobs in a [`LoopBridge`] for an event loop that some other code
//! runs (`sockdemo.aio` runs asyncio's). Connections and the server see one
//! `Runner` either way: they submit jobs, and open and close it with the
//! server.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::handling::bridge::LoopBridge;
use crate::handling::conn::Conn;
use crate::handling::handler::Handler;
use crate::handling::job::{Job, Replies, Stage};
pub(crate) use crate::handling::pool::Answered;
use crate::handling::pool::Pool;
use crate::handling::reactor::Reactor;
use crate::protocol::Codec;
use crate::stats::Load;

/// How a server runs its handler.
#[derive(Clone)]
pub enum RunOn {
    /// On a pool of handler threads, at most `Config::handler_threads`.
    Pool(Arc<dyn Handler>),
    /// On an event loop that takes the jobs from this bridge.
    Loop(Arc<LoopBridge>),
}

impl From<Arc<dyn Handler>> for RunOn {
    fn from(handler: Arc<dyn Handler>) -> Self {
        RunOn::Pool(handler)
    }
}

/// A server's handler runner, shared by its connections.
pub(crate) struct Runner {
    replies: Arc<Replies>,
    kind: Kind,
}

enum Kind {
    Pool(Pool),
    Loop(Arc<LoopBridge>),
}

impl Runner {
    /// Runs as `handling` says, with at most `max_threads` handler calls at
    /// once on a server of `network_threads`; replies are encoded with
    /// `codec`, and `prefix` makes the echo a handler asks for by answering
    /// nothing.
    pub fn new(
        handling: RunOn,
        codec: Codec,
        prefix: Vec<u8>,
        max_threads: usize,
        network_threads: usize,
    ) -> Self {
        let kind = match handling {
            RunOn::Pool(handler) => Kind::Pool(Pool::new(handler, max_threads, network_threads)),
            RunOn::Loop(bridge) => Kind::Loop(bridge),
        };
        let session = match &kind {
            Kind::Pool(pool) => pool.is_session(),
            Kind::Loop(bridge) => bridge.is_session(),
        };
        Runner {
            replies: Arc::new(Replies {
                codec,
                prefix,
                session,
            }),
            kind,
        }
    }

    /// Does the handler hold a session per connection?
    pub fn is_session(&self) -> bool {
        self.replies.session
    }

    /// Hands over `messages` (ranges of `data`) from `conn`, at `stage`;
    /// the caller has marked its outbox as having a job in flight.
    pub fn submit(&self, conn: Arc<Conn>, stage: Stage, data: Bytes, messages: Vec<Range<usize>>) {
        let job = Job::new(conn, stage, data, messages, self.replies.clone());
        match &self.kind {
            Kind::Pool(pool) => pool.submit(job),
            Kind::Loop(bridge) => bridge.submit(job),
        }
    }

    /// Answers `messages` (ranges of `data`) from `conn` on this network
    /// thread, with no hand-over, when a plain handler runs on a pool and a
    /// lane is free (see [`Pool::answer_now`]); the replies are appended to
    /// `out`, for the caller to write. `None`: submit a job instead.
    pub fn answer_now(
        &self,
        conn: &Conn,
        data: &[u8],
        messages: &[Range<usize>],
        out: &mut Vec<u8>,
    ) -> Option<Answered> {
        match &self.kind {
            Kind::Pool(pool) if !self.replies.session => {
                pool.answer_now(conn, data, messages, &self.replies, out)
            }
            _ => None,
        }
    }

    /// Sees to the jobs [`Runner::answer_now`] left queued (it said `left`).
    pub fn answer_left(&self) {
        if let Kind::Pool(pool) = &self.kind {
            pool.answer_left();
        }
    }

    /// The event loop that serves the connections too, when the handler
    /// runs on one.
    pub(crate) fn reactor(&self) -> Option<&Arc<Reactor>> {
        match &self.kind {
            Kind::Pool(_) => None,
            Kind::Loop(bridge) => Some(bridge.reactor()),
        }
    }

    /// The server starts serving (again), its connections on `network`.
    pub fn open(&self, network: &tokio::runtime::Handle) {
        match &self.kind {
            Kind::Pool(pool) => pool.open(Some(network.clone())),
            Kind::Loop(bridge) => bridge.reopen(),
        }
    }

    /// The server has finished serving: idle threads may leave, the loop is
    /// told.
    pub fn close(&self) {
        match &self.kind {
            Kind::Pool(pool) => pool.close(),
            Kind::Loop(bridge) => bridge.finish(),
        }
    }

    /// The server is dropped without a shutdown: idle threads leave; an
    /// event loop's connections are dropped (closed) rather than run again,
    /// since the runtime their timers need is going away.
    pub fn abandon(&self) {
        match &self.kind {
            Kind::Pool(pool) => pool.close(),
            Kind::Loop(bridge) => {
                bridge.reactor().close();
                bridge.finish();
            }
        }
    }

    /// Waits briefly for idle handler threads to leave after a close.
    pub fn join_idle(&self) {
        if let Kind::Pool(pool) = &self.kind {
            pool.join_idle();
        }
    }

    /// Is the caller running this server's handler (a pool thread, a
    /// network thread inside a call, or the loop's thread)? Waiting there
    /// for the server to stop would wait for the caller itself.
    pub fn is_current_thread(&self) -> bool {
        match &self.kind {
            Kind::Pool(pool) => pool.is_current_thread(),
            Kind::Loop(bridge) => bridge.is_current_thread(),
        }
    }

    /// Connections that cannot hear a shutdown now: those whose messages
    /// the handler is answering on network threads, or every connection of
    /// an event loop that has stopped turning (blocked, or no longer run).
    /// Asked repeatedly: the loop counts as stopped when it has not turned
    /// since the last time asked, with work waiting.
    pub fn calls_here(&self) -> usize {
        match &self.kind {
            Kind::Pool(pool) => pool.calls_here(),
            Kind::Loop(bridge) => {
                let reactor = bridge.reactor();
                if reactor.stalled() {
                    reactor.tasks()
                } else {
                    0
                }
            }
        }
    }

    /// Closes the connections [`Runner::calls_here`] counts, from outside;
    /// returns their clients, where known.
    pub fn cut_calls_here(&self) -> Vec<SocketAddr> {
        match &self.kind {
            Kind::Pool(pool) => pool.cut_calls_here(),
            Kind::Loop(bridge) => {
                bridge.reactor().close();
                Vec::new()
            }
        }
    }

    /// Jobs waiting and threads at work now.
    pub fn load(&self) -> Load {
        match &self.kind {
            Kind::Pool(pool) => pool.load(),
            Kind::Loop(bridge) => bridge.load(),
        }
    }
}
