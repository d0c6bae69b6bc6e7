//! Per-core ESP state: counters, the CBC IV generator and the event queue handle.
//!
//! One [`EspWorker`] per data-plane core. Its batch methods ([`EspWorker::encap_burst`],
//! [`EspWorker::decap_burst`]) are the only entry points of the fast path; they take `&mut self`,
//! so the worker's counters and RNG are never shared.

use crate::counters::WorkerCounters;
use crate::crypto::{CryptoError, CryptoProvider};
use crate::events::{Direction, EventQueue};
use rand_chacha::ChaCha12Rng;
use rand_core::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

/// Per-core ESP context.
pub struct EspWorker {
    pub(crate) counters: Arc<WorkerCounters>,
    /// CBC IVs must be unpredictable (RFC 3602 §3): a ChaCha12 stream seeded from the provider's
    /// secure random source, so an IV costs a few nanoseconds and no syscall.
    pub(crate) rng: ChaCha12Rng,
    pub(crate) events: Arc<EventQueue>,
    /// Rate limit of acquire events (boxed: 6 KiB that [`Self::encap_routed`] moves in and out).
    pub(crate) acquire: Option<Box<crate::datapath::AcquireLimiter>>,
}

impl EspWorker {
    /// A worker whose IV generator is seeded from `provider.random`, and which reports SA events
    /// to `events`.
    pub fn new(provider: &CryptoProvider, events: Arc<EventQueue>) -> Result<Self, CryptoError> {
        let mut seed = [0u8; 32];
        provider.random.fill(&mut seed)?;
        Ok(EspWorker {
            counters: Arc::new(WorkerCounters::default()),
            rng: ChaCha12Rng::from_seed(seed),
            events,
            acquire: Some(Box::default()),
        })
    }

    /// This worker's counters; the `Arc` may be kept by a stats reader while the worker runs.
    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// The queue this worker raises SA events on.
    pub fn events(&self) -> &Arc<EventQueue> {
        &self.events
    }

    /// Counts a finished run of `packets` packets (`bytes` inner bytes) of one SA, in this worker's
    /// and the SA's counters, and checks the SA's lifetime against its new totals.
    pub(crate) fn account_run(
        &self,
        sa: &crate::sa::SaCore,
        direction: Direction,
        now: Instant,
        packets: u64,
        bytes: u64,
    ) {
        if packets == 0 {
            return;
        }
        let (p, b) = match direction {
            Direction::Outbound => (&self.counters.encap_packets, &self.counters.encap_bytes),
            Direction::Inbound => (&self.counters.decap_packets, &self.counters.decap_bytes),
        };
        p.add(packets);
        b.add(bytes);
        let (tp, tb) = sa.counters.add(packets, bytes);
        sa.state.check(sa.event_ctx(direction, &self.events), now, tp, tb);
    }

    #[inline]
    pub(crate) fn fill_iv(&mut self, iv: &mut [u8]) {
        self.rng.fill_bytes(iv);
    }
}
