//! Whole-packet tests of the ESP core: every transform × inner family × outer family × UDP
//! encapsulation × ESN round-trips; outer header rules; and bad input (truncation, tampering,
//! bad padding, unknown SPI, wrong selector, replay) is dropped under the right reason.

mod common;

use common::*;
use ipsec_esp::{
    Cipher, DfPolicy, DropReason, DscpPolicy, EspWorker, EventQueue, InboundSa, Integrity, Lifetime, Limits,
    OutboundSa, PacketBuf, SaEvent, UdpEncap, Verdict, HEADROOM, MAX_BURST,
};
use ipsec_wire::{ipv4, ipv6, udp, IpPacket, IpProtocol};
use std::sync::Arc;
use std::time::Instant;

#[test]
fn every_transform_and_family_round_trips() {
    let mut cases = 0;
    for (cipher, integ) in transforms() {
        for outer_v6 in [false, true] {
            for encap in [None, Some(UdpEncap::STANDARD), Some(UdpEncap { local_port: 4500, remote_port: 31337 })] {
                for esn in [false, true] {
                    let mut cfg = config(cipher, integ, outer_v6);
                    cfg.encap = encap;
                    cfg.esn = esn;
                    let mut pair = Pair::new(&cfg);
                    for inner_v6 in [false, true] {
                        for payload in [0usize, 1, 13, 14, 15, 16, 17, 100, 1372] {
                            let inner = inner_packet(inner_v6, payload, payload as u8);
                            let mut frame = frame_with(&inner);
                            let (start, len) = pair.encap(&mut frame, inner.len()).unwrap_or_else(|e| {
                                panic!("encap {cipher}/{integ} v6={outer_v6} {encap:?} esn={esn}: {e}")
                            });
                            check_outer(&frame[start..start + len], &cfg, &inner);
                            let (s, l) = pair.decap(&mut frame, start, len).unwrap_or_else(|e| {
                                panic!("decap {cipher}/{integ} outer_v6={outer_v6} {encap:?} esn={esn} inner_v6={inner_v6} payload={payload}: {e}")
                            });
                            assert_eq!(&frame[s..s + l], &inner[..], "{cipher}/{integ}: inner packet changed");
                            cases += 1;
                        }
                    }
                    assert_eq!(pair.out.counters().packets(), 18);
                    assert_eq!(pair.inb.counters().packets(), 18);
                    assert_eq!(pair.inb.counters().bytes(), pair.out.counters().bytes());
                }
            }
        }
    }
    assert!(cases > 1000, "only {cases} cases ran");
}

/// Outer header invariants for a packet just built from an inner packet of `inner_len` bytes.
fn check_outer(pkt: &[u8], cfg: &ipsec_esp::SaConfig, inner: &[u8]) {
    let inner_len = inner.len();
    let ip = IpPacket::new_checked(pkt).expect("outer parses");
    assert_eq!(ip.src_addr(), cfg.local);
    assert_eq!(ip.dst_addr(), cfg.remote);
    assert_eq!(ip.packet_bytes().len(), pkt.len(), "outer length field covers the packet");
    let s = ip.summary().unwrap();
    let esp = match cfg.encap {
        Some(e) => {
            assert_eq!(s.protocol, IpProtocol::UDP);
            let u = udp::Packet::new_checked(&pkt[s.payload_offset..]).unwrap();
            assert_eq!((u.src_port(), u.dst_port()), (e.local_port, e.remote_port));
            assert_eq!(u.len() as usize, pkt.len() - s.payload_offset);
            match ip {
                IpPacket::V4(_) => assert_eq!(u.checksum(), 0, "RFC 3948: UDP checksum zero over IPv4"),
                IpPacket::V6(p) => assert!(u.verify_checksum(p.src_addr(), p.dst_addr()), "IPv6 UDP checksum"),
            }
            s.payload_offset + 8
        }
        None => {
            assert_eq!(s.protocol, IpProtocol::ESP);
            s.payload_offset
        }
    };
    if let IpPacket::V4(p) = ip {
        assert!(p.verify_checksum());
        assert_eq!(p.ttl(), 64);
    }
    assert_eq!(&pkt[esp..esp + 4], &cfg.spi.to_be_bytes());
    let ct_len = pkt.len() - esp - 8 - cfg.cipher.iv_len() - cfg.cipher.icv_len() - cfg.integrity.icv_len();
    assert_eq!(ct_len % cfg.cipher.block_len(), 0, "payload aligned to the block size");
    assert!(ct_len >= inner_len + 2 && ct_len < inner_len + 2 + cfg.cipher.block_len(), "minimal padding");
    let ct = &pkt[esp + 8 + cfg.cipher.iv_len()..][..inner.len()];
    if cfg.cipher == Cipher::Null {
        assert_eq!(ct, inner, "NULL encryption carries the inner packet as is");
    } else {
        assert_ne!(ct, inner, "inner packet sent in clear");
    }
}

