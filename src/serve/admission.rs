//! Admission: the two places a connection takes, and how a server short of
//! them makes room.
//!
//! An accepted connection takes a handshake place while it opens (PROXY
//! header, TLS handshake, first whole message), then a client slot for the
//! rest of its life; the place goes back as the slot is taken. Connections
//! that have not said anything whole cannot hold slots, so however many
//! arrive first, a client that speaks is served at once when a slot is free,
//! and within the eviction time when slots are held by quiet clients.
//! `eviction` says who is closed when room runs out.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::warn;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::config::Config;
use super::eviction::{Milestone, Registered, Registry};

/// How often a server short of room looks again for a connection to close.
const ROOM_CHECK: Duration = Duration::from_millis(500);
/// How often the log may say that every handshake place is taken.
const CROWDED_NOTICE: Duration = Duration::from_secs(10);

/// A handshake place, and the connection's number in the order of arrival.
pub(crate) struct Place {
    /// Given back when the connection takes a slot (or closes).
    pub permit: OwnedSemaphorePermit,
    pub arrival: u64,
}

/// The places of one server and the registry that ranks their holders.
pub(crate) struct Admission {
    /// One per client served at once (`max_clients`).
    slots: Arc<Semaphore>,
    /// One per connection still opening (`max_handshakes`).
    places: Arc<Semaphore>,
    pub registry: Registry,
    max_handshakes: usize,
    evict_idle_after: Option<Duration>,
    /// When the log last said that every handshake place was taken: said
    /// every [`CROWDED_NOTICE`] at most, not once per connection closed.
    crowded: Mutex<Option<Instant>>,
}

impl Admission {
    pub fn new(config: &Config) -> Self {
        // As many places as slots at least: a server asked to serve 10,000
        // clients at once lets 10,000 connect before they speak.
        let max_handshakes = config.max_handshakes.max(config.max_clients);
        Admission {
            slots: Arc::new(Semaphore::new(config.max_clients)),
            places: Arc::new(Semaphore::new(max_handshakes)),
            registry: Registry::new(),
            max_handshakes,
            evict_idle_after: config.evict_idle_after,
            crowded: Mutex::new(None),
        }
    }

    /// A handshake place for a connection just accepted. While every place is
    /// taken, the opening connection that has made the least progress is
    /// closed to free one; if every opening connection has a whole message
    /// waiting for a slot, this waits (and the listen backlog holds the
    /// rest). `None` once `shutdown` is cancelled.
    pub async fn place(&self, shutdown: &CancellationToken) -> Option<Place> {
        let arrival = self.registry.arrival();
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Some(Place { permit, arrival });
        }
        self.say_crowded();
        let permit = self
            .make_room(&self.places, shutdown, || {
                self.registry.evict_least_progress();
            })
            .await?;
        Some(Place { permit, arrival })
    }

    /// A client slot for a connection that has opened. While every slot is
    /// taken, the slot holder quiet the longest is closed once it has been
    /// quiet `evict_idle_after`. `None` once `shutdown` is cancelled.
    pub async fn seat(
        &self,
        registered: &Registered<'_>,
        shutdown: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                registered.reached(Milestone::Waiting, 0);
                self.make_room(&self.slots, shutdown, || {
                    if let Some(after) = self.evict_idle_after {
                        self.registry.evict_longest_quiet(after);
                    }
                })
                .await?
            }
        };
        registered.seated();
        Some(slot)
    }

    fn say_crowded(&self) {
        let mut said = self.crowded.lock().unwrap_or_else(PoisonError::into_inner);
        if said.is_none_or(|at| at.elapsed() >= CROWDED_NOTICE) {
            *said = Some(Instant::now());
            warn!(
                "Every handshake place is taken ({} connections opening): closing those that have made the least progress to let new clients in.",
                self.max_handshakes
            );
        }
    }

    /// Waits for a permit of `room`, calling `evict` now and every
    /// [`ROOM_CHECK`] until one is free.
    async fn make_room(
        &self,
        room: &Arc<Semaphore>,
        shutdown: &CancellationToken,
        evict: impl Fn(),
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            evict();
            tokio::select! {
                // The semaphores are never closed.
                permit = room.clone().acquire_owned() => return permit.ok(),
                () = tokio::time::sleep(ROOM_CHECK) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }
}
