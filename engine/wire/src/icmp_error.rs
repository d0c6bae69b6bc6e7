//! ICMP error messages a router sends about a packet it cannot forward, built in place in front
//! of the offending packet (no copy of the quoted bytes, no allocation).
//!
//! - [`may_answer`]: the RFC 1812 §4.3.2.7 / RFC 4443 §2.4 (e) rules: never about an ICMP error,
//!   a non-first fragment, or a packet from an unspecified, loopback, multicast or broadcast
//!   source (nor, for IPv4, to a multicast or broadcast destination).
//! - [`emit_in_place`]: writes the IP and ICMP headers in the `HEADROOM` bytes in front of the
//!   offending packet and quotes as much of it as the RFCs allow: ICMPv4 at most 576 bytes in all
//!   (RFC 1812 §4.3.2.3: as much as fits, at least the header and 8 bytes), ICMPv6 at most 1280
//!   (RFC 4443 §2.4 (c)). The destination is the offending packet's source.
//!
//! Message kinds: [`ErrorKind::TooBig`] is ICMPv4 destination unreachable / fragmentation needed
//! (type 3 code 4, RFC 1191 next-hop MTU) or ICMPv6 packet too big (type 2);
//! [`ErrorKind::TimeExceeded`] is ICMPv4 type 11 / ICMPv6 type 3, code 0.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ops::Range;

use crate::{icmpv4, icmpv6, ipv4, ipv6, parse_ip, Error, IpProtocol, IpVersion};

/// Bytes an ICMPv4 error puts in front of the quoted packet (IPv4 header + ICMP header).
pub const V4_HEADROOM: usize = ipv4::HEADER_LEN + icmpv4::HEADER_LEN;
/// Bytes an ICMPv6 error puts in front of the quoted packet (IPv6 header + ICMPv6 header).
pub const V6_HEADROOM: usize = ipv6::HEADER_LEN + icmpv6::HEADER_LEN;
/// Largest ICMPv4 error sent (RFC 1812 §4.3.2.3).
pub const V4_MAX_LEN: usize = 576;
/// Largest ICMPv6 error sent (RFC 4443 §2.4 (c)): the IPv6 minimum MTU.
pub const V6_MAX_LEN: usize = 1280;

/// DSCP of the errors sent (CS6, network control, as Linux does).
const DSCP_CS6: u8 = 48;

/// Which error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fragmentation needed (IPv4, next-hop MTU) / packet too big (IPv6, MTU).
    TooBig {
        /// The MTU to report.
        mtu: u16,
    },
    /// TTL / hop limit exceeded in transit.
    TimeExceeded,
}

/// Whether a router may answer `packet` (starting at its IP header) with an ICMP error.
pub fn may_answer(packet: &[u8]) -> bool {
    let Ok(sum) = parse_ip(packet) else { return false };
    if sum.fragment.is_some_and(|f| !f.is_first()) {
        return false;
    }
    let first_payload_byte = packet.get(sum.payload_offset).copied();
    match (sum.src, sum.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if src.is_unspecified() || src.is_loopback() || src.is_multicast() || src.is_broadcast() {
                return false;
            }
            if dst.is_multicast() || dst.is_broadcast() {
                return false;
            }
            if sum.protocol == IpProtocol::ICMP {
                // Only queries and replies may be answered; an unreadable type is not.
                return matches!(first_payload_byte, Some(0 | 8 | 13 | 14 | 15 | 16 | 17 | 18));
            }
            true
        }
        (IpAddr::V6(src), IpAddr::V6(_)) => {
            if src.is_unspecified() || src.is_loopback() || src.is_multicast() {
                return false;
            }
            if sum.protocol == IpProtocol::ICMPV6 {
                return first_payload_byte.is_some_and(|t| !icmpv6::Message(t).is_error());
            }
            true
        }
        _ => false,
    }
}

