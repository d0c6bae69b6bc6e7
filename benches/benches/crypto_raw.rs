//! Raw per-packet crypto cost of each backend, side by side, for every algorithm both implement
//! (plus HMAC-MD5, RustCrypto only, for reference).
//!
//! What is measured is one per-packet call on an already expanded key, exactly what the data path
//! does: AES-GCM `seal` (encrypt + 16-byte tag) over 64/512/1420-byte payloads, CBC `cbc_encrypt`
//! over 64/512/1424 bytes (1420 padded to the cipher block, as ESP does), and HMAC `sign` truncated
//! to the ESP ICV over 64/512/1420 bytes. These numbers pick the backend of each algorithm in
//! `ipsec_esp::crypto::default_provider` (see its doc comment).
//!
//! Clock: the reference machine is shared (2 cores, several engineers building), so by default
//! the time of each sample is the benchmark thread's **CPU time** (`CLOCK_THREAD_CPUTIME_ID`):
//! time the thread spends preempted by other processes is not counted. Set `CRYPTO_RAW_WALLCLOCK=1`
//! to time with the wall clock instead (what criterion does normally).
//!
//! Run briefly on the shared machine:
//! `cargo bench -p ipsec-benches --bench crypto_raw -- --warm-up-time 1 --measurement-time 2`
//! (add a filter such as `seal/` to run one family).

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Bencher, BenchmarkId, Criterion, Throughput};
use ipsec_esp::crypto::{backend_providers, Cipher, Integrity, AEAD_TAG_LEN};

/// On-CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn wall_clock() -> bool {
    static WALL: OnceLock<bool> = OnceLock::new();
    *WALL.get_or_init(|| std::env::var_os("CRYPTO_RAW_WALLCLOCK").is_some_and(|v| v != "0"))
}

/// Runs `op` `iters` times and reports the elapsed time on the chosen clock.
fn run<O>(b: &mut Bencher<'_>, mut op: impl FnMut() -> O) {
    b.iter_custom(|iters| {
        if wall_clock() {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(op());
            }
            start.elapsed()
        } else {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(op());
            }
            thread_cpu_time() - start
        }
    })
}

/// Payload sizes: a small packet, a medium one, and a full tunnel-MTU payload.
const SIZES: [usize; 3] = [64, 512, 1420];

fn key_bytes(len: usize) -> Vec<u8> {
    // Distinct bytes so that 3DES gets three different DES keys.
    (0..len).map(|i| (i as u8).wrapping_mul(37).wrapping_add(11)).collect()
}

fn aead(c: &mut Criterion) {
    for cipher in [Cipher::AesGcm128, Cipher::AesGcm192, Cipher::AesGcm256] {
        let mut group = c.benchmark_group(format!("seal/{cipher}"));
        for size in SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            for p in backend_providers() {
                let Ok(key) = p.aead_key(cipher, &key_bytes(cipher.key_len())) else {
                    continue;
                };
                let mut buf = vec![0x5au8; size + AEAD_TAG_LEN];
                let nonce = [0x24u8; 12];
                let aad = [0u8, 0, 0x12, 0x34, 0, 0, 0, 1];
                group.bench_function(BenchmarkId::new(p.name, size), |b| {
                    run(b, || key.seal(black_box(&nonce), black_box(&aad), black_box(&mut buf)))
                });
            }
        }
        group.finish();
    }
}

fn cbc(c: &mut Criterion) {
    for cipher in [Cipher::AesCbc128, Cipher::AesCbc192, Cipher::AesCbc256, Cipher::TripleDesCbc, Cipher::DesCbc] {
        let mut group = c.benchmark_group(format!("cbc_encrypt/{cipher}"));
        for size in SIZES {
            let size = size.next_multiple_of(16);
            group.throughput(Throughput::Bytes(size as u64));
            for p in backend_providers() {
                let Ok(key) = p.cipher_key(cipher, &key_bytes(cipher.key_len())) else {
                    continue;
                };
                let mut buf = vec![0x5au8; size];
                let iv = vec![0x42u8; cipher.iv_len()];
                group.bench_function(BenchmarkId::new(p.name, size), |b| {
                    run(b, || key.cbc_encrypt(black_box(&iv), black_box(&mut buf)))
                });
            }
        }
        group.finish();
    }
}

fn hmac(c: &mut Criterion) {
    for integrity in [
        Integrity::HmacSha1_96,
        Integrity::HmacSha256_128,
        Integrity::HmacSha384_192,
        Integrity::HmacSha512_256,
        Integrity::HmacMd5_96,
    ] {
        let mut group = c.benchmark_group(format!("hmac/{integrity}"));
        for size in SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            for p in backend_providers() {
                let Ok(key) = p.mac_key(integrity, &key_bytes(integrity.key_len())) else {
                    continue;
                };
                let data = vec![0x5au8; size];
                let mut icv = vec![0u8; integrity.icv_len()];
                group.bench_function(BenchmarkId::new(p.name, size), |b| {
                    run(b, || key.sign(black_box(&[&data]), black_box(&mut icv)))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, aead, cbc, hmac);
criterion_main!(benches);
