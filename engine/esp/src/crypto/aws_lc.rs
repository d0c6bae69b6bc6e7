//! aws-lc-rs backend (feature `aws-lc`).
//!
//! Contract: implements, behind the traits of [`super`], what aws-lc-rs offers of the ESP
//! transforms: AES-GCM-16 with 128/192/256-bit keys (`aead::LessSafeKey`), AES-CBC 128/192/256
//! and, through its `legacy-des` feature, DES-CBC and 3DES-CBC (`cipher::EncryptingKey::cbc` /
//! `DecryptingKey::cbc` with a caller-supplied IV and no padding), HMAC-SHA1/256/384/512
//! (`hmac::Key`). aws-lc-rs has no HMAC-MD5, so [`PROVIDER`] lists no MD5 and asking it for
//! [`Integrity::HmacMd5_96`] yields [`CryptoError::Unsupported`].
//!
//! Keys are expanded once in `new_key` (the AES/DES key schedules of both directions, the GCM
//! `EVP_AEAD_CTX`, the HMAC context holding the inner/outer pad states). Per packet we only build
//! stack values (nonce, IV context, a copy of the HMAC context via `hmac::Context::with_key`);
//! nothing is allocated, by us or by aws-lc-rs on these paths.
//!
//! Why aws-lc-rs: AWS-LC carries the hand-tuned assembly of BoringSSL/OpenSSL (AES-NI/VAES +
//! PCLMUL/VPCLMULQDQ stitched GCM, SHA-NI/AVX2 SHA), which measured fastest for most transforms
//! on our reference machine (see [`super::default_provider`]).

use aws_lc_rs::{aead, cipher, hmac, iv::FixedLength};

use super::{
    check_des_key, AeadAlgorithm, AeadKey, Cipher, CipherAlgorithm, CipherKey, CryptoError, CryptoProvider, Integrity,
    MacAlgorithm, MacKey, SecureRandom, AEAD_NONCE_LEN, AEAD_TAG_LEN,
};

/// Backend name reported by [`AeadAlgorithm::backend`] and friends.
pub const BACKEND: &str = "aws-lc-rs";

// ---------------------------------------------------------------------------------------------
// AES-GCM
// ---------------------------------------------------------------------------------------------

struct GcmKey {
    key: aead::LessSafeKey,
}

