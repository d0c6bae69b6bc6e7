//! Scale test of the SA tables: 1,000,000 inbound SAs, 1,000,000 /32 routes and 1,000,000
//! tunnels, with a counting global allocator to report the memory cost per entry.
//!
//! Contract checked: every inserted key is found (sampled), absent keys miss, and the tables
//! stay within a sane memory budget per entry. Numbers are printed (`--nocapture`):
//! "table" = bytes the table itself allocates per entry (the SA value excluded), "with SA" adds
//! the `Arc<FakeSa>` allocation (256-byte stand-in for an SA, plus the Arc's two counters).
//! Bytes are the sizes *requested* from the allocator; malloc adds its per-chunk overhead on top
//! (glibc: 8 bytes and rounding to 16, so a 16-byte table entry occupies a 32-byte chunk).
//!
//! The 1M case runs in the default test run when it is fast enough; `scale_100k` is a smaller
//! copy that always runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use ipnet::{IpNet, Ipv4Net};
use ipsec_esp::table::{Domain, RouteTable, Spi, SpiTable, TunnelId, TunnelTable};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The tests share the global counters: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Stand-in for an SA: 256 bytes.
struct FakeSa {
    _state: [u8; 256],
}

fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64
}

/// A bijection on u32 (odd multiplier), so SPIs are distinct and spread.
fn spi_of(i: u32) -> Spi {
    Spi(i.wrapping_mul(0x9E37_79B9) ^ 0x5A5A_5A5A)
}

/// Local outer addresses: a few IPv4 and one IPv6, as on a real gateway.
fn local_of(i: u32) -> IpAddr {
    match i % 8 {
        7 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        k => IpAddr::V4(Ipv4Addr::new(192, 0, 2, k as u8 + 1)),
    }
}

fn remote_host(i: u32) -> Ipv4Addr {
    // 10.0.0.0/8 and up, distinct per i.
    Ipv4Addr::from_bits(0x0A00_0000 + i)
}

/// Fills `out` (allocated beforehand, so only the SAs are counted) with `n` SAs.
fn make_sas(out: &mut Vec<Arc<FakeSa>>, n: u32) {
    out.extend((0..n).map(|i| Arc::new(FakeSa { _state: [i as u8; 256] })));
}

fn per_entry(bytes: i64, n: u32) -> f64 {
    bytes as f64 / f64::from(n)
}

/// Builds the tables with `n` entries each and prints their cost. `presize`: tables created with
/// their final capacity (as a gateway configured for `n` SAs would); otherwise they grow from
/// empty, and the superseded bucket arrays may not be reclaimed yet when measured (they are freed
/// in batches), so the grown numbers are an upper bound.
fn run(n: u32, presize: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mode = if presize { "pre-sized" } else { "grown" };
    let cap = if presize { n as usize } else { 0 };
    let sample: Vec<u32> = (0..n).step_by((n / 10_000).max(1) as usize).collect();

    // ---- Inbound: (SPI, local address) -> Arc<FakeSa> ----
    // One domain per table: reclamation of one table's garbage does not blur another's numbers.
    let domain = Domain::new();
    let mut sas = Vec::with_capacity(n as usize);
    let b0 = live_bytes();
    make_sas(&mut sas, n);
    let b1 = live_bytes();
    let inbound: SpiTable<FakeSa> = SpiTable::with_capacity(&domain, cap);
    let start = std::time::Instant::now();
    for (i, sa) in sas.iter().enumerate() {
        let i = i as u32;
        inbound.insert(spi_of(i), local_of(i), Arc::clone(sa)).unwrap();
    }
    let insert_time = start.elapsed();
    let b2 = live_bytes();
    assert_eq!(inbound.len(), n as usize);
    {
        let g = domain.pin();
        for &i in &sample {
            let sa = inbound.get(spi_of(i), local_of(i), &g).expect("inserted SA found");
            assert!(Arc::ptr_eq(sa, &sas[i as usize]));
            // Same SPI, other local address: absent.
            let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
            assert!(inbound.get(spi_of(i), other, &g).is_none());
        }
    }
    let sa_bytes = per_entry(b1 - b0, n);
    let table_bytes = per_entry(b2 - b1, n);
    println!(
        "inbound SpiTable ({mode}), {n} SAs: table {table_bytes:.1} B/entry, with SA {:.1} B/entry \
         (Arc<FakeSa> alone {sa_bytes:.1} B); insert {:?}/entry",
        table_bytes + sa_bytes,
        insert_time / n,
    );
    drop(sas);

    // ---- Outbound: 1M /32 routes -> tunnel, tunnel -> Arc<FakeSa> ----
    let route_domain = Domain::new();
    let b3 = live_bytes();
    let routes = RouteTable::new(&route_domain);
    let start = std::time::Instant::now();
    for i in 0..n {
        let p = IpNet::V4(Ipv4Net::new(remote_host(i), 32).unwrap());
        assert_eq!(routes.add_route(p, TunnelId(i)), None);
    }
    let route_time = start.elapsed();
    let b4 = live_bytes();
    let tunnel_domain = Domain::new();
    let mut out_sas = Vec::with_capacity(n as usize);
    let b4a = live_bytes();
    make_sas(&mut out_sas, n);
    let b5 = live_bytes();
    let tunnels: TunnelTable<FakeSa> = TunnelTable::with_capacity(&tunnel_domain, cap);
    for (i, sa) in out_sas.iter().enumerate() {
        tunnels.set_sa(TunnelId(i as u32), Arc::clone(sa));
    }
    let b6 = live_bytes();
    assert_eq!(routes.len(), n as usize);
    assert_eq!(tunnels.len(), n as usize);
    {
        let g = route_domain.pin();
        let gt = tunnel_domain.pin();
        for &i in &sample {
            let t = routes.lookup(IpAddr::V4(remote_host(i)), &g).expect("route found");
            assert_eq!(t, TunnelId(i));
            assert!(Arc::ptr_eq(tunnels.get(t, &gt).unwrap(), &out_sas[i as usize]));
        }
        assert_eq!(routes.lookup(IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9)), &g), None);
    }
    let route_bytes = per_entry(b4 - b3, n);
    let tunnel_bytes = per_entry(b6 - b5, n);
    let out_sa_bytes = per_entry(b5 - b4a, n);
    println!("RouteTable, {n} /32 routes: {route_bytes:.1} B/route; insert {:?}/route", route_time / n,);
    println!(
        "TunnelTable ({mode}), {n} tunnels: table {tunnel_bytes:.1} B/entry, with SA {:.1} B/entry",
        tunnel_bytes + out_sa_bytes,
    );
    println!("outbound per tunnel (route + tunnel entry + SA): {:.1} B", route_bytes + tunnel_bytes + out_sa_bytes);

    // Budgets: generous, they catch a regression to something quadratic or a leak per entry.
    assert!(table_bytes < 160.0, "inbound table {table_bytes} B/entry");
    assert!(route_bytes < 160.0, "route table {route_bytes} B/entry");
    assert!(tunnel_bytes < 160.0, "tunnel table {tunnel_bytes} B/entry");
}

#[test]
fn scale_100k() {
    run(100_000, true);
    run(100_000, false);
}

#[test]
fn scale_1m() {
    run(1_000_000, true);
}

/// The grown variant at 1M (slower in debug builds): `cargo test --test table_scale -- --ignored`.
#[test]
#[ignore]
fn scale_1m_grown() {
    run(1_000_000, false);
}
