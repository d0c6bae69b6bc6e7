//! Ours against ours: two [`Sa`]s over a simulated network with virtual time, loss and
//! duplication; optionally a NAT in front of the initiator (address and port rewritten).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::keys::HashAlg;
use super::message::{IdPayload, Subnet};
use super::sa::{Config, EspProposal, Mode, Phase1Proposal, Sa};
use crate::crypto::dh::DhGroup;
use crate::ike_sa::{ChildSa, Event, Failure, Transmit};
use crate::test_util::rng;
use crate::transforms::{EncrAlg, IntegAlg};

const I: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 500);
const R: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 500);
const NAT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 9));

fn net(s: &str) -> Subnet {
    let (a, p) = s.split_once('/').unwrap();
    Subnet::new(a.parse().unwrap(), p.parse().unwrap())
}

fn configs(mode: Mode) -> (Config, Config) {
    let mut i = Config::new(b"v1 test psk");
    i.mode = mode;
    i.local_subnets = vec![net("192.0.2.0/24")];
    i.remote_subnets = vec![net("198.51.100.0/24")];
    // Off so that runs end when the exchanges do; the DPD tests turn it on.
    i.dpd_interval = None;
    let mut r = i.clone();
    r.local_subnets = vec![net("198.51.100.0/24")];
    r.remote_subnets = vec![net("192.0.2.0/24")];
    (i, r)
}

struct Pair {
    now: Instant,
    i: Sa,
    r: Option<Sa>,
    r_config: Config,
    rng: rand_chacha::ChaCha20Rng,
    /// (to responder, index among messages in that direction) → drop / duplicate.
    drop: Box<dyn FnMut(bool, usize) -> bool>,
    dup: Box<dyn FnMut(bool, usize) -> bool>,
    sent: [usize; 2],
    i_events: Vec<Event>,
    r_events: Vec<Event>,
    /// NAT in front of the initiator: its source address as the responder sees it, per port.
    nat: bool,
}

impl Pair {
    fn new(mode: Mode, seed: u64) -> Pair {
        let (ic, rc) = configs(mode);
        Pair::with(ic, rc, seed)
    }

    fn with(ic: Config, rc: Config, seed: u64) -> Pair {
        Pair::with_addrs(ic, rc, seed, I, R)
    }

    fn with_addrs(ic: Config, rc: Config, seed: u64, i_addr: SocketAddr, r_addr: SocketAddr) -> Pair {
        let now = Instant::now();
        let mut rng = rng(seed);
        let i = Sa::initiate(ic, i_addr, r_addr, now, &mut rng);
        Pair {
            now,
            i,
            r: None,
            r_config: rc,
            rng,
            drop: Box::new(|_, _| false),
            dup: Box::new(|_, _| false),
            sent: [0, 0],
            i_events: Vec::new(),
            r_events: Vec::new(),
            nat: false,
        }
    }

    fn nat_out(&self, a: SocketAddr) -> SocketAddr {
        if self.nat {
            SocketAddr::new(NAT_IP, a.port() + 30000)
        } else {
            a
        }
    }

    fn nat_in(&self, a: SocketAddr) -> SocketAddr {
        if self.nat {
            SocketAddr::new(I.ip(), a.port() - 30000)
        } else {
            a
        }
    }

    fn deliver(&mut self, to_r: bool, t: Transmit) {
        let k = self.sent[usize::from(to_r)];
        self.sent[usize::from(to_r)] += 1;
        if (self.drop)(to_r, k) {
            return;
        }
        let copies = if (self.dup)(to_r, k) { 2 } else { 1 };
        for _ in 0..copies {
            if to_r {
                let src = self.nat_out(t.local);
                let r = self.r.get_or_insert_with(|| Sa::respond(self.r_config.clone(), t.remote, src, self.now));
                r.handle(self.now, t.remote, src, &t.payload, &mut self.rng);
            } else {
                let dst = self.nat_in(t.remote);
                self.i.handle(self.now, dst, t.local, &t.payload, &mut self.rng);
            }
        }
    }

