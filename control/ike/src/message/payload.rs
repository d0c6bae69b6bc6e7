//! Owned payload representations (RFC 7296 §3.3–§3.16) with their body parsers and emitters.
//!
//! Each `parse_body` receives exactly the bytes after the generic payload header (the payload
//! length has already been checked against the enclosing buffer) and must consume all of them.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::types::{AuthMethod, CfgType, NotifyType, PayloadType, ProtocolId, TransformType};
use super::{EmitError, ParseError, Reader};

/// Attribute type of the Key Length transform attribute (RFC 7296 §3.3.5), always TV format.
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Minimum and maximum Nonce Data size (RFC 7296 §3.9).
pub const NONCE_MIN: usize = 16;
/// See [`NONCE_MIN`].
pub const NONCE_MAX: usize = 256;

fn u16_len(n: usize) -> Result<u16, EmitError> {
    u16::try_from(n).map_err(|_| EmitError::TooLong)
}

fn u8_count(n: usize) -> Result<u8, EmitError> {
    u8::try_from(n).map_err(|_| EmitError::TooMany)
}

/// One payload of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Security Association.
    Sa(SaPayload),
    /// Key Exchange.
    Ke(KePayload),
    /// Identification of the initiator.
    IdI(Identification),
    /// Identification of the responder.
    IdR(Identification),
    /// Certificate.
    Cert(CertPayload),
    /// Certificate request.
    CertReq(CertPayload),
    /// Authentication.
    Auth(AuthPayload),
    /// Nonce (16 to 256 octets).
    Nonce(Vec<u8>),
    /// Notify.
    Notify(NotifyPayload),
    /// Delete.
    Delete(DeletePayload),
    /// Vendor ID (opaque).
    VendorId(Vec<u8>),
    /// Traffic selectors of the initiator.
    TsI(Vec<TrafficSelector>),
    /// Traffic selectors of the responder.
    TsR(Vec<TrafficSelector>),
    /// Encrypted and authenticated (SK); always the last payload of a message.
    Encrypted(EncryptedPayload),
    /// Encrypted fragment (SKF, RFC 7383); always the last payload of a message.
    EncryptedFragment(EncryptedFragment),
    /// Configuration.
    Config(ConfigPayload),
    /// EAP (opaque).
    Eap(Vec<u8>),
    /// A payload type this crate does not know, sent without the critical bit: kept opaque so that
    /// it can be skipped (and re-emitted unchanged).
    Unknown {
        /// Its payload type.
        payload_type: PayloadType,
        /// Its body.
        body: Vec<u8>,
    },
}

