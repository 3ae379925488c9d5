//! A Rust reply handler on the dispatcher's threads, against the core server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use sockdemo::Protocol;
use sockdemo::handling::Handler;
use sockdemo::serve::Config;

/// Upper-cases; sleeps first on "slow"; keeps the echo for "echo".
struct Upper {
    calls: AtomicUsize,
}

impl Handler for Upper {
    fn reply(
        &self,
        _conn: &sockdemo::handling::Conn,
        message: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match message {
            b"echo" => Ok(None),
            b"slow" => {
                thread::sleep(Duration::from_millis(600));
                Ok(Some(b"SLOW".to_vec()))
            }
            b"fail" => Err("refused".into()),
            b"big" => Ok(Some(vec![b'B'; 8 << 20])),
            other => Ok(Some(other.to_ascii_uppercase())),
        }
    }
}

fn upper() -> Arc<Upper> {
    Arc::new(Upper {
        calls: AtomicUsize::new(0),
    })
}

/// Replies come from the handler, the echo when it returns none, and `bye`
/// never reaches it.
#[test]
fn the_handler_decides_the_replies() {
    let handler = upper();
    let server = start_with(Config::default(), Some(handler.clone()));
    let mut sock = server.connect();
    send(&mut sock, b"shout");
    assert_eq!(read_exactly(&mut sock, 5), b"SHOUT");
    send(&mut sock, b"echo");
    assert_eq!(
        read_exactly(&mut sock, PREFIX.len() + 4),
        [PREFIX, b"echo"].concat()
    );
    send(&mut sock, b"bye");
    assert_eq!(read_until_closed(&mut sock), BYE);
    assert_eq!(handler.calls.load(Ordering::Relaxed), 2);
    server.0.shutdown();
    assert_eq!(server.0.stats().messages, 3);
}

/// Pipelined frames come back in order, through the handler thread's own
/// writes and through the connection's alike.
#[test]
fn pipelined_replies_keep_their_order() {
    let config = Config {
        protocol: Protocol::Framed,
        ..Config::default()
    };
    let server = start_with(config, Some(upper()));
    let mut sock = server.connect();
    // About 16 MiB of replies: more than the socket buffers hold, so the
    // handler threads' writes stop short and the connection writes the rest.
    let messages: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("message {i} {}", "y".repeat(i * 370)).into_bytes())
        .collect();
    let burst: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
    // Written from another thread: the replies outgrow the buffers long
    // before the burst is all sent, so reading must go on meanwhile.
    let mut writer = sock.try_clone().unwrap();
    let sender = thread::spawn(move || send(&mut writer, &burst));
    for message in &messages {
        assert_eq!(read_frame(&mut sock), message.to_ascii_uppercase());
    }
    sender.join().unwrap();
}

/// A handler still at work is activity: the idle timeout does not cut its
/// connection off, and the reply arrives.
#[test]
fn a_slow_handler_is_not_idleness() {
    let config = Config {
        idle_timeout: Some(Duration::from_millis(200)),
        ..Config::default()
    };
    let server = start_with(config, Some(upper()));
    let mut sock = server.connect();
    send(&mut sock, b"slow");
    assert_eq!(read_exactly(&mut sock, 4), b"SLOW");
    // Then silence is idleness again.
    assert!(read_until_closed(&mut sock).is_empty());
    server.0.shutdown();
    assert_eq!(server.0.stats().errors, 0);
}

/// A reply larger than the socket buffers, to a client slow to read, is
/// written partly by the handler thread and finished by the connection.
#[test]
fn a_large_reply_to_a_slow_reader_arrives_whole() {
    let config = Config {
        protocol: Protocol::Framed,
        max_message_size: 16 << 20,
        ..Config::default()
    };
    let server = start_with(config, Some(upper()));
    let mut sock = server.connect();
    send(&mut sock, &frame(b"big"));
    thread::sleep(Duration::from_millis(300)); // the buffers fill meanwhile
    let reply = read_frame(&mut sock);
    assert_eq!(reply.len(), 8 << 20);
    assert!(reply.iter().all(|&b| b == b'B'));
    // A full socket is no failure: the session goes on.
    send(&mut sock, &frame(b"after"));
    assert_eq!(read_frame(&mut sock), b"AFTER");
    assert_eq!(server.0.stats().errors, 0);
}

/// A `bye` after messages for the handler is answered after their replies.
#[test]
fn bye_waits_for_the_replies_before_it() {
    let config = Config {
        protocol: Protocol::Framed,
        ..Config::default()
    };
    let server = start_with(config, Some(upper()));
    let mut sock = server.connect();
    send(&mut sock, &[frame(b"slow"), frame(b"bye")].concat());
    assert_eq!(
        read_until_closed(&mut sock),
        [frame(b"SLOW"), frame(BYE)].concat()
    );
}

