//! RustCrypto backend: pure Rust, always compiled, complete.
//!
//! Contract: implements every ESP encryption transform except [`Cipher::Null`] (which needs no
//! crypto) and every integrity transform except [`Integrity::None`], behind the traits of
//! [`super`]. Keys are expanded once in `new_key` (AES round keys, the GHASH key, DES subkeys,
//! the HMAC inner/outer hash states); the per-packet calls work in place on the caller's buffer
//! and never allocate: CBC borrows the expanded block cipher (`cbc::Encryptor<&C>`) instead of
//! re-expanding it, HMAC clones the keyed `Hmac<D>` (a few hundred bytes on the stack).
//!
//! Why RustCrypto: it needs no C toolchain, it is the only backend here with DES-era HMAC-MD5,
//! and it gives a complete provider when the `aws-lc` feature is off. `aes` and `ghash`/`polyval`
//! pick AES-NI and CLMUL at run time (`cpufeatures`), so no `-C target-cpu` flag is required — and
//! none should be set: `-C target-cpu=native` was reported to make RustCrypto HMAC-SHA2 about two
//! orders of magnitude slower on our reference machine.
//!
//! Key material is wiped on drop (the crates' `zeroize` features, enabled in Cargo.toml); this
//! includes the per-packet HMAC state clone, which is key-equivalent.

use aes::cipher::array::Array;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::{AeadInOut, AesGcm};
use hmac::{Hmac, Mac};

use super::{
    check_des_key, AeadAlgorithm, AeadKey, Cipher, CipherAlgorithm, CipherKey, CryptoError, CryptoProvider, Integrity,
    MacAlgorithm, MacKey, SecureRandom, AEAD_NONCE_LEN, AEAD_TAG_LEN,
};

/// Backend name reported by [`AeadAlgorithm::backend`] and friends.
pub const BACKEND: &str = "rustcrypto";

// ---------------------------------------------------------------------------------------------
// AES-GCM
// ---------------------------------------------------------------------------------------------

/// An expanded AES-GCM key (`G` is `AesGcm<AesNNN, U12>`, 16-byte tag).
struct GcmKey<G> {
    aead: G,
}

