//! Codec tests.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::test_util::hex;

/// An IKE_SA_INIT request written by hand, octet by octet, following RFC 7296 §3.
fn sa_init_request_bytes() -> Vec<u8> {
    let mut v = Vec::new();
    // IKE header (§3.1)
    v.extend(hex("0011223344556677")); // IKE SA Initiator's SPI
    v.extend(hex("0000000000000000")); // IKE SA Responder's SPI
    v.extend(hex("21")); // Next Payload: SA (33)
    v.extend(hex("20")); // MjVer 2, MnVer 0
    v.extend(hex("22")); // Exchange Type: IKE_SA_INIT (34)
    v.extend(hex("08")); // Flags: I
    v.extend(hex("00000000")); // Message ID
    v.extend(hex("0000010a")); // Length: 266
                               // SA payload (§3.3): 4 + proposal 44 = 48
    v.extend(hex("22 00 0030")); // Next: KE, C=0, Length 48
    v.extend(hex("00 00 002c 01 01 00 04")); // last proposal, len 44, #1, IKE, SPI size 0, 4 transforms
    v.extend(hex("03 00 000c 01 00 000c 800e0100")); // ENCR_AES_CBC, Key Length 256 (TV)
    v.extend(hex("03 00 0008 02 00 0005")); // PRF_HMAC_SHA2_256
    v.extend(hex("03 00 0008 03 00 000c")); // AUTH_HMAC_SHA2_256_128
    v.extend(hex("00 00 0008 04 00 0013")); // DH group 19 (last transform)
                                            // KE payload (§3.4): 4 + 4 + 64 = 72
    v.extend(hex("28 00 0048 0013 0000"));
    v.extend([0x11; 64]);
    // Nonce (§3.9): 4 + 32
    v.extend(hex("29 00 0024"));
    v.extend(0u8..32);
    // Notify NAT_DETECTION_SOURCE_IP (§3.10): 4 + 4 + 20
    v.extend(hex("29 00 001c 00 00 4004"));
    v.extend([0xaa; 20]);
    // Notify NAT_DETECTION_DESTINATION_IP
    v.extend(hex("29 00 001c 00 00 4005"));
    v.extend([0xbb; 20]);
    // Notify SIGNATURE_HASH_ALGORITHMS (RFC 7427): SHA2-256, SHA2-384, SHA2-512
    v.extend(hex("2b 00 000e 00 00 402f 0002 0003 0004"));
    // Vendor ID (§3.12), last payload
    v.extend(hex("00 00 000c"));
    v.extend(b"ipsec-gw");
    assert_eq!(v.len(), 266);
    v
}

#[test]
fn parses_hand_built_sa_init_field_by_field() {
    let bytes = sa_init_request_bytes();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.header.spi_i, 0x0011_2233_4455_6677);
    assert_eq!(m.header.spi_r, 0);
    assert_eq!(m.header.minor_version, 0);
    assert_eq!(m.header.exchange_type, ExchangeType::IKE_SA_INIT);
    assert_eq!(m.header.flags, Flags { initiator: true, version: false, response: false });
    assert_eq!(m.header.message_id, 0);
    assert_eq!(m.payloads.len(), 7);

    let Payload::Sa(sa) = &m.payloads[0] else { panic!("SA expected") };
    assert_eq!(sa.proposals.len(), 1);
    let p = &sa.proposals[0];
    assert_eq!((p.number, p.protocol_id, p.spi.len()), (1, ProtocolId::IKE, 0));
    let t: Vec<(TransformType, u16, Option<u16>)> =
        p.transforms.iter().map(|t| (t.transform_type, t.transform_id, t.key_length())).collect();
    assert_eq!(
        t,
        vec![
            (TransformType::ENCR, 12, Some(256)),
            (TransformType::PRF, 5, None),
            (TransformType::INTEG, 12, None),
            (TransformType::DH, 19, None),
        ]
    );
    let Payload::Ke(ke) = &m.payloads[1] else { panic!("KE expected") };
    assert_eq!(ke.dh_group, 19);
    assert_eq!(ke.data, vec![0x11; 64]);
    assert_eq!(m.payloads[2], Payload::Nonce((0u8..32).collect()));
    let nats: Vec<_> = m.notifies(NotifyType::NAT_DETECTION_SOURCE_IP).collect();
    assert_eq!(nats.len(), 1);
    assert_eq!(nats[0].data, vec![0xaa; 20]);
    assert_eq!(nats[0].protocol_id, ProtocolId(0));
    assert!(nats[0].spi.is_empty());
    let natd: Vec<_> = m.notifies(NotifyType::NAT_DETECTION_DESTINATION_IP).collect();
    assert_eq!(natd[0].data, vec![0xbb; 20]);
    let sha: Vec<_> = m.notifies(NotifyType::SIGNATURE_HASH_ALGORITHMS).collect();
    assert_eq!(sha[0].data, hex("000200030004"));
    assert_eq!(m.payloads[6], Payload::VendorId(b"ipsec-gw".to_vec()));
    assert!(m.find(PayloadType::AUTH).is_none());

    // Emitting the parsed representation reproduces the exact octets.
    assert_eq!(m.emit().unwrap(), bytes);

    let peek = Header::peek(&bytes).unwrap();
    assert_eq!(peek.next_payload, PayloadType::SA);
    assert_eq!(peek.length, 266);
    assert_eq!(peek.header, m.header);
}

