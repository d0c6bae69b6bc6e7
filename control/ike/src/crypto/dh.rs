//! Diffie-Hellman groups for IKE (Transform Type 4).
//!
//! * MODP groups 1, 2 (RFC 2409), 5, 14 (RFC 3526) with generator 2, and group 24 (RFC 5114
//!   §2.3: 2048-bit prime with a 256-bit prime-order subgroup, generator *not* 2). Arithmetic is
//!   `crypto-bigint`'s constant-time Montgomery exponentiation. Public values are exactly the
//!   modulus length (left-padded), as is g^ir (RFC 7296 §3.4, §2.14).
//!   Checks on the peer's value `y` (NIST SP 800-56A rev. 3 §5.6.2.3.1, RFC 6989 §2.1):
//!   length equals the modulus length, and `1 < y < p-1` (rejects 0, 1, p-1 and anything ≥ p,
//!   i.e. the order-1 and order-2 elements, which is the full check for the safe-prime groups
//!   1/2/5/14). For group 24, whose p-1 has many small factors, also `y^q mod p == 1`, i.e. `y`
//!   lies in the order-q subgroup (the full public-key validation of SP 800-56A). The shared
//!   value is additionally checked to differ from 1.
//!   Exponentiation with a secret exponent uses the system's libcrypto with the default `openssl`
//!   feature (see `modp_pow`), crypto-bigint otherwise; the checks above are the same either way.
//!   Private exponents: group 24 draws `x` uniformly in `[1, q-1]`; the safe-prime groups use
//!   a random exponent of 256 bits (groups 1, 2, 5) or 320 bits (group 14), twice the groups'
//!   strength estimate as RFC 3526 §8 suggests.
//! * ECP groups 19, 20, 21 (RFC 5903): NIST P-256/384/521. With the default `aws-lc` feature,
//!   P-256 and P-384 come from `aws-lc-rs` (its assembly field arithmetic: 4-5x less CPU per IKE
//!   SA than the portable crates, measured with `perf-lab ike`); otherwise, and for P-521 always,
//!   from RustCrypto (`p256`, `p384`, `p521`, base-point multiplication with precomputed tables).
//!   With aws-lc the private scalar comes from aws-lc's own DRBG (seeded from the OS, fork-safe):
//!   importing a scalar drawn from the caller's RNG makes aws-lc run a pairwise-consistency test
//!   (a second base-point multiplication, plus checks) it offers no way to skip, which cost 8% of
//!   the responder's CPU per IKE SA in `perf-lab ike`. This is the one exception to the crate's
//!   "randomness only from the caller" rule: the protocol flow stays deterministic under a seeded
//!   RNG (nonces, SPIs, timers), only these key bytes do not. With RustCrypto (P-521 always) the
//!   scalar is drawn from the caller's RNG. aws-lc wipes key memory when it frees it. The KE
//!   payload carries `x | y`, each coordinate left-padded to the field size, without
//!   SEC1's 0x04 prefix. The peer's point is decoded with full on-curve validation (the curves have
//!   cofactor 1) and must not be the identity. The shared secret is the x coordinate only.
//! * Curve25519, group 31 (RFC 8031): X25519 from `x25519-dalek`. Public values are 32 octets;
//!   an all-zero shared secret (small-order peer point) is rejected as RFC 8031 §2 requires.
//!
//! Private values zeroize on drop and their `Debug` output is redacted.

use core::fmt;
use std::sync::OnceLock;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use p256::elliptic_curve::Generate;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{CryptoError, SecretBytes};

const MODP_768_P: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A63A3620FFFFFFFFFFFFFFFF",
);

const MODP_1024_P: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
);

const MODP_1536_P: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF",
);

const MODP_2048_P: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

