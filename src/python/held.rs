//! Python objects that Rust holds for a Python object, visible to Python's
//! garbage collector through it.
//!
//! A server's handler is held deep inside the core (its pool, its loop
//! bridge), out of the collector's sight. A handler that refers back to its
//! server (a method of an application object that holds the server) would
//! then make a cycle nothing can collect. The Python object that owns the
//! server reports what the core holds (`__traverse__`) and lets go of it
//! (`__clear__`), so such a cycle is collected like any other.

use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::PyVisit;
use pyo3::prelude::*;
use pyo3::pyclass::PyTraverseError;

/// One Python object, until the collector (or the owner's end) clears it.
#[derive(Default)]
pub(super) struct Held(Mutex<Option<Py<PyAny>>>);

impl Held {
    pub fn new(object: Py<PyAny>) -> Self {
        Held(Mutex::new(Some(object)))
    }

    /// Holds `object` from now on, in place of what was held.
    pub fn set(&self, object: Py<PyAny>) {
        let before = self.lock().replace(object);
        drop(before);
    }

    fn lock(&self) -> MutexGuard<'_, Option<Py<PyAny>>> {
        // Taking or cloning a reference cannot leave it half-changed.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The object, unless it has been cleared.
    pub fn get<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.lock().as_ref().map(|object| object.bind(py).clone())
    }

    /// Reports the object to the collector. A lock held elsewhere (a
    /// handler thread mid-clone) is skipped: reporting a reference fewer
    /// only makes the collector keep what it might have freed.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(held) = self.0.try_lock()
            && let Some(object) = held.as_ref()
        {
            visit.call(object)?;
        }
        Ok(())
    }

    /// Lets go of the object; later calls find nothing.
    pub fn clear(&self) {
        let object = self.lock().take();
        drop(object);
    }
}
