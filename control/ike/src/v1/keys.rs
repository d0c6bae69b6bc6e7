//! IKEv1 key material with pre-shared keys (RFC 2409 §5, §5.4, §5.5, Appendix B) and message
//! encryption (CBC chained across messages, RFC 2409 Appendix B).
//!
//! * `SKEYID = prf(PSK, Ni_b | Nr_b)`, `SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)`,
//!   `SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)`,
//!   `SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)`; the prf is the HMAC of the
//!   negotiated hash.
//! * The encryption key is SKEYID_e truncated, or expanded (`K1 = prf(SKEYID_e, 0)`,
//!   `Kn = prf(SKEYID_e, Kn-1)`) when SKEYID_e is too short.
//! * Phase-1 IV: `hash(g^xi | g^xr)`; every later message of phase 1 continues from the last
//!   ciphertext block of the previous one. Phase-2 and informational exchanges start at
//!   `hash(last phase-1 block | M-ID)` and chain within the exchange.
//! * HASH_I/HASH_R (§5), quick-mode HASH(1)/(2)/(3) (§5.5), the informational HASH (§5.7) and
//!   KEYMAT with and without PFS (§5.5).

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use super::message::{emit_chain, parse_chain, Header, ParseError, Payload, FLAG_ENCRYPTION, HEADER_LEN};
use crate::crypto::prf::prf;
use crate::crypto::sk::{cbc_decrypt_raw, cbc_encrypt_raw};
use crate::crypto::{CryptoError, SecretBytes};
use crate::transforms::{EncrAlg, PrfAlg};

/// Phase-1 hash algorithms (RFC 2409 Appendix A, RFC 4868 for SHA-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// MD5 (1).
    Md5,
    /// SHA (2).
    Sha1,
    /// SHA2-256 (4).
    Sha256,
    /// SHA2-384 (5).
    Sha384,
    /// SHA2-512 (6).
    Sha512,
}

impl HashAlg {
    /// Attribute value.
    #[must_use]
    pub fn id(self) -> u16 {
        match self {
            HashAlg::Md5 => 1,
            HashAlg::Sha1 => 2,
            HashAlg::Sha256 => 4,
            HashAlg::Sha384 => 5,
            HashAlg::Sha512 => 6,
        }
    }

    /// From an attribute value.
    #[must_use]
    pub fn from_id(id: u64) -> Option<Self> {
        Some(match id {
            1 => HashAlg::Md5,
            2 => HashAlg::Sha1,
            4 => HashAlg::Sha256,
            5 => HashAlg::Sha384,
            6 => HashAlg::Sha512,
            _ => return None,
        })
    }

    /// The HMAC used as prf.
    #[must_use]
    pub fn prf(self) -> PrfAlg {
        match self {
            HashAlg::Md5 => PrfAlg::HmacMd5,
            HashAlg::Sha1 => PrfAlg::HmacSha1,
            HashAlg::Sha256 => PrfAlg::HmacSha256,
            HashAlg::Sha384 => PrfAlg::HmacSha384,
            HashAlg::Sha512 => PrfAlg::HmacSha512,
        }
    }

    /// The plain hash of `parts` concatenated (IV computation).
    #[must_use]
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn d<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            HashAlg::Md5 => d::<Md5>(parts),
            HashAlg::Sha1 => d::<Sha1>(parts),
            HashAlg::Sha256 => d::<Sha256>(parts),
            HashAlg::Sha384 => d::<Sha384>(parts),
            HashAlg::Sha512 => d::<Sha512>(parts),
        }
    }
}

/// The phase-1 (ISAKMP SA) keys.
#[derive(Debug)]
pub struct Phase1Keys {
    /// Negotiated hash (its HMAC is the prf).
    pub hash: HashAlg,
    /// Negotiated cipher (CBC).
    pub encr: EncrAlg,
    /// SKEYID.
    pub skeyid: SecretBytes,
    /// SKEYID_d: keying material for phase 2.
    pub skeyid_d: SecretBytes,
    /// SKEYID_a: authentication of phase-2/informational messages.
    pub skeyid_a: SecretBytes,
    /// SKEYID_e.
    pub skeyid_e: SecretBytes,
    /// The cipher key derived from SKEYID_e.
    pub enc_key: SecretBytes,
    /// The phase-1 IV, `hash(g^xi | g^xr)` truncated to the block size.
    pub iv: Vec<u8>,
}

/// Inputs of [`Phase1Keys::derive_psk`].
#[derive(Clone, Copy, Debug)]
pub struct Phase1Input<'a> {
    /// Initiator nonce body.
    pub ni: &'a [u8],
    /// Responder nonce body.
    pub nr: &'a [u8],
    /// DH shared secret g^xy.
    pub g_xy: &'a [u8],
    /// Initiator's public value g^xi.
    pub g_xi: &'a [u8],
    /// Responder's public value g^xr.
    pub g_xr: &'a [u8],
    /// Initiator cookie.
    pub cky_i: u64,
    /// Responder cookie.
    pub cky_r: u64,
}

