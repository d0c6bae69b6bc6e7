//! Data-plane events: what the workers tell the control side.
//!
//! Events leave the data plane through an [`EventQueue`], a bounded lock-free MPMC queue
//! (`crossbeam_queue::ArrayQueue`, chosen because it is allocation-free after construction and its
//! `push` never blocks). A worker never waits on it: when the queue is full the push fails, the
//! caller clears the "event raised" flag of the SA it was about (see [`crate::lifetime`]) and the
//! event is raised again by a later packet, so a full queue delays an event but never loses it.
//! The number of such deferrals is counted.
//!
//! Acquire events (outbound traffic matched a tunnel that has no SA) are rate-limited per tunnel
//! by the caller; the queue itself does not deduplicate.

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Which direction an SA protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Which limit fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Time,
    Bytes,
    Packets,
    /// Outbound sequence numbers are (nearly) exhausted.
    Sequence,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::Time => "time",
            LimitKind::Bytes => "bytes",
            LimitKind::Packets => "packets",
            LimitKind::Sequence => "sequence-number",
        })
    }
}

/// Something the control side must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaEvent {
    /// A soft limit was reached (or sequence numbers are running out): negotiate a new SA.
    RekeyRequested { spi: u32, direction: Direction, limit: LimitKind },
    /// A hard limit was reached: the SA no longer passes traffic and should be deleted.
    Expired { spi: u32, direction: Direction, limit: LimitKind },
    /// Outbound traffic matched tunnel `tunnel`, which has no SA: negotiate one.
    Acquire { tunnel: u32 },
}

impl std::fmt::Display for SaEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = |d: &Direction| if *d == Direction::Inbound { "inbound" } else { "outbound" };
        match self {
            SaEvent::RekeyRequested { spi, direction, limit } => {
                write!(f, "rekey requested: {} SA {spi:#010x} reached its soft {limit} limit", dir(direction))
            }
            SaEvent::Expired { spi, direction, limit } => {
                write!(f, "expired: {} SA {spi:#010x} reached its hard {limit} limit", dir(direction))
            }
            SaEvent::Acquire { tunnel } => write!(f, "acquire: traffic for tunnel {tunnel}, which has no SA"),
        }
    }
}

/// Bounded, lock-free queue of [`SaEvent`]s from workers to the control side.
#[derive(Debug)]
pub struct EventQueue {
    queue: ArrayQueue<SaEvent>,
    deferred: AtomicU64,
}

impl EventQueue {
    /// Default capacity: enough for a rekey storm of many thousand SAs between two polls.
    pub const DEFAULT_CAPACITY: usize = 16 * 1024;

    /// A queue holding at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { queue: ArrayQueue::new(capacity.max(1)), deferred: AtomicU64::new(0) }
    }

    /// Tries to enqueue; never blocks. On `false` the caller must arrange for the event to be
    /// raised again later (the SA flags do this).
    #[inline]
    pub fn try_push(&self, event: SaEvent) -> bool {
        match self.queue.push(event) {
            Ok(()) => true,
            Err(_) => {
                self.deferred.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Takes the oldest event, if any (control side).
    pub fn pop(&self) -> Option<SaEvent> {
        self.queue.pop()
    }

    /// Drains every queued event into `f`.
    pub fn drain(&self, mut f: impl FnMut(SaEvent)) {
        while let Some(e) = self.queue.pop() {
            f(e);
        }
    }

    /// Number of pushes refused because the queue was full (each is retried by a later packet).
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Relaxed)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl Default for EventQueue {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_refuses_without_blocking_and_counts() {
        let q = EventQueue::new(2);
        let e = SaEvent::Acquire { tunnel: 7 };
        assert!(q.try_push(e));
        assert!(q.try_push(e));
        assert!(!q.try_push(e));
        assert_eq!(q.deferred(), 1);
        assert_eq!(q.pop(), Some(e));
        assert!(q.try_push(e));
        let mut n = 0;
        q.drain(|_| n += 1);
        assert_eq!(n, 2);
        assert!(q.is_empty());
    }
}
