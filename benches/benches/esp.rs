//! ESP encap and decap throughput per transform at 64, 512, 1420 bytes and IMIX, one core, bursts
//! of 64 packets (the burst API the engine's workers use).
//!
//! `encap/…` times the encapsulation of a whole burst and `decap/…` its decapsulation; the other
//! half of each round trip runs untimed to restore the burst (no copies). Throughput is in inner
//! bytes.
//!
//! `cargo bench -p ipsec-benches --bench esp -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipsec_benches::{size_pattern, transform_name, EspWorkload, TRANSFORMS};
use ipsec_esp::{default_provider, MAX_BURST};
use std::time::Instant;

const SIZES: [&str; 4] = ["64", "512", "1420", "imix"];

fn esp(c: &mut Criterion) {
    for (cipher, integ) in TRANSFORMS {
        let name = transform_name(cipher, integ);
        let mut group = c.benchmark_group(format!("esp/{name}"));
        for size in SIZES {
            let pattern = size_pattern(size).expect("size label");
            let mut w = EspWorkload::new(default_provider(), cipher, integ, &pattern, MAX_BURST);
            group.throughput(Throughput::Bytes(w.burst_bytes() as u64));
            // Encap alone: decap (untimed) restores the burst between iterations.
            group.bench_function(BenchmarkId::new("encap", size), |b| {
                b.iter_custom(|iters| {
                    let mut total = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let ok = w.encap(t);
                        total += t.elapsed();
                        assert_eq!(ok, MAX_BURST);
                        assert_eq!(w.decap(t), MAX_BURST);
                    }
                    total
                })
            });
            group.bench_function(BenchmarkId::new("decap", size), |b| {
                b.iter_custom(|iters| {
                    let mut total = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        assert_eq!(w.encap(t), MAX_BURST);
                        let t = Instant::now();
                        let ok = w.decap(t);
                        total += t.elapsed();
                        assert_eq!(ok, MAX_BURST);
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, esp);
criterion_main!(benches);
