//! Checks the "per-packet calls never allocate" contract of `ipsec_esp::crypto`: after the keys
//! are expanded, seal/open (and their burst forms), CBC encrypt/decrypt and HMAC sign/verify of
//! every algorithm of every backend run with zero heap allocations.
//!
//! This is its own test binary, with a single test, because it installs a counting global
//! allocator (`stats_alloc`, which keeps `unsafe` out of our code). Its counters are process-wide,
//! and libtest's main thread allocates a little while the test thread starts, so the test runs a
//! full pass over every key several times and requires a pass with zero allocations: a per-packet
//! allocation would show up in every pass, the harness's start-up allocations only in one.
//! aws-lc's C code does not go through Rust's allocator; its per-packet paths were reviewed
//! instead: `EVP_AEAD_CTX_seal_scatter` / `EVP_AEAD_CTX_open`, `AES_cbc_encrypt`,
//! `DES_ede3_cbc_encrypt` and `HMAC_CTX_copy_ex` (a `memcpy`) work on caller or inline memory.

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use ipsec_esp::crypto::{backend_providers, default_provider, AeadJob, Cipher, CryptoError, Integrity, AEAD_TAG_LEN};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

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

    let mut passes = Vec::new();
    for _ in 0..5 {
        let region = Region::new(GLOBAL);
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
        let change = region.change();
        passes.push(change.allocations + change.reallocations);
        if passes.last() == Some(&0) {
            break;
        }
    }
    assert!(passes.contains(&0), "every pass of per-packet crypto allocated (allocations per pass: {passes:?})");

    // The counter does work: expanding a key allocates (the boxed key object).
    let region = Region::new(GLOBAL);
    let _k = default_provider().aead_key(Cipher::AesGcm128, &[0; 16]).unwrap();
    assert!(region.change().allocations > 0);
}
