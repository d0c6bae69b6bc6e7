//! Workloads shared by the criterion benchmarks (`benches/benches/*.rs`) and `perf-lab esp`, so
//! both measure exactly the same thing.
//!
//! An [`EspWorkload`] holds a burst of frames and an SA pair. [`EspWorkload::encap`] encrypts the
//! burst in place and [`EspWorkload::decap`] decrypts it back to the very same inner packets at the
//! very same offsets, so the two can alternate forever with no copying and no allocation: what is
//! timed is only the ESP core.

use arrayvec::ArrayVec;
use ipsec_esp::{
    Cipher, CryptoProvider, EspWorker, EventQueue, InboundSa, Integrity, OutboundSa, PacketBuf, SaConfig, UdpEncap,
    Verdict, HEADROOM, MAX_BURST, TAILROOM,
};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

/// IMIX as 7:4:1 of 64, 594 and 1518-byte packets (IP packet sizes here).
pub const IMIX: [usize; 12] = [64, 594, 64, 594, 64, 1518, 64, 594, 64, 594, 64, 64];

/// A size label and the IP packet sizes of one burst cycle.
pub fn size_pattern(label: &str) -> Option<Vec<usize>> {
    match label {
        "imix" => Some(IMIX.to_vec()),
        n => n.parse().ok().map(|n| vec![n]),
    }
}

/// Mean packet size of a pattern.
pub fn mean_size(pattern: &[usize]) -> f64 {
    pattern.iter().sum::<usize>() as f64 / pattern.len() as f64
}

/// The transforms the benchmarks and the perf lab report, strongSwan-style names.
pub const TRANSFORMS: [(Cipher, Integrity); 7] = [
    (Cipher::AesGcm128, Integrity::None),
    (Cipher::AesGcm256, Integrity::None),
    (Cipher::AesCbc128, Integrity::HmacSha1_96),
    (Cipher::AesCbc128, Integrity::HmacSha256_128),
    (Cipher::AesCbc256, Integrity::HmacSha512_256),
    (Cipher::TripleDesCbc, Integrity::HmacSha1_96),
    (Cipher::Null, Integrity::HmacSha1_96),
];

/// `aes128gcm16`, `aes128-sha1`, ...
pub fn transform_name(c: Cipher, i: Integrity) -> String {
    if i == Integrity::None {
        c.name().to_string()
    } else {
        format!("{}-{}", c.name(), i.name())
    }
}

fn key(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|k| (k as u8).wrapping_mul(37).wrapping_add(seed)).collect()
}

/// An SA config from 198.18.0.1 to 198.18.0.2 with deterministic keys.
pub fn sa_config(c: Cipher, i: Integrity, spi: u32) -> SaConfig {
    let mut cfg = SaConfig::new(
        spi,
        c,
        &key(c.keymat_len(), spi as u8),
        i,
        &key(i.key_len(), 0x55),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
    );
    cfg.replay_window = 4096;
    cfg
}

/// The inbound twin of an outbound config.
pub fn inbound_config(out: &SaConfig) -> SaConfig {
    let mut c = out.clone();
    c.local = out.remote;
    c.remote = out.local;
    c.local_ts = out.remote_ts.clone();
    c.remote_ts = out.local_ts.clone();
    c.encap = out.encap.map(|e| UdpEncap { local_port: e.remote_port, remote_port: e.local_port });
    c
}

/// An IPv4/UDP packet of exactly `size` bytes (at least 28) from 192.0.2.10 to `dst`.
pub fn ipv4_udp_packet(size: usize, dst: Ipv4Addr) -> Vec<u8> {
    let size = size.max(28);
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[192, 0, 2, 10]);
    p[16..20].copy_from_slice(&dst.octets());
    let ck = !ipsec_wire::checksum::data(&p[..20]);
    p[10..12].copy_from_slice(&ck.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
    for (k, b) in p[28..].iter_mut().enumerate() {
        *b = k as u8;
    }
    p
}

