//! Ethernet II frames and IEEE 802.1Q / 802.1ad VLAN tags.
//!
//! [`Frame::new_checked`] only guarantees the 14-byte Ethernet header. VLAN tags are walked
//! by [`Frame::l3_info`] (or [`l3_info`] on raw bytes), which checks each tag's bounds itself.

use core::fmt;

use crate::bytes::{read_u16, write_u16};
use crate::Error;

/// An EtherType value. A transparent newtype; the constants name the values the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtherType(pub u16);

impl EtherType {
    /// IPv4 (0x0800).
    pub const IPV4: EtherType = EtherType(0x0800);
    /// ARP (0x0806).
    pub const ARP: EtherType = EtherType(0x0806);
    /// IEEE 802.1Q VLAN tag, C-tag (0x8100).
    pub const VLAN: EtherType = EtherType(0x8100);
    /// IEEE 802.1ad service VLAN tag, S-tag / QinQ outer tag (0x88a8).
    pub const QINQ: EtherType = EtherType(0x88a8);
    /// IPv6 (0x86dd).
    pub const IPV6: EtherType = EtherType(0x86dd);

    /// True for the two VLAN tag protocol identifiers (0x8100, 0x88a8).
    #[inline]
    pub const fn is_vlan(self) -> bool {
        matches!(self, EtherType::VLAN | EtherType::QINQ)
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EtherType::IPV4 => f.write_str("IPv4"),
            EtherType::ARP => f.write_str("ARP"),
            EtherType::VLAN => f.write_str("802.1Q"),
            EtherType::QINQ => f.write_str("802.1ad"),
            EtherType::IPV6 => f.write_str("IPv6"),
            EtherType(other) => write!(f, "0x{other:04x}"),
        }
    }
}

/// Length of the Ethernet II header (no tags, no FCS).
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag (TPID is counted in the header before it: TCI + EtherType).
pub const VLAN_TAG_LEN: usize = 4;

mod field {
    use crate::field::{Field, Rest};

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;

    /// Fields of a VLAN tag, relative to the tag (i.e. just after the TPID).
    pub const TCI: Field = 0..2;
    pub const INNER_ETHERTYPE: Field = 2..4;
}

/// A view of an Ethernet II frame (without FCS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wrap a buffer without any check.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wrap an untrusted buffer, checking that the 14-byte header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Frame<T>, Error> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Check that the header fits; after this no getter panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Return the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Header length (always 14; VLAN tags count as payload here).
    #[inline]
    pub const fn header_len() -> usize {
        HEADER_LEN
    }

    /// Frame length for a given payload length.
    #[inline]
    pub const fn buffer_len(payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Destination MAC address.
    #[inline]
    pub fn dst_addr(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// Source MAC address.
    #[inline]
    pub fn src_addr(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The outer EtherType (0x8100 / 0x88a8 for a tagged frame).
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType(read_u16(&self.buffer.as_ref()[field::ETHERTYPE]))
    }

    /// Skip up to two VLAN tags and locate the L3 header. See [`l3_info`].
    #[inline]
    pub fn l3_info(&self) -> Result<L3Info, Error> {
        l3_info(self.buffer.as_ref())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// Everything after the 14-byte header (tags included), borrowing the buffer.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Set the destination MAC address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: [u8; 6]) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr);
    }

    /// Set the source MAC address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: [u8; 6]) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr);
    }

    /// Set the outer EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, value: EtherType) {
        write_u16(&mut self.buffer.as_mut()[field::ETHERTYPE], value.0);
    }

    /// Mutable payload (after the 14-byte header).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Frame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[inline(always)]
fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// A view of one 802.1Q tag: the 4 bytes after a 0x8100/0x88a8 TPID (TCI + EtherType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wrap a buffer without any check.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> VlanTag<T> {
        VlanTag { buffer }
    }

    /// Wrap an untrusted buffer, checking that the 4-byte tag fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<VlanTag<T>, Error> {
        if buffer.as_ref().len() < VLAN_TAG_LEN {
            return Err(Error::Truncated);
        }
        Ok(VlanTag { buffer })
    }

    /// Return the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Priority code point (3 bits).
    #[inline]
    pub fn pcp(&self) -> u8 {
        (read_u16(&self.buffer.as_ref()[field::TCI]) >> 13) as u8
    }

    /// Drop eligible indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        read_u16(&self.buffer.as_ref()[field::TCI]) & 0x1000 != 0
    }

    /// VLAN identifier (12 bits).
    #[inline]
    pub fn vlan_id(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::TCI]) & 0x0fff
    }

    /// EtherType of what follows the tag.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType(read_u16(&self.buffer.as_ref()[field::INNER_ETHERTYPE]))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> VlanTag<&'a T> {
    /// Everything after the tag.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[VLAN_TAG_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Set PCP, DEI and VLAN id at once (pcp is masked to 3 bits, vid to 12).
    #[inline]
    pub fn set_tci(&mut self, pcp: u8, dei: bool, vlan_id: u16) {
        let tci = (u16::from(pcp & 7) << 13) | (u16::from(dei) << 12) | (vlan_id & 0x0fff);
        write_u16(&mut self.buffer.as_mut()[field::TCI], tci);
    }

    /// Set the EtherType of what follows the tag.
    #[inline]
    pub fn set_ethertype(&mut self, value: EtherType) {
        write_u16(&mut self.buffer.as_mut()[field::INNER_ETHERTYPE], value.0);
    }
}

/// Where the L3 header of a frame is, after skipping VLAN tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct L3Info {
    /// EtherType of the L3 payload (after all tags).
    pub ethertype: EtherType,
    /// Offset of the L3 header from the start of the frame: 14, 18 or 22.
    pub offset: usize,
    /// VLAN id of the innermost tag (the C-tag of a QinQ frame), if tagged.
    pub vlan_id: Option<u16>,
    /// VLAN id of the outer tag (the S-tag) of a double-tagged frame.
    pub outer_vlan_id: Option<u16>,
}

/// Maximum number of VLAN tags [`l3_info`] skips.
pub const MAX_VLAN_TAGS: usize = 2;

/// Find the effective EtherType and L3 offset of an untrusted frame, skipping one 802.1Q tag
/// or two stacked tags (QinQ: TPID 0x88a8 or 0x8100 outside, 0x8100 or 0x88a8 inside).
///
/// Errors: `Truncated` if the header or a tag does not fit, `TooManyHeaders` for a third tag.
/// The L3 header itself is not checked (the offset may equal the frame length).
pub fn l3_info(frame: &[u8]) -> Result<L3Info, Error> {
    if frame.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    let mut ethertype = EtherType(read_u16(&frame[field::ETHERTYPE]));
    let mut offset = HEADER_LEN;
    let mut vlan_id = None;
    let mut outer_vlan_id = None;
    let mut tags = 0;
    while ethertype.is_vlan() {
        if tags == MAX_VLAN_TAGS {
            return Err(Error::TooManyHeaders);
        }
        let tag = frame.get(offset..offset + VLAN_TAG_LEN).ok_or(Error::Truncated)?;
        let tag = VlanTag::new_unchecked(tag);
        outer_vlan_id = vlan_id;
        vlan_id = Some(tag.vlan_id());
        ethertype = tag.ethertype();
        offset += VLAN_TAG_LEN;
        tags += 1;
    }
    Ok(L3Info { ethertype, offset, vlan_id, outer_vlan_id })
}

/// High-level representation of an (untagged) Ethernet II header, for emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source MAC.
    pub src_addr: [u8; 6],
    /// Destination MAC.
    pub dst_addr: [u8; 6],
    /// EtherType.
    pub ethertype: EtherType,
}