impl Payload {
    /// The payload type that announces this payload in the previous Next Payload field.
    #[must_use]
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Cert(_) => PayloadType::CERT,
            Payload::CertReq(_) => PayloadType::CERTREQ,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Encrypted(_) => PayloadType::SK,
            Payload::EncryptedFragment(_) => PayloadType::SKF,
            Payload::Config(_) => PayloadType::CP,
            Payload::Eap(_) => PayloadType::EAP,
            Payload::Unknown { payload_type, .. } => *payload_type,
        }
    }

    /// Whether this payload type is one this crate parses (others are skipped or, if critical,
    /// rejected).
    #[must_use]
    pub fn is_known_type(t: PayloadType) -> bool {
        matches!(t.0, 33..=48 | 53)
    }

    /// For SK and SKF: the Next Payload value, which names the first inner payload.
    pub(crate) fn inner_next(&self) -> Option<PayloadType> {
        match self {
            Payload::Encrypted(e) => Some(e.first_inner),
            Payload::EncryptedFragment(e) => Some(e.first_inner),
            _ => None,
        }
    }

    pub(crate) fn parse_body(t: PayloadType, next: PayloadType, body: &[u8]) -> Result<Payload, ParseError> {
        let mut r = Reader::new(body);
        let p = match t {
            PayloadType::SA => Payload::Sa(SaPayload::parse(&mut r)?),
            PayloadType::KE => Payload::Ke(KePayload::parse(&mut r)?),
            PayloadType::IDI => Payload::IdI(Identification::parse(&mut r)?),
            PayloadType::IDR => Payload::IdR(Identification::parse(&mut r)?),
            PayloadType::CERT => Payload::Cert(CertPayload::parse(&mut r)?),
            PayloadType::CERTREQ => Payload::CertReq(CertPayload::parse(&mut r)?),
            PayloadType::AUTH => Payload::Auth(AuthPayload::parse(&mut r)?),
            PayloadType::NONCE => {
                let n = r.rest();
                if !(NONCE_MIN..=NONCE_MAX).contains(&n.len()) {
                    return Err(ParseError::Malformed("nonce length outside 16..=256"));
                }
                Payload::Nonce(n.to_vec())
            }
            PayloadType::NOTIFY => Payload::Notify(NotifyPayload::parse(&mut r)?),
            PayloadType::DELETE => Payload::Delete(DeletePayload::parse(&mut r)?),
            PayloadType::VENDOR_ID => Payload::VendorId(r.rest().to_vec()),
            PayloadType::TSI => Payload::TsI(TrafficSelector::parse_list(&mut r)?),
            PayloadType::TSR => Payload::TsR(TrafficSelector::parse_list(&mut r)?),
            PayloadType::SK => Payload::Encrypted(EncryptedPayload { first_inner: next, data: r.rest().to_vec() }),
            PayloadType::SKF => {
                let fragment_number = r.u16()?;
                let total_fragments = r.u16()?;
                if fragment_number == 0 || fragment_number > total_fragments {
                    return Err(ParseError::Malformed("SKF fragment number"));
                }
                Payload::EncryptedFragment(EncryptedFragment {
                    first_inner: next,
                    fragment_number,
                    total_fragments,
                    data: r.rest().to_vec(),
                })
            }
            PayloadType::CP => Payload::Config(ConfigPayload::parse(&mut r)?),
            PayloadType::EAP => Payload::Eap(r.rest().to_vec()),
            _ => Payload::Unknown { payload_type: t, body: r.rest().to_vec() },
        };
        r.finish()?;
        Ok(p)
    }

    /// Appends this payload's body (everything after the generic payload header) to `out`.
    pub(crate) fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        match self {
            Payload::Sa(p) => p.emit(out)?,
            Payload::Ke(p) => p.emit(out),
            Payload::IdI(p) | Payload::IdR(p) => p.emit(out),
            Payload::Cert(p) | Payload::CertReq(p) => p.emit(out),
            Payload::Auth(p) => p.emit(out),
            Payload::Nonce(n) => {
                if !(NONCE_MIN..=NONCE_MAX).contains(&n.len()) {
                    return Err(EmitError::Invalid("nonce length outside 16..=256"));
                }
                out.extend_from_slice(n);
            }
            Payload::Notify(p) => p.emit(out)?,
            Payload::Delete(p) => p.emit(out)?,
            Payload::VendorId(d) | Payload::Eap(d) => out.extend_from_slice(d),
            Payload::Unknown { payload_type, body } => {
                if Payload::is_known_type(*payload_type) || *payload_type == PayloadType::NONE {
                    return Err(EmitError::Invalid("Unknown payload with a known type"));
                }
                out.extend_from_slice(body);
            }
            Payload::TsI(ts) | Payload::TsR(ts) => TrafficSelector::emit_list(ts, out)?,
            Payload::Encrypted(e) => out.extend_from_slice(&e.data),
            Payload::EncryptedFragment(e) => {
                if e.fragment_number == 0 || e.fragment_number > e.total_fragments {
                    return Err(EmitError::Invalid("SKF fragment number"));
                }
                out.extend_from_slice(&e.fragment_number.to_be_bytes());
                out.extend_from_slice(&e.total_fragments.to_be_bytes());
                out.extend_from_slice(&e.data);
            }
            Payload::Config(c) => c.emit(out)?,
        }
        Ok(())
    }
}

/// Security Association payload (RFC 7296 §3.3): an ordered list of alternative proposals.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SaPayload {
    /// The proposals, in the sender's order of preference.
    pub proposals: Vec<Proposal>,
}