impl Phase1Keys {
    /// Derives every phase-1 key for pre-shared key authentication.
    ///
    /// # Errors
    /// [`CryptoError::KeyLength`] if `encr` is not a CBC cipher.
    pub fn derive_psk(hash: HashAlg, encr: EncrAlg, psk: &[u8], i: &Phase1Input<'_>) -> Result<Self, CryptoError> {
        if encr.is_aead() {
            return Err(CryptoError::KeyLength);
        }
        let p = hash.prf();
        let (ci, cr) = (i.cky_i.to_be_bytes(), i.cky_r.to_be_bytes());
        let skeyid = prf(p, psk, &[i.ni, i.nr]);
        let skeyid_d = prf(p, skeyid.expose(), &[i.g_xy, &ci, &cr, &[0]]);
        let skeyid_a = prf(p, skeyid.expose(), &[skeyid_d.expose(), i.g_xy, &ci, &cr, &[1]]);
        let skeyid_e = prf(p, skeyid.expose(), &[skeyid_a.expose(), i.g_xy, &ci, &cr, &[2]]);
        let need = encr.key_len();
        let enc_key = if skeyid_e.len() >= need {
            SecretBytes::from_slice(&skeyid_e.expose()[..need])
        } else {
            let mut ka = Zeroizing::new(Vec::with_capacity(need + p.output_len()));
            let mut k = prf(p, skeyid_e.expose(), &[&[0]]);
            loop {
                ka.extend_from_slice(k.expose());
                if ka.len() >= need {
                    break;
                }
                k = prf(p, skeyid_e.expose(), &[k.expose()]);
            }
            SecretBytes::from_slice(&ka[..need])
        };
        let mut iv = hash.digest(&[i.g_xi, i.g_xr]);
        iv.truncate(encr.block_size());
        Ok(Phase1Keys { hash, encr, skeyid, skeyid_d, skeyid_a, skeyid_e, enc_key, iv })
    }

    fn prf(&self, key: &SecretBytes, parts: &[&[u8]]) -> SecretBytes {
        prf(self.hash.prf(), key.expose(), parts)
    }

    /// HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b).
    #[must_use]
    pub fn hash_i(&self, i: &Phase1Input<'_>, sai_b: &[u8], idii_b: &[u8]) -> SecretBytes {
        let (ci, cr) = (i.cky_i.to_be_bytes(), i.cky_r.to_be_bytes());
        self.prf(&self.skeyid, &[i.g_xi, i.g_xr, &ci, &cr, sai_b, idii_b])
    }

    /// HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b).
    #[must_use]
    pub fn hash_r(&self, i: &Phase1Input<'_>, sai_b: &[u8], idir_b: &[u8]) -> SecretBytes {
        let (ci, cr) = (i.cky_i.to_be_bytes(), i.cky_r.to_be_bytes());
        self.prf(&self.skeyid, &[i.g_xr, i.g_xi, &cr, &ci, sai_b, idir_b])
    }

    /// The first IV of a phase-2 or informational exchange: hash(last phase-1 block | M-ID).
    #[must_use]
    pub fn phase2_iv(&self, last_phase1_block: &[u8], message_id: u32) -> Vec<u8> {
        let mut iv = self.hash.digest(&[last_phase1_block, &message_id.to_be_bytes()]);
        iv.truncate(self.encr.block_size());
        iv
    }

    /// Quick mode HASH(1) = prf(SKEYID_a, M-ID | `rest`), `rest` being every payload after the
    /// HASH payload as emitted (SA | Ni [| KE] [| IDci | IDcr] ...).
    #[must_use]
    pub fn qm_hash1(&self, message_id: u32, rest: &[u8]) -> SecretBytes {
        self.prf(&self.skeyid_a, &[&message_id.to_be_bytes(), rest])
    }

    /// Quick mode HASH(2) = prf(SKEYID_a, M-ID | Ni_b | `rest`).
    #[must_use]
    pub fn qm_hash2(&self, message_id: u32, ni_b: &[u8], rest: &[u8]) -> SecretBytes {
        self.prf(&self.skeyid_a, &[&message_id.to_be_bytes(), ni_b, rest])
    }

    /// Quick mode HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b).
    #[must_use]
    pub fn qm_hash3(&self, message_id: u32, ni_b: &[u8], nr_b: &[u8]) -> SecretBytes {
        self.prf(&self.skeyid_a, &[&[0], &message_id.to_be_bytes(), ni_b, nr_b])
    }

    /// Informational HASH(1) = prf(SKEYID_a, M-ID | N/D), `rest` the payloads after HASH.
    #[must_use]
    pub fn info_hash(&self, message_id: u32, rest: &[u8]) -> SecretBytes {
        self.qm_hash1(message_id, rest)
    }

