//! A thread that watches a reactor for an event loop that cannot watch a
//! descriptor: Windows' Proactor loop has no `add_reader`.
//!
//! The thread waits for the reactor's sockets and bell, collects what is
//! ready (waking the tasks waiting on it) and asks the loop for a turn, once
//! until that turn begins. The loop's turn then only runs the tasks. It costs
//! a thread hop per turn, which a loop that watches the descriptor itself
//! does not pay, so it is the fallback, not the rule.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;

use crate::handling::reactor::{Reactor, lock};

impl Reactor {
    /// From now on a thread of ours watches this reactor, and calls
    /// `ask_for_turn` whenever the loop should call [`Reactor::turn`]; once
    /// it returns false (the loop is closed, say), the thread stops.
    ///
    /// # Errors
    ///
    /// When no thread can be started.
    pub fn watch_on_thread(
        self: &Arc<Self>,
        mut ask_for_turn: impl FnMut() -> bool + Send + 'static,
    ) -> io::Result<()> {
        // Before the thread starts: from now on turns leave the collecting
        // to it (the two would otherwise contend for the poll).
        self.watched.store(true, Ordering::Release);
        self.unwatched.store(false, Ordering::Release);
        let reactor = self.clone();
        let started = thread::Builder::new()
            .name("sockdemo-watch".into())
            .spawn(move || {
                while !reactor.unwatched.load(Ordering::Acquire) {
                    reactor.collect_waiting();
                    if reactor.unwatched.load(Ordering::Acquire) {
                        break;
                    }
                    if reactor.is_closed() {
                        // The server has finished: one last turn tells the
                        // loop, asked for even if a turn is pending (a loop
                        // that has stopped turning fails this ask, and a
                        // live one needs nothing more watched).
                        ask_for_turn();
                        break;
                    }
                    if !reactor.asked.swap(true, Ordering::AcqRel) && !ask_for_turn() {
                        break;
                    }
                }
                // The reactor first: once the asker is gone, nothing of the
                // thread holds the reactor any more.
                drop(reactor);
                drop(ask_for_turn);
            });
        match started {
            Ok(thread) => {
                *lock(&self.watcher) = Some(thread);
                Ok(())
            }
            Err(e) => {
                self.watched.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Stops the watching thread, if any (at once if it is waiting; after
    /// its ask, if it is asking).
    pub fn unwatch(&self) {
        if !self.unwatched.swap(true, Ordering::AcqRel) {
            self.wake_watcher();
        }
    }

    /// Stops the watching thread and waits until it has ended, and with it
    /// every reference its asker held: a server that has finished holds
    /// nothing of its handler in a thread any more. The caller must not
    /// hold what an ask needs (for Python: the interpreter).
    pub fn unwatch_and_wait(&self) {
        self.unwatch();
        let thread = lock(&self.watcher).take();
        if let Some(thread) = thread
            && thread.thread().id() != thread::current().id()
        {
            // A panic in an ask has been reported already: nothing to add.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// A reactor watched by a thread, whose asks arrive on the receiver.
    fn watched() -> Result<(Arc<Reactor>, mpsc::Receiver<()>), Box<dyn std::error::Error>> {
        let reactor = Reactor::new()?;
        let (asks, asked) = mpsc::channel();
        let asks = Mutex::new(asks);
        reactor.watch_on_thread(move || lock(&asks).send(()).is_ok())?;
        Ok((reactor, asked))
    }

    /// A runtime for the tasks' timers, as the server's would be.
    fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
    }

    #[test]
    fn a_task_woken_elsewhere_is_asked_for_and_run_in_the_turn()
    -> Result<(), Box<dyn std::error::Error>> {
        let (reactor, asked) = watched()?;
        let runtime = runtime()?;
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        reactor.spawn(runtime.handle().clone(), async move {
            counted.fetch_add(1, Ordering::SeqCst);
            // Woken by the timer's thread, not the loop's.
            tokio::time::sleep(Duration::from_millis(1)).await;
            counted.fetch_add(1, Ordering::SeqCst);
        });
        // Spawned from the test's thread: the watcher asks for a turn.
        asked.recv_timeout(Duration::from_secs(30))?;
        reactor.turn();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // The timer fires on the runtime's driver: drive it from a thread.
        let driver = std::thread::spawn(move || {
            runtime.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        });
        asked.recv_timeout(Duration::from_secs(30))?;
        reactor.turn();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(reactor.tasks(), 0);
        driver.join().map_err(|_| "the runtime's thread panicked")?;
        reactor.unwatch();
        Ok(())
    }

    #[test]
    fn a_ready_socket_is_collected_by_the_watcher_not_the_turn()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::io::Write;
        use tokio::io::AsyncReadExt;

        let (reactor, asked) = watched()?;
        let runtime = runtime()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (accepted, _) = listener.accept()?;
        let mut stream = reactor.adopt(accepted)?;
        let (got, received) = mpsc::channel();
        reactor.spawn(runtime.handle().clone(), async move {
            let mut buf = [0u8; 5];
            let read = stream.read_exact(&mut buf).await.map(|_| buf);
            let _ = got.send(read);
        });
        asked.recv_timeout(Duration::from_secs(30))?;
        reactor.turn();
        // Nothing sent yet: the task waits for the socket.
        assert!(received.try_recv().is_err());
        client.write_all(b"hello")?;
        // Only the watcher's collect can see it: the turn no longer polls.
        asked.recv_timeout(Duration::from_secs(30))?;
        reactor.turn();
        assert_eq!(&received.recv_timeout(Duration::from_secs(30))??, b"hello");
        reactor.unwatch();
        Ok(())
    }

    #[test]
    fn a_wake_right_after_the_last_look_is_asked_for() -> Result<(), Box<dyn std::error::Error>> {
        let (reactor, asked) = watched()?;
        let asked = Arc::new(Mutex::new(asked));
        let runtime = runtime()?;
        let (wakers, waker) = mpsc::channel::<std::task::Waker>();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        reactor.spawn(runtime.handle().clone(), async move {
            let mut first = true;
            std::future::poll_fn(|cx| {
                counted.fetch_add(1, Ordering::SeqCst);
                if std::mem::take(&mut first) {
                    let _ = wakers.send(cx.waker().clone());
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(())
            })
            .await;
        });
        lock(&asked).recv_timeout(Duration::from_secs(30))?;
        reactor.turn();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let waker = Mutex::new(Some(waker.recv_timeout(Duration::from_secs(30))?));
        // Between a turn's last look at the queue and its end, another
        // thread wakes the task. The watcher must ask for one more turn, and
        // it must ask while this turn is still under way: had the turn not
        // yet let it ask again, the ask would be lost.
        let asked_in_time = Arc::new(Mutex::new(None));
        let (answer, waiting) = (asked_in_time.clone(), asked.clone());
        reactor.after_last_look(move || {
            if let Some(waker) = lock(&waker).take() {
                std::thread::spawn(move || waker.wake()).join().ok();
                let ask = lock(&waiting).recv_timeout(Duration::from_secs(30));
                *lock(&answer) = Some(ask.is_ok());
            }
        });
        // As the loop would: a turn because the watcher asked for one.
        reactor.ring();
        lock(&asked).recv_timeout(Duration::from_secs(30))?;
        reactor.turn();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "woken after the last look");
        assert_eq!(
            *lock(&asked_in_time),
            Some(true),
            "the wake asked for no turn"
        );
        reactor.turn();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        reactor.unwatch();
        Ok(())
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn unwatching_stops_the_thread() -> Result<(), Box<dyn std::error::Error>> {
        let (reactor, asked) = watched()?;
        // Once the thread waits (holding the poll), only a wake-up ends it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !reactor.is_collecting() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher never waited"
            );
            std::thread::yield_now();
        }
        reactor.unwatch();
        // The thread ends and drops its sender; nothing asks any more.
        loop {
            match asked.recv_timeout(Duration::from_secs(30)) {
                Ok(()) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Only the test's own reference is left.
        assert_eq!(Arc::strong_count(&reactor), 1);
        Ok(())
    }

    #[test]
    fn unwatch_and_wait_returns_once_the_thread_has_let_go_of_its_asker()
    -> Result<(), Box<dyn std::error::Error>> {
        let reactor = Reactor::new()?;
        let runtime = runtime()?;
        // What the asker holds: counted, to see when the thread let it go.
        let token = Arc::new(());
        let held = token.clone();
        let (entered, in_ask) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let (entered, released) = (Mutex::new(entered), Mutex::new(released));
        reactor.watch_on_thread(move || {
            let _held = &held;
            // The first ask takes its time, as an ask waiting for the
            // interpreter would.
            let _ = lock(&entered).send(());
            let _ = lock(&released).recv_timeout(Duration::from_millis(200));
            true
        })?;
        // A task spawned from here makes the thread ask.
        reactor.spawn(runtime.handle().clone(), async {});
        in_ask.recv_timeout(Duration::from_secs(30))?;
        // The ask is under way, for 200 ms: plain `unwatch` would return
        // at once, with the asker still held.
        reactor.unwatch_and_wait();
        assert_eq!(
            Arc::strong_count(&token),
            1,
            "the thread still holds its asker"
        );
        drop(release);
        Ok(())
    }
}
