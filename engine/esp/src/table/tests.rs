//! Unit tests of the SA tables: LPM and flow matching against brute-force references,
//! concurrent replace/rekey visibility, make-before-break, absent-key removal.

use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use ipnet::IpNet;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[derive(Debug, PartialEq)]
struct Sa(u32);

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn tables_are_send_sync() {
    assert_send_sync::<SpiTable<Sa>>();
    assert_send_sync::<TunnelTable<Sa>>();
    assert_send_sync::<RouteTable>();
    assert_send_sync::<FlowTable>();
    assert_send_sync::<OutboundTables<Sa>>();
    assert_send_sync::<Domain>();
}

#[test]
fn route_basics_default_host_overlap() {
    let d = Domain::new();
    let r = RouteTable::new(&d);
    let g = d.pin();
    assert_eq!(r.lookup(ip("10.1.2.3"), &g), None);
    assert_eq!(r.add_route(net("0.0.0.0/0"), TunnelId(1)), None);
    assert_eq!(r.add_route(net("10.0.0.0/8"), TunnelId(2)), None);
    assert_eq!(r.add_route(net("10.1.0.0/16"), TunnelId(3)), None);
    assert_eq!(r.add_route(net("10.1.2.3/32"), TunnelId(4)), None);
    // Host bits are ignored.
    assert_eq!(r.add_route(net("10.1.2.99/24"), TunnelId(5)), None);
    assert_eq!(r.len(), 5);
    assert_eq!(r.lookup(ip("10.1.2.3"), &g), Some(TunnelId(4)));
    assert_eq!(r.lookup(ip("10.1.2.4"), &g), Some(TunnelId(5)));
    assert_eq!(r.lookup(ip("10.1.3.4"), &g), Some(TunnelId(3)));
    assert_eq!(r.lookup(ip("10.2.3.4"), &g), Some(TunnelId(2)));
    assert_eq!(r.lookup(ip("11.0.0.1"), &g), Some(TunnelId(1)));
    assert_eq!(r.lookup_route(ip("10.1.2.200"), &g), Some((net("10.1.2.0/24"), TunnelId(5))));
    // IPv4 routes never match IPv6 and vice versa.
    assert_eq!(r.lookup(ip("::1"), &g), None);
    assert_eq!(r.add_route(net("::/0"), TunnelId(6)), None);
    assert_eq!(r.add_route(net("2001:db8::/32"), TunnelId(7)), None);
    assert_eq!(r.add_route(net("2001:db8::1/128"), TunnelId(8)), None);
    assert_eq!(r.lookup(ip("2001:db8::1"), &g), Some(TunnelId(8)));
    assert_eq!(r.lookup(ip("2001:db8::2"), &g), Some(TunnelId(7)));
    assert_eq!(r.lookup(ip("2001:db9::2"), &g), Some(TunnelId(6)));
    assert_eq!(r.lookup(ip("10.1.2.3"), &g), Some(TunnelId(4)));
    // Replace returns the old tunnel; remove of absent is a no-op.
    assert_eq!(r.add_route(net("10.0.0.0/8"), TunnelId(9)), Some(TunnelId(2)));
    assert_eq!(r.route(net("10.0.0.0/8")), Some(TunnelId(9)));
    assert_eq!(r.remove_route(net("10.3.0.0/16")), None);
    assert_eq!(r.remove_route(net("10.1.2.3/32")), Some(TunnelId(4)));
    assert_eq!(r.remove_route(net("10.1.2.3/32")), None);
    assert_eq!(r.lookup(ip("10.1.2.3"), &g), Some(TunnelId(5)));
    assert_eq!(r.remove_route(net("0.0.0.0/0")), Some(TunnelId(1)));
    assert_eq!(r.lookup(ip("11.0.0.1"), &g), None);
    assert_eq!(r.len(), 6);
    let mut all = r.routes();
    all.sort();
    assert_eq!(all.len(), 6);
    assert!(all.contains(&(net("10.1.2.0/24"), TunnelId(5))));
}

