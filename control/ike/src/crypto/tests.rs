//! Known-answer and property tests of the crypto layer.

use super::dh::{DhGroup, DhPrivate};
use super::keys::{child_keymat, psk_auth, signed_octets, skeyseed, verify_psk_auth, IkeSaKeys, IkeSuite};
use super::prf::{integ_icv, prf, prf_plus};
use super::sk::{SkCipher, SkError};
use super::{CryptoError, SecretBytes};
use crate::message::{ExchangeType, Flags, Header, Identification, NotifyPayload, NotifyType, Payload};
use crate::test_util::{hex, rng};
use crate::transforms::{EncrAlg, IntegAlg, PrfAlg};

// ---------------------------------------------------------------------------------------------
// PRF

#[test]
fn prf_rfc4231_and_rfc2202_vectors() {
    let jefe: &[&[u8]] = &[b"what do ya want", b" for nothing?"]; // split to exercise parts
    type Case<'a> = (PrfAlg, &'a [u8], &'a [&'a [u8]], &'a str);
    let cases: &[Case<'_>] = &[
        // RFC 4231 test case 1.
        (PrfAlg::HmacSha256, &[0x0b; 20], &[b"Hi There"],
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (PrfAlg::HmacSha384, &[0x0b; 20], &[b"Hi There"],
         "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"),
        (PrfAlg::HmacSha512, &[0x0b; 20], &[b"Hi There"],
         "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
        // RFC 4231 test case 2.
        (PrfAlg::HmacSha256, b"Jefe", jefe,
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (PrfAlg::HmacSha384, b"Jefe", jefe,
         "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"),
        (PrfAlg::HmacSha512, b"Jefe", jefe,
         "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
        // RFC 4231 test case 6 (key longer than the block size).
        (PrfAlg::HmacSha256, &[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        // RFC 2202 test case 2 (HMAC-MD5, HMAC-SHA1).
        (PrfAlg::HmacMd5, b"Jefe", jefe, "750c783e6ab0b503eaa86e310a5db738"),
        (PrfAlg::HmacSha1, b"Jefe", jefe, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    ];
    for (alg, key, data, want) in cases {
        let out = prf(*alg, key, data);
        assert_eq!(out.expose(), hex(want).as_slice(), "{alg:?}");
        assert_eq!(out.len(), alg.output_len());
    }
}

#[test]
fn integ_truncates_hmac() {
    // RFC 4231 test case 2 truncated to 128 bits is HMAC-SHA-256-128's ICV.
    let icv = integ_icv(IntegAlg::HmacSha256_128, b"Jefe", &[b"what do ya want for nothing?"]);
    assert_eq!(icv, hex("5bdcc146bf60754e6a042426089575c7"));
    let icv = integ_icv(IntegAlg::HmacSha1_96, b"Jefe", &[b"what do ya want for nothing?"]);
    assert_eq!(icv, hex("effcdf6ae5eb2fa2d27416d5"));
    let icv = integ_icv(IntegAlg::HmacMd5_96, b"Jefe", &[b"what do ya want for nothing?"]);
    assert_eq!(icv, hex("750c783e6ab0b503eaa86e31"));
}

#[test]
fn prf_plus_matches_hand_expansion() {
    // T1 = prf(K, S|01), T2 = prf(K, T1|S|02), T3 = prf(K, T2|S|03); computed by
    // tools/kdf_vectors.py with Python's hmac.
    let t1 = hex("0a4dd4d286ae93c5e1d24f24f3756216b533dd67");
    let t2 = hex("ad15d19cef25f483bcc5300fd5487404a2c50006");
    let t3_10 = hex("64d807a67dba048c69ac");
    let out = prf_plus(PrfAlg::HmacSha1, b"key", b"seed", 50).unwrap();
    assert_eq!(out.expose(), [t1.clone(), t2.clone(), t3_10].concat().as_slice());
    // And each block is literally the formula.
    assert_eq!(prf(PrfAlg::HmacSha1, b"key", &[b"seed", &[1]]).expose(), t1.as_slice());
    assert_eq!(prf(PrfAlg::HmacSha1, b"key", &[&t1, b"seed", &[2]]).expose(), t2.as_slice());
    // Prefix property: a shorter request is a prefix of a longer one.
    let short = prf_plus(PrfAlg::HmacSha1, b"key", b"seed", 7).unwrap();
    assert_eq!(short.expose(), &out.expose()[..7]);
}

#[test]
fn prf_plus_limit_is_255_blocks() {
    assert_eq!(prf_plus(PrfAlg::HmacSha1, b"k", b"s", 255 * 20).unwrap().len(), 255 * 20);
    assert_eq!(prf_plus(PrfAlg::HmacSha1, b"k", b"s", 255 * 20 + 1).unwrap_err(), CryptoError::PrfPlusTooLong);
    assert!(prf_plus(PrfAlg::HmacSha256, b"k", b"s", 0).unwrap().is_empty());
}

/// prf+ written out with the `hmac` crate directly (not through [`prf`]): T1 = prf(K, S | 0x01),
/// Tn = prf(K, Tn-1 | S | n), concatenated and truncated.
fn prf_plus_by_hand<M: hmac::Mac + hmac::KeyInit + Clone>(key: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut t: Vec<u8> = Vec::new();
    let mut n = 1u8;
    while out.len() < len {
        let mut m = <M as hmac::KeyInit>::new_from_slice(key).unwrap();
        m.update(&t);
        m.update(seed);
        m.update(&[n]);
        t = m.finalize().into_bytes().to_vec();
        out.extend_from_slice(&t);
        n = n.wrapping_add(1);
    }
    out.truncate(len);
    out
}

#[test]
fn prf_plus_equals_the_rfc_7296_expansion_for_every_prf_up_to_255_blocks() {
    use hmac::Hmac;
    let key = [0x5a; 150]; // longer than every HMAC block: hashed first
    let key = key.as_slice();
    let seed: Vec<u8> = (0..=200u8).collect();
    for alg in [PrfAlg::HmacMd5, PrfAlg::HmacSha1, PrfAlg::HmacSha256, PrfAlg::HmacSha384, PrfAlg::HmacSha512] {
        let h = alg.output_len();
        // Lengths: empty, one octet, one block, one past a block, not a multiple, the full 255 blocks
        // (last counter octet 0xff), one octet too many.
        for len in [0, 1, h, h + 1, 3 * h - 5, 255 * h] {
            let want = match alg {
                PrfAlg::HmacMd5 => prf_plus_by_hand::<Hmac<md5::Md5>>(key, &seed, len),
                PrfAlg::HmacSha1 => prf_plus_by_hand::<Hmac<sha1::Sha1>>(key, &seed, len),
                PrfAlg::HmacSha256 => prf_plus_by_hand::<Hmac<sha2::Sha256>>(key, &seed, len),
                PrfAlg::HmacSha384 => prf_plus_by_hand::<Hmac<sha2::Sha384>>(key, &seed, len),
                PrfAlg::HmacSha512 => prf_plus_by_hand::<Hmac<sha2::Sha512>>(key, &seed, len),
            };
            let got = prf_plus(alg, key, &seed, len).unwrap();
            assert_eq!(got.expose(), want.as_slice(), "{alg:?} len {len}");
        }
        assert_eq!(prf_plus(alg, key, &seed, 255 * h + 1).unwrap_err(), CryptoError::PrfPlusTooLong, "{alg:?}");
        assert_eq!(prf_plus(alg, key, &seed, usize::MAX).unwrap_err(), CryptoError::PrfPlusTooLong, "{alg:?}");
    }
}

/// An independent reference: the sample run in libreswan's IKEv2 KDF CAVS driver (values computed
/// by NSS), with the input sizes of NIST's SP 800-135 IKEv2 KDF test file: HMAC-SHA-1, 8-octet
/// nonces, 32-octet g^ir, 132-octet DKM. `DKM` = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr);
/// `DKM(Child SA)` = prf+(SK_d, Ni | Nr) and `(D-H)` = prf+(SK_d, g^ir (new) | Ni | Nr) with SK_d
/// the first 20 octets of DKM; `SKEYSEED(Rekey)` = prf(SK_d, g^ir (new) | Ni | Nr).
#[test]
fn ikev2_kdf_cavs_sample_sha1() {
    let gir = hex("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52");
    let gir_new = hex("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330");
    let (ni, nr) = (hex("32b50d5f4a3763f3"), hex("9206a04b26564cb1"));
    let (spi_i, spi_r) = (0x34c9_e7c1_8886_8785_u64, 0x3ff7_7d76_0d2b_2199_u64);
    let want_seed = hex("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7");
    let want_dkm = hex(concat!(
        "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b76606f9fa5e9",
        "92204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119",
        "8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4"
    ));
    let want_child = hex(concat!(
        "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd9560b2d5e092d1f24e",
        "2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf",
        "285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4"
    ));
    let want_child_dh = hex(concat!(
        "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232eab4b3ab14c400a519",
        "7dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a",
        "05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c"
    ));
    let want_rekey = hex("63e81194946ebd05df7df5ebf5d8750056bf1f1d");
    assert_eq!((want_dkm.len(), want_child.len(), want_child_dh.len()), (132, 132, 132));

    let seed = skeyseed(PrfAlg::HmacSha1, &ni, &nr, &gir);
    assert_eq!(seed.expose(), want_seed.as_slice());
    let s = [ni.clone(), nr.clone(), spi_i.to_be_bytes().to_vec(), spi_r.to_be_bytes().to_vec()].concat();
    assert_eq!(prf_plus(PrfAlg::HmacSha1, seed.expose(), &s, 132).unwrap().expose(), want_dkm.as_slice());
    // The same 132 octets split as RFC 7296 §2.14 orders them: AES-128-CBC + HMAC-SHA1-96 needs
    // exactly 3×20 + 2×20 + 2×16.
    let suite = IkeSuite { encr: EncrAlg::AES128_CBC, prf: PrfAlg::HmacSha1, integ: Some(IntegAlg::HmacSha1_96) };
    let k = IkeSaKeys::derive(suite, &seed, &ni, &nr, spi_i, spi_r).unwrap();
    let split =
        [&k.sk_d, &k.sk_ai, &k.sk_ar, &k.sk_ei, &k.sk_er, &k.sk_pi, &k.sk_pr].map(|x| x.expose().to_vec()).concat();
    assert_eq!(split, want_dkm);
    assert_eq!(k.sk_d.expose(), &want_dkm[..20]);

    let nn = [ni.clone(), nr.clone()].concat();
    assert_eq!(prf_plus(PrfAlg::HmacSha1, k.sk_d.expose(), &nn, 132).unwrap().expose(), want_child.as_slice());
    let gnn = [gir_new.clone(), ni.clone(), nr.clone()].concat();
    assert_eq!(prf_plus(PrfAlg::HmacSha1, k.sk_d.expose(), &gnn, 132).unwrap().expose(), want_child_dh.as_slice());
    // KEYMAT for an AES-128-CBC + HMAC-SHA1-96 Child SA is the first 2×(16+20) octets, split
    // encryption then integrity, initiator's direction first (§2.17).
    for (pfs, want) in [(None, &want_child), (Some(gir_new.as_slice()), &want_child_dh)] {
        let c =
            child_keymat(PrfAlg::HmacSha1, &k.sk_d, pfs, &ni, &nr, EncrAlg::AES128_CBC, Some(IntegAlg::HmacSha1_96))
                .unwrap();
        let got = [&c.encr_i, &c.integ_i, &c.encr_r, &c.integ_r].map(|x| x.expose().to_vec()).concat();
        assert_eq!(got, want[..72]);
    }
    let rekey = super::keys::skeyseed_rekey(PrfAlg::HmacSha1, &k.sk_d, &gir_new, &ni, &nr);
    assert_eq!(rekey.expose(), want_rekey.as_slice());
}

// ---------------------------------------------------------------------------------------------
// Key derivation and AUTH (expected values from tools/kdf_vectors.py)

fn ni() -> Vec<u8> {
    (0x00..0x20).collect()
}
fn nr() -> Vec<u8> {
    (0x20..0x40).collect()
}
fn g_ir() -> Vec<u8> {
    // sha256("g^ir") twice.
    hex("344e2045b94963924a5f9967c81074d86cd151c1ddb0dd104230c0aecbe94567").repeat(2)
}
fn g_ir_new() -> Vec<u8> {
    // sha256("g^ir new").
    hex("16e90b6d647a16bb96df76719a24c13254137936d3efa444babdf245f1f4909d")
}
const SPI_I: u64 = 0x0102_0304_0506_0708;
const SPI_R: u64 = 0x1112_1314_1516_1718;

fn suite_a() -> IkeSuite {
    IkeSuite { encr: EncrAlg::AES128_CBC, prf: PrfAlg::HmacSha256, integ: Some(IntegAlg::HmacSha256_128) }
}

fn suite_b() -> IkeSuite {
    IkeSuite { encr: EncrAlg::AES256_GCM16, prf: PrfAlg::HmacSha384, integ: None }
}

#[test]
fn ike_sa_keys_suite_a_match_reference() {
    let seed = skeyseed(PrfAlg::HmacSha256, &ni(), &nr(), &g_ir());
    assert_eq!(seed.expose(), hex("e117fbfa4b07257b942aa1ba95d484e045e306155a57581db25573f3ba3cca51").as_slice());
    let k = IkeSaKeys::derive_initial(suite_a(), &g_ir(), &ni(), &nr(), SPI_I, SPI_R).unwrap();
    let want = [
        (&k.sk_d, "a2fd2868b65c34acaa8c1bc081cf4397ae288102c65ee8bb2755a5b6ae86302d"),
        (&k.sk_ai, "28600bcc3502ab0a9d7ca5bb843c8eb391e13584e27f71cd50f772c00e5bc390"),
        (&k.sk_ar, "45215299b486428ad44b04be89009a79fd1f037945b8a402231059155a0dd6b8"),
        (&k.sk_ei, "cc342d68279d973e0d7978b293cb20f0"),
        (&k.sk_er, "19b4b488f72a091dedaf5681ffb6e822"),
        (&k.sk_pi, "0d9518e795d0cc42ceea3fc39e6d5574e637de154e79717e50f26e0271dff698"),
        (&k.sk_pr, "1df56e7783ab573c55f24d9ed497db11750c28db3d9ee8b1681c69ae365d0cee"),
    ];
    for (i, (got, w)) in want.iter().enumerate() {
        assert_eq!(got.expose(), hex(w).as_slice(), "key #{i}");
    }
}

#[test]
fn ike_sa_keys_suite_b_gcm_has_salt_and_no_integ_keys() {
    let k = IkeSaKeys::derive_initial(suite_b(), &g_ir(), &ni(), &nr(), SPI_I, SPI_R).unwrap();
    assert!(k.sk_ai.is_empty() && k.sk_ar.is_empty());
    let want = [
        (&k.sk_d, "e7343def094399a34f7f7b6bfd817aaa0f0cff64033f76f663e4af2e4f50fffb24247ae3177d7102aa3c0ee53bad8a2f"),
        (&k.sk_ei, "ec17930ead991328050de8555951f224e53d76beac497c3027365b2ce45afbb0fdf86a94"),
        (&k.sk_er, "3f48a791b8e2bf759ce30f5027f0135b9461ea77694342daa5aa28233688bad57ce5ff4a"),
        (&k.sk_pi, "d1cb7efd5a80fc328dc979a6eea381e4c3a032322ae4eab8d606c7ed79699062e155b9727ba35a028ca17ab8c32a1190"),
        (&k.sk_pr, "2e428253c0d4835deb2f5d6e922b32efc62d14b5bfe687956ee5fd5c2bfaf13987c9584b89b3ea1c20836ed35ba389c6"),
    ];
    for (i, (got, w)) in want.iter().enumerate() {
        assert_eq!(got.expose(), hex(w).as_slice(), "key #{i}");
    }
}

#[test]
fn child_keymat_with_and_without_pfs_match_reference() {
    let k = IkeSaKeys::derive_initial(suite_a(), &g_ir(), &ni(), &nr(), SPI_I, SPI_R).unwrap();
    let encr = EncrAlg::AES256_CBC;
    let integ = Some(IntegAlg::HmacSha256_128);
    let c = child_keymat(PrfAlg::HmacSha256, &k.sk_d, None, &ni(), &nr(), encr, integ).unwrap();
    assert_eq!(c.encr_i.expose(), hex("7302efdb3bfcbe6ee1fdbac40cbf3c9b23dcea2249234b842ac896ddecfe0a86").as_slice());
    assert_eq!(c.integ_i.expose(), hex("8e2c7402e6aa6c2a026c7f189468b29df6461f0ee9cc70571164cf5468da9599").as_slice());
    assert_eq!(c.encr_r.expose(), hex("7948cb906451d61245bbbd61303ca654548534bf97a6b3a5ef7a43107bb51c0a").as_slice());
    assert_eq!(c.integ_r.expose(), hex("ea74d65dbe7a692faf10ddc5d89469e4d027b1d63ffa9b1911f164e407a7b270").as_slice());

    let p = child_keymat(PrfAlg::HmacSha256, &k.sk_d, Some(&g_ir_new()), &ni(), &nr(), encr, integ).unwrap();
    assert_eq!(p.encr_i.expose(), hex("92a3e8e7250a123932306f5fa4f0b96e2615f512ec1f154cd4dc37cfca69de90").as_slice());
    assert_eq!(p.integ_i.expose(), hex("42a5262e997eced59ff6568c09f738352e7b2ec2b3ad56ed88ce9381a8486e9e").as_slice());
    assert_eq!(p.encr_r.expose(), hex("ec929f0cf81d359e574fa2a9837782270d514973aab9094587d99d429c87db11").as_slice());
    assert_eq!(p.integ_r.expose(), hex("a916ad98730f6f541b83d0a12aa1e4a253ae661c73e8e215dacab7297c9f09a6").as_slice());
}

#[test]
fn child_keymat_gcm_takes_key_plus_salt_per_direction() {
    let k = IkeSaKeys::derive_initial(suite_b(), &g_ir(), &ni(), &nr(), SPI_I, SPI_R).unwrap();
    let c = child_keymat(PrfAlg::HmacSha384, &k.sk_d, None, &ni(), &nr(), EncrAlg::AES128_GCM16, None).unwrap();
    assert_eq!(c.encr_i.expose(), hex("b0d299fa3817f369551c22370fc3ca6e68cca61a").as_slice());
    assert_eq!(c.encr_r.expose(), hex("bae35461074b1d96b201b0e586e42eda87126d1c").as_slice());
    assert!(c.integ_i.is_empty() && c.integ_r.is_empty());
}

#[test]
fn psk_auth_matches_reference_and_verifies() {
    let k = IkeSaKeys::derive_initial(suite_a(), &g_ir(), &ni(), &nr(), SPI_I, SPI_R).unwrap();
    let real_msg_1: Vec<u8> = (0..300u32).map(|i| (i & 0xff) as u8).collect();
    let idi = Identification::Fqdn(b"alice.example".to_vec());
    assert_eq!(idi.body_bytes(), [&[2u8, 0, 0, 0][..], b"alice.example"].concat());
    let psk = SecretBytes::from_slice(b"correct horse battery staple");
    let octets = signed_octets(PrfAlg::HmacSha256, &real_msg_1, &nr(), &k.sk_pi, &idi.body_bytes());
    let auth = psk_auth(PrfAlg::HmacSha256, &psk, &octets);
    assert_eq!(auth, hex("4a07273c7a007165fabe43fc8e974ecf2b50b5984915f922a0fddb04ba1766db"));
    assert!(verify_psk_auth(PrfAlg::HmacSha256, &psk, &octets, &auth));
    let mut bad = auth.clone();
    bad[0] ^= 1;
    assert!(!verify_psk_auth(PrfAlg::HmacSha256, &psk, &octets, &bad));
    assert!(!verify_psk_auth(PrfAlg::HmacSha256, &psk, &octets, &auth[..31]));
    let other = SecretBytes::from_slice(b"wrong");
    assert!(!verify_psk_auth(PrfAlg::HmacSha256, &other, &octets, &auth));
    // SK_pr instead of SK_pi (wrong role) gives another value.
    let octets_r = signed_octets(PrfAlg::HmacSha256, &real_msg_1, &nr(), &k.sk_pr, &idi.body_bytes());
    assert!(!verify_psk_auth(PrfAlg::HmacSha256, &psk, &octets_r, &auth));
}

#[test]
fn secrets_are_redacted_in_debug() {
    let k = IkeSaKeys::derive_initial(suite_a(), &g_ir(), &ni(), &nr(), SPI_I, SPI_R).unwrap();
    let dbg = format!("{k:?}");
    assert!(dbg.contains("REDACTED"));
    for s in [&k.sk_d, &k.sk_ei, &k.sk_pi] {
        // Neither hex nor Debug-of-bytes forms of any key appear.
        let h: String = s.expose()[..6].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&h), "{h} leaked");
        let d = format!("{:?}", &s.expose()[..3]);
        assert!(!dbg.contains(d.trim_end_matches(']')), "{d} leaked");
    }
    let psk = SecretBytes::from_slice(b"hunter2");
    assert_eq!(format!("{psk:?}"), "SecretBytes([REDACTED; 7])");
    let (private, _) = DhGroup::Curve25519.generate(&mut rng(1));
    assert_eq!(format!("{private:?}"), "DhPrivate(Curve25519, [REDACTED])");
    let sk = k.outbound(true).unwrap();
    assert_eq!(format!("{sk:?}"), "SkCipher { encr: AesCbc { key_bits: 128 }, integ: Some(HmacSha256_128), .. }");
}

// ---------------------------------------------------------------------------------------------
// SK payload

fn header(mid: u32) -> Header {
    Header {
        spi_i: SPI_I,
        spi_r: SPI_R,
        minor_version: 0,
        exchange_type: ExchangeType::IKE_AUTH,
        flags: Flags { initiator: true, version: false, response: false },
        message_id: mid,
    }
}

fn inner() -> Vec<Payload> {
    vec![
        Payload::IdI(Identification::Fqdn(b"alice.example".to_vec())),
        Payload::Notify(NotifyPayload::new(NotifyType::INITIAL_CONTACT, vec![])),
        Payload::Nonce(vec![0x5a; 17]),
    ]
}

fn all_sk_suites() -> Vec<(EncrAlg, Option<IntegAlg>)> {
    let encrs = [
        EncrAlg::Des,
        EncrAlg::TripleDes,
        EncrAlg::AesCbc { key_bits: 128 },
        EncrAlg::AesCbc { key_bits: 192 },
        EncrAlg::AesCbc { key_bits: 256 },
    ];
    let integs = [
        IntegAlg::HmacMd5_96,
        IntegAlg::HmacSha1_96,
        IntegAlg::HmacSha256_128,
        IntegAlg::HmacSha384_192,
        IntegAlg::HmacSha512_256,
    ];
    let mut v = Vec::new();
    for e in encrs {
        for i in integs {
            v.push((e, Some(i)));
        }
    }
    for bits in [128, 192, 256] {
        v.push((EncrAlg::AesGcm16 { key_bits: bits }, None));
    }
    v
}

fn sk_pair(encr: EncrAlg, integ: Option<IntegAlg>, seed: u8) -> (SkCipher, SkCipher) {
    let ek = SecretBytes::new((0..encr.keymat_len()).map(|i| seed.wrapping_add(i as u8)).collect());
    let ak = SecretBytes::new((0..integ.map_or(0, IntegAlg::key_len)).map(|i| seed ^ (i as u8)).collect());
    (SkCipher::new(encr, integ, &ek, &ak).unwrap(), SkCipher::new(encr, integ, &ek, &ak).unwrap())
}

#[test]
fn sk_round_trip_and_tamper_rejection_for_every_suite() {
    let mut r = rng(7);
    for (encr, integ) in all_sk_suites() {
        let (mut tx, rx) = sk_pair(encr, integ, 0x40);
        let prefix = vec![Payload::VendorId(b"outside".to_vec())];
        for (outer, inner) in [(vec![], inner()), (prefix.clone(), inner()), (vec![], vec![])] {
            let wire = tx.seal(&header(1), &outer, &inner, &mut r).unwrap();
            let opened = rx.open(&wire).unwrap();
            assert_eq!(opened.header, header(1), "{encr:?}/{integ:?}");
            assert_eq!(opened.outer, outer);
            assert_eq!(opened.inner, inner, "{encr:?}/{integ:?}");

            // Ciphertext is block aligned for CBC.
            let body_len = match crate::message::Message::parse(&wire).unwrap().payloads.last() {
                Some(Payload::Encrypted(e)) => e.data.len(),
                _ => panic!("no SK"),
            };
            let icv = integ.map_or(16, IntegAlg::icv_len);
            assert_eq!((body_len - encr.iv_len() - icv) % encr.block_size(), 0);

            // Flip one bit anywhere (header, outer payloads, SK header, IV, ciphertext, ICV): the
            // message must be rejected, by the integrity check or (for header fields the parser
            // validates) by the parser — never accepted.
            for pos in 0..wire.len() {
                let mut bad = wire.clone();
                bad[pos] ^= 0x01;
                match rx.open(&bad) {
                    Err(SkError::Crypto(CryptoError::Integrity)) | Err(SkError::Parse(_)) => {}
                    Err(SkError::NotEncrypted) => {}
                    other => panic!("{encr:?}/{integ:?} bit flip at {pos} accepted: {other:?}"),
                }
            }
        }
        // A protector with other keys rejects the message.
        let (_, other) = sk_pair(encr, integ, 0x41);
        let wire = tx.seal(&header(2), &[], &inner(), &mut r).unwrap();
        assert_eq!(other.open(&wire).unwrap_err(), SkError::Crypto(CryptoError::Integrity));
    }
}

#[test]
fn sk_integrity_covers_the_header_fields() {
    let mut r = rng(8);
    for (encr, integ) in [(EncrAlg::AES128_CBC, Some(IntegAlg::HmacSha256_128)), (EncrAlg::AES128_GCM16, None)] {
        let (mut tx, rx) = sk_pair(encr, integ, 1);
        let wire = tx.seal(&header(5), &[], &inner(), &mut r).unwrap();
        let mut bad = wire.clone();
        bad[23] ^= 0x01; // last octet of the Message ID
        assert_eq!(rx.open(&bad).unwrap_err(), SkError::Crypto(CryptoError::Integrity));
        let mut bad = wire.clone();
        bad[7] ^= 0x80; // initiator SPI
        assert_eq!(rx.open(&bad).unwrap_err(), SkError::Crypto(CryptoError::Integrity));
    }
}

#[test]
fn sk_gcm_ivs_are_unique_and_cbc_ivs_random() {
    let mut r = rng(9);
    let iv_of = |w: &[u8], n: usize| w[28 + 4..28 + 4 + n].to_vec();
    let (mut tx, _) = sk_pair(EncrAlg::AES128_GCM16, None, 3);
    let w1 = tx.seal(&header(1), &[], &inner(), &mut r).unwrap();
    let w2 = tx.seal(&header(1), &[], &inner(), &mut r).unwrap();
    let (a, b) = (iv_of(&w1, 8), iv_of(&w2, 8));
    assert_ne!(a, b);
    assert_eq!(u64::from_be_bytes(b.try_into().unwrap()), u64::from_be_bytes(a.try_into().unwrap()).wrapping_add(1));
    assert_ne!(w1, w2, "same plaintext, different IV, different ciphertext");
    let (mut tx, _) = sk_pair(EncrAlg::AES128_CBC, Some(IntegAlg::HmacSha1_96), 3);
    let w1 = tx.seal(&header(1), &[], &inner(), &mut r).unwrap();
    let w2 = tx.seal(&header(1), &[], &inner(), &mut r).unwrap();
    assert_ne!(iv_of(&w1, 16), iv_of(&w2, 16));
}

#[test]
fn sk_rejects_bad_padding_length_and_bad_keys() {
    // Wrong key lengths.
    let k16 = SecretBytes::new(vec![0; 16]);
    let k20 = SecretBytes::new(vec![0; 20]);
    let none = SecretBytes::default();
    assert!(SkCipher::new(EncrAlg::AES256_CBC, Some(IntegAlg::HmacSha1_96), &k16, &k20).is_err());
    assert!(SkCipher::new(EncrAlg::AES128_CBC, Some(IntegAlg::HmacSha256_128), &k16, &k20).is_err());
    assert!(SkCipher::new(EncrAlg::AES128_CBC, None, &k16, &none).is_err());
    assert!(SkCipher::new(EncrAlg::AES128_GCM16, None, &k16, &none).is_err()); // salt missing
    assert!(SkCipher::new(EncrAlg::AES128_GCM16, None, &k20, &none).is_ok());

    // An empty inner chain round-trips (liveness checks are empty INFORMATIONALs).
    let (mut tx, rx) = sk_pair(EncrAlg::AES128_GCM16, None, 4);
    let mut r = rng(10);
    let wire = tx.seal(&header(1), &[], &[], &mut r).unwrap();
    assert!(rx.open(&wire).unwrap().inner.is_empty());
    // Not an SK message at all.
    let plain =
        crate::message::Message { header: header(1), payloads: vec![Payload::Nonce(vec![1; 16])] }.emit().unwrap();
    assert_eq!(rx.open(&plain).unwrap_err(), SkError::NotEncrypted);
}

// ---------------------------------------------------------------------------------------------
// Diffie-Hellman

struct EcpVector {
    group: DhGroup,
    i: &'static str,
    gix: &'static str,
    giy: &'static str,
    r: &'static str,
    grx: &'static str,
    gry: &'static str,
    girx: &'static str,
}

// RFC 5903 §8.1-§8.3.
const ECP_VECTORS: &[EcpVector] = &[
    EcpVector {
        group: DhGroup::Ecp256,
        i: "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        gix: "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180",
        giy: "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        r: "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
        grx: "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63",
        gry: "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        girx: "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    },
    EcpVector {
        group: DhGroup::Ecp384,
        i: "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194",
        gix: "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA",
        giy: "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        r: "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC",
        grx: "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571",
        gry: "DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        girx: "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746",
    },
    EcpVector {
        group: DhGroup::Ecp521,
        i: "0037ADE9319A89F4DABDB3EF411AACCCA5123C61ACAB57B5393DCE47608172A095AA85A30FE1C2952C6771D937BA9777F5957B2639BAB072462F68C27A57382D4A52",
        gix: "0015417E84DBF28C0AD3C278713349DC7DF153C897A1891BD98BAB4357C9ECBEE1E3BF42E00B8E380AEAE57C2D107564941885942AF5A7F4601723C4195D176CED3E",
        giy: "017CAE20B6641D2EEB695786D8C946146239D099E18E1D5A514C739D7CB4A10AD8A788015AC405D7799DC75E7B7D5B6CF2261A6A7F1507438BF01BEB6CA3926F9582",
        r: "0145BA99A847AF43793FDD0E872E7CDFA16BE30FDC780F97BCCC3F078380201E9C677D600B343757A3BDBF2A3163E4C2F869CCA7458AA4A4EFFC311F5CB151685EB9",
        grx: "00D0B3975AC4B799F5BEA16D5E13E9AF971D5E9B984C9F39728B5E5739735A219B97C356436ADC6E95BB0352F6BE64A6C2912D4EF2D0433CED2B6171640012D9460F",
        gry: "015C68226383956E3BD066E797B623C27CE0EAC2F551A10C2C724D9852077B87220B6536C5C408A1D2AEBB8E86D678AE49CB57091F4732296579AB44FCD17F0FC56A",
        girx: "01144C7D79AE6956BC8EDB8E7C787C4521CB086FA64407F97894E5E6B2D79B04D1427E73CA4BAA240A34786859810C06B3C715A3A8CC3151F2BEE417996D19F3DDEA",
    },
];

#[test]
fn ecp_rfc5903_vectors() {
    for v in ECP_VECTORS {
        let g = v.group;
        let i = DhPrivate::from_bytes(g, &hex(v.i)).unwrap();
        let r = DhPrivate::from_bytes(g, &hex(v.r)).unwrap();
        let gi = [hex(v.gix), hex(v.giy)].concat();
        let gr = [hex(v.grx), hex(v.gry)].concat();
        assert_eq!(gi.len(), g.public_len());
        assert_eq!(i.public_value(), gi, "{g:?} g^i");
        assert_eq!(r.public_value(), gr, "{g:?} g^r");
        let s1 = g.compute_shared(&i, &gr).unwrap();
        let s2 = g.compute_shared(&r, &gi).unwrap();
        assert_eq!(s1.expose(), hex(v.girx).as_slice(), "{g:?} g^ir x");
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), g.shared_len());

        // Off-curve point, identity encoding, wrong lengths, SEC1-prefixed input: rejected.
        let mut off = gr.clone();
        *off.last_mut().unwrap() ^= 1;
        assert_eq!(g.compute_shared(&i, &off).unwrap_err(), CryptoError::InvalidPublicValue);
        let zeros = vec![0u8; gr.len()];
        assert_eq!(g.compute_shared(&i, &zeros).unwrap_err(), CryptoError::InvalidPublicValue);
        assert_eq!(g.compute_shared(&i, &gr[1..]).unwrap_err(), CryptoError::InvalidPublicValue);
        let prefixed = [&[4u8][..], &gr].concat();
        assert_eq!(g.compute_shared(&i, &prefixed).unwrap_err(), CryptoError::InvalidPublicValue);
    }
}

#[test]
fn x25519_rfc7748_vectors() {
    let g = DhGroup::Curve25519;
    let a = DhPrivate::from_bytes(g, &hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")).unwrap();
    let b = DhPrivate::from_bytes(g, &hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")).unwrap();
    let a_pub = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let b_pub = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    assert_eq!(a.public_value(), a_pub);
    assert_eq!(b.public_value(), b_pub);
    let k = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    assert_eq!(g.compute_shared(&a, &b_pub).unwrap().expose(), k.as_slice());
    assert_eq!(g.compute_shared(&b, &a_pub).unwrap().expose(), k.as_slice());
    // RFC 8031 §2: low-order points give an all-zero secret, which must be rejected.
    let mut one = [0u8; 32];
    one[0] = 1;
    assert_eq!(g.compute_shared(&a, &[0u8; 32]).unwrap_err(), CryptoError::DegenerateSharedSecret);
    assert_eq!(g.compute_shared(&a, &one).unwrap_err(), CryptoError::DegenerateSharedSecret);
    assert_eq!(g.compute_shared(&a, &b_pub[..31]).unwrap_err(), CryptoError::InvalidPublicValue);
}

#[test]
fn dh_generate_agree_for_every_group() {
    let mut r = rng(11);
    for g in DhGroup::ALL {
        let (a, a_pub) = g.generate(&mut r);
        let (b, b_pub) = g.generate(&mut r);
        assert_eq!(a_pub.len(), g.public_len(), "{g:?}");
        assert_ne!(a_pub, b_pub);
        let s1 = g.compute_shared(&a, &b_pub).unwrap();
        let s2 = g.compute_shared(&b, &a_pub).unwrap();
        assert_eq!(s1, s2, "{g:?}");
        assert_eq!(s1.len(), g.shared_len(), "{g:?}");
        assert_eq!(DhGroup::from_id(g.id()), Some(g));
        // A private value of another group is refused.
        let other = if g == DhGroup::Curve25519 { DhGroup::Ecp256 } else { DhGroup::Curve25519 };
        assert_eq!(other.compute_shared(&a, &b_pub).unwrap_err(), CryptoError::GroupMismatch);
    }
}

fn be(len: usize, tail: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; len - tail.len()];
    v.extend_from_slice(tail);
    v
}

#[test]
fn modp_known_small_results() {
    // 2^1 = 2, 2^10 = 1024 (generator 2 groups, padded to the modulus length).
    for g in [DhGroup::Modp768, DhGroup::Modp1024, DhGroup::Modp1536, DhGroup::Modp2048] {
        let n = g.public_len();
        assert_eq!(DhPrivate::from_bytes(g, &[1]).unwrap().public_value(), be(n, &[2]));
        assert_eq!(DhPrivate::from_bytes(g, &[10]).unwrap().public_value(), be(n, &[4, 0]));
        // Shared: (2^10)^3 = 2^30 = 0x40000000.
        let x = DhPrivate::from_bytes(g, &[3]).unwrap();
        let s = g.compute_shared(&x, &be(n, &[4, 0])).unwrap();
        assert_eq!(s.expose(), be(n, &[0x40, 0, 0, 0]).as_slice(), "{g:?}");
    }
    // Group 24: g^1 = g, whose generator is not 2 (RFC 5114 §2.3).
    let g = DhGroup::Modp2048S256;
    let pub1 = DhPrivate::from_bytes(g, &[1]).unwrap().public_value();
    assert_eq!(&pub1[..8], hex("3FB32C9B73134D0B").as_slice());
    assert_eq!(&pub1[250..], hex("4C0F6CC41659").as_slice());
}

#[test]
fn modp_rejects_degenerate_public_values() {
    for g in [DhGroup::Modp768, DhGroup::Modp1024, DhGroup::Modp1536, DhGroup::Modp2048, DhGroup::Modp2048S256] {
        let n = g.public_len();
        let p = super::dh::modp_prime_bytes(g);
        assert_eq!(p.len(), n);
        let mut p_minus_1 = p.clone();
        *p_minus_1.last_mut().unwrap() -= 1; // p is odd
        let mut p_plus_1 = p.clone();
        let last = p_plus_1.last_mut().unwrap();
        *last = last.wrapping_add(1); // only used for group 24, whose p ends in 0x97
        let (x, _) = g.generate(&mut rng(12));
        for (what, y) in
            [("0", be(n, &[0])), ("1", be(n, &[1])), ("p-1", p_minus_1), ("p", p.clone()), ("2^bits-1", vec![0xff; n])]
        {
            assert_eq!(g.compute_shared(&x, &y).unwrap_err(), CryptoError::InvalidPublicValue, "{g:?} y={what}");
        }
        if g == DhGroup::Modp2048S256 {
            assert_eq!(g.compute_shared(&x, &p_plus_1).unwrap_err(), CryptoError::InvalidPublicValue);
        }
        // Wrong length (even with the right value) is refused.
        assert_eq!(g.compute_shared(&x, &[2]).unwrap_err(), CryptoError::InvalidPublicValue);
    }
    // Group 24: 2 is in range but not in the order-q subgroup (2^q mod p != 1), so it is refused;
    // for group 14, 2 is the generator and is accepted.
    let (x, _) = DhGroup::Modp2048S256.generate(&mut rng(13));
    assert_eq!(DhGroup::Modp2048S256.compute_shared(&x, &be(256, &[2])).unwrap_err(), CryptoError::InvalidPublicValue);
    let (x, _) = DhGroup::Modp2048.generate(&mut rng(13));
    assert!(DhGroup::Modp2048.compute_shared(&x, &be(256, &[2])).is_ok());
}

#[test]
fn modp_parameters_are_consistent() {
    for g in [DhGroup::Modp768, DhGroup::Modp1024, DhGroup::Modp1536, DhGroup::Modp2048] {
        let p = super::dh::modp_prime_bytes(g);
        // RFC 2409/3526 primes start and end with 64 one bits.
        assert!(p[..8].iter().chain(&p[p.len() - 8..]).all(|&b| b == 0xff), "{g:?}");
        assert_eq!(&p[8..12], hex("C90FDAA2").as_slice(), "{g:?}: pi bits");
    }
    // The generator lies in the prime-order subgroup: 2^((p-1)/2) = 1 for the safe primes (a
    // transcription error in p would make this fail with overwhelming probability), g^q = 1 for
    // group 24.
    for g in [DhGroup::Modp768, DhGroup::Modp1024, DhGroup::Modp1536, DhGroup::Modp2048, DhGroup::Modp2048S256] {
        assert!(super::dh::modp_subgroup_check(g), "{g:?}");
    }
}