    /// Runs until nothing is in flight and no timer is due within `horizon`.
    fn run(&mut self, horizon: Duration) {
        let end = self.now + horizon;
        loop {
            let mut moved = false;
            while let Some(t) = self.i.poll_transmit(self.now) {
                moved = true;
                self.deliver(true, t);
            }
            if let Some(r) = self.r.as_mut() {
                if let Some(t) = r.poll_transmit(self.now) {
                    moved = true;
                    self.deliver(false, t);
                }
            }
            while let Some(e) = self.i.poll_event() {
                self.i_events.push(e);
            }
            if let Some(r) = self.r.as_mut() {
                while let Some(e) = r.poll_event() {
                    self.r_events.push(e);
                }
            }
            if moved {
                continue;
            }
            let next = [self.i.poll_timeout(), self.r.as_ref().and_then(Sa::poll_timeout)].into_iter().flatten().min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.i.handle_timeout(self.now, &mut self.rng);
                    if let Some(r) = self.r.as_mut() {
                        r.handle_timeout(self.now, &mut self.rng);
                    }
                }
                _ => return,
            }
        }
    }

    fn children(events: &[Event]) -> Vec<&ChildSa> {
        events.iter().filter_map(|e| if let Event::ChildSaInstalled(c) = e { Some(c) } else { None }).collect()
    }

    fn assert_up(&self, n: usize) {
        let r = self.r.as_ref().unwrap();
        assert!(self.i.is_established() && r.is_established(), "{:?} / {:?}", self.i_events, self.r_events);
        assert_eq!(self.i.cookies(), r.cookies());
        let ik = self.i.keys().unwrap();
        let rk = r.keys().unwrap();
        assert_eq!(ik.skeyid_d, rk.skeyid_d);
        assert_eq!(ik.skeyid_a, rk.skeyid_a);
        assert_eq!(ik.enc_key, rk.enc_key);
        let (ic, rc) = (Self::children(&self.i_events), Self::children(&self.r_events));
        assert_eq!(ic.len(), n, "initiator events {:?}", self.i_events);
        assert_eq!(rc.len(), n, "responder events {:?}", self.r_events);
        for (a, b) in ic.iter().zip(rc.iter()) {
            assert_eq!((a.spi_i, a.spi_r), (b.spi_i, b.spi_r));
            assert!(a.initiator && !b.initiator);
            assert_eq!(a.keys.encr_i, b.keys.encr_i);
            assert_eq!(a.keys.integ_i, b.keys.integ_i);
            assert_eq!(a.keys.encr_r, b.keys.encr_r);
            assert_eq!(a.keys.integ_r, b.keys.integ_r);
            assert_ne!(a.keys.encr_i, a.keys.encr_r);
            assert_eq!(a.outbound_keys().0, b.inbound_keys().0);
            assert_eq!(a.local_ts(), b.remote_ts());
        }
        assert_eq!(
            self.i_events.iter().filter(|e| matches!(e, Event::IkeSaEstablished { .. })).count(),
            1,
            "{:?}",
            self.i_events
        );
    }
}

#[test]
fn main_mode_establishes_phase1_and_quick_mode() {
    let mut p = Pair::new(Mode::Main, 1);
    p.run(Duration::from_secs(60));
    p.assert_up(1);
    assert_eq!(p.sent, [4, 5], "to us: main mode 2/4/6 + quick 2; to the responder: 1/3/5 + quick 1/3");
    assert_eq!(p.i.nat_detected(), (false, false));
    let c = Pair::children(&p.i_events)[0];
    assert_eq!(c.encap, None);
    assert_eq!(c.encr, EncrAlg::AES128_CBC);
    assert_eq!(c.keys.encr_i.len(), 16);
    assert_eq!(c.keys.integ_i.len(), 32);
}

#[test]
fn aggressive_mode_establishes_phase1_and_quick_mode() {
    let mut p = Pair::new(Mode::Aggressive, 2);
    p.run(Duration::from_secs(60));
    p.assert_up(1);
    assert_eq!(p.sent, [2, 4], "to us: aggressive 2 + quick 2; to the responder: 1/3 + quick 1/3");
}

