//! The raw protocol, byte for byte, over real loopback sockets.

mod common;

use std::io::Write;
use std::net::Shutdown;

use common::*;
use sockdemo::serve::{Config, Mode, Server};

/// A message comes back behind the prefix, every byte unchanged.
#[test]
fn echo_is_prefix_plus_exact_bytes() {
    let server = start(Config::default());
    let mut sock = server.connect();
    for message in [
        &b"hello"[..],
        b"\xff\xfe\x00 not utf-8",
        "naïve ☃".as_bytes(),
    ] {
        send(&mut sock, message);
        let reply = read_exactly(&mut sock, PREFIX.len() + message.len());
        assert_eq!(&reply[..PREFIX.len()], PREFIX);
        assert_eq!(&reply[PREFIX.len()..], message);
    }
    // Counted before the client could see the replies.
    assert_eq!(server.0.stats().messages, 3);
}

/// More than 1024 bytes at once are cut where a `recv(1024)` would cut them.
#[test]
fn messages_are_cut_at_1024_bytes() {
    let server = start(Config::default());
    let mut sock = server.connect();
    let message: Vec<u8> = (0..1500u32).map(|i| b'a' + (i % 26) as u8).collect();
    send(&mut sock, &message);
    let reply = read_exactly(&mut sock, 2 * PREFIX.len() + message.len());
    let mut expected = PREFIX.to_vec();
    expected.extend_from_slice(&message[..1024]);
    expected.extend_from_slice(PREFIX);
    expected.extend_from_slice(&message[1024..]);
    assert_eq!(reply, expected);
}

/// `bye` in any case, with netcat's newline, gets the goodbye and a close.
#[test]
fn bye_ends_the_session() {
    let server = start(Config::default());
    for bye in [&b"bye"[..], b"bye\n", b"  BYE\r\n"] {
        let mut sock = server.connect();
        send(&mut sock, bye);
        assert_eq!(read_to_close(&mut sock), BYE);
    }
}

/// A client that half-closes still gets the replies it is owed.
#[test]
fn half_close_still_gets_replies() {
    let server = start(Config::default());
    let mut sock = server.connect();
    send(&mut sock, b"last words");
    sock.shutdown(Shutdown::Write).unwrap();
    let mut expected = PREFIX.to_vec();
    expected.extend_from_slice(b"last words");
    assert_eq!(read_to_close(&mut sock), expected);
}

/// A custom prefix replaces the default one.
#[test]
fn reply_prefix_is_configurable() {
    let server = start(Config {
        reply_prefix: b"echo> ".to_vec(),
        ..Config::default()
    });
    let mut sock = server.connect();
    send(&mut sock, b"x");
    assert_eq!(read_exactly(&mut sock, 7), b"echo> x");
}

/// The one-shot mode answers one message, closes, and stops serving.
#[test]
fn once_mode_serves_one_message() {
    let server = Server::bind("127.0.0.1", 0, Config::default(), None).unwrap();
    server
        .start(Mode::Once {
            max_messages: Some(1),
        })
        .unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.write_all(b"one").unwrap();
    assert_eq!(read_to_close(&mut sock), b"Server received: one");
    assert!(server.wait(std::time::Duration::from_secs(10)).is_some());
}

/// Nothing is served after shutdown; the port refuses once closed.
#[test]
fn close_releases_the_port() {
    let server = start(Config::default());
    let addr = server.addr();
    drop(server);
    let err = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// A silent connection is closed once the idle timeout passes, not before,
/// and not much after; a talking one is not.
#[test]
fn idle_timeout_closes_after_its_time() {
    let idle = std::time::Duration::from_millis(500);
    let server = start(Config {
        idle_timeout: Some(idle),
        ..Config::default()
    });
    let mut silent = server.connect();
    let opened = std::time::Instant::now();
    assert!(read_until_closed(&mut silent).is_empty());
    let waited = opened.elapsed();
    assert!(waited >= idle, "closed after {waited:?}");
    assert!(waited < idle * 2, "closed after {waited:?}");
    server.0.shutdown();
    assert_eq!(server.0.stats().errors, 0, "an idle close is not an error");
}

/// When every slot is taken by silent connections, a new client is served
/// once the longest-idle one has been idle long enough; a silent connection
/// is left alone while slots are free.
#[test]
fn a_full_server_makes_room_by_closing_the_longest_idle() {
    let after = std::time::Duration::from_millis(300);
    let server = start(Config {
        max_clients: 2,
        evict_idle_after: Some(after),
        ..Config::default()
    });
    let mut oldest = server.connect();
    wait_until(|| server.0.stats().connections_active == 1);
    std::thread::sleep(after * 2);
    // Idle past the eviction time, but a slot is free: still served.
    send(&mut oldest, b"still here");
    assert_eq!(
        read_exactly(&mut oldest, PREFIX.len() + 10),
        [PREFIX, b"still here"].concat()
    );
    let mut younger = server.connect();
    wait_until(|| server.0.stats().connections_active == 2);
    // Full: a third client waits until the longest-idle connection goes.
    let mut newcomer = server.connect();
    let started = std::time::Instant::now();
    send(&mut newcomer, b"let me in");
    assert_eq!(
        read_exactly(&mut newcomer, PREFIX.len() + 9),
        [PREFIX, b"let me in"].concat()
    );
    assert!(started.elapsed() < after * 4, "{:?}", started.elapsed());
    assert!(read_until_closed(&mut oldest).is_empty());
    send(&mut younger, b"and me?");
    assert_eq!(
        read_exactly(&mut younger, PREFIX.len() + 7),
        [PREFIX, b"and me?"].concat()
    );
    server.0.shutdown();
    assert_eq!(server.0.stats().errors, 0, "making room is not a failure");
}

/// Impossible settings are refused when binding, before anything runs.
#[test]
fn impossible_settings_are_refused() {
    for config in [
        Config {
            max_clients: 0,
            ..Config::default()
        },
        Config {
            handler_threads: 0,
            ..Config::default()
        },
        Config {
            max_clients: usize::MAX,
            ..Config::default()
        },
        Config {
            buffer_size: 0,
            ..Config::default()
        },
    ] {
        let refused = Server::bind("127.0.0.1", 0, config, None);
        assert!(
            matches!(refused, Err(sockdemo::Error::InvalidArgument(_))),
            "{:?}",
            refused.err()
        );
    }
    // The largest allowed limit is accepted.
    let config = Config {
        max_clients: tokio::sync::Semaphore::MAX_PERMITS,
        ..Config::default()
    };
    assert!(Server::bind("127.0.0.1", 0, config, None).is_ok());
}

/// With no prefix the reply is the input: a burst comes back byte for byte
/// (however it was read), and a `bye` in it still ends the session after
/// the replies before it.
#[test]
fn with_no_prefix_a_burst_comes_back_as_sent_and_bye_still_ends_it() {
    let config = Config {
        reply_prefix: Vec::new(),
        ..Config::default()
    };
    let server = start(config);
    let mut sock = server.connect();
    let burst: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let mut writer = sock.try_clone().unwrap();
    let sent = burst.clone();
    let sender = std::thread::spawn(move || send(&mut writer, &sent));
    assert_eq!(read_exactly(&mut sock, burst.len()), burst);
    sender.join().unwrap();
    // A burst whose last message is a goodbye: the messages before it come
    // back, then the goodbye, then the close.
    let mut last = vec![b'z'; 2048];
    last.extend_from_slice(b"bye");
    send(&mut sock, &last);
    assert_eq!(read_until_closed(&mut sock), [&last[..2048], BYE].concat());
}