fn ts4() -> TrafficSelector {
    TrafficSelector {
        ip_protocol: 17,
        start_port: 500,
        end_port: 4500,
        range: AddressRange::V4 { start: Ipv4Addr::new(10, 0, 0, 0), end: Ipv4Addr::new(10, 0, 255, 255) },
    }
}

fn ts6() -> TrafficSelector {
    TrafficSelector {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        range: AddressRange::V6 { start: "2001:db8::".parse().unwrap(), end: "2001:db8::ffff".parse().unwrap() },
    }
}

/// One payload of every type this crate knows, plus an unknown non-critical one.
fn every_payload() -> Vec<Payload> {
    let esp = Proposal {
        number: 1,
        protocol_id: ProtocolId::ESP,
        spi: vec![0xde, 0xad, 0xbe, 0xef],
        transforms: vec![
            Transform::with_key_length(TransformType::ENCR, 20, 128),
            Transform::new(TransformType::ESN, 0),
            Transform::new(TransformType::ESN, 1),
            Transform {
                transform_type: TransformType(0xf0),
                transform_id: 7,
                attributes: vec![TransformAttribute { attr_type: 0x1234, value: AttributeValue::Tlv(vec![1, 2, 3]) }],
            },
        ],
    };
    let esp2 = Proposal { number: 2, ..esp.clone() };
    vec![
        Payload::Sa(SaPayload { proposals: vec![esp, esp2] }),
        Payload::Ke(KePayload { dh_group: 31, data: vec![9; 32] }),
        Payload::IdI(Identification::Ipv4(Ipv4Addr::new(192, 0, 2, 1))),
        Payload::IdR(Identification::Ipv6(Ipv6Addr::LOCALHOST)),
        Payload::IdI(Identification::Fqdn(b"gw.example.org".to_vec())),
        Payload::IdR(Identification::Rfc822(b"bob@example.org".to_vec())),
        Payload::IdI(Identification::KeyId(vec![0, 1, 2, 0xff])),
        Payload::IdR(Identification::DerAsn1Dn(vec![0x30, 0])),
        Payload::IdI(Identification::DerAsn1Gn(vec![0x30, 1, 0])),
        Payload::IdR(Identification::Other { id_type: 200, data: vec![] }),
        Payload::Cert(CertPayload { encoding: 4, data: vec![0x30, 0x82] }),
        Payload::CertReq(CertPayload { encoding: 4, data: vec![0x55; 20] }),
        Payload::Auth(AuthPayload { method: AuthMethod::SHARED_KEY_MIC, data: vec![0xa5; 32] }),
        Payload::Nonce(vec![1; 16]),
        Payload::Nonce(vec![2; 256]),
        Payload::Notify(NotifyPayload {
            protocol_id: ProtocolId::ESP,
            spi: vec![1, 2, 3, 4],
            notify_type: NotifyType::REKEY_SA,
            data: vec![],
        }),
        Payload::Notify(NotifyPayload::new(NotifyType::INVALID_KE_PAYLOAD, vec![0, 19])),
        Payload::Notify(NotifyPayload::new(NotifyType(50000), vec![7])),
        Payload::Delete(DeletePayload {
            protocol_id: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![vec![1, 1, 1, 1], vec![2, 2, 2, 2]],
        }),
        Payload::Delete(DeletePayload { protocol_id: ProtocolId::IKE, spi_size: 0, spis: vec![] }),
        Payload::VendorId(vec![]),
        Payload::TsI(vec![ts4(), ts6()]),
        Payload::TsR(vec![ts6()]),
        Payload::Config(ConfigPayload {
            cfg_type: CfgType::CFG_REQUEST,
            attributes: vec![
                ConfigAttribute { attr_type: 1, value: vec![] },
                ConfigAttribute { attr_type: 3, value: vec![8, 8, 8, 8] },
            ],
        }),
        Payload::Eap(vec![1, 2, 0, 4]),
        Payload::Unknown { payload_type: PayloadType(150), body: vec![0xee; 3] },
        Payload::Encrypted(EncryptedPayload { first_inner: PayloadType::IDI, data: vec![0x42; 48] }),
    ]
}

