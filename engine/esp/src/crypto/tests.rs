//! Known-answer and behaviour tests, run against **every** compiled-in backend that implements
//! the algorithm under test (see [`backend_providers`]), plus the default provider.
//!
//! Sources of the vectors: RFC 3602 §4 (AES-128-CBC), NIST SP 800-38A F.2.3/F.2.5 (AES-192/256
//! CBC), FIPS 81 (DES-CBC), NIST SP 800-67 B.1 (3DES, turned into a CBC vector, see below),
//! RFC 2202 (HMAC-MD5/SHA-1), RFC 4231 §4 (HMAC-SHA-256/384/512), RFC 4868 §2.7.2 (truncated
//! ESP ICVs), Wycheproof `aes_gcm_test.json` (vendored subset in `tests/data/`), and
//! draft-mcgrew-gcm-test-01 §4 (AES-GCM ESP packets).

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Decodes hex, ignoring whitespace.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex length: {s}");
    digits.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap()).collect()
}

fn aeads(cipher: Cipher) -> Vec<&'static dyn AeadAlgorithm> {
    let v: Vec<_> =
        backend_providers().iter().filter_map(|p| p.aeads.iter().find(|a| a.cipher() == cipher).copied()).collect();
    // Every backend implements every AES-GCM key size.
    assert_eq!(v.len(), backend_providers().len(), "{cipher}");
    v
}

fn ciphers(cipher: Cipher) -> Vec<&'static dyn CipherAlgorithm> {
    let v: Vec<_> =
        backend_providers().iter().filter_map(|p| p.ciphers.iter().find(|a| a.cipher() == cipher).copied()).collect();
    assert_eq!(v.len(), backend_providers().len(), "{cipher}");
    v
}

fn macs(integrity: Integrity) -> Vec<&'static dyn MacAlgorithm> {
    let v: Vec<_> = backend_providers()
        .iter()
        .filter_map(|p| p.macs.iter().find(|a| a.integrity() == integrity).copied())
        .collect();
    // aws-lc-rs has no MD5; everything else is in every backend.
    if integrity == Integrity::HmacMd5_96 {
        assert_eq!(v.len(), 1);
    } else {
        assert_eq!(v.len(), backend_providers().len(), "{integrity}");
    }
    v
}

/// Small deterministic generator for test data (not crypto).
struct TestRng(u64);

impl TestRng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// CBC known answers
// ---------------------------------------------------------------------------------------------

fn check_cbc(cipher: Cipher, name: &str, key: &[u8], iv: &[u8], pt: &[u8], ct: &[u8]) {
    assert_eq!(pt.len(), ct.len());
    for alg in ciphers(cipher) {
        let key = alg.new_key(key).unwrap_or_else(|e| panic!("{name} {}: {e}", alg.backend()));
        assert_eq!(key.block_len(), cipher.block_len());
        let mut buf = pt.to_vec();
        key.cbc_encrypt(iv, &mut buf).unwrap();
        assert_eq!(buf, ct, "{name} encrypt, backend {}", alg.backend());
        key.cbc_decrypt(iv, &mut buf).unwrap();
        assert_eq!(buf, pt, "{name} decrypt, backend {}", alg.backend());
    }
}

