//! Parses arbitrary bytes as an IKE message. Parsing must never panic; a message that parses must
//! emit successfully, and re-parsing the emitted bytes must give the same representation (and
//! emitting that again the same bytes). The payload chain parser is also run directly, as it is
//! on the decrypted inside of SK payloads.
#![no_main]

use ipsec_ike::message::{emit_chain, parse_chain, Message, PayloadType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let bytes = m.emit().expect("a parsed message must emit");
        let again = Message::parse(&bytes).expect("emitted bytes must parse");
        assert_eq!(again, m);
        assert_eq!(again.emit().expect("re-emit"), bytes);
    }
    if let Some((&first, rest)) = data.split_first() {
        if let Ok(payloads) = parse_chain(PayloadType(first), rest, false) {
            let mut out = Vec::new();
            let t = emit_chain(&payloads, &mut out, false).expect("a parsed chain must emit");
            assert_eq!(parse_chain(t, &out, false).expect("re-parse chain"), payloads);
        }
    }
});
