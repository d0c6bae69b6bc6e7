//! ICMP for IPv4 (RFC 792, RFC 1191).
//!
//! The view covers the 8-byte header (type, code, checksum, rest-of-header) and the data
//! after it. [`Packet::new_checked`] only rejects a buffer shorter than 8 bytes (`Truncated`);
//! ICMP has no length field, so the message is the whole buffer: give it the IPv4 payload
//! (`ipv4::Packet::payload`, already bounded by the total length).

use crate::bytes::{read_u16, read_u32, write_u16, write_u32};
use crate::checksum;
use crate::Error;

/// Length of the ICMP header (type, code, checksum, rest-of-header).
pub const HEADER_LEN: usize = 8;

/// An ICMPv4 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Message(pub u8);

impl Message {
    /// Echo reply (0).
    pub const ECHO_REPLY: Message = Message(0);
    /// Destination unreachable (3).
    pub const DEST_UNREACHABLE: Message = Message(3);
    /// Echo request (8).
    pub const ECHO_REQUEST: Message = Message(8);
    /// Time exceeded (11).
    pub const TIME_EXCEEDED: Message = Message(11);
}

/// Destination-unreachable code "fragmentation needed and DF set" (4), carrying the next-hop
/// MTU (RFC 1191).
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Time-exceeded code "TTL exceeded in transit" (0).
pub const CODE_TTL_EXCEEDED: u8 = 0;

mod field {
    use crate::field::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ: Field = 6..8;
    pub const MTU: Field = 6..8;
    pub const DATA: Rest = 8..;
}

/// A view of an ICMPv4 message.
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

    /// Next-hop MTU of a "fragmentation needed" message (type 3 code 4), else `None`.
    /// A value of 0 comes from a pre-RFC 1191 router that does not report it.
    #[inline]
    pub fn next_hop_mtu(&self) -> Option<u16> {
        if self.msg_type() == Message::DEST_UNREACHABLE && self.msg_code() == CODE_FRAG_NEEDED {
            Some(read_u16(&self.buffer.as_ref()[field::MTU]))
        } else {
            None
        }
    }

    /// True if the checksum over the whole message is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
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

    /// Set the next-hop MTU (low 16 bits of rest-of-header; the unused high half is zeroed).
    #[inline]
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        self.set_rest_of_header(u32::from(mtu));
    }

    /// Compute and store the checksum over the whole message.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = !checksum::data(self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// Mutable data after the header.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// High-level representation of an ICMPv4 header, for emitting.
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
    use crate::testdata::*;
    use crate::{ipv4, udp, IpProtocol};

    fn echo() -> &'static [u8] {
        &PING_FRAME[34..]
    }

    #[test]
    fn parse_echo_request_capture() {
        let p = Packet::new_checked(echo()).unwrap();
        assert_eq!(p.msg_type(), Message::ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x0d2a, 1));
        assert_eq!(p.rest_of_header(), 0x0d2a_0001);
        assert_eq!(p.next_hop_mtu(), None);
        assert_eq!(p.data().len(), 56);
        assert_eq!(&p.data()[16..], &core::array::from_fn::<u8, 40, _>(|i| 0x10 + i as u8));
        assert!(p.verify_checksum());
    }

    #[test]
    fn parse_frag_needed_capture() {
        let ip = ipv4::Packet::new_checked(&FRAG_NEEDED[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.next_header(), IpProtocol::ICMP);
        let p = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(p.msg_type(), Message::DEST_UNREACHABLE);
        assert_eq!(p.msg_code(), CODE_FRAG_NEEDED);
        assert_eq!(p.next_hop_mtu(), Some(1400));
        assert_eq!(p.rest_of_header(), 1400);
        assert!(p.verify_checksum());
        // The invoking packet: the IPv4 header and first 8 bytes of our ESP-in-UDP packet.
        let inner = ipv4::Packet::new_unchecked(p.data());
        assert_eq!(inner.next_header(), IpProtocol::UDP);
        assert_eq!(p.data(), &ESP_IN_UDP[..36]);
        let u = udp::Packet::new_unchecked(&p.data()[20..]);
        assert_eq!(u.dst_port(), 4500);
    }

    #[test]
    fn mtu_only_for_frag_needed() {
        let mut b = [0u8; 8];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(Message::DEST_UNREACHABLE);
        p.set_msg_code(3);
        p.set_next_hop_mtu(1280);
        assert_eq!(p.next_hop_mtu(), None);
        p.set_msg_code(CODE_FRAG_NEEDED);
        assert_eq!(p.next_hop_mtu(), Some(1280));
        p.set_msg_type(Message::TIME_EXCEEDED);
        assert_eq!(p.next_hop_mtu(), None);
    }

    #[test]
    fn every_truncation_rejected() {
        for len in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&echo()[..len]).err(), Some(Error::Truncated));
        }
        for len in HEADER_LEN..=echo().len() {
            let p = Packet::new_checked(&echo()[..len]).unwrap();
            assert_eq!(p.data().len(), len - 8);
            // Any truncation of a correct message breaks its checksum (the data is not
            // all zeros).
            assert_eq!(p.verify_checksum(), len == echo().len(), "len {len}");
        }
    }

    #[test]
    fn emit_round_trip_writes_every_byte() {
        for cap in [echo(), &FRAG_NEEDED[20..]] {
            let repr = Repr::parse(&Packet::new_checked(cap).unwrap());
            let mut b = [0xa5u8; 64];
            let b = &mut b[..cap.len()];
            b[8..].copy_from_slice(&cap[8..]);
            let mut p = Packet::new_unchecked(&mut *b);
            repr.emit(&mut p);
            assert_eq!(p.checksum(), 0);
            p.fill_checksum();
            assert_eq!(&*b, cap);
            assert_eq!(repr.buffer_len(), 8);
        }
    }

    #[test]
    fn build_echo_reply() {
        let mut b = [0xa5u8; 64];
        b.copy_from_slice(echo());
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(Message::ECHO_REPLY);
        p.set_echo_ident(0x0d2a);
        p.set_echo_seq_no(2);
        p.data_mut()[0] ^= 0xff;
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.msg_type(), Message::ECHO_REPLY);
        assert_eq!(p.echo_seq_no(), 2);
    }
}
