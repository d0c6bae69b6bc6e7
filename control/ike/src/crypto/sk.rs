//! The Encrypted and Authenticated (SK) payload (RFC 7296 §3.14; AES-GCM per RFC 5282).
//!
//! Layout of the SK body: `IV | ciphertext | ICV`. The plaintext is the inner payload chain, then
//! `Padding` and a one-octet `Pad Length`.
//!
//! * CBC ciphers (DES, 3DES, AES-CBC) with an HMAC integrity transform: the IV is a full block drawn
//!   from the caller's RNG (it must be unpredictable), padding brings the plaintext to a block
//!   multiple, and the ICV — the HMAC truncated to the transform's length — covers the whole
//!   message from the first octet of the IKE header to the last octet before the ICV.
//! * AES-GCM-16: the 4-octet salt is the tail of SK_e, the nonce is `salt | IV` with an 8-octet IV,
//!   the tag is 16 octets, and the associated data is everything from the IKE header through the
//!   SK payload's generic header (including any unencrypted payloads before it). No padding is
//!   added (the Pad Length octet is 0). IVs come from a per-protector 64-bit counter whose start is
//!   drawn from the RNG on first use, so a protector never repeats an IV.
//!
//! On receipt, the ICV/tag is checked (in constant time) before anything is decrypted or parsed;
//! a failure is [`SkError::Crypto`]`(`[`CryptoError::Integrity`]`)` and the message must be dropped
//! without reply.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadCore, AeadInOut};
use aes_gcm::AesGcm;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::prf::integ_icv;
use super::{CryptoError, SecretBytes};
use crate::message::{emit_chain, parse_chain, EmitError, EncryptedPayload, Header, Message, ParseError, Payload};
use crate::transforms::{EncrAlg, IntegAlg};

/// AES-GCM ICV length (ENCR_AES_GCM_16).
pub const GCM_ICV_LEN: usize = 16;
const GCM_SALT_LEN: usize = 4;

/// Errors of sealing or opening an SK payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkError {
    /// The outer message, or the decrypted inner chain, does not parse.
    Parse(ParseError),
    /// The message could not be emitted.
    Emit(EmitError),
    /// Cryptographic failure (integrity failure: drop silently).
    Crypto(CryptoError),
    /// The message's last payload is not an SK payload.
    NotEncrypted,
}

impl core::fmt::Display for SkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SkError::Parse(e) => write!(f, "SK payload: {e}"),
            SkError::Emit(e) => write!(f, "SK payload: {e}"),
            SkError::Crypto(e) => write!(f, "SK payload: {e}"),
            SkError::NotEncrypted => f.write_str("message has no SK payload"),
        }
    }
}

impl std::error::Error for SkError {}

impl From<ParseError> for SkError {
    fn from(e: ParseError) -> Self {
        SkError::Parse(e)
    }
}

impl From<EmitError> for SkError {
    fn from(e: EmitError) -> Self {
        SkError::Emit(e)
    }
}

impl From<CryptoError> for SkError {
    fn from(e: CryptoError) -> Self {
        SkError::Crypto(e)
    }
}

/// A decrypted, authenticated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The IKE header (authenticated).
    pub header: Header,
    /// Unencrypted payloads that preceded the SK payload (authenticated, usually none).
    pub outer: Vec<Payload>,
    /// The payloads inside the SK payload.
    pub inner: Vec<Payload>,
}

/// Protects or opens SK payloads in one direction with one set of keys. Deliberately not `Clone`:
/// each direction of an IKE SA owns exactly one, which keeps AES-GCM IVs unique.
pub struct SkCipher {
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    key: SecretBytes,
    salt: [u8; GCM_SALT_LEN],
    integ_key: SecretBytes,
    next_iv: Option<u64>,
}

impl core::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SkCipher").field("encr", &self.encr).field("integ", &self.integ).finish_non_exhaustive()
    }
}

