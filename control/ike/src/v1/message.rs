//! ISAKMP message codec (RFC 2408 §3) with the IPsec DOI (RFC 2407 §4.6) and the NAT-T payloads
//! of RFC 3947 (NAT-D = 20, NAT-OA = 21).
//!
//! # Contract
//!
//! * [`Message::parse`] and [`parse_chain`] take untrusted bytes, are bounds-checked everywhere
//!   and never panic; they return [`ParseError`], which maps to the ISAKMP notification to send
//!   ([`ParseError::notify`]).
//! * The representation is lossless for everything that parses: parse → emit → parse gives the
//!   same value (checked by the `ikev1_message` cargo-fuzz target). Reserved fields are emitted as
//!   zero. TV and TLV attribute encodings are kept apart ([`AttrValue`]).
//! * An encrypted message (flag [`FLAG_ENCRYPTION`]) parses to [`Body::Encrypted`]: the
//!   ciphertext after the header. Decrypting it and parsing the payloads (with trailing padding
//!   allowed) is the SA's business ([`crate::v1::sa`]).
//! * Payload bodies that some hashes cover (SA, ID, nonce) are kept so that they re-emit to the
//!   same octets; [`Payload::body`] gives those octets.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// ISAKMP header length.
pub const HEADER_LEN: usize = 28;
/// Generic payload header length.
pub const GENERIC_LEN: usize = 4;
/// Version octet: major 1, minor 0.
pub const VERSION: u8 = 0x10;

/// Header flag: the payloads after the header are encrypted.
pub const FLAG_ENCRYPTION: u8 = 0x01;
/// Header flag: commit.
pub const FLAG_COMMIT: u8 = 0x02;
/// Header flag: authentication only.
pub const FLAG_AUTH_ONLY: u8 = 0x04;

/// The IPsec DOI (RFC 2407).
pub const DOI_IPSEC: u32 = 1;
/// SIT_IDENTITY_ONLY (RFC 2407 §4.2).
pub const SIT_IDENTITY_ONLY: u32 = 1;

/// Exchange types (RFC 2408 §3.1, RFC 2409).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeType(pub u8);

impl ExchangeType {
    /// Base.
    pub const BASE: ExchangeType = ExchangeType(1);
    /// Identity protection (IKE main mode).
    pub const MAIN: ExchangeType = ExchangeType(2);
    /// Authentication only.
    pub const AUTH_ONLY: ExchangeType = ExchangeType(3);
    /// Aggressive (IKE aggressive mode).
    pub const AGGRESSIVE: ExchangeType = ExchangeType(4);
    /// Informational.
    pub const INFORMATIONAL: ExchangeType = ExchangeType(5);
    /// IKE quick mode.
    pub const QUICK: ExchangeType = ExchangeType(32);
}

/// Payload types (RFC 2408 §3.1, RFC 3947).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PayloadType(pub u8);

impl PayloadType {
    /// No next payload.
    pub const NONE: PayloadType = PayloadType(0);
    /// Security Association.
    pub const SA: PayloadType = PayloadType(1);
    /// Proposal (only inside SA).
    pub const PROPOSAL: PayloadType = PayloadType(2);
    /// Transform (only inside a proposal).
    pub const TRANSFORM: PayloadType = PayloadType(3);
    /// Key Exchange.
    pub const KE: PayloadType = PayloadType(4);
    /// Identification.
    pub const ID: PayloadType = PayloadType(5);
    /// Hash.
    pub const HASH: PayloadType = PayloadType(8);
    /// Nonce.
    pub const NONCE: PayloadType = PayloadType(10);
    /// Notification.
    pub const NOTIFICATION: PayloadType = PayloadType(11);
    /// Delete.
    pub const DELETE: PayloadType = PayloadType(12);
    /// Vendor ID.
    pub const VENDOR_ID: PayloadType = PayloadType(13);
    /// NAT-D (RFC 3947).
    pub const NAT_D: PayloadType = PayloadType(20);
    /// NAT-OA (RFC 3947).
    pub const NAT_OA: PayloadType = PayloadType(21);
}

/// Protocol IDs (RFC 2407 §4.4.1).
pub mod protocol {
    /// PROTO_ISAKMP.
    pub const ISAKMP: u8 = 1;
    /// PROTO_IPSEC_AH.
    pub const AH: u8 = 2;
    /// PROTO_IPSEC_ESP.
    pub const ESP: u8 = 3;
}

/// Identification types (RFC 2407 §4.6.2.1).
pub mod id_type {
    /// ID_IPV4_ADDR.
    pub const IPV4_ADDR: u8 = 1;
    /// ID_FQDN.
    pub const FQDN: u8 = 2;
    /// ID_USER_FQDN.
    pub const USER_FQDN: u8 = 3;
    /// ID_IPV4_ADDR_SUBNET.
    pub const IPV4_ADDR_SUBNET: u8 = 4;
    /// ID_IPV6_ADDR.
    pub const IPV6_ADDR: u8 = 5;
    /// ID_IPV6_ADDR_SUBNET.
    pub const IPV6_ADDR_SUBNET: u8 = 6;
    /// ID_IPV4_ADDR_RANGE.
    pub const IPV4_ADDR_RANGE: u8 = 7;
    /// ID_IPV6_ADDR_RANGE.
    pub const IPV6_ADDR_RANGE: u8 = 8;
    /// ID_KEY_ID.
    pub const KEY_ID: u8 = 11;
}