#[test]
fn rfc3602_aes128_cbc() {
    // RFC 3602 §4, cases 1-4.
    check_cbc(
        Cipher::AesCbc128,
        "RFC 3602 case 1",
        &hex("06a9214036b8a15b512e03d534120006"),
        &hex("3dafba429d9eb430b422da802c9fac41"),
        b"Single block msg",
        &hex("e353779c1079aeb82708942dbe77181a"),
    );
    check_cbc(
        Cipher::AesCbc128,
        "RFC 3602 case 2",
        &hex("c286696d887c9aa0611bbb3e2025a45a"),
        &hex("562e17996d093d28ddb3ba695a2e6f58"),
        &hex("000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f"),
        &hex("d296cd94c2cccf8a3a863028b5e1dc0a 7586602d253cfff91b8266bea6d61ab1"),
    );
    check_cbc(
        Cipher::AesCbc128,
        "RFC 3602 case 3",
        &hex("6c3ea0477630ce21a2ce334aa746c2cd"),
        &hex("c782dc4c098c66cbd9cd27d825682c81"),
        b"This is a 48-byte message (exactly 3 AES blocks)",
        &hex("d0a02b3836451753d493665d33f0e886 2dea54cdb293abc7506939276772f8d5
             021c19216bad525c8579695d83ba2684"),
    );
    check_cbc(
        Cipher::AesCbc128,
        "RFC 3602 case 4",
        &hex("56e47a38c5598974bc46903dba290349"),
        &hex("8ce82eefbea0da3c44699ed7db51b7d9"),
        &hex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf b0b1b2b3b4b5b6b7b8b9babbbcbdbebf
             c0c1c2c3c4c5c6c7c8c9cacbcccdcecf d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"),
        &hex("c30e32ffedc0774e6aff6af0869f71aa 0f3af07a9a31a9c684db207eb0ef8e4e
             35907aa632c3ffdf868bb7b29d3d46ad 83ce9f9a102ee99d49a53e87f4c3da55"),
    );
}

const SP800_38A_IV: &str = "000102030405060708090a0b0c0d0e0f";
const SP800_38A_PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                            30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";

#[test]
fn sp800_38a_aes192_aes256_cbc() {
    // NIST SP 800-38A F.2.3 CBC-AES192.Encrypt / F.2.4 Decrypt.
    check_cbc(
        Cipher::AesCbc192,
        "SP 800-38A F.2.3",
        &hex("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b"),
        &hex(SP800_38A_IV),
        &hex(SP800_38A_PT),
        &hex("4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a
             571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd"),
    );
    // F.2.5 CBC-AES256.Encrypt / F.2.6 Decrypt.
    check_cbc(
        Cipher::AesCbc256,
        "SP 800-38A F.2.5",
        &hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"),
        &hex(SP800_38A_IV),
        &hex(SP800_38A_PT),
        &hex("f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b"),
    );
    // F.2.1 CBC-AES128 too, for good measure.
    check_cbc(
        Cipher::AesCbc128,
        "SP 800-38A F.2.1",
        &hex("2b7e151628aed2a6abf7158809cf4f3c"),
        &hex(SP800_38A_IV),
        &hex(SP800_38A_PT),
        &hex("7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
             73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7"),
    );
}

#[test]
fn fips81_des_cbc() {
    // FIPS 81 Appendix C: "Now is the time for all " under key 0123456789abcdef.
    check_cbc(
        Cipher::DesCbc,
        "FIPS 81",
        &hex("0123456789abcdef"),
        &hex("1234567890abcdef"),
        b"Now is the time for all ",
        &hex("e5c7cdde872bf27c 43e934008c389c0f 683788499a7c05f6"),
    );
}

#[test]
fn sp800_67_triple_des_cbc() {
    // NIST SP 800-67 Rev. 1 Appendix B.1 gives the 3-key TDEA (ECB) example
    //   K1|K2|K3 = 0123456789ABCDEF 23456789ABCDEF01 456789ABCDEF0123
    //   P = "The qufck brown fox jump", C = A826FD8CE53B855F CCE21C8112256FE6 68D5C05DD9B6B900.
    // CBC with a zero IV maps P'_i = P_i xor C_(i-1) (C_0 = IV) to the same C_i, which turns the
    // example into a CBC known answer.
    let key = hex("0123456789ABCDEF 23456789ABCDEF01 456789ABCDEF0123");
    let p = b"The qufck brown fox jump";
    let c = hex("A826FD8CE53B855F CCE21C8112256FE6 68D5C05DD9B6B900");
    let mut p_cbc = p.to_vec();
    for i in 8..24 {
        p_cbc[i] ^= c[i - 8];
    }
    check_cbc(Cipher::TripleDesCbc, "SP 800-67 B.1", &key, &[0; 8], &p_cbc, &c);
}

// ---------------------------------------------------------------------------------------------
// HMAC known answers
// ---------------------------------------------------------------------------------------------

/// Checks `expected` (full or truncated output) for `key`/`data` in every backend, the same tag
/// over the data split in two parts, `verify()` accepting it and rejecting every flipped bit.
fn check_mac(integrity: Integrity, name: &str, key: &[u8], data: &[u8], expected: &[u8]) {
    for alg in macs(integrity) {
        let backend = alg.backend();
        // HMAC keys of any length (RFC 2104) are accepted by the algorithm objects.
        let key = alg.new_key(key).unwrap();
        assert!(expected.len() <= key.output_len());
        let mut out = vec![0u8; expected.len()];
        key.sign(&[data], &mut out);
        assert_eq!(out, expected, "{name}, backend {backend}");
        let mid = data.len() / 3;
        let mut out2 = vec![0u8; expected.len()];
        key.sign(&[&data[..mid], &[], &data[mid..]], &mut out2);
        assert_eq!(out2, expected, "{name} split, backend {backend}");
        assert!(key.verify(&[data], expected), "{name}, backend {backend}");
        for bit in 0..expected.len() * 8 {
            let mut bad = expected.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!key.verify(&[data], &bad), "{name} bit {bit}, backend {backend}");
        }
        // Truncation to the ESP ICV length is a prefix of the full output.
        let icv = integrity.icv_len().min(expected.len());
        assert!(key.verify(&[data], &expected[..icv]));
        // A different message does not verify.
        assert!(!key.verify(&[data, b"x"], expected));
        // Degenerate expected lengths are refused.
        assert!(!key.verify(&[data], &[]));
        assert!(!key.verify(&[data], &vec![0u8; key.output_len() + 1]));
    }
}

const LONG_KEY_DATA_1: &[u8] = b"Test Using Larger Than Block-Size Key - Hash Key First";
const LONG_KEY_DATA_2: &[u8] = b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data";
const RFC4231_DATA_7: &[u8] = b"This is a test using a larger than block-size key and a larger \
than block-size data. The key needs to be hashed before being used by the HMAC algorithm.";

#[test]
fn rfc2202_hmac_md5() {
    let m = Integrity::HmacMd5_96;
    let key4: Vec<u8> = (1..=25).collect();
    check_mac(m, "2202 md5 1", &[0x0b; 16], b"Hi There", &hex("9294727a3638bb1c13f48ef8158bfc9d"));
    check_mac(m, "2202 md5 2", b"Jefe", b"what do ya want for nothing?", &hex("750c783e6ab0b503eaa86e310a5db738"));
    check_mac(m, "2202 md5 3", &[0xaa; 16], &[0xdd; 50], &hex("56be34521d144c88dbb8c733f0e8b3f6"));
    check_mac(m, "2202 md5 4", &key4, &[0xcd; 50], &hex("697eaf0aca3a3aea3a75164746ffaa79"));
    check_mac(m, "2202 md5 5", &[0x0c; 16], b"Test With Truncation", &hex("56461ef2342edc00f9bab995690efd4c"));
    // Case 5 also gives the 96-bit truncation, which is what AUTH_HMAC_MD5_96 carries.
    check_mac(m, "2202 md5 5/96", &[0x0c; 16], b"Test With Truncation", &hex("56461ef2342edc00f9bab995"));
    check_mac(m, "2202 md5 6", &[0xaa; 80], LONG_KEY_DATA_1, &hex("6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"));
    check_mac(m, "2202 md5 7", &[0xaa; 80], LONG_KEY_DATA_2, &hex("6f630fad67cda0ee1fb1f562db3aa53e"));
}

#[test]
fn rfc2202_hmac_sha1() {
    let s = Integrity::HmacSha1_96;
    let key4: Vec<u8> = (1..=25).collect();
    check_mac(s, "2202 sha1 1", &[0x0b; 20], b"Hi There", &hex("b617318655057264e28bc0b6fb378c8ef146be00"));
    check_mac(
        s,
        "2202 sha1 2",
        b"Jefe",
        b"what do ya want for nothing?",
        &hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    );
    check_mac(s, "2202 sha1 3", &[0xaa; 20], &[0xdd; 50], &hex("125d7342b9ac11cd91a39af48aa17b4f63f175d3"));
    check_mac(s, "2202 sha1 4", &key4, &[0xcd; 50], &hex("4c9007f4026250c6bc8414f9bf50c86c2d7235da"));
    check_mac(s, "2202 sha1 5", &[0x0c; 20], b"Test With Truncation", &hex("4c1a03424b55e07fe7f27be1d58bb9324a9a5a04"));
    check_mac(s, "2202 sha1 5/96", &[0x0c; 20], b"Test With Truncation", &hex("4c1a03424b55e07fe7f27be1"));
    check_mac(s, "2202 sha1 6", &[0xaa; 80], LONG_KEY_DATA_1, &hex("aa4ae5e15272d00e95705637ce8a3b55ed402112"));
    check_mac(s, "2202 sha1 7", &[0xaa; 80], LONG_KEY_DATA_2, &hex("e8e99d0f45237d786d6bbaa7965c7808bbff1a91"));
}

/// RFC 4231 §4 test cases 1-7: key, data, HMAC-SHA-256, HMAC-SHA-384, HMAC-SHA-512.
/// Case 5 is specified truncated to 128 bits.
type Rfc4231Case = (Vec<u8>, Vec<u8>, &'static str, &'static str, &'static str);

fn rfc4231_cases() -> Vec<Rfc4231Case> {
    vec![
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
             faea9ea9076ede7f4af152e8b2fa9cb6",
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
             daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e
             8e2240ca5e69e2c78b3239ecfab21649",
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b
             2a5ab39dc13814b94e3ab6e101a34f27",
            "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39
             bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
        ),
        (
            (1..=25).collect(),
            vec![0xcd; 50],
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e
             6801dd23c4a7d679ccf8a386c674cffb",
            "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db
             a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
        ),
        (
            vec![0x0c; 20],
            b"Test With Truncation".to_vec(),
            "a3b6167473100ee06e0c796c2955552b",
            "3abf34c3503b2a23a46efc619baef897",
            "415fad6271580a531d4179bc891d87a6",
        ),
        (
            vec![0xaa; 131],
            LONG_KEY_DATA_1.to_vec(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6
             0c2ef6ab4030fe8296248df163f44952",
            "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352
             6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
        ),
        (
            vec![0xaa; 131],
            RFC4231_DATA_7.to_vec(),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5
             a678cc31e799176d3860e6110c46523e",
            "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944
             b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
        ),
    ]
}

#[test]
fn rfc4231_hmac_sha2() {
    for (i, (key, data, s256, s384, s512)) in rfc4231_cases().into_iter().enumerate() {
        let case = i + 1;
        check_mac(Integrity::HmacSha256_128, &format!("4231 #{case} sha256"), &key, &data, &hex(s256));
        check_mac(Integrity::HmacSha384_192, &format!("4231 #{case} sha384"), &key, &data, &hex(s384));
        check_mac(Integrity::HmacSha512_256, &format!("4231 #{case} sha512"), &key, &data, &hex(s512));
    }
}

#[test]
fn rfc4868_truncated_icvs() {
    // RFC 4868 §2.7.2: authenticator test vectors, with keys of exactly the ESP key length
    // (checked through the provider, which enforces it) and ICVs truncated to half the output.
    let jefe = |n: usize| b"Jefe".repeat(n / 4);
    let cases: Vec<(Integrity, Vec<u8>, Vec<u8>, &str)> = vec![
        (Integrity::HmacSha256_128, vec![0x0b; 32], b"Hi There".to_vec(), "198a607eb44bfbc69903a0f1cf2bbdc5"),
        (
            Integrity::HmacSha256_128,
            jefe(32),
            b"what do ya want for nothing?".to_vec(),
            "167f928588c5cc2eef8e3093caa0e87c",
        ),
        (Integrity::HmacSha256_128, vec![0xaa; 32], vec![0xdd; 50], "cdcb1220d1ecccea91e53aba3092f962"),
        (Integrity::HmacSha256_128, (1..=32).collect(), vec![0xcd; 50], "372efcf9b40b35c2115b1346903d2ef4"),
        (
            Integrity::HmacSha384_192,
            vec![0x0b; 48],
            b"Hi There".to_vec(),
            "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973",
        ),
        (
            Integrity::HmacSha512_256,
            vec![0x0b; 64],
            b"Hi There".to_vec(),
            "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8",
        ),
        (
            Integrity::HmacSha512_256,
            jefe(64),
            b"what do ya want for nothing?".to_vec(),
            "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454",
        ),
    ];
    let mut providers: Vec<&CryptoProvider> = backend_providers().to_vec();
    providers.push(default_provider());
    for (integrity, key, data, icv) in cases {
        let icv = hex(icv);
        assert_eq!(icv.len(), integrity.icv_len());
        check_mac(integrity, "4868", &key, &data, &icv);
        for p in &providers {
            let k = p.mac_key(integrity, &key).unwrap();
            let mut out = vec![0u8; integrity.icv_len()];
            k.sign(&[&data], &mut out);
            assert_eq!(out, icv, "{integrity} via provider {}", p.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AES-GCM: Wycheproof and draft-mcgrew-gcm-test-01
// ---------------------------------------------------------------------------------------------

fn gcm_cipher(key_bits: u64) -> Cipher {
    match key_bits {
        128 => Cipher::AesGcm128,
        192 => Cipher::AesGcm192,
        256 => Cipher::AesGcm256,
        other => panic!("unexpected key size {other}"),
    }
}

#[test]
fn wycheproof_aes_gcm() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/wycheproof_aes_gcm_96_128.json");
    let text = std::fs::read_to_string(path).expect("vendored Wycheproof vectors");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = |v: &serde_json::Value| hex(v.as_str().unwrap());
    let mut checked = 0usize;
    let mut vectors = 0usize;
    for group in doc["testGroups"].as_array().unwrap() {
        assert_eq!(group["ivSize"], 96);
        assert_eq!(group["tagSize"], 128);
        let cipher = gcm_cipher(group["keySize"].as_u64().unwrap());
        let algs = aeads(cipher);
        for t in group["tests"].as_array().unwrap() {
            vectors += 1;
            let id = t["tcId"].as_u64().unwrap();
            let (key, iv, aad, msg, ct, tag) =
                (s(&t["key"]), s(&t["iv"]), s(&t["aad"]), s(&t["msg"]), s(&t["ct"]), s(&t["tag"]));
            let nonce: [u8; AEAD_NONCE_LEN] = iv.as_slice().try_into().unwrap();
            let valid = match t["result"].as_str().unwrap() {
                "valid" => true,
                "invalid" => false,
                other => panic!("tcId {id}: unexpected result {other}"),
            };
            let mut ct_tag = ct.clone();
            ct_tag.extend_from_slice(&tag);
            for alg in &algs {
                let b = alg.backend();
                let k = alg.new_key(&key).unwrap();
                let mut buf = ct_tag.clone();
                let r = k.open(&nonce, &aad, &mut buf);
                if valid {
                    assert_eq!(r, Ok(()), "tcId {id} open, backend {b}");
                    assert_eq!(&buf[..msg.len()], &msg[..], "tcId {id} plaintext, backend {b}");
                    let mut buf = msg.clone();
                    buf.extend_from_slice(&[0; AEAD_TAG_LEN]);
                    k.seal(&nonce, &aad, &mut buf).unwrap();
                    assert_eq!(buf, ct_tag, "tcId {id} seal, backend {b}");
                    // In-place open must refuse any modified tag bit, ciphertext byte or AAD.
                    for bit in [0, 7, 64, 127] {
                        let mut bad = ct_tag.clone();
                        bad[ct.len() + bit / 8] ^= 1 << (bit % 8);
                        assert_eq!(
                            k.open(&nonce, &aad, &mut bad),
                            Err(CryptoError::AuthFailed),
                            "tcId {id} tag bit {bit}, backend {b}"
                        );
                    }
                    if !ct.is_empty() {
                        let mut bad = ct_tag.clone();
                        bad[ct.len() / 2] ^= 0x80;
                        assert_eq!(k.open(&nonce, &aad, &mut bad), Err(CryptoError::AuthFailed));
                    }
                    let mut bad = ct_tag.clone();
                    assert_eq!(
                        k.open(&nonce, &[aad.as_slice(), b"!"].concat(), &mut bad),
                        Err(CryptoError::AuthFailed)
                    );
                } else {
                    assert_eq!(r, Err(CryptoError::AuthFailed), "tcId {id} must fail, backend {b}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(vectors as u64, doc["numberOfTests"].as_u64().unwrap());
    assert!(vectors >= 190, "only {vectors} vectors");
    assert_eq!(checked, vectors * backend_providers().len());
}

/// One test case of draft-mcgrew-gcm-test-01 §4 (an ESP packet): key, salt, explicit IV, AAD
/// (SPI || sequence number, 8 bytes, or 12 with an extended sequence number), plaintext (the
/// padded inner packet and ESP trailer), ciphertext, tag.
struct McGrewCase {
    case: u32,
    key: &'static str,
    salt: &'static str,
    iv: &'static str,
    aad: &'static str,
    pt: &'static str,
    ct: &'static str,
    tag: &'static str,
}

const MCGREW_CASES: &[McGrewCase] = &[
    McGrewCase {
        case: 1,
        key: "4c80cdefbb5d10da906ac73c3613a634",
        salt: "2e443b68",
        iv: "4956ed7e3b244cfe",
        aad: "00004321 87654321 00000000",
        pt: "45000048699a000080114db7c0a80102c0a801010a9bf15638d3010000010000
             00000000045f736970045f756470037369700963796265726369747902646b00
             0021000101020201",
        ct: "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34
             cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce
             61bc17d768fd9732",
        tag: "459018148f6cbe722fd04796562dfdb4",
    },
    McGrewCase {
        case: 2,
        key: "feffe9928665731c6d6a8f9467308308",
        salt: "cafebabe",
        iv: "facedbaddecaf888",
        aad: "0000a5f8 0000000a",
        pt: "4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d00100
             0001000000000000037369700963796265726369747902646b00000100010001",
        ct: "deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c
             3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1",
        tag: "83b70d3aa8bc6ee4c309e9d85a41ad4a",
    },
    McGrewCase {
        case: 3,
        key: "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
        salt: "11223344",
        iv: "0102030405060708",
        aad: "4a2cbfe3 00000002",
        pt: "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000
             7002400020bf0000020405b40101040201020201",
        ct: "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763
             748a637985771d347f0545659f14e99def842d8e",
        tag: "b335f4eecfdbf831824b4c4915956c96",
    },
    McGrewCase {
        case: 7,
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c",
        salt: "cafebabe",
        iv: "facedbaddecaf888",
        aad: "0000a5f8 0000000a",
        pt: "45000028a4ad4000400678800a01038f0a010612802306b8cb712602dd6bb03e
             501016d075680001",
        ct: "a5b1f8066029aea40e598b8122de02420938b3ab33f828e687b8858b5bfbdbd0
             315b27452144cc77",
        tag: "95457b9652037f5318027b5b4cd7a636",
    },
    McGrewCase {
        case: 12,
        key: "7d773d00c144c525ac619d18c84a3f47",
        salt: "d9664267",
        iv: "43457e9182443bc6",
        aad: "335467ae ffffffff",
        pt: "01020201",
        ct: "437f866b",
        tag: "cb3f699fe9b0822bac961c4504bef270",
    },
    McGrewCase {
        case: 14,
        key: "6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961",
        salt: "7475726e",
        iv: "333021696765746d",
        aad: "796b6963 ffffffff ffffffff",
        pt: "45000030da3a00008001df3bc0a80005c0a800010800c6cd0200070061626364
             65666768696a6b6c6d6e6f707172737401020201",
        ct: "f97ab2aa356d8edce17644ac8c78e25dd24dedbb29ebf1b64a274b39b49c3a86
             4cd3d78ca4ae68a32b42458fb57dbe821dcc63b9",
        tag: "d0937ba2945f669368661a329fb4c053",
    },
];

#[test]
fn mcgrew_gcm_esp_cases() {
    for c in MCGREW_CASES {
        let key = hex(c.key);
        let cipher = match key.len() {
            16 => Cipher::AesGcm128,
            24 => Cipher::AesGcm192,
            _ => Cipher::AesGcm256,
        };
        let nonce: [u8; AEAD_NONCE_LEN] = [hex(c.salt), hex(c.iv)].concat().try_into().unwrap();
        let (aad, pt) = (hex(c.aad), hex(c.pt));
        let ct_tag = [hex(c.ct), hex(c.tag)].concat();
        let mut providers: Vec<&CryptoProvider> = backend_providers().to_vec();
        providers.push(default_provider());
        for p in providers {
            let k = p.aead_key(cipher, &key).unwrap();
            let mut buf = [pt.as_slice(), &[0; AEAD_TAG_LEN]].concat();
            k.seal(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(buf, ct_tag, "case {} seal, provider {}", c.case, p.name);
            k.open(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(&buf[..pt.len()], &pt[..], "case {} open, provider {}", c.case, p.name);
        }
    }
}

#[test]
fn gcm_bursts_match_single_calls() {
    // The default burst methods (and any backend override) agree with seal/open per packet.
    let mut rng = TestRng(7);
    for p in backend_providers() {
        let k = p.aead_key(Cipher::AesGcm256, &rng.bytes(32)).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..5).map(|i| [rng.bytes(i * 97), vec![0; AEAD_TAG_LEN]].concat()).collect();
        let plain = bufs.clone();
        let params: Vec<([u8; 12], [u8; 12], u8)> = (0..5)
            .map(|i| {
                let n: [u8; 12] = rng.bytes(12).try_into().unwrap();
                let a: [u8; 12] = rng.bytes(12).try_into().unwrap();
                (n, a, if (i as u32).is_multiple_of(2) { 8 } else { 12 })
            })
            .collect();
        let mut expected = plain.clone();
        for (buf, (n, a, l)) in expected.iter_mut().zip(&params) {
            k.seal(n, &a[..*l as usize], buf).unwrap();
        }
        let mut jobs: Vec<AeadJob<'_>> = bufs
            .iter_mut()
            .zip(&params)
            .map(|(buf, (n, a, l))| AeadJob {
                nonce: *n,
                aad: *a,
                aad_len: *l,
                in_out: buf.as_mut_slice(),
                result: Err(CryptoError::BadLength),
            })
            .collect();
        k.seal_burst(&mut jobs);
        assert!(jobs.iter().all(|j| j.result.is_ok()));
        k.open_burst(&mut jobs);
        assert!(jobs.iter().all(|j| j.result.is_ok()));
        jobs[1].in_out[0] ^= 1;
        k.open_burst(&mut jobs[1..2]);
        assert_eq!(jobs[1].result, Err(CryptoError::AuthFailed));
        drop(jobs);
        for (i, buf) in bufs.iter().enumerate() {
            if i != 1 {
                let n = buf.len() - AEAD_TAG_LEN;
                assert_eq!(&buf[..n], &plain[i][..n], "provider {}", p.name);
            }
        }
        // And the sealed bytes were the same as with single calls.
        let mut again = plain.clone();
        let mut jobs: Vec<AeadJob<'_>> = again
            .iter_mut()
            .zip(&params)
            .map(|(buf, (n, a, l))| AeadJob {
                nonce: *n,
                aad: *a,
                aad_len: *l,
                in_out: buf.as_mut_slice(),
                result: Err(CryptoError::BadLength),
            })
            .collect();
        k.seal_burst(&mut jobs);
        drop(jobs);
        assert_eq!(again, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn all_providers() -> Vec<&'static CryptoProvider> {
    let mut v = backend_providers().to_vec();
    v.push(default_provider());
    v
}

#[test]
fn key_length_errors() {
    for p in all_providers() {
        for c in Cipher::ALL.into_iter().filter(|c| *c != Cipher::Null) {
            for len in [0, c.key_len() - 1, c.key_len() + 1, c.keymat_len() + 1] {
                let expected = Some(CryptoError::KeyLength { expected: c.key_len(), got: len });
                let key = vec![0x5a; len];
                if c.is_aead() {
                    assert_eq!(p.aead_key(c, &key).err(), expected, "{c} {len} {}", p.name);
                } else {
                    assert_eq!(p.cipher_key(c, &key).err(), expected, "{c} {len} {}", p.name);
                }
            }
        }
        for i in Integrity::ALL.into_iter().filter(|i| *i != Integrity::None) {
            if p.integrity_backend(i).is_none() {
                continue;
            }
            for len in [0, i.key_len() - 1, i.key_len() + 1] {
                assert_eq!(
                    p.mac_key(i, &vec![1; len]).err(),
                    Some(CryptoError::KeyLength { expected: i.key_len(), got: len }),
                    "{i} {len} {}",
                    p.name
                );
            }
        }
    }
    // The algorithm objects check the length themselves too (for callers bypassing a provider).
    for c in [Cipher::AesGcm128, Cipher::AesGcm192, Cipher::AesGcm256] {
        for alg in aeads(c) {
            assert_eq!(
                alg.new_key(&[0; 20]).err(),
                Some(CryptoError::KeyLength { expected: c.key_len(), got: 20 }),
                "{c} {}",
                alg.backend()
            );
        }
    }
    for c in [Cipher::DesCbc, Cipher::TripleDesCbc, Cipher::AesCbc128, Cipher::AesCbc192, Cipher::AesCbc256] {
        for alg in ciphers(c) {
            assert_eq!(
                alg.new_key(&[0x5a; 20]).err(),
                Some(CryptoError::KeyLength { expected: c.key_len(), got: 20 }),
                "{c} {}",
                alg.backend()
            );
        }
    }
}

#[test]
fn unsupported_algorithms() {
    for p in all_providers() {
        // NULL needs no key object, and no provider offers one.
        assert_eq!(p.cipher_key(Cipher::Null, &[]).err(), Some(CryptoError::Unsupported));
        assert_eq!(p.aead_key(Cipher::Null, &[]).err(), Some(CryptoError::Unsupported));
        assert_eq!(p.mac_key(Integrity::None, &[]).err(), Some(CryptoError::Unsupported));
        // An AEAD is not a CBC cipher and vice versa.
        assert_eq!(p.cipher_key(Cipher::AesGcm128, &[0; 16]).err(), Some(CryptoError::Unsupported));
        assert_eq!(p.aead_key(Cipher::AesCbc128, &[0; 16]).err(), Some(CryptoError::Unsupported));
        assert_eq!(p.cipher_backend(Cipher::Null), Some("none"));
        assert_eq!(p.integrity_backend(Integrity::None), Some("none"));
    }
    #[cfg(feature = "aws-lc")]
    {
        let p = &aws_lc::PROVIDER;
        assert_eq!(p.mac_key(Integrity::HmacMd5_96, &[0; 16]).err(), Some(CryptoError::Unsupported));
        assert_eq!(p.integrity_backend(Integrity::HmacMd5_96), None);
    }
    // An empty provider supports nothing.
    let empty = CryptoProvider { name: "empty", aeads: &[], ciphers: &[], macs: &[], ..rustcrypto::PROVIDER };
    assert_eq!(empty.aead_key(Cipher::AesGcm128, &[0; 16]).err(), Some(CryptoError::Unsupported));
    assert_eq!(empty.cipher_key(Cipher::AesCbc128, &[0; 16]).err(), Some(CryptoError::Unsupported));
    assert_eq!(empty.mac_key(Integrity::HmacSha256_128, &[0; 32]).err(), Some(CryptoError::Unsupported));
}

#[test]
fn weak_des_keys_rejected_by_every_backend() {
    let weak = hex("0101010101010101");
    let semi_weak = hex("01fe01fe01fe01fe");
    let k1 = hex("0123456789abcdef");
    let k2 = hex("23456789abcdef01");
    let k3 = hex("456789abcdef0123");
    for p in all_providers() {
        for key in [&weak, &semi_weak] {
            assert_eq!(p.cipher_key(Cipher::DesCbc, key).err(), Some(CryptoError::WeakKey), "{}", p.name);
        }
        for key in [
            [k1.as_slice(), &k1, &k3].concat(), // K1 == K2: single DES
            [k1.as_slice(), &k2, &k2].concat(), // K2 == K3: single DES
            [k1.as_slice(), &k2, &k1].concat(), // K1 == K3: 2-key 3DES
            [k1.as_slice(), &weak, &k3].concat(),
        ] {
            assert_eq!(p.cipher_key(Cipher::TripleDesCbc, &key).err(), Some(CryptoError::WeakKey), "{}", p.name);
        }
        assert!(p.cipher_key(Cipher::DesCbc, &k1).is_ok());
        assert!(p.cipher_key(Cipher::TripleDesCbc, &[k1.as_slice(), &k2, &k3].concat()).is_ok());
        // Parity bits are not required (ESP keys come straight from the KDF).
        assert!(p.cipher_key(Cipher::DesCbc, &hex("0022446688aaccee")).is_ok());
    }
}

#[test]
fn bad_lengths() {
    let mut rng = TestRng(3);
    for p in all_providers() {
        for c in [Cipher::DesCbc, Cipher::TripleDesCbc, Cipher::AesCbc128, Cipher::AesCbc256] {
            let k = p.cipher_key(c, &rng.bytes(c.key_len())).unwrap();
            let bl = c.block_len();
            let iv = rng.bytes(bl);
            let orig = rng.bytes(3 * bl + 1);
            let mut data = orig.clone();
            assert_eq!(k.cbc_encrypt(&iv, &mut data), Err(CryptoError::BadLength), "{c} {}", p.name);
            assert_eq!(k.cbc_decrypt(&iv, &mut data), Err(CryptoError::BadLength), "{c} {}", p.name);
            assert_eq!(data, orig, "{c} {}: buffer touched on error", p.name);
            let mut data = orig[..2 * bl].to_vec();
            assert_eq!(k.cbc_encrypt(&iv[..bl - 1], &mut data), Err(CryptoError::BadLength));
            assert_eq!(k.cbc_decrypt(&[iv.as_slice(), &[0]].concat(), &mut data), Err(CryptoError::BadLength));
            assert_eq!(data, orig[..2 * bl]);
            // No data is fine.
            assert_eq!(k.cbc_encrypt(&iv, &mut []), Ok(()));
            assert_eq!(k.cbc_decrypt(&iv, &mut []), Ok(()));
        }
        let k = p.aead_key(Cipher::AesGcm128, &rng.bytes(16)).unwrap();
        let nonce = [9; 12];
        for len in [0, 1, AEAD_TAG_LEN - 1] {
            assert_eq!(k.seal(&nonce, b"", &mut vec![0; len]), Err(CryptoError::BadLength), "{}", p.name);
            assert_eq!(k.open(&nonce, b"", &mut vec![0; len]), Err(CryptoError::BadLength), "{}", p.name);
        }
        // Only a tag: empty plaintext, still authenticated.
        let mut tag_only = [0u8; AEAD_TAG_LEN];
        k.seal(&nonce, b"aad", &mut tag_only).unwrap();
        k.open(&nonce, b"aad", &mut tag_only.clone()).unwrap();
        tag_only[3] ^= 4;
        assert_eq!(k.open(&nonce, b"aad", &mut tag_only), Err(CryptoError::AuthFailed));
    }
}

// ---------------------------------------------------------------------------------------------
// Providers
// ---------------------------------------------------------------------------------------------

#[test]
fn providers_by_name() {
    assert!(std::ptr::eq(provider_by_name("default").unwrap(), default_provider()));
    assert!(std::ptr::eq(provider_by_name("rustcrypto").unwrap(), &rustcrypto::PROVIDER));
    #[cfg(feature = "aws-lc")]
    assert!(std::ptr::eq(provider_by_name("aws-lc-rs").unwrap(), &aws_lc::PROVIDER));
    #[cfg(not(feature = "aws-lc"))]
    assert!(provider_by_name("aws-lc-rs").is_none());
    assert!(provider_by_name("ring").is_none());
    assert!(provider_by_name("").is_none());
    assert_eq!(default_provider().name, "default");
}

#[test]
fn default_and_rustcrypto_providers_are_complete() {
    for p in [default_provider(), &rustcrypto::PROVIDER] {
        for c in Cipher::ALL {
            assert!(p.cipher_backend(c).is_some(), "{} lacks {c}", p.name);
        }
        for i in Integrity::ALL {
            assert!(p.integrity_backend(i).is_some(), "{} lacks {i}", p.name);
        }
    }
    // Every algorithm object reports the backend it belongs to.
    for p in backend_providers() {
        assert!(p.aeads.iter().all(|a| a.backend() == p.name));
        assert!(p.ciphers.iter().all(|a| a.backend() == p.name));
        assert!(p.macs.iter().all(|a| a.backend() == p.name));
    }
    let gcm = default_provider().cipher_backend(Cipher::AesGcm128).unwrap();
    if cfg!(feature = "rustcrypto-gcm") || !cfg!(feature = "aws-lc") {
        assert_eq!(gcm, "rustcrypto");
    } else {
        assert_eq!(gcm, "aws-lc-rs");
    }
    assert_eq!(default_provider().integrity_backend(Integrity::HmacMd5_96), Some("rustcrypto"));
    // The measured choices documented on `default_provider`.
    if cfg!(feature = "aws-lc") {
        let d = default_provider();
        for c in [Cipher::DesCbc, Cipher::TripleDesCbc, Cipher::AesCbc128, Cipher::AesCbc192, Cipher::AesCbc256] {
            assert_eq!(d.cipher_backend(c), Some("aws-lc-rs"), "{c}");
        }
        for (i, b) in [
            (Integrity::HmacSha1_96, "rustcrypto"),
            (Integrity::HmacSha256_128, "rustcrypto"),
            (Integrity::HmacSha384_192, "aws-lc-rs"),
            (Integrity::HmacSha512_256, "aws-lc-rs"),
        ] {
            assert_eq!(d.integrity_backend(i), Some(b), "{i}");
        }
    }
}

#[test]
fn random_sources() {
    for p in all_providers() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        p.random.fill(&mut a).unwrap();
        p.random.fill(&mut b).unwrap();
        assert_ne!(a, b, "{}", p.name);
        assert_ne!(a, [0; 32], "{}", p.name);
        p.random.fill(&mut []).unwrap();
    }
}

/// Seal/open (or encrypt+MAC / verify+decrypt) round trips of ESP-shaped packets for every
/// Cipher × Integrity combination ESP allows, with the default provider.
#[test]
fn default_provider_round_trips() {
    let p = default_provider();
    let mut rng = TestRng(11);
    let mut combos = 0;
    for c in Cipher::ALL {
        for i in Integrity::ALL {
            // AEADs carry their own ICV (RFC 4303 §3.2); NULL/NULL protects nothing.
            if (c.is_aead() && i != Integrity::None) || (c == Cipher::Null && i == Integrity::None) {
                continue;
            }
            combos += 1;
            let mut keymat = vec![0u8; c.keymat_len()];
            p.random.fill(&mut keymat).unwrap();
            let mut auth_key = vec![0u8; i.key_len()];
            p.random.fill(&mut auth_key).unwrap();
            for payload_len in [0usize, 1, 63, 64, 1420] {
                let header = rng.bytes(8); // SPI + sequence number
                let iv = rng.bytes(c.iv_len());
                let padded = payload_len.div_ceil(c.block_len()).max(1) * c.block_len();
                let plain = rng.bytes(padded);
                let mut body = [plain.as_slice(), &vec![0; c.icv_len()]].concat();
                if c.is_aead() {
                    let k = p.aead_key(c, &keymat[..c.key_len()]).unwrap();
                    let nonce: [u8; 12] = [&keymat[c.key_len()..], iv.as_slice()].concat().try_into().unwrap();
                    k.seal(&nonce, &header, &mut body).unwrap();
                    assert_ne!(&body[..plain.len()], plain.as_slice(), "{c}");
                    let mut tampered = body.clone();
                    let at = rng.next() as usize % tampered.len();
                    tampered[at] ^= 0x10;
                    assert_eq!(k.open(&nonce, &header, &mut tampered), Err(CryptoError::AuthFailed));
                    k.open(&nonce, &header, &mut body).unwrap();
                } else {
                    if c != Cipher::Null {
                        let k = p.cipher_key(c, &keymat).unwrap();
                        k.cbc_encrypt(&iv, &mut body).unwrap();
                        assert_ne!(body, plain, "{c}");
                    }
                    if i != Integrity::None {
                        let m = p.mac_key(i, &auth_key).unwrap();
                        let esn_hi = [0, 0, 0, 1];
                        let mut icv = vec![0u8; i.icv_len()];
                        m.sign(&[&header, &iv, &body, &esn_hi], &mut icv);
                        assert!(m.verify(&[&header, &iv, &body, &esn_hi], &icv), "{c} {i}");
                        let mut bad = body.clone();
                        bad[0] ^= 1;
                        assert!(!m.verify(&[&header, &iv, &bad, &esn_hi], &icv), "{c} {i}");
                        assert!(!m.verify(&[&header, &iv, &body, &[0, 0, 0, 2]], &icv), "{c} {i}");
                    }
                    if c != Cipher::Null {
                        let k = p.cipher_key(c, &keymat).unwrap();
                        k.cbc_decrypt(&iv, &mut body).unwrap();
                    }
                }
                assert_eq!(&body[..plain.len()], plain.as_slice(), "{c} {i} {payload_len}");
            }
        }
    }
    // 3 GCM + 5 CBC × 6 integrity + NULL × 5 integrity.
    assert_eq!(combos, 3 + 5 * 6 + 5);
}

/// Differential test: every backend produces the same bytes for the same random inputs.
#[test]
fn backends_agree() {
    let mut rng = TestRng(0x5eed);
    for round in 0..20 {
        let len = (rng.next() % 2000) as usize;
        for c in [Cipher::AesGcm128, Cipher::AesGcm192, Cipher::AesGcm256] {
            let key = rng.bytes(c.key_len());
            let nonce: [u8; 12] = rng.bytes(12).try_into().unwrap();
            let aad = rng.bytes(round % 13);
            let msg = [rng.bytes(len), vec![0; AEAD_TAG_LEN]].concat();
            let outs: Vec<Vec<u8>> = aeads(c)
                .iter()
                .map(|a| {
                    let mut b = msg.clone();
                    a.new_key(&key).unwrap().seal(&nonce, &aad, &mut b).unwrap();
                    b
                })
                .collect();
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "{c} len {len}");
        }
        for c in [Cipher::DesCbc, Cipher::TripleDesCbc, Cipher::AesCbc128, Cipher::AesCbc192, Cipher::AesCbc256] {
            let key = rng.bytes(c.key_len());
            let iv = rng.bytes(c.block_len());
            let data = rng.bytes(len / c.block_len() * c.block_len());
            let outs: Vec<Vec<u8>> = ciphers(c)
                .iter()
                .map(|a| {
                    let mut b = data.clone();
                    a.new_key(&key).unwrap().cbc_encrypt(&iv, &mut b).unwrap();
                    b
                })
                .collect();
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "{c} len {len}");
        }
        for i in
            [Integrity::HmacSha1_96, Integrity::HmacSha256_128, Integrity::HmacSha384_192, Integrity::HmacSha512_256]
        {
            let key = rng.bytes(i.key_len());
            let data = rng.bytes(len);
            let outs: Vec<Vec<u8>> = macs(i)
                .iter()
                .map(|a| {
                    let k = a.new_key(&key).unwrap();
                    let mut out = vec![0; k.output_len()];
                    k.sign(&[&data[..len / 2], &data[len / 2..]], &mut out);
                    out
                })
                .collect();
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "{i} len {len}");
        }
    }
}
