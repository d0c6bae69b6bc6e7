//! Sans-IO IKE endpoint: the dispatcher a daemon drives with every IKE datagram of its sockets
//! (quinn-proto's `Endpoint`).
//!
//! It owns the [`IkeSa`]s of one gateway, routes each incoming message to the right one by our
//! IKE SPI (every SPI of a connection, across IKE SA rekeys: [`IkeSa::local_spis`]), creates a
//! responder [`IkeSa`] for each new IKE_SA_INIT request, and aggregates the outputs of all of them:
//! [`Endpoint::poll_transmit`], [`Endpoint::poll_timeout`], [`Endpoint::poll_event`] (each event
//! tagged with the [`SaHandle`] of its connection). The daemon initiates with
//! [`Endpoint::connect`] and acts on a connection with [`Endpoint::with_sa`].
//!
//! # Denial of service (RFC 7296 §2.6)
//!
//! Responder state is bounded: at most `max_sas` connections, of which at most `max_half_open`
//! half-open (answered IKE_SA_INIT, not authenticated; dropped after `half_open_timeout`). Once
//! `cookie_threshold` half-open SAs exist, an IKE_SA_INIT request without a valid COOKIE is
//! answered statelessly with one: `COOKIE = <version> | SHA-256(Ni | IPi | SPIi | <secret>)`. The
//! secret is drawn from the caller's RNG and replaced every `cookie_secret_lifetime`; cookies made
//! with the previous secret stay valid. A spoofed source never sees its cookie, so a flood of
//! spoofed requests costs no state beyond the threshold.
//!
//! # Choosing the responder configuration by identity
//!
//! A responder SA starts with `responder` and the [`Endpoint::set_responder_alternatives`]; at
//! IKE_AUTH it keeps the configuration the initiator's IDi and PSK match
//! ([`IkeSa::set_alternatives`]). When it switched to an alternative, [`Endpoint::poll_switched`]
//! reports it; a daemon that keeps one `Endpoint` per connection then moves the SA to the
//! connection of that label with [`Endpoint::detach`] and [`Endpoint::attach`].
//!
//! # Both ends initiating at once
//!
//! If both gateways `connect` to each other at the same time, two IKE SAs come up, each with its
//! Child SA; both are kept, consistently on both ends (each end has one as initiator, one as
//! responder, with identical keys). The daemon may close one of them (RFC 7296 gives no rule;
//! strongSwan's default `uniqueids` does not close them either).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::ike_sa::{Alternative, Event, IkeSa, Transmit};
use crate::message::{ExchangeType, Flags, Header, Message, NotifyPayload, NotifyType, Payload, PayloadType};

/// Identifies one connection (one [`IkeSa`]) of an [`Endpoint`] for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaHandle(pub u64);

/// Limits and responder configuration of an [`Endpoint`].
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Configuration for peers that initiate to us; `None`: we never respond.
    pub responder: Option<Config>,
    /// Half-open SAs from which on IKE_SA_INIT requests must carry a valid COOKIE.
    pub cookie_threshold: usize,
    /// Half-open SAs beyond which new IKE_SA_INIT requests are dropped even with a cookie.
    pub max_half_open: usize,
    /// Connections beyond which no responder SA is created.
    pub max_sas: usize,
    /// How long a cookie secret is used before it is replaced.
    pub cookie_secret_lifetime: Duration,
}

impl EndpointConfig {
    /// Defaults: cookies from 64 half-open SAs on, at most 1024 half-open and 65536 connections,
    /// a new cookie secret every 5 minutes.
    #[must_use]
    pub fn new(responder: Option<Config>) -> Self {
        EndpointConfig {
            responder,
            cookie_threshold: 64,
            max_half_open: 1024,
            max_sas: 65536,
            cookie_secret_lifetime: Duration::from_secs(300),
        }
    }
}

struct CookieSecret {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    version: u32,
    born: Instant,
}

/// The dispatcher; see the module documentation.
pub struct Endpoint {
    config: EndpointConfig,
    sas: HashMap<SaHandle, IkeSa>,
    by_spi: HashMap<u64, SaHandle>,
    spis_of: HashMap<SaHandle, Vec<u64>>,
    by_init: HashMap<(SocketAddr, u64), SaHandle>,
    init_of: HashMap<SaHandle, (SocketAddr, u64)>,
    half_open: HashSet<SaHandle>,
    next_handle: u64,
    secret: Option<CookieSecret>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<(SaHandle, Event)>,
    alternatives: Vec<Alternative>,
    switched: VecDeque<(SaHandle, String)>,
}