impl AeadKey for GcmKey {
    fn seal(&self, nonce: &[u8; AEAD_NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<(), CryptoError> {
        let data_len = in_out.len().checked_sub(AEAD_TAG_LEN).ok_or(CryptoError::BadLength)?;
        let (data, tag_out) = in_out.split_at_mut(data_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(*nonce), aead::Aad::from(aad), data)
            .map_err(|_| CryptoError::BadLength)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    fn open(&self, nonce: &[u8; AEAD_NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<(), CryptoError> {
        if in_out.len() < AEAD_TAG_LEN {
            return Err(CryptoError::BadLength);
        }
        // `open_in_place` (rather than `open_in_place_separate_tag`) is the FIPS-approved path.
        self.key
            .open_in_place(aead::Nonce::assume_unique_for_key(*nonce), aead::Aad::from(aad), in_out)
            .map(|_| ())
            .map_err(|_| CryptoError::AuthFailed)
    }
}

fn new_gcm(alg: &'static aead::Algorithm, cipher: Cipher, key: &[u8]) -> Result<Box<dyn AeadKey>, CryptoError> {
    let unbound = aead::UnboundKey::new(alg, key)
        .map_err(|_| CryptoError::KeyLength { expected: cipher.key_len(), got: key.len() })?;
    Ok(Box::new(GcmKey { key: aead::LessSafeKey::new(unbound) }))
}

// ---------------------------------------------------------------------------------------------
// CBC (AES, DES, 3DES)
// ---------------------------------------------------------------------------------------------

struct CbcKey {
    enc: cipher::EncryptingKey,
    dec: cipher::DecryptingKey,
    block_len: usize,
}

impl CbcKey {
    /// Checks the IV and data lengths before anything is touched.
    fn check(&self, iv: &[u8], data: &[u8]) -> Result<(), CryptoError> {
        if iv.len() != self.block_len || !data.len().is_multiple_of(self.block_len) {
            Err(CryptoError::BadLength)
        } else {
            Ok(())
        }
    }
}

/// IV context for aws-lc-rs: 16-byte IVs for AES, 8-byte ones for DES/3DES.
fn iv_context(iv: &[u8]) -> Result<cipher::EncryptionContext, CryptoError> {
    match iv.len() {
        16 => FixedLength::<16>::try_from(iv).map(cipher::EncryptionContext::Iv128),
        8 => FixedLength::<8>::try_from(iv).map(cipher::EncryptionContext::Iv64),
        _ => return Err(CryptoError::BadLength),
    }
    .map_err(|_| CryptoError::BadLength)
}

impl CipherKey for CbcKey {
    fn block_len(&self) -> usize {
        self.block_len
    }

    fn cbc_encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        self.check(iv, data)?;
        if data.is_empty() {
            return Ok(());
        }
        self.enc.less_safe_encrypt(data, iv_context(iv)?).map(|_| ()).map_err(|_| CryptoError::BadLength)
    }

    fn cbc_decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        self.check(iv, data)?;
        if data.is_empty() {
            return Ok(());
        }
        self.dec.decrypt(data, iv_context(iv)?.into()).map(|_| ()).map_err(|_| CryptoError::BadLength)
    }
}

fn new_cbc(alg: &'static cipher::Algorithm, cipher: Cipher, key: &[u8]) -> Result<Box<dyn CipherKey>, CryptoError> {
    if key.len() != cipher.key_len() {
        return Err(CryptoError::KeyLength { expected: cipher.key_len(), got: key.len() });
    }
    let is_des = matches!(cipher, Cipher::DesCbc | Cipher::TripleDesCbc);
    if is_des {
        // Same policy as the RustCrypto backend (aws-lc's own check is a subset of it).
        check_des_key(key)?;
    }
    let rejected = |_| {
        if is_des {
            CryptoError::WeakKey
        } else {
            CryptoError::Unsupported
        }
    };
    let unbound = || {
        cipher::UnboundCipherKey::new(alg, key)
            .map_err(|_| CryptoError::KeyLength { expected: cipher.key_len(), got: key.len() })
    };
    let enc = cipher::EncryptingKey::cbc(unbound()?).map_err(rejected)?;
    let dec = cipher::DecryptingKey::cbc(unbound()?).map_err(rejected)?;
    Ok(Box::new(CbcKey { enc, dec, block_len: alg.block_len() }))
}

// ---------------------------------------------------------------------------------------------
// HMAC
// ---------------------------------------------------------------------------------------------

struct HmacKey {
    key: hmac::Key,
    output_len: usize,
}

impl MacKey for HmacKey {
    fn output_len(&self) -> usize {
        self.output_len
    }

    /// # Panics
    /// If `out.len() > self.output_len()`.
    fn sign(&self, parts: &[&[u8]], out: &mut [u8]) {
        // Copies the keyed HMAC_CTX (inner/outer pad states) onto the stack.
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(part);
        }
        let tag = ctx.sign();
        out.copy_from_slice(&tag.as_ref()[..out.len()]);
    }
}

/// HMAC accepts keys of any length (RFC 2104); the ESP key length is enforced by
/// [`CryptoProvider::mac_key`].
fn new_hmac(alg: hmac::Algorithm, key: &[u8]) -> Result<Box<dyn MacKey>, CryptoError> {
    Ok(Box::new(HmacKey { key: hmac::Key::new(alg, key), output_len: alg.digest_algorithm().output_len() }))
}

// ---------------------------------------------------------------------------------------------
// Algorithm objects
// ---------------------------------------------------------------------------------------------

/// AES-GCM factory of one key size.
pub struct GcmAlgorithm {
    cipher: Cipher,
    alg: &'static aead::Algorithm,
}

impl AeadAlgorithm for GcmAlgorithm {
    fn cipher(&self) -> Cipher {
        self.cipher
    }
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn AeadKey>, CryptoError> {
        new_gcm(self.alg, self.cipher, key)
    }
}

/// CBC cipher factory of one algorithm.
pub struct CbcAlgorithm {
    cipher: Cipher,
    alg: &'static cipher::Algorithm,
}

impl CipherAlgorithm for CbcAlgorithm {
    fn cipher(&self) -> Cipher {
        self.cipher
    }
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn CipherKey>, CryptoError> {
        new_cbc(self.alg, self.cipher, key)
    }
}

/// HMAC factory of one hash.
pub struct HmacAlgorithm {
    integrity: Integrity,
    alg: hmac::Algorithm,
}

impl MacAlgorithm for HmacAlgorithm {
    fn integrity(&self) -> Integrity {
        self.integrity
    }
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn MacKey>, CryptoError> {
        new_hmac(self.alg, key)
    }
}

/// AWS-LC's DRBG (`RAND_bytes`), seeded from the OS.
pub struct AwsLcRandom;

impl SecureRandom for AwsLcRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), CryptoError> {
        aws_lc_rs::rand::fill(dest).map_err(|_| CryptoError::Rng)
    }
}