impl Repr {
    /// Read the header of a frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Repr {
        Repr { src_addr: frame.src_addr(), dst_addr: frame.dst_addr(), ethertype: frame.ethertype() }
    }

    /// Header length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write all 14 header bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;
    use std::string::ToString;

    const DST: [u8; 6] = [0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e];
    const SRC: [u8; 6] = [0xf0, 0xde, 0xf1, 0x2a, 0x93, 0x4b];

    #[test]
    fn parse_ping_frame() {
        let f = Frame::new_checked(&PING_FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), DST);
        assert_eq!(f.src_addr(), SRC);
        assert_eq!(f.ethertype(), EtherType::IPV4);
        assert_eq!(f.payload(), &PING_FRAME[14..]);
        assert_eq!(f.payload()[0], 0x45);
        let l3 = f.l3_info().unwrap();
        assert_eq!(l3, L3Info { ethertype: EtherType::IPV4, offset: 14, vlan_id: None, outer_vlan_id: None });
    }

    #[test]
    fn single_tag() {
        let f = Frame::new_checked(&VLAN_FRAME[..]).unwrap();
        assert_eq!(f.ethertype(), EtherType::VLAN);
        let tag = VlanTag::new_checked(f.payload()).unwrap();
        assert_eq!((tag.pcp(), tag.dei(), tag.vlan_id()), (5, false, 100));
        assert_eq!(tag.ethertype(), EtherType::IPV6);
        assert_eq!(tag.payload()[0] >> 4, 6);
        let l3 = f.l3_info().unwrap();
        assert_eq!(l3.ethertype, EtherType::IPV6);
        assert_eq!(l3.offset, 18);
        assert_eq!(l3.vlan_id, Some(100));
        assert_eq!(l3.outer_vlan_id, None);
    }

    #[test]
    fn qinq_tags() {
        let l3 = l3_info(&QINQ_FRAME).unwrap();
        assert_eq!(l3.ethertype, EtherType::IPV4);
        assert_eq!(l3.offset, 22);
        assert_eq!(l3.vlan_id, Some(100));
        assert_eq!(l3.outer_vlan_id, Some(200));
        assert_eq!(&QINQ_FRAME[22..], &PING_FRAME[14..]);
        let tag = VlanTag::new_checked(&QINQ_FRAME[18..]).unwrap();
        assert_eq!((tag.pcp(), tag.dei(), tag.vlan_id()), (3, true, 100));

        // Old-style double 0x8100 tagging is accepted too.
        let mut b = QINQ_FRAME;
        b[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(l3_info(&b).unwrap().offset, 22);
    }

    #[test]
    fn third_tag_rejected() {
        let mut b = QINQ_FRAME;
        b[20..22].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(l3_info(&b), Err(Error::TooManyHeaders));
    }

    #[test]
    fn truncations() {
        for len in 0..HEADER_LEN {
            assert_eq!(Frame::new_checked(&PING_FRAME[..len]).err(), Some(Error::Truncated));
            assert_eq!(l3_info(&PING_FRAME[..len]), Err(Error::Truncated));
        }
        assert!(Frame::new_checked(&PING_FRAME[..HEADER_LEN]).is_ok());
        for len in 0..22 {
            assert_eq!(l3_info(&QINQ_FRAME[..len]), Err(Error::Truncated), "{len}");
        }
        assert_eq!(l3_info(&QINQ_FRAME[..22]).unwrap().offset, 22);
        for len in 0..18 {
            assert_eq!(l3_info(&VLAN_FRAME[..len]), Err(Error::Truncated));
        }
        for len in 0..VLAN_TAG_LEN {
            assert!(VlanTag::new_checked(&VLAN_FRAME[14..14 + len]).is_err());
        }
    }

    #[test]
    fn emit_writes_every_byte() {
        let mut buf = [0xa5u8; 14];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        let repr = Repr::parse(&Frame::new_checked(&PING_FRAME[..]).unwrap());
        assert_eq!(repr.buffer_len(), 14);
        repr.emit(&mut f);
        assert_eq!(&buf[..], &PING_FRAME[..14]);
        assert_eq!(Frame::<&[u8]>::buffer_len(84), PING_FRAME.len());
    }

    #[test]
    fn emit_tags() {
        let mut buf = [0xa5u8; 22];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_dst_addr(DST);
        f.set_src_addr(SRC);
        f.set_ethertype(EtherType::QINQ);
        let mut outer = VlanTag::new_unchecked(&mut f.payload_mut()[..4]);
        outer.set_tci(0, false, 200);
        outer.set_ethertype(EtherType::VLAN);
        let mut inner = VlanTag::new_unchecked(&mut buf[18..22]);
        inner.set_tci(3, true, 100);
        inner.set_ethertype(EtherType::IPV4);
        assert_eq!(&buf[..], &QINQ_FRAME[..22]);
    }

    #[test]
    fn display() {
        assert_eq!(EtherType::IPV6.to_string(), "IPv6");
        assert_eq!(EtherType(0x88e5).to_string(), "0x88e5");
        assert!(EtherType::QINQ.is_vlan() && !EtherType::ARP.is_vlan());
    }
}