/// Notify message types used here (RFC 2408 §3.14.1, RFC 2407 §4.6.3, RFC 3706).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NotifyType(pub u16);

impl NotifyType {
    /// INVALID-PAYLOAD-TYPE.
    pub const INVALID_PAYLOAD_TYPE: NotifyType = NotifyType(1);
    /// DOI-NOT-SUPPORTED.
    pub const DOI_NOT_SUPPORTED: NotifyType = NotifyType(2);
    /// SITUATION-NOT-SUPPORTED.
    pub const SITUATION_NOT_SUPPORTED: NotifyType = NotifyType(3);
    /// INVALID-COOKIE.
    pub const INVALID_COOKIE: NotifyType = NotifyType(4);
    /// INVALID-MAJOR-VERSION.
    pub const INVALID_MAJOR_VERSION: NotifyType = NotifyType(5);
    /// INVALID-EXCHANGE-TYPE.
    pub const INVALID_EXCHANGE_TYPE: NotifyType = NotifyType(7);
    /// INVALID-FLAGS.
    pub const INVALID_FLAGS: NotifyType = NotifyType(8);
    /// INVALID-MESSAGE-ID.
    pub const INVALID_MESSAGE_ID: NotifyType = NotifyType(9);
    /// INVALID-KEY-INFORMATION.
    pub const INVALID_KEY_INFORMATION: NotifyType = NotifyType(17);
    /// NO-PROPOSAL-CHOSEN.
    pub const NO_PROPOSAL_CHOSEN: NotifyType = NotifyType(14);
    /// PAYLOAD-MALFORMED.
    pub const PAYLOAD_MALFORMED: NotifyType = NotifyType(16);
    /// INVALID-ID-INFORMATION.
    pub const INVALID_ID_INFORMATION: NotifyType = NotifyType(18);
    /// AUTHENTICATION-FAILED.
    pub const AUTHENTICATION_FAILED: NotifyType = NotifyType(24);
    /// INVALID-HASH-INFORMATION.
    pub const INVALID_HASH_INFORMATION: NotifyType = NotifyType(23);
    /// INITIAL-CONTACT (IPsec DOI).
    pub const INITIAL_CONTACT: NotifyType = NotifyType(24578);
    /// R-U-THERE (RFC 3706).
    pub const R_U_THERE: NotifyType = NotifyType(36136);
    /// R-U-THERE-ACK (RFC 3706).
    pub const R_U_THERE_ACK: NotifyType = NotifyType(36137);
}

/// Why bytes did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than a header or than a length field says.
    Truncated,
    /// A length field is smaller than its fixed part or runs past its container.
    BadLength,
    /// Major version is not 1.
    BadVersion(u8),
    /// A DOI other than IPsec in an SA payload.
    UnsupportedDoi(u32),
    /// Proposal or transform chain malformed (wrong next-payload inside an SA).
    BadProposalChain,
    /// Bytes after the last payload in a message without encryption.
    TrailingData,
}

