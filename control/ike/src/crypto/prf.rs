//! PRF (HMAC, RFC 2104 with the hashes of RFC 7296 §3.3.2) and prf+ (RFC 7296 §2.13).

use hmac::{Hmac, KeyInit, Mac};

use super::{CryptoError, SecretBytes};
use crate::transforms::{IntegAlg, PrfAlg};

fn hmac_parts<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <M as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// `prf(key, parts[0] | parts[1] | ...)`: full-length HMAC output.
#[must_use]
pub fn prf(alg: PrfAlg, key: &[u8], parts: &[&[u8]]) -> SecretBytes {
    SecretBytes::new(match alg {
        PrfAlg::HmacMd5 => hmac_parts::<Hmac<md5::Md5>>(key, parts),
        PrfAlg::HmacSha1 => hmac_parts::<Hmac<sha1::Sha1>>(key, parts),
        PrfAlg::HmacSha256 => hmac_parts::<Hmac<sha2::Sha256>>(key, parts),
        PrfAlg::HmacSha384 => hmac_parts::<Hmac<sha2::Sha384>>(key, parts),
        PrfAlg::HmacSha512 => hmac_parts::<Hmac<sha2::Sha512>>(key, parts),
    })
}

/// The integrity algorithm's full HMAC over `parts`, truncated to its ICV length.
#[must_use]
pub fn integ_icv(alg: IntegAlg, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut full = match alg {
        IntegAlg::HmacMd5_96 => hmac_parts::<Hmac<md5::Md5>>(key, parts),
        IntegAlg::HmacSha1_96 => hmac_parts::<Hmac<sha1::Sha1>>(key, parts),
        IntegAlg::HmacSha256_128 => hmac_parts::<Hmac<sha2::Sha256>>(key, parts),
        IntegAlg::HmacSha384_192 => hmac_parts::<Hmac<sha2::Sha384>>(key, parts),
        IntegAlg::HmacSha512_256 => hmac_parts::<Hmac<sha2::Sha512>>(key, parts),
    };
    full.truncate(alg.icv_len());
    full
}

/// `prf+(K, S)` = T1 | T2 | ... truncated to `len` octets, where T1 = prf(K, S | 0x01) and
/// Tn = prf(K, Tn-1 | S | n) (RFC 7296 §2.13).
///
/// # Errors
/// [`CryptoError::PrfPlusTooLong`] if `len` needs more than 255 iterations.
pub fn prf_plus(alg: PrfAlg, key: &[u8], seed: &[u8], len: usize) -> Result<SecretBytes, CryptoError> {
    let h = alg.output_len();
    let blocks = len.div_ceil(h);
    if blocks > 255 {
        return Err(CryptoError::PrfPlusTooLong);
    }
    // Capacity is reserved up front so that no reallocation leaves unzeroized copies behind;
    // `Vec`'s `Zeroize` also clears the spare capacity left by `truncate`.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(blocks * h));
    let mut prev: Option<SecretBytes> = None;
    for n in 1..=blocks {
        let counter = [u8::try_from(n).map_err(|_| CryptoError::PrfPlusTooLong)?];
        let t_prev = prev.as_ref().map_or(&[][..], SecretBytes::expose);
        let t = prf(alg, key, &[t_prev, seed, &counter]);
        buf.extend_from_slice(t.expose());
        prev = Some(t);
    }
    buf.truncate(len);
    Ok(SecretBytes::new(core::mem::take(&mut *buf)))
}
