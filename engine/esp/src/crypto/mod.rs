//! Crypto providers, rustls style.
//!
//! A [`CryptoProvider`] is a plain value made of `&'static dyn` parts: for each ESP transform one
//! algorithm object that knows how to expand a key. Keys are expanded **once**, when an SA is
//! installed ([`CryptoProvider::aead_key`], [`CryptoProvider::cipher_key`],
//! [`CryptoProvider::mac_key`]); the per-packet calls on the resulting key objects never allocate.
//!
//! Backends live in submodules (`aws_lc`, `rustcrypto`). Each exports its algorithm objects; the
//! default provider ([`default_provider`]) takes, for each algorithm, the fastest backend measured
//! on our reference machine (per-algorithm numbers in its doc comment, from
//! `benches/benches/crypto_raw.rs`; whole-packet numbers from `perf-lab esp`).
//!
//! ESP layout assumptions baked into the per-packet APIs (they keep them copy-free):
//! - AEAD: the 16-byte tag directly follows the ciphertext (RFC 4106 ICV placement), so seal and
//!   open take one contiguous `in_out` slice whose last [`AEAD_TAG_LEN`] bytes are the tag.
//! - CBC: the data is a whole number of blocks (ESP padding guarantees it) and the IV is supplied.
//! - MAC: the input is given as a list of slices (ESP header+payload, then the ESN high bits), the
//!   output truncated to the ICV length.

use core::fmt;

#[cfg(feature = "aws-lc")]
pub mod aws_lc;
pub mod rustcrypto;

/// Length of the AES-GCM tag used by ESP (`AES-GCM-16`, RFC 4106).
pub const AEAD_TAG_LEN: usize = 16;
/// AES-GCM nonce: 4-byte salt from the key material + 8-byte explicit IV.
pub const AEAD_NONCE_LEN: usize = 12;
/// Length of the RFC 4106 salt appended to the AES key in the key material.
pub const GCM_SALT_LEN: usize = 4;

/// ESP encryption transforms. Names follow the IANA "Transform Type 1" registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cipher {
    /// ENCR_NULL (RFC 2410). Only for tests and baselines: it offers no confidentiality.
    Null,
    /// ENCR_DES (legacy, the seeds still offer it).
    DesCbc,
    /// ENCR_3DES (legacy).
    TripleDesCbc,
    AesCbc128,
    AesCbc192,
    AesCbc256,
    /// ENCR_AES_GCM_16 with a 128-bit key.
    AesGcm128,
    AesGcm192,
    AesGcm256,
}

impl Cipher {
    /// Every cipher, in a stable order (tests and benches iterate over it).
    pub const ALL: [Cipher; 9] = [
        Cipher::Null,
        Cipher::DesCbc,
        Cipher::TripleDesCbc,
        Cipher::AesCbc128,
        Cipher::AesCbc192,
        Cipher::AesCbc256,
        Cipher::AesGcm128,
        Cipher::AesGcm192,
        Cipher::AesGcm256,
    ];

    /// Whether this is an AEAD (then no separate integrity transform is used).
    pub const fn is_aead(self) -> bool {
        matches!(self, Cipher::AesGcm128 | Cipher::AesGcm192 | Cipher::AesGcm256)
    }

    /// Length of the cipher key proper (without the GCM salt).
    pub const fn key_len(self) -> usize {
        match self {
            Cipher::Null => 0,
            Cipher::DesCbc => 8,
            Cipher::TripleDesCbc => 24,
            Cipher::AesCbc128 | Cipher::AesGcm128 => 16,
            Cipher::AesCbc192 | Cipher::AesGcm192 => 24,
            Cipher::AesCbc256 | Cipher::AesGcm256 => 32,
        }
    }

    /// Length of the key material an SA carries for this cipher (key + salt for GCM).
    pub const fn keymat_len(self) -> usize {
        if self.is_aead() {
            self.key_len() + GCM_SALT_LEN
        } else {
            self.key_len()
        }
    }

    /// Length of the IV carried in every ESP packet.
    pub const fn iv_len(self) -> usize {
        match self {
            Cipher::Null => 0,
            Cipher::DesCbc | Cipher::TripleDesCbc => 8,
            Cipher::AesCbc128 | Cipher::AesCbc192 | Cipher::AesCbc256 => 16,
            Cipher::AesGcm128 | Cipher::AesGcm192 | Cipher::AesGcm256 => 8,
        }
    }

