//! Test harness: two [`IkeSa`]s wired through a simulated network with virtual time, a NAT in
//! front of the initiator, and hooks to drop, duplicate, delay and reorder messages or to drive
//! exchanges message by message (quinn-proto's `Pair`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::ike_sa::{ChildSa, Config, Event, IkeSa, Transmit};
use crate::message::{Identification, TrafficSelector};
use crate::ts::tests::v4;

pub const I_PRIV: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)), 500);
pub const I_PUB_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
pub const I_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 500);
pub const R_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), 500);

/// 10.a.0.0/16.
pub fn net(a: u8) -> TrafficSelector {
    v4([10, a, 0, 0], [10, a, 255, 255])
}

/// A configuration for one side: local subnet 10.`l`/16, remote 10.`r`/16.
pub fn config(local: &str, remote: &str, psk: &[u8], l: u8, r: u8) -> Config {
    let mut c = Config::new(psk);
    c.local_id = Some(Identification::Fqdn(local.as_bytes().to_vec()));
    c.remote_id = Some(Identification::Fqdn(remote.as_bytes().to_vec()));
    c.local_ts = vec![net(l)];
    c.remote_ts = vec![net(r)];
    c
}

pub fn configs() -> (Config, Config) {
    (config("alice.example", "bob.example", b"s3cret", 1, 2), config("bob.example", "alice.example", b"s3cret", 2, 1))
}

/// A source NAT in front of the initiator: private address ↔ `public_ip:port`.
pub struct Nat {
    pub public_ip: IpAddr,
    pub map: Vec<(SocketAddr, SocketAddr)>,
    pub next_port: u16,
}

impl Nat {
    pub fn new(public_ip: IpAddr) -> Self {
        Nat { public_ip, map: Vec::new(), next_port: 31000 }
    }

    fn out(&mut self, private: SocketAddr) -> SocketAddr {
        if let Some((_, p)) = self.map.iter().find(|(a, _)| *a == private) {
            return *p;
        }
        let p = SocketAddr::new(self.public_ip, self.next_port);
        self.next_port += 1;
        self.map.push((private, p));
        p
    }

    fn back(&self, public: SocketAddr) -> Option<SocketAddr> {
        self.map.iter().find(|(_, p)| *p == public).map(|(a, _)| *a)
    }

    /// Forgets every mapping (the NAT rebooted or timed out): new ports from now on.
    pub fn rebind(&mut self) {
        self.map.clear();
    }
}

#[derive(Clone, Debug)]
pub struct Packet {
    pub at: Instant,
    pub to_r: bool,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub t: Transmit,
}

/// Random network faults, per mille.
#[derive(Clone, Copy, Debug)]
pub struct Chaos {
    pub drop: u32,
    pub dup: u32,
    pub delay: u32,
    pub max_delay: Duration,
}

pub struct Pair {
    pub now: Instant,
    pub rng: ChaCha20Rng,
    pub i: IkeSa,
    pub r: IkeSa,
    pub flight: Vec<Packet>,
    pub nat: Option<Nat>,
    pub chaos: Option<(Chaos, ChaCha20Rng)>,
    /// Every IKE message sent (after NAT), in order.
    pub sent_by_i: Vec<Packet>,
    pub sent_by_r: Vec<Packet>,
    pub keepalives_i: Vec<Instant>,
    pub keepalives_r: Vec<Instant>,
    pub ev_i: Vec<Event>,
    pub ev_r: Vec<Event>,
}

impl Pair {
    pub fn new(ci: Config, cr: Config) -> Self {
        Pair::with_seed(ci, cr, 42)
    }

    pub fn with_seed(ci: Config, cr: Config, seed: u64) -> Self {
        Pair::build(ci, cr, seed, None)
    }

    /// The initiator sits behind a NAT at `I_PRIV`.
    pub fn behind_nat(ci: Config, cr: Config) -> Self {
        Pair::build(ci, cr, 42, Some(Nat::new(I_PUB_IP)))
    }

    fn build(ci: Config, cr: Config, seed: u64, nat: Option<Nat>) -> Self {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let local = if nat.is_some() { I_PRIV } else { I_ADDR };
        let i = IkeSa::initiate(ci, local, R_ADDR, now, &mut rng);
        let r = IkeSa::respond(cr, R_ADDR, I_ADDR, now);
        let mut p = Pair {
            now,
            rng,
            i,
            r,
            flight: Vec::new(),
            nat,
            chaos: None,
            sent_by_i: Vec::new(),
            sent_by_r: Vec::new(),
            keepalives_i: Vec::new(),
            keepalives_r: Vec::new(),
            ev_i: Vec::new(),
            ev_r: Vec::new(),
        };
        p.collect();
        p
    }

    pub fn set_chaos(&mut self, c: Chaos, seed: u64) {
        self.chaos = Some((c, ChaCha20Rng::seed_from_u64(seed)));
    }

    /// Moves everything both sides want to send into the network, and their events into
    /// `ev_i`/`ev_r`.
    pub fn collect(&mut self) {
        while let Some(t) = self.i.poll_transmit(self.now) {
            if t.is_keepalive() {
                self.keepalives_i.push(self.now);
                continue;
            }
            let src = match self.nat.as_mut() {
                Some(n) => n.out(t.local),
                None => t.local,
            };
            let p = Packet { at: self.now, to_r: true, src, dst: t.remote, t };
            self.sent_by_i.push(p.clone());
            self.inject(p);
        }
        while let Some(t) = self.r.poll_transmit(self.now) {
            if t.is_keepalive() {
                self.keepalives_r.push(self.now);
                continue;
            }
            let p = Packet { at: self.now, to_r: false, src: t.local, dst: t.remote, t };
            self.sent_by_r.push(p.clone());
            self.inject(p);
        }
        while let Some(e) = self.i.poll_event() {
            self.ev_i.push(e);
        }
        while let Some(e) = self.r.poll_event() {
            self.ev_r.push(e);
        }
    }

