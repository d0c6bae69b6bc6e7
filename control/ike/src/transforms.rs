//! Transform registry (IANA "Transform Type" values), proposal construction, and proposal
//! selection as responder (RFC 7296 §2.7, §3.3).

use crate::crypto::dh::DhGroup;
use crate::message::{AttributeValue, Proposal, ProtocolId, Transform, TransformType, ATTR_KEY_LENGTH};

/// Encryption algorithms (Transform Type 1) this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// ENCR_DES (2). Legacy, for interoperability only.
    Des,
    /// ENCR_3DES (3). Legacy, for interoperability only.
    TripleDes,
    /// ENCR_AES_CBC (12) with a key of 128, 192 or 256 bits.
    AesCbc {
        /// Key length in bits.
        key_bits: u16,
    },
    /// ENCR_AES_GCM_16 (20, RFC 5282) with a key of 128, 192 or 256 bits (plus 4 octets of salt).
    AesGcm16 {
        /// Key length in bits.
        key_bits: u16,
    },
}

/// IANA Transform IDs for ENCR.
pub mod encr_id {
    /// ENCR_DES.
    pub const DES: u16 = 2;
    /// ENCR_3DES.
    pub const TRIPLE_DES: u16 = 3;
    /// ENCR_AES_CBC.
    pub const AES_CBC: u16 = 12;
    /// ENCR_AES_GCM_16.
    pub const AES_GCM_16: u16 = 20;
}

fn valid_aes_bits(bits: u16) -> bool {
    matches!(bits, 128 | 192 | 256)
}

impl EncrAlg {
    /// AES-CBC-128.
    pub const AES128_CBC: EncrAlg = EncrAlg::AesCbc { key_bits: 128 };
    /// AES-CBC-256.
    pub const AES256_CBC: EncrAlg = EncrAlg::AesCbc { key_bits: 256 };
    /// AES-GCM-16 with a 128-bit key.
    pub const AES128_GCM16: EncrAlg = EncrAlg::AesGcm16 { key_bits: 128 };
    /// AES-GCM-16 with a 256-bit key.
    pub const AES256_GCM16: EncrAlg = EncrAlg::AesGcm16 { key_bits: 256 };

    /// IANA Transform ID.
    #[must_use]
    pub fn id(self) -> u16 {
        match self {
            EncrAlg::Des => encr_id::DES,
            EncrAlg::TripleDes => encr_id::TRIPLE_DES,
            EncrAlg::AesCbc { .. } => encr_id::AES_CBC,
            EncrAlg::AesGcm16 { .. } => encr_id::AES_GCM_16,
        }
    }

    /// The Key Length attribute this transform carries (AES only).
    #[must_use]
    pub fn key_length_attr(self) -> Option<u16> {
        match self {
            EncrAlg::AesCbc { key_bits } | EncrAlg::AesGcm16 { key_bits } => Some(key_bits),
            _ => None,
        }
    }

    /// Cipher key length in octets (without GCM salt).
    #[must_use]
    pub fn key_len(self) -> usize {
        match self {
            EncrAlg::Des => 8,
            EncrAlg::TripleDes => 24,
            EncrAlg::AesCbc { key_bits } | EncrAlg::AesGcm16 { key_bits } => usize::from(key_bits) / 8,
        }
    }

    /// Octets of keying material taken for this cipher: the key, plus the 4-octet salt for GCM
    /// (RFC 5282 §7.1, RFC 4106 §8.1).
    #[must_use]
    pub fn keymat_len(self) -> usize {
        self.key_len() + if self.is_aead() { 4 } else { 0 }
    }

    /// Whether this is a combined-mode (AEAD) cipher that needs no INTEG transform.
    #[must_use]
    pub fn is_aead(self) -> bool {
        matches!(self, EncrAlg::AesGcm16 { .. })
    }

    /// Cipher block size used for padding (1 for GCM, which needs no alignment).
    #[must_use]
    pub fn block_size(self) -> usize {
        match self {
            EncrAlg::Des | EncrAlg::TripleDes => 8,
            EncrAlg::AesCbc { .. } => 16,
            EncrAlg::AesGcm16 { .. } => 1,
        }
    }

    /// IV length in the SK payload.
    #[must_use]
    pub fn iv_len(self) -> usize {
        match self {
            EncrAlg::Des | EncrAlg::TripleDes | EncrAlg::AesGcm16 { .. } => 8,
            EncrAlg::AesCbc { .. } => 16,
        }
    }