#[test]
fn gcm_explicit_iv_is_the_sequence_number_and_never_repeats() {
    let cfg = config(Cipher::AesGcm128, Integrity::None, false);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 64, 0);
    let mut ivs = std::collections::HashSet::new();
    for seq in 1..=200u64 {
        let mut frame = frame_with(&inner);
        let (s, _) = pair.encap(&mut frame, inner.len()).unwrap();
        let esp = s + 20;
        assert_eq!(u32::from_be_bytes(frame[esp + 4..esp + 8].try_into().unwrap()) as u64, seq);
        let iv: [u8; 8] = frame[esp + 8..esp + 16].try_into().unwrap();
        assert_eq!(u64::from_be_bytes(iv), seq);
        assert!(ivs.insert(iv));
    }
}

#[test]
fn cbc_ivs_are_random() {
    let cfg = config(Cipher::AesCbc128, Integrity::HmacSha1_96, false);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 64, 0);
    let mut ivs = std::collections::HashSet::new();
    for _ in 0..500 {
        let mut frame = frame_with(&inner);
        let (s, _) = pair.encap(&mut frame, inner.len()).unwrap();
        let iv: [u8; 16] = frame[s + 28..s + 44].try_into().unwrap();
        assert!(ivs.insert(iv), "CBC IV repeated");
    }
    // Two workers seeded independently produce different streams.
    let cfg2 = config(Cipher::AesCbc128, Integrity::HmacSha1_96, false);
    let mut pair2 = Pair::new(&cfg2);
    let mut frame = frame_with(&inner);
    let (s, _) = pair2.encap(&mut frame, inner.len()).unwrap();
    let iv: [u8; 16] = frame[s + 28..s + 44].try_into().unwrap();
    assert!(!ivs.contains(&iv));
}

#[test]
fn outer_header_rules_dscp_ecn_df_ttl_id() {
    for df in [DfPolicy::Copy, DfPolicy::Clear, DfPolicy::Set] {
        for dscp in [DscpPolicy::Copy, DscpPolicy::Set(46)] {
            let mut cfg = config(Cipher::AesGcm256, Integrity::None, false);
            cfg.df = df;
            cfg.dscp = dscp;
            cfg.ttl = 17;
            let mut pair = Pair::new(&cfg);
            for inner_df in [false, true] {
                let mut inner = inner_packet(false, 32, 1);
                {
                    let mut ip = ipv4::Packet::new_unchecked(&mut inner[..]);
                    ip.set_dont_frag(inner_df);
                    ip.fill_checksum();
                }
                let mut frame = frame_with(&inner);
                let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
                let outer = ipv4::Packet::new_checked(&frame[s..s + l]).unwrap();
                let want_df = match df {
                    DfPolicy::Copy => inner_df,
                    DfPolicy::Clear => false,
                    DfPolicy::Set => true,
                };
                assert_eq!(outer.dont_frag(), want_df, "{df:?} inner_df={inner_df}");
                assert_eq!(outer.dscp(), if dscp == DscpPolicy::Copy { 10 } else { 46 });
                assert_eq!(outer.ecn(), 0b10, "RFC 6040 normal mode copies ECN");
                assert_eq!(outer.ttl(), 17);
                assert_eq!(outer.ident(), pair.out.last_seq() as u16);
                assert!(outer.verify_checksum());
            }
        }
    }
    // IPv6 inner: DF copy sets DF; IPv6 outer copies traffic class and flow label.
    let cfg = config(Cipher::AesGcm128, Integrity::None, false);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(true, 10, 0);
    let mut frame = frame_with(&inner);
    let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
    assert!(ipv4::Packet::new_checked(&frame[s..s + l]).unwrap().dont_frag());
    let cfg = config(Cipher::AesGcm128, Integrity::None, true);
    let mut pair = Pair::new(&cfg);
    let mut frame = frame_with(&inner);
    let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
    let o = ipv6::Packet::new_checked(&frame[s..s + l]).unwrap();
    assert_eq!((o.dscp(), o.ecn(), o.flow_label(), o.hop_limit()), (10, 0b10, 0x12345, 64));
}

