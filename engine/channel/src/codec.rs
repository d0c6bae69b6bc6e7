//! Framing, sans IO: [`encode`] appends one frame to a buffer; a [`Decoder`] is fed bytes as they
//! arrive and yields whole messages.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroize;

/// The largest frame either side accepts (a counters report of many SAs is the big one).
pub const MAX_FRAME: usize = 16 << 20;

/// A framing or encoding error: the session is unusable after one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A frame announced more than [`MAX_FRAME`] bytes.
    FrameTooLarge(usize),
    /// The frame's body is not a valid message.
    Decode(String),
    /// The message could not be encoded.
    Encode(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::FrameTooLarge(n) => write!(f, "frame of {n} bytes exceeds the limit of {MAX_FRAME}"),
            Error::Decode(e) => write!(f, "undecodable message: {e}"),
            Error::Encode(e) => write!(f, "unencodable message: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Appends `msg` as one frame (length, then postcard body) to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut body = postcard::to_extend(msg, std::mem::take(out)).map_err(|e| Error::Encode(e.to_string()))?;
    let len = body.len() - start - 4;
    if len > MAX_FRAME {
        body[start..].zeroize();
        body.truncate(start);
        *out = body;
        return Err(Error::FrameTooLarge(len));
    }
    body[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    *out = body;
    Ok(())
}

/// Reassembles frames from a byte stream. Bytes of consumed frames are wiped.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decoder {{ buffered: {} }}", self.buf.len() - self.start)
    }
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed as a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, if one is buffered. An error is final for the stream.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_FRAME {
            return Err(Error::FrameTooLarge(len));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let body = &avail[4..4 + len];
        let msg = match postcard::from_bytes::<T>(body) {
            Ok(m) => m,
            Err(e) => return Err(Error::Decode(e.to_string())),
        };
        let end = self.start + 4 + len;
        self.buf[self.start..end].zeroize();
        self.start = end;
        // Compact once the consumed prefix dominates, so the buffer does not grow without bound.
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn sa() -> ControlMsg {
        ControlMsg::Request {
            id: 7,
            req: Request::AddSa(SaSpec {
                tunnel: "vco-1".into(),
                direction: Direction::Out,
                spi: 0xc1a0_0001,
                cipher: "aes128gcm16".into(),
                enc_key: Secret::new(vec![0x42; 20]),
                integrity: "none".into(),
                auth_key: Secret::default(),
                esn: true,
                replay_window: 1024,
                lifetime: Lifetime { hard_seconds: 3600, soft_seconds: 3240, ..Lifetime::default() },
            }),
        }
    }

    fn all_messages() -> Vec<ControlMsg> {
        vec![
            ControlMsg::Hello { version: PROTOCOL_VERSION, client: "test".into() },
            sa(),
            ControlMsg::Request {
                id: 8,
                req: Request::UpsertTunnel(TunnelSpec {
                    name: "vco-1".into(),
                    local_addr: "198.18.0.1".parse().unwrap(),
                    remote_addr: "198.18.0.2".parse().unwrap(),
                    local_subnets: vec!["192.0.2.0/24".parse().unwrap()],
                    remote_subnets: vec!["198.51.100.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
                    routing: Routing::Flows,
                    udp_encap: Some(UdpEncap { local_port: 4500, remote_port: 40000 }),
                    mtu: Some(1400),
                }),
            },
            ControlMsg::Request { id: 9, req: Request::BeginSync { generation: 3 } },
            ControlMsg::Request { id: 10, req: Request::Counters { tunnel: None } },
            ControlMsg::SendIke(IkeDatagram {
                local: "198.18.0.1:4500".parse().unwrap(),
                remote: "198.18.0.2:4500".parse().unwrap(),
                payload: vec![0, 0, 0, 0, 1, 2, 3],
            }),
        ]
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let msgs = all_messages();
        let mut wire = Vec::new();
        for m in &msgs {
            encode(m, &mut wire).unwrap();
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.decode::<ControlMsg>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn engine_messages_round_trip() {
        let msgs = vec![
            EngineMsg::Hello { version: 1, engine: "e".into(), boot_id: 99, control_sas: 2 },
            EngineMsg::Reply { id: 1, result: Err("sa.cipher: unknown cipher \"rot13\"".into()) },
            EngineMsg::Reply {
                id: 2,
                result: Ok(Response::SyncDone { generation: 3, added: 1, replaced: 0, kept: 4, removed: 2 }),
            },
            EngineMsg::Reply {
                id: 3,
                result: Ok(Response::Counters(CountersReport {
                    sas: vec![SaCounters { tunnel: "t".into(), spi: 5, packets: 1, bytes: 2, ..Default::default() }],
                    workers: vec![WorkerCounters { worker: 0, rx: 1, tx: 2, drops: vec![("replay".into(), 3)] }],
                })),
            },
            EngineMsg::Event(Event::Acquire { tunnel: "t".into() }),
            EngineMsg::Event(Event::Expired {
                tunnel: "t".into(),
                direction: Direction::In,
                spi: 1,
                limit: Limit::Bytes,
            }),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            encode(m, &mut wire).unwrap();
        }
        let mut d = Decoder::new();
        d.push(&wire);
        for m in &msgs {
            assert_eq!(d.decode::<EngineMsg>().unwrap().as_ref(), Some(m));
        }
        assert_eq!(d.decode::<EngineMsg>().unwrap(), None);
    }

    #[test]
    fn consumed_key_bytes_are_wiped() {
        let mut wire = Vec::new();
        encode(&sa(), &mut wire).unwrap();
        assert!(wire.windows(20).any(|w| w == [0x42; 20]));
        let mut d = Decoder::new();
        d.push(&wire);
        d.decode::<ControlMsg>().unwrap().unwrap();
        assert!(!d.buf.windows(20).any(|w| w == [0x42; 20]));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = format!("{:?}", sa());
        assert!(s.contains("<20 bytes redacted>"), "{s}");
        assert!(!s.contains("66, 66"), "{s}");
    }

    #[test]
    fn oversize_and_garbage_are_errors() {
        let mut d = Decoder::new();
        d.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert_eq!(d.decode::<ControlMsg>(), Err(Error::FrameTooLarge(MAX_FRAME + 1)));
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(d.decode::<ControlMsg>(), Err(Error::Decode(_))));
    }
}
