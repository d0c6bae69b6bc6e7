//! Checks the "per-packet calls never allocate" contract of `ipsec_esp::crypto`: after the keys
//! are expanded, seal/open (and their burst forms), CBC encrypt/decrypt and HMAC sign/verify of
//! every algorithm of every backend run with zero heap allocations on the calling thread.
//!
//! This is its own test binary because it installs a counting global allocator (which needs
//! `unsafe impl GlobalAlloc`; the library crate itself stays `#![forbid(unsafe_code)]`). Counting
//! is per thread so the test harness's own threads do not interfere. (aws-lc's C code does not go
//! through Rust's allocator; its per-packet paths were reviewed instead: `EVP_AEAD_CTX_seal_scatter`
//! / `_open`, `AES_cbc_encrypt`, `DES_ede3_cbc_encrypt` and `HMAC_CTX_copy_ex`, a `memcpy`, work on
//! caller or inline memory.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ipsec_esp::crypto::{backend_providers, default_provider, AeadJob, Cipher, CryptoError, Integrity, AEAD_TAG_LEN};

struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards every call unchanged to the system allocator; the bookkeeping only touches a
// const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn per_packet_calls_do_not_allocate() {
    let mut providers = backend_providers().to_vec();
    providers.push(default_provider());
    // Everything that may allocate (keys, buffers) is prepared first.
    let mut aead_keys = Vec::new();
    let mut cipher_keys = Vec::new();
    let mut mac_keys = Vec::new();
    for p in &providers {
        for c in Cipher::ALL {
            let key = vec![0x42u8 ^ c.key_len() as u8; c.key_len()];
            if c.is_aead() {
                aead_keys.push(p.aead_key(c, &key).unwrap());
            } else if c != Cipher::Null {
                let mut key = key;
                // 3DES needs three distinct DES keys.
                for (i, b) in key.iter_mut().enumerate() {
                    *b = b.wrapping_add(i as u8 * 7);
                }
                cipher_keys.push(p.cipher_key(c, &key).unwrap());
            }
        }
        for i in Integrity::ALL {
            if let Ok(k) = p.mac_key(i, &vec![0x17; i.key_len()]) {
                mac_keys.push((i, k));
            }
        }
    }
    let mut packet = vec![0xabu8; 1420 + AEAD_TAG_LEN];
    let mut packets: Vec<Vec<u8>> = (0..2).map(|_| vec![0xcdu8; 512 + AEAD_TAG_LEN]).collect();
    let mut icv = [0u8; 32];
    let nonce = [7u8; 12];
    let aad = [1u8, 2, 3, 4, 0, 0, 0, 9];
    let iv = [3u8; 16];

    let before = allocations();
    for _ in 0..3 {
        for k in &aead_keys {
            k.seal(&nonce, &aad, &mut packet).unwrap();
            k.open(&nonce, &aad, &mut packet).unwrap();
            packet[0] ^= 1;
            assert_eq!(k.open(&nonce, &aad, &mut packet), Err(CryptoError::AuthFailed));
            let (p0, p1) = packets.split_at_mut(1);
            let mut jobs = [
                AeadJob { nonce, aad: [0; 12], aad_len: 8, in_out: &mut p0[0], result: Ok(()) },
                AeadJob { nonce, aad: [5; 12], aad_len: 12, in_out: &mut p1[0], result: Ok(()) },
            ];
            k.seal_burst(&mut jobs);
            k.open_burst(&mut jobs);
            assert!(jobs.iter().all(|j| j.result.is_ok()));
        }
        for k in &cipher_keys {
            let bl = k.block_len();
            let data = &mut packet[..1408];
            k.cbc_encrypt(&iv[..bl], data).unwrap();
            k.cbc_decrypt(&iv[..bl], data).unwrap();
            assert_eq!(k.cbc_encrypt(&iv[..bl], &mut packet[..1409]), Err(CryptoError::BadLength));
        }
        for (i, k) in &mac_keys {
            let n = i.icv_len();
            k.sign(&[&aad, &packet[..1420], &[0, 0, 0, 1]], &mut icv[..n]);
            assert!(k.verify(&[&aad, &packet[..1420], &[0, 0, 0, 1]], &icv[..n]));
            icv[0] ^= 1;
            assert!(!k.verify(&[&aad, &packet[..1420], &[0, 0, 0, 1]], &icv[..n]));
        }
    }
    let after = allocations();
    assert_eq!(after - before, 0, "per-packet crypto allocated {} times", after - before);

    // The counter does work: expanding a key allocates (the boxed key object).
    let before = allocations();
    let _k = default_provider().aead_key(Cipher::AesGcm128, &[0; 16]).unwrap();
    assert!(allocations() > before);
}
