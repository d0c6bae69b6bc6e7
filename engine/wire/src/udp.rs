//! UDP header (RFC 768) and checksum over the IPv4 / IPv6 pseudo-header.
//!
//! [`Packet::new_checked`] rejects a buffer shorter than 8 bytes (`Truncated`), a length field
//! below 8 (`Malformed`; this includes the IPv6 jumbogram value 0, which is unsupported) and a
//! length field past the buffer (`Truncated`). The checksum is not checked.

use crate::bytes::{read_u16, write_u16};
use crate::checksum::{self, PseudoHeader};
use crate::{Error, IpProtocol};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

mod field {
    use crate::field::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// A view of a UDP datagram.
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

    /// Validate the length field against the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if field_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Return the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// Length field (header + payload).
    #[inline]
    pub fn len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// True if the length field says there is no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The datagram bytes covered by the length field (clamped to the buffer).
    #[inline]
    fn datagram(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[..usize::from(self.len()).min(data.len())]
    }

    /// Verify the checksum over the pseudo-header and the datagram (as long as the length
    /// field says). With IPv4 a zero checksum means "not computed" and verifies; with IPv6 a
    /// zero checksum is invalid (RFC 8200 §8.1).
    #[inline]
    pub fn verify_checksum<A: PseudoHeader>(&self, src: A, dst: A) -> bool {
        if self.checksum() == 0 {
            return A::UDP_CHECKSUM_OPTIONAL;
        }
        let d = self.datagram();
        let ph = A::pseudo_header_sum(&src, &dst, IpProtocol::UDP, d.len() as u32);
        checksum::combine(&[ph, checksum::data(d)]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Payload, from byte 8 to the length field (bytes past it are ignored).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.len()).min(data.len());
        &data[HEADER_LEN.min(end)..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the source port.
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::SRC_PORT], value);
    }

    /// Set the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::DST_PORT], value);
    }

    /// Set the length field.
    #[inline]
    pub fn set_len(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], value);
    }

    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Compute and store the checksum (a computed 0 is sent as 0xffff, RFC 768).
    #[inline]
    pub fn fill_checksum<A: PseudoHeader>(&mut self, src: A, dst: A) {
        self.set_checksum(0);
        let sum = {
            let d = self.datagram();
            let ph = A::pseudo_header_sum(&src, &dst, IpProtocol::UDP, d.len() as u32);
            checksum::combine(&[ph, checksum::data(d)])
        };
        let c = !sum;
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// Mutable payload, from byte 8 to the length field.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.buffer.as_ref().len();
        let end = usize::from(self.len()).min(len);
        &mut self.buffer.as_mut()[HEADER_LEN.min(end)..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// High-level representation of a UDP header, for emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length (the length field is this plus 8).
    pub payload_len: u16,
}

impl Repr {
    /// Read a checked datagram's header.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Repr {
        Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: packet.len().saturating_sub(HEADER_LEN as u16),
        }
    }

    /// Header length (8).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write all 8 header bytes with a zero checksum. Copy the payload in, then call
    /// [`Packet::fill_checksum`] (or leave 0 for IPv4 ESP-in-UDP, as RFC 3948 allows).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(self.payload_len + HEADER_LEN as u16);
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    const DNS_SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
    const DNS_DST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const V6_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    const V6_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x20);

    fn dns() -> &'static [u8] {
        &DNS_QUERY[20..]
    }

    #[test]
    fn parse_dns_capture() {
        let p = Packet::new_checked(dns()).unwrap();
        assert_eq!(p.src_port(), 51234);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 36);
        assert!(!p.is_empty());
        assert_ne!(p.checksum(), 0);
        assert_eq!(p.payload().len(), 28);
        assert_eq!(&p.payload()[..2], &[0xb1, 0xe2]); // DNS id
        assert!(p.verify_checksum(DNS_SRC, DNS_DST));
        assert!(!p.verify_checksum(DNS_SRC, Ipv4Addr::new(192, 168, 1, 2)));
    }

    #[test]
    fn ipv6_checksum_capture() {
        let p = Packet::new_checked(&V6_UDP_WHOLE[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (40000, 5001, 48));
        assert!(p.verify_checksum(V6_SRC, V6_DST));
        assert!(!p.verify_checksum(V6_SRC, Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x21)));
        let mut b = V6_UDP_WHOLE;
        b[20] ^= 0x40;
        assert!(!Packet::new_checked(&b[..]).unwrap().verify_checksum(V6_SRC, V6_DST));
    }

    #[test]
    fn zero_checksum_rules() {
        let esp_udp = &ESP_IN_UDP[20..];
        let p = Packet::new_checked(esp_udp).unwrap();
        assert_eq!(p.checksum(), 0);
        assert_eq!((p.src_port(), p.dst_port()), (4500, 4500));
        assert!(p.verify_checksum(Ipv4Addr::new(198, 51, 100, 7), Ipv4Addr::new(203, 0, 113, 20)));
        let mut b = V6_UDP_WHOLE;
        b[6] = 0;
        b[7] = 0;
        assert!(!Packet::new_checked(&b[..]).unwrap().verify_checksum(V6_SRC, V6_DST));
    }

    #[test]
    fn fill_checksum_reproduces_captures() {
        let mut b = [0u8; 36];
        b.copy_from_slice(dns());
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_checksum(0x1234);
        p.fill_checksum(DNS_SRC, DNS_DST);
        assert_eq!(&b[..], dns());

        let mut b = V6_UDP_WHOLE;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_checksum(0);
        p.fill_checksum(V6_SRC, V6_DST);
        assert_eq!(b, V6_UDP_WHOLE);
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose the source port so the checksum computes to zero, then check it is sent as
        // 0xffff and still verifies.
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let mut b = [0u8; 12];
        let mut p = Packet::new_unchecked(&mut b[..]);
        Repr { src_port: 0, dst_port: 9, payload_len: 4 }.emit(&mut p);
        p.fill_checksum(src, dst);
        let c = p.checksum();
        // Adding the checksum value to the source port makes the sum 0xffff, i.e. checksum 0.
        p.set_src_port(c);
        p.fill_checksum(src, dst);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(src, dst));
    }

    #[test]
    fn every_truncation_rejected() {
        for cap in [dns(), &V6_UDP_WHOLE[..], &ESP_IN_UDP[20..]] {
            for len in 0..cap.len() {
                assert_eq!(Packet::new_checked(&cap[..len]).err(), Some(Error::Truncated), "len {len}");
            }
            assert!(Packet::new_checked(cap).is_ok());
        }
        let mut b = [0u8; 16];
        for l in 0..8u16 {
            b[4..6].copy_from_slice(&l.to_be_bytes());
            assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
        }
    }

    #[test]
    fn payload_bounded_by_length_field() {
        let ip = &KEEPALIVE_FRAME[34..]; // UDP header onward, Ethernet padding included
        let p = Packet::new_checked(ip).unwrap();
        assert_eq!(p.len(), 9);
        assert_eq!(p.payload(), &[0xff]);
        assert!(p.verify_checksum(Ipv4Addr::new(192, 168, 1, 100), Ipv4Addr::new(203, 0, 113, 20)));
        let mut b = [0u8; 12];
        b[4..6].copy_from_slice(&8u16.to_be_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.is_empty() && p.payload().is_empty());
    }

    #[test]
    fn emit_round_trip_writes_every_byte() {
        let repr = Repr::parse(&Packet::new_checked(dns()).unwrap());
        assert_eq!(repr, Repr { src_port: 51234, dst_port: 53, payload_len: 28 });
        let mut b = [0xa5u8; 36];
        b[8..].copy_from_slice(&dns()[8..]);
        let mut p = Packet::new_unchecked(&mut b[..]);
        repr.emit(&mut p);
        assert_eq!(p.checksum(), 0);
        p.payload_mut()[0] = 0xb1;
        p.fill_checksum(DNS_SRC, DNS_DST);
        assert_eq!(&b[..], dns());
        assert_eq!(repr.buffer_len(), 8);
    }
}
