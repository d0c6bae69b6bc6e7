//! Outbound selection: [`RouteTable`] (destination prefix → tunnel, route-based VPN) and
//! [`FlowTable`] ((source prefix, destination prefix) → tunnel, policy-based VPN / IKEv2 traffic
//! selectors).
//!
//! Both are longest-prefix-match structures over IPv4 and IPv6 (see `prefix.rs`): lookups are
//! lock-free and allocation-free with a [`ReadGuard`]; each add or remove is one atomic change for
//! readers. Control-side writers of one table are serialised (a mutex readers never touch).

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ipnet::IpNet;

use super::prefix::{Change, Prefix, PrefixMap};
use super::{Domain, ReadGuard, TunnelId};

/// Destination routing table: the tunnel of the longest prefix containing the inner destination.
pub struct RouteTable {
    map: PrefixMap<TunnelId>,
    domain: Domain,
}

impl RouteTable {
    /// An empty table in `domain`.
    pub fn new(domain: &Domain) -> Self {
        Self { map: PrefixMap::new(domain), domain: domain.clone() }
    }

    /// Pins the current thread (same as [`Domain::pin`] on this table's domain).
    pub fn pin(&self) -> ReadGuard<'_> {
        self.domain.pin()
    }

    /// Routes `prefix` (host bits are ignored: `10.1.2.3/8` means `10.0.0.0/8`) into `tunnel`,
    /// replacing an existing route for the same prefix; returns the tunnel it replaced. `/0` is a
    /// default route, `/32` and `/128` host routes. Atomic to readers.
    pub fn add_route(&self, prefix: IpNet, tunnel: TunnelId) -> Option<TunnelId> {
        self.map.modify(Prefix::from_net(prefix), |old| (Change::Set(tunnel), old.copied()))
    }

    /// Removes the route for exactly `prefix`; returns its tunnel, `None` (no change) if absent.
    pub fn remove_route(&self, prefix: IpNet) -> Option<TunnelId> {
        self.map.modify(Prefix::from_net(prefix), |old| (Change::Remove, old.copied()))
    }

    /// Per-packet lookup: the tunnel of the longest prefix containing `dst`, `None` if no route
    /// matches. No lock, no allocation.
    ///
    /// # Panics
    /// If `guard` belongs to another [`Domain`].
    #[inline]
    pub fn lookup(&self, dst: IpAddr, guard: &ReadGuard<'_>) -> Option<TunnelId> {
        self.map.find(dst, guard, |_, t| Some(*t))
    }

    /// Like [`lookup`](Self::lookup), also returning the matching prefix (diagnostics).
    pub fn lookup_route(&self, dst: IpAddr, guard: &ReadGuard<'_>) -> Option<(IpNet, TunnelId)> {
        self.map.find(dst, guard, |len, t| {
            let net = IpNet::new_assert(dst, len).trunc();
            Some((net, *t))
        })
    }

    /// The tunnel of exactly `prefix` (no longest-prefix match).
    pub fn route(&self, prefix: IpNet) -> Option<TunnelId> {
        let guard = self.pin();
        self.map.get_exact(Prefix::from_net(prefix), &guard).copied()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot of all routes for reconciliation (allocates; control side only).
    pub fn routes(&self) -> Vec<(IpNet, TunnelId)> {
        let guard = self.pin();
        let mut out = Vec::with_capacity(self.len());
        self.map.for_each(&guard, |p, t| out.push((p.to_net(), *t)));
        out
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable").field("len", &self.len()).finish_non_exhaustive()
    }
}

/// [`FlowTable::add_flow`] was given an IPv4 source with an IPv6 destination or vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixedFamilies;

impl fmt::Display for MixedFamilies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("flow source and destination prefixes are of different IP families")
    }
}

impl std::error::Error for MixedFamilies {}

/// One source selector under a destination prefix.
#[derive(Debug, Clone, Copy)]
struct FlowSrc {
    src: Prefix,
    tunnel: TunnelId,
}

/// Protected flows: (inner source prefix × inner destination prefix) → tunnel.
///
/// Matching order: the longest destination prefix that has a flow whose source prefix contains
/// the packet's source; among the flows of one destination prefix, the longest source prefix.
/// So `(10.0.0.0/8 → 192.168.1.0/24)` beats `(10.1.0.0/16 → 192.168.0.0/16)` for
/// `10.1.1.1 → 192.168.1.1`, and a destination prefix whose sources do not match falls through
/// to shorter destination prefixes.
///
/// Internally: longest-prefix match on the destination to an immutable list of
/// `(source prefix, tunnel)` sorted most specific source first, replaced copy-on-write (one atomic
/// pointer swap) when a flow under that destination prefix is added or removed.
pub struct FlowTable {
    map: PrefixMap<Arc<[FlowSrc]>>,
    flows: AtomicUsize,
    domain: Domain,
}