const MODP_2048_256_P: &str = concat!(
    "87A8E61DB4B6663CFFBBD19C651959998CEEF608660DD0F25D2CEED4435E3B00",
    "E00DF8F1D61957D4FAF7DF4561B2AA3016C3D91134096FAA3BF4296D830E9A7C",
    "209E0C6497517ABD5A8A9D306BCF67ED91F9E6725B4758C022E0B1EF4275BF7B",
    "6C5BFC11D45F9088B941F54EB1E59BB8BC39A0BF12307F5C4FDB70C581B23F76",
    "B63ACAE1CAA6B7902D52526735488A0EF13C6D9A51BFA4AB3AD8347796524D8E",
    "F6A167B5A41825D967E144E5140564251CCACB83E6B486F6B3CA3F7971506026",
    "C0B857F689962856DED4010ABD0BE621C3A3960A54E710C375F26375D7014103",
    "A4B54330C198AF126116D2276E11715F693877FAD7EF09CADB094AE91E1A1597",
);

const MODP_2048_256_G: &str = concat!(
    "3FB32C9B73134D0B2E77506660EDBD484CA7B18F21EF205407F4793A1A0BA125",
    "10DBC15077BE463FFF4FED4AAC0BB555BE3A6C1B0C6B47B1BC3773BF7E8C6F62",
    "901228F8C28CBB18A55AE31341000A650196F931C77A57F2DDF463E5E9EC144B",
    "777DE62AAAB8A8628AC376D282D6ED3864E67982428EBC831D14348F6F2F9193",
    "B5045AF2767164E1DFC967C1FB3F2E55A4BD1BFFE83B9C80D052B985D182EA0A",
    "DB2A3B7313D3FE14C8484B1E052588B9B7D2BBD2DF016199ECD06E1557CD0915",
    "B3353BBB64E0EC377FD028370DF92B52C7891428CDC67EB6184B523D1DB246C3",
    "2F63078490F00EF8D647D148D47954515E2327CFEF98C582664B4C0F6CC41659",
);

const MODP_2048_256_Q: &str = "8CF83642A709A097B447997640129DA299B1A47D1EB3750BA308B0FE64F5FBD3";

/// A Diffie-Hellman group (IANA Transform Type 4 value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 1: 768-bit MODP (RFC 2409). Weak; interoperability only.
    Modp768,
    /// 2: 1024-bit MODP (RFC 2409). Weak; interoperability only.
    Modp1024,
    /// 5: 1536-bit MODP (RFC 3526).
    Modp1536,
    /// 14: 2048-bit MODP (RFC 3526).
    Modp2048,
    /// 24: 2048-bit MODP with 256-bit prime order subgroup (RFC 5114).
    Modp2048S256,
    /// 19: 256-bit random ECP (P-256, RFC 5903).
    Ecp256,
    /// 20: 384-bit random ECP (P-384, RFC 5903).
    Ecp384,
    /// 21: 521-bit random ECP (P-521, RFC 5903).
    Ecp521,
    /// 31: Curve25519 (RFC 8031).
    Curve25519,
}

impl DhGroup {
    /// Every group this crate implements.
    pub const ALL: [DhGroup; 9] = [
        DhGroup::Modp768,
        DhGroup::Modp1024,
        DhGroup::Modp1536,
        DhGroup::Modp2048,
        DhGroup::Modp2048S256,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Ecp521,
        DhGroup::Curve25519,
    ];

    /// IANA Transform ID.
    #[must_use]
    pub fn id(self) -> u16 {
        match self {
            DhGroup::Modp768 => 1,
            DhGroup::Modp1024 => 2,
            DhGroup::Modp1536 => 5,
            DhGroup::Modp2048 => 14,
            DhGroup::Modp2048S256 => 24,
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Ecp521 => 21,
            DhGroup::Curve25519 => 31,
        }
    }

    /// From an IANA Transform ID.
    #[must_use]
    pub fn from_id(id: u16) -> Option<Self> {
        DhGroup::ALL.into_iter().find(|g| g.id() == id)
    }

