//! ICMP for IPv6 (RFC 4443).
//!
//! The view covers the 8-byte header (type, code, checksum, rest-of-header) and the data
//! after it. [`Packet::new_checked`] only rejects a buffer shorter than 8 bytes (`Truncated`);
//! ICMPv6 has no length field, so the message is the whole buffer: give it the upper-layer
//! bytes of the IPv6 packet (after extension headers, bounded by the payload length). The
//! checksum covers the IPv6 pseudo-header, so it needs the source and destination addresses.

use crate::bytes::{read_u16, read_u32, write_u16, write_u32};
use core::net::Ipv6Addr;

use crate::checksum;
use crate::{Error, IpProtocol};

/// Length of the ICMP header (type, code, checksum, rest-of-header).
pub const HEADER_LEN: usize = 8;

/// An ICMPv6 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Message(pub u8);

impl Message {
    /// Destination unreachable (1).
    pub const DEST_UNREACHABLE: Message = Message(1);
    /// Packet too big (2), carrying the MTU of the next hop.
    pub const PACKET_TOO_BIG: Message = Message(2);
    /// Time exceeded (3).
    pub const TIME_EXCEEDED: Message = Message(3);
    /// Parameter problem (4).
    pub const PARAM_PROBLEM: Message = Message(4);
    /// Echo request (128).
    pub const ECHO_REQUEST: Message = Message(128);
    /// Echo reply (129).
    pub const ECHO_REPLY: Message = Message(129);

    /// True for error messages (types 0-127), which carry the invoking packet.
    #[inline]
    pub const fn is_error(self) -> bool {
        self.0 < 128
    }
}

/// Time-exceeded code "hop limit exceeded in transit" (0).
pub const CODE_HOP_LIMIT_EXCEEDED: u8 = 0;

mod field {
    use crate::field::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ: Field = 6..8;
    pub const DATA: Rest = 8..;
}

/// A view of an ICMPv6 message.
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

    /// Wrap an untrusted buffer, checking that the 8-byte header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Check that the header fits.
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

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> Message {
        Message(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The 32-bit rest-of-header word (meaning depends on the type).
    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::REST])
    }

    /// Echo identifier (upper half of rest-of-header).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_IDENT])
    }

    /// Echo sequence number (lower half of rest-of-header).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_SEQ])
    }

    /// MTU of a "packet too big" message (type 2: the whole rest-of-header), else `None`.
    #[inline]
    pub fn mtu(&self) -> Option<u32> {
        if self.msg_type() == Message::PACKET_TOO_BIG {
            Some(self.rest_of_header())
        } else {
            None
        }
    }

    /// True if the checksum over the pseudo-header and the whole message is correct.
    #[inline]
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        sum(self.buffer.as_ref(), src, dst) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Data after the 8-byte header (echo payload, or the invoking packet of an error).
    #[inline]
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::DATA]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the message type.
    #[inline]
    pub fn set_msg_type(&mut self, value: Message) {
        self.buffer.as_mut()[field::TYPE] = value.0;
    }

    /// Set the message code.
    #[inline]
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Set the rest-of-header word.
    #[inline]
    pub fn set_rest_of_header(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::REST], value);
    }

    /// Set the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_IDENT], value);
    }

    /// Set the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_SEQ], value);
    }

    /// Set the MTU of a "packet too big" message (the rest-of-header word).
    #[inline]
    pub fn set_mtu(&mut self, mtu: u32) {
        self.set_rest_of_header(mtu);
    }

    /// Compute and store the checksum over the pseudo-header and the whole message.
    #[inline]
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let c = !sum(self.buffer.as_ref(), src, dst);
        self.set_checksum(c);
    }

    /// Mutable data after the header.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }
}

#[inline]
fn sum(message: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr) -> u16 {
    let ph = checksum::pseudo_header_v6(src, dst, IpProtocol::ICMPV6, message.len() as u32);
    checksum::combine(&[ph, checksum::data(message)])
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// High-level representation of an ICMPv6 header, for emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Type.
    pub msg_type: Message,
    /// Code.
    pub msg_code: u8,
    /// Rest-of-header word.
    pub rest_of_header: u32,
}