#[test]
fn ecn_decapsulation_follows_rfc6040() {
    let cfg = config(Cipher::AesGcm128, Integrity::None, false);
    for inner_v6 in [false, true] {
        // Inner ECT(0); outer marked CE on the way: inner becomes CE, checksum still valid.
        let mut pair = Pair::new(&cfg);
        let inner = inner_packet(inner_v6, 40, 3);
        let mut frame = frame_with(&inner);
        let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
        set_outer_ecn_v4(&mut frame[s..s + l], 0b11);
        let (is, il) = pair.decap(&mut frame, s, l).unwrap();
        let ip = IpPacket::new_checked(&frame[is..is + il]).unwrap();
        match ip {
            IpPacket::V4(p) => {
                assert_eq!(p.ecn(), 0b11);
                assert!(p.verify_checksum(), "incremental checksum update");
            }
            IpPacket::V6(p) => assert_eq!(p.ecn(), 0b11),
        }
        // Inner Not-ECT with outer CE must be dropped.
        let mut inner = inner_packet(inner_v6, 40, 3);
        match IpPacket::new_checked(&inner).unwrap().version() {
            ipsec_wire::IpVersion::V4 => {
                let mut p = ipv4::Packet::new_unchecked(&mut inner[..]);
                p.set_ecn(0);
                p.fill_checksum();
            }
            ipsec_wire::IpVersion::V6 => ipv6::Packet::new_unchecked(&mut inner[..]).set_ecn(0),
        }
        let mut frame = frame_with(&inner);
        let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
        set_outer_ecn_v4(&mut frame[s..s + l], 0b11);
        assert_eq!(pair.decap(&mut frame, s, l), Err(DropReason::EcnDrop));
    }
}

fn set_outer_ecn_v4(pkt: &mut [u8], ecn: u8) {
    let mut p = ipv4::Packet::new_unchecked(pkt);
    p.set_ecn(ecn);
    p.fill_checksum();
}

#[test]
fn replayed_and_old_packets_are_dropped() {
    let mut cfg = config(Cipher::AesGcm128, Integrity::None, false);
    cfg.replay_window = 64;
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 20, 0);
    let mut sent = Vec::new();
    for _ in 0..100 {
        let mut frame = frame_with(&inner);
        let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
        sent.push((frame, s, l));
    }
    // Deliver 1..=100 except 50, then replay 100, then deliver 50 (in window), 10 (too old).
    for (k, (f, s, l)) in sent.iter().enumerate() {
        if k != 49 && k != 9 {
            let mut f = f.clone();
            pair.decap(&mut f, *s, *l).unwrap();
        }
    }
    let (f, s, l) = &sent[99];
    assert_eq!(pair.decap(&mut f.clone(), *s, *l), Err(DropReason::Replayed));
    let (f, s, l) = &sent[49];
    assert!(pair.decap(&mut f.clone(), *s, *l).is_ok());
    assert_eq!(pair.decap(&mut f.clone(), *s, *l), Err(DropReason::Replayed));
    let (f, s, l) = &sent[9];
    assert_eq!(pair.decap(&mut f.clone(), *s, *l), Err(DropReason::ReplayTooOld));
    assert_eq!(pair.inb.counters().drops(DropReason::Replayed), 2);
    assert_eq!(pair.inb.counters().drops(DropReason::ReplayTooOld), 1);
    assert_eq!(pair.worker.counters().drops(DropReason::Replayed), 2);
}

#[test]
fn failed_icv_does_not_advance_the_replay_window() {
    let cfg = config(Cipher::AesCbc256, Integrity::HmacSha256_128, false);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 20, 0);
    let mut frame = frame_with(&inner);
    let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
    let mut forged = frame.clone();
    forged[s + l - 1] ^= 1;
    assert_eq!(pair.decap(&mut forged, s, l), Err(DropReason::AuthFailed));
    assert_eq!(pair.inb.highest_seq(), 0, "window untouched by a forgery");
    assert!(pair.decap(&mut frame, s, l).is_ok(), "the genuine packet with the same seq is still accepted");
}

