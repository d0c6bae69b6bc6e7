//! Lock-free SA tables: inbound SPI lookup, outbound tunnel → SA, route and flow lookup.
//!
//! # Contract
//!
//! * **Readers never lock and never allocate.** Data-plane workers look things up with a
//!   [`ReadGuard`] pinned once per burst ([`Domain::pin`]); lookups return references that stay
//!   valid while that guard lives, so the per-packet path does no atomic read-modify-write (not
//!   even an `Arc` clone, which would bounce the SA's reference-count cache line between cores).
//! * **Writers are the control side.** Every single operation (`insert`, `replace`, `remove`,
//!   [`TunnelTable::set_sa`], [`RouteTable::add_route`], …) is atomic to readers: a reader sees
//!   the old or the new value, never a mix and never a transient hole. SPI and tunnel writes are
//!   lock-free; route and flow writes of one table are serialised among themselves by a mutex
//!   that readers never touch (it keeps the prefix-length bookkeeping exact, see `prefix.rs`).
//!   Writers may allocate.
//! * **Generic over the SA type** `V` (anything `Send + Sync + 'static`); tables store `Arc<V>` so
//!   the control side can keep its own handle to an SA (lifetimes, counters) next to the table's.
//! * Removed values are dropped once no reader can still hold them, i.e. after every guard that
//!   was pinned before the removal is dropped; the drop happens in batches on some writer or
//!   reader thread. An SA type that must wipe keys does so in its own `Drop`.
//! * All types here are `Send + Sync`; [`ReadGuard`] is deliberately `!Send` (it marks the current
//!   thread as active).
//!
//! # Rekey
//!
//! Make-before-break is a sequence of single atomic operations:
//! 1. inbound: [`SpiTable::insert`] the new SA under its new SPI. Both SPIs now resolve (they
//!    are two independent entries), so packets of either SA are accepted during the overlap;
//! 2. outbound: [`TunnelTable::set_sa`] swaps the tunnel's SA pointer to the new SA at once;
//! 3. later: [`SpiTable::remove`] the old SPI.
//!
//! # Crate choice
//!
//! [`papaya`] (lock-free hash map by Ibraheem Ahmed, actively maintained, used in production
//! proxies) backs every table:
//! * reads are lock-free and wait-free in the common case: one hash, a short probe, an atomic
//!   pointer load; no reference counting, no reader-side writes other than pinning;
//! * writes are lock-free too (CAS per entry); resizes are `Blocking` for writers, so a reader never
//!   has to search an old and a new table (papaya's incremental mode would make every lookup pay for
//!   an unfinished resize until the next write finishes it);
//! * memory reclamation is done by [`seize`]; all tables of a [`Domain`] share one
//!   `seize::Collector`, so one guard pinned per burst covers the SPI table, the tunnel table and
//!   every route/flow map. Pinning is a thread-local store plus a light barrier.
//!
//! Alternatives considered: `dashmap` uses `RwLock` shards, so readers lock (rejected by the
//! contract). `arc-swap` is ideal for a single pointer but its reads take a debt slot per load; a
//! papaya entry replaced by [`TunnelTable::set_sa`] gives the same one-pointer-swap semantics
//! inside the map. `left-right` doubles memory (two copies of 1M SAs) and makes writers wait for
//! readers. `crossbeam-epoch` is only a reclamation scheme (we would be writing the map, with
//! `unsafe`, which this crate forbids). `scc::HashIndex` has lock-free reads and stores entries
//! inline (less memory), but its writers take bucket locks and it has its own global epoch, so it
//! could not share one per-burst guard with the other tables as cleanly.
//!
//! Hashing uses [`foldhash`] (the hasher behind `hashbrown`) with a per-process random seed: the
//! keys are chosen by us or by authenticated peers (SPIs we allocate, configured prefixes), so an
//! attacker cannot place colliding keys and can only make lookups *miss*; SipHash's extra rounds
//! would buy nothing here. IPv4 SPI keys are hashed as one 64-bit word.
//!
//! # Layout
//!
//! * [`SpiTable`]: `(SPI, local outer address)` → `Arc<V>` (inbound SAs).
//! * [`TunnelTable`]: [`TunnelId`] → current outbound `Arc<V>`.
//! * [`RouteTable`]: longest-prefix match of the inner destination → [`TunnelId`] (route-based VPN).
//! * [`FlowTable`]: (inner source prefix × inner destination prefix) → [`TunnelId`] (policy-based
//!   VPN, IKEv2 traffic selectors).
//! * [`OutboundTables`] groups the outbound ones; [`InboundTable`] is the SPI table.