impl Repr {
    /// Read a checked message's header.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Repr {
        Repr { msg_type: packet.msg_type(), msg_code: packet.msg_code(), rest_of_header: packet.rest_of_header() }
    }

    /// Header length (8).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the 8 header bytes with a zero checksum; fill the data, then call
    /// [`Packet::fill_checksum`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_msg_type(self.msg_type);
        packet.set_msg_code(self.msg_code);
        packet.set_checksum(0);
        packet.set_rest_of_header(self.rest_of_header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv6;
    use crate::testdata::*;

    const PTB_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
    const PTB_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    const MLD_SRC: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x021a, 0x2bff, 0xfe3c, 0x4d5e);
    const MLD_DST: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);

    #[test]
    fn parse_packet_too_big_capture() {
        let ip = ipv6::Packet::new_checked(&V6_PTB[..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (PTB_SRC, PTB_DST));
        let (proto, off, _) = ip.upper_layer().unwrap();
        assert_eq!((proto, off), (IpProtocol::ICMPV6, 40));
        let p = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(p.msg_type(), Message::PACKET_TOO_BIG);
        assert!(p.msg_type().is_error());
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.mtu(), Some(1400));
        assert_eq!(p.rest_of_header(), 1400);
        assert!(p.verify_checksum(&PTB_SRC, &PTB_DST));
        assert!(!p.verify_checksum(&PTB_DST, &MLD_DST));
        // The invoking packet is the start of one of our ESP packets.
        let inner = ipv6::Packet::new_unchecked(p.data());
        assert_eq!(inner.next_header(), IpProtocol::ESP);
        assert_eq!(inner.dst_addr(), Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x20));
        assert_eq!(&p.data()[40..44], &[0x10, 0x00, 0xa0, 0xb2]); // inner SPI
    }

    #[test]
    fn parse_mld_report_capture() {
        let icmp = &MLD_HBH[48..];
        let p = Packet::new_checked(icmp).unwrap();
        assert_eq!(p.msg_type(), Message(143));
        assert!(!p.msg_type().is_error());
        assert_eq!(p.mtu(), None);
        assert_eq!(p.rest_of_header(), 1); // reserved, number of records
        assert!(p.verify_checksum(&MLD_SRC, &MLD_DST));
        assert_eq!(p.data().len(), 20);
    }

    #[test]
    fn every_truncation_rejected() {
        let icmp = &V6_PTB[40..];
        for len in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&icmp[..len]).err(), Some(Error::Truncated));
        }
        for len in HEADER_LEN..icmp.len() {
            let p = Packet::new_checked(&icmp[..len]).unwrap();
            assert_eq!(p.data().len(), len - 8);
        }
    }

    #[test]
    fn emit_round_trip_writes_every_byte() {
        let icmp = &V6_PTB[40..];
        let repr = Repr::parse(&Packet::new_checked(icmp).unwrap());
        assert_eq!(repr, Repr { msg_type: Message::PACKET_TOO_BIG, msg_code: 0, rest_of_header: 1400 });
        let mut b = [0xa5u8; 88];
        assert_eq!(b.len(), icmp.len());
        b[8..].copy_from_slice(&icmp[8..]);
        let mut p = Packet::new_unchecked(&mut b[..]);
        repr.emit(&mut p);
        assert_eq!(p.checksum(), 0);
        p.fill_checksum(&PTB_SRC, &PTB_DST);
        assert_eq!(&b[..], icmp);
        assert_eq!(repr.buffer_len(), 8);
    }

    #[test]
    fn build_echo() {
        let mut b = [0xa5u8; 16];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(Message::ECHO_REQUEST);
        p.set_msg_code(0);
        p.set_echo_ident(0x1234);
        p.set_echo_seq_no(7);
        p.data_mut().copy_from_slice(b"abcdefgh");
        p.fill_checksum(&PTB_DST, &PTB_SRC);
        assert!(p.verify_checksum(&PTB_DST, &PTB_SRC));
        p.set_msg_type(Message::ECHO_REPLY);
        assert!(!p.verify_checksum(&PTB_DST, &PTB_SRC));
        p.set_mtu(0x0102_0304);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x0102, 0x0304));
        assert_eq!(p.data(), b"abcdefgh");
        assert_eq!(p.mtu(), None);
    }
}