#[test]
fn every_tampered_byte_of_the_esp_part_is_caught() {
    for (cipher, integ) in transforms() {
        if cipher == Cipher::Null && integ == Integrity::None {
            continue;
        }
        let cfg = config(cipher, integ, false);
        let mut pair = Pair::new(&cfg);
        let inner = inner_packet(false, 33, 9);
        let mut frame = frame_with(&inner);
        let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
        for off in 20..l {
            let mut f = frame.clone();
            f[s + off] ^= 0x40;
            let r = pair.decap(&mut f, s, l);
            let ok_reasons = if off < 24 {
                // SPI bytes: no SA has that SPI.
                vec![DropReason::UnknownSpi]
            } else if off < 28 {
                // Sequence number: ICV fails, or the inferred number is out of window.
                vec![DropReason::AuthFailed, DropReason::ReplayTooOld]
            } else {
                vec![DropReason::AuthFailed]
            };
            assert!(matches!(r, Err(e) if ok_reasons.contains(&e)), "{cipher}/{integ} flip at {off}: {r:?}");
        }
        assert!(pair.decap(&mut frame, s, l).is_ok());
    }
}

#[test]
fn truncation_at_every_offset_is_dropped_not_panicking() {
    for (cipher, integ) in [(Cipher::AesGcm128, Integrity::None), (Cipher::AesCbc128, Integrity::HmacSha1_96)] {
        for encap in [None, Some(UdpEncap::STANDARD)] {
            for outer_v6 in [false, true] {
                let mut cfg = config(cipher, integ, outer_v6);
                cfg.encap = encap;
                let mut pair = Pair::new(&cfg);
                let inner = inner_packet(false, 50, 1);
                let mut frame = frame_with(&inner);
                let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
                for cut in 0..l {
                    let mut f = frame.clone();
                    // Keep the length fields as they are: the packet is simply cut short.
                    assert!(pair.decap(&mut f, s, cut).is_err(), "truncated to {cut} accepted");
                }
                // And with consistent length fields but a shortened ESP payload.
                for cut in 1..(l - 28).min(60) {
                    let mut f = frame.clone();
                    let newlen = l - cut;
                    fix_lengths(&mut f[s..s + newlen], outer_v6, encap.is_some());
                    assert!(pair.decap(&mut f, s, newlen).is_err(), "shortened by {cut} accepted");
                }
            }
        }
    }
}

fn fix_lengths(pkt: &mut [u8], v6: bool, udp_encap: bool) {
    let len = pkt.len();
    let hl = if v6 {
        ipv6::Packet::new_unchecked(&mut *pkt).set_payload_len((len - 40) as u16);
        40
    } else {
        let mut p = ipv4::Packet::new_unchecked(&mut *pkt);
        p.set_total_len(len as u16);
        p.fill_checksum();
        20
    };
    if udp_encap {
        udp::Packet::new_unchecked(&mut pkt[hl..]).set_len((len - hl) as u16);
    }
}

#[test]
fn bad_padding_and_next_header_are_dropped() {
    // NULL encryption without integrity lets the test rewrite the trailer in clear.
    let cfg = config(Cipher::Null, Integrity::None, false);
    let inner = inner_packet(false, 19, 0); // 47 bytes + 2 -> 52: padding 3 bytes (1, 2, 3)
    let cases: [(usize, u8, DropReason); 4] = [
        (3, 9, DropReason::BadPadding),    // a padding byte is wrong
        (1, 200, DropReason::BadPadding),  // pad length beyond the payload
        (0, 6, DropReason::BadNextHeader), // next header TCP: not tunnel mode
        (0, 59, DropReason::DummyPacket),  // next header "no next header": a dummy packet
    ];
    for (back, value, want) in cases {
        let mut pair = Pair::new(&cfg);
        let mut frame = frame_with(&inner);
        let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
        let end = s + l;
        assert_eq!(&frame[end - 5..end], &[1, 2, 3, 3, 4], "trailer as sent");
        frame[end - 1 - back] = value;
        assert_eq!(pair.decap(&mut frame, s, l), Err(want), "back={back} value={value}");
        assert_eq!(pair.inb.counters().drops(want), 1);
    }
}

