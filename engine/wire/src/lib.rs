//! Zero-copy, bounds-checked packet views for the IPsec gateway data plane.
//!
//! Every protocol module exposes a view type (`ethernet::Frame`, `ipv4::Packet`,
//! `ipv6::Packet`, `udp::Packet`, `icmpv4::Packet`, `icmpv6::Packet`, `esp::Packet`) that
//! wraps any `T: AsRef<[u8]>` without copying it, plus a small `Repr` used to emit headers.
//! Getters live in `impl<T: AsRef<[u8]>>`, setters in `impl<T: AsRef<[u8]> + AsMut<[u8]>>`;
//! `payload()` on a view of `&'a [u8]` returns a slice borrowing the underlying buffer for
//! `'a`, so a parsed chain of views costs nothing but a few length checks.
//!
//! # Contract
//!
//! * `new_checked(buffer)` is for **untrusted** input. It validates, once, everything the
//!   accessors rely on: the fixed header fits, and every length field the view uses to slice
//!   the buffer (IPv4 IHL and total length, IPv6 payload length, UDP length) is consistent
//!   and within the buffer. It also rejects values that make the header meaningless (IPv4
//!   version ≠ 4 or IHL < 5, IPv6 version ≠ 6, UDP length < 8, ESP SPI 0). After it returns
//!   `Ok`, **no getter of that view can panic** as long as the buffer is not modified.
//! * `new_checked` does **not** verify checksums (call `verify_checksum`), does not look at
//!   options, extension headers or the payload's contents, and does not check that a
//!   buffer is not *longer* than the header says (trailing bytes, e.g. Ethernet padding,
//!   are allowed and excluded from `payload()`).
//! * `new_unchecked(buffer)` performs no check and is for buffers the gateway builds
//!   itself. Accessing a field that is out of bounds then panics (indexing, never UB).
//! * Setters write what they are told; changing a length field can make a later fixed-field
//!   access panic. Variable-length accessors (`payload`, `options`) clamp to the buffer, so
//!   they never panic once the fixed header fits.
//! * Nothing in this crate allocates; it is `#![no_std]` and contains no `unsafe` code.
//!
//! Multi-byte fields are big endian (network order) on the wire and native integers in the
//! API. Addresses are `core::net::{Ipv4Addr, Ipv6Addr, IpAddr}`.
//!
//! # Example
//!
//! Walking a received frame down to the SPI of an ESP-in-UDP packet; every step is checked,
//! so malformed input yields an `Err`, never a panic:
//!
//! ```
//! use ipsec_wire::{esp, ethernet, ipv4, udp, EtherType, IpProtocol, UdpEncap};
//!
//! fn esp_spi(frame: &[u8]) -> Result<Option<u32>, ipsec_wire::Error> {
//!     let l3 = ethernet::l3_info(frame)?; // skips 802.1Q / QinQ tags
//!     if l3.ethertype != EtherType::IPV4 {
//!         return Ok(None);
//!     }
//!     let ip = ipv4::Packet::new_checked(&frame[l3.offset..])?;
//!     if ip.next_header() != IpProtocol::UDP {
//!         return Ok(None);
//!     }
//!     let udp = udp::Packet::new_checked(ip.payload())?;
//!     if udp.dst_port() != esp::UDP_ENCAP_PORT {
//!         return Ok(None);
//!     }
//!     match esp::classify_udp_encap(udp.payload()) {
//!         UdpEncap::Esp => Ok(Some(esp::Packet::new_checked(udp.payload())?.spi())),
//!         UdpEncap::Ike | UdpEncap::NatKeepalive | UdpEncap::Invalid => Ok(None),
//!     }
//! }
//!
//! // A frame too short to hold an Ethernet header.
//! assert_eq!(esp_spi(&[0u8; 10]), Err(ipsec_wire::Error::Truncated));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

use core::fmt;
use core::net::IpAddr;

pub mod checksum;
pub mod esp;
pub mod ethernet;
pub mod frag;
pub mod icmp_error;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod udp;

pub use checksum::PseudoHeader;
pub use esp::{EspParts, UdpEncap};
pub use ethernet::{EtherType, L3Info};

