//! A socket served on the loop's thread: what its reads, writes and waits
//! do, polled by hand, with the test turning the reactor as a loop would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::pin::pin;
use std::task::Waker;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::testing::readable_within;
use super::*;
use crate::socket::Socket;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A connected pair: a plain client, and its accepted end on `reactor`.
fn pair(reactor: &Arc<Reactor>) -> io::Result<(TcpStream, LoopStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (accepted, _) = listener.accept()?;
    Ok((client, reactor.adopt(accepted)?))
}

/// Turns `reactor` whenever its descriptor is readable, until `done` says
/// so; false if that took longer than a loaded machine ever needs.
fn turn_until(reactor: &Reactor, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        if readable_within(reactor.fd(), Duration::from_millis(50)) {
            reactor.turn();
        }
    }
    true
}

/// Turns `reactor` as [`turn_until`] does until `poll` is ready; what it
/// gave, or None if it never was.
fn turn_until_ready<T>(reactor: &Reactor, mut poll: impl FnMut() -> Poll<T>) -> Option<T> {
    let mut outcome = None;
    turn_until(reactor, || match poll() {
        Poll::Ready(value) => {
            outcome = Some(value);
            true
        }
        Poll::Pending => false,
    });
    outcome
}

fn would_block<T: std::fmt::Debug>(result: io::Result<T>) -> bool {
    matches!(result, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[test]
fn reads_and_writes_say_what_they_did_and_a_reader_waits_for_bytes() -> TestResult {
    let reactor = Reactor::new()?;
    let (mut client, stream) = pair(&reactor)?;
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = [0u8; 64];
    // Nothing sent: the read would block, and from then on a reader waits.
    assert!(would_block(stream.try_read(&mut buf)));
    let mut readable = pin!(stream.readable());
    assert!(readable.as_mut().poll(&mut cx).is_pending());
    client.write_all(b"hello")?;
    // Only the readiness the reactor collects ends the wait.
    turn_until_ready(&reactor, || readable.as_mut().poll(&mut cx)).ok_or("never readable")??;
    assert_eq!(stream.try_read(&mut buf)?, 5);
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(stream.try_write(b"a reply")?, 7);
    let mut reply = [0u8; 7];
    client.read_exact(&mut reply)?;
    assert_eq!(&reply, b"a reply");
    // The client's end: a reader is told at once, and for good.
    drop(client);
    let mut readable = pin!(stream.readable());
    turn_until_ready(&reactor, || readable.as_mut().poll(&mut cx)).ok_or("never told")??;
    assert_eq!(stream.try_read(&mut buf)?, 0);
    assert!(pin!(stream.readable()).poll(&mut cx).is_ready());
    Ok(())
}

#[test]
fn async_reads_take_what_came_and_wait_for_more() -> TestResult {
    let reactor = Reactor::new()?;
    let (mut client, mut stream) = pair(&reactor)?;
    let mut cx = Context::from_waker(Waker::noop());
    let mut space = [0u8; 64];
    let mut buf = ReadBuf::new(&mut space);
    assert!(
        Pin::new(&mut stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    );
    client.write_all(b"first")?;
    turn_until_ready(&reactor, || {
        Pin::new(&mut stream).poll_read(&mut cx, &mut buf)
    })
    .ok_or("not read")??;
    assert_eq!(buf.filled(), b"first");
    // Everything there was has been read: the next read waits.
    let mut space = [0u8; 64];
    let mut buf = ReadBuf::new(&mut space);
    assert!(
        Pin::new(&mut stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    );
    assert!(buf.filled().is_empty());
    Ok(())
}

#[test]
fn a_writer_facing_a_full_socket_waits_until_the_peer_reads() -> TestResult {
    let reactor = Reactor::new()?;
    let (mut client, mut stream) = pair(&reactor)?;
    let mut cx = Context::from_waker(Waker::noop());
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    // Fill the socket's buffers: the client reads nothing yet.
    loop {
        match Pin::new(&mut stream).poll_write(&mut cx, &chunk) {
            Poll::Ready(Ok(n)) => sent += n,
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Pending => break,
        }
    }
    assert!(sent > 0);
    // Still full: the writer keeps waiting, with no system call.
    assert!(
        Pin::new(&mut stream)
            .poll_write(&mut cx, &chunk)
            .is_pending()
    );
    // The client reads everything sent, in a thread; the room it makes wakes
    // the writer through the reactor.
    let reader = std::thread::spawn(move || -> io::Result<usize> {
        let mut all = vec![0u8; sent];
        client.read_exact(&mut all)?;
        Ok(all.iter().filter(|&&b| b == 7).count())
    });
    let written = turn_until_ready(&reactor, || {
        Pin::new(&mut stream).poll_write(&mut cx, &chunk)
    })
    .ok_or("never writable")??;
    assert!(written > 0);
    assert_eq!(reader.join().map_err(|_| "reader panicked")??, sent);
    Ok(())
}

#[test]
fn a_writer_waiting_on_a_peer_that_resets_is_told() -> TestResult {
    let reactor = Reactor::new()?;
    let (client, mut stream) = pair(&reactor)?;
    let mut cx = Context::from_waker(Waker::noop());
    let chunk = vec![0u8; 64 * 1024];
    while let Poll::Ready(result) = Pin::new(&mut stream).poll_write(&mut cx, &chunk) {
        result?;
    }
    // A close with unread data (and no lingering) resets the connection.
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO))?;
    drop(client);
    let outcome = turn_until_ready(&reactor, || {
        Pin::new(&mut stream).poll_write(&mut cx, &chunk)
    });
    assert!(
        outcome.ok_or("no outcome")?.is_err(),
        "a write to a reset peer fails"
    );
    // Shutting down a reset connection is no error: it is down already.
    assert!(matches!(
        Pin::new(&mut stream).poll_shutdown(&mut cx),
        Poll::Ready(Ok(()))
    ));
    Ok(())
}

#[test]
fn shutting_down_ends_the_peers_reading_and_no_delay_is_set() -> TestResult {
    let reactor = Reactor::new()?;
    let (mut client, mut stream) = pair(&reactor)?;
    let mut cx = Context::from_waker(Waker::noop());
    let duplicate = stream.duplicate().ok_or("no duplicate")?;
    assert!(!duplicate.tcp_nodelay()?);
    stream.set_nodelay(true)?;
    assert!(duplicate.tcp_nodelay()?, "set on the socket itself");
    assert!(matches!(
        Pin::new(&mut stream).poll_shutdown(&mut cx),
        Poll::Ready(Ok(()))
    ));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest)?;
    assert!(rest.is_empty());
    Ok(())
}

#[test]
fn a_reopened_reactor_runs_its_tasks_again() -> TestResult {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let reactor = Reactor::new()?;
    reactor.close();
    assert!(reactor.is_closed());
    reactor.reopen();
    assert!(!reactor.is_closed());
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    reactor.spawn(runtime.handle().clone(), async move {
        flag.store(true, Ordering::SeqCst);
    });
    reactor.turn();
    assert!(ran.load(Ordering::SeqCst));
    assert!(reactor.runtime().is_some(), "the tasks' runtime is kept");
    Ok(())
}

/// Counts the wakes of the task it stands for.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn readiness_wakes_the_task_waiting_for_it_and_no_other() -> TestResult {
    let reactor = Reactor::new()?;
    let (mut client, mut stream) = pair(&reactor)?;
    let (reader, writer) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
    let reader_waker = Waker::from(reader.clone());
    let writer_waker = Waker::from(writer.clone());
    // A writer waits: the client reads nothing, and the socket fills.
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    let mut cx = Context::from_waker(&writer_waker);
    while let Poll::Ready(n) = Pin::new(&mut stream).poll_write(&mut cx, &chunk) {
        sent += n?;
    }
    // A reader waits: nothing has come.
    let mut buf = [0u8; 8];
    assert!(would_block(stream.try_read(&mut buf)));
    let mut cx = Context::from_waker(&reader_waker);
    assert!(pin!(stream.readable()).poll(&mut cx).is_pending());
    // Bytes come: the reader is woken, the writer is not.
    client.write_all(b"x")?;
    assert!(turn_until(&reactor, || reader.count() > 0));
    assert_eq!((reader.count(), writer.count()), (1, 0));
    // The reader takes them and waits again.
    assert_eq!(stream.try_read(&mut buf)?, 1);
    assert!(would_block(stream.try_read(&mut buf)));
    assert!(pin!(stream.readable()).poll(&mut cx).is_pending());
    // The client reads everything: room for the writer, nothing to read.
    // (On a handle of its own: the client stays open, or its end would wake
    // the reader, rightly.)
    let mut drain = client.try_clone()?;
    let draining = std::thread::spawn(move || -> io::Result<()> {
        let mut all = vec![0u8; sent];
        drain.read_exact(&mut all)
    });
    assert!(turn_until(&reactor, || writer.count() > 0));
    draining.join().map_err(|_| "the client panicked")??;
    assert_eq!((reader.count(), writer.count()), (1, 1));
    drop(client);
    Ok(())
}