use std::fmt;
use std::sync::Arc;

mod prefix;
mod route;
mod spi;
mod tunnel;

pub use route::{FlowTable, MixedFamilies, RouteTable};
pub use spi::{SpiInUse, SpiTable};
pub use tunnel::TunnelTable;

/// The hash function of every table (seeded per process).
pub(crate) type Hasher = foldhash::fast::RandomState;

/// Security Parameter Index of an inbound SA, host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Spi(pub u32);

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Identifier of a tunnel (an IKE child SA pair and its successors across rekeys). Routes and
/// flows point to tunnels, tunnels point to their current outbound SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelId(pub u32);

impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tunnel {}", self.0)
    }
}

/// A reclamation domain shared by a set of tables, so that one [`ReadGuard`] covers them all.
///
/// Create one per data plane (cheap to clone: it is an `Arc`) and build every table from it.
/// Values removed from any of its tables are freed once no guard pinned before the removal is
/// still alive.
#[derive(Clone)]
pub struct Domain {
    collector: Arc<seize::Collector>,
}

impl Domain {
    /// A new, independent domain.
    pub fn new() -> Self {
        Self { collector: Arc::new(seize::Collector::new()) }
    }

    /// Pins the current thread: lookups in any table of this domain may use the returned guard,
    /// and the values they return stay valid until it is dropped. Workers pin once per burst and
    /// drop the guard before idling or blocking (a guard held forever delays all reclamation).
    ///
    /// Does not allocate (after the thread's first pin) and does not lock.
    pub fn pin(&self) -> ReadGuard<'_> {
        ReadGuard { inner: self.collector.enter() }
    }

    pub(crate) fn collector(&self) -> &Arc<seize::Collector> {
        &self.collector
    }
}

impl Default for Domain {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain").finish_non_exhaustive()
    }
}

/// Proof that the current thread is pinned in a [`Domain`]; see [`Domain::pin`].
///
/// Passing a guard of one domain to a table of another panics.
pub struct ReadGuard<'d> {
    inner: papaya::LocalGuard<'d>,
}

impl ReadGuard<'_> {
    pub(crate) fn raw(&self) -> &papaya::LocalGuard<'_> {
        &self.inner
    }
}

impl fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard").finish_non_exhaustive()
    }
}

/// The inbound table: `(SPI, local outer address)` → SA.
pub type InboundTable<V> = SpiTable<V>;

/// Outbound lookup tables of one data plane, all in one [`Domain`].
///
/// Route-based tunnels use [`routes`](Self::routes), policy-based ones [`flows`](Self::flows);
/// both resolve to a [`TunnelId`], which [`tunnels`](Self::tunnels) maps to its current SA.
pub struct OutboundTables<V> {
    /// Inner destination prefix → tunnel.
    pub routes: RouteTable,
    /// (inner source prefix, inner destination prefix) → tunnel.
    pub flows: FlowTable,
    /// Tunnel → current outbound SA.
    pub tunnels: TunnelTable<V>,
    domain: Domain,
}

impl<V: Send + Sync + 'static> OutboundTables<V> {
    /// Empty tables in `domain`.
    pub fn new(domain: &Domain) -> Self {
        Self {
            routes: RouteTable::new(domain),
            flows: FlowTable::new(domain),
            tunnels: TunnelTable::new(domain),
            domain: domain.clone(),
        }
    }

    /// Pins the current thread for a burst of lookups (see [`Domain::pin`]).
    pub fn pin(&self) -> ReadGuard<'_> {
        self.domain.pin()
    }

    /// The tunnel and its current outbound SA for an inner packet `src` → `dst`: a matching flow
    /// wins over a route (policy before routing, as in RFC 4301 SPD-before-forwarding); `None`
    /// when neither matches or the tunnel has no SA at the moment (e.g. before the first
    /// CREATE_CHILD_SA completed), in which case the packet is not protected by this table.
    ///
    /// # Panics
    /// If `guard` belongs to another [`Domain`].
    pub fn resolve<'g>(
        &'g self,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        guard: &'g ReadGuard<'_>,
    ) -> Option<(TunnelId, &'g Arc<V>)> {
        let tunnel = self.flows.lookup(src, dst, guard).or_else(|| self.routes.lookup(dst, guard))?;
        Some((tunnel, self.tunnels.get(tunnel, guard)?))
    }

    /// The domain these tables belong to (build the inbound table from it too).
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

impl<V> fmt::Debug for OutboundTables<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundTables")
            .field("routes", &self.routes.len())
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
