//! Feeds raw datagrams to a responder `Endpoint` (and through it to its IKE SAs), with virtual
//! time. Must never panic, and the endpoint's state must stay within its configured bounds.
//!
//! Input: a sequence of records `[selector, len_hi, len_lo, bytes...]`. The selector picks the
//! source (one of 8 addresses/ports), whether the record goes through the NAT-T framing
//! (`nat::classify` with the non-ESP marker), how far virtual time advances first, and whether
//! the endpoint's timers fire. After each record the endpoint's own output is fed back to it
//! with the roles' I flag untouched (a reflected message must be ignored, not crash anything).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipsec_ike::config::Config;
use ipsec_ike::endpoint::{Endpoint, EndpointConfig};
use ipsec_ike::message::TrafficSelector;
use ipsec_ike::nat::{classify, Received};
use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const MAX_SAS: usize = 16;
const MAX_HALF_OPEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut cfg = Config::new(b"fuzz-psk");
    cfg.local_ts = vec![TrafficSelector::any_v4()];
    cfg.remote_ts = vec![TrafficSelector::any_v4()];
    let mut ec = EndpointConfig::new(Some(cfg));
    ec.cookie_threshold = 4;
    ec.max_half_open = MAX_HALF_OPEN;
    ec.max_sas = MAX_SAS;
    let mut ep = Endpoint::new(ec);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut now = Instant::now();
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), 500);
    let local_natt = SocketAddr::new(local.ip(), 4500);
    let mut rest = data;
    while rest.len() >= 3 {
        let sel = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (msg, tail) = rest[3..].split_at(len);
        rest = tail;
        now += Duration::from_millis(u64::from(sel >> 5) * 700);
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1 + (sel & 3))), 500 + u16::from(sel & 4));
        if sel & 8 != 0 {
            if let Received::Ike(m) = classify(true, msg) {
                ep.handle(now, local_natt, remote, m, &mut rng);
            }
        } else {
            ep.handle(now, local, remote, msg, &mut rng);
        }
        if sel & 16 != 0 {
            ep.handle_timeout(now, &mut rng);
        }
        while let Some(t) = ep.poll_transmit(now) {
            let _ = t.to_datagram();
            // Reflect our own output back once: it must be dropped.
            ep.handle(now, t.local, t.remote, &t.payload, &mut rng);
        }
        while ep.poll_event().is_some() {}
        assert!(ep.len() <= MAX_SAS, "too many SAs");
        assert!(ep.half_open() <= MAX_HALF_OPEN, "too many half-open SAs");
        if let Some(t) = ep.poll_timeout() {
            assert!(t >= now - Duration::from_secs(3600));
        }
    }
    // Drain every timer: the state machines must terminate or settle.
    for _ in 0..64 {
        let Some(t) = ep.poll_timeout() else { break };
        now = now.max(t);
        ep.handle_timeout(now, &mut rng);
        while ep.poll_transmit(now).is_some() {}
        while ep.poll_event().is_some() {}
    }
});