#[test]
fn every_suite_and_pfs() {
    let suites = [
        (EncrAlg::Des, HashAlg::Md5, DhGroup::Modp768),
        (EncrAlg::TripleDes, HashAlg::Sha1, DhGroup::Modp1024),
        (EncrAlg::AesCbc { key_bits: 192 }, HashAlg::Sha384, DhGroup::Modp1536),
        (EncrAlg::AES256_CBC, HashAlg::Sha512, DhGroup::Ecp384),
        (EncrAlg::AES128_CBC, HashAlg::Sha256, DhGroup::Ecp256),
        (EncrAlg::AES256_CBC, HashAlg::Sha256, DhGroup::Modp2048S256),
        (EncrAlg::AES128_CBC, HashAlg::Sha1, DhGroup::Ecp521),
    ];
    let esps = [
        EspProposal { encr: EncrAlg::AES128_GCM16, integ: None },
        EspProposal { encr: EncrAlg::TripleDes, integ: Some(IntegAlg::HmacMd5_96) },
        EspProposal { encr: EncrAlg::AES256_CBC, integ: Some(IntegAlg::HmacSha512_256) },
    ];
    for (n, (encr, hash, group)) in suites.into_iter().enumerate() {
        for mode in [Mode::Main, Mode::Aggressive] {
            let (mut ic, mut rc) = configs(mode);
            ic.ike_proposals = vec![Phase1Proposal { encr, hash, group }];
            // The responder accepts a superset.
            rc.ike_proposals.push(Phase1Proposal { encr, hash, group });
            let esp = esps[n % esps.len()];
            ic.esp_proposals = vec![esp];
            rc.esp_proposals = vec![EspProposal { encr: EncrAlg::AES256_CBC, integ: Some(IntegAlg::HmacSha1_96) }, esp];
            let pfs = (n % 2 == 0).then_some(DhGroup::Modp1024);
            ic.pfs = pfs;
            rc.pfs = pfs;
            let mut p = Pair::with(ic, rc, 10 + n as u64);
            p.run(Duration::from_secs(60));
            p.assert_up(1);
            let c = Pair::children(&p.i_events)[0];
            assert_eq!((c.encr, c.integ), (esp.encr, esp.integ));
            assert_eq!(c.keys.encr_i.len(), esp.encr.keymat_len());
        }
    }
}

#[test]
fn loss_and_duplication_in_every_position() {
    for mode in [Mode::Main, Mode::Aggressive] {
        for to_r in [true, false] {
            for k in 0..4 {
                let mut p = Pair::new(mode, 100 + k as u64);
                p.drop = Box::new(move |d, i| d == to_r && i == k);
                p.run(Duration::from_secs(60));
                p.assert_up(1);
                let mut p = Pair::new(mode, 200 + k as u64);
                p.dup = Box::new(move |d, i| d == to_r && i == k);
                p.run(Duration::from_secs(60));
                p.assert_up(1);
            }
        }
    }
}

#[test]
fn gives_up_after_retransmissions() {
    let mut p = Pair::new(Mode::Main, 3);
    p.drop = Box::new(|to_r, _| to_r);
    p.run(Duration::from_secs(600));
    assert_eq!(p.i_events, vec![Event::Failed(Failure::Timeout)]);
    assert_eq!(p.sent[1], 6, "first transmission + 5 retransmissions");
    assert!(p.i.is_finished());
}

#[test]
fn wrong_psk_fails_authentication() {
    for mode in [Mode::Main, Mode::Aggressive] {
        let (ic, mut rc) = configs(mode);
        rc.psk = crate::crypto::SecretBytes::from_slice(b"another");
        let mut p = Pair::with(ic, rc, 4);
        p.run(Duration::from_secs(60));
        assert!(!p.i.is_established());
        assert!(Pair::children(&p.i_events).is_empty() && Pair::children(&p.r_events).is_empty());
        let failed = |ev: &[Event]| ev.iter().any(|e| matches!(e, Event::Failed(_)));
        assert!(failed(&p.i_events) || failed(&p.r_events), "{:?} {:?}", p.i_events, p.r_events);
    }
}

#[test]
fn no_common_proposal() {
    let (ic, mut rc) = configs(Mode::Main);
    rc.ike_proposals = vec![Phase1Proposal { encr: EncrAlg::TripleDes, hash: HashAlg::Md5, group: DhGroup::Modp1024 }];
    let mut p = Pair::with(ic, rc, 5);
    p.run(Duration::from_secs(60));
    assert!(matches!(p.i_events[..], [Event::Failed(Failure::PeerError(n))] if n.0 == 14), "{:?}", p.i_events);
}

