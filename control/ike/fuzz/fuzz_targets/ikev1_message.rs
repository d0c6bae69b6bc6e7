//! Parses arbitrary bytes as an ISAKMP (IKEv1) message. Parsing must never panic; a message that
//! parses must emit, re-parse to the same representation, and re-emit the same bytes. The
//! payload chain parser is also run directly (with trailing padding allowed), as it is on the
//! decrypted body of encrypted messages.
#![no_main]

use ipsec_ike::v1::message::{emit_chain, parse_chain, Message, PayloadType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let bytes = m.emit().expect("a parsed message must emit");
        let again = Message::parse(&bytes).expect("emitted bytes must parse");
        assert_eq!(again, m);
        assert_eq!(again.emit().expect("re-emit"), bytes);
    }
    if let Some((&first, rest)) = data.split_first() {
        if let Ok(payloads) = parse_chain(PayloadType(first), rest, true) {
            let mut out = Vec::new();
            let t = emit_chain(&payloads, &mut out).expect("a parsed chain must emit");
            assert_eq!(parse_chain(t, &out, false).expect("re-parse chain"), payloads);
        }
    }
});
