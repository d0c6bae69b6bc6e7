//! Encapsulation of arbitrary "inner packets" followed by decapsulation: never panics, and every
//! packet the encapsulation accepts comes back out of the decapsulation byte for byte.
//!
//! The first input byte picks the transform, outer family, UDP encapsulation and ESN; the second
//! the headroom slack.
#![no_main]

use ipsec_esp::crypto::rustcrypto::PROVIDER;
use ipsec_esp::{
    Cipher, EspWorker, EventQueue, InboundSa, Integrity, OutboundSa, PacketBuf, SaConfig, UdpEncap, Verdict,
    HEADROOM, TAILROOM,
};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

const TRANSFORMS: [(Cipher, Integrity); 6] = [
    (Cipher::AesGcm256, Integrity::None),
    (Cipher::AesCbc192, Integrity::HmacSha384_192),
    (Cipher::TripleDesCbc, Integrity::HmacMd5_96),
    (Cipher::DesCbc, Integrity::HmacSha512_256),
    (Cipher::Null, Integrity::HmacSha1_96),
    (Cipher::Null, Integrity::None),
];

/// Distinct bytes, so 3DES does not refuse the key as degenerate (K1 = K2 = K3).
fn key(len: usize, seed: u8) -> Vec<u8> {
    (0..len as u8).map(|k| k.wrapping_mul(37).wrapping_add(seed)).collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let sel = data[0];
    let (c, i) = TRANSFORMS[(sel & 7) as usize % TRANSFORMS.len()];
    let (a, b): (IpAddr, IpAddr) =
        if sel & 8 != 0 { ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap()) } else { ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap()) };
    let mut out_cfg = SaConfig::new(0x4242, c, &key(c.keymat_len(), 3), i, &key(i.key_len(), 5), a, b);
    out_cfg.encap = (sel & 16 != 0).then_some(UdpEncap::STANDARD);
    out_cfg.esn = sel & 32 != 0;
    let mut in_cfg = out_cfg.clone();
    in_cfg.local = b;
    in_cfg.remote = a;
    let now = Instant::now();
    let out = OutboundSa::new(&out_cfg, &PROVIDER, now).unwrap();
    let inb = InboundSa::new(&in_cfg, &PROVIDER, now).unwrap();
    let mut worker = EspWorker::new(&PROVIDER, Arc::new(EventQueue::new(16))).unwrap();

    let slack = data[1] as usize % 8;
    let inner = &data[2..];
    let start = HEADROOM + slack;
    let mut frame = vec![0xa5u8; start + inner.len() + TAILROOM];
    frame[start..start + inner.len()].copy_from_slice(inner);
    let mut pkts = [PacketBuf::new(&mut frame, start, inner.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    worker.encap_burst(now, &mut pkts, &mut v, |_, _| Ok(&out));
    if v[0].is_err() {
        return;
    }
    // What was accepted is an IP packet; link padding beyond its length field is dropped.
    let inner_ip = ipsec_wire::IpPacket::new_checked(inner).expect("encap accepted a non-IP packet");
    let expect = inner_ip.packet_bytes().to_vec();
    worker.decap_burst(now, &mut pkts, &mut v, |_, _| Some(&inb));
    assert_eq!(v[0], Ok(()), "our own packet was refused");
    assert_eq!(pkts[0].data(), &expect[..], "round trip changed the packet");
});