/// Random prefixes, clustered so that they overlap a lot.
fn random_prefix(rng: &mut XorShift, v6: bool, bases: &[u128]) -> IpNet {
    let base = bases[rng.below(bases.len() as u64) as usize];
    if v6 {
        let len = match rng.below(4) {
            0 => [0u8, 32, 48, 64, 128][rng.below(5) as usize],
            _ => rng.below(129) as u8,
        };
        let noise = rng.u128() >> rng.below(128);
        IpNet::new(IpAddr::V6(Ipv6Addr::from_bits(base ^ noise)), len).unwrap().trunc()
    } else {
        let len = match rng.below(4) {
            0 => [0u8, 8, 16, 24, 32][rng.below(5) as usize],
            _ => rng.below(33) as u8,
        };
        let noise = (rng.next() as u32) >> rng.below(32);
        IpNet::new(IpAddr::V4(Ipv4Addr::from_bits(base as u32 ^ noise)), len).unwrap().trunc()
    }
}

fn random_addr(rng: &mut XorShift, v6: bool, bases: &[u128]) -> IpAddr {
    let base = bases[rng.below(bases.len() as u64) as usize];
    if v6 {
        IpAddr::V6(Ipv6Addr::from_bits(base ^ (rng.u128() >> rng.below(128))))
    } else {
        IpAddr::V4(Ipv4Addr::from_bits(base as u32 ^ ((rng.next() as u32) >> rng.below(32))))
    }
}

#[test]
fn lpm_matches_brute_force() {
    for v6 in [false, true] {
        let mut rng = XorShift(if v6 { 0x1234_5678_9ABC } else { 0xFEED_F00D });
        let bases: Vec<u128> = (0..4).map(|_| rng.u128()).collect();
        let d = Domain::new();
        let r = RouteTable::new(&d);
        let mut reference: Vec<(IpNet, TunnelId)> = Vec::new();
        for round in 0..3 {
            // Add 400 prefixes, remove ~a third of all.
            for i in 0..400u32 {
                let p = random_prefix(&mut rng, v6, &bases);
                let t = TunnelId(round * 1000 + i);
                let old = reference.iter().position(|(q, _)| *q == p);
                let expect_old = old.map(|i| reference[i].1);
                assert_eq!(r.add_route(p, t), expect_old);
                match old {
                    Some(i) => reference[i].1 = t,
                    None => reference.push((p, t)),
                }
            }
            let mut k = 0;
            reference.retain(|(p, t)| {
                k += 1;
                if (k as u64).is_multiple_of(3) {
                    assert_eq!(r.remove_route(*p), Some(*t));
                    false
                } else {
                    true
                }
            });
            assert_eq!(r.len(), reference.len());
            let g = d.pin();
            for _ in 0..3000 {
                let a = random_addr(&mut rng, v6, &bases);
                let expect = reference
                    .iter()
                    .filter(|(p, _)| p.contains(&a))
                    .max_by_key(|(p, _)| p.prefix_len())
                    .map(|(p, t)| (*p, *t));
                assert_eq!(r.lookup_route(a, &g), expect, "addr {a}");
                assert_eq!(r.lookup(a, &g), expect.map(|e| e.1));
            }
        }
    }
}