    /// Length of the public value (KE payload data) in octets.
    #[must_use]
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Modp768 => 96,
            DhGroup::Modp1024 => 128,
            DhGroup::Modp1536 => 192,
            DhGroup::Modp2048 | DhGroup::Modp2048S256 => 256,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Ecp521 => 132,
            DhGroup::Curve25519 => 32,
        }
    }

    /// Length of the shared secret g^ir in octets.
    #[must_use]
    pub fn shared_len(self) -> usize {
        match self {
            DhGroup::Ecp256 | DhGroup::Ecp384 | DhGroup::Ecp521 => self.public_len() / 2,
            _ => self.public_len(),
        }
    }

    /// Generates a private value and its public value (KE payload data), drawing randomness from
    /// `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(self, rng: &mut R) -> (DhPrivate, Vec<u8>) {
        let key = match self {
            #[cfg(feature = "aws-lc")]
            DhGroup::Ecp256 | DhGroup::Ecp384 => match awslc_generate(self) {
                Some(k) => k,
                // Not expected (aws-lc failing to draw randomness); the slower import path.
                None => {
                    let mut buf = Zeroizing::new([0u8; 48]);
                    let scalar = &mut buf[..self.public_len() / 2];
                    loop {
                        rng.fill_bytes(scalar);
                        if let Some(k) = awslc_private(self, scalar) {
                            break k;
                        }
                    }
                }
            },
            #[cfg(not(feature = "aws-lc"))]
            DhGroup::Ecp256 => PrivKey::P256(<p256::SecretKey as Generate>::generate_from_rng(rng)),
            #[cfg(not(feature = "aws-lc"))]
            DhGroup::Ecp384 => PrivKey::P384(<p384::SecretKey as Generate>::generate_from_rng(rng)),
            DhGroup::Ecp521 => PrivKey::P521(<p521::SecretKey as Generate>::generate_from_rng(rng)),
            DhGroup::Curve25519 => PrivKey::X25519(x25519_dalek::StaticSecret::random_from_rng(rng)),
            _ => {
                let m = modp(self);
                let nbytes = m.exp_bits.div_ceil(8) as usize;
                loop {
                    let mut buf = Zeroizing::new(vec![0u8; nbytes]);
                    rng.fill_bytes(&mut buf);
                    let x = BoxedUint::from_be_slice(&buf, m.bits)
                        .unwrap_or_else(|_| unreachable!("exponent shorter than modulus"));
                    if bool::from(x.is_zero()) || m.q.as_ref().is_some_and(|q| x >= *q) {
                        continue;
                    }
                    break PrivKey::Modp(Zeroizing::new(x));
                }
            }
        };
        let private = DhPrivate { group: self, key };
        let public = private.public_value();
        (private, public)
    }

    /// Computes the shared secret g^ir from our private value and the peer's public value,
    /// validating the latter as described in the module documentation.
    ///
    /// # Errors
    /// [`CryptoError::GroupMismatch`] if `private` is of another group,
    /// [`CryptoError::InvalidPublicValue`] for a bad peer value,
    /// [`CryptoError::DegenerateSharedSecret`] for a degenerate result.
    pub fn compute_shared(self, private: &DhPrivate, peer_public: &[u8]) -> Result<SecretBytes, CryptoError> {
        if private.group != self {
            return Err(CryptoError::GroupMismatch);
        }
        if peer_public.len() != self.public_len() {
            return Err(CryptoError::InvalidPublicValue);
        }
        match &private.key {
            PrivKey::Modp(x) => modp_shared(self, x, peer_public),
            #[cfg(feature = "aws-lc")]
            PrivKey::AwsLc(k) => {
                let mut sec1 = Vec::with_capacity(peer_public.len() + 1);
                sec1.push(0x04);
                sec1.extend_from_slice(peer_public);
                let peer = aws_lc_rs::agreement::UnparsedPublicKey::new(k.algorithm(), &sec1);
                // aws-lc decodes the point with full on-curve validation (the identity has no
                // uncompressed encoding).
                aws_lc_rs::agreement::agree(k, peer, CryptoError::InvalidPublicValue, |s| {
                    Ok(SecretBytes::from_slice(s))
                })
            }
            #[cfg(not(feature = "aws-lc"))]
            PrivKey::P256(sk) => ecp_shared!(p256, sk, peer_public),
            #[cfg(not(feature = "aws-lc"))]
            PrivKey::P384(sk) => ecp_shared!(p384, sk, peer_public),
            PrivKey::P521(sk) => ecp_shared!(p521, sk, peer_public),
            PrivKey::X25519(sk) => {
                let mut pk = [0u8; 32];
                pk.copy_from_slice(peer_public);
                let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(pk));
                if !shared.was_contributory() {
                    return Err(CryptoError::DegenerateSharedSecret);
                }
                Ok(SecretBytes::from_slice(shared.as_bytes()))
            }
        }
    }
}

