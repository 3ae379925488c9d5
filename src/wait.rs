//! Blocking waits that stay interruptible.
//!
//! No blocking call waits longer than a [`TICK`] without running its
//! caller's [`Interrupt`] check: that is how Ctrl+C reaches a Python program
//! blocked in the core, and how `shutdown()` from another thread is seen.

use std::time::Duration;

use crate::error::Result;

/// How often a blocked call wakes to run the interrupt check.
pub const TICK: Duration = Duration::from_millis(100);

/// The caller's check, run at every tick of a blocked call: return
/// `Err(Error::Interrupted)` to abandon the call.
pub type Interrupt<'a> = &'a mut dyn FnMut() -> Result<()>;