    /// The transform, with its Key Length attribute where required.
    #[must_use]
    pub fn to_transform(self) -> Transform {
        match self.key_length_attr() {
            Some(bits) => Transform::with_key_length(TransformType::ENCR, self.id(), bits),
            None => Transform::new(TransformType::ENCR, self.id()),
        }
    }

    /// Recognizes an ENCR transform; `None` if the ID, the key length or any attribute is not one
    /// we implement (RFC 7296 §3.3.6: a transform with an unknown attribute is rejected). AES
    /// transforms must carry exactly one Key Length attribute; DES and 3DES none.
    #[must_use]
    pub fn from_transform(t: &Transform) -> Option<EncrAlg> {
        if t.transform_type != TransformType::ENCR {
            return None;
        }
        let key_bits = match t.attributes.as_slice() {
            [] => None,
            [a] if a.attr_type == ATTR_KEY_LENGTH => match a.value {
                AttributeValue::Tv(v) => Some(v),
                AttributeValue::Tlv(_) => return None,
            },
            _ => return None,
        };
        match (t.transform_id, key_bits) {
            (encr_id::DES, None) => Some(EncrAlg::Des),
            (encr_id::TRIPLE_DES, None) => Some(EncrAlg::TripleDes),
            (encr_id::AES_CBC, Some(b)) if valid_aes_bits(b) => Some(EncrAlg::AesCbc { key_bits: b }),
            (encr_id::AES_GCM_16, Some(b)) if valid_aes_bits(b) => Some(EncrAlg::AesGcm16 { key_bits: b }),
            _ => None,
        }
    }
}

/// Pseudorandom functions (Transform Type 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrfAlg {
    /// PRF_HMAC_MD5 (1).
    HmacMd5,
    /// PRF_HMAC_SHA1 (2).
    HmacSha1,
    /// PRF_HMAC_SHA2_256 (5).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (6).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (7).
    HmacSha512,
}

impl PrfAlg {
    /// IANA Transform ID.
    #[must_use]
    pub fn id(self) -> u16 {
        match self {
            PrfAlg::HmacMd5 => 1,
            PrfAlg::HmacSha1 => 2,
            PrfAlg::HmacSha256 => 5,
            PrfAlg::HmacSha384 => 6,
            PrfAlg::HmacSha512 => 7,
        }
    }

    /// From an IANA Transform ID.
    #[must_use]
    pub fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            1 => PrfAlg::HmacMd5,
            2 => PrfAlg::HmacSha1,
            5 => PrfAlg::HmacSha256,
            6 => PrfAlg::HmacSha384,
            7 => PrfAlg::HmacSha512,
            _ => return None,
        })
    }

    /// Output length in octets; also the preferred key length used for SK_d, SK_pi and SK_pr
    /// (RFC 7296 §2.14).
    #[must_use]
    pub fn output_len(self) -> usize {
        match self {
            PrfAlg::HmacMd5 => 16,
            PrfAlg::HmacSha1 => 20,
            PrfAlg::HmacSha256 => 32,
            PrfAlg::HmacSha384 => 48,
            PrfAlg::HmacSha512 => 64,
        }
    }

    /// The transform.
    #[must_use]
    pub fn to_transform(self) -> Transform {
        Transform::new(TransformType::PRF, self.id())
    }
}

/// Integrity algorithms (Transform Type 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    /// AUTH_HMAC_MD5_96 (1).
    HmacMd5_96,
    /// AUTH_HMAC_SHA1_96 (2).
    HmacSha1_96,
    /// AUTH_HMAC_SHA2_256_128 (12).
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (13).
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (14).
    HmacSha512_256,
}

/// INTEG Transform ID "NONE", allowed alongside combined-mode ciphers.
pub const INTEG_NONE: u16 = 0;

impl IntegAlg {
    /// IANA Transform ID.
    #[must_use]
    pub fn id(self) -> u16 {
        match self {
            IntegAlg::HmacMd5_96 => 1,
            IntegAlg::HmacSha1_96 => 2,
            IntegAlg::HmacSha256_128 => 12,
            IntegAlg::HmacSha384_192 => 13,
            IntegAlg::HmacSha512_256 => 14,
        }
    }

