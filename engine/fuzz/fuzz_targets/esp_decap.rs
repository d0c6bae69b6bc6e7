//! ESP decapsulation fed arbitrary outer packets: must never panic, and whatever it accepts must
//! be a well-formed inner packet inside the SA's selectors.
//!
//! The first input byte picks one of several inbound SAs (AEAD, CBC+HMAC, NULL without integrity
//! so that the fuzzer can reach the trailer and inner-packet checks, UDP-encapsulated, ESN) and
//! the outer family; the rest is the packet, placed at a random offset inside a frame.
#![no_main]

use ipsec_esp::crypto::rustcrypto::PROVIDER;
use ipsec_esp::{Cipher, EspWorker, EventQueue, InboundSa, Integrity, PacketBuf, SaConfig, UdpEncap, Verdict};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

struct World {
    sas: Vec<InboundSa>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let now = Instant::now();
        let mut sas = Vec::new();
        let transforms = [
            (Cipher::AesGcm128, Integrity::None),
            (Cipher::AesCbc128, Integrity::HmacSha1_96),
            (Cipher::Null, Integrity::None),
            (Cipher::Null, Integrity::HmacSha256_128),
        ];
        let mut spi = 0x100;
        for (c, i) in transforms {
            for (local, remote) in [("198.18.0.2", "198.18.0.1"), ("2001:db8::2", "2001:db8::1")] {
                for encap in [None, Some(UdpEncap::STANDARD)] {
                    for esn in [false, true] {
                        let mut cfg = SaConfig::new(
                            spi,
                            c,
                            &(0..c.keymat_len() as u8).map(|k| k.wrapping_mul(37) ^ 7).collect::<Vec<u8>>(),
                            i,
                            &vec![9u8; i.key_len()],
                            local.parse::<IpAddr>().unwrap(),
                            remote.parse::<IpAddr>().unwrap(),
                        );
                        cfg.encap = encap;
                        cfg.esn = esn;
                        cfg.replay_window = 64;
                        cfg.local_ts = vec!["203.0.113.0/24".parse().unwrap(), "2001:db8:b::/48".parse().unwrap()];
                        sas.push(InboundSa::new(&cfg, &PROVIDER, now).unwrap());
                        spi += 1;
                    }
                }
            }
        }
        World { sas }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let w = world();
    let offset = data[0] as usize % 96;
    let pkt = &data[1..];
    let mut frame = vec![0u8; offset + pkt.len() + 64];
    frame[offset..offset + pkt.len()].copy_from_slice(pkt);
    let mut worker = EspWorker::new(&PROVIDER, Arc::new(EventQueue::new(16))).unwrap();
    let mut pkts = [PacketBuf::new(&mut frame, offset, pkt.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    // Any SA whose SPI matches (low byte of the SPI picks it), regardless of destination, so the
    // fuzzer reaches the SA-specific checks easily.
    worker.decap_burst(Instant::now(), &mut pkts, &mut v, |spi, _| {
        w.sas.iter().find(|s| s.spi() == spi)
    });
    if v[0].is_ok() {
        let inner = pkts[0].data();
        let ip = ipsec_wire::IpPacket::new_checked(inner).expect("accepted inner packet parses");
        assert_eq!(ip.packet_bytes().len(), inner.len());
        let dst = ip.dst_addr();
        assert!(
            ["203.0.113.0/24", "2001:db8:b::/48"].iter().any(|n| n.parse::<ipnet::IpNet>().unwrap().contains(&dst)),
            "accepted a packet outside the selectors"
        );
    }
});