#[test]
fn unknown_spi_wrong_selector_and_encap_mismatch() {
    let cfg = config(Cipher::AesGcm128, Integrity::None, false);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 20, 0);
    let mut frame = frame_with(&inner);
    let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
    frame[s + 23] ^= 1;
    assert_eq!(pair.decap(&mut frame, s, l), Err(DropReason::UnknownSpi));
    assert_eq!(pair.worker.counters().drops(DropReason::UnknownSpi), 1);

    // Inbound SA that only protects 203.0.113.0/24 on the remote side: our sender is outside.
    let mut narrow = cfg.clone();
    narrow.local_ts = vec!["203.0.113.0/24".parse().unwrap()];
    let p = ipsec_esp::default_provider();
    let out = OutboundSa::new(&cfg, p, Instant::now()).unwrap();
    let inb = InboundSa::new(&inbound_twin(&narrow), p, Instant::now()).unwrap();
    let mut w = EspWorker::new(p, Arc::new(EventQueue::default())).unwrap();
    let mut frame = frame_with(&inner);
    let mut pk = [PacketBuf::new(&mut frame, HEADROOM, inner.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    w.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(&out));
    assert!(v[0].is_ok());
    w.decap_burst(Instant::now(), &mut pk, &mut v, |_, _| Some(&inb));
    assert_eq!(v[0], Err(DropReason::SelectorMismatch));
    assert_eq!(inb.counters().drops(DropReason::SelectorMismatch), 1);

    // Outbound selector check too.
    let out_narrow = OutboundSa::new(&narrow, p, Instant::now()).unwrap();
    let mut frame = frame_with(&inner);
    let mut pk = [PacketBuf::new(&mut frame, HEADROOM, inner.len())];
    w.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(&out_narrow));
    assert_eq!(v[0], Err(DropReason::SelectorMismatch));

    // A UDP-encapsulated SA refuses plain ESP and the reverse.
    let mut udp_cfg = cfg.clone();
    udp_cfg.encap = Some(UdpEncap::STANDARD);
    let mut udp_pair = Pair::new(&udp_cfg);
    let mut frame = frame_with(&inner);
    let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
    assert_eq!(udp_pair.decap(&mut frame, s, l), Err(DropReason::EncapMismatch));
}

#[test]
fn ike_and_keepalives_on_4500_are_not_esp() {
    let mut cfg = config(Cipher::AesGcm128, Integrity::None, false);
    cfg.encap = Some(UdpEncap::STANDARD);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 40, 0);
    let mut frame = frame_with(&inner);
    let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
    // Non-ESP marker: what would be the SPI is zero.
    let mut f = frame.clone();
    f[s + 28..s + 32].fill(0);
    assert_eq!(pair.decap(&mut f, s, l), Err(DropReason::NotEsp));
    // NAT keepalive: one 0xff byte.
    let mut f = frame.clone();
    f[s + 28] = 0xff;
    fix_lengths(&mut f[s..s + 29], false, true);
    assert_eq!(pair.decap(&mut f, s, 29), Err(DropReason::NotEsp));
}

#[test]
fn outer_fragments_and_garbage_are_refused() {
    let cfg = config(Cipher::AesGcm128, Integrity::None, false);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 40, 0);
    let mut frame = frame_with(&inner);
    let (s, l) = pair.encap(&mut frame, inner.len()).unwrap();
    let mut f = frame.clone();
    {
        let mut p = ipv4::Packet::new_unchecked(&mut f[s..s + l]);
        p.set_more_frags(true);
        p.fill_checksum();
    }
    assert_eq!(pair.decap(&mut f, s, l), Err(DropReason::OuterFragment));
    let mut junk = vec![0x45u8; 200];
    assert_eq!(pair.decap(&mut junk, 0, 200), Err(DropReason::Malformed));
    // Encap of a non-IP packet.
    let mut f = frame_with(&[0x12; 40]);
    assert_eq!(pair.encap(&mut f, 40), Err(DropReason::NotIp));
}

#[test]
fn no_room_is_reported_not_panicking() {
    let cfg = config(Cipher::AesCbc128, Integrity::HmacSha512_256, true);
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 40, 0);
    let sa = &pair.out;
    let mut f = vec![0u8; 10 + inner.len() + 100];
    f[10..10 + inner.len()].copy_from_slice(&inner);
    let mut pk = [PacketBuf::new(&mut f, 10, inner.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    pair.worker.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(sa));
    assert_eq!(v[0], Err(DropReason::NoHeadroom));
    let mut f = vec![0u8; HEADROOM + inner.len() + 8];
    f[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
    let mut pk = [PacketBuf::new(&mut f, HEADROOM, inner.len())];
    pair.worker.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(sa));
    assert_eq!(v[0], Err(DropReason::NoTailroom));
}