impl SkCipher {
    /// `encr_keymat` is SK_e (key, then salt for GCM); `integ_key` is SK_a (empty for AEAD).
    ///
    /// # Errors
    /// [`CryptoError::KeyLength`] if a key does not fit its algorithm, or if `integ` is missing
    /// for a non-AEAD cipher or present for an AEAD one.
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_keymat: &SecretBytes,
        integ_key: &SecretBytes,
    ) -> Result<Self, CryptoError> {
        if encr_keymat.len() != encr.keymat_len() {
            return Err(CryptoError::KeyLength);
        }
        match (encr.is_aead(), integ) {
            (true, None) if integ_key.is_empty() => {}
            (false, Some(i)) if integ_key.len() == i.key_len() => {}
            _ => return Err(CryptoError::KeyLength),
        }
        let (k, s) = encr_keymat.expose().split_at(encr.key_len());
        let mut salt = [0u8; GCM_SALT_LEN];
        if encr.is_aead() {
            salt.copy_from_slice(s);
        }
        Ok(SkCipher { encr, integ, key: SecretBytes::from_slice(k), salt, integ_key: integ_key.clone(), next_iv: None })
    }

    fn icv_len(&self) -> usize {
        match self.integ {
            Some(i) => i.icv_len(),
            None => GCM_ICV_LEN,
        }
    }

    /// Octets an SK payload adds around a plaintext of `len` octets (generic header, IV, padding,
    /// Pad Length, ICV).
    #[must_use]
    pub fn overhead(&self, len: usize) -> usize {
        let bs = self.encr.block_size();
        let pad = (bs - (len + 1) % bs) % bs;
        4 + self.encr.iv_len() + pad + 1 + self.icv_len()
    }

    /// Builds a whole protected message: `header`, then the unencrypted `outer` payloads (usually
    /// none), then an SK payload containing `inner`.
    ///
    /// # Errors
    /// [`SkError::Emit`] if the payloads cannot be encoded or the message is too long.
    pub fn seal<R: CryptoRng + ?Sized>(
        &mut self,
        header: &Header,
        outer: &[Payload],
        inner: &[Payload],
        rng: &mut R,
    ) -> Result<Vec<u8>, SkError> {
        let mut pt = Zeroizing::new(Vec::with_capacity(256));
        let first_inner = emit_chain(inner, &mut pt, false)?;
        let bs = self.encr.block_size();
        let pad = (bs - (pt.len() + 1) % bs) % bs;
        let unpadded = pt.len();
        pt.resize(unpadded + pad, 0);
        pt.push(u8::try_from(pad).map_err(|_| EmitError::TooLong)?);

        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        let body_len = iv_len + pt.len() + icv_len;
        let mut payloads = outer.to_vec();
        payloads.push(Payload::Encrypted(EncryptedPayload { first_inner, data: vec![0; body_len] }));
        let mut out = Message { header: *header, payloads }.emit()?;
        let body_start = out.len() - body_len;
        let ct_start = body_start + iv_len;
        let ct_end = ct_start + pt.len();

        let mut iv = [0u8; 16];
        let iv = &mut iv[..iv_len];
        if self.encr.is_aead() {
            let n = match self.next_iv {
                Some(n) => n,
                None => rng.next_u64(),
            };
            self.next_iv = Some(n.wrapping_add(1));
            iv.copy_from_slice(&n.to_be_bytes());
        } else {
            rng.fill_bytes(iv);
        }
        out[body_start..ct_start].copy_from_slice(iv);
        out[ct_start..ct_end].copy_from_slice(&pt);

        let key = self.key.expose();
        match self.encr {
            EncrAlg::Des => cbc_encrypt::<des::Des>(key, iv, &mut out[ct_start..ct_end])?,
            EncrAlg::TripleDes => cbc_encrypt::<des::TdesEde3>(key, iv, &mut out[ct_start..ct_end])?,
            EncrAlg::AesCbc { key_bits } => match key_bits {
                128 => cbc_encrypt::<aes::Aes128>(key, iv, &mut out[ct_start..ct_end])?,
                192 => cbc_encrypt::<aes::Aes192>(key, iv, &mut out[ct_start..ct_end])?,
                _ => cbc_encrypt::<aes::Aes256>(key, iv, &mut out[ct_start..ct_end])?,
            },
            EncrAlg::AesGcm16 { key_bits } => {
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&self.salt);
                nonce[4..].copy_from_slice(iv);
                let (aad, rest) = out.split_at_mut(body_start);
                let buf = &mut rest[iv_len..iv_len + pt.len()];
                let tag = match key_bits {
                    128 => gcm_seal::<aes::Aes128>(key, &nonce, aad, buf)?,
                    192 => gcm_seal::<aes::Aes192>(key, &nonce, aad, buf)?,
                    _ => gcm_seal::<aes::Aes256>(key, &nonce, aad, buf)?,
                };
                out[ct_end..].copy_from_slice(&tag);
            }
        }
        if let Some(integ) = self.integ {
            let icv_at = out.len() - icv_len;
            let icv = integ_icv(integ, self.integ_key.expose(), &[&out[..icv_at]]);
            out[icv_at..].copy_from_slice(&icv);
        }
        Ok(out)
    }

    /// Parses `raw`, verifies the ICV (or GCM tag) of its trailing SK payload, decrypts it and
    /// parses the inner payload chain.
    ///
    /// # Errors
    /// [`SkError::Crypto`]`(`[`CryptoError::Integrity`]`)` on a bad ICV/tag; other variants for
    /// malformed messages.
    pub fn open(&self, raw: &[u8]) -> Result<Opened, SkError> {
        let msg = Message::parse(raw)?;
        let mut payloads = msg.payloads;
        let sk = match payloads.pop() {
            Some(Payload::Encrypted(e)) => e,
            _ => return Err(SkError::NotEncrypted),
        };
        let body_len = sk.data.len();
        let body_start = raw.len() - body_len;
        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        let bs = self.encr.block_size();
        if body_len < iv_len + icv_len + 1 || !(body_len - iv_len - icv_len).is_multiple_of(bs) {
            return Err(CryptoError::BadCiphertext.into());
        }
        let ct_len = body_len - iv_len - icv_len;
        let iv = &sk.data[..iv_len];
        let icv = &sk.data[iv_len + ct_len..];
        let mut pt = Zeroizing::new(sk.data[iv_len..iv_len + ct_len].to_vec());
        let key = self.key.expose();

        if let Some(integ) = self.integ {
            let expect = integ_icv(integ, self.integ_key.expose(), &[&raw[..raw.len() - icv_len]]);
            if !bool::from(expect.ct_eq(icv)) {
                return Err(CryptoError::Integrity.into());
            }
        }
        match self.encr {
            EncrAlg::Des => cbc_decrypt::<des::Des>(key, iv, &mut pt)?,
            EncrAlg::TripleDes => cbc_decrypt::<des::TdesEde3>(key, iv, &mut pt)?,
            EncrAlg::AesCbc { key_bits } => match key_bits {
                128 => cbc_decrypt::<aes::Aes128>(key, iv, &mut pt)?,
                192 => cbc_decrypt::<aes::Aes192>(key, iv, &mut pt)?,
                _ => cbc_decrypt::<aes::Aes256>(key, iv, &mut pt)?,
            },
            EncrAlg::AesGcm16 { key_bits } => {
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&self.salt);
                nonce[4..].copy_from_slice(iv);
                let aad = &raw[..body_start];
                match key_bits {
                    128 => gcm_open::<aes::Aes128>(key, &nonce, aad, &mut pt, icv)?,
                    192 => gcm_open::<aes::Aes192>(key, &nonce, aad, &mut pt, icv)?,
                    _ => gcm_open::<aes::Aes256>(key, &nonce, aad, &mut pt, icv)?,
                }
            }
        }
        // Authenticated from here on. Pad Length must leave room for itself.
        let pad = usize::from(*pt.last().ok_or(CryptoError::BadCiphertext)?);
        if pad + 1 > pt.len() {
            return Err(CryptoError::BadCiphertext.into());
        }
        let inner_len = pt.len() - pad - 1;
        let inner = parse_chain(sk.first_inner, &pt[..inner_len], false)?;
        Ok(Opened { header: msg.header, outer: payloads, inner })
    }
}