#[test]
fn nat_detected_floats_to_4500_and_encapsulates() {
    for mode in [Mode::Main, Mode::Aggressive] {
        let (ic, mut rc) = configs(mode);
        // Behind the NAT the initiator's address is not its ID: name it.
        rc.remote_id = Some(IdPayload::address(I.ip()));
        let mut p = Pair::with(ic, rc, 6);
        p.nat = true;
        p.run(Duration::from_secs(60));
        p.assert_up(1);
        assert_eq!(p.i.nat_detected(), (true, false));
        assert_eq!(p.r.as_ref().unwrap().nat_detected(), (false, true));
        assert_eq!(p.i.local_addr().port(), 4500);
        let r = p.r.as_ref().unwrap();
        assert_eq!(r.local_addr().port(), 4500);
        assert_eq!(r.remote_addr(), SocketAddr::new(NAT_IP, 34500));
        let c = Pair::children(&p.i_events)[0];
        let e = c.encap.unwrap();
        assert_eq!((e.local_port, e.remote_port), (4500, 4500));
        let c = Pair::children(&p.r_events)[0];
        let e = c.encap.unwrap();
        assert_eq!((e.local_port, e.remote_port), (4500, 34500));
    }
}

#[test]
fn responder_narrows_to_its_subnets() {
    let (mut ic, mut rc) = configs(Mode::Main);
    ic.remote_subnets = vec![net("198.51.0.0/16")];
    rc.local_subnets = vec![net("198.51.100.0/24")];
    let mut p = Pair::with(ic, rc, 7);
    p.run(Duration::from_secs(60));
    p.assert_up(1);
    let c = Pair::children(&p.i_events)[0];
    assert_eq!(c.remote_ts(), Pair::children(&p.r_events)[0].local_ts());
    assert_eq!(
        format!("{:?}", c.remote_ts()[0].range),
        format!("{:?}", super::sa::subnet_ts(net("198.51.100.0/24")).range)
    );
}

#[test]
fn disjoint_subnets_are_refused() {
    let (ic, mut rc) = configs(Mode::Main);
    rc.remote_subnets = vec![net("203.0.113.0/24")];
    let mut p = Pair::with(ic, rc, 8);
    p.run(Duration::from_secs(60));
    assert!(p.i.is_established());
    assert!(Pair::children(&p.i_events).is_empty());
    assert!(
        p.i_events.iter().any(|e| matches!(e, Event::ChildSaFailed(Failure::PeerError(n)) if n.0 == 18)),
        "{:?}",
        p.i_events
    );
}

#[test]
fn close_deletes_on_both_sides() {
    let mut p = Pair::new(Mode::Main, 9);
    p.run(Duration::from_secs(60));
    p.assert_up(1);
    let c = Pair::children(&p.i_events)[0].clone();
    p.i.close(p.now, &mut p.rng);
    p.run(Duration::from_secs(10));
    let want = Event::ChildSaDeleted { spi_in: c.spi_r, spi_out: c.spi_i };
    assert!(p.r_events.contains(&want), "{:?}", p.r_events);
    assert_eq!(p.r_events.last(), Some(&Event::Closed));
    assert_eq!(p.i_events.last(), Some(&Event::Closed));
    assert!(p.r.as_ref().unwrap().is_finished());
}

#[test]
fn answers_dpd() {
    let mut p = Pair::new(Mode::Main, 11);
    p.run(Duration::from_secs(60));
    let r = p.r.as_mut().unwrap();
    let seq = r.send_dpd(p.now, &mut p.rng);
    p.run(Duration::from_secs(10));
    assert_eq!(p.r.as_ref().unwrap().last_dpd_ack(), Some(seq));
    let seq2 = p.i.send_dpd(p.now, &mut p.rng);
    assert_eq!(seq2, seq2.max(1));
    p.run(Duration::from_secs(10));
    assert_eq!(p.i.last_dpd_ack(), Some(seq2));
}

#[test]
fn half_open_responder_gives_up() {
    let mut p = Pair::new(Mode::Main, 12);
    // Message 3 never arrives: the initiator gives up by retransmission, the responder by its
    // half-open timeout.
    p.drop = Box::new(|to_r, i| to_r && i >= 1);
    p.run(Duration::from_secs(600));
    assert_eq!(p.i_events, vec![Event::Failed(Failure::Timeout)]);
    assert_eq!(p.r_events, vec![Event::Failed(Failure::Timeout)]);
    assert!(p.r.as_ref().unwrap().poll_timeout().is_none());
}

