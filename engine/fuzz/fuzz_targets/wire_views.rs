//! Every `ipsec-wire` view on arbitrary bytes: `new_checked` must either fail or yield a view
//! whose getters (and length-preserving setters) never panic, at any offset, and along the
//! Ethernet → VLAN → IPv4/IPv6 → extension headers → UDP → ESP/IKE chain the data path uses.
#![no_main]

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipsec_wire::{
    checksum, esp, ethernet, icmpv4, icmpv6, ipv4, ipv6, parse_ip, udp, EtherType, IpPacket, IpProtocol, UdpEncap,
};
use libfuzzer_sys::fuzz_target;

/// How many start offsets each input is also tried at.
const MAX_OFFSETS: usize = 48;

fuzz_target!(|data: &[u8]| {
    // Every view at every offset, with no assumption about what is there.
    for off in 0..data.len().min(MAX_OFFSETS) + 1 {
        every_view(&data[off..]);
    }
    // The receive chain, starting at an Ethernet header.
    if let Ok(l3) = ethernet_chain(data) {
        assert!(l3 <= data.len());
    }
    // The chain starting right at an IP header (tunnel-mode inner packets, tun devices).
    ip_chain(data);
    // Checksums are total functions; splitting at an even offset never changes the sum.
    let split = (data.len() / 2) & !1;
    let (a, b) = data.split_at(split);
    assert_eq!(checksum::combine(&[checksum::data(a), checksum::data(b)]), checksum::data(data));
});

fn every_view(buf: &[u8]) {
    ethernet_view(buf);
    ipv4_view(buf);
    ipv6_view(buf);
    udp_view(buf);
    icmpv4_view(buf);
    icmpv6_view(buf);
    esp_view(buf);
    trailer_helpers(buf);
    if let Ok(s) = parse_ip(buf) {
        assert!(s.payload_offset <= s.packet_end && s.packet_end <= buf.len());
        black_box(s.ports(buf));
    }
    if let Ok(p) = IpPacket::new_checked(buf) {
        black_box((p.version(), p.src_addr(), p.dst_addr(), p.next_header()));
        assert!(p.packet_bytes().len() <= buf.len());
        black_box(p.summary().ok());
    }
    black_box(ipsec_wire::ip_version(buf.first().copied().unwrap_or(0)));
}

fn ethernet_view(buf: &[u8]) {
    if let Ok(f) = ethernet::Frame::new_checked(buf) {
        black_box((f.dst_addr(), f.src_addr(), f.ethertype(), f.payload()));
        black_box(ethernet::Repr::parse(&f));
        if let Ok(l3) = f.l3_info() {
            assert!(l3.offset <= buf.len());
            assert!(l3.outer_vlan_id.is_none() || l3.vlan_id.is_some());
        }
    }
    if let Ok(tag) = ethernet::VlanTag::new_checked(buf) {
        black_box((tag.pcp(), tag.dei(), tag.vlan_id(), tag.ethertype(), tag.payload()));
    }
    black_box(ethernet::l3_info(buf).ok());
}

fn ipv4_view(buf: &[u8]) {
    let Ok(p) = ipv4::Packet::new_checked(buf) else {
        return;
    };
    black_box((
        p.version(),
        p.ihl(),
        p.header_len(),
        p.dscp(),
        p.ecn(),
        p.total_len(),
        p.ident(),
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.is_fragment(),
    ));
    black_box((p.ttl(), p.next_header(), p.checksum(), p.src_addr(), p.dst_addr()));
    let valid = p.verify_checksum();
    assert_eq!(p.options().len(), p.header_len() - ipv4::HEADER_LEN);
    assert_eq!(p.payload().len(), usize::from(p.total_len()) - p.header_len());
    black_box(ipv4::Repr::parse(&p));

    // Setters that keep the lengths must not panic either, and the incremental checksum
    // updates must keep a correct checksum correct.
    let mut copy = buf.to_vec();
    let mut m = ipv4::Packet::new_unchecked(&mut copy[..]);
    let ttl = m.ttl();
    let new_ttl = m.decrement_ttl();
    assert_eq!(new_ttl, ttl.checked_sub(1));
    assert_eq!(m.verify_checksum(), valid);
    m.rewrite_dscp_ecn(0x2e, 0x1);
    assert_eq!(m.verify_checksum(), valid);
    m.fill_checksum();
    assert!(m.verify_checksum());
    m.options_mut().fill(1);
    m.payload_mut().fill(0);
}

