//! ESP (RFC 4303) header and trailer, and UDP encapsulation (RFC 3948).
//!
//! [`Packet::new_checked`] rejects a buffer shorter than the 8-byte SPI + sequence number
//! header (`Truncated`) and SPI 0 (`Malformed`: reserved, never sent on the wire; on UDP 4500
//! it is the non-ESP marker). The payload (IV, ciphertext, encrypted trailer and ICV) is opaque
//! bytes: its split depends on the SA and is done by [`Packet::split_payload`].
//!
//! After decryption, [`trailer`], [`verify_padding`] and [`strip_trailer`] read the
//! `padding | pad length | next header` trailer of the plaintext.

use crate::bytes::{read_u32, write_u32};
use crate::{Error, IpProtocol};

/// UDP port for ESP-in-UDP and IKE after NAT detection (RFC 3948).
pub const UDP_ENCAP_PORT: u16 = 4500;
/// UDP port for IKE (RFC 7296).
pub const IKE_PORT: u16 = 500;
/// Four zero bytes that precede an IKE message on port 4500 (RFC 3948 §2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// The single byte of a NAT-keepalive packet (RFC 3948 §2.3).
pub const NAT_KEEPALIVE: u8 = 0xff;
/// Length of the fixed IKE header (RFC 7296 §3.1).
pub const IKE_HEADER_LEN: usize = 28;
/// Length of the ESP header (SPI + sequence number).
pub const HEADER_LEN: usize = 8;
/// Length of the fixed part of the trailer (pad length + next header).
pub const TRAILER_LEN: usize = 2;

mod field {
    use crate::field::{Field, Rest};

    pub const SPI: Field = 0..4;
    pub const SEQ: Field = 4..8;
    pub const PAYLOAD: Rest = 8..;
}

/// A view of an ESP packet.
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

    /// Check that the header fits and the SPI is not 0.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.spi() == 0 {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    /// Return the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Security Parameters Index.
    #[inline]
    pub fn spi(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SPI])
    }

    /// Sequence number (the low 32 bits when extended sequence numbers are in use).
    #[inline]
    pub fn seq_no(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SEQ])
    }

    /// The 8 header bytes, e.g. as AEAD associated data (RFC 4106: SPI ‖ seq).
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the header: IV, ciphertext (with encrypted trailer) and ICV.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// Split the payload into IV, ciphertext and ICV for an SA with the given IV and ICV
    /// lengths. `Truncated` if the payload is shorter than `iv_len + icv_len`.
    #[inline]
    pub fn split_payload(&self, iv_len: usize, icv_len: usize) -> Result<EspParts<'a>, Error> {
        EspParts::split(self.payload(), iv_len, icv_len)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the SPI.
    #[inline]
    pub fn set_spi(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SPI], value);
    }

    /// Set the sequence number.
    #[inline]
    pub fn set_seq_no(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SEQ], value);
    }

    /// Mutable payload (after the header).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The ESP payload of one packet, split according to its SA's IV and ICV lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspParts<'a> {
    /// Initialization vector (empty for ciphers without an explicit IV).
    pub iv: &'a [u8],
    /// Encrypted data: inner payload, padding, pad length and next header.
    pub ciphertext: &'a [u8],
    /// Integrity check value (empty without integrity).
    pub icv: &'a [u8],
}

impl<'a> EspParts<'a> {
    /// Split an ESP payload (the bytes after SPI and sequence number) into IV, ciphertext and
    /// ICV. `Truncated` if it is shorter than `iv_len + icv_len`.
    #[inline]
    pub fn split(payload: &'a [u8], iv_len: usize, icv_len: usize) -> Result<Self, Error> {
        let min = iv_len.checked_add(icv_len).ok_or(Error::Truncated)?;
        if payload.len() < min {
            return Err(Error::Truncated);
        }
        let (iv, rest) = payload.split_at(iv_len);
        let (ciphertext, icv) = rest.split_at(rest.len() - icv_len);
        Ok(EspParts { iv, ciphertext, icv })
    }
}

/// High-level representation of an ESP header, for emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// SPI.
    pub spi: u32,
    /// Sequence number (low 32 bits).
    pub seq_no: u32,
}

impl Repr {
    /// Read a checked packet's header.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Repr {
        Repr { spi: packet.spi(), seq_no: packet.seq_no() }
    }

    /// Header length (8).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the 8 header bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_spi(self.spi);
        packet.set_seq_no(self.seq_no);
    }
}