/// A Proposal substructure (RFC 7296 §3.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal Num: 1 for the first proposal of an offer, then +1; a reply echoes the chosen one.
    pub number: u8,
    /// IKE, AH or ESP.
    pub protocol_id: ProtocolId,
    /// SPI: empty for the first IKE SA, 8 octets when rekeying IKE, 4 octets for AH/ESP.
    pub spi: Vec<u8>,
    /// The transforms (ANDed across types, ORed within a type).
    pub transforms: Vec<Transform>,
}

/// A Transform substructure (RFC 7296 §3.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    /// ENCR, PRF, INTEG, DH or ESN.
    pub transform_type: TransformType,
    /// IANA Transform ID within its type.
    pub transform_id: u16,
    /// Attributes (in practice only Key Length).
    pub attributes: Vec<TransformAttribute>,
}

impl Transform {
    /// A transform without attributes.
    #[must_use]
    pub fn new(transform_type: TransformType, transform_id: u16) -> Self {
        Transform { transform_type, transform_id, attributes: Vec::new() }
    }

    /// A transform with a Key Length attribute (in bits).
    #[must_use]
    pub fn with_key_length(transform_type: TransformType, transform_id: u16, bits: u16) -> Self {
        Transform {
            transform_type,
            transform_id,
            attributes: vec![TransformAttribute { attr_type: ATTR_KEY_LENGTH, value: AttributeValue::Tv(bits) }],
        }
    }

    /// The Key Length attribute, if present.
    #[must_use]
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            TransformAttribute { attr_type: ATTR_KEY_LENGTH, value: AttributeValue::Tv(v) } => Some(*v),
            _ => None,
        })
    }
}

/// A Data Attribute (RFC 7296 §3.3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformAttribute {
    /// Attribute type (15 bits; the format bit is carried by `value`).
    pub attr_type: u16,
    /// Value in TV (AF=1) or TLV (AF=0) format.
    pub value: AttributeValue,
}

/// Attribute value, TV or TLV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    /// Two-octet value (AF=1).
    Tv(u16),
    /// Variable-length value (AF=0).
    Tlv(Vec<u8>),
}

const LAST_PROPOSAL: u8 = 0;
const MORE_PROPOSALS: u8 = 2;
const LAST_TRANSFORM: u8 = 0;
const MORE_TRANSFORMS: u8 = 3;

impl SaPayload {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let mut proposals = Vec::new();
        loop {
            let last = r.u8()?;
            r.skip(1)?;
            let len = usize::from(r.u16()?);
            if len < 8 {
                return Err(ParseError::BadLength);
            }
            let mut pr = Reader::new(r.take(len - 4)?);
            proposals.push(Proposal::parse(&mut pr)?);
            match last {
                LAST_PROPOSAL => break,
                MORE_PROPOSALS => {}
                _ => return Err(ParseError::Malformed("proposal Last Substruc")),
            }
            if proposals.len() >= super::MAX_SUBSTRUCTURES {
                return Err(ParseError::TooMany);
            }
        }
        Ok(SaPayload { proposals })
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        if self.proposals.is_empty() {
            return Err(EmitError::Invalid("SA payload without proposals"));
        }
        for (i, p) in self.proposals.iter().enumerate() {
            let start = out.len();
            let last = if i + 1 == self.proposals.len() { LAST_PROPOSAL } else { MORE_PROPOSALS };
            out.extend_from_slice(&[last, 0, 0, 0]);
            p.emit(out)?;
            let len = u16_len(out.len() - start)?;
            out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }
}

impl Proposal {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let number = r.u8()?;
        let protocol_id = ProtocolId(r.u8()?);
        let spi_size = usize::from(r.u8()?);
        let n_transforms = usize::from(r.u8()?);
        let spi = r.take(spi_size)?.to_vec();
        let mut transforms = Vec::with_capacity(n_transforms.min(32));
        for i in 0..n_transforms {
            let last = r.u8()?;
            r.skip(1)?;
            let len = usize::from(r.u16()?);
            if len < 8 {
                return Err(ParseError::BadLength);
            }
            let mut tr = Reader::new(r.take(len - 4)?);
            transforms.push(Transform::parse(&mut tr)?);
            let expect = if i + 1 == n_transforms { LAST_TRANSFORM } else { MORE_TRANSFORMS };
            if last != expect {
                return Err(ParseError::Malformed("transform Last Substruc"));
            }
        }
        // "Num Transforms" must describe exactly the transforms present.
        r.finish()?;
        Ok(Proposal { number, protocol_id, spi, transforms })
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        out.push(self.number);
        out.push(self.protocol_id.0);
        out.push(u8_count(self.spi.len())?);
        out.push(u8_count(self.transforms.len())?);
        out.extend_from_slice(&self.spi);
        for (i, t) in self.transforms.iter().enumerate() {
            let start = out.len();
            let last = if i + 1 == self.transforms.len() { LAST_TRANSFORM } else { MORE_TRANSFORMS };
            out.extend_from_slice(&[last, 0, 0, 0]);
            t.emit(out)?;
            let len = u16_len(out.len() - start)?;
            out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }
}

