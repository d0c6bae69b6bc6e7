//! Longest-prefix-match map (internal), shared by [`super::RouteTable`] and
//! [`super::FlowTable`].
//!
//! One lock-free hash map per prefix length (33 for IPv4, 129 for IPv6), keyed by the masked
//! network address, plus an atomic bitmask of the lengths that hold at least one prefix. A lookup
//! walks the present lengths from the longest down and probes one map per length: with the
//! handful of distinct lengths real configurations use (/32 host routes, /24, a default route)
//! that is one to three hash lookups, whatever the number of prefixes.
//!
//! Readers: no lock, no allocation. Writers (control side) are serialised by a mutex that only
//! guards the per-length counts behind the bitmask. A length's bit is set *before* its first
//! prefix becomes visible and cleared only *after* its last prefix was removed, with no other
//! writer in between; so a reader never misses a prefix that is in the map (it may probe an empty
//! map, which is just a miss at that length).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Domain, Hasher, ReadGuard};

/// A prefix normalised to integer form: family, network address (host bits cleared), length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    V4(u32, u8),
    V6(u128, u8),
}

impl Prefix {
    pub(crate) fn from_net(net: IpNet) -> Self {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                Prefix::V4(mask4(n.addr().to_bits(), len), len)
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                Prefix::V6(mask6(n.addr().to_bits(), len), len)
            }
        }
    }

    pub(crate) fn to_net(self) -> IpNet {
        match self {
            Prefix::V4(a, l) => IpNet::V4(Ipv4Net::new_assert(a.into(), l)),
            Prefix::V6(a, l) => IpNet::V6(Ipv6Net::new_assert(a.into(), l)),
        }
    }

    /// Whether `addr` lies inside this prefix (false across families).
    #[inline]
    pub(crate) fn contains(self, addr: IpAddr) -> bool {
        match (self, addr) {
            (Prefix::V4(n, l), IpAddr::V4(a)) => mask4(a.to_bits(), l) == n,
            (Prefix::V6(n, l), IpAddr::V6(a)) => mask6(a.to_bits(), l) == n,
            _ => false,
        }
    }

    pub(crate) fn len(self) -> u8 {
        match self {
            Prefix::V4(_, l) | Prefix::V6(_, l) => l,
        }
    }
}

