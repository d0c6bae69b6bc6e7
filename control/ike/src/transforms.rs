//! Transform registry (IANA "Transform Type" values), proposal construction, and proposal
//! selection as responder (RFC 7296 §2.7, §3.3).

use crate::crypto::dh::DhGroup;
use crate::message::{
    AttributeValue, Proposal, ProtocolId, Transform, TransformType, ATTR_KEY_LENGTH,
};

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
            EncrAlg::AesCbc { key_bits } | EncrAlg::AesGcm16 { key_bits } => {
                usize::from(key_bits) / 8
            }
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
            (encr_id::AES_CBC, Some(b)) if valid_aes_bits(b) => {
                Some(EncrAlg::AesCbc { key_bits: b })
            }
            (encr_id::AES_GCM_16, Some(b)) if valid_aes_bits(b) => {
                Some(EncrAlg::AesGcm16 { key_bits: b })
            }
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
    /// Builds the Proposal substructure offering every listed algorithm.
    ///
    /// When this spec mixes AEAD and non-AEAD ciphers the offer is still emitted as one proposal;
    /// callers that care should split it (RFC 7296 §3.3 discourages the mix).
    #[must_use]
    pub fn to_proposal(&self, number: u8, spi: Vec<u8>) -> Proposal {
        let mut transforms = Vec::new();
        transforms.extend(self.encr.iter().map(|e| e.to_transform()));
        transforms.extend(self.prf.iter().map(|p| p.to_transform()));
        transforms.extend(self.integ.iter().map(|i| i.to_transform()));
        transforms.extend(
            self.dh
                .iter()
                .map(|d| Transform::new(TransformType::DH, d.id())),
        );
        transforms.extend(self.esn.iter().map(|e| e.to_transform()));
        Proposal {
            number,
            protocol_id: self.protocol,
            spi,
            transforms,
        }
    }
}

/// Builds an SA offer: one proposal per spec, numbered from 1, all with the same SPI.
#[must_use]
pub fn build_offer(specs: &[ProposalSpec], spi: &[u8]) -> Vec<Proposal> {
    specs
        .iter()
        .zip(1u8..)
        .map(|(s, n)| s.to_proposal(n, spi.to_vec()))
        .collect()
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
        Proposal {
            number: self.number,
            protocol_id: self.protocol,
            spi,
            transforms,
        }
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
/// ESN, INTEG unless AEAD), has the wrong SPI size (IKE: 0 or 8, ESP: 4), or offers AEAD with an
/// integrity algorithm. Transforms with unknown IDs or attributes (e.g. an unsupported key length)
/// are skipped, not fatal.
///
/// # Errors
/// [`SelectError::NoProposalChosen`] if nothing is acceptable.
pub fn select_proposal(
    peer: &[Proposal],
    ours: &[ProposalSpec],
) -> Result<ChosenProposal, SelectError> {
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
    if p.transforms
        .iter()
        .any(|t| !(1..=5).contains(&t.transform_type.0))
    {
        return None;
    }

    let encr = of(TransformType::ENCR)
        .filter_map(EncrAlg::from_transform)
        .find(|e| spec.encr.contains(e))?;

    let integ_offered: Vec<&Transform> = of(TransformType::INTEG).collect();
    let integ = if encr.is_aead() {
        // Only INTEG NONE (or no INTEG at all) may accompany a combined-mode cipher.
        if integ_offered.iter().any(|t| t.transform_id != INTEG_NONE) {
            return None;
        }
        None
    } else {
        Some(
            integ_offered
                .iter()
                .filter(|t| t.attributes.is_empty())
                .filter_map(|t| IntegAlg::from_id(t.transform_id))
                .find(|i| spec.integ.contains(i))?,
        )
    };

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

    Some(ChosenProposal {
        number: p.number,
        protocol: p.protocol_id,
        spi: p.spi.clone(),
        encr,
        prf,
        integ,
        dh,
        esn,
    })
}