fn ipv6_view(buf: &[u8]) {
    let Ok(p) = ipv6::Packet::new_checked(buf) else {
        return;
    };
    black_box((
        p.version(),
        p.traffic_class(),
        p.dscp(),
        p.ecn(),
        p.flow_label(),
        p.payload_len(),
        p.next_header(),
        p.hop_limit(),
        p.src_addr(),
        p.dst_addr(),
    ));
    assert_eq!(p.payload().len(), usize::from(p.payload_len()));
    black_box(ipv6::Repr::parse(&p));
    if let Ok((proto, off, frag)) = p.upper_layer() {
        assert!(off <= ipv6::HEADER_LEN + p.payload().len());
        black_box((proto, frag));
    }
    let mut copy = buf.to_vec();
    let mut m = ipv6::Packet::new_unchecked(&mut copy[..]);
    m.set_dscp(0x2e);
    m.set_ecn(2);
    m.set_flow_label(0xfffff);
    m.payload_mut().fill(0);
}

fn udp_view(buf: &[u8]) {
    let Ok(p) = udp::Packet::new_checked(buf) else {
        return;
    };
    black_box((p.src_port(), p.dst_port(), p.len(), p.is_empty(), p.checksum()));
    assert_eq!(p.payload().len(), usize::from(p.len()) - udp::HEADER_LEN);
    let (s4, d4) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 2));
    let (s6, d6) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
    black_box((p.verify_checksum(s4, d4), p.verify_checksum(s6, d6)));
    black_box(udp::Repr::parse(&p));
    black_box(esp::classify_udp_encap(p.payload()));

    let mut copy = buf.to_vec();
    let mut m = udp::Packet::new_unchecked(&mut copy[..]);
    m.fill_checksum(s4, d4);
    assert!(m.verify_checksum(s4, d4));
    m.fill_checksum(s6, d6);
    assert!(m.verify_checksum(s6, d6));
    m.payload_mut().fill(0);
}

fn icmpv4_view(buf: &[u8]) {
    let Ok(p) = icmpv4::Packet::new_checked(buf) else {
        return;
    };
    black_box((p.msg_type(), p.msg_code(), p.checksum(), p.rest_of_header()));
    black_box((p.echo_ident(), p.echo_seq_no(), p.next_hop_mtu(), p.verify_checksum()));
    assert_eq!(p.data().len(), buf.len() - icmpv4::HEADER_LEN);
    black_box(icmpv4::Repr::parse(&p));
    let mut copy = buf.to_vec();
    let mut m = icmpv4::Packet::new_unchecked(&mut copy[..]);
    m.fill_checksum();
    assert!(m.verify_checksum());
}

