//! SA lifetimes: soft and hard limits in seconds, bytes and packets (RFC 4301 §4.4.2.1).
//!
//! A soft limit raises [`SaEvent::RekeyRequested`] once; a hard limit marks the SA expired (it then
//! drops every packet with [`DropReason::SaExpired`](crate::DropReason::SaExpired)) and raises
//! [`SaEvent::Expired`] once. Byte and packet limits are checked by the workers after each run of
//! packets of one SA; time limits are checked there too and, for idle SAs, by
//! [`LifetimeState::poll_time`], which the engine's housekeeping calls periodically.
//!
//! "Once" is enforced with an atomic flag per SA: the first thread to flip it pushes the event. If
//! the event queue is full the flag is flipped back so that a later check raises it again: events
//! are delayed, never lost, and a worker never blocks.

use crate::events::{Direction, EventQueue, LimitKind, SaEvent};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// One set of limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub time: Option<Duration>,
    pub bytes: Option<u64>,
    pub packets: Option<u64>,
}

impl Limits {
    /// No limit at all.
    pub const UNLIMITED: Limits = Limits { time: None, bytes: None, packets: None };

    fn exceeded(&self, age: Duration, packets: u64, bytes: u64) -> Option<LimitKind> {
        if self.time.is_some_and(|t| age >= t) {
            Some(LimitKind::Time)
        } else if self.bytes.is_some_and(|b| bytes >= b) {
            Some(LimitKind::Bytes)
        } else if self.packets.is_some_and(|p| packets >= p) {
            Some(LimitKind::Packets)
        } else {
            None
        }
    }
}

/// Soft and hard limits of an SA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub soft: Limits,
    pub hard: Limits,
}

impl Lifetime {
    /// Time-only lifetime as IKE negotiates it: hard at `hard`, soft at 90% of it.
    pub fn seconds(hard: u64) -> Self {
        let hard = Duration::from_secs(hard);
        Lifetime {
            soft: Limits { time: Some(hard.mul_f64(0.9)), ..Limits::UNLIMITED },
            hard: Limits { time: Some(hard), ..Limits::UNLIMITED },
        }
    }
}

const SOFT_RAISED: u8 = 1;
const EXPIRED: u8 = 2;
const EXPIRED_EVENT_SENT: u8 = 4;
/// Bits 4-5 remember which limit expired the SA, so a deferred event can be raised again.
const KIND_SHIFT: u8 = 4;

fn kind_bits(kind: LimitKind) -> u8 {
    (match kind {
        LimitKind::Time => 0,
        LimitKind::Bytes => 1,
        LimitKind::Packets => 2,
        LimitKind::Sequence => 3,
    }) << KIND_SHIFT
}

fn kind_from_bits(flags: u8) -> LimitKind {
    match (flags >> KIND_SHIFT) & 3 {
        0 => LimitKind::Time,
        1 => LimitKind::Bytes,
        2 => LimitKind::Packets,
        _ => LimitKind::Sequence,
    }
}

/// Runtime lifetime state of one SA.
#[derive(Debug)]
pub struct LifetimeState {
    installed_at: Instant,
    flags: AtomicU8,
}

impl LifetimeState {
    pub fn new(installed_at: Instant) -> Self {
        Self { installed_at, flags: AtomicU8::new(0) }
    }

    pub fn installed_at(&self) -> Instant {
        self.installed_at
    }

    /// Whether a hard limit was reached (or the SA was stopped).
    #[inline]
    pub fn is_expired(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & EXPIRED != 0
    }

    /// Whether the soft-limit event was raised.
    pub fn soft_raised(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & SOFT_RAISED != 0
    }

    /// Checks the limits against the SA's running totals after a run of packets. Returns `false`
    /// if the SA is (now) expired.
    #[inline]
    pub fn check(&self, ctx: EventCtx<'_>, now: Instant, packets: u64, bytes: u64) -> bool {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & EXPIRED != 0 {
            if flags & EXPIRED_EVENT_SENT == 0 {
                // The expiry event was deferred by a full queue: try again.
                self.expire(ctx, kind_from_bits(flags));
            }
            return false;
        }
        let age = now.saturating_duration_since(self.installed_at);
        if let Some(kind) = ctx.lifetime.hard.exceeded(age, packets, bytes) {
            self.expire(ctx, kind);
            return false;
        }
        if let Some(kind) = ctx.lifetime.soft.exceeded(age, packets, bytes) {
            self.request_rekey(ctx, kind);
        }
        !self.is_expired()
    }

    /// Time-only check for idle SAs (housekeeping); same contract as [`check`](Self::check).
    pub fn poll_time(&self, ctx: EventCtx<'_>, now: Instant) -> bool {
        self.check(ctx, now, 0, 0)
    }

    /// Raises a rekey request once (e.g. when sequence numbers run low).
    pub fn request_rekey(&self, ctx: EventCtx<'_>, limit: LimitKind) {
        if self.flags.fetch_or(SOFT_RAISED, Ordering::AcqRel) & SOFT_RAISED == 0 {
            let ev = SaEvent::RekeyRequested { spi: ctx.spi, direction: ctx.direction, limit };
            if !ctx.events.try_push(ev) {
                self.flags.fetch_and(!SOFT_RAISED, Ordering::AcqRel);
            }
        }
    }

    /// Stops the SA and raises an expiry event once.
    pub fn expire(&self, ctx: EventCtx<'_>, limit: LimitKind) {
        let old = self.flags.fetch_or(EXPIRED | EXPIRED_EVENT_SENT, Ordering::AcqRel);
        if old & EXPIRED == 0 {
            self.flags.fetch_or(kind_bits(limit), Ordering::AcqRel);
        }
        if old & EXPIRED_EVENT_SENT == 0 {
            let limit = if old & EXPIRED == 0 { limit } else { kind_from_bits(old) };
            let ev = SaEvent::Expired { spi: ctx.spi, direction: ctx.direction, limit };
            if !ctx.events.try_push(ev) {
                // Stay expired, but let a later packet or poll raise the event again.
                self.flags.fetch_and(!EXPIRED_EVENT_SENT, Ordering::AcqRel);
            }
        }
    }
}

