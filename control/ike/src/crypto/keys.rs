//! Key derivation (RFC 7296 §2.14, §2.17, §2.18) and PSK authentication (§2.15).

use subtle::ConstantTimeEq;

use super::prf::{prf, prf_plus};
use super::sk::SkCipher;
use super::{CryptoError, SecretBytes};
use crate::transforms::{EncrAlg, IntegAlg, PrfAlg};

/// The algorithms of an IKE SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// Encryption for SK payloads.
    pub encr: EncrAlg,
    /// PRF.
    pub prf: PrfAlg,
    /// Integrity for SK payloads (`None` iff `encr` is AEAD).
    pub integ: Option<IntegAlg>,
}

/// `SKEYSEED = prf(Ni | Nr, g^ir)` for a new IKE SA (RFC 7296 §2.14). With HMAC PRFs the whole
/// concatenation of the nonces is the key.
#[must_use]
pub fn skeyseed(prf_alg: PrfAlg, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> SecretBytes {
    let mut k = zeroize::Zeroizing::new(Vec::with_capacity(ni.len() + nr.len()));
    k.extend_from_slice(ni);
    k.extend_from_slice(nr);
    prf(prf_alg, &k, &[g_ir])
}

/// `SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)` when rekeying an IKE SA (RFC 7296 §2.18).
#[must_use]
pub fn skeyseed_rekey(prf_alg: PrfAlg, old_sk_d: &SecretBytes, g_ir_new: &[u8], ni: &[u8], nr: &[u8]) -> SecretBytes {
    prf(prf_alg, old_sk_d.expose(), &[g_ir_new, ni, nr])
}

/// The seven IKE SA keys `{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}`.
#[derive(Debug, PartialEq, Eq)]
pub struct IkeSaKeys {
    /// Algorithms the keys are for.
    pub suite: IkeSuite,
    /// SK_d: derives Child SA keys.
    pub sk_d: SecretBytes,
    /// SK_ai: integrity, initiator to responder (empty with AEAD).
    pub sk_ai: SecretBytes,
    /// SK_ar: integrity, responder to initiator (empty with AEAD).
    pub sk_ar: SecretBytes,
    /// SK_ei: encryption, initiator to responder (key, then salt for GCM).
    pub sk_ei: SecretBytes,
    /// SK_er: encryption, responder to initiator.
    pub sk_er: SecretBytes,
    /// SK_pi: used in the initiator's AUTH.
    pub sk_pi: SecretBytes,
    /// SK_pr: used in the responder's AUTH.
    pub sk_pr: SecretBytes,
}

impl IkeSaKeys {
    /// Derives the keys from SKEYSEED: `prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)` split in the order
    /// of RFC 7296 §2.14. SK_d, SK_pi and SK_pr have the PRF's preferred key length (its output
    /// length), SK_a* the integrity key length, SK_e* the cipher's key material length (key plus
    /// 4-octet salt for AES-GCM, RFC 5282 §7.1).
    ///
    /// # Errors
    /// [`CryptoError::PrfPlusTooLong`] cannot happen for the algorithms of this crate but is
    /// propagated.
    pub fn derive(
        suite: IkeSuite,
        skeyseed: &SecretBytes,
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<Self, CryptoError> {
        let prf_len = suite.prf.output_len();
        let a_len = suite.integ.map_or(0, IntegAlg::key_len);
        let e_len = suite.encr.keymat_len();
        let total = 3 * prf_len + 2 * a_len + 2 * e_len;
        let mut seed = Vec::with_capacity(ni.len() + nr.len() + 16);
        seed.extend_from_slice(ni);
        seed.extend_from_slice(nr);
        seed.extend_from_slice(&spi_i.to_be_bytes());
        seed.extend_from_slice(&spi_r.to_be_bytes());
        let km = prf_plus(suite.prf, skeyseed.expose(), &seed, total)?;
        let mut split = Splitter::new(km.expose());
        Ok(IkeSaKeys {
            suite,
            sk_d: split.next(prf_len),
            sk_ai: split.next(a_len),
            sk_ar: split.next(a_len),
            sk_ei: split.next(e_len),
            sk_er: split.next(e_len),
            sk_pi: split.next(prf_len),
            sk_pr: split.next(prf_len),
        })
    }

    /// Derives SKEYSEED and then the keys for a new IKE SA in one step.
    ///
    /// # Errors
    /// As [`IkeSaKeys::derive`].
    pub fn derive_initial(
        suite: IkeSuite,
        g_ir: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<Self, CryptoError> {
        let seed = skeyseed(suite.prf, ni, nr, g_ir);
        Self::derive(suite, &seed, ni, nr, spi_i, spi_r)
    }

    /// The SK payload protector for messages this endpoint sends (`initiator`: whether we are the
    /// original initiator of the IKE SA).
    ///
    /// # Errors
    /// [`CryptoError::KeyLength`] if the keys do not fit the suite (not possible for keys derived
    /// here).
    pub fn outbound(&self, initiator: bool) -> Result<SkCipher, CryptoError> {
        let (e, a) = if initiator { (&self.sk_ei, &self.sk_ai) } else { (&self.sk_er, &self.sk_ar) };
        SkCipher::new(self.suite.encr, self.suite.integ, e, a)
    }

    /// The SK payload protector for messages this endpoint receives.
    ///
    /// # Errors
    /// As [`IkeSaKeys::outbound`].
    pub fn inbound(&self, initiator: bool) -> Result<SkCipher, CryptoError> {
        self.outbound(!initiator)
    }
}

struct Splitter<'a> {
    rest: &'a [u8],
}

impl<'a> Splitter<'a> {
    fn new(b: &'a [u8]) -> Self {
        Splitter { rest: b }
    }

    fn next(&mut self, n: usize) -> SecretBytes {
        let (h, t) = self.rest.split_at(n);
        self.rest = t;
        SecretBytes::from_slice(h)
    }
}

/// Keys of one Child SA pair (ESP), per direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildKeys {
    /// Encryption key material, initiator to responder (key then salt for GCM).
    pub encr_i: SecretBytes,
    /// Integrity key, initiator to responder (empty with AEAD).
    pub integ_i: SecretBytes,
    /// Encryption key material, responder to initiator.
    pub encr_r: SecretBytes,
    /// Integrity key, responder to initiator.
    pub integ_r: SecretBytes,
}

/// Child SA KEYMAT = `prf+(SK_d, Ni | Nr)`, or `prf+(SK_d, g^ir (new) | Ni | Nr)` with PFS
/// (RFC 7296 §2.17). Keys for initiator→responder traffic come first; within a direction the
/// encryption key precedes the integrity key.
///
/// # Errors
/// [`CryptoError::PrfPlusTooLong`] if the algorithms need more than 255 PRF blocks.
pub fn child_keymat(
    prf_alg: PrfAlg,
    sk_d: &SecretBytes,
    g_ir_new: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    encr: EncrAlg,
    integ: Option<IntegAlg>,
) -> Result<ChildKeys, CryptoError> {
    let e = encr.keymat_len();
    let a = integ.map_or(0, IntegAlg::key_len);
    let mut seed = zeroize::Zeroizing::new(Vec::new());
    if let Some(g) = g_ir_new {
        seed.extend_from_slice(g);
    }
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    let km = prf_plus(prf_alg, sk_d.expose(), &seed, 2 * (e + a))?;
    let mut s = Splitter::new(km.expose());
    Ok(ChildKeys { encr_i: s.next(e), integ_i: s.next(a), encr_r: s.next(e), integ_r: s.next(a) })
}

/// The key pad of RFC 7296 §2.15.
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// The octets an endpoint signs (RFC 7296 §2.15): its whole first message as sent
/// (`RealMessage1` or `RealMessage2`), the peer's nonce data, and
/// `prf(SK_px, RestOfIDPayload)` with its own SK_pi/SK_pr and ID payload body.
#[must_use]
pub fn signed_octets(
    prf_alg: PrfAlg,
    real_message: &[u8],
    peer_nonce: &[u8],
    own_sk_p: &SecretBytes,
    own_id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf(prf_alg, own_sk_p.expose(), &[own_id_body]);
    let mut v = Vec::with_capacity(real_message.len() + peer_nonce.len() + maced_id.len());
    v.extend_from_slice(real_message);
    v.extend_from_slice(peer_nonce);
    v.extend_from_slice(maced_id.expose());
    v
}

/// Shared-key AUTH data: `prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)`.
#[must_use]
pub fn psk_auth(prf_alg: PrfAlg, psk: &SecretBytes, signed_octets: &[u8]) -> Vec<u8> {
    let k = prf(prf_alg, psk.expose(), &[KEY_PAD]);
    prf(prf_alg, k.expose(), &[signed_octets]).expose().to_vec()
}

/// Verifies a peer's shared-key AUTH data in constant time.
#[must_use]
pub fn verify_psk_auth(prf_alg: PrfAlg, psk: &SecretBytes, signed_octets: &[u8], received: &[u8]) -> bool {
    let expect = psk_auth(prf_alg, psk, signed_octets);
    expect.len() == received.len() && bool::from(expect.ct_eq(received))
}
