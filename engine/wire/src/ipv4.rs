//! IPv4 header (RFC 791).
//!
//! [`Packet::new_checked`] rejects: a buffer shorter than 20 bytes (`Truncated`), version ≠ 4
//! or IHL < 5 (`Malformed`), an IHL-given header longer than the buffer (`Truncated`), a total
//! length smaller than the header (`Malformed`) or larger than the buffer (`Truncated`).
//! Checksum, options and fragmentation fields are not checked.

use core::net::Ipv4Addr;

use crate::bytes::{read_u16, write_u16};
use crate::checksum;
use crate::{Error, IpProtocol};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Largest header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

mod field {
    use crate::field::Field;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
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

    /// Validate version, header length and total length against the buffer.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 || self.ihl() < 5 {
            return Err(Error::Malformed);
        }
        let header_len = self.header_len();
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Return the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version (4 for a checked packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Raw IHL nibble (header length in 32-bit words).
    #[inline]
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] & 0x0f
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// Differentiated Services Code Point (6 bits).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit Congestion Notification (2 bits).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length field (header + payload).
    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::IDENT])
    }

    /// Don't Fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & FLAG_DF != 0
    }

    /// More Fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & FLAG_MF != 0
    }

    /// Fragment offset in **bytes** (the 13-bit field times 8).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & OFFSET_MASK) << 3
    }

    /// True if MF is set or the offset is non-zero.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF]) & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// True if the header checksum (over `header_len` bytes) is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let data = self.buffer.as_ref();
        let end = self.header_len().min(data.len());
        checksum::data(&data[..end]) == 0xffff
    }

    /// `(start, end)` of the payload, clamped to the buffer so it can never panic.
    #[inline]
    fn payload_range(&self) -> (usize, usize) {
        let len = self.buffer.as_ref().len();
        let end = usize::from(self.total_len()).min(len);
        let start = self.header_len().min(end);
        (start, end)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Options (bytes 20..header_len), borrowing the buffer.
    #[inline]
    pub fn options(&self) -> &'a [u8] {
        let data = self.buffer.as_ref();
        let end = self.header_len().min(data.len());
        &data[HEADER_LEN.min(end)..end]
    }

    /// Payload, from `header_len` to `total_len` (link-layer padding excluded).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let (start, end) = self.payload_range();
        &self.buffer.as_ref()[start..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the version nibble.
    #[inline]
    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (value << 4);
    }

    /// Set the header length in bytes (rounded down to a multiple of 4; at most 60).
    #[inline]
    pub fn set_header_len(&mut self, value: usize) {
        let ihl = ((value / 4) as u8) & 0x0f;
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ihl;
    }

    /// Set the DSCP (6 bits; extra bits are dropped). Does not update the checksum.
    #[inline]
    pub fn set_dscp(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (value << 2);
    }

    /// Set the ECN (2 bits). Does not update the checksum.
    #[inline]
    pub fn set_ecn(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (value & 0x03);
    }

    /// Set the total length.
    #[inline]
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], value);
    }

    /// Set the identification.
    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::IDENT], value);
    }

    /// Clear the flags and fragment offset.
    #[inline]
    pub fn clear_flags(&mut self) {
        write_u16(&mut self.buffer.as_mut()[field::FLG_OFF], 0);
    }

    #[inline]
    fn set_flg_off_bits(&mut self, mask: u16, bits: u16) {
        let f = &mut self.buffer.as_mut()[field::FLG_OFF];
        let v = (read_u16(f) & !mask) | (bits & mask);
        write_u16(f, v);
    }

    /// Set the Don't Fragment flag.
    #[inline]
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flg_off_bits(FLAG_DF, if value { FLAG_DF } else { 0 });
    }

    /// Set the More Fragments flag.
    #[inline]
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flg_off_bits(FLAG_MF, if value { FLAG_MF } else { 0 });
    }

    /// Set the fragment offset in bytes (must be a multiple of 8; the low 3 bits are dropped).
    #[inline]
    pub fn set_frag_offset(&mut self, value: u16) {
        self.set_flg_off_bits(OFFSET_MASK, value >> 3);
    }

    /// Set the TTL. Does not update the checksum.
    #[inline]
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    /// Set the protocol.
    #[inline]
    pub fn set_next_header(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.0;
    }

    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Set the source address.
    #[inline]
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    /// Set the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Compute and store the header checksum over `header_len` bytes.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = {
            let data = self.buffer.as_ref();
            let end = self.header_len().min(data.len());
            checksum::data(&data[..end])
        };
        self.set_checksum(!sum);
    }

    /// Forwarding TTL decrement with an RFC 1624 incremental checksum update.
    ///
    /// Returns the new TTL, or `None` (leaving the header untouched) if the TTL is already 0.
    /// A returned 0 means the packet must not be forwarded (send ICMP time exceeded).
    #[inline]
    pub fn decrement_ttl(&mut self) -> Option<u8> {
        let data = self.buffer.as_ref();
        let ttl = data[field::TTL];
        if ttl == 0 {
            return None;
        }
        // TTL shares a 16-bit word with the protocol.
        let proto = data[field::PROTOCOL];
        let old = u16::from_be_bytes([ttl, proto]);
        let new = u16::from_be_bytes([ttl - 1, proto]);
        let c = checksum::update_u16(self.checksum(), old, new);
        self.set_ttl(ttl - 1);
        self.set_checksum(c);
        Some(ttl - 1)
    }

    /// Rewrite DSCP and ECN (e.g. copying them between inner and outer headers) with an RFC
    /// 1624 incremental checksum update.
    #[inline]
    pub fn rewrite_dscp_ecn(&mut self, dscp: u8, ecn: u8) {
        let data = self.buffer.as_ref();
        let ver_ihl = data[field::VER_IHL];
        let old = u16::from_be_bytes([ver_ihl, data[field::DSCP_ECN]]);
        let tos = (dscp << 2) | (ecn & 0x03);
        let new = u16::from_be_bytes([ver_ihl, tos]);
        let c = checksum::update_u16(self.checksum(), old, new);
        self.buffer.as_mut()[field::DSCP_ECN] = tos;
        self.set_checksum(c);
    }

    /// Mutable options (bytes 20..header_len).
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len().min(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[HEADER_LEN.min(end)..end]
    }

    /// Mutable payload, from `header_len` to `total_len`.
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
fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// High-level representation of an option-less IPv4 header, for emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub next_header: IpProtocol,
    /// Payload length (total length minus header length).
    pub payload_len: u16,
    /// Time to live.
    pub ttl: u8,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// More Fragments.
    pub more_frags: bool,
    /// Fragment offset in bytes.
    pub frag_offset: u16,
}

