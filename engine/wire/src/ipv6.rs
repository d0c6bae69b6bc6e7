//! IPv6 fixed header (RFC 8200) and extension-header walking.
//!
//! [`Packet::new_checked`] rejects a buffer shorter than 40 bytes (`Truncated`), version ≠ 6
//! (`Malformed`) and a payload length reaching past the buffer (`Truncated`). Extension
//! headers are not examined; [`skip_extension_headers`] walks them with its own bounds checks.
//! Jumbograms (payload length 0 with a Jumbo Payload option) are not supported: their payload
//! is seen as empty.

use core::net::Ipv6Addr;

use crate::bytes::{read_u16, read_u32, write_u16, write_u32};
use crate::{Error, FragmentInfo, IpProtocol};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Maximum number of extension headers [`skip_extension_headers`] walks.
pub const MAX_EXTENSION_HEADERS: usize = 8;
/// Length of the Fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = 8;

mod field {
    use crate::field::Field;

    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without any check.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap an untrusted buffer; see the module documentation for what is checked.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validate version and payload length against the buffer.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Return the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn ver_tc_flow(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::VER_TC_FLOW])
    }

    /// Version (6 for a checked packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Traffic class (DSCP << 2 | ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// DSCP (6 bits).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    /// ECN (2 bits).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.traffic_class() & 0x03
    }

    /// Flow label (20 bits).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Payload length (everything after the fixed header, extension headers included).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Next Header of the fixed header.
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NXT_HDR])
    }

    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// Walk the extension headers of this packet. Like [`skip_extension_headers`], but the
    /// returned offset is from the start of the IPv6 header.
    #[inline]
    pub fn upper_layer(&self) -> Result<(IpProtocol, usize, Option<FragmentInfo>), Error> {
        let (start, end) = self.payload_range();
        let (proto, off, frag) = skip_extension_headers(self.next_header(), &self.buffer.as_ref()[start..end])?;
        Ok((proto, HEADER_LEN + off, frag))
    }

    #[inline]
    fn payload_range(&self) -> (usize, usize) {
        let len = self.buffer.as_ref().len();
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(len);
        (HEADER_LEN.min(end), end)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Payload (40 .. 40 + payload_len), extension headers included, padding excluded.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let (start, end) = self.payload_range();
        &self.buffer.as_ref()[start..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn set_ver_tc_flow(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::VER_TC_FLOW], value);
    }

    /// Set the version nibble.
    #[inline]
    pub fn set_version(&mut self, value: u8) {
        let v = (self.ver_tc_flow() & 0x0fff_ffff) | (u32::from(value & 0x0f) << 28);
        self.set_ver_tc_flow(v);
    }

    /// Set the traffic class.
    #[inline]
    pub fn set_traffic_class(&mut self, value: u8) {
        let v = (self.ver_tc_flow() & 0xf00f_ffff) | (u32::from(value) << 20);
        self.set_ver_tc_flow(v);
    }

    /// Set the DSCP (6 bits).
    #[inline]
    pub fn set_dscp(&mut self, value: u8) {
        self.set_traffic_class((value << 2) | self.ecn());
    }

    /// Set the ECN (2 bits).
    #[inline]
    pub fn set_ecn(&mut self, value: u8) {
        self.set_traffic_class((self.traffic_class() & 0xfc) | (value & 0x03));
    }

    /// Set the flow label (20 bits; higher bits are dropped).
    #[inline]
    pub fn set_flow_label(&mut self, value: u32) {
        let v = (self.ver_tc_flow() & 0xfff0_0000) | (value & 0x000f_ffff);
        self.set_ver_tc_flow(v);
    }

    /// Set the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], value);
    }

    /// Set the Next Header.
    #[inline]
    pub fn set_next_header(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = value.0;
    }

    /// Set the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    /// Set the source address.
    #[inline]
    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    /// Set the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Mutable payload (40 .. 40 + payload_len).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = self.payload_range();
        &mut self.buffer.as_mut()[start..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[inline(always)]
fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Walk IPv6 extension headers starting with `first_next_header` (the fixed header's Next
/// Header) over `bytes` (the IPv6 payload, i.e. starting right after the fixed header).
///
/// Skips Hop-by-Hop Options (0, only allowed first), Routing (43), Fragment (44, at most one)
/// and Destination Options (60), at most [`MAX_EXTENSION_HEADERS`] of them. Stops at anything
/// else: ESP, AH, UDP, TCP, ICMPv6, No Next Header (59) or an unknown value.
///
/// Returns `(upper_protocol, offset, fragment)`: the protocol it stopped at, the offset of that
/// protocol's header within `bytes` (may equal `bytes.len()`), and the Fragment header's
/// contents if one was seen. For a **non-first fragment** (offset ≠ 0) the walk stops right
/// after the Fragment header: the returned protocol is that header's Next Header, but the
/// bytes at `offset` are fragment data, not a header.
///
/// Errors: `Truncated` if a header does not fit in `bytes`, `Malformed` for a Hop-by-Hop
/// header that is not first or a second Fragment header, `TooManyHeaders` past the limit.
pub fn skip_extension_headers(
    first_next_header: IpProtocol,
    bytes: &[u8],
) -> Result<(IpProtocol, usize, Option<FragmentInfo>), Error> {
    let mut next = first_next_header;
    let mut offset = 0usize;
    let mut fragment: Option<FragmentInfo> = None;
    let mut count = 0usize;
    loop {
        let len = match next {
            IpProtocol::HOP_BY_HOP | IpProtocol::IPV6_ROUTE | IpProtocol::IPV6_OPTS => {
                if next == IpProtocol::HOP_BY_HOP && count != 0 {
                    return Err(Error::Malformed);
                }
                let hdr = bytes.get(offset..offset + 2).ok_or(Error::Truncated)?;
                (usize::from(hdr[1]) + 1) * 8
            }
            IpProtocol::IPV6_FRAG => {
                if fragment.is_some() {
                    return Err(Error::Malformed);
                }
                FRAGMENT_HEADER_LEN
            }
            _ => return Ok((next, offset, fragment)),
        };
        if count == MAX_EXTENSION_HEADERS {
            return Err(Error::TooManyHeaders);
        }
        let hdr = bytes.get(offset..offset + len).ok_or(Error::Truncated)?;
        let following = IpProtocol(hdr[0]);
        count += 1;
        offset += len;
        if next == IpProtocol::IPV6_FRAG {
            let off_flags = read_u16(&hdr[2..4]);
            let info = FragmentInfo {
                offset: off_flags & 0xfff8,
                more_fragments: off_flags & 1 != 0,
                ident: read_u32(&hdr[4..8]),
            };
            fragment = Some(info);
            if !info.is_first() {
                return Ok((following, offset, fragment));
            }
        }
        next = following;
    }
}

/// Write a Fragment extension header into the first 8 bytes of `buf`.
///
/// `offset` is in bytes (multiple of 8; low bits dropped). Panics if `buf` is shorter than 8.
pub fn emit_fragment_header(buf: &mut [u8], next_header: IpProtocol, info: FragmentInfo) {
    buf[0] = next_header.0;
    buf[1] = 0;
    write_u16(&mut buf[2..4], (info.offset & 0xfff8) | u16::from(info.more_fragments));
    write_u32(&mut buf[4..8], info.ident);
}

/// High-level representation of an IPv6 fixed header, for emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next Header.
    pub next_header: IpProtocol,
    /// Payload length.
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class (DSCP << 2 | ECN).
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Read the fixed header of a packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Repr {
        Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.payload_len(),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        }
    }

    /// Header length emitted (40).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write all 40 header bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_ver_tc_flow((6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff));
        packet.set_payload_len(self.payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;

    const FRAG_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    const FRAG_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x20);

    #[test]
    fn parse_mld_with_hop_by_hop() {
        let p = Packet::new_checked(&MLD_HBH[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!((p.traffic_class(), p.flow_label()), (0, 0));
        assert_eq!(p.payload_len(), 36);
        assert_eq!(p.next_header(), IpProtocol::HOP_BY_HOP);
        assert_eq!(p.hop_limit(), 1);
        assert_eq!(p.src_addr(), Ipv6Addr::new(0xfe80, 0, 0, 0, 0x021a, 0x2bff, 0xfe3c, 0x4d5e));
        assert_eq!(p.dst_addr(), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16));
        assert_eq!(p.payload().len(), 36);
        let (proto, off, frag) = skip_extension_headers(p.next_header(), p.payload()).unwrap();
        assert_eq!((proto, off, frag), (IpProtocol::ICMPV6, 8, None));
        assert_eq!(p.payload()[off], 143); // MLDv2 report
        assert_eq!(p.upper_layer().unwrap(), (IpProtocol::ICMPV6, 48, None));
    }

    #[test]
    fn parse_fragments() {
        let p = Packet::new_checked(&V6_FRAG_FIRST[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!((p.dscp(), p.ecn()), (46, 0)); // EF
        assert_eq!(p.flow_label(), 0x5f0a3);
        assert_eq!(p.next_header(), IpProtocol::IPV6_FRAG);
        assert_eq!(p.src_addr(), FRAG_SRC);
        assert_eq!(p.dst_addr(), FRAG_DST);
        let first = FragmentInfo { offset: 0, more_fragments: true, ident: 0x8a61_c0de };
        assert_eq!(p.upper_layer().unwrap(), (IpProtocol::UDP, 48, Some(first)));

        let p = Packet::new_checked(&V6_FRAG_SECOND[..]).unwrap();
        let second = FragmentInfo { offset: 24, more_fragments: false, ident: 0x8a61_c0de };
        assert_eq!(skip_extension_headers(p.next_header(), p.payload()).unwrap(), (IpProtocol::UDP, 8, Some(second)));

        // Reassembling the two fragment payloads gives the original UDP datagram.
        let mut whole = [0u8; 48];
        whole[..24].copy_from_slice(&V6_FRAG_FIRST[48..]);
        whole[24..].copy_from_slice(&V6_FRAG_SECOND[48..]);
        assert_eq!(whole, V6_UDP_WHOLE);
    }

    #[test]
    fn stops_at_esp_ah_and_unknown() {
        let p = Packet::new_checked(&V6_ESP[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap(), (IpProtocol::ESP, 40, None));
        for proto in [51u8, 6, 17, 58, 59, 135, 253] {
            assert_eq!(skip_extension_headers(IpProtocol(proto), &[]).unwrap(), (IpProtocol(proto), 0, None));
        }
    }

    #[test]
    fn walks_a_chain() {
        // Hop-by-Hop (8) -> Destination Options (16) -> Routing (24) -> Fragment (8) -> AH.
        let mut b = [0u8; 56];
        b[0] = 60;
        b[1] = 0;
        b[8] = 43;
        b[9] = 1;
        b[24] = 44;
        b[25] = 2;
        emit_fragment_header(&mut b[48..], IpProtocol::AH, FragmentInfo { offset: 0, more_fragments: false, ident: 9 });
        let (proto, off, frag) = skip_extension_headers(IpProtocol::HOP_BY_HOP, &b).unwrap();
        assert_eq!((proto, off), (IpProtocol::AH, 56));
        assert_eq!(frag.unwrap().ident, 9);
        for len in 0..b.len() {
            assert_eq!(skip_extension_headers(IpProtocol::HOP_BY_HOP, &b[..len]), Err(Error::Truncated), "len {len}");
        }
    }

    #[test]
    fn header_limit_and_misplaced_headers() {
        // Eight Destination Options headers are walked, a ninth is one too many.
        let mut b = [60u8; 80];
        for i in 0..10 {
            b[i * 8 + 1] = 0;
        }
        b[7 * 8] = 17;
        assert_eq!(skip_extension_headers(IpProtocol::IPV6_OPTS, &b[..64]).unwrap(), (IpProtocol::UDP, 64, None));
        b[7 * 8] = 60;
        b[8 * 8] = 17;
        assert_eq!(skip_extension_headers(IpProtocol::IPV6_OPTS, &b), Err(Error::TooManyHeaders));
        // Hop-by-Hop after another header.
        let c = [0u8; 16];
        assert_eq!(skip_extension_headers(IpProtocol::IPV6_OPTS, &c), Err(Error::Malformed));
        // Two Fragment headers.
        let mut d = [0u8; 16];
        d[0] = 44;
        assert_eq!(skip_extension_headers(IpProtocol::IPV6_FRAG, &d), Err(Error::Malformed));
        // A large header length on a short buffer.
        assert_eq!(skip_extension_headers(IpProtocol::IPV6_ROUTE, &[17, 255, 0, 0]), Err(Error::Truncated));
    }

    #[test]
    fn every_truncation_rejected() {
        for cap in [&MLD_HBH[..], &V6_FRAG_FIRST[..], &V6_PTB[..], &V6_ESP[..]] {
            for len in 0..cap.len() {
                assert_eq!(Packet::new_checked(&cap[..len]).err(), Some(Error::Truncated), "len {len}");
            }
            assert!(Packet::new_checked(cap).is_ok());
        }
        let mut b = MLD_HBH;
        b[0] = 0x45;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn payload_bounded_by_length_field() {
        let mut b = [0u8; 128];
        b[..V6_ESP.len()].copy_from_slice(&V6_ESP);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), &V6_ESP[40..]);
    }

    #[test]
    fn setters() {
        let mut b = V6_FRAG_FIRST;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_dscp(10);
        p.set_ecn(1);
        assert_eq!(p.flow_label(), 0x5f0a3);
        p.set_flow_label(0xfffff_u32 | 0xfff0_0000);
        p.set_traffic_class(0x29);
        p.set_hop_limit(3);
        p.set_next_header(IpProtocol::ESP);
        p.set_src_addr(FRAG_DST);
        p.set_dst_addr(FRAG_SRC);
        p.payload_mut()[0] = 0xee;
        p.set_payload_len(1);
        p.set_version(6);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.dscp(), p.ecn(), p.traffic_class()), (10, 1, 0x29));
        assert_eq!(p.flow_label(), 0xfffff);
        assert_eq!(p.hop_limit(), 3);
        assert_eq!(p.next_header(), IpProtocol::ESP);
        assert_eq!((p.src_addr(), p.dst_addr()), (FRAG_DST, FRAG_SRC));
        assert_eq!(p.payload(), &[0xee]);
        assert_eq!(p.version(), 6);
    }

    #[test]
    fn emit_round_trip_writes_every_byte() {
        for cap in [&MLD_HBH[..], &V6_FRAG_SECOND[..], &V6_PTB[..]] {
            let repr = Repr::parse(&Packet::new_checked(cap).unwrap());
            let mut buf = [0xa5u8; 40];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(&buf[..], &cap[..40]);
            assert_eq!(repr.buffer_len(), 40);
        }
        let mut fh = [0xa5u8; 8];
        emit_fragment_header(
            &mut fh,
            IpProtocol::UDP,
            FragmentInfo { offset: 24, more_fragments: false, ident: 0x8a61_c0de },
        );
        assert_eq!(&fh, &V6_FRAG_SECOND[40..48]);
    }
}