#[test]
fn flows_match_reference() {
    let d = Domain::new();
    let f = FlowTable::new(&d);
    let g = d.pin();
    // Overlapping sources and destinations.
    f.add_flow(net("10.0.0.0/8"), net("192.168.0.0/16"), TunnelId(1)).unwrap();
    f.add_flow(net("10.1.0.0/16"), net("192.168.0.0/16"), TunnelId(2)).unwrap();
    f.add_flow(net("10.0.0.0/8"), net("192.168.1.0/24"), TunnelId(3)).unwrap();
    f.add_flow(net("172.16.0.0/12"), net("192.168.0.0/16"), TunnelId(4)).unwrap();
    f.add_flow(net("0.0.0.0/0"), net("0.0.0.0/0"), TunnelId(5)).unwrap();
    assert_eq!(f.len(), 5);
    // Longest destination first, then longest source.
    assert_eq!(f.lookup(ip("10.1.1.1"), ip("192.168.1.1"), &g), Some(TunnelId(3)));
    assert_eq!(f.lookup(ip("10.1.1.1"), ip("192.168.2.1"), &g), Some(TunnelId(2)));
    assert_eq!(f.lookup(ip("10.2.1.1"), ip("192.168.2.1"), &g), Some(TunnelId(1)));
    // /24 destination has no matching source: falls through to the /16.
    assert_eq!(f.lookup(ip("172.16.5.5"), ip("192.168.1.1"), &g), Some(TunnelId(4)));
    assert_eq!(f.lookup(ip("8.8.8.8"), ip("192.168.1.1"), &g), Some(TunnelId(5)));
    assert_eq!(
        f.lookup_flow(ip("10.1.1.1"), ip("192.168.2.1"), &g),
        Some((net("10.1.0.0/16"), net("192.168.0.0/16"), TunnelId(2)))
    );
    assert_eq!(f.lookup(ip("::1"), ip("::2"), &g), None);
    // Mixed families are refused; replace and remove.
    assert_eq!(f.add_flow(net("10.0.0.0/8"), net("::/0"), TunnelId(9)), Err(MixedFamilies));
    assert_eq!(f.add_flow(net("10.1.0.0/16"), net("192.168.0.0/16"), TunnelId(6)), Ok(Some(TunnelId(2))));
    assert_eq!(f.len(), 5);
    assert_eq!(f.remove_flow(net("10.1.0.0/16"), net("192.168.0.0/16")), Some(TunnelId(6)));
    assert_eq!(f.remove_flow(net("10.1.0.0/16"), net("192.168.0.0/16")), None);
    assert_eq!(f.remove_flow(net("10.9.0.0/16"), net("192.168.0.0/16")), None);
    assert_eq!(f.lookup(ip("10.1.1.1"), ip("192.168.2.1"), &g), Some(TunnelId(1)));
    assert_eq!(f.remove_flow(net("0.0.0.0/0"), net("0.0.0.0/0")), Some(TunnelId(5)));
    assert_eq!(f.lookup(ip("8.8.8.8"), ip("192.168.1.1"), &g), None);
    assert_eq!(f.len(), 3);
    assert_eq!(f.flows().len(), 3);

    // Random flows against a brute-force reference with the documented precedence.
    for v6 in [false, true] {
        let mut rng = XorShift(if v6 { 77 } else { 78 });
        let bases: Vec<u128> = (0..3).map(|_| rng.u128()).collect();
        let f = FlowTable::new(&d);
        let mut reference: Vec<(IpNet, IpNet, TunnelId)> = Vec::new();
        for i in 0..300u32 {
            let (s, t) = (random_prefix(&mut rng, v6, &bases), random_prefix(&mut rng, v6, &bases));
            let old = reference.iter().position(|(a, b, _)| (*a, *b) == (s, t));
            assert_eq!(f.add_flow(s, t, TunnelId(i)).unwrap(), old.map(|o| reference[o].2));
            match old {
                Some(o) => reference[o].2 = TunnelId(i),
                None => reference.push((s, t, TunnelId(i))),
            }
            if i.is_multiple_of(4) {
                let (s, t, id) = reference.swap_remove(rng.below(reference.len() as u64) as usize);
                assert_eq!(f.remove_flow(s, t), Some(id));
            }
        }
        assert_eq!(f.len(), reference.len());
        let g = d.pin();
        for _ in 0..3000 {
            let (s, t) = (random_addr(&mut rng, v6, &bases), random_addr(&mut rng, v6, &bases));
            let expect = reference
                .iter()
                .filter(|(a, b, _)| a.contains(&s) && b.contains(&t))
                .max_by_key(|(a, b, _)| (b.prefix_len(), a.prefix_len()))
                .copied();
            assert_eq!(f.lookup_flow(s, t, &g), expect, "{s} -> {t}");
        }
    }
}