impl Transform {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let transform_type = TransformType(r.u8()?);
        r.skip(1)?;
        let transform_id = r.u16()?;
        let mut attributes = Vec::new();
        while !r.is_empty() {
            if attributes.len() >= super::MAX_SUBSTRUCTURES {
                return Err(ParseError::TooMany);
            }
            let t = r.u16()?;
            let attr_type = t & 0x7fff;
            let value = if t & 0x8000 != 0 {
                AttributeValue::Tv(r.u16()?)
            } else {
                let l = usize::from(r.u16()?);
                AttributeValue::Tlv(r.take(l)?.to_vec())
            };
            attributes.push(TransformAttribute { attr_type, value });
        }
        Ok(Transform { transform_type, transform_id, attributes })
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        out.push(self.transform_type.0);
        out.push(0);
        out.extend_from_slice(&self.transform_id.to_be_bytes());
        for a in &self.attributes {
            if a.attr_type > 0x7fff {
                return Err(EmitError::Invalid("attribute type over 15 bits"));
            }
            match &a.value {
                AttributeValue::Tv(v) => {
                    out.extend_from_slice(&(a.attr_type | 0x8000).to_be_bytes());
                    out.extend_from_slice(&v.to_be_bytes());
                }
                AttributeValue::Tlv(v) => {
                    out.extend_from_slice(&a.attr_type.to_be_bytes());
                    out.extend_from_slice(&u16_len(v.len())?.to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        Ok(())
    }
}

/// Key Exchange payload (RFC 7296 §3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KePayload {
    /// Diffie-Hellman Group Num.
    pub dh_group: u16,
    /// Key Exchange Data (the public value).
    pub data: Vec<u8>,
}

impl KePayload {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let dh_group = r.u16()?;
        r.skip(2)?;
        Ok(KePayload { dh_group, data: r.rest().to_vec() })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dh_group.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.data);
    }
}

/// ID Type values (RFC 7296 §3.5).
pub mod id_type {
    /// ID_IPV4_ADDR.
    pub const IPV4_ADDR: u8 = 1;
    /// ID_FQDN.
    pub const FQDN: u8 = 2;
    /// ID_RFC822_ADDR.
    pub const RFC822_ADDR: u8 = 3;
    /// ID_IPV6_ADDR.
    pub const IPV6_ADDR: u8 = 5;
    /// ID_DER_ASN1_DN.
    pub const DER_ASN1_DN: u8 = 9;
    /// ID_DER_ASN1_GN.
    pub const DER_ASN1_GN: u8 = 10;
    /// ID_KEY_ID.
    pub const KEY_ID: u8 = 11;
}

/// Identification payload body (RFC 7296 §3.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identification {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_FQDN (kept as received octets; no terminator).
    Fqdn(Vec<u8>),
    /// ID_RFC822_ADDR (kept as received octets).
    Rfc822(Vec<u8>),
    /// ID_KEY_ID (opaque).
    KeyId(Vec<u8>),
    /// ID_DER_ASN1_DN (opaque DER).
    DerAsn1Dn(Vec<u8>),
    /// ID_DER_ASN1_GN (opaque DER).
    DerAsn1Gn(Vec<u8>),
    /// Any other ID type, kept opaque.
    Other {
        /// ID Type.
        id_type: u8,
        /// Identification Data.
        data: Vec<u8>,
    },
}