/// Read the trailer at the end of a decrypted ESP plaintext (`... | padding | pad length |
/// next header`). Returns `(pad_len, next_header)`.
///
/// `Truncated` if the plaintext is shorter than 2 bytes, `Malformed` if the pad length reaches
/// before the start of the plaintext. Does not check the padding bytes ([`verify_padding`]).
#[inline]
pub fn trailer(plaintext: &[u8]) -> Result<(u8, IpProtocol), Error> {
    let n = plaintext.len();
    if n < TRAILER_LEN {
        return Err(Error::Truncated);
    }
    let pad_len = plaintext[n - 2];
    let next_header = IpProtocol(plaintext[n - 1]);
    if usize::from(pad_len) + TRAILER_LEN > n {
        return Err(Error::Malformed);
    }
    Ok((pad_len, next_header))
}

/// Check the RFC 4303 §2.4 default padding `1, 2, 3, ..., pad_len` that precedes the pad length
/// and next header bytes of `plaintext`. False if the bytes differ or do not fit.
#[inline]
pub fn verify_padding(plaintext: &[u8], pad_len: u8) -> bool {
    let pad_len = usize::from(pad_len);
    let Some(end) = plaintext.len().checked_sub(TRAILER_LEN) else {
        return false;
    };
    let Some(start) = end.checked_sub(pad_len) else {
        return false;
    };
    plaintext[start..end].iter().zip(1u8..=255).all(|(&b, expected)| b == expected)
}

/// Read and check the trailer and return `(inner_payload, next_header)`: the plaintext with
/// padding, pad length and next header removed. `Malformed` if the padding is not
/// `1, 2, 3, ...`.
#[inline]
pub fn strip_trailer(plaintext: &[u8]) -> Result<(&[u8], IpProtocol), Error> {
    let (pad_len, next_header) = trailer(plaintext)?;
    if !verify_padding(plaintext, pad_len) {
        return Err(Error::Malformed);
    }
    let end = plaintext.len() - TRAILER_LEN - usize::from(pad_len);
    Ok((&plaintext[..end], next_header))
}

/// Padding length so that `payload_len + padding + 2` is a multiple of `align` (the cipher
/// block size, at least 4 as RFC 4303 requires 32-bit alignment; values below 4 are raised
/// to 4; `align` must be a power of two ≤ 256).
#[inline]
pub const fn pad_len_for(payload_len: usize, align: usize) -> u8 {
    let align = if align < 4 { 4 } else { align };
    let rem = (payload_len + TRAILER_LEN) % align;
    if rem == 0 {
        0
    } else {
        (align - rem) as u8
    }
}

/// Write padding `1, 2, ..., n` followed by the pad length `n` and `next_header`, where
/// `n = trailer.len() - 2`. `Truncated` if `trailer` is shorter than 2 bytes, `Malformed` if
/// `n > 255`.
#[inline]
pub fn write_trailer(trailer: &mut [u8], next_header: IpProtocol) -> Result<(), Error> {
    let n = trailer.len().checked_sub(TRAILER_LEN).ok_or(Error::Truncated)?;
    let pad_len = u8::try_from(n).map_err(|_| Error::Malformed)?;
    for (b, v) in trailer[..n].iter_mut().zip(1u8..=255) {
        *b = v;
    }
    trailer[n] = pad_len;
    trailer[n + 1] = next_header.0;
    Ok(())
}

/// What a UDP/4500 payload carries (RFC 3948).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpEncap {
    /// An ESP packet: at least 8 bytes, non-zero SPI. The ESP header is at offset 0.
    Esp,
    /// An IKE message after the non-ESP marker: the IKE header is at offset 4 (and at least
    /// [`IKE_HEADER_LEN`] bytes follow the marker).
    Ike,
    /// A NAT-keepalive: exactly one 0xff byte.
    NatKeepalive,
    /// None of the above (too short, or zero marker with too short an IKE message). Drop it.
    Invalid,
}

impl UdpEncap {
    /// Offset of the ESP or IKE header in the UDP payload, or `None` for keepalives and
    /// invalid payloads.
    #[inline]
    pub const fn offset(self) -> Option<usize> {
        match self {
            UdpEncap::Esp => Some(0),
            UdpEncap::Ike => Some(NON_ESP_MARKER.len()),
            UdpEncap::NatKeepalive | UdpEncap::Invalid => None,
        }
    }
}

