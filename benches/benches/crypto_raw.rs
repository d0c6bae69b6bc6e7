//! Raw per-packet crypto cost of each backend, side by side, for every algorithm both implement
//! (plus HMAC-MD5, RustCrypto only, for reference).
//!
//! What is measured is one per-packet call on an already expanded key, exactly what the data path
//! does: AES-GCM `seal` (encrypt + 16-byte tag) over 64/512/1420-byte payloads, CBC `cbc_encrypt`
//! over 64/512/1424 bytes (1420 padded to the cipher block, as ESP does), and HMAC `sign` truncated
//! to the ESP ICV over 64/512/1420 bytes. These numbers pick the backend of each algorithm in
//! `ipsec_esp::crypto::default_provider` (see its doc comment).
//!
//! Run briefly on the shared machine:
//! `cargo bench -p ipsec-benches --bench crypto_raw -- --warm-up-time 1 --measurement-time 2`
//! (add a filter such as `seal/` to run one family).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipsec_esp::crypto::{backend_providers, Cipher, Integrity, AEAD_TAG_LEN};

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
                    b.iter(|| key.seal(black_box(&nonce), black_box(&aad), black_box(&mut buf)))
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
                    b.iter(|| key.cbc_encrypt(black_box(&iv), black_box(&mut buf)))
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
                    b.iter(|| key.sign(black_box(&[&data]), black_box(&mut icv)))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, aead, cbc, hmac);
criterion_main!(benches);