fn header() -> Header {
    Header {
        spi_i: 1,
        spi_r: 2,
        minor_version: 0,
        exchange_type: ExchangeType::IKE_AUTH,
        flags: Flags { initiator: false, version: false, response: true },
        message_id: 7,
    }
}

#[test]
fn round_trip_every_payload_type() {
    let all = every_payload();
    // All together...
    let m = Message { header: header(), payloads: all.clone() };
    let bytes = m.emit().unwrap();
    assert_eq!(Message::parse(&bytes).unwrap(), m);
    // ...and each alone, also as the inside of an SK payload where allowed.
    for p in all {
        let m = Message { header: header(), payloads: vec![p.clone()] };
        let bytes = m.emit().unwrap();
        assert_eq!(Message::parse(&bytes).unwrap(), m, "{p:?}");
        if !matches!(p, Payload::Encrypted(_) | Payload::EncryptedFragment(_)) {
            let mut inner = Vec::new();
            let first = emit_chain(std::slice::from_ref(&p), &mut inner, false).unwrap();
            assert_eq!(first, p.payload_type());
            assert_eq!(parse_chain(first, &inner, false).unwrap(), vec![p]);
        }
    }
    // SKF as the last payload.
    let m = Message {
        header: header(),
        payloads: vec![Payload::EncryptedFragment(EncryptedFragment {
            first_inner: PayloadType::NONE,
            fragment_number: 2,
            total_fragments: 3,
            data: vec![1; 20],
        })],
    };
    assert_eq!(Message::parse(&m.emit().unwrap()).unwrap(), m);
    // Empty message (e.g. an INFORMATIONAL response without payloads).
    let m = Message { header: header(), payloads: vec![] };
    let bytes = m.emit().unwrap();
    assert_eq!(bytes.len(), HEADER_LEN);
    assert_eq!(Message::parse(&bytes).unwrap(), m);
}

#[test]
fn flags_and_version_fields() {
    let mut h = header();
    h.flags = Flags { initiator: true, version: true, response: true };
    h.minor_version = 3;
    let bytes = Message { header: h, payloads: vec![] }.emit().unwrap();
    assert_eq!(bytes[17], 0x23);
    assert_eq!(bytes[19], 0x38);
    // Unused flag bits are ignored on receipt.
    let mut b = bytes.clone();
    b[19] |= 0x07;
    assert_eq!(Message::parse(&b).unwrap().header, h);
    // Major version 1 or 3: INVALID_MAJOR_VERSION.
    for v in [0x10, 0x30] {
        let mut b = bytes.clone();
        b[17] = v;
        let e = Message::parse(&b).unwrap_err();
        assert_eq!(e, ParseError::InvalidMajorVersion(v >> 4));
        assert_eq!(e.notify().0, NotifyType::INVALID_MAJOR_VERSION);
    }
}

fn check_every_truncation(bytes: &[u8]) {
    for cut in 0..bytes.len() {
        // As received: the header length no longer matches.
        assert!(Message::parse(&bytes[..cut]).is_err(), "cut {cut}");
        // With the header length patched to match, so the payload parsers see the cut.
        if cut >= HEADER_LEN {
            let mut b = bytes[..cut].to_vec();
            b[24..28].copy_from_slice(&u32::try_from(cut).unwrap().to_be_bytes());
            assert!(Message::parse(&b).is_err(), "patched cut {cut}");
        }
    }
    assert!(Message::parse(bytes).is_ok());
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    check_every_truncation(&sa_init_request_bytes());
    let m = Message { header: header(), payloads: every_payload() };
    check_every_truncation(&m.emit().unwrap());
}