/// Classify the payload of a UDP datagram received on port 4500.
#[inline]
pub fn classify_udp_encap(payload: &[u8]) -> UdpEncap {
    match payload {
        [NAT_KEEPALIVE] => UdpEncap::NatKeepalive,
        [0, 0, 0, 0, ike @ ..] if ike.len() >= IKE_HEADER_LEN => UdpEncap::Ike,
        [0, 0, 0, 0, ..] => UdpEncap::Invalid,
        _ if payload.len() >= HEADER_LEN => UdpEncap::Esp,
        _ => UdpEncap::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;
    use crate::{ipv4, ipv6, udp};

    fn esp() -> &'static [u8] {
        &ESP_IN_UDP[28..]
    }

    /// A decrypted tunnel-mode plaintext: an inner IPv4 header stub, then RFC 4303 padding
    /// 1..=6, pad length 6, next header 4 (IPv4).
    static PLAINTEXT: [u8; 32] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x11, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00,
        0x00, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x06, 0x04,
    ];

    #[test]
    fn parse_esp_in_udp_capture() {
        let ip = ipv4::Packet::new_checked(&ESP_IN_UDP[..]).unwrap();
        assert!(ip.verify_checksum());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(u.dst_port(), UDP_ENCAP_PORT);
        assert_eq!(classify_udp_encap(u.payload()), UdpEncap::Esp);
        let p = Packet::new_checked(u.payload()).unwrap();
        assert_eq!(p.spi(), 0xcb4a_7e12);
        assert_eq!(p.seq_no(), 42);
        assert_eq!(p.header(), &esp()[..8]);
        assert_eq!(p.payload().len(), 80);
        let parts = p.split_payload(16, 16).unwrap();
        assert_eq!(parts.iv, &esp()[8..24]);
        assert_eq!(parts.ciphertext, &esp()[24..72]);
        assert_eq!(parts.icv, &esp()[72..]);
        assert_eq!(p.split_payload(40, 41).err(), Some(Error::Truncated));
        assert_eq!(p.split_payload(usize::MAX, 1).err(), Some(Error::Truncated));
        let all_iv = p.split_payload(80, 0).unwrap();
        assert_eq!((all_iv.iv.len(), all_iv.ciphertext.len(), all_iv.icv.len()), (80, 0, 0));
        let no_iv = p.split_payload(0, 80).unwrap();
        assert_eq!((no_iv.iv.len(), no_iv.ciphertext.len(), no_iv.icv.len()), (0, 0, 80));
    }

    #[test]
    fn parse_native_ipv6_esp_capture() {
        let ip = ipv6::Packet::new_checked(&V6_ESP[..]).unwrap();
        let (proto, off, _) = ip.upper_layer().unwrap();
        assert_eq!(proto, IpProtocol::ESP);
        let p = Packet::new_checked(&V6_ESP[off..]).unwrap();
        assert_eq!((p.spi(), p.seq_no()), (0x1000_a0b2, 500));
        let parts = p.split_payload(16, 16).unwrap();
        assert_eq!(parts.iv[0], 0x01);
        assert_eq!(parts.ciphertext.len(), 32);
        assert_eq!(parts.icv, &V6_ESP[V6_ESP.len() - 16..]);
        assert_eq!(parts.icv[15], 0x2c);
    }

    #[test]
    fn truncations_and_zero_spi() {
        for len in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&esp()[..len]).err(), Some(Error::Truncated));
        }
        for len in HEADER_LEN..=esp().len() {
            assert_eq!(Packet::new_checked(&esp()[..len]).unwrap().payload().len(), len - 8);
        }
        assert_eq!(Packet::new_checked(&[0, 0, 0, 0, 0, 0, 0, 1][..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn trailer_of_plaintext() {
        assert_eq!(trailer(&PLAINTEXT), Ok((6, IpProtocol::IPV4)));
        assert!(verify_padding(&PLAINTEXT, 6));
        let (inner, nh) = strip_trailer(&PLAINTEXT).unwrap();
        assert_eq!(nh, IpProtocol::IPV4);
        assert_eq!(inner, &PLAINTEXT[..24]);
        assert_eq!(ipv4::Packet::new_checked(inner).unwrap().total_len(), 24);
    }

    #[test]
    fn trailer_bounds() {
        assert_eq!(trailer(&[]), Err(Error::Truncated));
        assert_eq!(trailer(&[4]), Err(Error::Truncated));
        assert_eq!(trailer(&[0, 41]), Ok((0, IpProtocol::IPV6)));
        assert_eq!(trailer(&[1, 41]), Err(Error::Malformed));
        assert_eq!(trailer(&[1, 1, 41]), Ok((1, IpProtocol::IPV6)));
        // No truncation of the plaintext yields the original inner packet and protocol.
        for len in 0..PLAINTEXT.len() {
            let r = strip_trailer(&PLAINTEXT[..len]);
            assert_ne!(r, Ok((&PLAINTEXT[..24], IpProtocol::IPV4)), "len {len}");
            if len < 2 {
                assert_eq!(r, Err(Error::Truncated));
            }
        }
    }

    #[test]
    fn padding_checks() {
        let mut b = PLAINTEXT;
        for i in 24..30 {
            b[i] ^= 0x80;
            assert!(!verify_padding(&b, 6));
            assert_eq!(strip_trailer(&b).err(), Some(Error::Malformed));
            b[i] ^= 0x80;
        }
        assert!(verify_padding(&b, 0));
        assert!(!verify_padding(&b, 7)); // would need 1..=7
        assert!(!verify_padding(&b, 31)); // does not fit
        assert!(!verify_padding(&b[..1], 0));
        assert!(verify_padding(&[0x09, 0x00], 0));
        let mut max = [0u8; 257];
        assert_eq!(write_trailer(&mut max, IpProtocol::TCP), Ok(()));
        assert!(verify_padding(&max, 255));
        assert_eq!(strip_trailer(&max).unwrap().0.len(), 0);
    }

    #[test]
    fn write_trailer_round_trip() {
        let mut b = [0xa5u8; 32];
        b[..24].copy_from_slice(&PLAINTEXT[..24]);
        let pad = pad_len_for(24, 16);
        assert_eq!(pad, 6);
        write_trailer(&mut b[24..], IpProtocol::IPV4).unwrap();
        assert_eq!(b, PLAINTEXT);
        assert_eq!(write_trailer(&mut [0u8; 1], IpProtocol::IPV4), Err(Error::Truncated));
        assert_eq!(write_trailer(&mut [0u8; 258], IpProtocol::IPV4), Err(Error::Malformed));
    }

    #[test]
    fn pad_len_alignment() {
        for align in [1usize, 4, 8, 16, 32, 64, 128, 256] {
            for len in 0..600 {
                let pad = usize::from(pad_len_for(len, align));
                let a = align.max(4);
                assert_eq!((len + pad + 2) % a, 0);
                assert!(pad < a);
            }
        }
    }

    #[test]
    fn classify() {
        assert_eq!(classify_udp_encap(&[0xff]), UdpEncap::NatKeepalive);
        assert_eq!(classify_udp_encap(&KEEPALIVE_FRAME[42..43]), UdpEncap::NatKeepalive);
        assert_eq!(classify_udp_encap(&[0xff, 0xff]), UdpEncap::Invalid);
        assert_eq!(classify_udp_encap(&[]), UdpEncap::Invalid);
        assert_eq!(classify_udp_encap(&[0; 4]), UdpEncap::Invalid);
        assert_eq!(classify_udp_encap(&[0; 31]), UdpEncap::Invalid);
        assert_eq!(classify_udp_encap(&[0; 32]), UdpEncap::Ike);
        assert_eq!(classify_udp_encap(&[0, 0, 0, 1, 0, 0, 0, 1]), UdpEncap::Esp);
        assert_eq!(classify_udp_encap(&[1, 0, 0, 0, 0, 0, 0]), UdpEncap::Invalid);
        assert_eq!(classify_udp_encap(esp()), UdpEncap::Esp);
        assert_eq!(UdpEncap::Ike.offset(), Some(4));
        assert_eq!(UdpEncap::Esp.offset(), Some(0));
        assert_eq!(UdpEncap::NatKeepalive.offset(), None);
        // Whatever is classified as ESP parses as ESP.
        for len in 0..esp().len() {
            let c = classify_udp_encap(&esp()[..len]);
            assert_eq!(c == UdpEncap::Esp, Packet::new_checked(&esp()[..len]).is_ok());
        }
    }

    #[test]
    fn emit_round_trip_writes_every_byte() {
        let repr = Repr::parse(&Packet::new_checked(esp()).unwrap());
        assert_eq!(repr, Repr { spi: 0xcb4a_7e12, seq_no: 42 });
        let mut b = [0xa5u8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(&b[..], &esp()[..8]);
        assert_eq!(repr.buffer_len(), 8);
        let mut b = [0xa5u8; 12];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_spi(1);
        p.set_seq_no(u32::MAX);
        p.payload_mut().fill(0);
        assert_eq!(b, [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    }
}