/// A refused frame after messages for the handler is refused after their
/// replies.
#[test]
fn a_refusal_waits_for_the_replies_before_it() {
    // Answered on the network thread that read it, or (one handler thread,
    // so no call there) on a handler thread while the refusal is read.
    for handler_threads in [Config::default().handler_threads, 1] {
        let config = Config {
            protocol: Protocol::Framed,
            max_message_size: 100,
            handler_threads,
            ..Config::default()
        };
        let server = start_with(config, Some(upper()));
        let mut sock = server.connect();
        send(
            &mut sock,
            &[&frame(b"slow")[..], &1000u32.to_be_bytes()].concat(),
        );
        assert_eq!(read_frame(&mut sock), b"SLOW");
        assert!(read_frame(&mut sock).starts_with(b"Error: message of 1000 bytes"));
        assert!(read_until_closed(&mut sock).is_empty());
    }
}

/// A failing handler closes its own connection, after the replies owed
/// before it; the server goes on.
#[test]
fn a_failing_handler_closes_only_its_connection() {
    let config = Config {
        protocol: Protocol::Framed,
        ..Config::default()
    };
    let server = start_with(config, Some(upper()));
    let mut sock = server.connect();
    send(
        &mut sock,
        &[frame(b"first"), frame(b"fail"), frame(b"never")].concat(),
    );
    assert_eq!(read_frame(&mut sock), b"FIRST");
    assert!(read_until_closed(&mut sock).is_empty());
    let mut other = server.connect();
    send(&mut other, &frame(b"fine"));
    assert_eq!(read_frame(&mut other), b"FINE");
    wait_until(|| server.0.stats().connections_active == 1);
    assert_eq!(server.0.stats().errors, 1);
}

/// The idle clock starts when a slow handler's reply goes out, not when
/// its request came in: a client that pauses briefly after a slow answer
/// is not idle. (Handler 0.8 s, pause 0.6 s, idle timeout 1 s: the timer
/// set at the request fires after the reply and before the next request,
/// and must see the reply as activity.)
#[test]
fn the_idle_clock_starts_at_a_slow_reply() {
    struct Slow;
    impl Handler for Slow {
        fn reply(
            &self,
            _conn: &sockdemo::handling::Conn,
            message: &[u8],
        ) -> Result<Option<Vec<u8>>, String> {
            thread::sleep(Duration::from_millis(800));
            Ok(Some(message.to_ascii_uppercase()))
        }
    }
    let config = Config {
        idle_timeout: Some(Duration::from_secs(1)),
        ..Config::default()
    };
    let server = start_with(config, Some(Arc::new(Slow)));
    let mut sock = server.connect();
    // The first call, on the network thread, shows the handler is slow:
    // the next go to a handler thread while the connection's timer runs.
    send(&mut sock, b"one");
    assert_eq!(read_exactly(&mut sock, 3), b"ONE");
    send(&mut sock, b"two");
    assert_eq!(read_exactly(&mut sock, 3), b"TWO");
    thread::sleep(Duration::from_millis(600)); // the client's own pause
    send(&mut sock, b"six");
    assert_eq!(read_exactly(&mut sock, 3), b"SIX");
}

/// Dropping a server whose handler is in the middle of a long call returns
/// promptly: nothing waits for the call (it finishes on its own).
#[test]
fn dropping_a_server_mid_call_does_not_wait_for_the_call() {
    struct Stuck(std::sync::mpsc::Sender<()>);
    impl Handler for Stuck {
        fn reply(
            &self,
            _conn: &sockdemo::handling::Conn,
            _message: &[u8],
        ) -> Result<Option<Vec<u8>>, String> {
            let _ = self.0.send(());
            thread::sleep(Duration::from_secs(30));
            Ok(None)
        }
    }
    let (calling, called) = std::sync::mpsc::channel();
    let server = sockdemo::serve::Server::bind(
        "127.0.0.1",
        0,
        Config::default(),
        Some(sockdemo::handling::RunOn::from(
            Arc::new(Stuck(calling)) as Arc<dyn Handler>
        )),
    )
    .unwrap();
    server.start(sockdemo::serve::Mode::Forever).unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    send(&mut sock, b"wait for ever");
    called.recv_timeout(Duration::from_secs(10)).unwrap();
    let (dropped, done) = std::sync::mpsc::channel();
    thread::spawn(move || {
        drop(server);
        let _ = dropped.send(());
    });
    // Generous: a drop takes milliseconds; waiting for the call, 30 s.
    assert!(
        done.recv_timeout(Duration::from_secs(10)).is_ok(),
        "dropping the server waited for the handler"
    );
}