/// Error returned by the `new_checked` constructors and the parsing helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The buffer ends before the header, or before the length a header field claims.
    Truncated,
    /// A field holds a value that is impossible for this protocol (wrong version, a length
    /// smaller than the header, a reserved value, a misplaced extension header, ...).
    Malformed,
    /// More stacked headers (VLAN tags, IPv6 extension headers) than the parser walks.
    TooManyHeaders,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated packet",
            Error::Malformed => "malformed packet",
            Error::TooManyHeaders => "too many stacked headers",
        })
    }
}

impl core::error::Error for Error {}

/// An IP protocol number / IPv6 Next Header value (IANA "Assigned Internet Protocol Numbers").
///
/// A transparent newtype so every one of the 256 values is representable; the associated
/// constants name the ones the gateway handles and can be used in `match` patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// IPv6 Hop-by-Hop Options extension header (0).
    pub const HOP_BY_HOP: IpProtocol = IpProtocol(0);
    /// ICMP for IPv4 (1).
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// IGMP (2).
    pub const IGMP: IpProtocol = IpProtocol(2);
    /// IPv4 encapsulation, the ESP Next Header of an IPv4 packet in tunnel mode (4).
    pub const IPV4: IpProtocol = IpProtocol(4);
    /// TCP (6).
    pub const TCP: IpProtocol = IpProtocol(6);
    /// UDP (17).
    pub const UDP: IpProtocol = IpProtocol(17);
    /// IPv6 encapsulation, the ESP Next Header of an IPv6 packet in tunnel mode (41).
    pub const IPV6: IpProtocol = IpProtocol(41);
    /// IPv6 Routing extension header (43).
    pub const IPV6_ROUTE: IpProtocol = IpProtocol(43);
    /// IPv6 Fragment extension header (44).
    pub const IPV6_FRAG: IpProtocol = IpProtocol(44);
    /// Encapsulating Security Payload, RFC 4303 (50).
    pub const ESP: IpProtocol = IpProtocol(50);
    /// Authentication Header, RFC 4302 (51).
    pub const AH: IpProtocol = IpProtocol(51);
    /// ICMP for IPv6 (58).
    pub const ICMPV6: IpProtocol = IpProtocol(58);
    /// IPv6 "No Next Header" (59).
    pub const IPV6_NO_NXT: IpProtocol = IpProtocol(59);
    /// IPv6 Destination Options extension header (60).
    pub const IPV6_OPTS: IpProtocol = IpProtocol(60);
    /// SCTP (132).
    pub const SCTP: IpProtocol = IpProtocol(132);

    /// True for protocols whose first four payload bytes are a source and destination port.
    #[inline]
    pub const fn has_ports(self) -> bool {
        matches!(self, IpProtocol::TCP | IpProtocol::UDP | IpProtocol::SCTP)
    }
}

impl From<u8> for IpProtocol {
    #[inline]
    fn from(value: u8) -> Self {
        IpProtocol(value)
    }
}

impl From<IpProtocol> for u8 {
    #[inline]
    fn from(value: IpProtocol) -> Self {
        value.0
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            IpProtocol::HOP_BY_HOP => "HOPOPT",
            IpProtocol::ICMP => "ICMP",
            IpProtocol::IGMP => "IGMP",
            IpProtocol::IPV4 => "IPv4",
            IpProtocol::TCP => "TCP",
            IpProtocol::UDP => "UDP",
            IpProtocol::IPV6 => "IPv6",
            IpProtocol::IPV6_ROUTE => "IPv6-Route",
            IpProtocol::IPV6_FRAG => "IPv6-Frag",
            IpProtocol::ESP => "ESP",
            IpProtocol::AH => "AH",
            IpProtocol::ICMPV6 => "IPv6-ICMP",
            IpProtocol::IPV6_NO_NXT => "IPv6-NoNxt",
            IpProtocol::IPV6_OPTS => "IPv6-Opts",
            IpProtocol::SCTP => "SCTP",
            IpProtocol(other) => return write!(f, "{other}"),
        };
        f.write_str(name)
    }
}

