//! The fan-out benchmark's load: LISTENERS connections that only read, and
//! one speaker that sends MESSAGES framed messages of SIZE bytes as fast as
//! the server takes them. The server relays each message to every listener;
//! the figure is deliveries per second, from the first message sent until
//! the last listener has all of them. Prints one JSON object.
//!
//! `cargo run --release --example fanout_client -- --port P [--listeners 100]
//! [--messages 20000] [--size 64]`

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> io::Result<()> {
    let (mut port, mut listeners, mut messages, mut size) = (0u16, 100usize, 20_000usize, 64usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| io::Error::other(format!("{arg} needs a value")))?;
        let number = || value.parse::<usize>().map_err(io::Error::other);
        match arg.as_str() {
            "--port" => port = value.parse().map_err(io::Error::other)?,
            "--listeners" => listeners = number()?,
            "--messages" => messages = number()?,
            "--size" => size = number()?,
            _ => return Err(io::Error::other(format!("unknown option {arg}"))),
        }
    }
    let address = ("127.0.0.1", port);
    let mut readers = Vec::with_capacity(listeners);
    for _ in 0..listeners {
        readers.push(TcpStream::connect(address).await?);
    }
    // Every listener must have joined before the first message: the servers
    // announce nothing, so give them a moment (this is a benchmark, not a test).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = messages * (4 + size);
    let start = Instant::now();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0;
                while got < expected {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                (got, start.elapsed())
            })
        })
        .collect();
    let mut speaker = TcpStream::connect(address).await?;
    speaker.set_nodelay(true)?;
    let mut frame = (size as u32).to_be_bytes().to_vec();
    frame.extend(std::iter::repeat_n(b'x', size));
    let batch: Vec<u8> = frame.repeat(100);
    for _ in 0..messages / 100 {
        speaker.write_all(&batch).await?;
    }
    speaker.write_all(&frame.repeat(messages % 100)).await?;
    let mut complete = 0;
    let mut last = Duration::ZERO;
    for task in tasks {
        if let Ok(Ok((got, at))) = tokio::time::timeout(Duration::from_secs(120), task).await {
            if got >= expected {
                complete += 1;
            }
            last = last.max(at);
        }
    }
    let deliveries = (complete * messages) as f64;
    println!(
        "{{\"listeners\": {listeners}, \"complete\": {complete}, \"messages\": {messages}, \
         \"seconds\": {:.4}, \"deliveries_per_second\": {:.0}}}",
        last.as_secs_f64(),
        deliveries / last.as_secs_f64().max(1e-9)
    );
    drop(speaker);
    Ok(())
}