/// What an event needs to name its SA, and where it goes.
#[derive(Clone, Copy)]
pub struct EventCtx<'a> {
    pub spi: u32,
    pub direction: Direction,
    pub lifetime: &'a Lifetime,
    pub events: &'a EventQueue,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(lt: &'a Lifetime, q: &'a EventQueue) -> EventCtx<'a> {
        EventCtx { spi: 0x1234, direction: Direction::Outbound, lifetime: lt, events: q }
    }

    #[test]
    fn soft_then_hard_by_packets_each_raised_once() {
        let lt = Lifetime {
            soft: Limits { packets: Some(10), ..Limits::UNLIMITED },
            hard: Limits { packets: Some(20), ..Limits::UNLIMITED },
        };
        let q = EventQueue::new(16);
        let t0 = Instant::now();
        let s = LifetimeState::new(t0);
        assert!(s.check(ctx(&lt, &q), t0, 9, 0));
        assert!(q.is_empty());
        assert!(s.check(ctx(&lt, &q), t0, 10, 0));
        assert!(s.check(ctx(&lt, &q), t0, 15, 0));
        assert_eq!(
            q.pop(),
            Some(SaEvent::RekeyRequested { spi: 0x1234, direction: Direction::Outbound, limit: LimitKind::Packets })
        );
        assert!(q.is_empty(), "soft raised once");
        assert!(!s.check(ctx(&lt, &q), t0, 20, 0));
        assert!(!s.check(ctx(&lt, &q), t0, 21, 0));
        assert!(s.is_expired());
        assert_eq!(
            q.pop(),
            Some(SaEvent::Expired { spi: 0x1234, direction: Direction::Outbound, limit: LimitKind::Packets })
        );
        assert!(q.is_empty(), "hard raised once");
    }

    #[test]
    fn bytes_and_time_limits() {
        let lt = Lifetime {
            soft: Limits { bytes: Some(1000), ..Limits::UNLIMITED },
            hard: Limits { time: Some(Duration::from_secs(60)), ..Limits::UNLIMITED },
        };
        let q = EventQueue::new(16);
        let t0 = Instant::now();
        let s = LifetimeState::new(t0);
        assert!(s.check(ctx(&lt, &q), t0, 1, 1000));
        assert!(matches!(q.pop(), Some(SaEvent::RekeyRequested { limit: LimitKind::Bytes, .. })));
        assert!(s.poll_time(ctx(&lt, &q), t0 + Duration::from_secs(59)));
        assert!(!s.poll_time(ctx(&lt, &q), t0 + Duration::from_secs(60)));
        assert!(matches!(q.pop(), Some(SaEvent::Expired { limit: LimitKind::Time, .. })));
    }

    #[test]
    fn full_queue_defers_events_instead_of_losing_them() {
        let lt = Lifetime {
            soft: Limits { packets: Some(1), ..Limits::UNLIMITED },
            hard: Limits { packets: Some(2), ..Limits::UNLIMITED },
        };
        let q = EventQueue::new(1);
        assert!(q.try_push(SaEvent::Acquire { tunnel: 1 }));
        let t0 = Instant::now();
        let s = LifetimeState::new(t0);
        s.check(ctx(&lt, &q), t0, 1, 0);
        assert_eq!(q.deferred(), 1);
        assert_eq!(q.pop(), Some(SaEvent::Acquire { tunnel: 1 }));
        // The next check raises the deferred soft event.
        s.check(ctx(&lt, &q), t0, 1, 0);
        assert!(matches!(q.pop(), Some(SaEvent::RekeyRequested { .. })));
        // Hard limit with a full queue: expired at once, event raised later.
        assert!(q.try_push(SaEvent::Acquire { tunnel: 2 }));
        assert!(!s.check(ctx(&lt, &q), t0, 2, 0));
        assert!(s.is_expired());
        q.pop();
        assert!(!s.poll_time(ctx(&lt, &q), t0));
        assert!(matches!(q.pop(), Some(SaEvent::Expired { .. })));
    }

    #[test]
    fn ike_style_lifetime_has_soft_before_hard() {
        let lt = Lifetime::seconds(3600);
        assert_eq!(lt.hard.time, Some(Duration::from_secs(3600)));
        assert_eq!(lt.soft.time, Some(Duration::from_secs(3240)));
    }
}