/// IP version of a packet, as read from the high nibble of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Peek at the version nibble of the first byte of an IP header.
///
/// Returns `None` for anything but 4 or 6.
#[inline]
pub const fn ip_version(first_byte: u8) -> Option<IpVersion> {
    match first_byte >> 4 {
        4 => Some(IpVersion::V4),
        6 => Some(IpVersion::V6),
        _ => None,
    }
}

/// Fragmentation state of an IPv4 packet or of an IPv6 packet with a Fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentInfo {
    /// Offset of this fragment's data in the original payload, in bytes (a multiple of 8).
    pub offset: u16,
    /// The "more fragments" flag.
    pub more_fragments: bool,
    /// Identification (16 bits for IPv4, 32 bits for IPv6).
    pub ident: u32,
}

impl FragmentInfo {
    /// True for the first fragment (offset 0), the only one carrying the upper-layer header.
    #[inline]
    pub const fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// What the ESP/IPsec code needs to know about an IP packet to match it against selectors.
///
/// Produced by [`IpPacket::summary`] or [`parse_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpSummary {
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol: the IPv4 protocol field, or for IPv6 the Next Header that follows
    /// the Hop-by-Hop, Routing, Fragment and Destination Options headers.
    pub protocol: IpProtocol,
    /// Offset of the upper-layer payload from the start of the IP header (IPv4 header length
    /// including options; 40 plus the extension headers for IPv6).
    pub payload_offset: usize,
    /// Offset just past the IP packet (IPv4 total length; 40 + payload length for IPv6).
    /// Bytes from here to the end of the buffer are link-layer padding.
    pub packet_end: usize,
    /// `Some` if the packet is a fragment (IPv4 MF set or offset ≠ 0; IPv6 Fragment header
    /// present). For a non-first fragment the bytes at `payload_offset` are not a header.
    pub fragment: Option<FragmentInfo>,
}

impl IpSummary {
    /// Source and destination ports for TCP, UDP and SCTP, read from `packet` (the same buffer
    /// the summary was made from). `None` for other protocols, for non-first fragments and if
    /// the payload is shorter than four bytes.
    #[inline]
    pub fn ports(&self, packet: &[u8]) -> Option<(u16, u16)> {
        if !self.protocol.has_ports() {
            return None;
        }
        if let Some(frag) = self.fragment {
            if !frag.is_first() {
                return None;
            }
        }
        let end = self.packet_end.min(packet.len());
        let p = packet.get(self.payload_offset..end)?;
        if p.len() < 4 {
            return None;
        }
        Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
    }
}

