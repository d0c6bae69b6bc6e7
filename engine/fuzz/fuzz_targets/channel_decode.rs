//! The engine ↔ control channel (`ipsec-channel`): whatever bytes the other end of the control
//! socket writes, in whatever chunks, the `Decoder` never panics, never buffers a frame it has
//! refused, and every message it yields (engine side: `ControlMsg`; control side: `EngineMsg`)
//! encodes and decodes back to itself.
//!
//! The first input byte picks the chunk size the bytes arrive in.
#![no_main]

use ipsec_channel::{encode, ControlMsg, Decoder, EngineMsg};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: &T) {
    let mut out = Vec::new();
    encode(m, &mut out).expect("a decoded message encodes");
    let mut d = Decoder::new();
    d.push(&out);
    let back: T = d.decode().expect("re-decodes").expect("one whole frame");
    assert_eq!(&back, m);
    assert_eq!(d.buffered(), 0);
}

fn feed<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8], chunk: usize) {
    let mut d = Decoder::new();
    for c in data.chunks(chunk) {
        d.push(c);
        loop {
            match d.decode::<T>() {
                Ok(Some(m)) => roundtrip(&m),
                Ok(None) => break,
                // Final for the stream, as a session would treat it.
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let chunk = usize::from(first % 32) + 1;
    feed::<ControlMsg>(rest, chunk);
    feed::<EngineMsg>(rest, chunk);
});