fn cbc_encrypt<C>(key: &[u8], iv: &[u8], buf: &mut [u8]) -> Result<(), CryptoError>
where
    C: BlockCipherEncrypt + KeyInit,
    cbc::Encryptor<C>: KeyIvInit + BlockModeEncrypt,
{
    let len = buf.len();
    cbc::Encryptor::<C>::new_from_slices(key, iv)
        .map_err(|_| CryptoError::KeyLength)?
        .encrypt_padded::<NoPadding>(buf, len)
        .map_err(|_| CryptoError::BadCiphertext)?;
    Ok(())
}

fn cbc_decrypt<C>(key: &[u8], iv: &[u8], buf: &mut [u8]) -> Result<(), CryptoError>
where
    C: BlockCipherDecrypt + KeyInit,
    cbc::Decryptor<C>: KeyIvInit + BlockModeDecrypt,
{
    cbc::Decryptor::<C>::new_from_slices(key, iv)
        .map_err(|_| CryptoError::KeyLength)?
        .decrypt_padded::<NoPadding>(buf)
        .map_err(|_| CryptoError::BadCiphertext)?;
    Ok(())
}

fn gcm_seal<C>(key: &[u8], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; GCM_ICV_LEN], CryptoError>
where
    AesGcm<C, U12>: KeyInit + AeadInOut + AeadCore<NonceSize = U12, TagSize = U16>,
{
    let c = AesGcm::<C, U12>::new_from_slice(key).map_err(|_| CryptoError::KeyLength)?;
    let tag =
        c.encrypt_inout_detached(&Array::from(*nonce), aad, buf.into()).map_err(|_| CryptoError::BadCiphertext)?;
    let mut t = [0u8; GCM_ICV_LEN];
    t.copy_from_slice(&tag);
    Ok(t)
}