impl ParseError {
    /// The ISAKMP notification this error calls for.
    #[must_use]
    pub fn notify(self) -> NotifyType {
        match self {
            ParseError::BadVersion(_) => NotifyType::INVALID_MAJOR_VERSION,
            ParseError::UnsupportedDoi(_) => NotifyType::DOI_NOT_SUPPORTED,
            _ => NotifyType::PAYLOAD_MALFORMED,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => f.write_str("truncated ISAKMP message"),
            ParseError::BadLength => f.write_str("bad length field"),
            ParseError::BadVersion(v) => write!(f, "unsupported ISAKMP version {v:#04x}"),
            ParseError::UnsupportedDoi(d) => write!(f, "unsupported DOI {d}"),
            ParseError::BadProposalChain => f.write_str("malformed proposal/transform chain"),
            ParseError::TrailingData => f.write_str("data after the last payload"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Why a representation did not emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitError {
    /// A payload, attribute, SPI or the message is longer than its length field allows.
    TooLong,
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ISAKMP field too long to encode")
    }
}

impl std::error::Error for EmitError {}

/// The ISAKMP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Initiator cookie.
    pub cookie_i: u64,
    /// Responder cookie (0 in the first message).
    pub cookie_r: u64,
    /// Type of the first payload.
    pub next_payload: PayloadType,
    /// Version octet (major in the high nibble).
    pub version: u8,
    /// Exchange type.
    pub exchange: ExchangeType,
    /// Flags ([`FLAG_ENCRYPTION`], ...).
    pub flags: u8,
    /// Message ID (0 in phase 1).
    pub message_id: u32,
    /// Total length including the header.
    pub length: u32,
}

impl Header {
    /// A header with version 1.0 and zero length (set by emit).
    #[must_use]
    pub fn new(cookie_i: u64, cookie_r: u64, exchange: ExchangeType, flags: u8, message_id: u32) -> Self {
        Header {
            cookie_i,
            cookie_r,
            next_payload: PayloadType::NONE,
            version: VERSION,
            exchange,
            flags,
            message_id,
            length: 0,
        }
    }

    /// Parses the header of `buf` and checks the version and that `length` fits `buf`.
    ///
    /// # Errors
    /// [`ParseError::Truncated`], [`ParseError::BadLength`], [`ParseError::BadVersion`].
    pub fn parse(buf: &[u8]) -> Result<Header, ParseError> {
        let b: &[u8; HEADER_LEN] =
            buf.get(..HEADER_LEN).and_then(|s| s.try_into().ok()).ok_or(ParseError::Truncated)?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at =
            |i: usize| u64::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
        let h = Header {
            cookie_i: u64_at(0),
            cookie_r: u64_at(8),
            next_payload: PayloadType(b[16]),
            version: b[17],
            exchange: ExchangeType(b[18]),
            flags: b[19],
            message_id: u32_at(20),
            length: u32_at(24),
        };
        if h.version >> 4 != 1 {
            return Err(ParseError::BadVersion(h.version));
        }
        let len = usize::try_from(h.length).map_err(|_| ParseError::BadLength)?;
        if len < HEADER_LEN {
            return Err(ParseError::BadLength);
        }
        if len > buf.len() {
            return Err(ParseError::Truncated);
        }
        Ok(h)
    }

    /// Appends the 28 header octets.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.cookie_i.to_be_bytes());
        out.extend_from_slice(&self.cookie_r.to_be_bytes());
        out.push(self.next_payload.0);
        out.push(self.version);
        out.push(self.exchange.0);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// A data attribute value: TV (2-octet value, AF bit set) or TLV (variable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// Basic (TV) form.
    Basic(u16),
    /// Variable (TLV) form.
    Variable(Vec<u8>),
}

/// A data attribute (RFC 2408 §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute type (without the AF bit).
    pub kind: u16,
    /// Value.
    pub value: AttrValue,
}

impl Attribute {
    /// A basic attribute.
    #[must_use]
    pub fn basic(kind: u16, value: u16) -> Self {
        Attribute { kind, value: AttrValue::Basic(value) }
    }

    /// The value as an integer (basic, or variable of at most 8 octets).
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match &self.value {
            AttrValue::Basic(v) => Some(u64::from(*v)),
            AttrValue::Variable(b) if b.len() <= 8 => Some(b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x))),
            AttrValue::Variable(_) => None,
        }
    }
}

/// A transform payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    /// Transform number.
    pub number: u8,
    /// Transform ID (KEY_IKE = 1 in phase 1, ESP_* in phase 2).
    pub id: u8,
    /// SA attributes.
    pub attributes: Vec<Attribute>,
}

impl Transform {
    /// The first attribute of `kind`, as an integer.
    #[must_use]
    pub fn attr(&self, kind: u16) -> Option<u64> {
        self.attributes.iter().find(|a| a.kind == kind).and_then(Attribute::as_u64)
    }
}

/// A proposal payload with its transforms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number (equal numbers are ANDed, RFC 2408 §4.2).
    pub number: u8,
    /// Protocol ([`protocol::ISAKMP`], [`protocol::ESP`]).
    pub protocol: u8,
    /// SPI (empty in phase 1, 4 octets for ESP).
    pub spi: Vec<u8>,
    /// Transforms (alternatives).
    pub transforms: Vec<Transform>,
}

/// The SA payload (IPsec DOI: a 4-octet situation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaPayload {
    /// Situation bitmap.
    pub situation: u32,
    /// Proposals.
    pub proposals: Vec<Proposal>,
}

/// An ID payload (RFC 2407 §4.6.2). Kept as type + octets so that it re-emits identically (the
/// phase-1 HASH covers its body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPayload {
    /// ID type ([`id_type`]).
    pub id_type: u8,
    /// IP protocol (0 = any).
    pub protocol: u8,
    /// Port (0 = any).
    pub port: u16,
    /// Identification data.
    pub data: Vec<u8>,
}

