//! Inbound SA table: `(SPI, local outer address)` → `Arc<V>`.
//!
//! Workers resolve every received ESP packet here, with a guard pinned once per burst; the
//! control side installs SAs when a child SA is created and removes them when it is deleted.
//! Keyed by SPI *and* the outer destination address (RFC 4301 §4.1: an SA is identified by the
//! SPI, optionally with the destination), so two local addresses may reuse an SPI value.

use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use super::{Domain, Hasher, ReadGuard, Spi};

/// Key of the inbound table. `Hash` is written by hand: one 64-bit word for IPv4 (the common
/// case), so a lookup hashes with a single multiply-fold.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SpiKey {
    spi: u32,
    dst: IpAddr,
}

impl Hash for SpiKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self.dst {
            IpAddr::V4(a) => state.write_u64((u64::from(self.spi) << 32) | u64::from(a.to_bits())),
            IpAddr::V6(a) => {
                state.write_u32(self.spi);
                state.write_u128(a.to_bits());
            }
        }
    }
}

/// [`SpiTable::insert`] found the key taken: SPIs must be unique per local address (allocate a
/// fresh one). Carries the SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiInUse(pub Spi);

impl fmt::Display for SpiInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SPI {} is already in use", self.0)
    }
}

impl std::error::Error for SpiInUse {}

/// Lock-free inbound SA table. See the [module docs](super) for the concurrency contract.
pub struct SpiTable<V> {
    map: papaya::HashMap<SpiKey, Arc<V>, Hasher>,
    domain: Domain,
}

impl<V: Send + Sync + 'static> SpiTable<V> {
    /// An empty table in `domain`.
    pub fn new(domain: &Domain) -> Self {
        Self::with_capacity(domain, 0)
    }

    /// An empty table with room for `capacity` SAs before it first resizes (resizing is
    /// blocking for writers only and never blocks readers, but pre-sizing avoids copying at startup).
    pub fn with_capacity(domain: &Domain, capacity: usize) -> Self {
        Self {
            map: papaya::HashMap::builder()
                .hasher(Hasher::default())
                // Writers finish a resize before going on: readers (the workers) never search two tables.
                .resize_mode(papaya::ResizeMode::Blocking)
                .shared_collector(Arc::clone(domain.collector()))
                .capacity(capacity)
                .build(),
            domain: domain.clone(),
        }
    }

    /// Pins the current thread (same as [`Domain::pin`] on this table's domain).
    pub fn pin(&self) -> ReadGuard<'_> {
        self.domain.pin()
    }

    /// Per-packet lookup: the SA for `spi` arriving on local address `dst`. The reference is valid
    /// as long as `guard`. No lock, no allocation, no reference-count change.
    ///
    /// # Panics
    /// If `guard` belongs to another [`Domain`].
    #[inline]
    pub fn get<'g>(&'g self, spi: Spi, dst: IpAddr, guard: &'g ReadGuard<'_>) -> Option<&'g Arc<V>> {
        self.map.get(&SpiKey { spi: spi.0, dst }, guard.raw())
    }

    /// Owned lookup for the control side (pins internally, clones the `Arc`).
    pub fn get_cloned(&self, spi: Spi, dst: IpAddr) -> Option<Arc<V>> {
        let guard = self.pin();
        self.get(spi, dst, &guard).cloned()
    }

    /// Whether an SA is installed under `(spi, dst)`.
    pub fn contains(&self, spi: Spi, dst: IpAddr) -> bool {
        let guard = self.pin();
        self.get(spi, dst, &guard).is_some()
    }

    /// Installs a new inbound SA (child SA creation, or the new SA of a rekey while the old one
    /// stays installed: make-before-break). Atomic to readers.
    ///
    /// # Errors
    /// [`SpiInUse`] if `(spi, dst)` is already installed; the table is unchanged.
    pub fn insert(&self, spi: Spi, dst: IpAddr, sa: Arc<V>) -> Result<(), SpiInUse> {
        let guard = self.pin();
        self.map.try_insert(SpiKey { spi: spi.0, dst }, sa, guard.raw()).map(|_| ()).map_err(|_| SpiInUse(spi))
    }

    /// Installs `sa` under `(spi, dst)`, replacing whatever was there; returns the previous SA.
    /// Readers see either the old or the new SA.
    pub fn replace(&self, spi: Spi, dst: IpAddr, sa: Arc<V>) -> Option<Arc<V>> {
        let guard = self.pin();
        self.map.insert(SpiKey { spi: spi.0, dst }, sa, guard.raw()).cloned()
    }

    /// Removes the SA under `(spi, dst)` (SA deleted, or the old SA after a rekey) and returns
    /// it; `None` (and no change) if absent. Workers that found it under an older guard may
    /// finish their burst with it.
    pub fn remove(&self, spi: Spi, dst: IpAddr) -> Option<Arc<V>> {
        let guard = self.pin();
        self.map.remove(&SpiKey { spi: spi.0, dst }, guard.raw()).cloned()
    }

    /// Number of installed SAs (exact when no writer is running concurrently).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no SA is installed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries, for counters and reconciliation with the control plane. Weakly consistent:
    /// concurrent changes may or may not be seen, but every entry present for the whole
    /// iteration is yielded exactly once.
    pub fn iter<'g>(&'g self, guard: &'g ReadGuard<'_>) -> impl Iterator<Item = (Spi, IpAddr, &'g Arc<V>)> + 'g {
        self.map.iter(guard.raw()).map(|(k, v)| (Spi(k.spi), k.dst, v))
    }
}

impl<V> fmt::Debug for SpiTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiTable").field("len", &self.map.len()).finish_non_exhaustive()
    }
}