/// Builds an ICMP error about the packet at `buf[at..at + len]` in place: the IP and ICMP headers
/// go into `buf[at - HEADROOM..at]`, the quoted packet stays where it is and is cut to the size
/// limit. Returns the range of the ICMP packet (IP header first) in `buf`.
///
/// `src` is the gateway's own address the error comes from (same family as the packet); `ttl`
/// the TTL / hop limit of the error. Fails with [`Error::Truncated`] if `at` leaves less than
/// [`V4_HEADROOM`] / [`V6_HEADROOM`] bytes or the range is outside `buf`, and with
/// [`Error::Malformed`] if the packet does not parse or `src` is of the other family.
/// Whether an error may be sent at all is [`may_answer`]'s business, not checked here.
pub fn emit_in_place(
    buf: &mut [u8],
    at: usize,
    len: usize,
    src: IpAddr,
    kind: ErrorKind,
    ttl: u8,
) -> Result<Range<usize>, Error> {
    let end = at.checked_add(len).ok_or(Error::Truncated)?;
    let pkt = buf.get(at..end).ok_or(Error::Truncated)?;
    let sum = parse_ip(pkt)?;
    let len = len.min(sum.packet_end);
    match (sum.version, src, sum.src) {
        (IpVersion::V4, IpAddr::V4(src), IpAddr::V4(dst)) => emit_v4(buf, at, len, src, dst, kind, ttl),
        (IpVersion::V6, IpAddr::V6(src), IpAddr::V6(dst)) => emit_v6(buf, at, len, src, dst, kind, ttl),
        _ => Err(Error::Malformed),
    }
}

fn emit_v4(
    buf: &mut [u8],
    at: usize,
    len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: ErrorKind,
    ttl: u8,
) -> Result<Range<usize>, Error> {
    let start = at.checked_sub(V4_HEADROOM).ok_or(Error::Truncated)?;
    let quoted = len.min(V4_MAX_LEN - V4_HEADROOM);
    let total = V4_HEADROOM + quoted;
    let out = &mut buf[start..start + total];
    let (hdr, icmp) = out.split_at_mut(ipv4::HEADER_LEN);
    let mut ip = ipv4::Packet::new_unchecked(hdr);
    ip.set_version(4);
    ip.set_header_len(ipv4::HEADER_LEN);
    ip.set_dscp(DSCP_CS6);
    ip.set_ecn(0);
    ip.set_total_len(total as u16);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_ttl(ttl);
    ip.set_next_header(IpProtocol::ICMP);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    let (msg, code, rest) = match kind {
        ErrorKind::TooBig { mtu } => (icmpv4::Message::DEST_UNREACHABLE, icmpv4::CODE_FRAG_NEEDED, u32::from(mtu)),
        ErrorKind::TimeExceeded => (icmpv4::Message::TIME_EXCEEDED, icmpv4::CODE_TTL_EXCEEDED, 0),
    };
    let mut m = icmpv4::Packet::new_unchecked(icmp);
    icmpv4::Repr { msg_type: msg, msg_code: code, rest_of_header: rest }.emit(&mut m);
    m.fill_checksum();
    Ok(start..start + total)
}