#[test]
fn spi_table_make_before_break() {
    let d = Domain::new();
    let t: SpiTable<Sa> = SpiTable::new(&d);
    let local = ip("192.0.2.1");
    let old = Arc::new(Sa(1));
    t.insert(Spi(0x1000), local, Arc::clone(&old)).unwrap();
    assert_eq!(t.insert(Spi(0x1000), local, Arc::new(Sa(9))), Err(SpiInUse(Spi(0x1000))));
    // Same SPI on another local address is another SA.
    t.insert(Spi(0x1000), ip("2001:db8::1"), Arc::new(Sa(7))).unwrap();
    // Rekey: new SA installed, both resolvable during the overlap.
    t.insert(Spi(0x2000), local, Arc::new(Sa(2))).unwrap();
    {
        let g = t.pin();
        assert_eq!(t.get(Spi(0x1000), local, &g).map(|s| s.0), Some(1));
        assert_eq!(t.get(Spi(0x2000), local, &g).map(|s| s.0), Some(2));
        assert_eq!(t.get(Spi(0x1000), ip("2001:db8::1"), &g).map(|s| s.0), Some(7));
        assert_eq!(t.get(Spi(0x3000), local, &g), None);
        assert_eq!(t.iter(&g).count(), 3);
    }
    // Old removed after the overlap; a second remove is a no-op.
    assert!(Arc::ptr_eq(&t.remove(Spi(0x1000), local).unwrap(), &old));
    assert_eq!(t.remove(Spi(0x1000), local), None);
    assert!(!t.contains(Spi(0x1000), local));
    assert_eq!(t.get_cloned(Spi(0x2000), local).map(|s| s.0), Some(2));
    assert_eq!(t.replace(Spi(0x2000), local, Arc::new(Sa(3))).map(|s| s.0), Some(2));
    assert_eq!(t.replace(Spi(0x4000), local, Arc::new(Sa(4))), None);
    assert_eq!(t.len(), 3);
}

#[test]
fn removed_value_outlives_guard_then_drops() {
    let d = Domain::new();
    let t: SpiTable<Sa> = SpiTable::new(&d);
    let local = ip("192.0.2.1");
    let sa = Arc::new(Sa(1));
    t.insert(Spi(1), local, Arc::clone(&sa)).unwrap();
    let g = t.pin();
    let seen = t.get(Spi(1), local, &g).unwrap();
    t.remove(Spi(1), local);
    // The reader's reference stays valid for its burst.
    assert_eq!(seen.0, 1);
    drop(g);
    drop(t);
    drop(d);
    assert_eq!(Arc::strong_count(&sa), 1, "table's reference released");
}

#[test]
#[should_panic]
fn guard_of_other_domain_panics() {
    let (d1, d2) = (Domain::new(), Domain::new());
    let t: TunnelTable<Sa> = TunnelTable::new(&d1);
    let g = d2.pin();
    let _ = t.get(TunnelId(1), &g);
}

#[test]
fn tunnel_switch_while_readers_read() {
    let d = Domain::new();
    let tunnels: Arc<TunnelTable<Sa>> = Arc::new(TunnelTable::new(&d));
    let a = Arc::new(Sa(1));
    let b = Arc::new(Sa(2));
    tunnels.set_sa(TunnelId(7), Arc::clone(&a));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (tunnels, stop, start, d) = (Arc::clone(&tunnels), Arc::clone(&stop), Arc::clone(&start), d.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut seen = [0u64; 2];
                let mut bursts = 0u64;
                while !stop.load(Ordering::Relaxed) || bursts < 10 {
                    let g = d.pin();
                    for _ in 0..64 {
                        let sa = tunnels.get(TunnelId(7), &g).expect("never absent");
                        match sa.0 {
                            1 => seen[0] += 1,
                            2 => seen[1] += 1,
                            other => panic!("torn value {other}"),
                        }
                    }
                    bursts += 1;
                }
                seen
            })
        })
        .collect();
    start.wait();
    for i in 0..20_000u32 {
        let next = if i.is_multiple_of(2) { &b } else { &a };
        let prev = tunnels.set_sa(TunnelId(7), Arc::clone(next)).unwrap();
        assert_ne!(prev.0, next.0);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let seen = r.join().unwrap();
        assert!(seen[0] + seen[1] > 0);
    }
    assert_eq!(tunnels.clear(TunnelId(7)).map(|s| s.0), Some(1));
    assert_eq!(tunnels.clear(TunnelId(7)), None);
    assert!(tunnels.is_empty());
}