/// A `bye` behind a message whose handler is slow goes out after that
/// message's reply, never before it.
#[test]
fn a_bye_behind_a_slow_reply_waits_for_it() {
    let server = start_with(
        Config {
            protocol: Protocol::Framed,
            // One handler thread: no call on a network thread, so the reply
            // is still owed when the bye is read.
            handler_threads: 1,
            ..Config::default()
        },
        Some(upper()),
    );
    let mut sock = server.connect();
    send(&mut sock, &[frame(b"slow"), frame(b"bye")].concat());
    assert_eq!(read_frame(&mut sock), b"SLOW");
    assert_eq!(read_frame(&mut sock), BYE);
    assert!(read_until_closed(&mut sock).is_empty());
}

/// The counters show a call under way on a handler thread.
#[test]
fn the_counters_show_a_call_at_work() {
    let server = start_with(
        Config {
            handler_threads: 1,
            ..Config::default()
        },
        Some(upper()),
    );
    let mut sock = server.connect();
    send(&mut sock, b"slow");
    wait_until(|| server.0.stats().handler.busy == 1);
    assert_eq!(server.0.stats().handler.threads, 1);
    assert_eq!(read_exactly(&mut sock, 4), b"SLOW");
}

/// Closes its connection after answering "last".
struct Closer;

impl Handler for Closer {
    fn reply(
        &self,
        conn: &sockdemo::handling::Conn,
        message: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        if message == b"last" {
            conn.close();
        }
        Ok(Some(message.to_ascii_uppercase()))
    }
}

/// A handler that closes its connection ends it. The close waits only for
/// what was sent before it, so the reply returned after it may or may not
/// go out (under load, the end is seen first).
#[test]
fn a_handler_can_close_its_connection() {
    for handler_threads in [Config::default().handler_threads, 1] {
        let config = Config {
            protocol: Protocol::Framed,
            handler_threads,
            ..Config::default()
        };
        let server = start_with(config, Some(Arc::new(Closer)));
        let mut sock = server.connect();
        send(&mut sock, &frame(b"first"));
        assert_eq!(read_frame(&mut sock), b"FIRST");
        send(&mut sock, &frame(b"last"));
        let rest = read_until_closed(&mut sock);
        assert!(rest.is_empty() || rest == frame(b"LAST"), "{rest:?}");
    }
}

/// Pushes a large note before each reply, and names the thread it ran on.
struct Noter {
    threads: std::sync::Mutex<Vec<String>>,
}

/// More than the socket buffers of a loopback connection hold.
const NOTE: usize = 16 << 20;

impl Handler for Noter {
    fn reply(
        &self,
        conn: &sockdemo::handling::Conn,
        message: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        let name = thread::current().name().unwrap_or_default().to_owned();
        self.threads.lock().unwrap().push(name);
        assert!(
            conn.send(&vec![b'n'; NOTE]).unwrap(),
            "the note was refused"
        );
        Ok(Some(message.to_ascii_uppercase()))
    }
}

/// A reply leaves after what its handler sent while answering, whoever
/// writes it: the connection itself, when the call ran on its network
/// thread, or the handler thread. The note is larger than the socket takes
/// at once, so most of it waits in the outbox while the reply is made.
#[test]
fn a_reply_leaves_after_what_its_handler_sent_while_answering() {
    for handler_threads in [Config::default().handler_threads, 1] {
        let noter = Arc::new(Noter {
            threads: std::sync::Mutex::default(),
        });
        let config = Config {
            handler_threads,
            max_pending_bytes: 2 * NOTE,
            ..Config::default()
        };
        let server = start_with(config, Some(noter.clone()));
        let mut sock = server.connect();
        for message in [&b"one"[..], b"two"] {
            send(&mut sock, message);
            let got = read_exactly(&mut sock, NOTE + message.len());
            assert!(got[..NOTE].iter().all(|&b| b == b'n'), "the note was cut");
            assert_eq!(got[NOTE..], message.to_ascii_uppercase());
        }
        // With a lane (the default), a quick call runs on the network
        // thread that read the message; with none, on a handler thread.
        let threads = noter.threads.lock().unwrap().clone();
        let on_handler_threads = threads.iter().all(|t| t == "sockdemo-handler");
        assert_eq!(on_handler_threads, handler_threads == 1, "{threads:?}");
    }
}