/// A DH private value. Zeroized on drop; `Debug` never shows it.
pub struct DhPrivate {
    group: DhGroup,
    key: PrivKey,
}

enum PrivKey {
    Modp(Zeroizing<BoxedUint>),
    /// P-256 or P-384 in aws-lc (freed, and wiped, by aws-lc on drop).
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc_rs::agreement::PrivateKey),
    #[cfg(not(feature = "aws-lc"))]
    P256(p256::SecretKey),
    #[cfg(not(feature = "aws-lc"))]
    P384(p384::SecretKey),
    P521(p521::SecretKey),
    X25519(x25519_dalek::StaticSecret),
}

impl fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhPrivate({:?}, [REDACTED])", self.group)
    }
}

macro_rules! ecp_public {
    ($curve:ident, $sk:expr) => {{
        use $curve::elliptic_curve::sec1::ToSec1Point;
        let point = $sk.public_key().to_sec1_point(false);
        // Drop SEC1's 0x04 (uncompressed) prefix: IKE carries x | y (RFC 5903 §7).
        point.as_bytes()[1..].to_vec()
    }};
}

macro_rules! ecp_shared {
    ($curve:ident, $sk:expr, $peer:expr) => {{
        let mut sec1 = Vec::with_capacity($peer.len() + 1);
        sec1.push(0x04);
        sec1.extend_from_slice($peer);
        let pk = $curve::PublicKey::from_sec1_bytes(&sec1).map_err(|_| CryptoError::InvalidPublicValue)?;
        let shared = $curve::ecdh::diffie_hellman($sk.to_nonzero_scalar(), pk.as_affine());
        Ok(SecretBytes::from_slice(shared.raw_secret_bytes()))
    }};
}
use ecp_shared;

impl DhPrivate {
    /// Builds a private value from its big-endian encoding: the scalar for ECP groups (field-size
    /// octets), the 32-octet scalar for Curve25519, the exponent for MODP groups. Meant for known-
    /// answer tests and for keys stored elsewhere.
    ///
    /// # Errors
    /// [`CryptoError::KeyLength`] if the value is out of range for the group.
    pub fn from_bytes(group: DhGroup, bytes: &[u8]) -> Result<Self, CryptoError> {
        let key = match group {
            #[cfg(feature = "aws-lc")]
            DhGroup::Ecp256 | DhGroup::Ecp384 => {
                if bytes.len() != group.public_len() / 2 {
                    return Err(CryptoError::KeyLength);
                }
                awslc_private(group, bytes).ok_or(CryptoError::KeyLength)?
            }
            #[cfg(not(feature = "aws-lc"))]
            DhGroup::Ecp256 => PrivKey::P256(p256::SecretKey::from_slice(bytes).map_err(|_| CryptoError::KeyLength)?),
            #[cfg(not(feature = "aws-lc"))]
            DhGroup::Ecp384 => PrivKey::P384(p384::SecretKey::from_slice(bytes).map_err(|_| CryptoError::KeyLength)?),
            DhGroup::Ecp521 => PrivKey::P521(p521::SecretKey::from_slice(bytes).map_err(|_| CryptoError::KeyLength)?),
            DhGroup::Curve25519 => {
                let k: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
                PrivKey::X25519(x25519_dalek::StaticSecret::from(k))
            }
            _ => {
                let m = modp(group);
                let x = BoxedUint::from_be_slice(bytes, m.bits).map_err(|_| CryptoError::KeyLength)?;
                if bool::from(x.is_zero()) || x.bits() > m.exp_bits {
                    return Err(CryptoError::KeyLength);
                }
                PrivKey::Modp(Zeroizing::new(x))
            }
        };
        Ok(DhPrivate { group, key })
    }