#[test]
fn ipsec_sa_rekeyed_before_lifetime_make_before_break() {
    let (mut ic, mut rc) = configs(Mode::Main);
    ic.child_lifetime = Duration::from_secs(100);
    rc.child_lifetime = Duration::from_secs(100);
    let mut p = Pair::with(ic, rc, 13);
    p.run(Duration::from_secs(1));
    p.assert_up(1);
    let old = Pair::children(&p.i_events)[0].clone();
    // Rekey at 90 s; nothing expires before 100 s.
    p.run(Duration::from_secs(95));
    let installed = Pair::children(&p.i_events);
    assert_eq!(installed.len(), 2, "{:?}", p.i_events);
    let new = installed[1].clone();
    assert_ne!(new.spi_i, old.spi_i);
    let i_deleted = Event::ChildSaDeleted { spi_in: old.spi_i, spi_out: old.spi_r };
    let r_deleted = Event::ChildSaDeleted { spi_in: old.spi_r, spi_out: old.spi_i };
    let pos = |ev: &[Event], e: &Event| ev.iter().position(|x| x == e);
    let installed_at = p.i_events.iter().position(|e| matches!(e, Event::ChildSaInstalled(c) if c.spi_i == new.spi_i));
    assert!(pos(&p.i_events, &i_deleted) > installed_at, "new before old is deleted: {:?}", p.i_events);
    assert!(pos(&p.r_events, &r_deleted).is_some(), "{:?}", p.r_events);
    assert_eq!(p.i.child_sas().count(), 1);
    assert_eq!(p.r.as_ref().unwrap().child_sas().count(), 1);
    assert_eq!(p.i.child_sas().next().unwrap().spi_i, new.spi_i);
}

#[test]
fn ipsec_sa_expires_when_rekey_fails() {
    let (mut ic, rc) = configs(Mode::Main);
    ic.child_lifetime = Duration::from_secs(100);
    let mut p = Pair::with(ic, rc, 14);
    p.run(Duration::from_secs(1));
    p.assert_up(1);
    let old = Pair::children(&p.i_events)[0].clone();
    // From now on the responder hears nothing.
    p.drop = Box::new(|to_r, i| to_r && i >= 5);
    // Rekey starts at 90 s, the SA expires at 100 s, the rekey gives up at 90 + 31.5 s.
    p.run(Duration::from_secs(130));
    assert!(p.i_events.contains(&Event::ChildSaFailed(Failure::Timeout)), "{:?}", p.i_events);
    assert!(p.i_events.contains(&Event::ChildSaDeleted { spi_in: old.spi_i, spi_out: old.spi_r }), "{:?}", p.i_events);
    assert_eq!(p.i.child_sas().count(), 0);
    assert!(p.i.is_established());
}

#[test]
fn dpd_keeps_a_live_peer_and_declares_a_dead_one() {
    let (mut ic, mut rc) = configs(Mode::Main);
    ic.dpd_interval = Some(Duration::from_secs(30));
    rc.dpd_interval = Some(Duration::from_secs(30));
    let mut p = Pair::with(ic, rc, 15);
    // Idle but alive: probes are answered, nothing else happens.
    p.run(Duration::from_secs(200));
    p.assert_up(1);
    assert!(p.i.last_dpd_ack().is_some() && p.r.as_ref().unwrap().last_dpd_ack().is_some());
    assert!(!p.i_events.iter().any(|e| matches!(e, Event::PeerDead)));
    // The responder vanishes: the initiator probes, then gives up within interval + timeout.
    p.drop = Box::new(|to_r, _| to_r);
    let c = Pair::children(&p.i_events)[0].clone();
    p.run(Duration::from_secs(61));
    assert_eq!(
        p.i_events[p.i_events.len() - 2..],
        [Event::ChildSaDeleted { spi_in: c.spi_i, spi_out: c.spi_r }, Event::PeerDead]
    );
    assert!(p.i.is_finished() && p.i.poll_timeout().is_none());
}

#[test]
fn inbound_traffic_postpones_dpd() {
    let (mut ic, rc) = configs(Mode::Main);
    ic.dpd_interval = Some(Duration::from_secs(30));
    let mut p = Pair::with(ic, rc, 16);
    p.run(Duration::from_secs(1));
    p.assert_up(1);
    // The only timer left: the first R-U-THERE, 30 s after phase 1 completed (child expiry is
    // an hour away).
    let due = p.i.poll_timeout().unwrap();
    assert!(due > p.now + Duration::from_secs(28) && due <= p.now + Duration::from_secs(30), "{due:?}");
    p.i.note_inbound_traffic(due - Duration::from_secs(1));
    assert_eq!(p.i.poll_timeout(), Some(due + Duration::from_secs(29)));
}