    fn inject(&mut self, mut p: Packet) {
        if let Some((c, rng)) = self.chaos.as_mut() {
            let x = rng.next_u32() % 1000;
            if x < c.drop {
                return;
            }
            if x < c.drop + c.dup {
                self.flight.push(p.clone());
            } else if x < c.drop + c.dup + c.delay {
                let ms = u64::from(rng.next_u32()) % (c.max_delay.as_millis() as u64 + 1);
                p.at += Duration::from_millis(ms);
            }
        }
        self.flight.push(p);
    }

    /// Indices of the packets in flight towards the responder (`to_r`) or the initiator.
    pub fn in_flight(&self, to_r: bool) -> Vec<usize> {
        (0..self.flight.len()).filter(|k| self.flight[*k].to_r == to_r).collect()
    }

    /// Delivers packet `k` of `flight` now.
    pub fn deliver(&mut self, k: usize) {
        let p = self.flight.remove(k);
        self.deliver_packet(&p);
        self.collect();
    }

    /// Delivers a (possibly modified or replayed) packet.
    pub fn deliver_packet(&mut self, p: &Packet) {
        let now = self.now;
        if p.to_r {
            self.r.handle(now, p.dst, p.src, &p.t.payload, &mut self.rng);
        } else {
            let dst = match self.nat.as_ref() {
                Some(n) => match n.back(p.dst) {
                    Some(d) => d,
                    None => return,
                },
                None => p.dst,
            };
            self.i.handle(now, dst, p.src, &p.t.payload, &mut self.rng);
        }
    }

    /// Delivers the first packet towards the responder (`to_r`) or the initiator.
    pub fn deliver_next(&mut self, to_r: bool) {
        let k = self.in_flight(to_r)[0];
        self.deliver(k);
    }

    pub fn drop_next(&mut self, to_r: bool) -> Packet {
        let k = self.in_flight(to_r)[0];
        self.flight.remove(k)
    }

    /// Delivers everything due, in order, until the network is quiet at the current time.
    pub fn drive(&mut self) {
        self.collect();
        while let Some(k) =
            (0..self.flight.len()).filter(|k| self.flight[*k].at <= self.now).min_by_key(|k| self.flight[*k].at)
        {
            self.deliver(k);
        }
    }

    /// Runs virtual time for `d`, firing timers and delivering packets as they become due.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.drive();
            let next = [self.i.poll_timeout(), self.r.poll_timeout(), self.flight.iter().map(|p| p.at).min()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    if self.i.poll_timeout().is_some_and(|x| x <= now) {
                        self.i.handle_timeout(now, &mut self.rng);
                    }
                    if self.r.poll_timeout().is_some_and(|x| x <= now) {
                        self.r.handle_timeout(now, &mut self.rng);
                    }
                }
                _ => {
                    self.now = end;
                    self.drive();
                    return;
                }
            }
        }
    }

    /// Fires the timers due at `t` (after moving time there).
    pub fn advance_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
        let now = self.now;
        self.i.handle_timeout(now, &mut self.rng);
        self.r.handle_timeout(now, &mut self.rng);
        self.collect();
    }

    /// Runs until both are established (panics after a minute of virtual time).
    pub fn establish(&mut self) {
        self.run(Duration::ZERO);
        let deadline = self.now + Duration::from_secs(60);
        while !(self.i.is_established() && self.r.is_established()) {
            assert!(self.now < deadline, "not established: {:?} {:?}", self.i, self.r);
            self.run(Duration::from_millis(100));
        }
    }
}

/// The Child SAs a side has installed and not deleted, according to its events.
pub fn live_children(events: &[Event]) -> Vec<ChildSa> {
    let mut live: Vec<ChildSa> = Vec::new();
    for e in events {
        match e {
            Event::ChildSaInstalled(c) => live.push(c.clone()),
            Event::ChildSaDeleted { spi_in, .. } => live.retain(|c| c.inbound_spi() != *spi_in),
            _ => {}
        }
    }
    live
}

/// Both sides agree: the same Child SAs (by SPI pair) with the same keys, the events match what
/// each side holds, and no SPI was installed twice.
pub fn assert_consistent(p: &Pair) {
    let li = live_children(&p.ev_i);
    let lr = live_children(&p.ev_r);
    let key = |c: &ChildSa| (c.spi_i, c.spi_r);
    let held_i: HashSet<_> = p.i.child_sas().map(key).collect();
    let held_r: HashSet<_> = p.r.child_sas().map(key).collect();
    assert_eq!(held_i, li.iter().map(key).collect(), "initiator events vs state");
    assert_eq!(held_r, lr.iter().map(key).collect(), "responder events vs state");
    assert_eq!(held_i, held_r, "both ends hold the same Child SAs");
    for a in &li {
        let b = lr.iter().find(|b| key(b) == key(a)).unwrap();
        assert_eq!(a.keys, b.keys, "Child SA keys identical on both sides");
        assert_ne!(a.initiator, b.initiator);
        assert_eq!(a.inbound_spi(), b.outbound_spi());
        assert_eq!(a.inbound_keys(), b.outbound_keys());
        assert_eq!(a.local_ts(), b.remote_ts());
    }
}