impl Repr {
    /// Read a checked packet. Options are skipped (`payload_len` excludes them).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Repr {
        Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.total_len().saturating_sub(packet.header_len() as u16),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        }
    }

    /// Header length emitted (20).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write all 20 header bytes, checksum included. `payload_len` must be ≤ 65515.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.buffer.as_mut()[field::DSCP_ECN] = (self.dscp << 2) | (self.ecn & 0x03);
        packet.set_total_len(self.payload_len + HEADER_LEN as u16);
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_dont_frag(self.dont_frag);
        packet.set_more_frags(self.more_frags);
        packet.set_frag_offset(self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;

    fn ping() -> &'static [u8] {
        &PING_FRAME[14..]
    }

    #[test]
    fn parse_ping_capture() {
        let p = Packet::new_checked(ping()).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.ihl(), 5);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 84);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.next_header(), IpProtocol::ICMP);
        assert_eq!(p.checksum(), 0x4c47);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 1, 100));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(8, 8, 8, 8));
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[] as &[u8]);
        assert_eq!(p.payload().len(), 64);
        assert_eq!(p.payload()[0], 8); // ICMP echo request
    }

    #[test]
    fn parse_options_capture() {
        let p = Packet::new_checked(&IGMP_WITH_OPTIONS[..]).unwrap();
        assert_eq!(p.ihl(), 6);
        assert_eq!(p.header_len(), 24);
        assert_eq!((p.dscp(), p.ecn()), (48, 0)); // CS6
        assert_eq!(p.ttl(), 1);
        assert_eq!(p.next_header(), IpProtocol::IGMP);
        assert_eq!(p.options(), &[0x94, 0x04, 0x00, 0x00]); // Router Alert
        assert_eq!(p.payload(), &IGMP_WITH_OPTIONS[24..]);
        assert_eq!(p.dst_addr(), Ipv4Addr::new(239, 255, 255, 250));
        assert!(p.verify_checksum());
    }

    #[test]
    fn payload_excludes_ethernet_padding() {
        let ip = &KEEPALIVE_FRAME[14..];
        assert_eq!(ip.len(), 46);
        let p = Packet::new_checked(ip).unwrap();
        assert_eq!(p.total_len(), 29);
        assert_eq!(p.payload().len(), 9);
        assert_eq!(p.payload()[8], 0xff);
        assert!(p.verify_checksum());
    }

    #[test]
    fn flags_and_fragments() {
        let p = Packet::new_checked(&FRAG_NEEDED[..]).unwrap();
        assert!(!p.dont_frag() && !p.more_frags() && !p.is_fragment());
        let mut b = DNS_QUERY;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        p.set_dont_frag(false);
        assert!(p.more_frags() && !p.dont_frag() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!(&b[6..8], &[0x20, 0xb9]);
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_more_frags(false);
        assert!(p.is_fragment());
        p.set_frag_offset(0xfff8);
        assert_eq!(p.frag_offset(), 0xfff8);
        p.clear_flags();
        assert!(!p.is_fragment() && !p.dont_frag());
    }

    #[test]
    fn every_truncation_rejected() {
        for buf in [ping(), &IGMP_WITH_OPTIONS[..], &DNS_QUERY[..], &ESP_IN_UDP[..]] {
            for len in 0..buf.len() {
                assert_eq!(Packet::new_checked(&buf[..len]).err(), Some(Error::Truncated), "len {len}");
            }
            assert!(Packet::new_checked(buf).is_ok());
        }
    }

    #[test]
    fn malformed_rejected() {
        let mut b = DNS_QUERY;
        b[0] = 0x65; // version 6
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
        for ihl in 0..5 {
            b[0] = 0x40 | ihl;
            assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
        }
        let mut b = DNS_QUERY;
        b[0] = 0x4f; // 60-byte header in a 56-byte packet
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Truncated));
        let mut b = IGMP_WITH_OPTIONS;
        b[2..4].copy_from_slice(&23u16.to_be_bytes()); // total < header
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
        b[2..4].copy_from_slice(&24u16.to_be_bytes()); // empty payload is fine
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.payload().is_empty());
        b[2..4].copy_from_slice(&33u16.to_be_bytes()); // total > buffer
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Truncated));
    }

    #[test]
    fn accessors_clamp_after_bad_setters() {
        let mut b = DNS_QUERY;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_total_len(0xffff);
        p.set_header_len(60);
        assert!(p.payload_mut().is_empty());
        assert_eq!(p.options_mut().len(), 36);
        let p = Packet::new_unchecked(&b[..]);
        assert_eq!(p.options().len(), 36);
        assert!(p.payload().is_empty());
        let _ = p.verify_checksum();
    }

    #[test]
    fn setters_and_fill_checksum() {
        let mut b = IGMP_WITH_OPTIONS;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_dscp(46);
        p.set_ecn(3);
        p.set_ident(0xbeef);
        p.set_ttl(17);
        p.set_next_header(IpProtocol::UDP);
        p.set_src_addr(Ipv4Addr::new(10, 1, 2, 3));
        p.set_dst_addr(Ipv4Addr::new(10, 4, 5, 6));
        p.options_mut()[0] = 0x01;
        p.payload_mut()[0] = 0x11;
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.dscp(), p.ecn(), p.ident(), p.ttl()), (46, 3, 0xbeef, 17));
        assert_eq!(p.next_header(), IpProtocol::UDP);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 4, 5, 6));
        assert_eq!(p.options()[0], 0x01);
        assert_eq!(p.payload()[0], 0x11);
        assert_eq!(p.header_len(), 24);
        assert_eq!(b[0], 0x46);
    }

    #[test]
    fn fill_checksum_reproduces_capture() {
        for cap in [ping(), &IGMP_WITH_OPTIONS[..], &FRAG_NEEDED[..]] {
            let mut b = [0u8; 128];
            let b = &mut b[..cap.len()];
            b.copy_from_slice(cap);
            b[10] = 0x12;
            b[11] = 0x34;
            let mut p = Packet::new_unchecked(&mut *b);
            assert!(!p.verify_checksum());
            p.fill_checksum();
            assert_eq!(&*b, cap);
        }
    }

    #[test]
    fn emit_round_trip_writes_every_byte() {
        let parsed = Repr::parse(&Packet::new_checked(ping()).unwrap());
        assert_eq!(parsed.payload_len, 64);
        assert_eq!(parsed.buffer_len(), 20);
        let mut buf = [0xa5u8; 84];
        buf[20..].copy_from_slice(&ping()[20..]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        parsed.emit(&mut p);
        assert_eq!(&buf[..], ping());

        let repr = Repr {
            src_addr: Ipv4Addr::new(198, 51, 100, 7),
            dst_addr: Ipv4Addr::new(203, 0, 113, 20),
            next_header: IpProtocol::UDP,
            payload_len: 8,
            ttl: 63,
            dscp: 10,
            ecn: 2,
            ident: 7,
            dont_frag: false,
            more_frags: true,
            frag_offset: 64,
        };
        let mut buf = [0xa5u8; 28];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p), repr);
        assert_eq!(p.payload(), &[0xa5; 8]);
    }
}
