//! IKEv2 message codec (RFC 7296 §3).
//!
//! [`Message::parse`] turns untrusted bytes into owned representations, checking every length
//! against the bytes actually present; [`Message::emit`] turns them back into bytes, computing all
//! length and Next Payload fields itself. Parsing is strict: the header length must equal the
//! datagram length, every length field must be consistent with its container, nothing may follow
//! the last payload, and a message carries at most [`MAX_PAYLOADS`] payloads. RESERVED fields and
//! unused flag bits are ignored on receipt and sent as zero, as RFC 7296 requires. The critical bit
//! is ignored for payload types we parse; an unknown payload without it is skipped (kept as
//! [`Payload::Unknown`]), one with it fails the parse with
//! [`ParseError::UnsupportedCriticalPayload`].

mod payload;
mod types;

#[cfg(test)]
mod tests;

use core::fmt;

pub use payload::{
    id_type, ts_type, AddressRange, AttributeValue, AuthPayload, CertPayload, ConfigAttribute, ConfigPayload,
    DeletePayload, EncryptedFragment, EncryptedPayload, Identification, KePayload, NotifyPayload, Payload, Proposal,
    SaPayload, TrafficSelector, Transform, TransformAttribute, ATTR_KEY_LENGTH, NONCE_MAX, NONCE_MIN,
};
pub use types::{AuthMethod, CfgType, ExchangeType, NotifyType, PayloadType, ProtocolId, TransformType};

/// Length of the fixed IKE header.
pub const HEADER_LEN: usize = 28;
/// Length of the generic payload header.
pub const PAYLOAD_HEADER_LEN: usize = 4;
/// Largest message accepted or produced (64 KiB).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most payloads accepted in one payload chain (outer message, or the inside of an SK payload).
pub const MAX_PAYLOADS: usize = 64;
/// Most proposals, attributes or configuration attributes in one container.
pub const MAX_SUBSTRUCTURES: usize = 64;
/// The IKE major version this crate speaks.
pub const IKE_MAJOR_VERSION: u8 = 2;

const FLAG_RESPONSE: u8 = 0x20;
const FLAG_VERSION: u8 = 0x10;
const FLAG_INITIATOR: u8 = 0x08;
const CRITICAL: u8 = 0x80;

/// Why bytes could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The data ends before a field or a declared length.
    Truncated,
    /// A length field is impossible (smaller than its header, or inconsistent with its contents).
    BadLength,
    /// Bytes are left after the last payload, or after the message length.
    TrailingData,
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    TooLarge,
    /// More payloads or substructures than the limits allow.
    TooMany,
    /// The major version is not 2 (answer with INVALID_MAJOR_VERSION).
    InvalidMajorVersion(u8),
    /// A payload we do not understand has its critical bit set (answer with
    /// UNSUPPORTED_CRITICAL_PAYLOAD carrying this type).
    UnsupportedCriticalPayload(PayloadType),
    /// A field has a value this protocol forbids.
    Malformed(&'static str),
}

impl ParseError {
    /// The error notification RFC 7296 associates with this failure, with its Notification Data.
    #[must_use]
    pub fn notify(&self) -> (NotifyType, Vec<u8>) {
        match self {
            ParseError::UnsupportedCriticalPayload(t) => (NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t.0]),
            ParseError::InvalidMajorVersion(_) => (NotifyType::INVALID_MAJOR_VERSION, vec![IKE_MAJOR_VERSION << 4]),
            _ => (NotifyType::INVALID_SYNTAX, Vec::new()),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => f.write_str("truncated IKE message"),
            ParseError::BadLength => f.write_str("inconsistent length field"),
            ParseError::TrailingData => f.write_str("trailing data after the last payload"),
            ParseError::TooLarge => f.write_str("IKE message too large"),
            ParseError::TooMany => f.write_str("too many payloads or substructures"),
            ParseError::InvalidMajorVersion(v) => write!(f, "unsupported IKE major version {v}"),
            ParseError::UnsupportedCriticalPayload(t) => {
                write!(f, "unsupported critical payload {t:?}")
            }
            ParseError::Malformed(what) => write!(f, "malformed: {what}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Why a representation could not be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitError {
    /// A field or payload is longer than its length field allows, or the message exceeds
    /// [`MAX_MESSAGE_LEN`].
    TooLong,
    /// More elements than a count field allows, or more than [`MAX_PAYLOADS`] payloads.
    TooMany,
    /// The representation violates the protocol (e.g. SK payload not last).
    Invalid(&'static str),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::TooLong => f.write_str("field or message too long"),
            EmitError::TooMany => f.write_str("too many elements"),
            EmitError::Invalid(what) => write!(f, "invalid representation: {what}"),
        }
    }
}

impl std::error::Error for EmitError {}

/// Bounds-checked big-endian reader over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.buf.len() {
            return Err(ParseError::Truncated);
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), ParseError> {
        self.take(n).map(|_| ())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), ParseError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ParseError::TrailingData)
        }
    }
}

