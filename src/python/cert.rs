//! `sockdemo.generate_self_signed()`: development certificates.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::errors::to_py;
use crate::tls;

/// Writes a self-signed development certificate for `localhost` and
/// `127.0.0.1` to `dir/cert.pem` and `dir/key.pem` (mode 0600), creating
/// `dir` if needed; returns the two paths.
#[pyfunction]
pub(super) fn generate_self_signed(py: Python<'_>, dir: PathBuf) -> PyResult<(PathBuf, PathBuf)> {
    tls::generate_self_signed(&dir).map_err(|e| to_py(py, e, None))
}