    /// The group.
    #[must_use]
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public value (KE payload data) for this private value.
    #[must_use]
    pub fn public_value(&self) -> Vec<u8> {
        match &self.key {
            PrivKey::Modp(x) => {
                let m = modp(self.group);
                fixed_base_pow(m, x).to_be_bytes().to_vec()
            }
            #[cfg(feature = "aws-lc")]
            PrivKey::AwsLc(k) => {
                // SEC1 uncompressed; IKE carries x | y without the 0x04 prefix (RFC 5903 §7). The
                // computation cannot fail for a key aws-lc accepted; an empty value would be
                // refused by the peer.
                k.compute_public_key().map(|p| p.as_ref().get(1..).unwrap_or_default().to_vec()).unwrap_or_default()
            }
            #[cfg(not(feature = "aws-lc"))]
            PrivKey::P256(sk) => ecp_public!(p256, sk),
            #[cfg(not(feature = "aws-lc"))]
            PrivKey::P384(sk) => ecp_public!(p384, sk),
            PrivKey::P521(sk) => ecp_public!(p521, sk),
            PrivKey::X25519(sk) => x25519_dalek::PublicKey::from(sk).to_bytes().to_vec(),
        }
    }
}

/// A fresh aws-lc private key for P-256 / P-384, drawn from aws-lc's own DRBG (see the module
/// documentation for why not from the caller's RNG).
#[cfg(feature = "aws-lc")]
fn awslc_generate(group: DhGroup) -> Option<PrivKey> {
    let alg = match group {
        DhGroup::Ecp256 => &aws_lc_rs::agreement::ECDH_P256,
        DhGroup::Ecp384 => &aws_lc_rs::agreement::ECDH_P384,
        _ => return None,
    };
    aws_lc_rs::agreement::PrivateKey::generate(alg).ok().map(PrivKey::AwsLc)
}

/// An aws-lc private key for P-256 / P-384 from its big-endian scalar; `None` if the scalar is
/// not in `[1, n-1]`.
#[cfg(feature = "aws-lc")]
fn awslc_private(group: DhGroup, scalar: &[u8]) -> Option<PrivKey> {
    let alg = match group {
        DhGroup::Ecp256 => &aws_lc_rs::agreement::ECDH_P256,
        DhGroup::Ecp384 => &aws_lc_rs::agreement::ECDH_P384,
        _ => return None,
    };
    aws_lc_rs::agreement::PrivateKey::from_private_key(alg, scalar).ok().map(PrivKey::AwsLc)
}

struct Modp {
    bits: u32,
    exp_bits: u32,
    p: BoxedUint,
    params: BoxedMontyParams,
    g: BoxedUint,
    q: Option<BoxedUint>,
    /// `g^(j·16^i)` in Montgomery form (words) for every 4-bit window `i` of the exponent and
    /// digit `j` (`[i][j]`), built on first use: see [`fixed_base_pow`].
    comb: OnceLock<Vec<Vec<Box<[crypto_bigint::Word]>>>>,
}

/// Windows of [`fixed_base_pow`].
const COMB_BITS: u32 = 4;

/// `g^x mod p` (our public value) with a fixed-base comb (HAC 14.109, windows of 4 bits): one
/// multiplication per window from a per-group table of `g^(j·16^i)` instead of a squaring per
/// exponent bit: about 4x fewer multiplications than a generic exponentiation. Each table entry
/// is picked by a constant-time scan over the window's 16 entries (every word read, selected
/// with `subtle`), so neither time nor memory access depends on `x`. The table (80 x 16 x 256 B
/// = 320 KiB for group 14) is computed once per group and process.
fn fixed_base_pow(m: &Modp, x: &BoxedUint) -> BoxedUint {
    use subtle::{ConditionallySelectable, ConstantTimeEq};
    let windows = m.exp_bits.div_ceil(COMB_BITS) as usize;
    let table = m.comb.get_or_init(|| {
        let mut base = BoxedMontyForm::new(m.g.clone(), &m.params);
        let mut t = Vec::with_capacity(windows);
        for _ in 0..windows {
            let mut row = Vec::with_capacity(1 << COMB_BITS);
            let mut acc = BoxedMontyForm::one(&m.params);
            for _ in 0..(1 << COMB_BITS) {
                row.push(acc.as_montgomery().to_words());
                acc = &acc * &base;
            }
            base = acc; // g^(16^(i+1))
            t.push(row);
        }
        t
    });
    let xw = Zeroizing::new(x.to_words());
    let word_bits = crypto_bigint::Word::BITS;
    let mut acc = BoxedMontyForm::one(&m.params);
    let mut pick = Zeroizing::new(BoxedUint::zero_with_precision(m.bits));
    for (i, row) in table.iter().enumerate() {
        // Window i's digit: the window position is public, its value secret.
        let bit = i as u32 * COMB_BITS;
        let w = xw.get((bit / word_bits) as usize).copied().unwrap_or(0);
        let digit = ((w >> (bit % word_bits)) & ((1 << COMB_BITS) - 1)) as u8;
        let out = pick.as_mut_words();
        out.copy_from_slice(&row[0]);
        for (j, entry) in row.iter().enumerate().skip(1) {
            let hit = (j as u8).ct_eq(&digit);
            for (o, e) in out.iter_mut().zip(entry.iter()) {
                o.conditional_assign(e, hit);
            }
        }
        acc = &acc * &BoxedMontyForm::from_montgomery((*pick).clone(), &m.params);
    }
    acc.retrieve()
}