#[test]
fn critical_bit_rule() {
    // An unknown payload (type 200) between a Nonce and the end.
    let build = |flags: u8, t: u8| {
        let mut b = sa_init_request_bytes();
        let vid_at = b.len() - 12;
        b[vid_at] = t; // the Vendor ID now announces a payload of type t after it
        b.extend([0, flags, 0, 6, 0xab, 0xcd]);
        let len = u32::try_from(b.len()).unwrap();
        b[24..28].copy_from_slice(&len.to_be_bytes());
        b
    };
    // Not critical: skipped (kept as Unknown) and the rest parses.
    let m = Message::parse(&build(0x00, 200)).unwrap();
    assert_eq!(m.payloads.last(), Some(&Payload::Unknown { payload_type: PayloadType(200), body: vec![0xab, 0xcd] }));
    // Reserved bits next to the critical bit are ignored.
    assert!(Message::parse(&build(0x7f, 200)).is_ok());
    // Critical: the whole message is rejected with UNSUPPORTED_CRITICAL_PAYLOAD(200).
    let e = Message::parse(&build(0x80, 200)).unwrap_err();
    assert_eq!(e, ParseError::UnsupportedCriticalPayload(PayloadType(200)));
    assert_eq!(e.notify(), (NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, vec![200]));
    // A known payload type with the critical bit set is parsed normally (bit ignored).
    let m = Message::parse(&build(0x80, 43)).unwrap();
    assert_eq!(m.payloads.last(), Some(&Payload::VendorId(vec![0xab, 0xcd])));
    // Same rule inside an SK payload's chain.
    assert_eq!(
        parse_chain(PayloadType(99), &[0, 0x80, 0, 4], false).unwrap_err(),
        ParseError::UnsupportedCriticalPayload(PayloadType(99))
    );
}

#[test]
fn strictness() {
    let good = sa_init_request_bytes();
    // Trailing garbage after the message.
    let mut b = good.clone();
    b.push(0);
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::TrailingData);
    // Header length shorter than the header.
    let mut b = good.clone();
    b[24..28].copy_from_slice(&20u32.to_be_bytes());
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadLength);
    // Header length longer than 64 KiB.
    let mut b = good.clone();
    b[24..28].copy_from_slice(&(70_000u32).to_be_bytes());
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::TooLarge);
    let big = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(Message::parse(&big).unwrap_err(), ParseError::TooLarge);
    // Last payload claims a next payload: truncated chain.
    let mut b = good.clone();
    let vid_at = b.len() - 12;
    b[vid_at] = 43;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Truncated);
    // Payload length below 4.
    let mut b = good.clone();
    b[28 + 3] = 3;
    b[28 + 2] = 0;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadLength);
    // Proposal: Num Transforms says 3 but 4 are present.
    let mut b = good.clone();
    b[32 + 7] = 3;
    assert!(Message::parse(&b).is_err());
    // Transform "last" marker wrong (first transform says last).
    let mut b = good.clone();
    b[40] = 0;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Malformed("transform Last Substruc"));
    // Proposal "last" marker with an invalid value.
    let mut b = good.clone();
    b[32] = 1;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Malformed("proposal Last Substruc"));
    // Nonce shorter than 16 octets.
    let m = Message { header: header(), payloads: vec![Payload::Nonce(vec![1; 15])] };
    assert!(m.emit().is_err());
    let mut b = Message { header: header(), payloads: vec![Payload::Nonce(vec![1; 16])] }.emit().unwrap();
    b[28 + 3] -= 1;
    b.pop();
    b[27] -= 1;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Malformed("nonce length outside 16..=256"));
    // The SK payload must be last, on emit and on parse.
    let sk = Payload::Encrypted(EncryptedPayload { first_inner: PayloadType::NONE, data: vec![0; 32] });
    let m = Message { header: header(), payloads: vec![sk.clone(), Payload::VendorId(vec![])] };
    assert!(m.emit().is_err());
    let mut b = Message { header: header(), payloads: vec![sk.clone()] }.emit().unwrap();
    b.extend([0, 0, 0, 4]); // a stray payload header after SK
    let len = u32::try_from(b.len()).unwrap();
    b[24..28].copy_from_slice(&len.to_be_bytes());
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::TrailingData);
    // No SK inside SK.
    let mut inner = Vec::new();
    assert!(emit_chain(std::slice::from_ref(&sk), &mut inner, false).is_err());
    assert!(parse_chain(PayloadType::SK, &[0, 0, 0, 4], false).is_err());
}

