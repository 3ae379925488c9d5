//! `sockdemo.bench()`: the load generator, run with the interpreter released.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{client_tls, parse_protocol, seconds};
use super::errors::blocking;
use crate::clients::bench;
use crate::protocol;

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the load generator against a server and returns its report.
///
/// Opens `connections` connections; each sends a `size`-byte message, waits
/// for the reply, checks it byte for byte, and repeats for `duration`
/// seconds (a raw message larger than the server's read size is a burst the
/// server answers in pieces). `progress(elapsed, requests, errors)` is called
/// each second. The interpreter is released while it runs; Ctrl+C stops it.
///
/// Returns a dict: `connections`, `size`, `protocol`, `requests`, `errors`,
/// `unanswered`, `elapsed`, `requests_per_second`, `mib_per_second` and
/// `latency_ms` (`mean`, `p50`, `p90`, `p99`, `p99.9`, `max`).
#[pyfunction]
#[pyo3(signature = (
    host = protocol::DEFAULT_HOST.to_owned(), port = protocol::DEFAULT_PORT, *, connections = 10,
    size = protocol::DEFAULT_BUFFER_SIZE, duration = 10.0, protocol = "raw",
    prefix = protocol::DEFAULT_PREFIX.to_owned(), cafile = None, server_hostname = None,
    threads = None, progress = None
))]
// Spelled out so that help() shows the defaults (a test checks them).
#[pyo3(
    text_signature = "(host='127.0.0.1', port=65432, *, connections=10, size=1024, duration=10.0, protocol='raw', prefix='Server received: ', cafile=None, server_hostname=None, threads=None, progress=None)"
)]
#[pyo3(name = "bench")]
#[allow(clippy::too_many_arguments)]
pub(super) fn run_bench<'py>(
    py: Python<'py>,
    host: String,
    port: u16,
    connections: usize,
    size: usize,
    duration: f64,
    protocol: &str,
    prefix: String,
    cafile: Option<PathBuf>,
    server_hostname: Option<String>,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = bench::Options {
        tls: client_tls(py, &host, cafile, server_hostname)?,
        host,
        port,
        connections,
        size,
        duration: seconds("duration", Some(duration))?.unwrap_or_default(),
        protocol: parse_protocol(protocol)?,
        prefix: prefix.into_bytes(),
        threads,
    };
    let report = blocking(py, |interrupt| {
        let mut on_progress = |p: &bench::Progress| {
            if let Some(callback) = &progress {
                Python::attach(|py| {
                    let args = (p.elapsed.as_secs_f64(), p.requests, p.errors);
                    if let Err(e) = callback.call1(py, args) {
                        e.write_unraisable(py, Some(callback.bind(py)));
                    }
                });
            }
        };
        bench::run(&options, interrupt, &mut on_progress)
    })?;
    let dict = PyDict::new(py);
    dict.set_item("connections", report.connections)?;
    dict.set_item("size", options.size)?;
    dict.set_item("protocol", options.protocol.name())?;
    dict.set_item("requests", report.requests)?;
    dict.set_item("errors", report.errors)?;
    dict.set_item("unanswered", report.unanswered)?;
    dict.set_item("elapsed", report.elapsed.as_secs_f64())?;
    dict.set_item("requests_per_second", report.requests_per_second())?;
    dict.set_item("mib_per_second", report.mib_per_second())?;
    let latency = PyDict::new(py);
    let l = report.latency;
    for (name, value) in [
        ("mean", l.mean),
        ("p50", l.p50),
        ("p90", l.p90),
        ("p99", l.p99),
        ("p99.9", l.p999),
        ("max", l.max),
    ] {
        latency.set_item(name, millis(value))?;
    }
    dict.set_item("latency_ms", latency)?;
    Ok(dict)
}