#[inline]
pub(crate) fn mask4(a: u32, len: u8) -> u32 {
    a & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

#[inline]
pub(crate) fn mask6(a: u128, len: u8) -> u128 {
    a & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// Writer-side bookkeeping: number of prefixes per length.
struct Counts {
    v4: [usize; 33],
    v6: [usize; 129],
}

pub(crate) struct PrefixMap<T> {
    v4: Box<[papaya::HashMap<u32, T, Hasher>]>,
    v6: Box<[papaya::HashMap<u128, T, Hasher>]>,
    /// Bit `l` set: `v4[l]` may hold prefixes.
    v4_present: AtomicU64,
    /// Bit `l % 64` of word `l / 64` set: `v6[l]` may hold prefixes.
    v6_present: [AtomicU64; 3],
    writer: Mutex<Counts>,
    /// Total number of prefixes (written under `writer`).
    total: AtomicUsize,
    domain: Domain,
}

/// What a [`PrefixMap::modify`] closure wants done with the entry.
pub(crate) enum Change<T> {
    Keep,
    Set(T),
    Remove,
}

impl<T: Send + Sync + 'static> PrefixMap<T> {
    pub(crate) fn new(domain: &Domain) -> Self {
        fn map<K: Send + 'static, T: Send + 'static>(domain: &Domain) -> papaya::HashMap<K, T, Hasher> {
            papaya::HashMap::builder()
                .hasher(Hasher::default())
                // Writers finish a resize before going on: readers (the workers) never search two tables.
                .resize_mode(papaya::ResizeMode::Blocking)
                .shared_collector(Arc::clone(domain.collector()))
                .build()
        }
        Self {
            v4: (0..=32).map(|_| map(domain)).collect(),
            v6: (0..=128).map(|_| map(domain)).collect(),
            v4_present: AtomicU64::new(0),
            v6_present: [const { AtomicU64::new(0) }; 3],
            writer: Mutex::new(Counts { v4: [0; 33], v6: [0; 129] }),
            total: AtomicUsize::new(0),
            domain: domain.clone(),
        }
    }

    /// Calls `f` with the values of the prefixes containing `addr`, longest first, until it
    /// returns `Some`.
    #[inline]
    pub(crate) fn find<'g, R>(
        &'g self,
        addr: IpAddr,
        guard: &'g ReadGuard<'_>,
        mut f: impl FnMut(u8, &'g T) -> Option<R>,
    ) -> Option<R> {
        let g = guard.raw();
        match addr {
            IpAddr::V4(a) => {
                let a = a.to_bits();
                let mut present = self.v4_present.load(Ordering::Acquire);
                while present != 0 {
                    let len = 63 - present.leading_zeros();
                    present &= !(1u64 << len);
                    let len = len as u8;
                    if let Some(v) = self.v4[usize::from(len)].get(&mask4(a, len), g) {
                        if let Some(r) = f(len, v) {
                            return Some(r);
                        }
                    }
                }
                None
            }
            IpAddr::V6(a) => {
                let a = a.to_bits();
                for word in (0..3).rev() {
                    let mut present = self.v6_present[word].load(Ordering::Acquire);
                    while present != 0 {
                        let bit = 63 - present.leading_zeros();
                        present &= !(1u64 << bit);
                        let len = (word * 64) as u8 + bit as u8;
                        if let Some(v) = self.v6[usize::from(len)].get(&mask6(a, len), g) {
                            if let Some(r) = f(len, v) {
                                return Some(r);
                            }
                        }
                    }
                }
                None
            }
        }
    }

    /// The value stored for exactly `prefix`.
    pub(crate) fn get_exact<'g>(&'g self, prefix: Prefix, guard: &'g ReadGuard<'_>) -> Option<&'g T> {
        match prefix {
            Prefix::V4(a, l) => self.v4[usize::from(l)].get(&a, guard.raw()),
            Prefix::V6(a, l) => self.v6[usize::from(l)].get(&a, guard.raw()),
        }
    }

    /// Read-modify-write of the entry for `prefix`, serialised with all other writers; the change
    /// itself is one atomic insert or remove for readers. Returns what `f` returned.
    pub(crate) fn modify<R>(&self, prefix: Prefix, f: impl FnOnce(Option<&T>) -> (Change<T>, R)) -> R {
        let mut counts = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let pinned = self.domain.pin();
        let guard = pinned.raw();
        let (count, present, bit): (&mut usize, &AtomicU64, u64) = match prefix {
            Prefix::V4(_, l) => (&mut counts.v4[usize::from(l)], &self.v4_present, 1 << l),
            Prefix::V6(_, l) => (&mut counts.v6[usize::from(l)], &self.v6_present[usize::from(l / 64)], 1 << (l % 64)),
        };
        let current = match prefix {
            Prefix::V4(a, l) => self.v4[usize::from(l)].get(&a, guard),
            Prefix::V6(a, l) => self.v6[usize::from(l)].get(&a, guard),
        };
        let existed = current.is_some();
        let (change, result) = f(current);
        match change {
            Change::Keep => {}
            Change::Set(value) => {
                if !existed {
                    // Publish the length before the prefix.
                    *count += 1;
                    self.total.fetch_add(1, Ordering::Relaxed);
                    present.fetch_or(bit, Ordering::Release);
                }
                match prefix {
                    Prefix::V4(a, l) => {
                        self.v4[usize::from(l)].insert(a, value, guard);
                    }
                    Prefix::V6(a, l) => {
                        self.v6[usize::from(l)].insert(a, value, guard);
                    }
                }
            }
            Change::Remove => {
                if existed {
                    match prefix {
                        Prefix::V4(a, l) => {
                            self.v4[usize::from(l)].remove(&a, guard);
                        }
                        Prefix::V6(a, l) => {
                            self.v6[usize::from(l)].remove(&a, guard);
                        }
                    }
                    *count -= 1;
                    self.total.fetch_sub(1, Ordering::Relaxed);
                    if *count == 0 {
                        // Last prefix of this length is gone: stop probing it.
                        present.fetch_and(!bit, Ordering::Release);
                    }
                }
            }
        }
        result
    }

    /// Every prefix and its value (weakly consistent under concurrent writers).
    pub(crate) fn for_each<'g>(&'g self, guard: &'g ReadGuard<'_>, mut f: impl FnMut(Prefix, &'g T)) {
        let g = guard.raw();
        for (l, m) in self.v4.iter().enumerate() {
            for (a, v) in m.iter(g) {
                f(Prefix::V4(*a, l as u8), v);
            }
        }
        for (l, m) in self.v6.iter().enumerate() {
            for (a, v) in m.iter(g) {
                f(Prefix::V6(*a, l as u8), v);
            }
        }
    }

    /// Number of prefixes (exact: maintained by the serialised writers).
    pub(crate) fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}