#[test]
fn substructure_strictness() {
    let ts_msg = Message { header: header(), payloads: vec![Payload::TsI(vec![ts4()])] }.emit().unwrap();
    // Selector Length 15 instead of 16.
    let mut b = ts_msg.clone();
    b[28 + 4 + 4 + 3] = 15;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadLength);
    // Unknown TS type.
    let mut b = ts_msg.clone();
    b[28 + 4 + 4] = 9;
    assert!(Message::parse(&b).is_err());
    // Zero selectors.
    let mut b = ts_msg.clone();
    b[28 + 4] = 0;
    assert!(Message::parse(&b).is_err());
    // Two selectors announced, one present.
    let mut b = ts_msg;
    b[28 + 4] = 2;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Truncated);

    // Delete: SPI count inconsistent with the payload length.
    let del = Message {
        header: header(),
        payloads: vec![Payload::Delete(DeletePayload {
            protocol_id: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![vec![0; 4]],
        })],
    }
    .emit()
    .unwrap();
    let mut b = del.clone();
    b[28 + 4 + 3] = 2;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadLength);
    // Delete emit with an SPI of the wrong size.
    assert!(Message {
        header: header(),
        payloads: vec![Payload::Delete(DeletePayload {
            protocol_id: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![vec![0; 3]],
        })],
    }
    .emit()
    .is_err());
    // ID_IPV4_ADDR with 5 octets.
    let mut b =
        Message { header: header(), payloads: vec![Payload::IdI(Identification::KeyId(vec![0; 5]))] }.emit().unwrap();
    b[28 + 4] = id_type::IPV4_ADDR;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Malformed("ID_IPV4_ADDR length"));
    // A Notify whose SPI Size exceeds the payload.
    let mut b =
        Message { header: header(), payloads: vec![Payload::Notify(NotifyPayload::new(NotifyType::COOKIE, vec![]))] }
            .emit()
            .unwrap();
    b[28 + 5] = 1;
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::Truncated);
    // Unknown payload emitted under a known type is refused.
    assert!(Message {
        header: header(),
        payloads: vec![Payload::Unknown { payload_type: PayloadType::NONCE, body: vec![] }],
    }
    .emit()
    .is_err());
}

#[test]
fn payload_count_limit() {
    let ok = Message { header: header(), payloads: vec![Payload::VendorId(vec![1]); MAX_PAYLOADS] };
    let bytes = ok.emit().unwrap();
    assert_eq!(Message::parse(&bytes).unwrap(), ok);
    let too_many = Message { header: header(), payloads: vec![Payload::VendorId(vec![1]); MAX_PAYLOADS + 1] };
    assert_eq!(too_many.emit().unwrap_err(), EmitError::TooMany);
    // Build the 65-payload message by hand: append one more Vendor ID.
    let mut b = bytes;
    let last = b.len() - 5;
    b[last] = PayloadType::VENDOR_ID.0;
    b.extend([0, 0, 0, 5, 1]);
    let len = u32::try_from(b.len()).unwrap();
    b[24..28].copy_from_slice(&len.to_be_bytes());
    assert_eq!(Message::parse(&b).unwrap_err(), ParseError::TooMany);
}

#[test]
fn message_size_limit_on_emit() {
    let m = Message {
        header: header(),
        payloads: vec![Payload::VendorId(vec![0; 60_000]), Payload::VendorId(vec![0; 10_000])],
    };
    assert_eq!(m.emit().unwrap_err(), EmitError::TooLong);
    let m = Message { header: header(), payloads: vec![Payload::VendorId(vec![0; 70_000])] };
    assert_eq!(m.emit().unwrap_err(), EmitError::TooLong);
}

#[test]
fn registry_names() {
    assert_eq!(format!("{:?}", NotifyType::COOKIE), "COOKIE");
    assert_eq!(format!("{:?}", NotifyType(40000)), "NotifyType(40000)");
    assert!(NotifyType::TS_UNACCEPTABLE.is_error());
    assert!(!NotifyType::ADDITIONAL_TS_POSSIBLE.is_error());
    assert_eq!(ParseError::Truncated.notify(), (NotifyType::INVALID_SYNTAX, vec![]));
}