#[test]
fn hard_packet_limit_expires_the_sa_and_raises_events() {
    let mut cfg = config(Cipher::AesGcm128, Integrity::None, false);
    cfg.lifetime = Lifetime {
        soft: Limits { packets: Some(2), ..Limits::UNLIMITED },
        hard: Limits { packets: Some(3), ..Limits::UNLIMITED },
    };
    let mut pair = Pair::new(&cfg);
    let inner = inner_packet(false, 10, 0);
    for k in 1..=3 {
        let mut f = frame_with(&inner);
        assert!(pair.encap(&mut f, inner.len()).is_ok(), "packet {k}");
    }
    let mut f = frame_with(&inner);
    assert_eq!(pair.encap(&mut f, inner.len()), Err(DropReason::SaExpired));
    let evs: Vec<_> = std::iter::from_fn(|| pair.events.pop()).collect();
    assert!(matches!(evs[..], [SaEvent::RekeyRequested { .. }, SaEvent::Expired { .. }]), "{evs:?}");
}

#[test]
fn a_burst_mixing_sas_and_drops_processes_each_packet_on_its_own() {
    let p = ipsec_esp::default_provider();
    let now = Instant::now();
    let cfg_a = config(Cipher::AesGcm128, Integrity::None, false);
    let mut cfg_b = config(Cipher::AesCbc128, Integrity::HmacSha256_128, true);
    cfg_b.spi = 0x2000_0002;
    let sas_out = [OutboundSa::new(&cfg_a, p, now).unwrap(), OutboundSa::new(&cfg_b, p, now).unwrap()];
    let sas_in = [
        InboundSa::new(&inbound_twin(&cfg_a), p, now).unwrap(),
        InboundSa::new(&inbound_twin(&cfg_b), p, now).unwrap(),
    ];
    let mut w = EspWorker::new(p, Arc::new(EventQueue::default())).unwrap();
    // 64 packets: inner v4 to A's tunnel, inner v6 to B's, every 7th is garbage.
    let inners: Vec<Vec<u8>> = (0..MAX_BURST)
        .map(|k| if k % 7 == 3 { vec![0u8; 30] } else { inner_packet(k % 3 == 0, 10 + k * 13, k as u8) })
        .collect();
    let mut frames: Vec<Vec<u8>> = inners.iter().map(|i| frame_with(i)).collect();
    let mut pkts: Vec<PacketBuf<'_>> =
        frames.iter_mut().zip(&inners).map(|(f, i)| PacketBuf::new(f, HEADROOM, i.len())).collect();
    let mut v = [Ok(()); MAX_BURST];
    w.encap_burst(now, &mut pkts, &mut v, |_, dst| Ok(&sas_out[usize::from(dst.is_ipv6())]));
    for (k, r) in v.iter().enumerate() {
        assert_eq!(r.is_err(), k % 7 == 3, "packet {k}: {r:?}");
    }
    w.decap_burst(now, &mut pkts, &mut v, |spi, _| sas_in.iter().find(|s| s.spi() == spi));
    for (k, (r, pk)) in v.iter().zip(&pkts).enumerate() {
        if k % 7 == 3 {
            assert!(r.is_err());
        } else {
            assert!(r.is_ok(), "packet {k}: {r:?}");
            assert_eq!(pk.data(), &inners[k][..], "packet {k}");
        }
    }
    let good = (0..MAX_BURST).filter(|k| k % 7 != 3).count() as u64;
    assert_eq!(sas_in[0].counters().packets() + sas_in[1].counters().packets(), good);
    assert_eq!(w.counters().decap_packets.get(), good);
}