/// An IKE SA taken out of one [`Endpoint`] with the events it had not delivered yet, to be
/// [`Endpoint::attach`]ed to another.
pub struct DetachedSa {
    sa: IkeSa,
    events: Vec<Event>,
}

impl core::fmt::Debug for DetachedSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DetachedSa").field("sa", &self.sa).field("events", &self.events.len()).finish()
    }
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sas", &self.sas.len())
            .field("half_open", &self.half_open.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with no connections.
    #[must_use]
    pub fn new(config: EndpointConfig) -> Self {
        Endpoint {
            config,
            sas: HashMap::new(),
            by_spi: HashMap::new(),
            spis_of: HashMap::new(),
            by_init: HashMap::new(),
            init_of: HashMap::new(),
            half_open: HashSet::new(),
            next_handle: 1,
            secret: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            alternatives: Vec::new(),
            switched: VecDeque::new(),
        }
    }

    /// Other configurations new responder SAs may switch to at IKE_AUTH by the initiator's
    /// identity and PSK (see [`IkeSa::set_alternatives`]); replaces the previous list. SAs that
    /// already exist keep theirs.
    pub fn set_responder_alternatives(&mut self, alternatives: Vec<Alternative>) {
        self.alternatives = alternatives;
    }

    /// The next responder SA that switched to an alternative configuration at IKE_AUTH, with that
    /// alternative's label. Each switch is reported once.
    pub fn poll_switched(&mut self) -> Option<(SaHandle, String)> {
        self.switched.pop_front()
    }

    /// Takes connection `h` out of this endpoint, with its events not yet polled. Its SPIs are no
    /// longer routed here. `None` if it does not exist.
    pub fn detach(&mut self, h: SaHandle) -> Option<DetachedSa> {
        let sa = self.sas.remove(&h)?;
        for s in self.spis_of.remove(&h).unwrap_or_default() {
            if self.by_spi.get(&s) == Some(&h) {
                self.by_spi.remove(&s);
            }
        }
        if let Some(k) = self.init_of.remove(&h) {
            self.by_init.remove(&k);
        }
        self.half_open.remove(&h);
        self.switched.retain(|(x, _)| *x != h);
        let (mine, others): (VecDeque<_>, VecDeque<_>) = self.events.drain(..).partition(|(x, _)| *x == h);
        self.events = others;
        let events = mine.into_iter().map(|(_, e)| e).collect();
        Some(DetachedSa { sa, events })
    }

    /// Adds a [`DetachedSa`] under a new handle; its pending events follow the events already
    /// queued here.
    pub fn attach(&mut self, detached: DetachedSa) -> SaHandle {
        let h = self.alloc();
        self.sas.insert(h, detached.sa);
        self.events.extend(detached.events.into_iter().map(|e| (h, e)));
        self.sync(h);
        h
    }

    /// Replaces the responder configuration (a connection's settings changed at run time). IKE SAs
    /// that exist keep the configuration they were created with.
    pub fn set_responder(&mut self, responder: Option<Config>) {
        self.config.responder = responder;
    }

    /// Number of connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sas.len()
    }

    /// Whether there is no connection.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sas.is_empty()
    }

    /// Number of half-open responder SAs.
    #[must_use]
    pub fn half_open(&self) -> usize {
        self.half_open.len()
    }

    /// The connection, if it still exists.
    #[must_use]
    pub fn ike_sa(&self, h: SaHandle) -> Option<&IkeSa> {
        self.sas.get(&h)
    }

    /// Handles of all connections.
    pub fn handles(&self) -> impl Iterator<Item = SaHandle> + '_ {
        self.sas.keys().copied()
    }

    /// Runs `f` on the connection (e.g. `|sa| sa.rekey_child(now, spi, rng)`), then collects its
    /// outputs. `None` if the connection does not exist.
    pub fn with_sa<T>(&mut self, h: SaHandle, f: impl FnOnce(&mut IkeSa) -> T) -> Option<T> {
        let sa = self.sas.get_mut(&h)?;
        let r = f(sa);
        self.sync(h);
        Some(r)
    }

    /// Starts a connection as initiator from `local` to `remote`.
    pub fn connect<R: CryptoRng + ?Sized>(
        &mut self,
        config: Config,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &mut R,
    ) -> SaHandle {
        let h = self.alloc();
        self.sas.insert(h, IkeSa::initiate(config, local, remote, now, rng));
        self.sync(h);
        h
    }

    fn alloc(&mut self) -> SaHandle {
        let h = SaHandle(self.next_handle);
        self.next_handle += 1;
        h
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, with the connection it concerns.
    pub fn poll_event(&mut self) -> Option<(SaHandle, Event)> {
        self.events.pop_front()
    }

    /// The earliest timer of all connections (linear in their number).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas.values().filter_map(IkeSa::poll_timeout).min()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        let due: Vec<SaHandle> =
            self.sas.iter().filter(|(_, sa)| sa.poll_timeout().is_some_and(|t| t <= now)).map(|(h, _)| *h).collect();
        for h in due {
            if let Some(sa) = self.sas.get_mut(&h) {
                sa.handle_timeout(now, rng);
            }
            self.sync(h);
        }
    }

    /// Processes one IKE message (non-ESP marker stripped, see [`crate::nat::classify`]) that
    /// arrived at `local` from `remote`. Never panics; state stays within the configured bounds.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        rng: &mut R,
    ) {
        let Ok(peek) = Header::peek(msg) else {
            return;
        };
        let h = peek.header;
        let target = if h.exchange_type == ExchangeType::IKE_SA_INIT && !h.flags.response {
            if h.spi_r != 0 || !h.flags.initiator {
                return;
            }
            match self.by_init.get(&(remote, h.spi_i)) {
                Some(t) => *t,
                None => {
                    self.new_responder(now, local, remote, msg, h, rng);
                    return;
                }
            }
        } else {
            let ours = if h.flags.initiator { h.spi_r } else { h.spi_i };
            match self.by_spi.get(&ours) {
                Some(t) => *t,
                None => return,
            }
        };
        if let Some(sa) = self.sas.get_mut(&target) {
            sa.handle(now, local, remote, msg, rng);
        }
        self.sync(target);
    }

    fn new_responder<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        h: Header,
        rng: &mut R,
    ) {
        let Some(natt_port) = self.config.responder.as_ref().map(|c| c.natt_port) else {
            return;
        };
        if self.sas.len() >= self.config.max_sas {
            return;
        }
        if self.half_open.len() >= self.config.cookie_threshold {
            let Ok(m) = Message::parse(msg) else {
                return;
            };
            let Some(Payload::Nonce(ni)) = m.find(PayloadType::NONCE) else {
                return;
            };
            let presented = match m.payloads.first() {
                Some(Payload::Notify(n)) if n.notify_type == NotifyType::COOKIE => Some(n.data.as_slice()),
                _ => None,
            };
            self.rotate_secret(now, rng);
            if !presented.is_some_and(|c| self.cookie_valid(c, ni, remote.ip(), h.spi_i)) {
                let Some(cookie) = self.cookie(None, ni, remote.ip(), h.spi_i) else {
                    return;
                };
                let reply = Message {
                    header: Header { spi_r: 0, flags: Flags { initiator: false, version: false, response: true }, ..h },
                    payloads: vec![Payload::Notify(NotifyPayload::new(NotifyType::COOKIE, cookie))],
                };
                if let Ok(bytes) = reply.emit() {
                    self.transmits.push_back(Transmit {
                        local,
                        remote,
                        payload: bytes,
                        non_esp_marker: local.port() == natt_port || remote.port() == natt_port,
                    });
                }
                return;
            }
        }
        if self.half_open.len() >= self.config.max_half_open {
            return;
        }
        let Some(cfg) = self.config.responder.clone() else {
            return;
        };
        let mut sa = IkeSa::respond(cfg, local, remote, now);
        if !self.alternatives.is_empty() {
            sa.set_alternatives(self.alternatives.clone());
        }
        sa.handle(now, local, remote, msg, rng);
        if sa.is_half_open() {
            let handle = self.alloc();
            self.sas.insert(handle, sa);
            self.by_init.insert((remote, h.spi_i), handle);
            self.init_of.insert(handle, (remote, h.spi_i));
            self.sync(handle);
        } else {
            // Answered statelessly (an error notification): keep nothing.
            while let Some(t) = sa.poll_transmit(now) {
                self.transmits.push_back(t);
            }
        }
    }

    fn rotate_secret<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        let stale = self.secret.as_ref().is_none_or(|s| now >= s.born + self.config.cookie_secret_lifetime);
        if stale {
            let mut current = [0u8; 32];
            rng.fill_bytes(&mut current);
            self.secret = Some(match self.secret.take() {
                Some(old) => CookieSecret {
                    current,
                    previous: Some(old.current),
                    version: old.version.wrapping_add(1),
                    born: now,
                },
                None => CookieSecret { current, previous: None, version: 0, born: now },
            });
        }
    }

    /// The cookie for these inputs with the current secret, or with the one of `version`.
    fn cookie(&self, version: Option<u32>, ni: &[u8], ip: IpAddr, spi_i: u64) -> Option<Vec<u8>> {
        let s = self.secret.as_ref()?;
        let (v, secret) = match version {
            None => (s.version, &s.current),
            Some(v) if v == s.version => (v, &s.current),
            Some(v) if v == s.version.wrapping_sub(1) => (v, s.previous.as_ref()?),
            Some(_) => return None,
        };
        let mut h = Sha256::new();
        h.update(ni);
        match ip {
            IpAddr::V4(a) => h.update(a.octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        h.update(spi_i.to_be_bytes());
        h.update(secret);
        let mut out = v.to_be_bytes().to_vec();
        out.extend_from_slice(&h.finalize());
        Some(out)
    }

    fn cookie_valid(&self, presented: &[u8], ni: &[u8], ip: IpAddr, spi_i: u64) -> bool {
        let Some(v) = presented.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes) else {
            return false;
        };
        self.cookie(Some(v), ni, ip, spi_i)
            .is_some_and(|want| want.len() == presented.len() && bool::from(want.ct_eq(presented)))
    }

    /// Collects the outputs of connection `h`, re-indexes its SPIs, and forgets it once finished.
    fn sync(&mut self, h: SaHandle) {
        let Some(sa) = self.sas.get_mut(&h) else {
            return;
        };
        while let Some(t) = sa.transmits_pop() {
            self.transmits.push_back(t);
        }
        while let Some(e) = sa.poll_event() {
            self.events.push_back((h, e));
        }
        if let Some(label) = sa.take_switch() {
            self.switched.push_back((h, label));
        }
        let finished = sa.is_finished();
        let half_open = sa.is_half_open();
        let spis = if finished { Vec::new() } else { sa.local_spis() };
        for old in self.spis_of.remove(&h).unwrap_or_default() {
            if self.by_spi.get(&old) == Some(&h) {
                self.by_spi.remove(&old);
            }
        }
        for s in &spis {
            self.by_spi.insert(*s, h);
        }
        if half_open {
            self.half_open.insert(h);
        } else {
            self.half_open.remove(&h);
        }
        if finished {
            self.sas.remove(&h);
            if let Some(k) = self.init_of.remove(&h) {
                self.by_init.remove(&k);
            }
        } else {
            self.spis_of.insert(h, spis);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use rand_chacha::ChaCha20Rng;
    use rand_core::Rng;

    use super::*;
    use crate::crypto::dh::DhGroup;
    use crate::ike_sa::ChildSa;
    use crate::ike_sa::IkeSa;
    use crate::message::{Identification, KePayload, SaPayload};
    use crate::sim::{configs, I_ADDR, R_ADDR};
    use crate::test_util::rng;
    use crate::transforms::build_offer;

    /// Two endpoints on a lossless network, with virtual time.
    struct Net {
        now: Instant,
        rng: ChaCha20Rng,
        a: Endpoint,
        b: Endpoint,
        ev_a: Vec<(SaHandle, Event)>,
        ev_b: Vec<(SaHandle, Event)>,
        /// Datagrams b sent (to check the COOKIE exchange).
        sent_by_b: Vec<Transmit>,
    }

    impl Net {
        fn new(a: EndpointConfig, b: EndpointConfig) -> Self {
            Net {
                now: Instant::now(),
                rng: rng(7),
                a: Endpoint::new(a),
                b: Endpoint::new(b),
                ev_a: Vec::new(),
                ev_b: Vec::new(),
                sent_by_b: Vec::new(),
            }
        }

        fn drive(&mut self) {
            loop {
                let mut moved = false;
                while let Some(t) = self.a.poll_transmit(self.now) {
                    if t.remote.ip() == R_ADDR.ip() {
                        self.b.handle(self.now, t.remote, t.local, &t.payload, &mut self.rng);
                    }
                    moved = true;
                }
                while let Some(t) = self.b.poll_transmit(self.now) {
                    self.sent_by_b.push(t.clone());
                    if t.remote.ip() == I_ADDR.ip() {
                        self.a.handle(self.now, t.remote, t.local, &t.payload, &mut self.rng);
                    }
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            while let Some(e) = self.a.poll_event() {
                self.ev_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.ev_b.push(e);
            }
        }

        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                self.drive();
                match [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min() {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        self.a.handle_timeout(self.now, &mut self.rng);
                        self.b.handle_timeout(self.now, &mut self.rng);
                    }
                    _ => {
                        self.now = end;
                        return;
                    }
                }
            }
        }
    }

    fn children(ev: &[(SaHandle, Event)]) -> Vec<ChildSa> {
        ev.iter()
            .filter_map(|(_, e)| match e {
                Event::ChildSaInstalled(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    fn endpoints() -> Net {
        let (ci, cr) = configs();
        Net::new(EndpointConfig::new(Some(ci)), EndpointConfig::new(Some(cr)))
    }

    #[test]
    fn connect_and_respond_through_endpoints() {
        let mut n = endpoints();
        let (ci, _) = configs();
        let h = n.a.connect(ci, I_ADDR, R_ADDR, n.now, &mut rng(1));
        n.drive();
        assert!(n.a.ike_sa(h).unwrap().is_established());
        assert_eq!(n.b.len(), 1);
        let hb = n.b.handles().next().unwrap();
        assert!(n.b.ike_sa(hb).unwrap().is_established());
        assert_eq!(n.b.half_open(), 0);
        let (ca, cb) = (children(&n.ev_a), children(&n.ev_b));
        assert_eq!(ca[0].keys, cb[0].keys);
        // IKE SA rekey: the new SPIs are routed, the old ones forgotten.
        let now = n.now;
        n.a.with_sa(h, |sa| sa.rekey_ike(now, &mut rng(2)));
        n.drive();
        let spis = n.a.ike_sa(h).unwrap().spis();
        assert_eq!(spis, n.b.ike_sa(hb).unwrap().spis());
        assert_eq!(n.a.by_spi.len(), 1);
        assert_eq!(n.b.by_spi.len(), 1);
        n.b.with_sa(hb, |sa| sa.create_child(now, None, &mut rng(3)));
        n.drive();
        assert_eq!(children(&n.ev_a).len(), 2);
        // Close: both forget the connection.
        n.a.with_sa(h, |sa| sa.close(now, &mut rng(4)));
        n.drive();
        assert!(n.a.is_empty() && n.b.is_empty());
        assert!(n.a.by_spi.is_empty() && n.b.by_spi.is_empty() && n.b.by_init.is_empty());
        assert!(n.ev_b.iter().any(|(_, e)| *e == Event::Closed));
    }

    #[test]
    fn both_ends_initiating_at_once_keep_two_consistent_ike_sas() {
        let (ci, cr) = configs();
        let mut n = Net::new(EndpointConfig::new(Some(ci.clone())), EndpointConfig::new(Some(cr.clone())));
        let ha = n.a.connect(ci, I_ADDR, R_ADDR, n.now, &mut rng(1));
        let hb = n.b.connect(cr, R_ADDR, I_ADDR, n.now, &mut rng(2));
        n.run(Duration::from_secs(5));
        assert_eq!(n.a.len(), 2);
        assert_eq!(n.b.len(), 2);
        assert!(n.a.ike_sa(ha).unwrap().is_established() && n.b.ike_sa(hb).unwrap().is_established());
        let (ca, cb) = (children(&n.ev_a), children(&n.ev_b));
        assert_eq!(ca.len(), 2);
        for c in &ca {
            let d = cb.iter().find(|d| (d.spi_i, d.spi_r) == (c.spi_i, c.spi_r)).unwrap();
            assert_eq!(c.keys, d.keys);
        }
    }

    #[test]
    fn cookie_under_a_flood_of_spoofed_half_open_requests() {
        let (ci, cr) = configs();
        let mut cfg = EndpointConfig::new(Some(cr));
        cfg.cookie_threshold = 10;
        cfg.max_half_open = 50;
        let mut n = Net::new(EndpointConfig::new(None), cfg);
        let mut r = rng(99);
        let group = DhGroup::Ecp256;
        let (_, public) = group.generate(&mut r);
        let mut answered_with_cookie = 0;
        for k in 0..1000u16 {
            // Spoofed sources: random addresses and ports we never hear back from.
            let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, (k >> 8) as u8, k as u8)), 1024 + k);
            let m = Message {
                header: Header {
                    spi_i: 0x1000 + u64::from(k),
                    spi_r: 0,
                    minor_version: 0,
                    exchange_type: ExchangeType::IKE_SA_INIT,
                    flags: Flags { initiator: true, version: false, response: false },
                    message_id: 0,
                },
                payloads: vec![
                    Payload::Sa(SaPayload { proposals: build_offer(&ci.ike_proposals, &[]) }),
                    Payload::Ke(KePayload { dh_group: group.id(), data: public.clone() }),
                    Payload::Nonce(vec![k as u8; 32]),
                ],
            };
            n.b.handle(n.now, R_ADDR, src, &m.emit().unwrap(), &mut r);
            while let Some(t) = n.b.poll_transmit(n.now) {
                let resp = Message::parse(&t.payload).unwrap();
                if resp.notifies(NotifyType::COOKIE).next().is_some() {
                    answered_with_cookie += 1;
                    assert_eq!(resp.payloads.len(), 1, "stateless COOKIE answer");
                }
            }
            assert!(n.b.len() <= 10 && n.b.half_open() <= 10);
        }
        assert_eq!(n.b.half_open(), 10);
        assert_eq!(answered_with_cookie, 990);
        // A legitimate initiator gets a COOKIE, repeats its request with it and gets through.
        let h = n.a.connect(ci, I_ADDR, R_ADDR, n.now, &mut rng(5));
        n.drive();
        assert!(n.a.ike_sa(h).unwrap().is_established());
        let cookie_replies = n
            .sent_by_b
            .iter()
            .filter(|t| Message::parse(&t.payload).is_ok_and(|m| m.notifies(NotifyType::COOKIE).next().is_some()));
        assert_eq!(cookie_replies.count(), 1);
        assert_eq!(n.b.len(), 11);
        // A forged or stale cookie does not pass; half-open SAs expire and the state shrinks.
        n.run(Duration::from_secs(31));
        assert_eq!(n.b.half_open(), 0);
        assert_eq!(n.b.len(), 1);
    }

    #[test]
    fn cookies_are_bound_to_the_request_and_rotate() {
        let (_, cr) = configs();
        let mut ep = Endpoint::new(EndpointConfig::new(Some(cr)));
        let now = Instant::now();
        let mut r = rng(1);
        ep.rotate_secret(now, &mut r);
        let ip = I_ADDR.ip();
        let c = ep.cookie(None, b"nonce", ip, 1).unwrap();
        assert!(ep.cookie_valid(&c, b"nonce", ip, 1));
        assert!(!ep.cookie_valid(&c, b"nonce", ip, 2));
        assert!(!ep.cookie_valid(&c, b"other", ip, 1));
        assert!(!ep.cookie_valid(&c, b"nonce", R_ADDR.ip(), 1));
        assert!(!ep.cookie_valid(&c[..10], b"nonce", ip, 1));
        // Still valid after one rotation, not after two.
        ep.rotate_secret(now + Duration::from_secs(301), &mut r);
        assert!(ep.cookie_valid(&c, b"nonce", ip, 1));
        ep.rotate_secret(now + Duration::from_secs(602), &mut r);
        assert!(!ep.cookie_valid(&c, b"nonce", ip, 1));
    }

    #[test]
    fn invalid_ke_retry_through_endpoints() {
        let (mut ci, mut cr) = configs();
        ci.ike_proposals[0].dh = vec![DhGroup::Modp2048, DhGroup::Ecp384];
        cr.ike_proposals[0].dh = vec![DhGroup::Ecp384];
        let mut n = Net::new(EndpointConfig::new(None), EndpointConfig::new(Some(cr)));
        let h = n.a.connect(ci, I_ADDR, R_ADDR, n.now, &mut rng(1));
        n.drive();
        assert!(n.a.ike_sa(h).unwrap().is_established());
        assert_eq!(n.b.len(), 1, "the rejected first attempt left no state");
    }

    #[test]
    fn garbage_never_creates_state() {
        let (_, cr) = configs();
        let mut ep = Endpoint::new(EndpointConfig::new(Some(cr)));
        let mut r = rng(3);
        let now = Instant::now();
        for len in 0..200usize {
            let mut d = vec![0u8; len];
            r.fill_bytes(&mut d);
            ep.handle(now, R_ADDR, I_ADDR, &d, &mut r);
            if len >= 28 {
                // A plausible header with an unknown SPI.
                d[17] = 0x20;
                d[18] = 37;
                ep.handle(now, R_ADDR, I_ADDR, &d, &mut r);
            }
        }
        assert!(ep.is_empty());
    }

    /// Writes seed inputs for the `responder` fuzz target (set `IKE_FUZZ_SEEDS` to a folder):
    /// whole exchanges an initiator runs against an endpoint set up exactly as in the target
    /// (same configuration, same RNG seed), so the recorded messages authenticate there and the
    /// fuzzer starts deep inside the state machine. Also checks that the replay gets there.
    #[test]
    fn fuzz_seed_corpus() {
        use crate::message::TrafficSelector;
        use rand_core::SeedableRng;

        let mut cfg = Config::new(b"fuzz-psk");
        cfg.local_ts = vec![TrafficSelector::any_v4()];
        cfg.remote_ts = vec![TrafficSelector::any_v4()];
        let mut ec = EndpointConfig::new(Some(cfg.clone()));
        ec.cookie_threshold = 4;
        ec.max_half_open = 8;
        ec.max_sas = 16;
        let mut ep = Endpoint::new(ec);
        let mut ep_rng = ChaCha20Rng::seed_from_u64(1);
        let now = Instant::now();
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), 500);
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 500);
        let mut i_rng = rng(11);
        let mut i = IkeSa::initiate(cfg, remote, local, now, &mut i_rng);
        let mut records: Vec<u8> = Vec::new();
        let mut seeds = Vec::new();
        let mut step = |i: &mut IkeSa, ep: &mut Endpoint, records: &mut Vec<u8>, i_rng: &mut ChaCha20Rng| {
            while let Some(t) = i.poll_transmit(now) {
                records.push(0);
                records.extend_from_slice(&u16::try_from(t.payload.len()).unwrap().to_be_bytes());
                records.extend_from_slice(&t.payload);
                ep.handle(now, local, remote, &t.payload, &mut ep_rng);
                while let Some(back) = ep.poll_transmit(now) {
                    ep.handle(now, back.local, back.remote, &back.payload, &mut ep_rng);
                    i.handle(now, back.remote, back.local, &back.payload, i_rng);
                }
            }
        };
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        assert!(i.is_established());
        seeds.push(("handshake", records.clone()));
        let spi = i.child_sas().next().unwrap().inbound_spi();
        i.rekey_child(now, spi, &mut i_rng);
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        seeds.push(("child_rekey", records.clone()));
        i.create_child(now, None, &mut i_rng);
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        i.rekey_ike(now, &mut i_rng);
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        seeds.push(("ike_rekey", records.clone()));
        i.close(now, &mut i_rng);
        step(&mut i, &mut ep, &mut records, &mut i_rng);
        assert_eq!(i.state_name(), "Closed");
        assert!(ep.is_empty());
        seeds.push(("close", records));
        if let Ok(dir) = std::env::var("IKE_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(format!("{dir}/{name}"), bytes).unwrap();
            }
        }
    }

    /// Several responder configurations behind one endpoint (as with several `%any` connections):
    /// each initiator lands on the configuration of its IDi and PSK, with that configuration's
    /// subnets (narrowed), and an unknown identity gets AUTHENTICATION_FAILED.
    #[test]
    fn responder_picks_its_configuration_by_idi_and_psk() {
        use crate::ike_sa::Failure;
        use crate::message::NotifyType;
        use crate::sim::{config, net};
        use crate::ts::tests::v4;

        let own = config("gw.example", "alice.example", b"p-alice", 2, 1);
        let mut carol_r = config("gw.example", "carol.example", b"p-carol", 4, 3);
        carol_r.local_ts = vec![net(4), net(7)];
        let mut any_r = config("gw.example", "-", b"p-any", 6, 5);
        any_r.remote_id = None;
        let mut n = Net::new(EndpointConfig::new(None), EndpointConfig::new(Some(own)));
        // Eve's connection does not allow the IKE suite negotiated in IKE_SA_INIT (ECP-256, from
        // the endpoint's own configuration): she is refused although her ID and PSK match.
        let mut eve_r = config("gw.example", "eve.example", b"p-eve", 8, 9);
        eve_r.ike_proposals[0].dh = vec![DhGroup::Modp2048];
        n.b.set_responder_alternatives(vec![
            Alternative { label: "any".into(), config: any_r },
            Alternative { label: "carol".into(), config: carol_r },
            Alternative { label: "eve".into(), config: eve_r },
        ]);

        let alice = config("alice.example", "gw.example", b"p-alice", 1, 2);
        let mut carol = config("carol.example", "gw.example", b"p-carol", 3, 4);
        carol.remote_ts = vec![v4([10, 0, 0, 0], [10, 255, 255, 255])]; // narrowed by the responder
        let dave = config("dave.example", "gw.example", b"p-any", 5, 6);
        let mallory = config("mallory.example", "gw.example", b"p-carol", 3, 4);
        let carol_wrong_psk = config("carol.example", "gw.example", b"p-alice", 3, 4);
        let eve = config("eve.example", "gw.example", b"p-eve", 9, 8);

        let mut handles = Vec::new();
        for c in [alice, carol, dave, mallory, carol_wrong_psk, eve] {
            let now = n.now;
            handles.push(n.a.connect(c, I_ADDR, R_ADDR, now, &mut n.rng));
            n.drive();
        }
        let up: Vec<bool> = handles.iter().map(|h| n.a.ike_sa(*h).is_some_and(IkeSa::is_established)).collect();
        assert_eq!(up, [true, true, true, false, false, false]);
        let failed = n
            .ev_a
            .iter()
            .filter(|(_, e)| *e == Event::Failed(Failure::PeerError(NotifyType::AUTHENTICATION_FAILED)))
            .count();
        assert_eq!(failed, 3, "{:?}", n.ev_a);

        // Responder side: which configuration each SA took, and the selectors of its Child SA.
        let mut switched = Vec::new();
        while let Some(s) = n.b.poll_switched() {
            switched.push(s);
        }
        let labels: Vec<&str> = switched.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["carol", "any"], "alice keeps the endpoint's own configuration");
        let child_of = |h: SaHandle| -> ChildSa {
            n.ev_b
                .iter()
                .find_map(|(x, e)| match e {
                    Event::ChildSaInstalled(c) if *x == h => Some(c.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let carol_h = switched[0].0;
        let dave_h = switched[1].0;
        let b_handles: Vec<SaHandle> = n.b.handles().collect();
        let alice_h = *b_handles.iter().find(|h| **h != carol_h && **h != dave_h).unwrap();
        assert_eq!(b_handles.len(), 3);
        assert_eq!((child_of(alice_h).local_ts(), child_of(alice_h).remote_ts()), (&[net(2)][..], &[net(1)][..]));
        assert_eq!(child_of(carol_h).local_ts(), &[net(4), net(7)][..]);
        assert_eq!(child_of(carol_h).remote_ts(), &[net(3)][..]);
        assert_eq!((child_of(dave_h).local_ts(), child_of(dave_h).remote_ts()), (&[net(6)][..], &[net(5)][..]));
        let carol_cfg = n.b.ike_sa(carol_h).unwrap().config();
        assert_eq!(carol_cfg.remote_id, Some(Identification::Fqdn(b"carol.example".to_vec())));
        assert_eq!(carol_cfg.psk.expose(), b"p-carol");
        // The initiators see the same narrowed selectors.
        let carol_i = children(&n.ev_a).into_iter().find(|c| c.local_ts() == [net(3)]).unwrap();
        assert_eq!(carol_i.remote_ts(), &[net(4), net(7)][..]);

        // Moving carol's SA to another endpoint (the daemon's per-connection endpoints): its SPIs
        // follow it, and later exchanges reach it there.
        let mut other = Endpoint::new(EndpointConfig::new(None));
        let moved = n.b.detach(carol_h).unwrap();
        assert!(n.b.ike_sa(carol_h).is_none());
        let new_h = other.attach(moved);
        let before = other.ike_sa(new_h).unwrap().child_sas().count();
        let now = n.now;
        n.a.with_sa(handles[1], |sa| {
            let spi = sa.child_sas().next().unwrap().inbound_spi();
            sa.rekey_child(now, spi, &mut rng(9));
        });
        // Hand-deliver between a and `other` (the Net only knows b).
        for _ in 0..4 {
            while let Some(t) = n.a.poll_transmit(now) {
                other.handle(now, t.remote, t.local, &t.payload, &mut n.rng);
            }
            while let Some(t) = other.poll_transmit(now) {
                n.a.handle(now, t.remote, t.local, &t.payload, &mut n.rng);
            }
        }
        let mut rekeyed = false;
        while let Some((h, e)) = other.poll_event() {
            assert_eq!(h, new_h);
            rekeyed |= matches!(e, Event::ChildSaInstalled(_));
        }
        assert!(rekeyed, "the moved SA answered the rekey");
        assert!(other.ike_sa(new_h).unwrap().child_sas().count() >= before);
    }
}