impl Identification {
    /// The ID Type octet.
    #[must_use]
    pub fn id_type(&self) -> u8 {
        match self {
            Identification::Ipv4(_) => id_type::IPV4_ADDR,
            Identification::Ipv6(_) => id_type::IPV6_ADDR,
            Identification::Fqdn(_) => id_type::FQDN,
            Identification::Rfc822(_) => id_type::RFC822_ADDR,
            Identification::KeyId(_) => id_type::KEY_ID,
            Identification::DerAsn1Dn(_) => id_type::DER_ASN1_DN,
            Identification::DerAsn1Gn(_) => id_type::DER_ASN1_GN,
            Identification::Other { id_type, .. } => *id_type,
        }
    }

    /// The payload body as signed in AUTH ("RestOfInitIDPayload", RFC 7296 §2.15): ID Type,
    /// three RESERVED octets (zero) and the Identification Data.
    #[must_use]
    pub fn body_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.emit(&mut v);
        v
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let t = r.u8()?;
        r.skip(3)?;
        let data = r.rest();
        Ok(match t {
            id_type::IPV4_ADDR => {
                let a: [u8; 4] = data.try_into().map_err(|_| ParseError::Malformed("ID_IPV4_ADDR length"))?;
                Identification::Ipv4(Ipv4Addr::from(a))
            }
            id_type::IPV6_ADDR => {
                let a: [u8; 16] = data.try_into().map_err(|_| ParseError::Malformed("ID_IPV6_ADDR length"))?;
                Identification::Ipv6(Ipv6Addr::from(a))
            }
            id_type::FQDN => Identification::Fqdn(data.to_vec()),
            id_type::RFC822_ADDR => Identification::Rfc822(data.to_vec()),
            id_type::KEY_ID => Identification::KeyId(data.to_vec()),
            id_type::DER_ASN1_DN => Identification::DerAsn1Dn(data.to_vec()),
            id_type::DER_ASN1_GN => Identification::DerAsn1Gn(data.to_vec()),
            id_type => Identification::Other { id_type, data: data.to_vec() },
        })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.id_type(), 0, 0, 0]);
        match self {
            Identification::Ipv4(a) => out.extend_from_slice(&a.octets()),
            Identification::Ipv6(a) => out.extend_from_slice(&a.octets()),
            Identification::Fqdn(d)
            | Identification::Rfc822(d)
            | Identification::KeyId(d)
            | Identification::DerAsn1Dn(d)
            | Identification::DerAsn1Gn(d)
            | Identification::Other { data: d, .. } => out.extend_from_slice(d),
        }
    }
}

/// Certificate or Certificate Request payload (RFC 7296 §3.6, §3.7), kept opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPayload {
    /// Certificate Encoding.
    pub encoding: u8,
    /// Certificate Data / Certification Authority.
    pub data: Vec<u8>,
}

impl CertPayload {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        Ok(CertPayload { encoding: r.u8()?, data: r.rest().to_vec() })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.encoding);
        out.extend_from_slice(&self.data);
    }
}

/// Authentication payload (RFC 7296 §3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthPayload {
    /// Auth Method.
    pub method: AuthMethod,
    /// Authentication Data.
    pub data: Vec<u8>,
}

impl AuthPayload {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let method = AuthMethod(r.u8()?);
        r.skip(3)?;
        Ok(AuthPayload { method, data: r.rest().to_vec() })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.method.0, 0, 0, 0]);
        out.extend_from_slice(&self.data);
    }
}

/// Notify payload (RFC 7296 §3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyPayload {
    /// Protocol ID of the SA concerned, or 0.
    pub protocol_id: ProtocolId,
    /// SPI of the SA concerned (empty if none).
    pub spi: Vec<u8>,
    /// Notify Message Type.
    pub notify_type: NotifyType,
    /// Notification Data.
    pub data: Vec<u8>,
}

impl NotifyPayload {
    /// A notify that concerns no SA (protocol 0, no SPI).
    #[must_use]
    pub fn new(notify_type: NotifyType, data: Vec<u8>) -> Self {
        NotifyPayload { protocol_id: ProtocolId(0), spi: Vec::new(), notify_type, data }
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let protocol_id = ProtocolId(r.u8()?);
        let spi_size = usize::from(r.u8()?);
        let notify_type = NotifyType(r.u16()?);
        let spi = r.take(spi_size)?.to_vec();
        Ok(NotifyPayload { protocol_id, spi, notify_type, data: r.rest().to_vec() })
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        out.push(self.protocol_id.0);
        out.push(u8_count(self.spi.len())?);
        out.extend_from_slice(&self.notify_type.0.to_be_bytes());
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
        Ok(())
    }
}