/// Header flags (RFC 7296 §3.1). Unused bits are sent as zero and ignored on receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Flags {
    /// I: set by the original initiator of the IKE SA.
    pub initiator: bool,
    /// V: the sender could speak a higher major version.
    pub version: bool,
    /// R: this message is a response.
    pub response: bool,
}

impl Flags {
    fn to_byte(self) -> u8 {
        (if self.response { FLAG_RESPONSE } else { 0 })
            | (if self.version { FLAG_VERSION } else { 0 })
            | (if self.initiator { FLAG_INITIATOR } else { 0 })
    }

    fn from_byte(b: u8) -> Self {
        Flags { initiator: b & FLAG_INITIATOR != 0, version: b & FLAG_VERSION != 0, response: b & FLAG_RESPONSE != 0 }
    }
}

/// The IKE header (RFC 7296 §3.1), without the fields the emitter computes (Next Payload and
/// Length); [`Header::peek`] returns those too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// IKE SA Initiator's SPI.
    pub spi_i: u64,
    /// IKE SA Responder's SPI (zero in the first message).
    pub spi_r: u64,
    /// Minor version (sent as 0, ignored on receipt but kept).
    pub minor_version: u8,
    /// Exchange Type.
    pub exchange_type: ExchangeType,
    /// Flags.
    pub flags: Flags,
    /// Message ID.
    pub message_id: u32,
}

/// What [`Header::peek`] returns: the header plus its computed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeekedHeader {
    /// The header.
    pub header: Header,
    /// Type of the first payload.
    pub next_payload: PayloadType,
    /// The Length field (whole message).
    pub length: u32,
}

impl Header {
    /// Parses only the fixed header, for dispatch (SPI lookup) before a full parse. Checks the
    /// major version and that the Length field lies within `HEADER_LEN..=MAX_MESSAGE_LEN`, but not
    /// that it matches `bytes.len()`.
    ///
    /// # Errors
    /// [`ParseError`] if the header is short, of another major version, or has an impossible length.
    pub fn peek(bytes: &[u8]) -> Result<PeekedHeader, ParseError> {
        let mut r = Reader::new(bytes);
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = PayloadType(r.u8()?);
        let version = r.u8()?;
        let exchange_type = ExchangeType(r.u8()?);
        let flags = Flags::from_byte(r.u8()?);
        let message_id = r.u32()?;
        let length = r.u32()?;
        let major = version >> 4;
        if major != IKE_MAJOR_VERSION {
            return Err(ParseError::InvalidMajorVersion(major));
        }
        let len = usize::try_from(length).map_err(|_| ParseError::TooLarge)?;
        if len < HEADER_LEN {
            return Err(ParseError::BadLength);
        }
        if len > MAX_MESSAGE_LEN {
            return Err(ParseError::TooLarge);
        }
        Ok(PeekedHeader {
            header: Header { spi_i, spi_r, minor_version: version & 0x0f, exchange_type, flags, message_id },
            next_payload,
            length,
        })
    }

    fn emit(&self, next: PayloadType, length: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(next.0);
        out.push((IKE_MAJOR_VERSION << 4) | (self.minor_version & 0x0f));
        out.push(self.exchange_type.0);
        out.push(self.flags.to_byte());
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
    }
}