fn hex_to_bytes(s: &str) -> Vec<u8> {
    fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'F' => c - b'A' + 10,
            b'a'..=b'f' => c - b'a' + 10,
            _ => unreachable!("constant hex"),
        }
    }
    s.as_bytes().chunks(2).map(|p| (nib(p[0]) << 4) | nib(p[1])).collect()
}

fn build_modp(p_hex: &str, g_hex: Option<&str>, q_hex: Option<&str>, exp_bits: u32) -> Modp {
    let pb = hex_to_bytes(p_hex);
    let bits = u32::try_from(pb.len() * 8).unwrap_or_else(|_| unreachable!());
    let p = BoxedUint::from_be_slice(&pb, bits).unwrap_or_else(|_| unreachable!());
    let params =
        BoxedMontyParams::new(Odd::new(p.clone()).into_option().unwrap_or_else(|| unreachable!("MODP primes are odd")));
    let g = match g_hex {
        Some(h) => BoxedUint::from_be_slice(&hex_to_bytes(h), bits).unwrap_or_else(|_| unreachable!()),
        None => BoxedUint::from_be_slice(&[2], bits).unwrap_or_else(|_| unreachable!()),
    };
    let q = q_hex.map(|h| BoxedUint::from_be_slice(&hex_to_bytes(h), bits).unwrap_or_else(|_| unreachable!()));
    Modp { bits, exp_bits, p, params, g, q, comb: OnceLock::new() }
}

fn modp(group: DhGroup) -> &'static Modp {
    static G1: OnceLock<Modp> = OnceLock::new();
    static G2: OnceLock<Modp> = OnceLock::new();
    static G5: OnceLock<Modp> = OnceLock::new();
    static G14: OnceLock<Modp> = OnceLock::new();
    static G24: OnceLock<Modp> = OnceLock::new();
    match group {
        DhGroup::Modp768 => G1.get_or_init(|| build_modp(MODP_768_P, None, None, 256)),
        DhGroup::Modp1024 => G2.get_or_init(|| build_modp(MODP_1024_P, None, None, 256)),
        DhGroup::Modp1536 => G5.get_or_init(|| build_modp(MODP_1536_P, None, None, 256)),
        DhGroup::Modp2048 => G14.get_or_init(|| build_modp(MODP_2048_P, None, None, 320)),
        DhGroup::Modp2048S256 => {
            G24.get_or_init(|| build_modp(MODP_2048_256_P, Some(MODP_2048_256_G), Some(MODP_2048_256_Q), 256))
        }
        _ => unreachable!("not a MODP group"),
    }
}

/// `base^x mod p` for a secret exponent `x` of at most `m.exp_bits` bits, constant time in `x`:
/// crypto-bigint's Montgomery exponentiation with a fixed window of 4 bits over `exp_bits`.
#[cfg(not(feature = "openssl"))]
fn modp_pow(m: &Modp, base: &BoxedUint, x: &BoxedUint) -> BoxedUint {
    BoxedMontyForm::new(base.clone(), &m.params).pow_bounded_exp(x, m.exp_bits).retrieve()
}

