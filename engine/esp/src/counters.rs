//! Drop reasons and counters.
//!
//! Every packet the ESP core refuses is dropped for exactly one [`DropReason`], which indexes both
//! a per-worker counter array ([`WorkerCounters`], one writer: the worker) and a per-SA one
//! ([`SaCounters`], shared by every worker using the SA). Both can be read at any time by other
//! threads (the control side, a stats endpoint) without stopping the workers.
//!
//! Per-worker counters are single-writer: an increment is a relaxed load and store, not a locked
//! read-modify-write, so it costs no more than a plain add. Per-SA counters may be shared by several
//! workers, so they use `fetch_add`, and the burst code adds once per run of packets of the same SA
//! rather than once per packet.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal,)*) => {
        /// Why a packet was dropped. Stable labels (`as_str`) are used in stats and Prometheus output.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in index order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons (size of counter arrays).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// The buffer does not hold a well-formed packet of the expected kind (truncated, bad lengths).
    Malformed => "malformed",
    /// Not enough headroom in front of the packet for the outer headers.
    NoHeadroom => "no_headroom",
    /// Not enough tailroom behind the packet for padding, trailer and ICV.
    NoTailroom => "no_tailroom",
    /// Inner packet is not IPv4 or IPv6.
    NotIp => "not_ip",
    /// Outer packet is not ESP, nor ESP in UDP on the encapsulation port.
    NotEsp => "not_esp",
    /// Outer packet is a fragment; reassembly happens before the ESP core.
    OuterFragment => "outer_fragment",
    /// No inbound SA for this SPI and destination.
    UnknownSpi => "unknown_spi",
    /// No route or protected flow matches the packet's destination.
    NoRoute => "no_route",
    /// A route matched but its tunnel has no outbound SA yet (an acquire is raised).
    NoSa => "no_sa",
    /// The SA reached a hard lifetime or was otherwise stopped.
    SaExpired => "sa_expired",
    /// Outbound sequence numbers are exhausted; the SA needs a rekey.
    SeqExhausted => "seq_exhausted",
    /// Sequence number already received.
    Replayed => "replayed",
    /// Sequence number to the left of the replay window.
    ReplayTooOld => "replay_too_old",
    /// Sequence number 0 (never sent by a conforming peer).
    ZeroSeq => "zero_seq",
    /// ICV / AEAD tag verification failed.
    AuthFailed => "auth_failed",
    /// The ciphertext length is not a whole number of cipher blocks.
    BadCipherLength => "bad_cipher_length",
    /// Padding bytes are not 1, 2, 3, ... as RFC 4303 requires, or pad length overruns the payload.
    BadPadding => "bad_padding",
    /// Next header is neither IPv4 (4) nor IPv6 (41) in tunnel mode.
    BadNextHeader => "bad_next_header",
    /// A dummy packet (next header 59, RFC 4303 §2.6) was received and discarded.
    DummyPacket => "dummy_packet",
    /// The decrypted inner packet is malformed or its length disagrees with the ESP payload.
    BadInnerPacket => "bad_inner_packet",
    /// Inner source/destination outside the SA's traffic selectors.
    SelectorMismatch => "selector_mismatch",
    /// ESP arrived with UDP encapsulation on an SA without it, or the reverse.
    EncapMismatch => "encap_mismatch",
    /// Outer ECN is CE while the inner packet is Not-ECT (RFC 6040: drop).
    EcnDrop => "ecn_drop",
    /// Crypto backend failure other than authentication.
    CryptoError => "crypto_error",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counter with a single writer: increments are a relaxed load + store (no `lock` prefix).
/// Any thread may read it.
#[derive(Default, Debug)]
pub struct LocalCounter(AtomicU64);

impl LocalCounter {
    /// Adds `n`. Must only be called by the counter's owning thread (enforced by `&mut` callers
    /// or by construction: each worker owns its [`WorkerCounters`]).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Counters of one worker (one per core). The worker is the only writer.
#[derive(Debug)]
pub struct WorkerCounters {
    pub encap_packets: LocalCounter,
    pub encap_bytes: LocalCounter,
    pub decap_packets: LocalCounter,
    pub decap_bytes: LocalCounter,
    drops: [LocalCounter; DropReason::COUNT],
}

impl Default for WorkerCounters {
    fn default() -> Self {
        Self {
            encap_packets: LocalCounter::default(),
            encap_bytes: LocalCounter::default(),
            decap_packets: LocalCounter::default(),
            decap_bytes: LocalCounter::default(),
            drops: core::array::from_fn(|_| LocalCounter::default()),
        }
    }
}

impl WorkerCounters {
    /// Counts one drop.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].add(1);
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// Sum of all drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(LocalCounter::get).sum()
    }

    /// Non-zero drop counters, for display.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.drops(r))).filter(|&(_, n)| n != 0)
    }
}

/// Counters of one SA, shared by every worker that uses it.
#[derive(Debug)]
pub struct SaCounters {
    pub packets: AtomicU64,
    /// Bytes of inner (protected) packets, the quantity IKE byte lifetimes count.
    pub bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl Default for SaCounters {
    fn default() -> Self {
        Self {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            drops: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SaCounters {
    /// Adds a run of `packets` packets carrying `bytes` bytes; returns the totals after the add.
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64) -> (u64, u64) {
        let p = self.packets.fetch_add(packets, Relaxed) + packets;
        let b = self.bytes.fetch_add(bytes, Relaxed) + bytes;
        (p, b)
    }

    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn packets(&self) -> u64 {
        self.packets.load(Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Relaxed)).sum()
    }

    /// Non-zero drop counters, for display.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.drops(r))).filter(|&(_, n)| n != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r} out of order");
        }
        let labels: std::collections::HashSet<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::COUNT, "labels must be unique");
    }

    #[test]
    fn worker_counters_count_per_reason() {
        let c = WorkerCounters::default();
        c.count_drop(DropReason::Replayed);
        c.count_drop(DropReason::Replayed);
        c.count_drop(DropReason::AuthFailed);
        assert_eq!(c.drops(DropReason::Replayed), 2);
        assert_eq!(c.drops(DropReason::AuthFailed), 1);
        assert_eq!(c.total_drops(), 3);
        assert_eq!(c.nonzero_drops().count(), 2);
    }

    #[test]
    fn sa_counters_are_shared_between_threads() {
        let c = std::sync::Arc::new(SaCounters::default());
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(1, 100);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(c.packets(), 20_000);
        assert_eq!(c.bytes(), 2_000_000);
    }
}