/// Delete payload (RFC 7296 §3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletePayload {
    /// IKE, AH or ESP.
    pub protocol_id: ProtocolId,
    /// SPI Size (0 for IKE, 4 for AH/ESP).
    pub spi_size: u8,
    /// The SPIs, each `spi_size` octets.
    pub spis: Vec<Vec<u8>>,
}

impl DeletePayload {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let protocol_id = ProtocolId(r.u8()?);
        let spi_size = r.u8()?;
        let n = usize::from(r.u16()?);
        let rest = r.rest();
        if rest.len() != n * usize::from(spi_size) {
            return Err(ParseError::BadLength);
        }
        let spis =
            if spi_size == 0 { Vec::new() } else { rest.chunks(usize::from(spi_size)).map(<[u8]>::to_vec).collect() };
        if spi_size == 0 && n != 0 {
            return Err(ParseError::Malformed("Delete with SPI size 0 and SPIs"));
        }
        Ok(DeletePayload { protocol_id, spi_size, spis })
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        if self.spis.iter().any(|s| s.len() != usize::from(self.spi_size)) {
            return Err(EmitError::Invalid("Delete SPI of the wrong size"));
        }
        if self.spi_size == 0 && !self.spis.is_empty() {
            return Err(EmitError::Invalid("Delete with SPI size 0 and SPIs"));
        }
        out.push(self.protocol_id.0);
        out.push(self.spi_size);
        out.extend_from_slice(&u16_len(self.spis.len())?.to_be_bytes());
        for s in &self.spis {
            out.extend_from_slice(s);
        }
        Ok(())
    }
}

/// TS Type values (RFC 7296 §3.13.1).
pub mod ts_type {
    /// TS_IPV4_ADDR_RANGE.
    pub const IPV4_ADDR_RANGE: u8 = 7;
    /// TS_IPV6_ADDR_RANGE.
    pub const IPV6_ADDR_RANGE: u8 = 8;
}

/// An address range of a traffic selector (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressRange {
    /// TS_IPV4_ADDR_RANGE.
    V4 {
        /// Starting Address.
        start: Ipv4Addr,
        /// Ending Address.
        end: Ipv4Addr,
    },
    /// TS_IPV6_ADDR_RANGE.
    V6 {
        /// Starting Address.
        start: Ipv6Addr,
        /// Ending Address.
        end: Ipv6Addr,
    },
}

/// One traffic selector (RFC 7296 §3.13.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP Protocol ID (0 = any).
    pub ip_protocol: u8,
    /// Start Port.
    pub start_port: u16,
    /// End Port.
    pub end_port: u16,
    /// Address range.
    pub range: AddressRange,
}