    /// From an IANA Transform ID (`NONE` is not an algorithm and gives `None`).
    #[must_use]
    pub fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            1 => IntegAlg::HmacMd5_96,
            2 => IntegAlg::HmacSha1_96,
            12 => IntegAlg::HmacSha256_128,
            13 => IntegAlg::HmacSha384_192,
            14 => IntegAlg::HmacSha512_256,
            _ => return None,
        })
    }

    /// Key length in octets (the HMAC hash's output length, RFC 2404/4868).
    #[must_use]
    pub fn key_len(self) -> usize {
        match self {
            IntegAlg::HmacMd5_96 => 16,
            IntegAlg::HmacSha1_96 => 20,
            IntegAlg::HmacSha256_128 => 32,
            IntegAlg::HmacSha384_192 => 48,
            IntegAlg::HmacSha512_256 => 64,
        }
    }

    /// Truncated ICV length in octets.
    #[must_use]
    pub fn icv_len(self) -> usize {
        match self {
            IntegAlg::HmacMd5_96 | IntegAlg::HmacSha1_96 => 12,
            IntegAlg::HmacSha256_128 => 16,
            IntegAlg::HmacSha384_192 => 24,
            IntegAlg::HmacSha512_256 => 32,
        }
    }

    /// The transform.
    #[must_use]
    pub fn to_transform(self) -> Transform {
        Transform::new(TransformType::INTEG, self.id())
    }
}

/// Extended Sequence Numbers (Transform Type 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Esn {
    /// No Extended Sequence Numbers (0).
    No,
    /// Extended Sequence Numbers (1).
    Yes,
}

impl Esn {
    /// IANA Transform ID.
    #[must_use]
    pub fn id(self) -> u16 {
        match self {
            Esn::No => 0,
            Esn::Yes => 1,
        }
    }

    /// From an IANA Transform ID.
    #[must_use]
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            0 => Some(Esn::No),
            1 => Some(Esn::Yes),
            _ => None,
        }
    }

    /// The transform.
    #[must_use]
    pub fn to_transform(self) -> Transform {
        Transform::new(TransformType::ESN, self.id())
    }
}

/// One configured proposal: for each transform type, the acceptable algorithms in our order of
/// preference. Used both to build offers and to judge the peer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalSpec {
    /// IKE or ESP (AH is not supported).
    pub protocol: ProtocolId,
    /// Encryption algorithms.
    pub encr: Vec<EncrAlg>,
    /// PRFs (IKE only; must be empty for ESP).
    pub prf: Vec<PrfAlg>,
    /// Integrity algorithms (may be empty if every `encr` is AEAD).
    pub integ: Vec<IntegAlg>,
    /// DH groups. For IKE at least one. For ESP empty means "no PFS".
    pub dh: Vec<DhGroup>,
    /// ESN choices (ESP only; must be empty for IKE).
    pub esn: Vec<Esn>,
}

impl ProposalSpec {
    /// Builds the Proposal substructures offering every listed algorithm: one proposal, or two
    /// when the spec mixes AEAD and non-AEAD ciphers (RFC 7296 §3.3: a combined-mode cipher is
    /// offered without integrity algorithms, so it gets its own proposal, listed first).
    #[must_use]
    pub fn to_proposals(&self, first_number: u8, spi: &[u8]) -> Vec<Proposal> {
        let (aead, plain): (Vec<EncrAlg>, Vec<EncrAlg>) = self.encr.iter().partition(|e| e.is_aead());
        let mut out = Vec::new();
        let mut number = first_number;
        for (encrs, integs) in [(aead, &[][..]), (plain, &self.integ[..])] {
            if encrs.is_empty() {
                continue;
            }
            let mut transforms = Vec::new();
            transforms.extend(encrs.iter().map(|e| e.to_transform()));
            transforms.extend(self.prf.iter().map(|p| p.to_transform()));
            transforms.extend(integs.iter().map(|i| i.to_transform()));
            transforms.extend(self.dh.iter().map(|d| Transform::new(TransformType::DH, d.id())));
            transforms.extend(self.esn.iter().map(|e| e.to_transform()));
            out.push(Proposal { number, protocol_id: self.protocol, spi: spi.to_vec(), transforms });
            number = number.wrapping_add(1);
        }
        out
    }
}