impl IdPayload {
    /// An address identity (ID_IPV4_ADDR or ID_IPV6_ADDR).
    #[must_use]
    pub fn address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => IdPayload { id_type: id_type::IPV4_ADDR, protocol: 0, port: 0, data: a.octets().to_vec() },
            IpAddr::V6(a) => IdPayload { id_type: id_type::IPV6_ADDR, protocol: 0, port: 0, data: a.octets().to_vec() },
        }
    }

    /// The phase-1 identity for an IKEv2-style [`crate::message::Identification`] (as the
    /// daemon's configuration parses `LocalId`/`RemoteId`): the IPsec DOI numbers ID_IPV4_ADDR,
    /// ID_FQDN, ID_USER_FQDN, ID_IPV6_ADDR, ID_DER_ASN1_DN/GN and ID_KEY_ID as IKEv2 does.
    #[must_use]
    pub fn from_identification(id: &crate::message::Identification) -> Self {
        use crate::message::Identification as I;
        let (id_type, data) = match id {
            I::Ipv4(a) => (id_type::IPV4_ADDR, a.octets().to_vec()),
            I::Ipv6(a) => (id_type::IPV6_ADDR, a.octets().to_vec()),
            I::Fqdn(d) => (id_type::FQDN, d.clone()),
            I::Rfc822(d) => (id_type::USER_FQDN, d.clone()),
            I::KeyId(d) => (id_type::KEY_ID, d.clone()),
            I::DerAsn1Dn(d) => (9, d.clone()),
            I::DerAsn1Gn(d) => (10, d.clone()),
            I::Other { id_type, data } => (*id_type, data.clone()),
        };
        IdPayload { id_type, protocol: 0, port: 0, data }
    }

    /// A subnet identity for quick mode (ID_IPV4_ADDR_SUBNET / ID_IPV6_ADDR_SUBNET).
    #[must_use]
    pub fn subnet(net: Subnet) -> Self {
        match net.addr {
            IpAddr::V4(a) => {
                let mut data = a.octets().to_vec();
                data.extend_from_slice(&prefix_mask::<4>(net.prefix));
                IdPayload { id_type: id_type::IPV4_ADDR_SUBNET, protocol: 0, port: 0, data }
            }
            IpAddr::V6(a) => {
                let mut data = a.octets().to_vec();
                data.extend_from_slice(&prefix_mask::<16>(net.prefix));
                IdPayload { id_type: id_type::IPV6_ADDR_SUBNET, protocol: 0, port: 0, data }
            }
        }
    }

    /// The subnet this ID denotes (address IDs are host subnets), if it is one with a contiguous
    /// mask.
    #[must_use]
    pub fn as_subnet(&self) -> Option<Subnet> {
        let d = &self.data[..];
        let (addr, prefix) = match (self.id_type, d.len()) {
            (id_type::IPV4_ADDR, 4) => (IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3])), 32),
            (id_type::IPV6_ADDR, 16) => (IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(d).ok()?)), 128),
            (id_type::IPV4_ADDR_SUBNET, 8) => {
                (IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3])), mask_prefix(&d[4..])?)
            }
            (id_type::IPV6_ADDR_SUBNET, 32) => {
                (IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&d[..16]).ok()?)), mask_prefix(&d[16..])?)
            }
            _ => return None,
        };
        Some(Subnet::new(addr, prefix))
    }
}

/// An IP subnet (address masked to `prefix` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// `addr/prefix`, masked; `prefix` is clamped to the family's width.
    #[must_use]
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let p = prefix.min(32);
                let m = prefix_mask::<4>(p);
                let o = a.octets();
                Subnet {
                    addr: IpAddr::V4(Ipv4Addr::from(core::array::from_fn::<u8, 4, _>(|i| o[i] & m[i]))),
                    prefix: p,
                }
            }
            IpAddr::V6(a) => {
                let p = prefix.min(128);
                let m = prefix_mask::<16>(p);
                let o = a.octets();
                Subnet {
                    addr: IpAddr::V6(Ipv6Addr::from(core::array::from_fn::<u8, 16, _>(|i| o[i] & m[i]))),
                    prefix: p,
                }
            }
        }
    }

    /// Whether `other` lies within this subnet.
    #[must_use]
    pub fn contains(&self, other: &Subnet) -> bool {
        other.prefix >= self.prefix
            && self.addr.is_ipv4() == other.addr.is_ipv4()
            && Subnet::new(other.addr, self.prefix).addr == self.addr
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_mask<const N: usize>(prefix: u8) -> [u8; N] {
    let mut m = [0u8; N];
    let mut left = usize::from(prefix);
    for b in &mut m {
        let take = left.min(8);
        *b = if take == 0 { 0 } else { 0xffu8 << (8 - take) };
        left -= take;
    }
    m
}

fn mask_prefix(mask: &[u8]) -> Option<u8> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let p = u8::try_from(ones).ok()?;
    let ok = match mask.len() {
        4 => prefix_mask::<4>(p)[..] == *mask,
        16 => prefix_mask::<16>(p)[..] == *mask,
        _ => false,
    };
    ok.then_some(p)
}

/// A notification payload (RFC 2408 §3.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// DOI (IPsec).
    pub doi: u32,
    /// Protocol ID.
    pub protocol: u8,
    /// SPI (phase 1: both cookies, 16 octets, or empty).
    pub spi: Vec<u8>,
    /// Notify message type.
    pub kind: NotifyType,
    /// Notification data.
    pub data: Vec<u8>,
}

/// A delete payload (RFC 2408 §3.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// DOI (IPsec).
    pub doi: u32,
    /// Protocol ID.
    pub protocol: u8,
    /// SPI size (16 for ISAKMP cookies, 4 for ESP).
    pub spi_size: u8,
    /// The SPIs, each `spi_size` octets.
    pub spis: Vec<Vec<u8>>,
}