impl TrafficSelector {
    /// All IPv4 traffic.
    #[must_use]
    pub fn any_v4() -> Self {
        TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: 0xffff,
            range: AddressRange::V4 { start: Ipv4Addr::UNSPECIFIED, end: Ipv4Addr::BROADCAST },
        }
    }

    fn parse_list(r: &mut Reader<'_>) -> Result<Vec<Self>, ParseError> {
        let n = r.u8()?;
        r.skip(3)?;
        if n == 0 {
            return Err(ParseError::Malformed("TS payload with no selectors"));
        }
        let mut v = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let t = r.u8()?;
            let ip_protocol = r.u8()?;
            let len = usize::from(r.u16()?);
            let (want, alen) = match t {
                ts_type::IPV4_ADDR_RANGE => (16, 4),
                ts_type::IPV6_ADDR_RANGE => (40, 16),
                _ => return Err(ParseError::Malformed("unknown TS type")),
            };
            if len != want {
                return Err(ParseError::BadLength);
            }
            let start_port = r.u16()?;
            let end_port = r.u16()?;
            let s = r.take(alen)?;
            let e = r.take(alen)?;
            let range = if alen == 4 {
                AddressRange::V4 {
                    start: Ipv4Addr::from(<[u8; 4]>::try_from(s).map_err(|_| ParseError::Truncated)?),
                    end: Ipv4Addr::from(<[u8; 4]>::try_from(e).map_err(|_| ParseError::Truncated)?),
                }
            } else {
                AddressRange::V6 {
                    start: Ipv6Addr::from(<[u8; 16]>::try_from(s).map_err(|_| ParseError::Truncated)?),
                    end: Ipv6Addr::from(<[u8; 16]>::try_from(e).map_err(|_| ParseError::Truncated)?),
                }
            };
            v.push(TrafficSelector { ip_protocol, start_port, end_port, range });
        }
        Ok(v)
    }

    fn emit_list(list: &[Self], out: &mut Vec<u8>) -> Result<(), EmitError> {
        if list.is_empty() {
            return Err(EmitError::Invalid("TS payload with no selectors"));
        }
        out.extend_from_slice(&[u8_count(list.len())?, 0, 0, 0]);
        for ts in list {
            let (t, len) = match ts.range {
                AddressRange::V4 { .. } => (ts_type::IPV4_ADDR_RANGE, 16u16),
                AddressRange::V6 { .. } => (ts_type::IPV6_ADDR_RANGE, 40u16),
            };
            out.push(t);
            out.push(ts.ip_protocol);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&ts.start_port.to_be_bytes());
            out.extend_from_slice(&ts.end_port.to_be_bytes());
            match ts.range {
                AddressRange::V4 { start, end } => {
                    out.extend_from_slice(&start.octets());
                    out.extend_from_slice(&end.octets());
                }
                AddressRange::V6 { start, end } => {
                    out.extend_from_slice(&start.octets());
                    out.extend_from_slice(&end.octets());
                }
            }
        }
        Ok(())
    }
}

/// Encrypted and Authenticated payload (RFC 7296 §3.14): IV, ciphertext and ICV as one opaque
/// blob; [`crate::crypto::sk`] opens and seals it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedPayload {
    /// Type of the first payload inside (the SK payload's Next Payload field).
    pub first_inner: PayloadType,
    /// IV || ciphertext || ICV.
    pub data: Vec<u8>,
}

/// Encrypted and Authenticated Fragment payload (RFC 7383 §2.5), kept opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedFragment {
    /// Type of the first inner payload (meaningful in fragment 1 only).
    pub first_inner: PayloadType,
    /// Fragment Number (1-based).
    pub fragment_number: u16,
    /// Total Fragments.
    pub total_fragments: u16,
    /// IV || ciphertext || ICV.
    pub data: Vec<u8>,
}

/// Configuration payload (RFC 7296 §3.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigPayload {
    /// CFG Type.
    pub cfg_type: CfgType,
    /// Configuration attributes.
    pub attributes: Vec<ConfigAttribute>,
}

/// A configuration attribute (RFC 7296 §3.15.1), value kept opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigAttribute {
    /// Attribute Type (15 bits).
    pub attr_type: u16,
    /// Value.
    pub value: Vec<u8>,
}

impl ConfigPayload {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let cfg_type = CfgType(r.u8()?);
        r.skip(3)?;
        let mut attributes = Vec::new();
        while !r.is_empty() {
            if attributes.len() >= super::MAX_SUBSTRUCTURES {
                return Err(ParseError::TooMany);
            }
            let attr_type = r.u16()? & 0x7fff;
            let l = usize::from(r.u16()?);
            attributes.push(ConfigAttribute { attr_type, value: r.take(l)?.to_vec() });
        }
        Ok(ConfigPayload { cfg_type, attributes })
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        out.extend_from_slice(&[self.cfg_type.0, 0, 0, 0]);
        for a in &self.attributes {
            if a.attr_type > 0x7fff {
                return Err(EmitError::Invalid("config attribute type over 15 bits"));
            }
            out.extend_from_slice(&a.attr_type.to_be_bytes());
            out.extend_from_slice(&u16_len(a.value.len())?.to_be_bytes());
            out.extend_from_slice(&a.value);
        }
        Ok(())
    }
}