fn icmpv6_view(buf: &[u8]) {
    let Ok(p) = icmpv6::Packet::new_checked(buf) else {
        return;
    };
    let (s, d) = (Ipv6Addr::LOCALHOST, Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
    black_box((p.msg_type(), p.msg_type().is_error(), p.msg_code(), p.checksum()));
    black_box((p.rest_of_header(), p.echo_ident(), p.echo_seq_no(), p.mtu()));
    black_box(p.verify_checksum(&s, &d));
    assert_eq!(p.data().len(), buf.len() - icmpv6::HEADER_LEN);
    black_box(icmpv6::Repr::parse(&p));
    let mut copy = buf.to_vec();
    let mut m = icmpv6::Packet::new_unchecked(&mut copy[..]);
    m.fill_checksum(&s, &d);
    assert!(m.verify_checksum(&s, &d));
}

fn esp_view(buf: &[u8]) {
    let Ok(p) = esp::Packet::new_checked(buf) else {
        return;
    };
    assert_ne!(p.spi(), 0);
    black_box((p.seq_no(), p.header(), p.payload(), esp::Repr::parse(&p)));
    // IV / ICV lengths of the transforms the gateway supports (and some nonsense).
    for (iv, icv) in [(8, 16), (16, 12), (16, 16), (0, 12), (8, 0), (usize::MAX, 16)] {
        if let Ok(parts) = p.split_payload(iv, icv) {
            assert_eq!(parts.iv.len() + parts.ciphertext.len() + parts.icv.len(), p.payload().len());
            trailer_helpers(parts.ciphertext);
        }
    }
}

fn trailer_helpers(plaintext: &[u8]) {
    if let Ok((pad_len, next_header)) = esp::trailer(plaintext) {
        assert!(usize::from(pad_len) + 2 <= plaintext.len());
        black_box((next_header, esp::verify_padding(plaintext, pad_len)));
    }
    if let Ok((inner, _)) = esp::strip_trailer(plaintext) {
        assert!(inner.len() + 2 <= plaintext.len());
    }
    for pad_len in [0u8, 1, 7, 255] {
        black_box(esp::verify_padding(plaintext, pad_len));
    }
    black_box(esp::pad_len_for(plaintext.len(), 16));
}

/// Ethernet → up to two VLAN tags → IPv4/IPv6 → extension headers → UDP → ESP/IKE, like the
/// receive path. Returns the L3 offset.
fn ethernet_chain(frame: &[u8]) -> Result<usize, ipsec_wire::Error> {
    let l3 = ethernet::l3_info(frame)?;
    let ip = &frame[l3.offset..];
    match l3.ethertype {
        EtherType::IPV4 | EtherType::IPV6 => ip_chain(ip),
        _ => {}
    }
    Ok(l3.offset)
}

fn ip_chain(ip: &[u8]) {
    let (proto, l4) = match IpPacket::new_checked(ip) {
        Ok(IpPacket::V4(p)) => {
            if p.is_fragment() && p.frag_offset() != 0 {
                return;
            }
            (p.next_header(), p.payload())
        }
        Ok(IpPacket::V6(p)) => {
            let Ok((proto, off, frag)) = ipv6::skip_extension_headers(p.next_header(), p.payload()) else {
                return;
            };
            if frag.is_some_and(|f| !f.is_first()) {
                return;
            }
            (proto, &p.payload()[off..])
        }
        Err(_) => return,
    };
    match proto {
        IpProtocol::UDP => {
            let Ok(u) = udp::Packet::new_checked(l4) else {
                return;
            };
            if u.dst_port() == esp::UDP_ENCAP_PORT || u.src_port() == esp::UDP_ENCAP_PORT {
                let payload = u.payload();
                let kind = esp::classify_udp_encap(payload);
                match kind {
                    UdpEncap::Esp => {
                        // Classified as ESP implies the ESP view accepts it.
                        let e = esp::Packet::new_checked(payload).expect("classified as ESP");
                        black_box((e.spi(), e.seq_no()));
                    }
                    UdpEncap::Ike => {
                        let off = kind.offset().expect("IKE has an offset");
                        assert!(payload.len() >= off + esp::IKE_HEADER_LEN);
                    }
                    UdpEncap::NatKeepalive => assert_eq!(payload, &[esp::NAT_KEEPALIVE]),
                    UdpEncap::Invalid => {}
                }
            }
        }
        IpProtocol::ESP => {
            if let Ok(e) = esp::Packet::new_checked(l4) {
                black_box((e.spi(), e.seq_no(), e.payload()));
            }
        }
        IpProtocol::ICMP => {
            if let Ok(i) = icmpv4::Packet::new_checked(l4) {
                black_box((i.next_hop_mtu(), i.data()));
                // The quoted packet of an ICMP error is itself untrusted.
                black_box(parse_ip(i.data()).ok());
            }
        }
        IpProtocol::ICMPV6 => {
            if let Ok(i) = icmpv6::Packet::new_checked(l4) {
                black_box((i.mtu(), i.data()));
                black_box(parse_ip(i.data()).ok());
            }
        }
        _ => {}
    }
}