/// One burst of frames and an SA pair that alternately encrypts and decrypts it in place.
pub struct EspWorkload {
    pub out: OutboundSa,
    pub inb: InboundSa,
    pub worker: EspWorker,
    frames: Vec<Vec<u8>>,
    starts: Vec<usize>,
    lens: Vec<usize>,
    inner_lens: Vec<usize>,
    verdicts: [Verdict; MAX_BURST],
}

impl EspWorkload {
    /// `burst` packets whose sizes cycle through `pattern`.
    pub fn new(provider: &'static CryptoProvider, c: Cipher, i: Integrity, pattern: &[usize], burst: usize) -> Self {
        assert!(burst <= MAX_BURST);
        let cfg = sa_config(c, i, 0x1000);
        let now = Instant::now();
        let out = OutboundSa::new(&cfg, provider, now).expect("outbound SA");
        let inb = InboundSa::new(&inbound_config(&cfg), provider, now).expect("inbound SA");
        let worker = EspWorker::new(provider, Arc::new(EventQueue::default())).expect("worker");
        let mut frames = Vec::new();
        let mut inner_lens = Vec::new();
        for k in 0..burst {
            let size = pattern[k % pattern.len()];
            let pkt = ipv4_udp_packet(size, Ipv4Addr::new(198, 51, 100, 20));
            let mut f = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
            f[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            inner_lens.push(pkt.len());
            frames.push(f);
        }
        EspWorkload {
            out,
            inb,
            worker,
            frames,
            starts: vec![HEADROOM; burst],
            lens: inner_lens.clone(),
            inner_lens,
            verdicts: [Ok(()); MAX_BURST],
        }
    }

    /// Inner bytes of one burst.
    pub fn burst_bytes(&self) -> usize {
        self.inner_lens.iter().sum()
    }

    pub fn burst_len(&self) -> usize {
        self.frames.len()
    }

    /// Encrypts the burst (which must hold inner packets). Returns how many succeeded.
    pub fn encap(&mut self, now: Instant) -> usize {
        let sa = &self.out;
        let mut pkts: ArrayVec<PacketBuf<'_>, MAX_BURST> = ArrayVec::new();
        for ((f, &s), &l) in self.frames.iter_mut().zip(&self.starts).zip(&self.lens) {
            pkts.push(PacketBuf { buf: f, start: s, len: l });
        }
        let n = pkts.len();
        self.worker.encap_burst(now, &mut pkts, &mut self.verdicts[..n], |_, _| Ok(sa));
        for (k, p) in pkts.iter().enumerate() {
            self.starts[k] = p.start;
            self.lens[k] = p.len;
        }
        self.verdicts[..n].iter().filter(|v| v.is_ok()).count()
    }

    /// Decrypts the burst (which must hold the packets `encap` made). Returns how many succeeded.
    pub fn decap(&mut self, now: Instant) -> usize {
        let sa = &self.inb;
        let mut pkts: ArrayVec<PacketBuf<'_>, MAX_BURST> = ArrayVec::new();
        for ((f, &s), &l) in self.frames.iter_mut().zip(&self.starts).zip(&self.lens) {
            pkts.push(PacketBuf { buf: f, start: s, len: l });
        }
        let n = pkts.len();
        self.worker.decap_burst(now, &mut pkts, &mut self.verdicts[..n], |_, _| Some(sa));
        for (k, p) in pkts.iter().enumerate() {
            self.starts[k] = p.start;
            self.lens[k] = p.len;
        }
        self.verdicts[..n].iter().filter(|v| v.is_ok()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_alternates_without_losing_packets() {
        for (c, i) in TRANSFORMS {
            let mut w = EspWorkload::new(ipsec_esp::default_provider(), c, i, &IMIX, MAX_BURST);
            let now = Instant::now();
            for _ in 0..3 {
                assert_eq!(w.encap(now), MAX_BURST, "{}", transform_name(c, i));
                assert_eq!(w.decap(now), MAX_BURST, "{}", transform_name(c, i));
            }
            assert_eq!(w.inb.counters().packets(), 3 * MAX_BURST as u64);
        }
    }
}