    /// Block size the ESP payload (plaintext + padding + trailer) is padded to.
    /// RFC 4303 §2.4: at least 4 bytes alignment.
    pub const fn block_len(self) -> usize {
        match self {
            Cipher::Null | Cipher::AesGcm128 | Cipher::AesGcm192 | Cipher::AesGcm256 => 4,
            Cipher::DesCbc | Cipher::TripleDesCbc => 8,
            Cipher::AesCbc128 | Cipher::AesCbc192 | Cipher::AesCbc256 => 16,
        }
    }

    /// ICV length contributed by the cipher itself (AEAD tag), 0 for non-AEAD.
    pub const fn icv_len(self) -> usize {
        if self.is_aead() {
            AEAD_TAG_LEN
        } else {
            0
        }
    }

    /// strongSwan-style name, e.g. `aes128gcm16`, `aes256`, `3des`.
    pub const fn name(self) -> &'static str {
        match self {
            Cipher::Null => "null",
            Cipher::DesCbc => "des",
            Cipher::TripleDesCbc => "3des",
            Cipher::AesCbc128 => "aes128",
            Cipher::AesCbc192 => "aes192",
            Cipher::AesCbc256 => "aes256",
            Cipher::AesGcm128 => "aes128gcm16",
            Cipher::AesGcm192 => "aes192gcm16",
            Cipher::AesGcm256 => "aes256gcm16",
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ESP integrity transforms (IANA "Transform Type 3").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Integrity {
    /// No separate integrity (AEAD ciphers, or NULL-auth tests).
    None,
    /// AUTH_HMAC_MD5_96 (RFC 2403).
    HmacMd5_96,
    /// AUTH_HMAC_SHA1_96 (RFC 2404).
    HmacSha1_96,
    /// AUTH_HMAC_SHA2_256_128 (RFC 4868).
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (RFC 4868).
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (RFC 4868).
    HmacSha512_256,
}

impl Integrity {
    /// Every integrity transform, in a stable order.
    pub const ALL: [Integrity; 6] = [
        Integrity::None,
        Integrity::HmacMd5_96,
        Integrity::HmacSha1_96,
        Integrity::HmacSha256_128,
        Integrity::HmacSha384_192,
        Integrity::HmacSha512_256,
    ];

    /// Key length in bytes (RFC 2403/2404/4868: the hash output length).
    pub const fn key_len(self) -> usize {
        match self {
            Integrity::None => 0,
            Integrity::HmacMd5_96 => 16,
            Integrity::HmacSha1_96 => 20,
            Integrity::HmacSha256_128 => 32,
            Integrity::HmacSha384_192 => 48,
            Integrity::HmacSha512_256 => 64,
        }
    }

    /// Truncated ICV length carried in each packet.
    pub const fn icv_len(self) -> usize {
        match self {
            Integrity::None => 0,
            Integrity::HmacMd5_96 | Integrity::HmacSha1_96 => 12,
            Integrity::HmacSha256_128 => 16,
            Integrity::HmacSha384_192 => 24,
            Integrity::HmacSha512_256 => 32,
        }
    }

    /// strongSwan-style name, e.g. `sha256`.
    pub const fn name(self) -> &'static str {
        match self {
            Integrity::None => "none",
            Integrity::HmacMd5_96 => "md5",
            Integrity::HmacSha1_96 => "sha1",
            Integrity::HmacSha256_128 => "sha256",
            Integrity::HmacSha384_192 => "sha384",
            Integrity::HmacSha512_256 => "sha512",
        }
    }
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from key expansion or per-packet crypto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The key material has the wrong length for the algorithm: expected, got.
    KeyLength { expected: usize, got: usize },
    /// No algorithm object in the provider implements this transform.
    Unsupported,
    /// Authentication failed (bad tag / ICV).
    AuthFailed,
    /// A buffer length did not fit the algorithm (e.g. not a multiple of the block size).
    BadLength,
    /// The key is a known weak or semi-weak DES key, or a 3DES key whose three DES keys are not
    /// pairwise distinct (it would degrade to single DES or 2-key 3DES). See [`Cipher::DesCbc`].
    WeakKey,
    /// The system random number generator failed.
    Rng,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::KeyLength { expected, got } => {
                write!(f, "key length: expected {expected} bytes, got {got}")
            }
            CryptoError::Unsupported => f.write_str("algorithm not supported by this provider"),
            CryptoError::AuthFailed => f.write_str("authentication failed"),
            CryptoError::BadLength => f.write_str("buffer length does not fit the algorithm"),
            CryptoError::WeakKey => f.write_str("weak DES/3DES key rejected"),
            CryptoError::Rng => f.write_str("system random number generator failed"),
        }
    }
}