/// A NAT-OA payload (RFC 3947 §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatOa {
    /// ID_IPV4_ADDR or ID_IPV6_ADDR.
    pub id_type: u8,
    /// The address octets.
    pub data: Vec<u8>,
}

/// A payload of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Security Association.
    Sa(SaPayload),
    /// Key exchange data.
    Ke(Vec<u8>),
    /// Identification.
    Id(IdPayload),
    /// Hash data.
    Hash(Vec<u8>),
    /// Nonce data.
    Nonce(Vec<u8>),
    /// Notification.
    Notification(Notification),
    /// Delete.
    Delete(Delete),
    /// Vendor ID.
    VendorId(Vec<u8>),
    /// NAT-D hash.
    NatD(Vec<u8>),
    /// NAT original address.
    NatOa(NatOa),
    /// Any other payload, kept opaque (certificates, signatures, ...).
    Unknown {
        /// Payload type.
        kind: PayloadType,
        /// Body.
        data: Vec<u8>,
    },
}

impl Payload {
    /// This payload's type.
    #[must_use]
    pub fn kind(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::Id(_) => PayloadType::ID,
            Payload::Hash(_) => PayloadType::HASH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notification(_) => PayloadType::NOTIFICATION,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::NatD(_) => PayloadType::NAT_D,
            Payload::NatOa(_) => PayloadType::NAT_OA,
            Payload::Unknown { kind, .. } => *kind,
        }
    }

    /// The payload body (without the generic header), as emitted: what SAi_b, IDii_b, Ni_b
    /// denote in RFC 2409.
    ///
    /// # Errors
    /// [`EmitError::TooLong`] if a part exceeds its length field.
    pub fn body(&self) -> Result<Vec<u8>, EmitError> {
        let mut out = Vec::new();
        self.emit_body(&mut out)?;
        Ok(out)
    }

    fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        match self {
            Payload::Sa(sa) => {
                out.extend_from_slice(&DOI_IPSEC.to_be_bytes());
                out.extend_from_slice(&sa.situation.to_be_bytes());
                for (i, p) in sa.proposals.iter().enumerate() {
                    let next = if i + 1 < sa.proposals.len() { PayloadType::PROPOSAL } else { PayloadType::NONE };
                    emit_proposal(p, next, out)?;
                }
            }
            Payload::Ke(d) | Payload::Hash(d) | Payload::Nonce(d) | Payload::VendorId(d) | Payload::NatD(d) => {
                out.extend_from_slice(d);
            }
            Payload::Unknown { data, .. } => out.extend_from_slice(data),
            Payload::Id(id) => {
                out.push(id.id_type);
                out.push(id.protocol);
                out.extend_from_slice(&id.port.to_be_bytes());
                out.extend_from_slice(&id.data);
            }
            Payload::NatOa(oa) => {
                out.extend_from_slice(&[oa.id_type, 0, 0, 0]);
                out.extend_from_slice(&oa.data);
            }
            Payload::Notification(n) => {
                out.extend_from_slice(&n.doi.to_be_bytes());
                out.push(n.protocol);
                out.push(u8::try_from(n.spi.len()).map_err(|_| EmitError::TooLong)?);
                out.extend_from_slice(&n.kind.0.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.extend_from_slice(&d.doi.to_be_bytes());
                out.push(d.protocol);
                out.push(d.spi_size);
                out.extend_from_slice(&u16::try_from(d.spis.len()).map_err(|_| EmitError::TooLong)?.to_be_bytes());
                for s in &d.spis {
                    if s.len() != usize::from(d.spi_size) {
                        return Err(EmitError::TooLong);
                    }
                    out.extend_from_slice(s);
                }
            }
        }
        Ok(())
    }
}