/// ENCR_AES_GCM_16, 128-bit key.
pub static AES_128_GCM: &dyn AeadAlgorithm = &GcmAlgorithm { cipher: Cipher::AesGcm128, alg: &aead::AES_128_GCM };
/// ENCR_AES_GCM_16, 192-bit key.
pub static AES_192_GCM: &dyn AeadAlgorithm = &GcmAlgorithm { cipher: Cipher::AesGcm192, alg: &aead::AES_192_GCM };
/// ENCR_AES_GCM_16, 256-bit key.
pub static AES_256_GCM: &dyn AeadAlgorithm = &GcmAlgorithm { cipher: Cipher::AesGcm256, alg: &aead::AES_256_GCM };

/// ENCR_DES (aws-lc-rs `legacy-des`).
#[allow(deprecated)]
pub static DES_CBC: &dyn CipherAlgorithm =
    &CbcAlgorithm { cipher: Cipher::DesCbc, alg: &cipher::DES_FOR_LEGACY_USE_ONLY };
/// ENCR_3DES (aws-lc-rs `legacy-des`, 3-key DES-EDE3).
#[allow(deprecated)]
pub static TRIPLE_DES_CBC: &dyn CipherAlgorithm =
    &CbcAlgorithm { cipher: Cipher::TripleDesCbc, alg: &cipher::DES_EDE3_FOR_LEGACY_USE_ONLY };
/// ENCR_AES_CBC, 128-bit key.
pub static AES_128_CBC: &dyn CipherAlgorithm = &CbcAlgorithm { cipher: Cipher::AesCbc128, alg: &cipher::AES_128 };
/// ENCR_AES_CBC, 192-bit key.
pub static AES_192_CBC: &dyn CipherAlgorithm = &CbcAlgorithm { cipher: Cipher::AesCbc192, alg: &cipher::AES_192 };
/// ENCR_AES_CBC, 256-bit key.
pub static AES_256_CBC: &dyn CipherAlgorithm = &CbcAlgorithm { cipher: Cipher::AesCbc256, alg: &cipher::AES_256 };

/// AUTH_HMAC_SHA1_96.
pub static HMAC_SHA1: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha1_96, alg: hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY };
/// AUTH_HMAC_SHA2_256_128.
pub static HMAC_SHA256: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha256_128, alg: hmac::HMAC_SHA256 };
/// AUTH_HMAC_SHA2_384_192.
pub static HMAC_SHA384: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha384_192, alg: hmac::HMAC_SHA384 };
/// AUTH_HMAC_SHA2_512_256.
pub static HMAC_SHA512: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha512_256, alg: hmac::HMAC_SHA512 };

/// AWS-LC's DRBG.
pub static RANDOM: &dyn SecureRandom = &AwsLcRandom;

/// Only aws-lc-rs algorithms; HMAC-MD5 is absent.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    name: BACKEND,
    aeads: &[AES_128_GCM, AES_192_GCM, AES_256_GCM],
    ciphers: &[DES_CBC, TRIPLE_DES_CBC, AES_128_CBC, AES_192_CBC, AES_256_CBC],
    macs: &[HMAC_SHA1, HMAC_SHA256, HMAC_SHA384, HMAC_SHA512],
    random: RANDOM,
};