impl std::error::Error for CryptoError {}

/// An AES-GCM key, expanded once. `Send + Sync`: workers share it through the SA.
pub trait AeadKey: Send + Sync {
    /// Encrypts `in_out[..len - 16]` in place and writes the tag into the last 16 bytes.
    /// Fails with [`CryptoError::BadLength`] if `in_out` is shorter than the tag.
    fn seal(&self, nonce: &[u8; AEAD_NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<(), CryptoError>;

    /// Verifies the tag in the last 16 bytes of `in_out` and decrypts the rest in place.
    /// On [`CryptoError::AuthFailed`] the contents of `in_out` are unspecified.
    fn open(&self, nonce: &[u8; AEAD_NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<(), CryptoError>;

    /// Seals a burst of packets under this key. Backends with multi-buffer code override it.
    fn seal_burst(&self, jobs: &mut [AeadJob<'_>]) {
        for job in jobs.iter_mut() {
            job.result = self.seal(&job.nonce, &job.aad[..job.aad_len as usize], job.in_out);
        }
    }

    /// Opens a burst of packets under this key; per-job results in `job.result`.
    fn open_burst(&self, jobs: &mut [AeadJob<'_>]) {
        for job in jobs.iter_mut() {
            job.result = self.open(&job.nonce, &job.aad[..job.aad_len as usize], job.in_out);
        }
    }
}

/// One packet of an AEAD burst. The AAD is at most 12 bytes in ESP (SPI, ESN high, seq low).
pub struct AeadJob<'a> {
    pub nonce: [u8; AEAD_NONCE_LEN],
    pub aad: [u8; 12],
    pub aad_len: u8,
    /// Ciphertext/plaintext followed by the 16-byte tag.
    pub in_out: &'a mut [u8],
    pub result: Result<(), CryptoError>,
}

/// A block cipher key used in CBC mode, expanded once.
pub trait CipherKey: Send + Sync {
    /// Block length: 16 for AES, 8 for DES/3DES. IVs are this long.
    fn block_len(&self) -> usize;
    /// CBC-encrypts `data` (a whole number of blocks) in place.
    fn cbc_encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError>;
    /// CBC-decrypts `data` (a whole number of blocks) in place.
    fn cbc_decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError>;
}

/// An HMAC key with its inner/outer pads precomputed once.
pub trait MacKey: Send + Sync {
    /// Full (untruncated) output length of the underlying hash.
    fn output_len(&self) -> usize;
    /// Computes the MAC of the concatenation of `parts` and writes its first `out.len()` bytes
    /// (`out.len() <= output_len()`).
    fn sign(&self, parts: &[&[u8]], out: &mut [u8]);
    /// Verifies, in constant time, that the truncated MAC of `parts` equals `expected`.
    fn verify(&self, parts: &[&[u8]], expected: &[u8]) -> bool {
        let mut buf = [0u8; 64];
        let n = expected.len();
        if n == 0 || n > buf.len() || n > self.output_len() {
            return false;
        }
        self.sign(parts, &mut buf[..n]);
        subtle::ConstantTimeEq::ct_eq(&buf[..n], expected).into()
    }
}

/// Factory for AES-GCM keys of one key size, from one backend.
pub trait AeadAlgorithm: Send + Sync {
    fn cipher(&self) -> Cipher;
    /// Name of the backend, e.g. `aws-lc-rs` or `rustcrypto`.
    fn backend(&self) -> &'static str;
    /// Expands `key` (the AES key without the salt).
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn AeadKey>, CryptoError>;
}

/// Factory for CBC cipher keys of one algorithm, from one backend.
pub trait CipherAlgorithm: Send + Sync {
    fn cipher(&self) -> Cipher;
    fn backend(&self) -> &'static str;
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn CipherKey>, CryptoError>;
}

/// Factory for HMAC keys of one algorithm, from one backend.
pub trait MacAlgorithm: Send + Sync {
    fn integrity(&self) -> Integrity;
    fn backend(&self) -> &'static str;
    fn new_key(&self, key: &[u8]) -> Result<Box<dyn MacKey>, CryptoError>;
}

/// Source of key-quality randomness (IV seeds, SPIs, test keys).
pub trait SecureRandom: Send + Sync {
    fn fill(&self, dest: &mut [u8]) -> Result<(), CryptoError>;
}

/// A set of algorithm implementations. Lookups take the first entry that matches.
#[derive(Clone, Copy)]
pub struct CryptoProvider {
    pub name: &'static str,
    pub aeads: &'static [&'static dyn AeadAlgorithm],
    pub ciphers: &'static [&'static dyn CipherAlgorithm],
    pub macs: &'static [&'static dyn MacAlgorithm],
    pub random: &'static dyn SecureRandom,
}

impl fmt::Debug for CryptoProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoProvider").field("name", &self.name).finish_non_exhaustive()
    }
}

