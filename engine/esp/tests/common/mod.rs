//! Helpers shared by the ESP integration tests: SA pairs, sample inner packets, frames.
#![allow(dead_code)]

use ipsec_esp::{
    default_provider, Cipher, EspWorker, EventQueue, InboundSa, Integrity, OutboundSa, PacketBuf, SaConfig, UdpEncap,
    Verdict, HEADROOM, TAILROOM,
};
use ipsec_wire::{checksum, ipv4, ipv6, udp, IpProtocol};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

pub const GW_A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GW_B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const GW_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const GW_B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const HOST_A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const HOST_B4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
pub const HOST_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 10);
pub const HOST_B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 20);

/// Every (cipher, integrity) pair an SA may use (AEADs alone, CBCs with every HMAC, NULL+HMAC).
pub fn transforms() -> Vec<(Cipher, Integrity)> {
    let mut v = Vec::new();
    for c in Cipher::ALL {
        if c.is_aead() {
            v.push((c, Integrity::None));
        } else {
            for i in Integrity::ALL {
                if i != Integrity::None {
                    v.push((c, i));
                }
            }
        }
    }
    v.push((Cipher::Null, Integrity::None));
    v
}

/// Deterministic key material.
pub fn keymat(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A config for the SA carrying traffic from gateway A to gateway B.
pub fn config(cipher: Cipher, integ: Integrity, outer_v6: bool) -> SaConfig {
    let (a, b): (IpAddr, IpAddr) = if outer_v6 { (GW_A6.into(), GW_B6.into()) } else { (GW_A4.into(), GW_B4.into()) };
    SaConfig::new(0x1000_0001, cipher, &keymat(cipher.keymat_len(), 1), integ, &keymat(integ.key_len(), 2), a, b)
}

/// The inbound twin of an outbound config (same keys, addresses seen from B).
pub fn inbound_twin(out: &SaConfig) -> SaConfig {
    let mut c = out.clone();
    c.local = out.remote;
    c.remote = out.local;
    c.local_ts = out.remote_ts.clone();
    c.remote_ts = out.local_ts.clone();
    c.encap = out.encap.map(|e| UdpEncap { local_port: e.remote_port, remote_port: e.local_port });
    c
}

pub struct Pair {
    pub out: OutboundSa,
    pub inb: InboundSa,
    pub worker: EspWorker,
    pub events: Arc<EventQueue>,
}

impl Pair {
    pub fn new(cfg: &SaConfig) -> Pair {
        let p = default_provider();
        let now = Instant::now();
        let events = Arc::new(EventQueue::new(64));
        Pair {
            out: OutboundSa::new(cfg, p, now).expect("outbound SA"),
            inb: InboundSa::new(&inbound_twin(cfg), p, now).expect("inbound SA"),
            worker: EspWorker::new(p, events.clone()).expect("worker"),
            events,
        }
    }

    /// Encapsulates one packet held in `frame` at `HEADROOM`; returns (start, len) or the drop.
    pub fn encap(&mut self, frame: &mut [u8], len: usize) -> Result<(usize, usize), ipsec_esp::DropReason> {
        let sa = &self.out;
        let mut pkts = [PacketBuf::new(frame, HEADROOM, len)];
        let mut v: [Verdict; 1] = [Ok(())];
        self.worker.encap_burst(Instant::now(), &mut pkts, &mut v, |_, _| Ok(sa));
        v[0].map(|()| (pkts[0].start, pkts[0].len))
    }

    /// Decapsulates one outer packet at `frame[start..start+len]`.
    pub fn decap(
        &mut self,
        frame: &mut [u8],
        start: usize,
        len: usize,
    ) -> Result<(usize, usize), ipsec_esp::DropReason> {
        let sa = &self.inb;
        let mut pkts = [PacketBuf::new(frame, start, len)];
        let mut v: [Verdict; 1] = [Ok(())];
        self.worker.decap_burst(Instant::now(), &mut pkts, &mut v, |spi, dst| {
            (spi == sa.spi() && dst == sa.local()).then_some(sa)
        });
        v[0].map(|()| (pkts[0].start, pkts[0].len))
    }
}

/// A UDP datagram in IPv4 or IPv6 with `payload_len` bytes of payload, checksums filled.
pub fn inner_packet(v6: bool, payload_len: usize, seed: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i as u8) ^ seed).collect();
    let udp_len = udp::HEADER_LEN + payload_len;
    if v6 {
        let mut b = vec![0u8; ipv6::HEADER_LEN + udp_len];
        {
            let mut ip = ipv6::Packet::new_unchecked(&mut b[..]);
            ip.set_version(6);
            ip.set_dscp(10);
            ip.set_ecn(0b10);
            ip.set_flow_label(0x12345);
            ip.set_payload_len(udp_len as u16);
            ip.set_next_header(IpProtocol::UDP);
            ip.set_hop_limit(63);
            ip.set_src_addr(HOST_A6);
            ip.set_dst_addr(HOST_B6);
        }
        let mut u = udp::Packet::new_unchecked(&mut b[ipv6::HEADER_LEN..]);
        u.set_src_port(40000);
        u.set_dst_port(5201);
        u.set_len(udp_len as u16);
        u.payload_mut().copy_from_slice(&payload);
        u.fill_checksum(HOST_A6, HOST_B6);
        b
    } else {
        let mut b = vec![0u8; ipv4::HEADER_LEN + udp_len];
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut b[..]);
            ip.set_version(4);
            ip.set_header_len(ipv4::HEADER_LEN);
            ip.set_dscp(10);
            ip.set_ecn(0b10);
            ip.set_total_len((ipv4::HEADER_LEN + udp_len) as u16);
            ip.set_ident(0x4242);
            ip.set_dont_frag(true);
            ip.set_ttl(63);
            ip.set_next_header(IpProtocol::UDP);
            ip.set_src_addr(HOST_A4);
            ip.set_dst_addr(HOST_B4);
            ip.fill_checksum();
        }
        let mut u = udp::Packet::new_unchecked(&mut b[ipv4::HEADER_LEN..]);
        u.set_src_port(40000);
        u.set_dst_port(5201);
        u.set_len(udp_len as u16);
        u.payload_mut().copy_from_slice(&payload);
        u.fill_checksum(HOST_A4, HOST_B4);
        b
    }
}

/// A frame with `HEADROOM` junk bytes, the packet, and `TAILROOM` junk bytes.
pub fn frame_with(packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0xa5u8; HEADROOM + packet.len() + TAILROOM];
    f[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    f
}

/// Checks the IPv4 header checksum of a packet starting at an IPv4 header.
pub fn ipv4_checksum_ok(pkt: &[u8]) -> bool {
    let hl = ((pkt[0] & 0xf) as usize) * 4;
    checksum::data(&pkt[..hl]) == 0xffff
}
