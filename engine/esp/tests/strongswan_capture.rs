//! Interop with an independent ESP implementation: packets produced by strongSwan (charon 5.9.8
//! with kernel-libipsec, i.e. userspace ESP, which always UDP-encapsulates on port 4500),
//! captured on the underlay with tcpdump, decapsulated by our engine with the CHILD_SA keys
//! charon logged. The data files and how they were made: `tests/data/strongswan_<case>.json`
//! and `tests/data/strongswan_capture.sh`.
//!
//! For every case (AES-GCM-16-128, AES-CBC-256 + HMAC-SHA-256-128, AES-CBC-128 + HMAC-SHA1-96,
//! 3DES-CBC + HMAC-MD5-96) and both directions, with every compiled-in crypto backend that has
//! the transform: each captured packet decapsulates (one at a time and as one burst), the inner
//! packet is the ICMP echo request (A → B) or reply (B → A) between the tunnel's inner
//! addresses with valid IPv4 and ICMP checksums, each reply echoes its request, and feeding
//! the same capture again is dropped as `Replayed`.

mod common;

use common::{frame_with, ipv4_checksum_ok};
use ipsec_esp::crypto::backend_providers;
use ipsec_esp::{
    default_provider, Cipher, CryptoProvider, DropReason, EspWorker, EventQueue, InboundSa, Integrity, PacketBuf,
    SaConfig, UdpEncap, Verdict, HEADROOM,
};
use ipsec_wire::{checksum, icmpv4, ipv4, udp, IpProtocol};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const CASES: [(&str, Cipher, Integrity); 4] = [
    ("aes128gcm16", Cipher::AesGcm128, Integrity::None),
    ("aes256_sha256", Cipher::AesCbc256, Integrity::HmacSha256_128),
    ("aes128_sha1", Cipher::AesCbc128, Integrity::HmacSha1_96),
    ("3des_md5", Cipher::TripleDesCbc, Integrity::HmacMd5_96),
];

/// One direction's SA and the packets captured for it.
struct CapturedSa {
    direction: String,
    spi: u32,
    enc_key: Vec<u8>,
    auth_key: Vec<u8>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
    icmp_type: icmpv4::Message,
    packets: Vec<Vec<u8>>,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("missing string field {k}"))
}

fn load(case: &str, cipher: Cipher, integ: Integrity) -> Vec<CapturedSa> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/strongswan_{case}.json"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read data file")).expect("json");
    assert_eq!(str_field(&doc, "cipher"), cipher.name(), "{case}");
    assert_eq!(str_field(&doc, "integrity"), integ.name(), "{case}");
    assert_eq!(doc["esn"], Value::Bool(false));
    assert_eq!(doc["udp_ports"], serde_json::json!([4500, 4500]));
    let sas: Vec<CapturedSa> = doc["sas"]
        .as_array()
        .expect("sas")
        .iter()
        .map(|sa| CapturedSa {
            direction: str_field(sa, "direction").to_string(),
            spi: u32::from_str_radix(str_field(sa, "spi"), 16).expect("spi"),
            enc_key: hex(str_field(sa, "enc_key")),
            auth_key: hex(str_field(sa, "auth_key")),
            src: str_field(sa, "src").parse().expect("src"),
            dst: str_field(sa, "dst").parse().expect("dst"),
            inner_src: str_field(sa, "inner_src").parse().expect("inner_src"),
            inner_dst: str_field(sa, "inner_dst").parse().expect("inner_dst"),
            icmp_type: icmpv4::Message(sa["icmp_type"].as_u64().expect("icmp_type") as u8),
            packets: sa["packets"].as_array().expect("packets").iter().map(|p| hex(p.as_str().expect("hex"))).collect(),
        })
        .collect();
    assert_eq!(sas.len(), 2, "{case}: one SA per direction");
    for sa in &sas {
        // RFC 4106 §8.1 / RFC 7296 §2.17: the GCM key material is the key followed by a 4-byte salt.
        assert_eq!(sa.enc_key.len(), cipher.keymat_len(), "{case} {}: encryption key length", sa.direction);
        assert_eq!(sa.auth_key.len(), integ.key_len(), "{case} {}: integrity key length", sa.direction);
        assert!(sa.packets.len() >= 4, "{case} {}: too few packets", sa.direction);
    }
    sas
}

/// Our inbound SA for packets the capture shows going `sa.src` → `sa.dst`.
fn inbound(sa: &CapturedSa, cipher: Cipher, integ: Integrity, provider: &CryptoProvider) -> InboundSa {
    let mut cfg =
        SaConfig::new(sa.spi, cipher, &sa.enc_key, integ, &sa.auth_key, IpAddr::V4(sa.dst), IpAddr::V4(sa.src));
    cfg.encap = Some(UdpEncap::STANDARD);
    cfg.local_ts = vec![format!("{}/24", sa.inner_dst).parse().expect("ts")];
    cfg.remote_ts = vec![format!("{}/24", sa.inner_src).parse().expect("ts")];
    InboundSa::new(&cfg, provider, Instant::now()).expect("inbound SA")
}