impl<G> AeadKey for GcmKey<G>
where
    G: AeadInOut<NonceSize = U12, TagSize = U16> + Send + Sync,
{
    fn seal(&self, nonce: &[u8; AEAD_NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<(), CryptoError> {
        let data_len = in_out.len().checked_sub(AEAD_TAG_LEN).ok_or(CryptoError::BadLength)?;
        let (data, tag_out) = in_out.split_at_mut(data_len);
        let tag =
            self.aead.encrypt_inout_detached(nonce.into(), aad, data.into()).map_err(|_| CryptoError::BadLength)?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    fn open(&self, nonce: &[u8; AEAD_NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<(), CryptoError> {
        let data_len = in_out.len().checked_sub(AEAD_TAG_LEN).ok_or(CryptoError::BadLength)?;
        let (data, tag) = in_out.split_at_mut(data_len);
        let tag: &Array<u8, U16> = (&*tag).try_into().map_err(|_| CryptoError::BadLength)?;
        self.aead.decrypt_inout_detached(nonce.into(), aad, data.into(), tag).map_err(|_| CryptoError::AuthFailed)
    }
}

fn new_gcm<G>(key: &[u8]) -> Result<Box<dyn AeadKey>, CryptoError>
where
    G: AeadInOut<NonceSize = U12, TagSize = U16> + KeyInit + Send + Sync + 'static,
{
    let aead =
        G::new_from_slice(key).map_err(|_| CryptoError::KeyLength { expected: G::KeySize::USIZE, got: key.len() })?;
    Ok(Box::new(GcmKey { aead }))
}

// ---------------------------------------------------------------------------------------------
// CBC (AES, DES, 3DES)
// ---------------------------------------------------------------------------------------------

/// An expanded block cipher run in CBC mode; both directions' key schedules are built once.
struct CbcKey<C> {
    cipher: C,
}

impl<C> CipherKey for CbcKey<C>
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + Send + Sync,
{
    fn block_len(&self) -> usize {
        C::BlockSize::USIZE
    }

    fn cbc_encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        let iv: &Array<u8, C::BlockSize> = iv.try_into().map_err(|_| CryptoError::BadLength)?;
        let (blocks, tail) = Array::<u8, C::BlockSize>::slice_as_chunks_mut(data);
        if !tail.is_empty() {
            return Err(CryptoError::BadLength);
        }
        cbc::Encryptor::<&C>::inner_iv_init(&self.cipher, iv).encrypt_blocks(blocks);
        Ok(())
    }

    fn cbc_decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        let iv: &Array<u8, C::BlockSize> = iv.try_into().map_err(|_| CryptoError::BadLength)?;
        let (blocks, tail) = Array::<u8, C::BlockSize>::slice_as_chunks_mut(data);
        if !tail.is_empty() {
            return Err(CryptoError::BadLength);
        }
        cbc::Decryptor::<&C>::inner_iv_init(&self.cipher, iv).decrypt_blocks(blocks);
        Ok(())
    }
}

fn new_cbc<C>(key: &[u8]) -> Result<Box<dyn CipherKey>, CryptoError>
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + KeyInit + Send + Sync + 'static,
{
    let cipher =
        C::new_from_slice(key).map_err(|_| CryptoError::KeyLength { expected: C::KeySize::USIZE, got: key.len() })?;
    Ok(Box::new(CbcKey { cipher }))
}

/// DES and 3DES: same as [`new_cbc`] after the weak-key policy of [`check_des_key`].
fn new_des_cbc<C>(key: &[u8]) -> Result<Box<dyn CipherKey>, CryptoError>
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + KeyInit + Send + Sync + 'static,
{
    if key.len() != C::KeySize::USIZE {
        return Err(CryptoError::KeyLength { expected: C::KeySize::USIZE, got: key.len() });
    }
    check_des_key(key)?;
    new_cbc::<C>(key)
}

// ---------------------------------------------------------------------------------------------
// HMAC
// ---------------------------------------------------------------------------------------------

/// A keyed HMAC (`M` is `Hmac<D>`): its inner/outer hash states after absorbing the padded key
/// are the precomputed pads; each packet works on a clone.
struct HmacKey<M> {
    mac: M,
}

impl<M> MacKey for HmacKey<M>
where
    M: Mac + Clone + Send + Sync,
{
    fn output_len(&self) -> usize {
        M::OutputSize::USIZE
    }

    /// # Panics
    /// If `out.len() > self.output_len()`.
    fn sign(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        out.copy_from_slice(&full[..out.len()]);
    }
}

/// HMAC accepts keys of any length (RFC 2104); the ESP key length is enforced by
/// [`CryptoProvider::mac_key`].
fn new_hmac<M>(key: &[u8]) -> Result<Box<dyn MacKey>, CryptoError>
where
    M: Mac + KeyInit + Clone + Send + Sync + 'static,
{
    // `Hmac<D>` overrides `new_from_slice` to accept any length, so this cannot fail in practice.
    let mac = <M as KeyInit>::new_from_slice(key).map_err(|_| CryptoError::BadLength)?;
    Ok(Box::new(HmacKey { mac }))
}

// ---------------------------------------------------------------------------------------------
// Algorithm objects
// ---------------------------------------------------------------------------------------------

type NewAeadKey = fn(&[u8]) -> Result<Box<dyn AeadKey>, CryptoError>;
type NewCipherKey = fn(&[u8]) -> Result<Box<dyn CipherKey>, CryptoError>;
type NewMacKey = fn(&[u8]) -> Result<Box<dyn MacKey>, CryptoError>;

/// AES-GCM factory of one key size.
pub struct GcmAlgorithm {
    cipher: Cipher,
    new: NewAeadKey,
}

impl AeadAlgorithm for GcmAlgorithm {
    fn cipher(&self) -> Cipher {
        self.cipher
    }
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn AeadKey>, CryptoError> {
        (self.new)(key)
    }
}

/// CBC cipher factory of one algorithm.
pub struct CbcAlgorithm {
    cipher: Cipher,
    new: NewCipherKey,
}

impl CipherAlgorithm for CbcAlgorithm {
    fn cipher(&self) -> Cipher {
        self.cipher
    }
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn CipherKey>, CryptoError> {
        (self.new)(key)
    }
}

/// HMAC factory of one hash.
pub struct HmacAlgorithm {
    integrity: Integrity,
    new: NewMacKey,
}

impl MacAlgorithm for HmacAlgorithm {
    fn integrity(&self) -> Integrity {
        self.integrity
    }
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn MacKey>, CryptoError> {
        (self.new)(key)
    }
}

/// The operating system's CSPRNG through `getrandom`.
pub struct OsRandom;

impl SecureRandom for OsRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), CryptoError> {
        getrandom::fill(dest).map_err(|_| CryptoError::Rng)
    }
}

/// ENCR_AES_GCM_16, 128-bit key (`aes-gcm`).
pub static AES_128_GCM: &dyn AeadAlgorithm =
    &GcmAlgorithm { cipher: Cipher::AesGcm128, new: new_gcm::<AesGcm<Aes128, U12>> };
/// ENCR_AES_GCM_16, 192-bit key (`aes-gcm` with `Aes192`).
pub static AES_192_GCM: &dyn AeadAlgorithm =
    &GcmAlgorithm { cipher: Cipher::AesGcm192, new: new_gcm::<AesGcm<Aes192, U12>> };
/// ENCR_AES_GCM_16, 256-bit key (`aes-gcm`).
pub static AES_256_GCM: &dyn AeadAlgorithm =
    &GcmAlgorithm { cipher: Cipher::AesGcm256, new: new_gcm::<AesGcm<Aes256, U12>> };

/// ENCR_DES (`des::Des` in CBC mode).
pub static DES_CBC: &dyn CipherAlgorithm = &CbcAlgorithm { cipher: Cipher::DesCbc, new: new_des_cbc::<des::Des> };
/// ENCR_3DES (`des::TdesEde3` in CBC mode).
pub static TRIPLE_DES_CBC: &dyn CipherAlgorithm =
    &CbcAlgorithm { cipher: Cipher::TripleDesCbc, new: new_des_cbc::<des::TdesEde3> };
/// ENCR_AES_CBC, 128-bit key (`aes` + `cbc`).
pub static AES_128_CBC: &dyn CipherAlgorithm = &CbcAlgorithm { cipher: Cipher::AesCbc128, new: new_cbc::<Aes128> };
/// ENCR_AES_CBC, 192-bit key (`aes` + `cbc`).
pub static AES_192_CBC: &dyn CipherAlgorithm = &CbcAlgorithm { cipher: Cipher::AesCbc192, new: new_cbc::<Aes192> };
/// ENCR_AES_CBC, 256-bit key (`aes` + `cbc`).
pub static AES_256_CBC: &dyn CipherAlgorithm = &CbcAlgorithm { cipher: Cipher::AesCbc256, new: new_cbc::<Aes256> };

/// AUTH_HMAC_MD5_96 (`hmac` + `md-5`).
pub static HMAC_MD5: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacMd5_96, new: new_hmac::<Hmac<md5::Md5>> };
/// AUTH_HMAC_SHA1_96 (`hmac` + `sha1`).
pub static HMAC_SHA1: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha1_96, new: new_hmac::<Hmac<sha1::Sha1>> };
/// AUTH_HMAC_SHA2_256_128 (`hmac` + `sha2`).
pub static HMAC_SHA256: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha256_128, new: new_hmac::<Hmac<sha2::Sha256>> };
/// AUTH_HMAC_SHA2_384_192 (`hmac` + `sha2`).
pub static HMAC_SHA384: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha384_192, new: new_hmac::<Hmac<sha2::Sha384>> };
/// AUTH_HMAC_SHA2_512_256 (`hmac` + `sha2`).
pub static HMAC_SHA512: &dyn MacAlgorithm =
    &HmacAlgorithm { integrity: Integrity::HmacSha512_256, new: new_hmac::<Hmac<sha2::Sha512>> };

/// `getrandom` (OS CSPRNG).
pub static RANDOM: &dyn SecureRandom = &OsRandom;

/// Every algorithm of this backend.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    name: BACKEND,
    aeads: &[AES_128_GCM, AES_192_GCM, AES_256_GCM],
    ciphers: &[DES_CBC, TRIPLE_DES_CBC, AES_128_CBC, AES_192_CBC, AES_256_CBC],
    macs: &[HMAC_MD5, HMAC_SHA1, HMAC_SHA256, HMAC_SHA384, HMAC_SHA512],
    random: RANDOM,
};