impl CryptoProvider {
    /// Expands an AES-GCM key. `key` excludes the 4-byte salt.
    pub fn aead_key(&self, cipher: Cipher, key: &[u8]) -> Result<Box<dyn AeadKey>, CryptoError> {
        let alg = self.aeads.iter().find(|a| a.cipher() == cipher).ok_or(CryptoError::Unsupported)?;
        check_len(cipher.key_len(), key.len())?;
        alg.new_key(key)
    }

    /// Expands a CBC cipher key.
    pub fn cipher_key(&self, cipher: Cipher, key: &[u8]) -> Result<Box<dyn CipherKey>, CryptoError> {
        let alg = self.ciphers.iter().find(|a| a.cipher() == cipher).ok_or(CryptoError::Unsupported)?;
        check_len(cipher.key_len(), key.len())?;
        alg.new_key(key)
    }

    /// Expands an HMAC key.
    pub fn mac_key(&self, integrity: Integrity, key: &[u8]) -> Result<Box<dyn MacKey>, CryptoError> {
        let alg = self.macs.iter().find(|a| a.integrity() == integrity).ok_or(CryptoError::Unsupported)?;
        check_len(integrity.key_len(), key.len())?;
        alg.new_key(key)
    }

    /// Which backend implements `cipher` in this provider, if any.
    pub fn cipher_backend(&self, cipher: Cipher) -> Option<&'static str> {
        if cipher == Cipher::Null {
            return Some("none");
        }
        self.aeads
            .iter()
            .find(|a| a.cipher() == cipher)
            .map(|a| a.backend())
            .or_else(|| self.ciphers.iter().find(|a| a.cipher() == cipher).map(|a| a.backend()))
    }

    /// Which backend implements `integrity` in this provider, if any.
    pub fn integrity_backend(&self, integrity: Integrity) -> Option<&'static str> {
        if integrity == Integrity::None {
            return Some("none");
        }
        self.macs.iter().find(|a| a.integrity() == integrity).map(|a| a.backend())
    }
}

/// Weak-key policy shared by every backend's DES and 3DES (so that a key is accepted or refused
/// the same way whichever backend a provider picks): rejects the weak, semi-weak and possibly-weak
/// DES keys (RFC 2405 §5 and RFC 2451 §2.3 discuss them) and 3DES keys whose three DES keys are
/// not pairwise distinct (degenerate to single DES or 2-key 3DES; SP 800-67 keying option 1).
/// aws-lc-rs would refuse most of these anyway. Keys of other lengths are left to the length check.
pub(crate) fn check_des_key(key: &[u8]) -> Result<(), CryptoError> {
    match key.len() {
        8 | 24 => des::weak_key_test(key).map_err(|_| CryptoError::WeakKey),
        _ => Ok(()),
    }
}

fn check_len(expected: usize, got: usize) -> Result<(), CryptoError> {
    if expected == got {
        Ok(())
    } else {
        Err(CryptoError::KeyLength { expected, got })
    }
}

// ---------------------------------------------------------------------------------------------
// Default provider
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "aws-lc")]
mod default_set {
    use super::{aws_lc, rustcrypto, AeadAlgorithm, CipherAlgorithm, MacAlgorithm};

    #[cfg(not(feature = "rustcrypto-gcm"))]
    pub(super) static AEADS: &[&dyn AeadAlgorithm] = &[aws_lc::AES_128_GCM, aws_lc::AES_192_GCM, aws_lc::AES_256_GCM];
    #[cfg(feature = "rustcrypto-gcm")]
    pub(super) static AEADS: &[&dyn AeadAlgorithm] =
        &[rustcrypto::AES_128_GCM, rustcrypto::AES_192_GCM, rustcrypto::AES_256_GCM];

    pub(super) static CIPHERS: &[&dyn CipherAlgorithm] =
        &[aws_lc::DES_CBC, aws_lc::TRIPLE_DES_CBC, aws_lc::AES_128_CBC, aws_lc::AES_192_CBC, aws_lc::AES_256_CBC];