/// Checks the outer packet as captured: IPv4 between the gateways, UDP 4500 → 4500 with a valid
/// checksum (strongSwan sends it through a UDP socket), then the SPI and sequence number.
fn check_outer(sa: &CapturedSa, pkt: &[u8], seq: u32) {
    let ip = ipv4::Packet::new_checked(pkt).expect("outer IPv4");
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (sa.src, sa.dst));
    assert_eq!(ip.total_len() as usize, pkt.len());
    assert_eq!(ip.next_header(), IpProtocol::UDP);
    let u = udp::Packet::new_checked(ip.payload()).expect("UDP");
    assert_eq!((u.src_port(), u.dst_port()), (4500, 4500));
    assert!(u.checksum() == 0 || u.verify_checksum(sa.src, sa.dst), "UDP checksum");
    let esp = u.payload();
    assert_eq!(&esp[..4], &sa.spi.to_be_bytes());
    assert_eq!(&esp[4..8], &seq.to_be_bytes(), "strongSwan numbers packets from 1");
}

/// Inner ICMP echo fields: (identifier, sequence, data).
type Echo = (u16, u16, Vec<u8>);

/// Checks a decapsulated inner packet and returns its echo fields.
fn check_inner(sa: &CapturedSa, inner: &[u8], what: &str) -> Echo {
    let ip = ipv4::Packet::new_checked(inner).unwrap_or_else(|e| panic!("{what}: inner IPv4: {e}"));
    assert_eq!(ip.total_len() as usize, inner.len(), "{what}: inner length");
    assert!(ip.verify_checksum() && ipv4_checksum_ok(inner), "{what}: inner IPv4 checksum");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (sa.inner_src, sa.inner_dst), "{what}: inner addresses");
    assert_eq!(ip.next_header(), IpProtocol::ICMP, "{what}");
    assert!(!ip.is_fragment(), "{what}");
    let icmp = icmpv4::Packet::new_checked(ip.payload()).expect("ICMP");
    assert_eq!(icmp.msg_type(), sa.icmp_type, "{what}: ICMP type");
    assert_eq!(icmp.msg_code(), 0, "{what}");
    assert!(icmp.verify_checksum(), "{what}: ICMP checksum");
    assert_eq!(checksum::data(ip.payload()), 0xffff, "{what}: ICMP checksum (plain sum)");
    let data = icmp.data().to_vec();
    // Linux ping: a 16-byte struct timeval, then bytes counting up from 0x10 (56 or 100 bytes).
    assert!(data.len() == 56 || data.len() == 100, "{what}: ping data length {}", data.len());
    assert!(data[16..].iter().enumerate().all(|(i, &b)| b == (i as u8).wrapping_add(0x10)), "{what}: ping pattern");
    (icmp.echo_ident(), icmp.echo_seq_no(), data)
}

/// Decapsulates `packets` one by one through `sa`; returns the verdicts and the inner packets.
fn decap_each(worker: &mut EspWorker, sa: &InboundSa, packets: &[Vec<u8>]) -> Vec<Result<Vec<u8>, DropReason>> {
    packets
        .iter()
        .map(|p| {
            let mut frame = frame_with(p);
            let mut pkts = [PacketBuf::new(&mut frame, HEADROOM, p.len())];
            let mut v: [Verdict; 1] = [Ok(())];
            worker.decap_burst(Instant::now(), &mut pkts, &mut v, |spi, dst| {
                (spi == sa.spi() && dst == sa.local()).then_some(sa)
            });
            v[0].map(|()| pkts[0].data().to_vec())
        })
        .collect()
}

/// Decapsulates all `packets` as one burst.
fn decap_burst(worker: &mut EspWorker, sa: &InboundSa, packets: &[Vec<u8>]) -> Vec<Result<Vec<u8>, DropReason>> {
    let mut frames: Vec<Vec<u8>> = packets.iter().map(|p| frame_with(p)).collect();
    let mut pkts: Vec<PacketBuf<'_>> =
        frames.iter_mut().zip(packets).map(|(f, p)| PacketBuf::new(f, HEADROOM, p.len())).collect();
    let mut v: Vec<Verdict> = vec![Ok(()); pkts.len()];
    worker.decap_burst(Instant::now(), &mut pkts, &mut v, |spi, dst| {
        (spi == sa.spi() && dst == sa.local()).then_some(sa)
    });
    v.iter().zip(&pkts).map(|(v, p)| v.map(|()| p.data().to_vec())).collect()
}

fn providers() -> Vec<&'static CryptoProvider> {
    let mut v = vec![default_provider()];
    v.extend(backend_providers().iter().copied());
    v
}

