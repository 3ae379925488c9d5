//! The blocking client against the server, and against silent peers.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;
use sockdemo::Error;
use sockdemo::clients::{Client, Config as ClientConfig};
use sockdemo::serve::Config;

fn never() -> sockdemo::Result<()> {
    Ok(())
}

/// `request` returns the reply bytes exactly.
#[test]
fn request_round_trip() {
    let server = start(Config::default());
    let addr = server.addr();
    let mut client = Client::connect(
        "127.0.0.1",
        addr.port(),
        ClientConfig::default(),
        &mut never,
    )
    .unwrap();
    assert_eq!(
        client.request(b"hi", &mut never).unwrap(),
        b"Server received: hi"
    );
    assert_eq!(client.request(b"bye", &mut never).unwrap(), BYE);
    assert!(matches!(
        client.request(b"gone?", &mut never),
        Err(Error::Closed | Error::Io(_))
    ));
}

/// A refused connection keeps its errno.
#[test]
fn refused_is_an_io_error_with_errno() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Client::connect("127.0.0.1", port, ClientConfig::default(), &mut never)
        .err()
        .unwrap();
    match err {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("unexpected {other:?}"),
    }
}

/// A silent server gives a timeout, and the interrupt check runs meanwhile.
#[test]
fn timeout_and_interrupt_ticks() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config = ClientConfig {
        timeout: Some(Duration::from_millis(350)),
        ..ClientConfig::default()
    };
    let mut ticks = 0;
    let mut count = || {
        ticks += 1;
        Ok(())
    };
    let mut client = Client::connect("127.0.0.1", port, config, &mut count).unwrap();
    let err = client.request(b"hello?", &mut count).unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(ticks >= 2, "the interrupt check ran {ticks} times");

    let mut stop = || Err(Error::Interrupted);
    let err = client.request(b"again?", &mut stop).unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err:?}");
}

/// Raw messages that cannot come back whole are refused before sending.
#[test]
fn oversized_raw_message_is_refused_locally() {
    let server = start(Config::default());
    let mut client = Client::connect(
        "127.0.0.1",
        server.addr().port(),
        ClientConfig::default(),
        &mut never,
    )
    .unwrap();
    let err = client.request(&[b'x'; 1025], &mut never).unwrap_err();
    assert!(err.to_string().contains("framed"), "{err}");
    assert_eq!(
        client.request(b"ok", &mut never).unwrap(),
        b"Server received: ok"
    );
}