    // RustCrypto wins SHA-1/SHA-256 (aws-lc-rs pays a ~700-byte HMAC_CTX copy + cleanse per
    // packet), aws-lc-rs SHA-384/512; MD5 only exists in RustCrypto.
    pub(super) static MACS: &[&dyn MacAlgorithm] = &[
        rustcrypto::HMAC_MD5,
        rustcrypto::HMAC_SHA1,
        rustcrypto::HMAC_SHA256,
        aws_lc::HMAC_SHA384,
        aws_lc::HMAC_SHA512,
    ];
}

#[cfg(feature = "aws-lc")]
static DEFAULT: CryptoProvider = CryptoProvider {
    name: "default",
    aeads: default_set::AEADS,
    ciphers: default_set::CIPHERS,
    macs: default_set::MACS,
    random: aws_lc::RANDOM,
};

#[cfg(not(feature = "aws-lc"))]
static DEFAULT: CryptoProvider = CryptoProvider { name: "default", ..rustcrypto::PROVIDER };

/// The provider the gateway uses unless configured otherwise: for each algorithm, the backend
/// measured fastest on our reference machine.
///
/// Measured with `cargo bench -p ipsec-benches --bench crypto_raw` (criterion, warm-up 1 s,
/// measurement 2 s; median per run, best of 1-5 runs; thread CPU time, because the 2-vCPU Xeon
/// (AES-NI, VAES, VPCLMULQDQ, SHA-NI, AVX-512) was shared with other builds, load average 4-8).
/// One per-packet call on an expanded key, ns per op for a 1420-byte payload (CBC: 1424 bytes,
/// i.e. padded to the block):
///
/// | transform               | aws-lc-rs | RustCrypto | default    |
/// |-------------------------|----------:|-----------:|------------|
/// | AES-GCM-16 128 (seal)   |       291 |        988 | aws-lc-rs  |
/// | AES-GCM-16 192 (seal)   |       330 |        745 | aws-lc-rs  |
/// | AES-GCM-16 256 (seal)   |       274 |      1 069 | aws-lc-rs  |
/// | AES-CBC 128 (encrypt)   |     1 039 |      1 235 | aws-lc-rs  |
/// | AES-CBC 192 (encrypt)   |     1 241 |      1 444 | aws-lc-rs  |
/// | AES-CBC 256 (encrypt)   |     1 446 |      1 608 | aws-lc-rs  |
/// | 3DES-CBC (encrypt)      |    57 813 |    169 969 | aws-lc-rs  |
/// | DES-CBC (encrypt)       |    22 422 |     56 837 | aws-lc-rs  |
/// | HMAC-SHA1-96 (sign)     |     1 476 |      1 174 | RustCrypto |
/// | HMAC-SHA2-256-128       |     1 349 |      1 202 | RustCrypto |
/// | HMAC-SHA2-384-192       |     3 181 |      3 476 | aws-lc-rs  |
/// | HMAC-SHA2-512-256       |     3 266 |      3 512 | aws-lc-rs  |
/// | HMAC-MD5-96             |         — |      3 078 | RustCrypto |
///
/// The same ordering holds at 64 and 512 bytes except HMAC-SHA-384/512, where both backends are
/// within noise at 64 bytes (647/643 vs 628/632 ns); the SHA-384/512 margin at 1420 bytes (~8 %)
/// is also close to the run-to-run noise on the shared machine.
///
/// Feature `rustcrypto-gcm` makes AES-GCM come from RustCrypto's `aes-gcm` instead (about 3× slower
/// here). Without feature `aws-lc` the default provider is [`rustcrypto::PROVIDER`] under the name
/// `"default"`. The random source is AWS-LC's DRBG with `aws-lc`, `getrandom` without.
pub fn default_provider() -> &'static CryptoProvider {
    &DEFAULT
}

/// Looks a provider up by its configuration name: `"default"`, `"aws-lc-rs"` (only with the
/// `aws-lc` feature) or `"rustcrypto"`.
pub fn provider_by_name(name: &str) -> Option<&'static CryptoProvider> {
    match name {
        "default" => Some(default_provider()),
        #[cfg(feature = "aws-lc")]
        "aws-lc-rs" => Some(&aws_lc::PROVIDER),
        "rustcrypto" => Some(&rustcrypto::PROVIDER),
        _ => None,
    }
}

static BACKENDS: &[&CryptoProvider] = &[
    #[cfg(feature = "aws-lc")]
    &aws_lc::PROVIDER,
    &rustcrypto::PROVIDER,
];

/// The provider of every compiled-in backend (each made only of that backend's algorithms), for
/// tests and benchmarks that compare backends.
pub fn backend_providers() -> &'static [&'static CryptoProvider] {
    BACKENDS
}

#[cfg(test)]
mod tests;
