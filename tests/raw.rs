//! The raw protocol, byte for byte, over real loopback sockets.

mod common;

use std::io::Write;
use std::net::Shutdown;

use common::*;
use sockdemo::serve::proxy::ProxyPolicy;
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

/// When every slot is taken by clients that have gone quiet, a new client is
/// served once the one quiet the longest has been quiet long enough; a quiet
/// connection is left alone while slots are free.
#[test]
fn a_full_server_makes_room_by_closing_the_longest_quiet() {
    let after = std::time::Duration::from_millis(300);
    let server = start(Config {
        max_clients: 2,
        evict_idle_after: Some(after),
        ..Config::default()
    });
    let round_trip = |sock: &mut std::net::TcpStream, message: &[u8]| {
        send(sock, message);
        assert_eq!(
            read_exactly(sock, PREFIX.len() + message.len()),
            [PREFIX, message].concat()
        );
    };
    let mut oldest = server.connect();
    round_trip(&mut oldest, b"first");
    // Quiet past the eviction time, but a slot is free: still served.
    std::thread::sleep(after * 2);
    round_trip(&mut oldest, b"still here");
    let mut younger = server.connect();
    round_trip(&mut younger, b"me too");
    assert_eq!(server.0.stats().connections_active, 2);
    // Full: a third client waits until the connection quiet the longest goes.
    let mut newcomer = server.connect();
    let started = std::time::Instant::now();
    round_trip(&mut newcomer, b"let me in");
    assert!(started.elapsed() < after * 4, "{:?}", started.elapsed());
    assert!(read_until_closed(&mut oldest).is_empty());
    round_trip(&mut younger, b"and me?");
    server.0.shutdown();
    assert_eq!(server.0.stats().errors, 0, "making room is not a failure");
}

/// A slot holder the server is still writing to is not quiet, however long
/// ago it last sent: a newcomer waits for the slot rather than cutting off
/// replies the holder is owed.
#[test]
fn a_slot_holder_slow_to_read_its_replies_is_not_evicted() {
    let after = std::time::Duration::from_secs(1);
    let server = start(Config {
        max_clients: 1,
        evict_idle_after: Some(after),
        reply_prefix: Vec::new(),
        ..Config::default()
    });
    let mut holder = server.connect();
    send(&mut holder, b"first");
    assert_eq!(read_exactly(&mut holder, 5), b"first");
    // Quiet past the eviction time while nobody waits: still served.
    std::thread::sleep(after * 2);
    // A burst it does not read yet: the server's replies fill both socket
    // buffers, and its write waits.
    let burst = vec![b'x'; 16 << 20];
    let mut writer = holder.try_clone().unwrap();
    let sent = burst.clone();
    let sender = std::thread::spawn(move || send(&mut writer, &sent));
    // Busy from its first bytes on (till then, quiet long enough to go).
    wait_until(|| server.0.stats().bytes_in > 5);
    let mut newcomer = server.connect();
    send(&mut newcomer, b"let me in");
    wait_until(|| server.0.stats().connections_opening == 1);
    // Room is looked for every half second: a wrong eviction would have
    // happened within a few looks.
    std::thread::sleep(after + std::time::Duration::from_millis(1500));
    holder
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    assert_eq!(read_exactly(&mut holder, burst.len()), burst);
    sender.join().unwrap();
    drop(holder);
    assert_eq!(read_exactly(&mut newcomer, 9), b"let me in");
}

/// Connections that have said nothing whole hold no slot. When every
/// handshake place is taken and another client connects, the opening
/// connection furthest behind goes: a silent one before one that has sent
/// part of a message, the oldest of equals first.
#[test]
fn opening_connections_make_way_for_a_client_that_speaks() {
    let server = start(Config {
        protocol: sockdemo::Protocol::Framed,
        max_clients: 1,
        max_handshakes: 3,
        evict_idle_after: None,
        ..Config::default()
    });
    let mut talker = server.connect();
    // Declares 5 bytes, sends 2.
    send(&mut talker, &[0, 0, 0, 5, b'h', b'e']);
    let mut silent_old = server.connect();
    let mut silent_young = server.connect();
    wait_until(|| server.0.stats().connections_opening == 3);
    assert_eq!(server.0.stats().connections_active, 0);

    let mut newcomer = server.connect();
    send(&mut newcomer, &frame(b"hi"));
    assert_eq!(read_frame(&mut newcomer), [PREFIX, b"hi"].concat());
    assert!(read_until_closed(&mut silent_old).is_empty());
    assert!(still_open(&mut silent_young) && still_open(&mut talker));

    // Places: the talker, the younger silent one, and one more; the next
    // arrival takes the silent one's, not the talker's.
    let mut third = server.connect();
    wait_until(|| server.0.stats().connections_opening == 3);
    let _fourth = server.connect();
    assert!(read_until_closed(&mut silent_young).is_empty());
    assert!(still_open(&mut talker) && still_open(&mut third));
    // The talker finishes its message, and waits for the one slot.
    send(&mut talker, b"llo");
    drop(newcomer);
    assert_eq!(read_frame(&mut talker), [PREFIX, b"hello"].concat());
    server.0.shutdown();
}