#[test]
fn spi_rekey_while_readers_read() {
    // A writer keeps rekeying (insert new SPI, publish it, remove old) while readers check that
    // the published SPI always resolves (make-before-break leaves no gap).
    let d = Domain::new();
    let t: Arc<SpiTable<Sa>> = Arc::new(SpiTable::new(&d));
    let local = ip("198.51.100.1");
    t.insert(Spi(0), local, Arc::new(Sa(0))).unwrap();
    let current = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (t, stop, current) = (Arc::clone(&t), Arc::clone(&stop), Arc::clone(&current));
            std::thread::spawn(move || {
                let mut hits = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let g = t.pin();
                    // While `current == c`, SPI c is installed: the writer inserts c before
                    // publishing it and removes it only after publishing c + 1.
                    let c = current.load(Ordering::Acquire);
                    let found = t.get(Spi(c), local, &g).is_some();
                    if !found {
                        assert_ne!(current.load(Ordering::Acquire), c, "gap at spi {c}");
                    }
                    hits += 1;
                }
                hits
            })
        })
        .collect();
    for n in 0..5_000u32 {
        t.insert(Spi(n + 1), local, Arc::new(Sa(n + 1))).unwrap();
        current.store(n + 1, Ordering::Release);
        assert_eq!(t.remove(Spi(n), local).map(|s| s.0), Some(n));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(t.len(), 1);
}

#[test]
fn route_churn_never_hides_a_stable_route() {
    // Prefixes of the same length as a stable route are added and removed concurrently (the
    // length's presence bit is set and cleared around them); readers must always find the
    // stable route.
    let d = Domain::new();
    let r = Arc::new(RouteTable::new(&d));
    r.add_route(net("10.9.9.0/24"), TunnelId(1));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (r, stop, d) = (Arc::clone(&r), Arc::clone(&stop), d.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let g = d.pin();
                    for _ in 0..64 {
                        assert_eq!(r.lookup(ip("10.9.9.9"), &g), Some(TunnelId(1)));
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..2u8)
        .map(|w| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                for i in 0..3_000u32 {
                    let p: IpNet = format!("10.{w}.{}.0/24", i % 256).parse().unwrap();
                    let p2: IpNet = format!("10.{w}.{}.0/20", i % 256).parse().unwrap();
                    r.add_route(p, TunnelId(2));
                    r.add_route(p2, TunnelId(3));
                    r.remove_route(p);
                    r.remove_route(p2);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // Remove the stable route last: then the /24 and /20 lengths are empty.
    stop.store(true, Ordering::Relaxed);
    for h in readers {
        h.join().unwrap();
    }
    assert_eq!(r.len(), 1);
    assert_eq!(r.remove_route(net("10.9.9.0/24")), Some(TunnelId(1)));
    assert!(r.is_empty());
    let g = d.pin();
    assert_eq!(r.lookup(ip("10.9.9.9"), &g), None);
}

#[test]
fn outbound_resolve_flow_then_route() {
    let d = Domain::new();
    let out: OutboundTables<Sa> = OutboundTables::new(&d);
    let inbound: InboundTable<Sa> = SpiTable::new(out.domain());
    out.routes.add_route(net("0.0.0.0/0"), TunnelId(1));
    out.flows.add_flow(net("10.0.0.0/8"), net("192.168.0.0/16"), TunnelId(2)).unwrap();
    out.tunnels.set_sa(TunnelId(1), Arc::new(Sa(100)));
    inbound.insert(Spi(5), ip("192.0.2.1"), Arc::new(Sa(5))).unwrap();
    // One guard for inbound and outbound tables.
    let g = out.pin();
    assert_eq!(inbound.get(Spi(5), ip("192.0.2.1"), &g).map(|s| s.0), Some(5));
    let (t, sa) = out.resolve(ip("10.0.0.1"), ip("8.8.8.8"), &g).unwrap();
    assert_eq!((t, sa.0), (TunnelId(1), 100));
    // The flow's tunnel has no SA yet.
    assert!(out.resolve(ip("10.0.0.1"), ip("192.168.0.1"), &g).is_none());
    out.tunnels.set_sa(TunnelId(2), Arc::new(Sa(200)));
    let (t, sa) = out.resolve(ip("10.0.0.1"), ip("192.168.0.1"), &g).unwrap();
    assert_eq!((t, sa.0), (TunnelId(2), 200));
    assert_eq!(out.tunnels.iter(&g).count(), 2);
    assert_eq!(format!("{}", Spi(0x10)), "0x00000010");
}