fn emit_generic(
    next: PayloadType,
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EmitError>,
) -> Result<(), EmitError> {
    let start = out.len();
    out.extend_from_slice(&[next.0, 0, 0, 0]);
    body(out)?;
    let len = u16::try_from(out.len() - start).map_err(|_| EmitError::TooLong)?;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn emit_proposal(p: &Proposal, next: PayloadType, out: &mut Vec<u8>) -> Result<(), EmitError> {
    emit_generic(next, out, |out| {
        out.push(p.number);
        out.push(p.protocol);
        out.push(u8::try_from(p.spi.len()).map_err(|_| EmitError::TooLong)?);
        out.push(u8::try_from(p.transforms.len()).map_err(|_| EmitError::TooLong)?);
        out.extend_from_slice(&p.spi);
        for (i, t) in p.transforms.iter().enumerate() {
            let next = if i + 1 < p.transforms.len() { PayloadType::TRANSFORM } else { PayloadType::NONE };
            emit_generic(next, out, |out| {
                out.extend_from_slice(&[t.number, t.id, 0, 0]);
                for a in &t.attributes {
                    match &a.value {
                        AttrValue::Basic(v) => {
                            out.extend_from_slice(&(a.kind | 0x8000).to_be_bytes());
                            out.extend_from_slice(&v.to_be_bytes());
                        }
                        AttrValue::Variable(v) => {
                            out.extend_from_slice(&(a.kind & 0x7fff).to_be_bytes());
                            out.extend_from_slice(
                                &u16::try_from(v.len()).map_err(|_| EmitError::TooLong)?.to_be_bytes(),
                            );
                            out.extend_from_slice(v);
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    })
}

/// Emits `payloads` as a chain; returns the type of the first (for the header's Next Payload).
///
/// # Errors
/// [`EmitError::TooLong`].
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) -> Result<PayloadType, EmitError> {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(PayloadType::NONE, Payload::kind);
        emit_generic(next, out, |out| p.emit_body(out))?;
    }
    Ok(payloads.first().map_or(PayloadType::NONE, Payload::kind))
}

/// Splits one generic payload off `buf`: (next type, body, rest).
fn split_generic(buf: &[u8]) -> Result<(PayloadType, &[u8], &[u8]), ParseError> {
    let h = buf.get(..GENERIC_LEN).ok_or(ParseError::Truncated)?;
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if len < GENERIC_LEN {
        return Err(ParseError::BadLength);
    }
    let all = buf.get(..len).ok_or(ParseError::Truncated)?;
    Ok((PayloadType(h[0]), &all[GENERIC_LEN..], &buf[len..]))
}

fn be_u32(b: &[u8]) -> Result<u32, ParseError> {
    let a: [u8; 4] = b.get(..4).and_then(|s| s.try_into().ok()).ok_or(ParseError::Truncated)?;
    Ok(u32::from_be_bytes(a))
}

fn be_u16(b: &[u8]) -> Result<u16, ParseError> {
    let a: [u8; 2] = b.get(..2).and_then(|s| s.try_into().ok()).ok_or(ParseError::Truncated)?;
    Ok(u16::from_be_bytes(a))
}

fn parse_transform(body: &[u8]) -> Result<Transform, ParseError> {
    let h = body.get(..4).ok_or(ParseError::Truncated)?;
    let mut rest = &body[4..];
    let mut attributes = Vec::new();
    while !rest.is_empty() {
        let t = be_u16(rest)?;
        let v = be_u16(rest.get(2..).ok_or(ParseError::Truncated)?)?;
        if t & 0x8000 != 0 {
            attributes.push(Attribute { kind: t & 0x7fff, value: AttrValue::Basic(v) });
            rest = &rest[4..];
        } else {
            let end = 4 + usize::from(v);
            let data = rest.get(4..end).ok_or(ParseError::Truncated)?;
            attributes.push(Attribute { kind: t, value: AttrValue::Variable(data.to_vec()) });
            rest = &rest[end..];
        }
    }
    Ok(Transform { number: h[0], id: h[1], attributes })
}

fn parse_proposal(body: &[u8]) -> Result<Proposal, ParseError> {
    let h = body.get(..4).ok_or(ParseError::Truncated)?;
    let spi_len = usize::from(h[2]);
    let count = usize::from(h[3]);
    let spi = body.get(4..4 + spi_len).ok_or(ParseError::Truncated)?.to_vec();
    let mut rest = &body[4 + spi_len..];
    let mut transforms = Vec::new();
    let mut next = if rest.is_empty() { PayloadType::NONE } else { PayloadType::TRANSFORM };
    while next != PayloadType::NONE {
        if next != PayloadType::TRANSFORM {
            return Err(ParseError::BadProposalChain);
        }
        let (n, tb, r) = split_generic(rest)?;
        transforms.push(parse_transform(tb)?);
        next = n;
        rest = r;
    }
    if !rest.is_empty() || transforms.len() != count {
        return Err(ParseError::BadProposalChain);
    }
    Ok(Proposal { number: h[0], protocol: h[1], spi, transforms })
}

fn parse_payload(kind: PayloadType, body: &[u8]) -> Result<Payload, ParseError> {
    Ok(match kind {
        PayloadType::SA => {
            let doi = be_u32(body)?;
            if doi != DOI_IPSEC {
                return Err(ParseError::UnsupportedDoi(doi));
            }
            let situation = be_u32(body.get(4..).ok_or(ParseError::Truncated)?)?;
            let mut rest = &body[8..];
            let mut proposals = Vec::new();
            let mut next = if rest.is_empty() { PayloadType::NONE } else { PayloadType::PROPOSAL };
            while next != PayloadType::NONE {
                if next != PayloadType::PROPOSAL {
                    return Err(ParseError::BadProposalChain);
                }
                let (n, pb, r) = split_generic(rest)?;
                proposals.push(parse_proposal(pb)?);
                next = n;
                rest = r;
            }
            if !rest.is_empty() {
                return Err(ParseError::BadProposalChain);
            }
            Payload::Sa(SaPayload { situation, proposals })
        }
        PayloadType::KE => Payload::Ke(body.to_vec()),
        PayloadType::ID => {
            let h = body.get(..4).ok_or(ParseError::Truncated)?;
            Payload::Id(IdPayload {
                id_type: h[0],
                protocol: h[1],
                port: u16::from_be_bytes([h[2], h[3]]),
                data: body[4..].to_vec(),
            })
        }
        PayloadType::HASH => Payload::Hash(body.to_vec()),
        PayloadType::NONCE => Payload::Nonce(body.to_vec()),
        PayloadType::NOTIFICATION => {
            let h = body.get(..8).ok_or(ParseError::Truncated)?;
            let spi_len = usize::from(h[5]);
            let spi = body.get(8..8 + spi_len).ok_or(ParseError::Truncated)?;
            Payload::Notification(Notification {
                doi: be_u32(h)?,
                protocol: h[4],
                spi: spi.to_vec(),
                kind: NotifyType(u16::from_be_bytes([h[6], h[7]])),
                data: body[8 + spi_len..].to_vec(),
            })
        }
        PayloadType::DELETE => {
            let h = body.get(..8).ok_or(ParseError::Truncated)?;
            let size = usize::from(h[5]);
            let n = usize::from(u16::from_be_bytes([h[6], h[7]]));
            let rest = &body[8..];
            if size.checked_mul(n) != Some(rest.len()) || (size == 0 && !rest.is_empty()) {
                return Err(ParseError::BadLength);
            }
            let spis = if size == 0 { vec![Vec::new(); n] } else { rest.chunks(size).map(<[u8]>::to_vec).collect() };
            Payload::Delete(Delete { doi: be_u32(h)?, protocol: h[4], spi_size: h[5], spis })
        }
        PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
        PayloadType::NAT_D => Payload::NatD(body.to_vec()),
        PayloadType::NAT_OA => {
            let h = body.get(..4).ok_or(ParseError::Truncated)?;
            Payload::NatOa(NatOa { id_type: h[0], data: body[4..].to_vec() })
        }
        PayloadType::PROPOSAL | PayloadType::TRANSFORM => return Err(ParseError::BadProposalChain),
        other => Payload::Unknown { kind: other, data: body.to_vec() },
    })
}

/// Parses a payload chain starting with a payload of type `first`. With `allow_trailing` (the
/// decrypted body of an encrypted message, which ends in CBC padding) octets after the last
/// payload are ignored; otherwise they are an error.
///
/// # Errors
/// Any [`ParseError`].
pub fn parse_chain(first: PayloadType, mut buf: &[u8], allow_trailing: bool) -> Result<Vec<Payload>, ParseError> {
    let mut out = Vec::new();
    let mut kind = first;
    while kind != PayloadType::NONE {
        let (next, body, rest) = split_generic(buf)?;
        out.push(parse_payload(kind, body)?);
        kind = next;
        buf = rest;
    }
    if !allow_trailing && !buf.is_empty() {
        return Err(ParseError::TrailingData);
    }
    Ok(out)
}

/// The part of a message after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Plain payloads.
    Plain(Vec<Payload>),
    /// Ciphertext (the header has [`FLAG_ENCRYPTION`]).
    Encrypted(Vec<u8>),
}

/// An ISAKMP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header (`length` and, for plain bodies, `next_payload` are set by [`Message::emit`]).
    pub header: Header,
    /// Payloads or ciphertext.
    pub body: Body,
}

impl Message {
    /// Parses a whole message (octets after `header.length` are ignored, as in a UDP datagram
    /// they cannot occur).
    ///
    /// # Errors
    /// Any [`ParseError`].
    pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
        let header = Header::parse(buf)?;
        let len = usize::try_from(header.length).map_err(|_| ParseError::BadLength)?;
        let rest = buf.get(HEADER_LEN..len).ok_or(ParseError::Truncated)?;
        let body = if header.flags & FLAG_ENCRYPTION != 0 {
            Body::Encrypted(rest.to_vec())
        } else {
            Body::Plain(parse_chain(header.next_payload, rest, false)?)
        };
        Ok(Message { header, body })
    }

    /// Emits the message, setting `length` and (for plain bodies) `next_payload` and clearing the
    /// encryption flag (set for encrypted bodies).
    ///
    /// # Errors
    /// [`EmitError::TooLong`].
    pub fn emit(&self) -> Result<Vec<u8>, EmitError> {
        let mut h = self.header;
        let mut body = Vec::new();
        match &self.body {
            Body::Plain(p) => {
                h.next_payload = emit_chain(p, &mut body)?;
                h.flags &= !FLAG_ENCRYPTION;
            }
            Body::Encrypted(c) => {
                body.extend_from_slice(c);
                h.flags |= FLAG_ENCRYPTION;
            }
        }
        h.length = u32::try_from(HEADER_LEN + body.len()).map_err(|_| EmitError::TooLong)?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        h.emit(&mut out);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let t = Transform {
            number: 1,
            id: 1,
            attributes: vec![
                Attribute::basic(1, 7),
                Attribute::basic(14, 128),
                Attribute::basic(2, 2),
                Attribute { kind: 12, value: AttrValue::Variable(vec![0, 1, 0x51, 0x80]) },
            ],
        };
        Message {
            header: Header::new(0x0102_0304_0506_0708, 0, ExchangeType::MAIN, 0, 0),
            body: Body::Plain(vec![
                Payload::Sa(SaPayload {
                    situation: SIT_IDENTITY_ONLY,
                    proposals: vec![Proposal {
                        number: 1,
                        protocol: protocol::ISAKMP,
                        spi: vec![],
                        transforms: vec![t.clone(), Transform { number: 2, ..t }],
                    }],
                }),
                Payload::VendorId(vec![0x4a, 0x13, 0x1c, 0x81]),
                Payload::Id(IdPayload::subnet(Subnet::new("192.0.2.77".parse().unwrap(), 24))),
                Payload::Notification(Notification {
                    doi: 1,
                    protocol: 1,
                    spi: vec![9; 16],
                    kind: NotifyType::R_U_THERE,
                    data: vec![0, 0, 0, 5],
                }),
                Payload::Delete(Delete {
                    doi: 1,
                    protocol: 3,
                    spi_size: 4,
                    spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
                }),
                Payload::NatD(vec![0xaa; 20]),
                Payload::NatOa(NatOa { id_type: 1, data: vec![10, 0, 0, 1] }),
                Payload::Unknown { kind: PayloadType(130), data: vec![1, 2] },
            ]),
        }
    }

    #[test]
    fn roundtrip() {
        let m = sample();
        let b = m.emit().unwrap();
        assert_eq!(b[17], 0x10);
        assert_eq!(b[16], 1);
        let p = Message::parse(&b).unwrap();
        let mut want = m.clone();
        want.header.next_payload = PayloadType::SA;
        want.header.length = u32::try_from(b.len()).unwrap();
        assert_eq!(p, want);
        assert_eq!(p.emit().unwrap(), b);
    }

    #[test]
    fn identities_from_ikev2_form() {
        use crate::message::Identification as I;
        let id = IdPayload::from_identification(&I::Fqdn(b"vpn.example".to_vec()));
        assert_eq!((id.id_type, &id.data[..]), (id_type::FQDN, &b"vpn.example"[..]));
        let id = IdPayload::from_identification(&I::Rfc822(b"a@b.example".to_vec()));
        assert_eq!(id.id_type, id_type::USER_FQDN);
        let ip = "198.18.0.1".parse().unwrap();
        assert_eq!(IdPayload::from_identification(&I::Ipv4(ip)), IdPayload::address(IpAddr::V4(ip)));
        assert_eq!(IdPayload::from_identification(&I::KeyId(vec![1, 2])).id_type, id_type::KEY_ID);
    }

    #[test]
    fn subnet_ids() {
        let id = IdPayload::subnet(Subnet::new("198.51.100.9".parse().unwrap(), 24));
        assert_eq!(id.data, [198, 51, 100, 0, 255, 255, 255, 0]);
        assert_eq!(id.as_subnet().unwrap().to_string(), "198.51.100.0/24");
        let v6 = IdPayload::subnet(Subnet::new("2001:db8::1".parse().unwrap(), 64));
        assert_eq!(v6.id_type, id_type::IPV6_ADDR_SUBNET);
        assert_eq!(v6.as_subnet().unwrap().to_string(), "2001:db8::/64");
        let bad = IdPayload {
            id_type: id_type::IPV4_ADDR_SUBNET,
            protocol: 0,
            port: 0,
            data: vec![1, 2, 3, 4, 255, 0, 255, 0],
        };
        assert_eq!(bad.as_subnet(), None);
        assert!(
            Subnet::new("192.0.2.0".parse().unwrap(), 24).contains(&Subnet::new("192.0.2.128".parse().unwrap(), 25))
        );
    }

    #[test]
    fn truncations_never_panic() {
        let b = sample().emit().unwrap();
        for n in 0..b.len() {
            let mut c = b[..n].to_vec();
            if c.len() >= HEADER_LEN {
                c[24..28].copy_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
            }
            assert!(Message::parse(&c).is_err(), "prefix {n}");
        }
        // Every single-octet corruption either parses to something that round-trips, or fails.
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x5a;
            if let Ok(m) = Message::parse(&c) {
                let e = m.emit().unwrap();
                assert_eq!(Message::parse(&e).unwrap().emit().unwrap(), e);
            }
        }
    }

    #[test]
    fn encrypted_body_is_opaque() {
        let m = Message { header: Header::new(1, 2, ExchangeType::QUICK, 0, 7), body: Body::Encrypted(vec![0xa5; 32]) };
        let b = m.emit().unwrap();
        assert_eq!(b[19] & FLAG_ENCRYPTION, FLAG_ENCRYPTION);
        assert_eq!(Message::parse(&b).unwrap().body, m.body);
        assert_eq!(Message::parse(&b[..40]).unwrap_err(), ParseError::Truncated);
        assert_eq!(Header::parse(&[0x20; 28]).unwrap_err(), ParseError::BadVersion(0x20));
    }
}