/// Builds an SA offer from our specs, numbering proposals from 1, all with the same SPI.
#[must_use]
pub fn build_offer(specs: &[ProposalSpec], spi: &[u8]) -> Vec<Proposal> {
    let mut out: Vec<Proposal> = Vec::new();
    for s in specs {
        let next = out.last().map_or(1, |p| p.number.wrapping_add(1));
        out.extend(s.to_proposals(next, spi));
    }
    out
}

/// The result of proposal selection: one algorithm per transform type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenProposal {
    /// The peer's Proposal Num, to echo in the reply.
    pub number: u8,
    /// IKE or ESP.
    pub protocol: ProtocolId,
    /// The peer's SPI from the proposal.
    pub spi: Vec<u8>,
    /// Encryption.
    pub encr: EncrAlg,
    /// PRF (IKE only).
    pub prf: Option<PrfAlg>,
    /// Integrity (`None` with AEAD).
    pub integ: Option<IntegAlg>,
    /// DH group (`None` for ESP without PFS).
    pub dh: Option<DhGroup>,
    /// ESN (ESP only).
    pub esn: Option<Esn>,
}

impl ChosenProposal {
    /// The single-proposal answer for the reply's SA payload, with our own SPI.
    #[must_use]
    pub fn to_proposal(&self, spi: Vec<u8>) -> Proposal {
        let mut transforms = vec![self.encr.to_transform()];
        transforms.extend(self.prf.map(PrfAlg::to_transform));
        transforms.extend(self.integ.map(IntegAlg::to_transform));
        transforms.extend(self.dh.map(|d| Transform::new(TransformType::DH, d.id())));
        transforms.extend(self.esn.map(Esn::to_transform));
        Proposal { number: self.number, protocol_id: self.protocol, spi, transforms }
    }
}

/// Why a peer's SA payload was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectError {
    /// No proposal was acceptable (answer NO_PROPOSAL_CHOSEN).
    NoProposalChosen,
}

impl core::fmt::Display for SelectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no acceptable proposal")
    }
}

impl std::error::Error for SelectError {}

/// Chooses, as responder, the first of the peer's proposals (in the peer's order) that one of our
/// configured specs accepts. Within an acceptable proposal, for each transform type the peer's
/// first transform that the spec lists is taken (peer's preference, as strongSwan does by
/// default).
///
/// A proposal is unacceptable if it has a transform type we do not know (RFC 7296 §3.3.6), lacks
/// a mandatory type (§3.3.3: IKE needs ENCR, PRF, INTEG unless AEAD, and DH; ESP needs ENCR and
/// ESN, INTEG unless AEAD), or has the wrong SPI size (IKE: 0 or 8, ESP: 4). An AEAD cipher is
/// chosen only if the proposal offers no integrity algorithm other than NONE; a non-AEAD cipher
/// only together with an acceptable integrity algorithm. Transforms with unknown IDs or attributes
/// (e.g. an unsupported key length) are skipped, not fatal.
///
/// # Errors
/// [`SelectError::NoProposalChosen`] if nothing is acceptable.
pub fn select_proposal(peer: &[Proposal], ours: &[ProposalSpec]) -> Result<ChosenProposal, SelectError> {
    for p in peer {
        for spec in ours {
            if let Some(c) = match_proposal(p, spec) {
                return Ok(c);
            }
        }
    }
    Err(SelectError::NoProposalChosen)
}