fn gcm_open<C>(key: &[u8], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), CryptoError>
where
    AesGcm<C, U12>: KeyInit + AeadInOut + AeadCore<NonceSize = U12, TagSize = U16>,
{
    let c = AesGcm::<C, U12>::new_from_slice(key).map_err(|_| CryptoError::KeyLength)?;
    let tag = Array::<u8, U16>::try_from(tag).map_err(|_| CryptoError::Integrity)?;
    c.decrypt_inout_detached(&Array::from(*nonce), aad, buf.into(), &tag).map_err(|_| CryptoError::Integrity)
}

/// Raw CBC encryption in place with `encr` (DES, 3DES, AES-CBC; no padding: `buf` must be a
/// multiple of the block size). Used by IKEv1, whose messages are CBC-encrypted without an SK
/// payload (`crate::v1`).
///
/// # Errors
/// [`CryptoError::KeyLength`] for a wrong key/IV length or an AEAD cipher,
/// [`CryptoError::BadCiphertext`] if `buf` is not a block multiple.
pub fn cbc_encrypt_raw(encr: EncrAlg, key: &[u8], iv: &[u8], buf: &mut [u8]) -> Result<(), CryptoError> {
    if !buf.len().is_multiple_of(encr.block_size()) {
        return Err(CryptoError::BadCiphertext);
    }
    match encr {
        EncrAlg::Des => cbc_encrypt::<des::Des>(key, iv, buf),
        EncrAlg::TripleDes => cbc_encrypt::<des::TdesEde3>(key, iv, buf),
        EncrAlg::AesCbc { key_bits: 128 } => cbc_encrypt::<aes::Aes128>(key, iv, buf),
        EncrAlg::AesCbc { key_bits: 192 } => cbc_encrypt::<aes::Aes192>(key, iv, buf),
        EncrAlg::AesCbc { key_bits: 256 } => cbc_encrypt::<aes::Aes256>(key, iv, buf),
        _ => Err(CryptoError::KeyLength),
    }
}

/// Raw CBC decryption in place, the inverse of [`cbc_encrypt_raw`].
///
/// # Errors
/// As [`cbc_encrypt_raw`].
pub fn cbc_decrypt_raw(encr: EncrAlg, key: &[u8], iv: &[u8], buf: &mut [u8]) -> Result<(), CryptoError> {
    if !buf.len().is_multiple_of(encr.block_size()) {
        return Err(CryptoError::BadCiphertext);
    }
    match encr {
        EncrAlg::Des => cbc_decrypt::<des::Des>(key, iv, buf),
        EncrAlg::TripleDes => cbc_decrypt::<des::TdesEde3>(key, iv, buf),
        EncrAlg::AesCbc { key_bits: 128 } => cbc_decrypt::<aes::Aes128>(key, iv, buf),
        EncrAlg::AesCbc { key_bits: 192 } => cbc_decrypt::<aes::Aes192>(key, iv, buf),
        EncrAlg::AesCbc { key_bits: 256 } => cbc_decrypt::<aes::Aes256>(key, iv, buf),
        _ => Err(CryptoError::KeyLength),
    }
}
