//! Outbound tunnel table: [`TunnelId`] → the tunnel's current outbound SA.
//!
//! Routes and flows resolve to a tunnel id; this table resolves the id to the SA to encrypt with.
//! Rekeying a tunnel is one call, [`TunnelTable::set_sa`], which replaces the entry's value with a
//! single atomic pointer swap: every packet looked up after it uses the new SA, packets of a burst
//! that already resolved the old SA finish with it (their guard keeps it alive).

use std::fmt;
use std::sync::Arc;

use super::{Domain, Hasher, ReadGuard, TunnelId};

/// Lock-free map from tunnel to its current outbound SA. See the [module docs](super).
pub struct TunnelTable<V> {
    map: papaya::HashMap<TunnelId, Arc<V>, Hasher>,
    domain: Domain,
}

impl<V: Send + Sync + 'static> TunnelTable<V> {
    /// An empty table in `domain`.
    pub fn new(domain: &Domain) -> Self {
        Self::with_capacity(domain, 0)
    }

    /// An empty table with room for `capacity` tunnels before it first resizes.
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

    /// Per-packet lookup: the current outbound SA of `tunnel`, valid as long as `guard`. `None`
    /// if the tunnel has no SA (not established yet, or cleared).
    ///
    /// # Panics
    /// If `guard` belongs to another [`Domain`].
    #[inline]
    pub fn get<'g>(&'g self, tunnel: TunnelId, guard: &'g ReadGuard<'_>) -> Option<&'g Arc<V>> {
        self.map.get(&tunnel, guard.raw())
    }

    /// Owned lookup for the control side (pins internally, clones the `Arc`).
    pub fn get_cloned(&self, tunnel: TunnelId) -> Option<Arc<V>> {
        let guard = self.pin();
        self.get(tunnel, &guard).cloned()
    }

    /// Makes `sa` the tunnel's outbound SA at once (tunnel up, or the switch-over of a rekey) and
    /// returns the previous one. Readers see the old or the new SA, never neither.
    pub fn set_sa(&self, tunnel: TunnelId, sa: Arc<V>) -> Option<Arc<V>> {
        let guard = self.pin();
        self.map.insert(tunnel, sa, guard.raw()).cloned()
    }

    /// Removes the tunnel's outbound SA (tunnel down) and returns it; `None` if it had none.
    pub fn clear(&self, tunnel: TunnelId) -> Option<Arc<V>> {
        let guard = self.pin();
        self.map.remove(&tunnel, guard.raw()).cloned()
    }

    /// Number of tunnels that have an SA (exact when no writer is running concurrently).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no tunnel has an SA.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All tunnels and their SAs (weakly consistent, see [`super::SpiTable::iter`]).
    pub fn iter<'g>(&'g self, guard: &'g ReadGuard<'_>) -> impl Iterator<Item = (TunnelId, &'g Arc<V>)> + 'g {
        self.map.iter(guard.raw()).map(|(k, v)| (*k, v))
    }
}

impl<V> fmt::Debug for TunnelTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelTable").field("len", &self.map.len()).finish_non_exhaustive()
    }
}
