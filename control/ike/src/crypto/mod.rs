//! Cryptography for IKE: PRF and prf+, key derivation, PSK authentication, SK payload protection
//! and Diffie-Hellman. All algorithms come from audited crates (RustCrypto, dalek); this module only
//! wires them together as RFC 7296 describes.

pub mod dh;
pub mod keys;
pub mod prf;
pub mod sk;

#[cfg(test)]
mod tests;

use core::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes (keys, shared secrets, PSKs): zeroized on drop, compared in constant time, and
/// never printed — `Debug` shows only the length.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `v`.
    #[must_use]
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(v)
    }

    /// Copies `s`.
    #[must_use]
    pub fn from_slice(s: &[u8]) -> Self {
        SecretBytes(s.to_vec())
    }

    /// The secret bytes.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in octets.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        SecretBytes(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.0.len())
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for SecretBytes {}

/// Errors of the cryptographic layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// A key has the wrong length for its algorithm.
    KeyLength,
    /// prf+ was asked for more than 255 blocks (RFC 7296 §2.13).
    PrfPlusTooLong,
    /// The peer's DH public value is malformed or outside the allowed range/subgroup.
    InvalidPublicValue,
    /// The DH shared secret is degenerate (all-zero X25519 output, or 1).
    DegenerateSharedSecret,
    /// The private value belongs to another group.
    GroupMismatch,
    /// ICV or AEAD tag verification failed: drop the message silently.
    Integrity,
    /// The decrypted content is malformed (length not a block multiple, bad padding length).
    BadCiphertext,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CryptoError::KeyLength => "wrong key length",
            CryptoError::PrfPlusTooLong => "prf+ output too long",
            CryptoError::InvalidPublicValue => "invalid Diffie-Hellman public value",
            CryptoError::DegenerateSharedSecret => "degenerate Diffie-Hellman shared secret",
            CryptoError::GroupMismatch => "Diffie-Hellman group mismatch",
            CryptoError::Integrity => "integrity check failed",
            CryptoError::BadCiphertext => "malformed ciphertext",
        })
    }
}

impl std::error::Error for CryptoError {}