#[test]
fn sequence_exhaustion_stops_the_sa_and_raises_rekey_first() {
    use ipsec_esp::{LimitKind, SEQ_SOFT_MARGIN_32};
    for esn in [false, true] {
        let mut cfg = config(Cipher::AesGcm128, Integrity::None, false);
        cfg.esn = esn;
        let limit = if esn { u64::MAX } else { u64::from(u32::MAX) };
        let p = ipsec_esp::default_provider();
        let events = Arc::new(EventQueue::new(16));
        let mut w = EspWorker::new(p, events.clone()).unwrap();
        // Resume just before the soft margin: the next packet crosses it.
        let margin = if esn { ipsec_esp::SEQ_SOFT_MARGIN_64 } else { SEQ_SOFT_MARGIN_32 };
        let sa = OutboundSa::resume(&cfg, p, Instant::now(), limit - margin).unwrap();
        let inner = inner_packet(false, 10, 0);
        let mut send = |sa: &OutboundSa| {
            let mut f = frame_with(&inner);
            let mut pk = [PacketBuf::new(&mut f, HEADROOM, inner.len())];
            let mut v: [Verdict; 1] = [Ok(())];
            w.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(sa));
            v[0]
        };
        assert!(send(&sa).is_ok());
        assert!(matches!(events.pop(), Some(SaEvent::RekeyRequested { limit: LimitKind::Sequence, .. })));
        // Resume at the very end: the last number is still usable, then the SA stops.
        let sa = OutboundSa::resume(&cfg, p, Instant::now(), limit - 1).unwrap();
        assert!(send(&sa).is_ok());
        assert_eq!(sa.last_seq(), limit);
        assert_eq!(send(&sa), Err(DropReason::SeqExhausted));
        assert_eq!(send(&sa), Err(DropReason::SaExpired), "stays stopped");
        assert!(sa.is_expired());
        let evs: Vec<_> = std::iter::from_fn(|| events.pop()).collect();
        assert!(
            evs.contains(&SaEvent::Expired {
                spi: cfg.spi,
                direction: ipsec_esp::Direction::Outbound,
                limit: LimitKind::Sequence
            }),
            "{evs:?}"
        );
    }
}

#[test]
fn esn_high_bits_are_used_across_the_32_bit_wrap() {
    let mut cfg = config(Cipher::AesCbc128, Integrity::HmacSha256_128, false);
    cfg.esn = true;
    let p = ipsec_esp::default_provider();
    // Sender resumes just below 2^32; the receiver has seen up to there.
    let out = OutboundSa::resume(&cfg, p, Instant::now(), (1u64 << 32) - 3).unwrap();
    let inb = InboundSa::new(&inbound_twin(&cfg), p, Instant::now()).unwrap();
    let mut w = EspWorker::new(p, Arc::new(EventQueue::default())).unwrap();
    let inner = inner_packet(false, 30, 0);
    let mut sent = Vec::new();
    for _ in 0..6 {
        let mut f = frame_with(&inner);
        let mut pk = [PacketBuf::new(&mut f, HEADROOM, inner.len())];
        let mut v: [Verdict; 1] = [Ok(())];
        w.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(&out));
        assert!(v[0].is_ok());
        let (s, l) = (pk[0].start, pk[0].len);
        sent.push((f, s, l));
    }
    // Wire sequence numbers wrap: ..., 0xffff_fffe, 0xffff_ffff, 0, 1, 2, 3 (full: 2^32 - 2 ..= 2^32 + 3).
    let lows: Vec<u32> =
        sent.iter().map(|(f, s, _)| u32::from_be_bytes(f[s + 24..s + 28].try_into().unwrap())).collect();
    assert_eq!(lows, vec![0xffff_fffe, 0xffff_ffff, 0, 1, 2, 3]);
    // Deliver out of order across the wrap; the receiver infers the high bits for each.
    for k in [1usize, 0, 3, 2, 5, 4] {
        let (f, s, l) = &sent[k];
        let mut f = f.clone();
        let mut pk = [PacketBuf::new(&mut f, *s, *l)];
        let mut v: [Verdict; 1] = [Ok(())];
        w.decap_burst(Instant::now(), &mut pk, &mut v, |_, _| Some(&inb));
        assert_eq!(v[0], Ok(()), "packet {k}");
    }
    assert_eq!(inb.highest_seq(), (1u64 << 32) + 3);
    // A packet whose ICV was computed with the wrong high bits (a sender that forgot ESN) fails.
    let mut no_esn = cfg.clone();
    no_esn.esn = false;
    let bad = OutboundSa::resume(&no_esn, p, Instant::now(), 4).unwrap();
    let mut f = frame_with(&inner);
    let mut pk = [PacketBuf::new(&mut f, HEADROOM, inner.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    w.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(&bad));
    w.decap_burst(Instant::now(), &mut pk, &mut v, |_, _| Some(&inb));
    assert_eq!(v[0], Err(DropReason::AuthFailed), "seq 5 is inferred as 2^32 + 5; an ICV over high bits 0 must fail");
}