fn match_proposal(p: &Proposal, spec: &ProposalSpec) -> Option<ChosenProposal> {
    if p.protocol_id != spec.protocol {
        return None;
    }
    let is_ike = match p.protocol_id {
        ProtocolId::IKE => {
            if !(p.spi.is_empty() || p.spi.len() == 8) {
                return None;
            }
            true
        }
        ProtocolId::ESP => {
            if p.spi.len() != 4 {
                return None;
            }
            false
        }
        _ => return None,
    };
    let of = |tt: TransformType| p.transforms.iter().filter(move |t| t.transform_type == tt);
    // Any unknown transform type makes the whole proposal unacceptable.
    if p.transforms.iter().any(|t| !(1..=5).contains(&t.transform_type.0)) {
        return None;
    }

    // Peer's order of ciphers; an AEAD cipher is usable only if the proposal has no integrity
    // algorithm other than NONE, a non-AEAD one only with an acceptable integrity algorithm.
    let integ_offered: Vec<&Transform> = of(TransformType::INTEG).collect();
    let real_integ_offered = integ_offered.iter().any(|t| t.transform_id != INTEG_NONE);
    let integ_pick = integ_offered
        .iter()
        .filter(|t| t.attributes.is_empty())
        .filter_map(|t| IntegAlg::from_id(t.transform_id))
        .find(|i| spec.integ.contains(i));
    let (encr, integ) = of(TransformType::ENCR)
        .filter_map(EncrAlg::from_transform)
        .filter(|e| spec.encr.contains(e))
        .find_map(|e| {
        if e.is_aead() {
            (!real_integ_offered).then_some((e, None))
        } else {
            integ_pick.map(|i| (e, Some(i)))
        }
    })?;

    let dh_offered: Vec<&Transform> = of(TransformType::DH).collect();
    let dh = if spec.dh.is_empty() {
        // No PFS configured: acceptable only if the peer did not ask for DH, or also offers NONE.
        if !dh_offered.is_empty() && !dh_offered.iter().any(|t| t.transform_id == 0) {
            return None;
        }
        None
    } else {
        let d = dh_offered
            .iter()
            .filter(|t| t.attributes.is_empty())
            .filter_map(|t| DhGroup::from_id(t.transform_id))
            .find(|d| spec.dh.contains(d));
        match d {
            Some(d) => Some(d),
            None => return None,
        }
    };

    let (prf, esn) = if is_ike {
        let prf = of(TransformType::PRF)
            .filter(|t| t.attributes.is_empty())
            .filter_map(|t| PrfAlg::from_id(t.transform_id))
            .find(|x| spec.prf.contains(x))?;
        if of(TransformType::ESN).next().is_some() {
            return None;
        }
        (Some(prf), None)
    } else {
        if of(TransformType::PRF).next().is_some() {
            return None;
        }
        let esn = of(TransformType::ESN)
            .filter(|t| t.attributes.is_empty())
            .filter_map(|t| Esn::from_id(t.transform_id))
            .find(|x| spec.esn.contains(x))?;
        (None, Some(esn))
    };

    if is_ike && dh.is_none() {
        return None;
    }

    Some(ChosenProposal { number: p.number, protocol: p.protocol_id, spi: p.spi.clone(), encr, prf, integ, dh, esn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::TransformAttribute;

    fn ike_spec() -> ProposalSpec {
        ProposalSpec {
            protocol: ProtocolId::IKE,
            encr: vec![EncrAlg::AES128_CBC, EncrAlg::AES256_CBC, EncrAlg::AES256_GCM16],
            prf: vec![PrfAlg::HmacSha256, PrfAlg::HmacSha384],
            integ: vec![IntegAlg::HmacSha256_128],
            dh: vec![DhGroup::Ecp256, DhGroup::Modp2048],
            esn: vec![],
        }
    }

    fn esp_spec(pfs: Vec<DhGroup>) -> ProposalSpec {
        ProposalSpec {
            protocol: ProtocolId::ESP,
            encr: vec![EncrAlg::AES128_GCM16, EncrAlg::AES128_CBC],
            prf: vec![],
            integ: vec![IntegAlg::HmacSha256_128],
            dh: pfs,
            esn: vec![Esn::No, Esn::Yes],
        }
    }

    fn t(tt: TransformType, id: u16) -> Transform {
        Transform::new(tt, id)
    }

    fn ike_proposal(number: u8, transforms: Vec<Transform>) -> Proposal {
        Proposal { number, protocol_id: ProtocolId::IKE, spi: vec![], transforms }
    }

    #[test]
    fn ids_round_trip_through_transforms() {
        for e in [
            EncrAlg::Des,
            EncrAlg::TripleDes,
            EncrAlg::AesCbc { key_bits: 128 },
            EncrAlg::AesCbc { key_bits: 192 },
            EncrAlg::AesCbc { key_bits: 256 },
            EncrAlg::AesGcm16 { key_bits: 128 },
            EncrAlg::AesGcm16 { key_bits: 192 },
            EncrAlg::AesGcm16 { key_bits: 256 },
        ] {
            assert_eq!(EncrAlg::from_transform(&e.to_transform()), Some(e));
        }
        assert_eq!(
            [EncrAlg::Des.id(), EncrAlg::TripleDes.id(), EncrAlg::AES128_CBC.id(), EncrAlg::AES128_GCM16.id()],
            [2, 3, 12, 20]
        );
        for p in [PrfAlg::HmacMd5, PrfAlg::HmacSha1, PrfAlg::HmacSha256, PrfAlg::HmacSha384, PrfAlg::HmacSha512] {
            assert_eq!(PrfAlg::from_id(p.id()), Some(p));
        }
        assert_eq!(
            [1, 2, 5, 6, 7].map(|i| PrfAlg::from_id(i).map(PrfAlg::output_len)),
            [Some(16), Some(20), Some(32), Some(48), Some(64)]
        );
        for i in [
            IntegAlg::HmacMd5_96,
            IntegAlg::HmacSha1_96,
            IntegAlg::HmacSha256_128,
            IntegAlg::HmacSha384_192,
            IntegAlg::HmacSha512_256,
        ] {
            assert_eq!(IntegAlg::from_id(i.id()), Some(i));
        }
        assert_eq!(
            [1, 2, 12, 13, 14].map(|i| IntegAlg::from_id(i).map(IntegAlg::icv_len)),
            [Some(12), Some(12), Some(16), Some(24), Some(32)]
        );
        assert_eq!(IntegAlg::from_id(INTEG_NONE), None);
        assert_eq!(DhGroup::ALL.map(DhGroup::id), [1, 2, 5, 14, 24, 19, 20, 21, 31]);
        assert_eq!((Esn::from_id(0), Esn::from_id(1), Esn::from_id(2)), (Some(Esn::No), Some(Esn::Yes), None));
        // Key length attribute rules.
        assert_eq!(EncrAlg::from_transform(&t(TransformType::ENCR, 12)), None, "AES needs a key length");
        assert_eq!(EncrAlg::from_transform(&Transform::with_key_length(TransformType::ENCR, 12, 512)), None);
        assert_eq!(
            EncrAlg::from_transform(&Transform::with_key_length(TransformType::ENCR, 3, 192)),
            None,
            "3DES must not carry a key length"
        );
        let mut two = Transform::with_key_length(TransformType::ENCR, 12, 128);
        two.attributes.push(two.attributes[0].clone());
        assert_eq!(EncrAlg::from_transform(&two), None);
        let tlv = Transform {
            transform_type: TransformType::ENCR,
            transform_id: 12,
            attributes: vec![TransformAttribute {
                attr_type: ATTR_KEY_LENGTH,
                value: AttributeValue::Tlv(vec![0, 128]),
            }],
        };
        assert_eq!(EncrAlg::from_transform(&tlv), None);
    }

    #[test]
    fn selects_first_acceptable_peer_proposal_in_peer_order() {
        let peer = vec![
            // Not acceptable: 3DES / SHA1 / MODP1024.
            ike_proposal(
                1,
                vec![
                    t(TransformType::ENCR, 3),
                    t(TransformType::PRF, 2),
                    t(TransformType::INTEG, 2),
                    t(TransformType::DH, 2),
                ],
            ),
            // Acceptable: peer prefers AES-256 and group 14, then AES-128 and group 19.
            ike_proposal(
                2,
                vec![
                    Transform::with_key_length(TransformType::ENCR, 12, 256),
                    Transform::with_key_length(TransformType::ENCR, 12, 128),
                    t(TransformType::PRF, 6),
                    t(TransformType::PRF, 5),
                    t(TransformType::INTEG, 2),
                    t(TransformType::INTEG, 12),
                    t(TransformType::DH, 14),
                    t(TransformType::DH, 19),
                ],
            ),
            // Also acceptable, but later.
            ike_proposal(
                3,
                vec![
                    Transform::with_key_length(TransformType::ENCR, 12, 128),
                    t(TransformType::PRF, 5),
                    t(TransformType::INTEG, 12),
                    t(TransformType::DH, 19),
                ],
            ),
        ];
        let c = select_proposal(&peer, &[ike_spec()]).unwrap();
        assert_eq!(c.number, 2);
        assert_eq!(c.encr, EncrAlg::AES256_CBC);
        assert_eq!(c.prf, Some(PrfAlg::HmacSha384));
        assert_eq!(c.integ, Some(IntegAlg::HmacSha256_128));
        assert_eq!(c.dh, Some(DhGroup::Modp2048));
        assert_eq!(c.esn, None);
        // The reply proposal has one transform per type and echoes the number.
        let reply = c.to_proposal(vec![]);
        assert_eq!(reply.number, 2);
        assert_eq!(reply.transforms.len(), 4);
        assert_eq!(reply.transforms[0].key_length(), Some(256));
        // The initiator accepts the reply as is (select again on it).
        assert_eq!(select_proposal(&[reply], &[ike_spec()]).unwrap(), c);
    }

    #[test]
    fn key_length_attribute_is_respected() {
        let mut spec = ike_spec();
        spec.encr = vec![EncrAlg::AES128_CBC];
        let offer = |bits: u16| {
            vec![ike_proposal(
                1,
                vec![
                    Transform::with_key_length(TransformType::ENCR, 12, bits),
                    t(TransformType::PRF, 5),
                    t(TransformType::INTEG, 12),
                    t(TransformType::DH, 19),
                ],
            )]
        };
        assert!(select_proposal(&offer(128), std::slice::from_ref(&spec)).is_ok());
        assert_eq!(
            select_proposal(&offer(256), std::slice::from_ref(&spec)).unwrap_err(),
            SelectError::NoProposalChosen
        );
        assert!(select_proposal(&offer(192), &[ike_spec()]).is_err());
    }

    #[test]
    fn unacceptable_proposals() {
        let base = vec![
            Transform::with_key_length(TransformType::ENCR, 12, 128),
            t(TransformType::PRF, 5),
            t(TransformType::INTEG, 12),
            t(TransformType::DH, 19),
        ];
        let spec = [ike_spec()];
        assert!(select_proposal(&[ike_proposal(1, base.clone())], &spec).is_ok());
        // Missing each mandatory type in turn.
        for skip in 0..4 {
            let mut v = base.clone();
            v.remove(skip);
            assert!(select_proposal(&[ike_proposal(1, v)], &spec).is_err(), "without #{skip}");
        }
        // Unknown transform type: the proposal is rejected, the next one chosen.
        let mut v = base.clone();
        v.push(t(TransformType(9), 1));
        let c = select_proposal(&[ike_proposal(1, v), ike_proposal(2, base.clone())], &spec).unwrap();
        assert_eq!(c.number, 2);
        // Unknown transform ID of a known type is only skipped.
        let mut v = base.clone();
        v.insert(0, t(TransformType::ENCR, 999));
        assert!(select_proposal(&[ike_proposal(1, v)], &spec).is_ok());
        // ESN in an IKE proposal.
        let mut v = base.clone();
        v.push(t(TransformType::ESN, 0));
        assert!(select_proposal(&[ike_proposal(1, v)], &spec).is_err());
        // Wrong SPI size for IKE.
        let mut p = ike_proposal(1, base.clone());
        p.spi = vec![1, 2, 3, 4];
        assert!(select_proposal(&[p.clone()], &spec).is_err());
        p.spi = vec![1; 8];
        assert!(select_proposal(&[p], &spec).is_ok(), "8-octet SPI when rekeying");
        // Wrong protocol.
        let mut p = ike_proposal(1, base);
        p.protocol_id = ProtocolId::AH;
        assert!(select_proposal(&[p], &spec).is_err());
    }

    #[test]
    fn aead_and_integrity() {
        let spec = [ike_spec()];
        let gcm = Transform::with_key_length(TransformType::ENCR, 20, 256);
        let rest = [t(TransformType::PRF, 5), t(TransformType::DH, 19)];
        // GCM without INTEG, or with INTEG NONE: accepted, no integrity chosen.
        for integ in [vec![], vec![t(TransformType::INTEG, INTEG_NONE)]] {
            let mut v = vec![gcm.clone()];
            v.extend(integ);
            v.extend(rest.clone());
            let c = select_proposal(&[ike_proposal(1, v)], &spec).unwrap();
            assert_eq!((c.encr, c.integ), (EncrAlg::AES256_GCM16, None));
            assert_eq!(c.to_proposal(vec![]).transforms.len(), 3);
        }
        // GCM with a real integrity algorithm is a mixed proposal: rejected.
        let mut v = vec![gcm, t(TransformType::INTEG, 12)];
        v.extend(rest.clone());
        assert!(select_proposal(&[ike_proposal(1, v)], &spec).is_err());
        // A single proposal mixing GCM and CBC with an integrity algorithm: CBC is chosen.
        let v = vec![
            Transform::with_key_length(TransformType::ENCR, 20, 256),
            Transform::with_key_length(TransformType::ENCR, 12, 128),
            t(TransformType::INTEG, 12),
            t(TransformType::PRF, 5),
            t(TransformType::DH, 19),
        ];
        let c = select_proposal(&[ike_proposal(1, v)], &spec).unwrap();
        assert_eq!((c.encr, c.integ), (EncrAlg::AES128_CBC, Some(IntegAlg::HmacSha256_128)));
        // CBC with only INTEG NONE: rejected.
        let mut v = vec![Transform::with_key_length(TransformType::ENCR, 12, 128), t(TransformType::INTEG, INTEG_NONE)];
        v.extend(rest);
        assert!(select_proposal(&[ike_proposal(1, v)], &spec).is_err());
    }

    #[test]
    fn esp_selection_esn_and_pfs() {
        let esp = |transforms: Vec<Transform>| Proposal {
            number: 1,
            protocol_id: ProtocolId::ESP,
            spi: vec![0, 0, 0, 1],
            transforms,
        };
        let base = vec![
            Transform::with_key_length(TransformType::ENCR, 20, 128),
            t(TransformType::ESN, 1),
            t(TransformType::ESN, 0),
        ];
        let c = select_proposal(&[esp(base.clone())], &[esp_spec(vec![])]).unwrap();
        assert_eq!(c.encr, EncrAlg::AES128_GCM16);
        assert_eq!(c.esn, Some(Esn::Yes), "peer's order");
        assert_eq!((c.prf, c.integ, c.dh), (None, None, None));
        assert_eq!(c.spi, vec![0, 0, 0, 1]);
        // ESN is mandatory for ESP.
        assert!(select_proposal(&[esp(base[..1].to_vec())], &[esp_spec(vec![])]).is_err());
        // ESP SPI must be 4 octets.
        let mut p = esp(base.clone());
        p.spi = vec![];
        assert!(select_proposal(&[p], &[esp_spec(vec![])]).is_err());
        // PRF in ESP is not allowed.
        let mut v = base.clone();
        v.push(t(TransformType::PRF, 5));
        assert!(select_proposal(&[esp(v)], &[esp_spec(vec![])]).is_err());
        // Peer wants PFS with group 19; we have no PFS: rejected unless it also offers NONE.
        let mut v = base.clone();
        v.push(t(TransformType::DH, 19));
        assert!(select_proposal(&[esp(v.clone())], &[esp_spec(vec![])]).is_err());
        let c = select_proposal(&[esp(v.clone())], &[esp_spec(vec![DhGroup::Ecp256])]).unwrap();
        assert_eq!(c.dh, Some(DhGroup::Ecp256));
        v.push(t(TransformType::DH, 0));
        assert_eq!(select_proposal(&[esp(v)], &[esp_spec(vec![])]).unwrap().dh, None);
        // We require PFS; the peer offers none.
        assert!(select_proposal(&[esp(base)], &[esp_spec(vec![DhGroup::Ecp256])]).is_err());
    }

    #[test]
    fn offer_numbering_and_second_spec() {
        let specs = [ike_spec(), esp_spec(vec![])];
        // The IKE spec mixes GCM with CBC: two proposals, GCM first without INTEG.
        let offer = build_offer(&specs[..1], &[]);
        assert_eq!(offer.len(), 2);
        assert_eq!(offer[0].number, 1);
        assert_eq!(offer[0].transforms.len(), 1 + 2 + 2);
        assert_eq!(offer[1].number, 2);
        assert_eq!(offer[1].transforms.len(), 2 + 2 + 1 + 2);
        let four = build_offer(&[ike_spec(), ike_spec()], &[]);
        assert_eq!(four.iter().map(|p| p.number).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        // Our own offer is acceptable to ourselves; the second of our specs matches when the
        // first does not.
        let c = select_proposal(&offer, &specs).unwrap();
        assert_eq!((c.number, c.encr, c.integ), (1, EncrAlg::AES256_GCM16, None));
        let c = select_proposal(&offer[1..], &specs).unwrap();
        assert_eq!(c.encr, EncrAlg::AES128_CBC);
        let esp_offer = build_offer(&specs[1..], &[0, 0, 0, 9]);
        let c = select_proposal(&esp_offer, &specs).unwrap();
        assert_eq!(c.protocol, ProtocolId::ESP);
        assert_eq!(c.encr, EncrAlg::AES128_GCM16);
        assert_eq!(c.integ, None);
    }
}