/// A checked view of either an IPv4 or an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpPacket<'a> {
    /// An IPv4 packet.
    V4(ipv4::Packet<&'a [u8]>),
    /// An IPv6 packet.
    V6(ipv6::Packet<&'a [u8]>),
}

impl<'a> IpPacket<'a> {
    /// Peek at the version nibble and run the matching `new_checked`.
    ///
    /// An empty buffer is `Truncated`, a version other than 4 or 6 is `Malformed`.
    pub fn new_checked(buffer: &'a [u8]) -> Result<Self, Error> {
        let first = *buffer.first().ok_or(Error::Truncated)?;
        match ip_version(first) {
            Some(IpVersion::V4) => ipv4::Packet::new_checked(buffer).map(IpPacket::V4),
            Some(IpVersion::V6) => ipv6::Packet::new_checked(buffer).map(IpPacket::V6),
            None => Err(Error::Malformed),
        }
    }

    /// IP version.
    #[inline]
    pub fn version(&self) -> IpVersion {
        match self {
            IpPacket::V4(_) => IpVersion::V4,
            IpPacket::V6(_) => IpVersion::V6,
        }
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> IpAddr {
        match self {
            IpPacket::V4(p) => IpAddr::V4(p.src_addr()),
            IpPacket::V6(p) => IpAddr::V6(p.src_addr()),
        }
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> IpAddr {
        match self {
            IpPacket::V4(p) => IpAddr::V4(p.dst_addr()),
            IpPacket::V6(p) => IpAddr::V6(p.dst_addr()),
        }
    }

    /// The protocol field of the fixed header (IPv6: before extension headers are skipped).
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        match self {
            IpPacket::V4(p) => p.next_header(),
            IpPacket::V6(p) => p.next_header(),
        }
    }

    /// The packet bytes, from the IP header to the end given by its length field.
    #[inline]
    pub fn packet_bytes(&self) -> &'a [u8] {
        match self {
            IpPacket::V4(p) => {
                let b = p.into_inner();
                &b[..(p.total_len() as usize).min(b.len())]
            }
            IpPacket::V6(p) => {
                let b = p.into_inner();
                &b[..(ipv6::HEADER_LEN + p.payload_len() as usize).min(b.len())]
            }
        }
    }

    /// Selector-relevant summary; for IPv6 this walks the extension headers with
    /// [`ipv6::skip_extension_headers`] and may fail on malformed ones.
    pub fn summary(&self) -> Result<IpSummary, Error> {
        match self {
            IpPacket::V4(p) => {
                let fragment = if p.more_frags() || p.frag_offset() != 0 {
                    Some(FragmentInfo {
                        offset: p.frag_offset(),
                        more_fragments: p.more_frags(),
                        ident: u32::from(p.ident()),
                    })
                } else {
                    None
                };
                Ok(IpSummary {
                    version: IpVersion::V4,
                    src: IpAddr::V4(p.src_addr()),
                    dst: IpAddr::V4(p.dst_addr()),
                    protocol: p.next_header(),
                    payload_offset: p.header_len(),
                    packet_end: p.total_len() as usize,
                    fragment,
                })
            }
            IpPacket::V6(p) => {
                let (protocol, offset, fragment) = ipv6::skip_extension_headers(p.next_header(), p.payload())?;
                Ok(IpSummary {
                    version: IpVersion::V6,
                    src: IpAddr::V6(p.src_addr()),
                    dst: IpAddr::V6(p.dst_addr()),
                    protocol,
                    payload_offset: ipv6::HEADER_LEN + offset,
                    packet_end: ipv6::HEADER_LEN + p.payload_len() as usize,
                    fragment,
                })
            }
        }
    }
}

/// Parse an untrusted buffer that starts at an IPv4 or IPv6 header and summarise it for
/// selector matching. Shorthand for `IpPacket::new_checked(buffer)?.summary()`.
pub fn parse_ip(buffer: &[u8]) -> Result<IpSummary, Error> {
    IpPacket::new_checked(buffer)?.summary()
}

/// Byte ranges of header fields.
pub(crate) mod field {
    /// A fixed field.
    pub type Field = core::ops::Range<usize>;
    /// Everything from an offset on.
    pub type Rest = core::ops::RangeFrom<usize>;
}

/// Big-endian readers and writers for fixed-size fields.
pub(crate) mod bytes {
    #[inline(always)]
    pub fn read_u16(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }

    #[inline(always)]
    pub fn read_u32(b: &[u8]) -> u32 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    #[inline(always)]
    pub fn write_u16(b: &mut [u8], v: u16) {
        b[..2].copy_from_slice(&v.to_be_bytes());
    }

    #[inline(always)]
    pub fn write_u32(b: &mut [u8], v: u32) {
        b[..4].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
pub(crate) mod testdata;
#[cfg(test)]
mod testdata_captured;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use std::string::ToString;

    #[test]
    fn error_display_and_source() {
        assert_eq!(Error::Truncated.to_string(), "truncated packet");
        assert_eq!(Error::Malformed.to_string(), "malformed packet");
        assert_eq!(Error::TooManyHeaders.to_string(), "too many stacked headers");
        let e: &dyn core::error::Error = &Error::Truncated;
        assert!(e.source().is_none());
    }

    #[test]
    fn protocol_names() {
        assert_eq!(IpProtocol::ESP.to_string(), "ESP");
        assert_eq!(IpProtocol(253).to_string(), "253");
        assert_eq!(u8::from(IpProtocol::ICMPV6), 58);
        assert_eq!(IpProtocol::from(51), IpProtocol::AH);
        assert!(IpProtocol::UDP.has_ports() && !IpProtocol::ESP.has_ports());
    }

    #[test]
    fn version_peek() {
        assert_eq!(ip_version(0x45), Some(IpVersion::V4));
        assert_eq!(ip_version(0x4f), Some(IpVersion::V4));
        assert_eq!(ip_version(0x60), Some(IpVersion::V6));
        for b in [0x00u8, 0x15, 0x50, 0x7f, 0xff] {
            assert_eq!(ip_version(b), None);
        }
    }

    #[test]
    fn summary_ipv4_udp() {
        let s = parse_ip(&DNS_QUERY).unwrap();
        assert_eq!(s.version, IpVersion::V4);
        assert_eq!(s.src, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 100)));
        assert_eq!(s.dst, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(s.protocol, IpProtocol::UDP);
        assert_eq!(s.payload_offset, 20);
        assert_eq!(s.packet_end, DNS_QUERY.len());
        assert_eq!(s.fragment, None);
        assert_eq!(s.ports(&DNS_QUERY), Some((51234, 53)));
    }

    #[test]
    fn summary_ipv4_with_options_and_padding() {
        let s = parse_ip(&IGMP_WITH_OPTIONS).unwrap();
        assert_eq!(s.payload_offset, 24);
        assert_eq!(s.protocol, IpProtocol::IGMP);
        assert_eq!(s.ports(&IGMP_WITH_OPTIONS), None);

        let ip = &KEEPALIVE_FRAME[14..];
        let p = IpPacket::new_checked(ip).unwrap();
        let s = p.summary().unwrap();
        assert_eq!(s.packet_end, 29);
        assert_eq!(p.packet_bytes().len(), 29);
        assert_eq!(s.ports(ip), Some((4500, 4500)));
    }

    #[test]
    fn summary_ipv6_hbh_and_fragments() {
        let p = IpPacket::new_checked(&MLD_HBH).unwrap();
        assert_eq!(p.version(), IpVersion::V6);
        assert_eq!(p.next_header(), IpProtocol::HOP_BY_HOP);
        assert_eq!(p.dst_addr(), IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16)));
        let s = p.summary().unwrap();
        assert_eq!(s.protocol, IpProtocol::ICMPV6);
        assert_eq!(s.payload_offset, 48);
        assert_eq!(s.packet_end, MLD_HBH.len());

        let s = parse_ip(&V6_FRAG_FIRST).unwrap();
        assert_eq!(s.protocol, IpProtocol::UDP);
        assert_eq!(s.payload_offset, 48);
        let f = s.fragment.unwrap();
        assert!(f.is_first() && f.more_fragments);
        assert_eq!(f.ident, 0x8a61_c0de);
        assert_eq!(s.ports(&V6_FRAG_FIRST), Some((40000, 5001)));

        let s = parse_ip(&V6_FRAG_SECOND).unwrap();
        let f = s.fragment.unwrap();
        assert_eq!((f.offset, f.more_fragments), (24, false));
        assert_eq!(s.ports(&V6_FRAG_SECOND), None);
    }

    #[test]
    fn summary_ipv4_fragment_has_no_ports() {
        let mut b = DNS_QUERY;
        let mut p = ipv4::Packet::new_unchecked(&mut b[..]);
        p.set_frag_offset(8);
        p.fill_checksum();
        let s = parse_ip(&b).unwrap();
        assert_eq!(s.fragment, Some(FragmentInfo { offset: 8, more_fragments: false, ident: 0xa7d3 }));
        assert_eq!(s.ports(&b), None);
    }

    #[test]
    fn ip_packet_rejects() {
        assert_eq!(IpPacket::new_checked(&[]), Err(Error::Truncated));
        assert_eq!(IpPacket::new_checked(&[0x50; 40]), Err(Error::Malformed));
        for len in 0..DNS_QUERY.len() {
            assert!(parse_ip(&DNS_QUERY[..len]).is_err(), "len {len}");
        }
        for len in 0..V6_FRAG_FIRST.len() {
            assert!(parse_ip(&V6_FRAG_FIRST[..len]).is_err(), "len {len}");
        }
    }
}
