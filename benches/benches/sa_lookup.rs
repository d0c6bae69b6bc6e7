//! SA table lookup cost as a data-plane worker sees it: inbound SPI lookup and outbound route
//! (longest-prefix match) + tunnel → SA lookup, at 1, 1k, 100k and 1M entries, random keys.
//!
//! A worker pins one guard per burst; here one guard covers a batch of 64 lookups (criterion's
//! time is per batch; throughput is counted as 64 elements). Keys are drawn uniformly from the
//! installed entries, so large tables pay real cache and TLB misses.
//!
//! * `inbound_spi_lookup`: `SpiTable::get` only (the SA is not dereferenced).
//! * `outbound_route_lookup`: `RouteTable::lookup` with n /32 routes and a default route.
//! * `outbound_resolve_sa`: `OutboundTables::resolve` (empty flow table, route, tunnel → SA) and
//!   a read of the SA's first cache line, i.e. what the encrypt path pays before crypto.
//!
//! Run: `cargo bench -p ipsec-benches --bench sa_lookup -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net};
use ipsec_esp::table::{Domain, OutboundTables, RouteTable, Spi, SpiTable, TunnelId};

const BATCH: usize = 64;
/// Distinct lookup keys cycled through (a multiple of BATCH).
const KEYS: usize = 1 << 16;
const SIZES: [u32; 4] = [1, 1_000, 100_000, 1_000_000];

/// Stand-in for an SA.
struct FakeSa {
    state: [u64; 32],
}

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
}

fn spi_of(i: u32) -> Spi {
    Spi(i.wrapping_mul(0x9E37_79B9) ^ 0x5A5A_5A5A)
}

fn host_of(i: u32) -> Ipv4Addr {
    // Spread over 10.0.0.0/8 and beyond, distinct per i.
    Ipv4Addr::from_bits(0x0A00_0000u32.wrapping_add(i.wrapping_mul(0x0001_0001)))
}

fn random_indexes(n: u32, seed: u64) -> Vec<u32> {
    let mut rng = XorShift(seed);
    (0..KEYS).map(|_| (rng.next() % u64::from(n)) as u32).collect()
}

fn inbound(c: &mut Criterion) {
    let local = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut group = c.benchmark_group("inbound_spi_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    for n in SIZES {
        let domain = Domain::new();
        let table: SpiTable<FakeSa> = SpiTable::with_capacity(&domain, n as usize);
        for i in 0..n {
            let sa = Arc::new(FakeSa { state: [u64::from(i); 32] });
            table.insert(spi_of(i), local, sa).unwrap();
        }
        let keys: Vec<Spi> = random_indexes(n, 0x1234).into_iter().map(spi_of).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &keys, |b, keys| {
            let mut chunks = keys.chunks_exact(BATCH).cycle();
            b.iter(|| {
                let burst = chunks.next().unwrap();
                let g = domain.pin();
                let mut acc = 0u64;
                for &spi in burst {
                    // The table's cost only: the SA itself is not dereferenced (the resolve
                    // benchmark below does touch it).
                    acc ^= table.get(spi, local, &g).map_or(0, |sa| Arc::as_ptr(sa) as u64);
                }
                black_box(acc)
            });
        });
    }
    group.finish();
}

fn outbound(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbound_route_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    for n in SIZES {
        // n host routes plus a default route, as a hub with n spokes would have.
        let domain = Domain::new();
        let routes = RouteTable::new(&domain);
        routes.add_route("0.0.0.0/0".parse().unwrap(), TunnelId(u32::MAX));
        for i in 0..n {
            let p = IpNet::V4(Ipv4Net::new(host_of(i), 32).unwrap());
            routes.add_route(p, TunnelId(i));
        }
        let keys: Vec<IpAddr> = random_indexes(n, 0x5678).into_iter().map(|i| IpAddr::V4(host_of(i))).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &keys, |b, keys| {
            let mut chunks = keys.chunks_exact(BATCH).cycle();
            b.iter(|| {
                let burst = chunks.next().unwrap();
                let g = domain.pin();
                let mut acc = 0u32;
                for &dst in burst {
                    acc ^= routes.lookup(dst, &g).map_or(0, |t| t.0);
                }
                black_box(acc)
            });
        });
    }
    group.finish();

    // Full outbound resolution: flow table (empty) → route → tunnel → SA.
    let mut group = c.benchmark_group("outbound_resolve_sa");
    group.throughput(Throughput::Elements(BATCH as u64));
    for n in SIZES {
        let domain = Domain::new();
        let out: OutboundTables<FakeSa> = OutboundTables::new(&domain);
        for i in 0..n {
            let p = IpNet::V4(Ipv4Net::new(host_of(i), 32).unwrap());
            out.routes.add_route(p, TunnelId(i));
            let sa = Arc::new(FakeSa { state: [u64::from(i); 32] });
            out.tunnels.set_sa(TunnelId(i), sa);
        }
        let src = IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1));
        let keys: Vec<IpAddr> = random_indexes(n, 0x9ABC).into_iter().map(|i| IpAddr::V4(host_of(i))).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &keys, |b, keys| {
            let mut chunks = keys.chunks_exact(BATCH).cycle();
            b.iter(|| {
                let burst = chunks.next().unwrap();
                let g = out.pin();
                let mut acc = 0u64;
                for &dst in burst {
                    acc ^= out.resolve(src, dst, &g).map_or(0, |(_, sa)| sa.state[0]);
                }
                black_box(acc)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, inbound, outbound);
criterion_main!(benches);
