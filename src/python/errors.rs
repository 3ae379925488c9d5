//! Core errors as the exceptions a Python socket user already catches.
//!
//! I/O errors become `OSError(errno, strerror)`, so Python picks
//! `ConnectionRefusedError` and friends itself and `.errno` is set; sockdemo's
//! own classes live in `sockdemo.errors` and subclass the stdlib ones. Every
//! blocking call goes through [`blocking`], which releases the interpreter
//! and lets Ctrl+C interrupt the wait.

use std::path::PathBuf;

use pyo3::exceptions::{
    PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;

use crate::error::Error;
use crate::wait::Interrupt;

pyo3::import_exception!(sockdemo.errors, MessageTooLarge);
pyo3::import_exception!(sockdemo.errors, ProtocolError);
pyo3::import_exception!(sockdemo.errors, ServerClosedError);
pyo3::import_exception!(sockdemo.errors, TLSError);

/// Looks up an errno constant by name in Python's `errno` module, which knows
/// the platform's numbers.
fn errno(py: Python<'_>, name: &str) -> PyResult<i32> {
    py.import("errno")?.getattr(name)?.extract()
}

/// Rust's text for an OS error, without the " (os error N)" it appends.
fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn os_error(py: Python<'_>, e: &std::io::Error, filename: Option<&PathBuf>) -> PyErr {
    use std::io::ErrorKind::*;
    let code = e.raw_os_error().or_else(|| {
        let name = match e.kind() {
            TimedOut => "ETIMEDOUT",
            ConnectionRefused => "ECONNREFUSED",
            ConnectionReset => "ECONNRESET",
            ConnectionAborted => "ECONNABORTED",
            BrokenPipe => "EPIPE",
            NotFound => "ENOENT",
            PermissionDenied => "EACCES",
            AddrInUse => "EADDRINUSE",
            AddrNotAvailable => "EADDRNOTAVAIL",
            _ => return None,
        };
        errno(py, name).ok()
    });
    match (code, filename) {
        (Some(code), Some(path)) => {
            PyOSError::new_err((code, strerror(e), path.to_string_lossy().into_owned()))
        }
        (Some(code), None) => PyOSError::new_err((code, strerror(e))),
        (None, _) => PyOSError::new_err(e.to_string()),
    }
}

/// Maps a core error onto the Python exception a socket user expects.
/// `interrupted` is the exception an interrupt check raised, if any.
pub(super) fn to_py(py: Python<'_>, err: Error, interrupted: Option<PyErr>) -> PyErr {
    match err {
        Error::Io(e) => os_error(py, &e, None),
        Error::File { path, source } => os_error(py, &source, Some(&path)),
        // What socket.getaddrinfo raises, naming the host.
        Error::Resolve { .. } => {
            let gaierror = py.import("socket").and_then(|socket| {
                Ok((socket.getattr("gaierror")?, socket.getattr("EAI_NONAME")?))
            });
            match gaierror {
                Ok((class, code)) => match class.call1((code, err.to_string())) {
                    Ok(instance) => PyErr::from_value(instance),
                    Err(e) => e,
                },
                Err(e) => e,
            }
        }
        Error::Timeout(_) => match errno(py, "ETIMEDOUT") {
            Ok(code) => PyTimeoutError::new_err((code, "timed out")),
            Err(e) => e,
        },
        Error::Closed => match errno(py, "ECONNRESET") {
            Ok(code) => ServerClosedError::new_err((code, err.to_string())),
            Err(e) => e,
        },
        Error::MessageTooLarge { .. } => MessageTooLarge::new_err(err.to_string()),
        Error::Protocol(_) | Error::Proxy(_) => match errno(py, "EPROTO") {
            Ok(code) => ProtocolError::new_err((code, err.to_string())),
            Err(e) => e,
        },
        // ssl.SSLError's first argument is the OpenSSL error class; 1 is
        // SSL_ERROR_SSL, "a failure in the TLS library", as Python's own.
        Error::Tls(e) => TLSError::new_err((1, e.to_string())),
        Error::NotTls(_) => TLSError::new_err((1, err.to_string())),
        Error::Certificate(_) | Error::InvalidArgument(_) => PyValueError::new_err(err.to_string()),
        Error::Handler(_) => PyRuntimeError::new_err(err.to_string()),
        Error::SlowReader { .. } => match errno(py, "ENOBUFS") {
            Ok(code) => PyOSError::new_err((code, err.to_string())),
            Err(e) => e,
        },
        Error::Interrupted => interrupted.unwrap_or_else(|| PyKeyboardInterrupt::new_err(())),
    }
}

/// Runs `work` with the interpreter released, giving it an interrupt check
/// that runs Python's signal handlers; maps its error to an exception.
pub(super) fn blocking<T: Send>(
    py: Python<'_>,
    work: impl Send + FnOnce(Interrupt<'_>) -> crate::Result<T>,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut check = || {
            Python::attach(|py| py.check_signals()).map_err(|e| {
                raised = Some(e);
                Error::Interrupted
            })
        };
        work(&mut check)
    });
    result.map_err(|e| to_py(py, e, raised))
}
