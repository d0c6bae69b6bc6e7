//! The fast path as a worker calls it: burst encap/decap with the SA lookups done in the lock-free
//! tables ([`crate::table`]).
//!
//! A worker pins the tables' [`Domain`](crate::table::Domain) once per burst ([`ReadGuard`]) and
//! passes the guard here; lookups return references valid while it is held, so no `Arc` is cloned
//! per packet. Outbound, a protected flow wins over a destination route (see
//! [`OutboundTables::resolve`]); a match whose tunnel has no SA yet is dropped as
//! [`DropReason::NoSa`] and raises an [`SaEvent::Acquire`], at most once per tunnel per
//! [`ACQUIRE_INTERVAL`] per worker.

use crate::events::SaEvent;
use crate::packet::{PacketBuf, Verdict};
use crate::sa::{InboundSa, OutboundSa};
use crate::table::{OutboundTables, ReadGuard, Spi, SpiTable, TunnelId};
use crate::worker::EspWorker;
use crate::DropReason;
use std::time::{Duration, Instant};

/// Minimum time between two acquire events for the same tunnel from one worker.
pub const ACQUIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Direct-mapped memory of recent acquires (no allocation; a collision only means an extra event).
pub(crate) struct AcquireLimiter {
    slots: [(u32, Option<Instant>); 256],
}

impl Default for AcquireLimiter {
    fn default() -> Self {
        AcquireLimiter { slots: [(0, None); 256] }
    }
}

impl AcquireLimiter {
    /// Whether an acquire for `tunnel` should be raised now (and remembers it if so).
    fn allow(&mut self, tunnel: u32, now: Instant) -> bool {
        let slot = &mut self.slots[(tunnel.wrapping_mul(0x9e37_79b1) >> 24) as usize];
        match slot {
            (t, Some(last)) if *t == tunnel && now.saturating_duration_since(*last) < ACQUIRE_INTERVAL => false,
            _ => {
                *slot = (tunnel, Some(now));
                true
            }
        }
    }

    fn forget(&mut self, tunnel: u32) {
        let slot = &mut self.slots[(tunnel.wrapping_mul(0x9e37_79b1) >> 24) as usize];
        if slot.0 == tunnel {
            slot.1 = None;
        }
    }
}

impl EspWorker {
    /// [`encap_burst`](Self::encap_burst) with each packet's SA found in `tables`.
    pub fn encap_routed<'g>(
        &mut self,
        now: Instant,
        tables: &'g OutboundTables<OutboundSa>,
        guard: &'g ReadGuard<'_>,
        pkts: &mut [PacketBuf<'_>],
        verdicts: &mut [Verdict],
    ) {
        let events = self.events.clone();
        // Moved out for the closure's sake (a pointer move, no copy) and put back below.
        let mut limiter = self.acquire.take().unwrap_or_default();
        self.encap_burst(now, pkts, verdicts, |src, dst| {
            let tunnel: TunnelId = tables
                .flows
                .lookup(src, dst, guard)
                .or_else(|| tables.routes.lookup(dst, guard))
                .ok_or(DropReason::NoRoute)?;
            match tables.tunnels.get(tunnel, guard) {
                Some(sa) => Ok(&**sa),
                None => {
                    if limiter.allow(tunnel.0, now) && !events.try_push(SaEvent::Acquire { tunnel: tunnel.0 }) {
                        limiter.forget(tunnel.0);
                    }
                    Err(DropReason::NoSa)
                }
            }
        });
        self.acquire = Some(limiter);
    }

    /// [`decap_burst`](Self::decap_burst) with each packet's SA found in `table` by (SPI, outer
    /// destination).
    pub fn decap_with_table<'g>(
        &mut self,
        now: Instant,
        table: &'g SpiTable<InboundSa>,
        guard: &'g ReadGuard<'_>,
        pkts: &mut [PacketBuf<'_>],
        verdicts: &mut [Verdict],
    ) {
        self.decap_burst(now, pkts, verdicts, |spi, dst| table.get(Spi(spi), dst, guard).map(|sa| &**sa));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_limiter_allows_once_per_interval() {
        let mut l = AcquireLimiter::default();
        let t0 = Instant::now();
        assert!(l.allow(7, t0));
        assert!(!l.allow(7, t0 + Duration::from_millis(500)));
        assert!(l.allow(8, t0));
        assert!(l.allow(7, t0 + ACQUIRE_INTERVAL));
        l.forget(7);
        assert!(l.allow(7, t0 + ACQUIRE_INTERVAL));
    }
}