    /// KEYMAT for the SA whose SPI (chosen by its receiver) is `spi`: `K1 | K2 | ...` with
    /// `K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)` and
    /// `Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)`, truncated to `len`.
    #[must_use]
    pub fn keymat(
        &self,
        protocol: u8,
        spi: u32,
        g_qm: Option<&[u8]>,
        ni_b: &[u8],
        nr_b: &[u8],
        len: usize,
    ) -> SecretBytes {
        let g = g_qm.unwrap_or(&[]);
        let spi = spi.to_be_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.hash.prf().output_len()));
        let mut prev: Option<SecretBytes> = None;
        while out.len() < len {
            let p = prev.as_ref().map_or(&[][..], SecretBytes::expose);
            let k = self.prf(&self.skeyid_d, &[p, g, &[protocol], &spi, ni_b, nr_b]);
            out.extend_from_slice(k.expose());
            prev = Some(k);
        }
        SecretBytes::from_slice(&out[..len])
    }

    /// Encrypts `payloads` under `header` with CBC from `iv` (zero padding to the block size).
    /// Returns the message and its last ciphertext block (the next IV of the exchange).
    ///
    /// # Errors
    /// [`CryptoError`] on key problems; an unencodable chain is [`CryptoError::BadCiphertext`].
    pub fn encrypt(&self, header: &Header, payloads: &[Payload], iv: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let mut pt = Zeroizing::new(Vec::new());
        let first = emit_chain(payloads, &mut pt).map_err(|_| CryptoError::BadCiphertext)?;
        let bs = self.encr.block_size();
        let pad = (bs - pt.len() % bs) % bs;
        let n = pt.len() + pad;
        pt.resize(n, 0);
        let mut h = *header;
        h.next_payload = first;
        h.flags |= FLAG_ENCRYPTION;
        h.length = u32::try_from(HEADER_LEN + pt.len()).map_err(|_| CryptoError::BadCiphertext)?;
        let mut out = Vec::with_capacity(HEADER_LEN + pt.len());
        h.emit(&mut out);
        out.extend_from_slice(&pt);
        cbc_encrypt_raw(self.encr, self.enc_key.expose(), iv, &mut out[HEADER_LEN..])?;
        let last = out[out.len() - bs..].to_vec();
        Ok((out, last))
    }

    /// Decrypts the body of an encrypted message `raw` (header already parsed as `header`) with
    /// CBC from `iv`. Returns the payloads and the last ciphertext block.
    ///
    /// # Errors
    /// [`DecryptError`] when the ciphertext is not a block multiple, is empty or does not parse.
    pub fn decrypt(&self, header: &Header, raw: &[u8], iv: &[u8]) -> Result<(Vec<Payload>, Vec<u8>), DecryptError> {
        let len = usize::try_from(header.length).map_err(|_| DecryptError::Crypto(CryptoError::BadCiphertext))?;
        let ct = raw.get(HEADER_LEN..len).ok_or(DecryptError::Parse(ParseError::Truncated))?;
        let bs = self.encr.block_size();
        if ct.is_empty() || !ct.len().is_multiple_of(bs) {
            return Err(DecryptError::Crypto(CryptoError::BadCiphertext));
        }
        let last = ct[ct.len() - bs..].to_vec();
        let mut pt = Zeroizing::new(ct.to_vec());
        cbc_decrypt_raw(self.encr, self.enc_key.expose(), iv, &mut pt).map_err(DecryptError::Crypto)?;
        let payloads = parse_chain(header.next_payload, &pt, true).map_err(DecryptError::Parse)?;
        Ok((payloads, last))
    }
}

/// Why an encrypted message could not be opened (a wrong key or IV shows as a parse error:
/// IKEv1 has no integrity check on the ciphertext, only the HASH payloads inside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecryptError {
    /// Ciphertext malformed.
    Crypto(CryptoError),
    /// Plaintext does not parse.
    Parse(ParseError),
}

impl core::fmt::Display for DecryptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecryptError::Crypto(e) => write!(f, "IKEv1 decryption: {e}"),
            DecryptError::Parse(e) => write!(f, "IKEv1 decryption: {e}"),
        }
    }
}