/// `base^x mod p` for a secret exponent `x`, in the system's libcrypto: `BN_mod_exp` with the
/// exponent flagged `BN_FLG_CONSTTIME`, i.e. `BN_mod_exp_mont_consttime` (fixed windows,
/// cache-line-scattered tables, the x86-64 `mulx` assembly). About 1.5x less CPU than
/// crypto-bigint on the 2048-bit group here (`perf-lab ike --dh-only`); with the comb for our own
/// g^x it brings the MODP responder to about a fifth of charon's cost. The exponent's copy is
/// cleared (`BN_clear`) before it is freed; crypto-bigint remains the backend without the
/// `openssl` feature.
#[cfg(feature = "openssl")]
fn modp_pow(m: &Modp, base: &BoxedUint, x: &BoxedUint) -> BoxedUint {
    use openssl::bn::{BigNum, BigNumContext};

    /// A BIGNUM holding secret data: wiped before it is freed.
    struct Secret(BigNum);
    impl Drop for Secret {
        fn drop(&mut self) {
            self.0.clear();
        }
    }

    let run = || -> Result<BoxedUint, openssl::error::ErrorStack> {
        let mut ctx = BigNumContext::new()?;
        let p = BigNum::from_slice(&m.p.to_be_bytes())?;
        let b = BigNum::from_slice(&base.to_be_bytes())?;
        let mut e = Secret(BigNum::from_slice(&Zeroizing::new(x.to_be_bytes().to_vec()))?);
        e.0.set_const_time();
        let mut r = Secret(BigNum::new()?);
        r.0.set_const_time();
        r.0.mod_exp(&b, &e.0, &p, &mut ctx)?;
        let pad = i32::try_from(m.bits / 8).unwrap_or(i32::MAX);
        let bytes = Zeroizing::new(r.0.to_vec_padded(pad)?);
        Ok(BoxedUint::from_be_slice(&bytes, m.bits).unwrap_or_else(|_| unreachable!("result below p")))
    };
    // libcrypto fails only on allocation failure; fall back to the portable code then.
    run().unwrap_or_else(|_| BoxedMontyForm::new(base.clone(), &m.params).pow_bounded_exp(x, m.exp_bits).retrieve())
}

/// Validates a MODP public value (see the module documentation).
fn modp_check_public(m: &Modp, y: &BoxedUint) -> Result<(), CryptoError> {
    let one = BoxedUint::one_with_precision(m.bits);
    let p_minus_1 = m.p.wrapping_sub(&one);
    if y <= &one || y >= &p_minus_1 {
        return Err(CryptoError::InvalidPublicValue);
    }
    if let Some(q) = &m.q {
        // Public data: no need for constant time, but the API is the same.
        let yq = BoxedMontyForm::new(y.clone(), &m.params).pow_bounded_exp(q, q.bits()).retrieve();
        if yq != one {
            return Err(CryptoError::InvalidPublicValue);
        }
    }
    Ok(())
}

fn modp_shared(group: DhGroup, x: &BoxedUint, peer: &[u8]) -> Result<SecretBytes, CryptoError> {
    let m = modp(group);
    let y = BoxedUint::from_be_slice(peer, m.bits).map_err(|_| CryptoError::InvalidPublicValue)?;
    modp_check_public(m, &y)?;
    let s = Zeroizing::new(modp_pow(m, &y, x));
    if *s == BoxedUint::one_with_precision(m.bits) {
        return Err(CryptoError::DegenerateSharedSecret);
    }
    Ok(SecretBytes::new(s.to_be_bytes().to_vec()))
}

#[cfg(test)]
pub(crate) fn modp_prime_bytes(group: DhGroup) -> Vec<u8> {
    modp(group).p.to_be_bytes().to_vec()
}

#[cfg(test)]
pub(crate) fn modp_subgroup_check(group: DhGroup) -> bool {
    // g^q == 1 (group 24) or 2^((p-1)/2) == 1 (safe primes with generator 2 of the order-q subgroup).
    let m = modp(group);
    let one = BoxedUint::one_with_precision(m.bits);
    let q = match &m.q {
        Some(q) => q.clone(),
        None => m.p.wrapping_sub(&one).shr_vartime(1).unwrap_or_else(|| unreachable!()),
    };
    BoxedMontyForm::new(m.g.clone(), &m.params).pow_bounded_exp(&q, q.bits()).retrieve() == one
}