/// A PROXY header that is not one is the sender's failure, counted as an
/// error, not as a connection closed to make room.
#[test]
fn a_bad_proxy_header_is_an_error_not_an_eviction() {
    let server = start(Config {
        proxy: Some(ProxyPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
        ..Config::default()
    });
    let mut sock = server.connect();
    send(&mut sock, b"GET / HTTP/1.0\r\n\r\n");
    assert!(read_until_closed(&mut sock).is_empty());
    wait_until(|| server.0.stats().errors == 1);
    let metrics = server.0.metrics();
    assert!(
        metrics.contains("sockdemo_errors_total{kind=\"proxy\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sockdemo_connections_closed_total{reason=\"evicted\"} 0"));
}

/// Nothing has arrived to say the connection is closing, for a moment.
fn still_open(sock: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let open = matches!(
        sock.read(&mut [0; 1]),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    );
    sock.set_read_timeout(None).unwrap();
    open
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
    // However the burst was read, it counts as a recv(1024) would cut it.
    wait_until(|| {
        server
            .0
            .metrics()
            .contains("sockdemo_messages_received_total 100\n")
    });
    // A burst whose last message is a goodbye: the messages before it come
    // back, then the goodbye, then the close.
    let mut last = vec![b'z'; 2048];
    last.extend_from_slice(b"bye");
    send(&mut sock, &last);
    assert_eq!(read_until_closed(&mut sock), [&last[..2048], BYE].concat());
}

/// Connections still waiting for their PROXY header are closed as what
/// closed them (room made, or the shutdown), not counted as their failure.
#[test]
fn opening_connections_closed_by_the_server_are_not_errors() {
    let server = start(Config {
        proxy: Some(ProxyPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
        max_clients: 1,
        max_handshakes: 1,
        ..Config::default()
    });
    opening_connections_are_closed_by_the_server(&server);
}

/// The message limit holds when the replies are the bytes read (no prefix):
/// what comes past it is not echoed.
#[test]
fn a_message_limit_holds_when_the_reply_is_the_input() {
    let config = Config {
        reply_prefix: Vec::new(),
        ..Config::default()
    };
    let server = Server::bind("127.0.0.1", 0, config, None).unwrap();
    server
        .start(Mode::Once {
            max_messages: Some(2),
        })
        .unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // At most 1024 bytes a message: three messages or more, however read.
    sock.write_all(&[b'm'; 3000]).unwrap();
    let reply = read_to_close(&mut sock);
    assert!(
        !reply.is_empty() && reply.len() <= 2048,
        "{} bytes",
        reply.len()
    );
    assert!(server.wait(std::time::Duration::from_secs(30)).is_some());
}

/// A PROXY header that comes a while after the connection is still read:
/// the handshake timeout counts from the connection, forward.
#[test]
fn a_proxy_header_that_comes_late_is_still_read() {
    let server = start(Config {
        proxy: Some(ProxyPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
        ..Config::default()
    });
    let mut sock = server.connect();
    // The server is waiting for the header before it comes.
    wait_until(|| server.0.stats().connections_opening == 1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    send(
        &mut sock,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 65432\r\nlate",
    );
    assert_eq!(
        read_exactly(&mut sock, PREFIX.len() + 4),
        [PREFIX, b"late"].concat()
    );
}

/// Limits too large for the server to hold are refused when it is made.
#[test]
fn limits_too_large_are_refused_not_a_crash() {
    for config in [
        Config {
            max_handshakes: usize::MAX,
            ..Config::default()
        },
        Config {
            max_clients: usize::MAX,
            ..Config::default()
        },
    ] {
        let refused = Server::bind("127.0.0.1", 0, config, None).err().unwrap();
        assert!(refused.to_string().contains("too large"), "{refused}");
    }
}