impl std::error::Error for DecryptError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::message::{ExchangeType, Header};

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn input<'a>(ni: &'a [u8], nr: &'a [u8], g: &'a [u8], gi: &'a [u8], gr: &'a [u8]) -> Phase1Input<'a> {
        Phase1Input { ni, nr, g_xy: g, g_xi: gi, g_xr: gr, cky_i: 0x1111_2222_3333_4444, cky_r: 0x5555_6666_7777_8888 }
    }

    /// SKEYID chain spelled out with the plain HMAC from the `hmac` crate, independently of
    /// `crypto::prf`, and the Appendix B key expansion for 3DES with SHA-1 (20 < 24 octets).
    #[test]
    fn skeyid_chain_and_expansion() {
        use hmac::{Hmac, KeyInit, Mac};
        let h = |k: &[u8], d: &[&[u8]]| {
            let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(k).unwrap();
            for x in d {
                m.update(x);
            }
            m.finalize().into_bytes().to_vec()
        };
        let (ni, nr, g, gi, gr) = (vec![1u8; 16], vec![2u8; 16], vec![3u8; 128], vec![4u8; 128], vec![5u8; 128]);
        let i = input(&ni, &nr, &g, &gi, &gr);
        let k = Phase1Keys::derive_psk(HashAlg::Sha1, EncrAlg::TripleDes, b"secret", &i).unwrap();
        let ci = 0x1111_2222_3333_4444u64.to_be_bytes();
        let cr = 0x5555_6666_7777_8888u64.to_be_bytes();
        let skeyid = h(b"secret", &[&ni, &nr]);
        let d = h(&skeyid, &[&g, &ci, &cr, &[0]]);
        let a = h(&skeyid, &[&d, &g, &ci, &cr, &[1]]);
        let e = h(&skeyid, &[&a, &g, &ci, &cr, &[2]]);
        assert_eq!(k.skeyid.expose(), &skeyid[..]);
        assert_eq!(k.skeyid_d.expose(), &d[..]);
        assert_eq!(k.skeyid_a.expose(), &a[..]);
        assert_eq!(k.skeyid_e.expose(), &e[..]);
        let k1 = h(&e, &[&[0]]);
        let k2 = h(&e, &[&k1]);
        let want: Vec<u8> = k1.iter().chain(k2.iter()).copied().take(24).collect();
        assert_eq!(k.enc_key.expose(), &want[..]);
        // AES-128 with SHA-1: plain truncation.
        let k = Phase1Keys::derive_psk(HashAlg::Sha1, EncrAlg::AES128_CBC, b"secret", &i).unwrap();
        assert_eq!(k.enc_key.expose(), &e[..16]);
        assert_eq!(k.iv, Sha1::digest([gi.as_slice(), gr.as_slice()].concat())[..16].to_vec());
        // KEYMAT spans two prf blocks for AES-256 + SHA-1 (32 + 20 octets).
        let km = k.keymat(3, 0xc0ff_ee00, None, &ni, &nr, 52);
        let spi = 0xc0ff_ee00u32.to_be_bytes();
        let b1 = h(&d, &[&[3], &spi, &ni, &nr]);
        let b2 = h(&d, &[&b1, &[3], &spi, &ni, &nr]);
        let b3 = h(&d, &[&b2, &[3], &spi, &ni, &nr]);
        assert_eq!(km.expose(), &[b1, b2, b3].concat()[..52]);
        let pfs = k.keymat(3, 1, Some(&g), &ni, &nr, 20);
        assert_eq!(pfs.expose(), &h(&d, &[&g, &[3], &1u32.to_be_bytes(), &ni, &nr])[..]);
    }

    /// The RFC 2202 HMAC-SHA-1 test case 2 through our prf, as the anchor of the chain above.
    #[test]
    fn prf_anchor_rfc2202() {
        let k = prf(PrfAlg::HmacSha1, b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(k.expose(), &unhex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")[..]);
    }

    #[test]
    fn encrypt_decrypt_chain() {
        let (ni, nr, g, gi, gr) = (vec![1u8; 16], vec![2u8; 16], vec![3u8; 32], vec![4u8; 32], vec![5u8; 32]);
        let i = input(&ni, &nr, &g, &gi, &gr);
        for encr in [
            EncrAlg::Des,
            EncrAlg::TripleDes,
            EncrAlg::AES128_CBC,
            EncrAlg::AesCbc { key_bits: 192 },
            EncrAlg::AES256_CBC,
        ] {
            for hash in [HashAlg::Md5, HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
                let k = Phase1Keys::derive_psk(hash, encr, b"psk", &i).unwrap();
                assert_eq!(k.enc_key.len(), encr.key_len());
                let h = Header::new(1, 2, ExchangeType::MAIN, 0, 0);
                let p = vec![Payload::Hash(vec![7; 20]), Payload::Nonce(vec![9; 13])];
                let (m, last) = k.encrypt(&h, &p, &k.iv).unwrap();
                assert_eq!(&m[m.len() - encr.block_size()..], &last[..]);
                let hp = Header::parse(&m).unwrap();
                let (q, last2) = k.decrypt(&hp, &m, &k.iv).unwrap();
                assert_eq!(q, p);
                assert_eq!(last, last2);
                assert_ne!(k.phase2_iv(&last, 1), k.phase2_iv(&last, 2));
            }
        }
    }
}
