//! Two IKEv1 SAs (`ipsec_ike::v1::sa::Sa`, initiator and responder, main or aggressive mode)
//! negotiate over a network the fuzzer controls, with virtual time. Must never panic; when both
//! reach phase 1 their keys must agree.
//!
//! Input: the first octet picks the mode and NAT-T/PFS; then records `[selector, len, bytes...]`.
//! The selector says which direction moves, whether its next queued message is delivered,
//! dropped, duplicated or delivered with the record's bytes XORed into it (which reaches the
//! decryption and HASH checks of protected messages), whether the record's bytes are injected as
//! a message of their own, and how far time advances before timers fire.
#![no_main]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipsec_ike::crypto::dh::DhGroup;
use ipsec_ike::ike_sa::Transmit;
use ipsec_ike::transforms::EncrAlg;
use ipsec_ike::v1::keys::HashAlg;
use ipsec_ike::v1::message::Subnet;
use ipsec_ike::v1::sa::{Config, Mode, Phase1Proposal, Sa};
use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn config(first: u8, local: &str, remote: &str) -> Config {
    let mut c = Config::new(b"fuzz-psk");
    c.mode = if first & 1 == 0 { Mode::Main } else { Mode::Aggressive };
    c.nat_traversal = first & 2 == 0;
    c.pfs = (first & 4 != 0).then_some(DhGroup::Modp768);
    // Cheap groups keep the fuzzer fast.
    c.ike_proposals = vec![Phase1Proposal { encr: EncrAlg::AES128_CBC, hash: HashAlg::Sha1, group: DhGroup::Modp768 }];
    c.local_subnets = vec![Subnet::new(local.parse().unwrap(), 24)];
    c.remote_subnets = vec![Subnet::new(remote.parse().unwrap(), 24)];
    c
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else { return };
    let i_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 500);
    let r_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 500);
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(first));
    let mut now = Instant::now();
    let mut i = Sa::initiate(config(first, "192.0.2.0", "198.51.100.0"), i_addr, r_addr, now, &mut rng);
    let mut r: Option<Sa> = None;
    let mut queues: [VecDeque<Transmit>; 2] = [VecDeque::new(), VecDeque::new()];
    while rest.len() >= 2 {
        let sel = rest[0];
        let len = usize::from(rest[1]).min(rest.len() - 2);
        let (bytes, tail) = rest[2..].split_at(len);
        rest = tail;
        while let Some(t) = i.poll_transmit(now) {
            queues[1].push_back(t);
        }
        if let Some(r) = r.as_mut() {
            while let Some(t) = r.poll_transmit(now) {
                queues[0].push_back(t);
            }
        }
        let to_r = sel & 1 == 1;
        let mut msgs = Vec::new();
        if let Some(t) = queues[usize::from(to_r)].pop_front() {
            match (sel >> 1) & 3 {
                0 => msgs.push((t.local, t.remote, t.payload)),
                1 => {}
                2 => {
                    msgs.push((t.local, t.remote, t.payload.clone()));
                    msgs.push((t.local, t.remote, t.payload));
                }
                _ => {
                    let mut p = t.payload;
                    let n = p.len().max(1);
                    for (k, b) in bytes.iter().enumerate() {
                        if let Some(x) = p.get_mut(k.wrapping_mul(7) % n) {
                            *x ^= b;
                        }
                    }
                    msgs.push((t.local, t.remote, p));
                }
            }
        }
        if sel & 8 != 0 {
            let (src, dst) = if to_r { (i_addr, r_addr) } else { (r_addr, i_addr) };
            msgs.push((src, dst, bytes.to_vec()));
        }
        for (src, dst, m) in msgs {
            if to_r {
                let r = r.get_or_insert_with(|| Sa::respond(config(first, "198.51.100.0", "192.0.2.0"), dst, src, now));
                r.handle(now, dst, src, &m, &mut rng);
            } else {
                i.handle(now, dst, src, &m, &mut rng);
            }
        }
        now += Duration::from_millis(u64::from(sel >> 4) * 400);
        i.handle_timeout(now, &mut rng);
        if let Some(r) = r.as_mut() {
            r.handle_timeout(now, &mut rng);
            while r.poll_event().is_some() {}
        }
        while i.poll_event().is_some() {}
    }
    if let Some(r) = r.as_ref() {
        if i.is_established() && r.is_established() {
            assert_eq!(i.keys().unwrap().skeyid_d, r.keys().unwrap().skeyid_d);
        }
    }
});