#[test]
fn ipv6_gateways_and_subnets() {
    let (mut ic, mut rc) = configs(Mode::Main);
    ic.local_subnets = vec![net("2001:db8:1::/48")];
    ic.remote_subnets = vec![net("2001:db8:2::/48")];
    rc.local_subnets = vec![net("2001:db8:2::/48")];
    rc.remote_subnets = vec![net("2001:db8:1::/48")];
    let i: SocketAddr = "[2001:db8:ffff::1]:500".parse().unwrap();
    let r: SocketAddr = "[2001:db8:ffff::2]:500".parse().unwrap();
    let mut p = Pair::with_addrs(ic, rc, 17, i, r);
    p.run(Duration::from_secs(60));
    p.assert_up(1);
    let c = Pair::children(&p.i_events)[0];
    assert_eq!(
        format!("{:?}", c.local_ts()[0].range),
        format!("{:?}", super::sa::subnet_ts(net("2001:db8:1::/48")).range)
    );
    assert_eq!((c.local, c.remote), (i, r));
}

#[test]
fn several_subnet_pairs_one_quick_mode_each_and_no_busy_timer() {
    for mode in [Mode::Main, Mode::Aggressive] {
        let (mut ic, mut rc) = configs(mode);
        ic.local_subnets = vec![net("192.0.2.0/25"), net("192.0.2.128/25")];
        ic.remote_subnets = vec![net("198.51.100.0/24"), net("203.0.113.0/24")];
        rc.local_subnets = vec![net("198.51.100.0/24"), net("203.0.113.0/24")];
        let mut p = Pair::with(ic, rc, 18);
        // Every step of the run must move time forward or deliver something: a timer that is
        // always due would spin here.
        p.run(Duration::from_secs(60));
        p.assert_up(4);
        let now = p.now;
        assert!(p.i.poll_timeout().is_none_or(|t| t > now + Duration::from_secs(60)), "{:?}", p.i.poll_timeout());
    }
}

#[test]
fn phase1_responder_starts_a_quick_mode_too() {
    let mut p = Pair::new(Mode::Main, 19);
    p.run(Duration::from_secs(10));
    p.assert_up(1);
    let now = p.now;
    let r = p.r.as_mut().unwrap();
    r.create_child(now, net("198.51.100.0/25"), net("192.0.2.0/25"), &mut p.rng);
    p.run(Duration::from_secs(10));
    let (ic, rc) = (Pair::children(&p.i_events), Pair::children(&p.r_events));
    assert_eq!((ic.len(), rc.len()), (2, 2));
    // This time the phase-1 responder is the quick mode initiator.
    assert!(rc[1].initiator && !ic[1].initiator);
    assert_eq!((rc[1].spi_i, rc[1].spi_r), (ic[1].spi_i, ic[1].spi_r));
    assert_eq!(rc[1].keys.encr_i, ic[1].keys.encr_i);
    assert_eq!(rc[1].local_ts(), ic[1].remote_ts());
}

#[test]
fn lifetimes_follow_the_initiators_proposal_up_to_ours() {
    let (mut ic, mut rc) = configs(Mode::Aggressive);
    ic.child_lifetime = Duration::from_secs(500);
    rc.child_lifetime = Duration::from_secs(1000);
    ic.ike_lifetime = Duration::from_secs(300);
    rc.ike_lifetime = Duration::from_secs(100_000);
    let mut p = Pair::with(ic, rc, 20);
    p.run(Duration::from_secs(5));
    p.assert_up(1);
    assert_eq!(Pair::children(&p.i_events)[0].lifetime, Duration::from_secs(500));
    assert_eq!(Pair::children(&p.r_events)[0].lifetime, Duration::from_secs(500));
    let r = p.r.as_ref().unwrap();
    let (ie, re) = (p.i.expires_at().unwrap(), r.expires_at().unwrap());
    assert!(ie.max(re) - ie.min(re) < Duration::from_millis(100), "both end at the negotiated 300 s");
    assert_eq!(r.reauth_at(), None, "reauthentication is the initiator's job");
    assert_eq!(p.i.reauth_at(), Some(ie - Duration::from_secs(30)));
    // The IPsec SA is rekeyed at 450 s, but the ISAKMP SA ends at 300 s and takes it along.
    p.run(Duration::from_secs(400));
    assert_eq!(p.i_events.last(), Some(&Event::Closed));
    assert_eq!(p.r_events.last(), Some(&Event::Closed));
    assert_eq!(Pair::children(&p.i_events).len(), 1);
}