impl FlowTable {
    /// An empty table in `domain`.
    pub fn new(domain: &Domain) -> Self {
        Self { map: PrefixMap::new(domain), flows: AtomicUsize::new(0), domain: domain.clone() }
    }

    /// Pins the current thread (same as [`Domain::pin`] on this table's domain).
    pub fn pin(&self) -> ReadGuard<'_> {
        self.domain.pin()
    }

    /// Protects traffic from `src` to `dst` (host bits ignored) through `tunnel`, replacing the
    /// tunnel of an identical flow; returns the tunnel it replaced. Atomic to readers. Allocates
    /// a new source list for `dst` (control side).
    ///
    /// # Errors
    /// [`MixedFamilies`] if `src` and `dst` are not of the same IP family.
    pub fn add_flow(&self, src: IpNet, dst: IpNet, tunnel: TunnelId) -> Result<Option<TunnelId>, MixedFamilies> {
        if matches!(src, IpNet::V4(_)) != matches!(dst, IpNet::V4(_)) {
            return Err(MixedFamilies);
        }
        let src = Prefix::from_net(src);
        Ok(self.map.modify(Prefix::from_net(dst), |old| {
            let mut list: Vec<FlowSrc> = old.map(|l| l.to_vec()).unwrap_or_default();
            let replaced = match list.iter_mut().find(|f| f.src == src) {
                Some(f) => Some(std::mem::replace(&mut f.tunnel, tunnel)),
                None => {
                    list.push(FlowSrc { src, tunnel });
                    // Most specific source first; ties in a fixed order.
                    list.sort_by_key(|f| (std::cmp::Reverse(f.src.len()), src_order(f.src)));
                    self.flows.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            (Change::Set(list.into()), replaced)
        }))
    }

    /// Removes the flow `src` → `dst` (exact prefixes); returns its tunnel, `None` (no change) if
    /// absent.
    pub fn remove_flow(&self, src: IpNet, dst: IpNet) -> Option<TunnelId> {
        let src = Prefix::from_net(src);
        self.map.modify(Prefix::from_net(dst), |old| {
            let Some(list) = old else {
                return (Change::Keep, None);
            };
            let Some(pos) = list.iter().position(|f| f.src == src) else {
                return (Change::Keep, None);
            };
            self.flows.fetch_sub(1, Ordering::Relaxed);
            let tunnel = list[pos].tunnel;
            if list.len() == 1 {
                return (Change::Remove, Some(tunnel));
            }
            let rest: Vec<FlowSrc> = list.iter().enumerate().filter(|&(i, _)| i != pos).map(|(_, f)| *f).collect();
            (Change::Set(rest.into()), Some(tunnel))
        })
    }

    /// Per-packet lookup: the tunnel protecting `src` → `dst`, `None` if no flow matches. No lock,
    /// no allocation.
    ///
    /// # Panics
    /// If `guard` belongs to another [`Domain`].
    #[inline]
    pub fn lookup(&self, src: IpAddr, dst: IpAddr, guard: &ReadGuard<'_>) -> Option<TunnelId> {
        self.map.find(dst, guard, |_, list| list.iter().find(|f| f.src.contains(src)).map(|f| f.tunnel))
    }

    /// Like [`lookup`](Self::lookup), also returning the matching `(source, destination)`
    /// prefixes (diagnostics).
    pub fn lookup_flow(&self, src: IpAddr, dst: IpAddr, guard: &ReadGuard<'_>) -> Option<(IpNet, IpNet, TunnelId)> {
        self.map.find(dst, guard, |len, list| {
            list.iter().find(|f| f.src.contains(src)).map(|f| {
                let dst = IpNet::new_assert(dst, len).trunc();
                (f.src.to_net(), dst, f.tunnel)
            })
        })
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.load(Ordering::Relaxed)
    }

    /// Whether there is no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot of all flows `(src, dst, tunnel)` for reconciliation (allocates; control side).
    pub fn flows(&self) -> Vec<(IpNet, IpNet, TunnelId)> {
        let guard = self.pin();
        let mut out = Vec::with_capacity(self.len());
        self.map.for_each(&guard, |dst, list| {
            let dst = dst.to_net();
            out.extend(list.iter().map(|f| (f.src.to_net(), dst, f.tunnel)));
        });
        out
    }
}

/// Deterministic order among source prefixes of equal length.
fn src_order(p: Prefix) -> u128 {
    match p {
        Prefix::V4(a, _) => u128::from(a),
        Prefix::V6(a, _) => a,
    }
}

impl fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTable").field("len", &self.len()).finish_non_exhaustive()
    }
}
