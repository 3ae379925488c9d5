//! The connection's side of a conversation: the [`Conn`] its handler
//! sees, the outbox every byte from elsewhere leaves through, and a
//! session's opening and closing hooks, run in order with its messages.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::connection::Connection;
use super::transport::Transport;
use crate::error::Result;
use crate::handling::conn::Conn;
use crate::handling::job::Stage;
use crate::handling::outbox::Outbox;
use crate::handling::runner::Runner;
use crate::socket::Socket;

impl<S: Socket> Connection<'_, S> {
    /// The connection as its handler sees it, made at its first job. Its
    /// outbox, over plain TCP, holds a duplicate of the socket's descriptor,
    /// for other threads to write replies without waking this task.
    pub(super) fn conn(&mut self) -> &Arc<Conn> {
        let transport = &self.transport;
        let shared = self.shared;
        let addr = self.addr;
        self.conn.get_or_insert_with(|| {
            let (socket, write_here) = match transport {
                Transport::Plain(stream) => (stream.duplicate(), true),
                Transport::Tls(stream) => (stream.get_ref().0.duplicate(), false),
            };
            let outbox = Outbox::new(
                socket,
                write_here,
                shared.stats.clone(),
                shared.config.max_pending_bytes,
            );
            let id = shared.hub.next_id();
            Arc::new(Conn::new(id, addr, shared.codec, Arc::new(outbox)))
        })
    }

    /// The outbox, once the connection has one.
    pub(super) fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.conn.as_ref().map(|conn| conn.outbox())
    }

    /// Does the connection hold a session (see `Handler::is_session`)?
    pub(super) fn is_session(&self) -> bool {
        self.shared.runner.as_ref().is_some_and(Runner::is_session)
    }

    /// Is a job's settlement owed ([`Connection::settle`]), or may the
    /// outbox hold a session's pushes? Else settling has nothing to do.
    pub(super) fn owes(&self) -> bool {
        self.owed || self.is_session()
    }

    /// Hands `conn`'s `messages` (ranges of `data`) at `stage` over to
    /// `runner` as its one job in flight; [`Connection::settle`] collects
    /// what it delivers.
    pub(super) fn hand_over(
        &mut self,
        runner: &Runner,
        conn: Arc<Conn>,
        stage: Stage,
        data: Bytes,
        messages: Vec<Range<usize>>,
    ) {
        conn.outbox().begin();
        self.owed = true;
        runner.submit(conn, stage, data, messages);
    }

    /// Opens the session: the connection joins the hub, and its `opened`
    /// hook runs before any message is handed over.
    pub(super) async fn open_session(&mut self, runner: &Runner) -> Result<()> {
        let conn = self.conn().clone();
        self.shared.hub.join(conn.clone());
        self.hand_over(runner, conn, Stage::Open, Bytes::new(), Vec::new());
        self.settle().await?;
        self.opened = true;
        Ok(())
    }

    /// Closes the session: the connection leaves the hub, takes no more
    /// pushes, and its `closed` hook runs, after every message's.
    pub(super) async fn close_session(&mut self) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        self.shared.hub.leave(conn.id());
        let Some(runner) = self.shared.runner.as_ref().filter(|_| self.opened) else {
            return;
        };
        // A job still in flight (one that failed, or met a shutdown) is
        // settled first: the hook runs after every message's.
        let _ = self.settle().await;
        conn.outbox().close();
        self.hand_over(runner, conn, Stage::Close, Bytes::new(), Vec::new());
        // Bounded like any wait for a handler once shutdown is asked.
        let _ = self.settle().await;
    }
}