/// A whole IKE message: header and payload chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// Payloads in order. An [`Payload::Encrypted`] (or fragment) may appear only last.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parses a whole datagram (no non-ESP marker: strip it first on port 4500).
    ///
    /// # Errors
    /// [`ParseError`] for anything that is not a well-formed IKEv2 message.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(ParseError::TooLarge);
        }
        let peeked = Header::peek(bytes)?;
        let len = peeked.length as usize;
        if len > bytes.len() {
            return Err(ParseError::Truncated);
        }
        if len < bytes.len() {
            return Err(ParseError::TrailingData);
        }
        let payloads = parse_chain(peeked.next_payload, &bytes[HEADER_LEN..], true)?;
        Ok(Message { header: peeked.header, payloads })
    }

    /// Emits the message, computing every Next Payload and length field.
    ///
    /// # Errors
    /// [`EmitError`] if the representation cannot be encoded.
    pub fn emit(&self) -> Result<Vec<u8>, EmitError> {
        let mut out = Vec::with_capacity(256);
        self.header.emit(PayloadType::NONE, 0, &mut out);
        let first = emit_chain(&self.payloads, &mut out, true)?;
        if out.len() > MAX_MESSAGE_LEN {
            return Err(EmitError::TooLong);
        }
        out[16] = first.0;
        let len = u32::try_from(out.len()).map_err(|_| EmitError::TooLong)?;
        out[24..28].copy_from_slice(&len.to_be_bytes());
        Ok(out)
    }

    /// The first payload of the given type.
    #[must_use]
    pub fn find(&self, t: PayloadType) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.payload_type() == t)
    }

    /// The Notify payloads of the given type.
    pub fn notifies(&self, t: NotifyType) -> impl Iterator<Item = &NotifyPayload> {
        notifies(&self.payloads, t)
    }
}

/// The Notify payloads of type `t` among `payloads`.
pub fn notifies(payloads: &[Payload], t: NotifyType) -> impl Iterator<Item = &NotifyPayload> {
    payloads.iter().filter_map(move |p| match p {
        Payload::Notify(n) if n.notify_type == t => Some(n),
        _ => None,
    })
}

/// Parses a payload chain that starts with a payload of type `first` and must use all of `bytes`.
/// `outer` allows an SK/SKF payload (which must be last); inside an SK payload it is an error.
///
/// # Errors
/// [`ParseError`] as for [`Message::parse`].
pub fn parse_chain(first: PayloadType, bytes: &[u8], outer: bool) -> Result<Vec<Payload>, ParseError> {
    let mut r = Reader::new(bytes);
    let mut payloads = Vec::new();
    let mut t = first;
    while t != PayloadType::NONE {
        if payloads.len() >= MAX_PAYLOADS {
            return Err(ParseError::TooMany);
        }
        let next = PayloadType(r.u8()?);
        let critical = r.u8()? & CRITICAL != 0;
        let len = usize::from(r.u16()?);
        if len < PAYLOAD_HEADER_LEN {
            return Err(ParseError::BadLength);
        }
        let body = r.take(len - PAYLOAD_HEADER_LEN)?;
        if !Payload::is_known_type(t) && critical {
            return Err(ParseError::UnsupportedCriticalPayload(t));
        }
        let p = Payload::parse_body(t, next, body)?;
        let ends_chain = p.inner_next().is_some();
        if ends_chain && !outer {
            return Err(ParseError::Malformed("SK payload inside SK payload"));
        }
        payloads.push(p);
        if ends_chain {
            // RFC 7296 §3.14: the Encrypted payload is the last one; its Next Payload names the
            // first inner payload, not a following one.
            break;
        }
        t = next;
    }
    r.finish()?;
    Ok(payloads)
}

/// Emits a payload chain, returning the type of the first payload (for the preceding Next Payload
/// field; `NONE` if empty).
///
/// # Errors
/// [`EmitError`] as for [`Message::emit`].
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>, outer: bool) -> Result<PayloadType, EmitError> {
    if payloads.len() > MAX_PAYLOADS {
        return Err(EmitError::TooMany);
    }
    for (i, p) in payloads.iter().enumerate() {
        let next = match p.inner_next() {
            Some(_) if !outer => return Err(EmitError::Invalid("SK payload inside SK payload")),
            Some(_) if i + 1 != payloads.len() => return Err(EmitError::Invalid("SK payload must be last")),
            Some(inner) => inner,
            None => payloads.get(i + 1).map_or(PayloadType::NONE, Payload::payload_type),
        };
        let start = out.len();
        out.extend_from_slice(&[next.0, 0, 0, 0]);
        p.emit_body(out)?;
        let len = u16::try_from(out.len() - start).map_err(|_| EmitError::TooLong)?;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(payloads.first().map_or(PayloadType::NONE, Payload::payload_type))
}