fn run_case(case: &str, cipher: Cipher, integ: Integrity) {
    let sas = load(case, cipher, integ);
    let mut tested = 0;
    for provider in providers() {
        if provider.cipher_backend(cipher).is_none() || provider.integrity_backend(integ).is_none() {
            continue; // e.g. HMAC-MD5 exists only in the RustCrypto backend
        }
        let mut echoes: Vec<Vec<Echo>> = Vec::new();
        for sa in &sas {
            let what = format!("{case} {} spi {:#010x} via {}", sa.direction, sa.spi, provider.name);
            for (i, p) in sa.packets.iter().enumerate() {
                check_outer(sa, p, i as u32 + 1);
            }
            let mut worker = EspWorker::new(provider, Arc::new(EventQueue::new(16))).expect("worker");

            // One at a time.
            let ours = inbound(sa, cipher, integ, provider);
            let inner: Vec<Vec<u8>> = decap_each(&mut worker, &ours, &sa.packets)
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.unwrap_or_else(|e| panic!("{what}: packet {i} refused: {e:?}")))
                .collect();
            let fields: Vec<Echo> =
                inner.iter().enumerate().map(|(i, p)| check_inner(sa, p, &format!("{what} packet {i}"))).collect();
            assert_eq!(ours.counters().packets(), sa.packets.len() as u64, "{what}");
            assert_eq!(ours.highest_seq(), sa.packets.len() as u64, "{what}");
            for w in fields.windows(2) {
                assert_eq!(w[1].1, if w[0].0 == w[1].0 { w[0].1 + 1 } else { 1 }, "{what}: ping sequence");
            }

            // The same capture again: every packet is a replay.
            for (i, r) in decap_each(&mut worker, &ours, &sa.packets).into_iter().enumerate() {
                assert_eq!(r.err(), Some(DropReason::Replayed), "{what}: replayed packet {i}");
            }
            assert_eq!(ours.counters().packets(), sa.packets.len() as u64, "{what}: replays not counted");

            // As one burst on a fresh SA: the same inner packets; then the burst replayed.
            let fresh = inbound(sa, cipher, integ, provider);
            let burst: Vec<Vec<u8>> = decap_burst(&mut worker, &fresh, &sa.packets)
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.unwrap_or_else(|e| panic!("{what}: burst packet {i} refused: {e:?}")))
                .collect();
            assert_eq!(burst, inner, "{what}: burst and single decap differ");
            for (i, r) in decap_burst(&mut worker, &fresh, &sa.packets).into_iter().enumerate() {
                assert_eq!(r.err(), Some(DropReason::Replayed), "{what}: replayed burst packet {i}");
            }

            // Keys are per direction: the other direction's SA must not authenticate these.
            echoes.push(fields);
            tested += 1;
        }
        // Each reply (B → A) echoes its request (A → B): same identifier, sequence and data.
        assert_eq!(echoes[0], echoes[1], "{case} via {}: replies do not match requests", provider.name);
    }
    assert!(tested >= 2, "{case}: no backend implements {cipher}/{integ}");
}

#[test]
fn strongswan_aes128gcm16() {
    run_case(CASES[0].0, CASES[0].1, CASES[0].2);
}

#[test]
fn strongswan_aes256_sha256() {
    run_case(CASES[1].0, CASES[1].1, CASES[1].2);
}

#[test]
fn strongswan_aes128_sha1() {
    run_case(CASES[2].0, CASES[2].1, CASES[2].2);
}

#[test]
fn strongswan_3des_md5() {
    run_case(CASES[3].0, CASES[3].1, CASES[3].2);
}

/// Each direction's packets fail authentication under the other direction's keys (so the test
/// above really tells the two key sets apart), and a tampered byte is caught.
#[test]
fn strongswan_wrong_keys_and_tampering_are_refused() {
    for (case, cipher, integ) in CASES {
        let sas = load(case, cipher, integ);
        let p = default_provider();
        let mut worker = EspWorker::new(p, Arc::new(EventQueue::new(16))).expect("worker");
        for (sa, other) in [(&sas[0], &sas[1]), (&sas[1], &sas[0])] {
            let swapped = CapturedSa {
                direction: sa.direction.clone(),
                enc_key: other.enc_key.clone(),
                auth_key: other.auth_key.clone(),
                packets: Vec::new(),
                icmp_type: sa.icmp_type,
                ..*sa
            };
            let wrong = inbound(&swapped, cipher, integ, p);
            for r in decap_each(&mut worker, &wrong, &sa.packets) {
                assert_eq!(r.err(), Some(DropReason::AuthFailed), "{case} {}: other direction's keys", sa.direction);
            }
            let ours = inbound(sa, cipher, integ, p);
            let mut bad = sa.packets[0].clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x01; // last ICV byte
            bad[20 + 8 + 8] ^= 0x80; // first IV / ciphertext byte
            for r in decap_each(&mut worker, &ours, &[bad]) {
                assert_eq!(r.err(), Some(DropReason::AuthFailed), "{case} {}: tampered", sa.direction);
            }
        }
    }
}