fn emit_v6(
    buf: &mut [u8],
    at: usize,
    len: usize,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: ErrorKind,
    hop_limit: u8,
) -> Result<Range<usize>, Error> {
    let start = at.checked_sub(V6_HEADROOM).ok_or(Error::Truncated)?;
    let quoted = len.min(V6_MAX_LEN - V6_HEADROOM);
    let total = V6_HEADROOM + quoted;
    let out = &mut buf[start..start + total];
    let (hdr, icmp) = out.split_at_mut(ipv6::HEADER_LEN);
    let mut ip = ipv6::Packet::new_unchecked(hdr);
    ip.set_version(6);
    ip.set_traffic_class(DSCP_CS6 << 2);
    ip.set_flow_label(0);
    ip.set_payload_len((total - ipv6::HEADER_LEN) as u16);
    ip.set_next_header(IpProtocol::ICMPV6);
    ip.set_hop_limit(hop_limit);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    let (msg, rest) = match kind {
        ErrorKind::TooBig { mtu } => (icmpv6::Message::PACKET_TOO_BIG, u32::from(mtu)),
        ErrorKind::TimeExceeded => (icmpv6::Message::TIME_EXCEEDED, 0),
    };
    let mut m = icmpv6::Packet::new_unchecked(icmp);
    icmpv6::Repr { msg_type: msg, msg_code: 0, rest_of_header: rest }.emit(&mut m);
    m.fill_checksum(&src, &dst);
    Ok(start..start + total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{checksum, udp};
    use std::vec;
    use std::vec::Vec;

    const GW4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const HOST4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const FAR4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
    const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1);
    const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 10);
    const FAR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 20);

    /// A frame-like buffer: 100 junk bytes, then the packet.
    fn v4(proto: IpProtocol, payload: &[u8], df: bool, offset: u16, mf: bool) -> Vec<u8> {
        let mut b = vec![0xa5u8; 100 + 20 + payload.len()];
        let p = &mut b[100..];
        p[20..].copy_from_slice(payload);
        let mut ip = ipv4::Packet::new_unchecked(p);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_dscp(0);
        ip.set_ecn(0);
        ip.set_total_len((20 + payload.len()) as u16);
        ip.set_ident(7);
        ip.clear_flags();
        ip.set_dont_frag(df);
        ip.set_more_frags(mf);
        ip.set_frag_offset(offset);
        ip.set_ttl(64);
        ip.set_next_header(proto);
        ip.set_src_addr(HOST4);
        ip.set_dst_addr(FAR4);
        ip.fill_checksum();
        b
    }

    fn v6(next: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0xa5u8; 100 + 40 + payload.len()];
        let p = &mut b[100..];
        p[40..].copy_from_slice(payload);
        let mut ip = ipv6::Packet::new_unchecked(p);
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(1);
        ip.set_payload_len(payload.len() as u16);
        ip.set_next_header(next);
        ip.set_hop_limit(64);
        ip.set_src_addr(HOST6);
        ip.set_dst_addr(FAR6);
        b
    }

    #[test]
    fn frag_needed_quotes_up_to_576_bytes_with_right_fields() {
        let payload: Vec<u8> = (0..1480).map(|i| i as u8).collect();
        let mut b = v4(IpProtocol::UDP, &payload, true, 0, false);
        let original = b[100..].to_vec();
        assert!(may_answer(&original));
        let r = emit_in_place(&mut b, 100, 1500, GW4.into(), ErrorKind::TooBig { mtu: 1418 }, 64).unwrap();
        assert_eq!(r, 72..72 + 576);
        let ip = ipv4::Packet::new_checked(&b[r.clone()]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr(), ip.next_header()), (GW4, HOST4, IpProtocol::ICMP));
        assert_eq!((ip.total_len(), ip.ttl(), ip.dont_frag()), (576, 64, false));
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), icmpv4::Message::DEST_UNREACHABLE);
        assert_eq!(icmp.msg_code(), icmpv4::CODE_FRAG_NEEDED);
        assert_eq!(icmp.next_hop_mtu(), Some(1418));
        assert_eq!(icmp.data(), &original[..548]);
        // The error itself is never answered.
        assert!(!may_answer(&b[r]));
    }

    #[test]
    fn small_packets_are_quoted_whole() {
        let mut b = v4(IpProtocol::UDP, &[1, 2, 3, 4, 5, 6, 7, 8, 9], true, 0, false);
        let original = b[100..].to_vec();
        let r = emit_in_place(&mut b, 100, original.len(), GW4.into(), ErrorKind::TimeExceeded, 255).unwrap();
        let ip = ipv4::Packet::new_checked(&b[r]).unwrap();
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (icmpv4::Message::TIME_EXCEEDED, 0));
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.data(), &original[..]);
    }

    #[test]
    fn packet_too_big_quotes_up_to_1280_bytes() {
        let payload: Vec<u8> = (0..1460).map(|i| (i * 3) as u8).collect();
        let mut b = v6(IpProtocol::UDP, &payload);
        let original = b[100..].to_vec();
        assert!(may_answer(&original));
        let r = emit_in_place(&mut b, 100, original.len(), GW6.into(), ErrorKind::TooBig { mtu: 1398 }, 64).unwrap();
        assert_eq!(r.len(), 1280);
        let ip = ipv6::Packet::new_checked(&b[r.clone()]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr(), ip.next_header()), (GW6, HOST6, IpProtocol::ICMPV6));
        assert_eq!(ip.payload_len(), 1240);
        let icmp = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&GW6, &HOST6));
        assert_eq!(icmp.msg_type(), icmpv6::Message::PACKET_TOO_BIG);
        assert_eq!(icmp.mtu(), Some(1398));
        assert_eq!(icmp.data(), &original[..1232]);
        // Explicit checksum recomputation over the pseudo-header.
        let ph = checksum::pseudo_header_v6(&GW6, &HOST6, IpProtocol::ICMPV6, 1240);
        assert_eq!(checksum::combine(&[ph, checksum::data(ip.payload())]), 0xffff);
        assert!(!may_answer(&b[r]));
    }

    #[test]
    fn no_error_about_errors_fragments_or_odd_sources() {
        // ICMP echo request: answerable; destination unreachable: not.
        assert!(may_answer(&v4(IpProtocol::ICMP, &[8, 0, 0, 0, 0, 0, 0, 0], true, 0, false)[100..]));
        assert!(!may_answer(&v4(IpProtocol::ICMP, &[3, 4, 0, 0, 0, 0, 5, 0], true, 0, false)[100..]));
        assert!(!may_answer(&v4(IpProtocol::ICMP, &[11, 0, 0, 0, 0, 0, 0, 0], true, 0, false)[100..]));
        // First fragment yes, later ones no.
        assert!(may_answer(&v4(IpProtocol::UDP, &[0; 16], false, 0, true)[100..]));
        assert!(!may_answer(&v4(IpProtocol::UDP, &[0; 16], false, 1480, true)[100..]));
        assert!(!may_answer(&v4(IpProtocol::UDP, &[0; 16], false, 1480, false)[100..]));
        // ICMPv6 errors vs echo.
        assert!(!may_answer(&v6(IpProtocol::ICMPV6, &[2, 0, 0, 0, 0, 0, 5, 0])[100..]));
        assert!(may_answer(&v6(IpProtocol::ICMPV6, &[128, 0, 0, 0, 0, 0, 0, 0])[100..]));
        // Multicast destination (IPv4), unspecified source.
        let mut b = v4(IpProtocol::UDP, &[0; 8], true, 0, false);
        ipv4::Packet::new_unchecked(&mut b[100..]).set_dst_addr(Ipv4Addr::new(224, 0, 0, 5));
        assert!(!may_answer(&b[100..]));
        let mut b = v4(IpProtocol::UDP, &[0; 8], true, 0, false);
        ipv4::Packet::new_unchecked(&mut b[100..]).set_src_addr(Ipv4Addr::UNSPECIFIED);
        assert!(!may_answer(&b[100..]));
        let u = udp::HEADER_LEN;
        assert!(!may_answer(&[0u8; 3][..u.min(3)]));
    }

    #[test]
    fn refuses_short_headroom_and_mixed_families() {
        let mut b = v4(IpProtocol::UDP, &[0; 8], true, 0, false);
        assert_eq!(emit_in_place(&mut b, 100, 28, GW6.into(), ErrorKind::TimeExceeded, 64), Err(Error::Malformed));
        let mut short = b[80..].to_vec();
        assert_eq!(emit_in_place(&mut short, 20, 28, GW4.into(), ErrorKind::TimeExceeded, 64), Err(Error::Truncated));
        assert_eq!(emit_in_place(&mut short, 20, 999, GW4.into(), ErrorKind::TimeExceeded, 64), Err(Error::Truncated));
    }
}
