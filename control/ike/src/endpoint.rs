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
//! Child SA (consistently on both ends: each end has one as initiator, one as responder, with
//! identical keys). RFC 7296 gives no rule for this case; the endpoint converges on one:
//!
//! * **Which one.** Two established IKE SAs are duplicates when they have the same peer (address
//!   and authenticated identity) and the same configured identities and subnets. Of duplicates,
//!   the one whose smaller IKE_SA_INIT nonce is the lowest is redundant (the idea of §2.8.1 for
//!   rekey collisions; [`crate::ike_sa::duplicate_is_redundant`]). Nonces are public and the
//!   same on both ends, and do not change across IKE SA rekeys, so both ends always agree on the
//!   survivor.
//! * **Who deletes it.** The initiator of the redundant IKE SA deletes it at once (INFORMATIONAL
//!   DELETE of the IKE SA, which takes its Child SAs along). Its responder waits
//!   [`EndpointConfig::duplicate_grace`] for that DELETE and then deletes it itself, which
//!   converges against peers that keep duplicates (strongSwan's default). If both DELETEs cross,
//!   each end answers the other's (§1.4.1) and both end without the SA, without errors; a DELETE
//!   whose answer is lost still ends in [`Event::Closed`].
//! * **Never both.** The redundant SA is deleted only while its survivor is established and not
//!   being deleted, and (not to lose the last Child SA) only if the survivor has a Child SA or
//!   the redundant one has none. The peer must be known to hold the survivor
//!   ([`IkeSa::is_confirmed_by_peer`]): when we only answered its IKE_AUTH, a liveness check on
//!   the survivor is sent first and the deletion follows its answer (if the survivor dies of it,
//!   the other SA stays); this also keeps traffic from moving to a Child SA the peer has not
//!   installed yet. While an IKE SA rekey of either is under way (it could still
//!   fail and take its SA with it, or cross the DELETE), the deletion waits and is looked at again
//!   every second; so it is if a DELETE did not end the SA. If the survivor goes away first, the
//!   other SA is no longer redundant and stays.
//! * **Reporting.** Each decision is reported by [`Endpoint::poll_duplicate`] (deleting now,
//!   waiting for the peer, deleting after the grace period), before the DELETE is taken with
//!   [`Endpoint::poll_transmit`], so the daemon can move the data plane to the survivor's Child
//!   SA first; [`Endpoint::survivor_of`] tells the survivor of a redundant SA.
//!   [`EndpointConfig::resolve_duplicates`] = `false` keeps duplicates (tests emulate strongSwan so).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::ike_sa::{duplicate_is_redundant, Alternative, Event, IkeSa, Transmit};
use crate::message::{
    ExchangeType, Flags, Header, Identification, Message, NotifyPayload, NotifyType, Payload, PayloadType,
    TrafficSelector,
};

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
    /// Apply the duplicate rule (see "Both ends initiating at once" in the module documentation);
    /// `false` keeps duplicates side by side, as strongSwan does by default.
    pub resolve_duplicates: bool,
    /// How long the *responder* of a redundant IKE SA leaves its deletion to the peer (the SA's
    /// initiator) before deleting it itself.
    pub duplicate_grace: Duration,
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
            resolve_duplicates: true,
            duplicate_grace: DUPLICATE_GRACE,
        }
    }
}

/// Default [`EndpointConfig::duplicate_grace`].
pub const DUPLICATE_GRACE: Duration = Duration::from_secs(3);
/// A redundant IKE SA that cannot be deleted yet (see [`Endpoint::poll_duplicate`]) is looked at
/// again this often; so is one whose DELETE is in flight.
const DUPLICATE_RECHECK: Duration = Duration::from_secs(1);

/// What makes two established IKE SAs duplicates: the same peer (address and authenticated
/// identity) and the same configured identities and subnets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PeerKey {
    remote: IpAddr,
    peer_id: Option<Identification>,
    local_id: Option<Identification>,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
}

impl PeerKey {
    fn of(sa: &IkeSa) -> Self {
        let c = sa.config();
        PeerKey {
            remote: sa.remote_addr().ip(),
            peer_id: sa.peer_id().cloned(),
            local_id: c.local_id.clone(),
            local_ts: c.local_ts.clone(),
            remote_ts: c.remote_ts.clone(),
        }
    }
}

/// A redundant IKE SA, until it is gone.
struct DupState {
    survivor: SaHandle,
    /// When to (try to) delete it, or to look at it again.
    act_at: Instant,
    /// We are its responder: the deletion is the peer's first (grace period).
    grace: bool,
    /// Waiting for the peer to confirm the survivor (a liveness check is out).
    confirming: bool,
}

/// A decision of the endpoint about an IKE SA that duplicates another one of the same connection
/// (both ends initiated at once), from [`Endpoint::poll_duplicate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The redundant IKE SA.
    pub redundant: SaHandle,
    /// Its (SPIi, SPIr).
    pub redundant_spis: (u64, u64),
    /// The IKE SA that is kept.
    pub survivor: SaHandle,
    /// Its (SPIi, SPIr).
    pub survivor_spis: (u64, u64),
    /// What happens to the redundant one.
    pub action: DuplicateAction,
}

/// See [`Duplicate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DuplicateAction {
    /// We initiated it: its DELETE is queued now.
    Deleting,
    /// The peer initiated it and should delete it; we do if it has not after the grace period.
    AwaitingPeer {
        /// The grace period.
        grace: Duration,
    },
    /// The peer initiated it and did not delete it within the grace period: its DELETE is queued
    /// now.
    DeletingAfterGrace,
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
    /// Established SAs and their duplicate key.
    peers: HashMap<SaHandle, PeerKey>,
    by_peer: HashMap<PeerKey, Vec<SaHandle>>,
    /// SAs whose group must be looked at for duplicates, and from when.
    to_check: Vec<SaHandle>,
    check_at: Option<Instant>,
    /// Redundant SAs, until they are gone.
    dups: HashMap<SaHandle, DupState>,
    duplicates: VecDeque<Duplicate>,
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
            peers: HashMap::new(),
            by_peer: HashMap::new(),
            to_check: Vec::new(),
            check_at: None,
            dups: HashMap::new(),
            duplicates: VecDeque::new(),
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
        self.forget_peer(h);
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

    /// Whether a message addressed to our IKE SPI `spi` belongs to one of this endpoint's
    /// connections (what [`Endpoint::handle`] routes by; constant time in the number of SAs).
    #[must_use]
    pub fn routes_spi(&self, spi: u64) -> bool {
        self.by_spi.contains_key(&spi)
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
        let dups = self.dups.values().map(|d| d.act_at).chain(self.check_at);
        self.sas.values().filter_map(IkeSa::poll_timeout).chain(dups).min()
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
        self.resolve_duplicates(now, rng);
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
        self.resolve_duplicates(now, rng);
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

    /// The next decision about a duplicate IKE SA (both ends initiated at once; see the module
    /// documentation). A daemon polls this before [`Endpoint::poll_transmit`]: when the action
    /// deletes, the DELETE is among the transmits, and the data plane should send on the
    /// survivor's Child SAs before it leaves.
    pub fn poll_duplicate(&mut self) -> Option<Duplicate> {
        self.duplicates.pop_front()
    }

    /// If `h` is a redundant IKE SA (being deleted, or waiting for the peer to delete it): the
    /// IKE SA that is kept instead.
    #[must_use]
    pub fn survivor_of(&self, h: SaHandle) -> Option<SaHandle> {
        self.dups.get(&h).map(|d| d.survivor)
    }

    /// `h` is gone (finished or detached): out of its duplicate group; decisions that kept an SA
    /// because of it are reconsidered.
    fn forget_peer(&mut self, h: SaHandle) {
        self.dups.remove(&h);
        self.to_check.retain(|x| *x != h);
        let Some(key) = self.peers.remove(&h) else {
            return;
        };
        if let Some(g) = self.by_peer.get_mut(&key) {
            g.retain(|x| *x != h);
            if g.is_empty() {
                self.by_peer.remove(&key);
            }
        }
        let orphans: Vec<SaHandle> = self.dups.iter().filter(|(_, d)| d.survivor == h).map(|(r, _)| *r).collect();
        for r in orphans {
            // Its survivor went away: it is no longer redundant (unless another one is).
            self.dups.remove(&r);
            self.to_check.push(r);
        }
    }

    fn spis_of_sa(&self, h: SaHandle) -> (u64, u64) {
        self.sas.get(&h).map_or((0, 0), IkeSa::spis)
    }

    /// Applies the duplicate rule to the groups that gained an established SA, then acts on the
    /// redundant SAs that are due.
    fn resolve_duplicates<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.check_at = None;
        let checks = core::mem::take(&mut self.to_check);
        if !self.config.resolve_duplicates {
            return;
        }
        for h in checks {
            let Some(key) = self.peers.get(&h) else {
                continue;
            };
            let live = |g: &SaHandle| self.sas.get(g).is_some_and(|sa| sa.is_established() && !sa.is_closing());
            let members: Vec<SaHandle> =
                self.by_peer.get(key).map(|g| g.iter().copied().filter(live).collect()).unwrap_or_default();
            if members.len() < 2 {
                continue;
            }
            let nonces = |g: SaHandle| self.sas[&g].nonces();
            let Some(survivor) =
                members.iter().copied().reduce(|a, b| if duplicate_is_redundant(nonces(a), nonces(b)) { b } else { a })
            else {
                continue;
            };
            for r in members {
                if r == survivor || !duplicate_is_redundant(nonces(r), nonces(survivor)) {
                    continue;
                }
                if self.dups.get(&r).is_some_and(|d| d.survivor == survivor) {
                    continue;
                }
                let grace = !self.sas[&r].is_initiator();
                let act_at = if grace { now + self.config.duplicate_grace } else { now };
                self.dups.insert(r, DupState { survivor, act_at, grace, confirming: false });
                if grace {
                    self.duplicates.push_back(Duplicate {
                        redundant: r,
                        redundant_spis: self.spis_of_sa(r),
                        survivor,
                        survivor_spis: self.spis_of_sa(survivor),
                        action: DuplicateAction::AwaitingPeer { grace: self.config.duplicate_grace },
                    });
                }
            }
        }
        for d in self.dups.values_mut() {
            if d.confirming && self.sas.get(&d.survivor).is_some_and(IkeSa::is_confirmed_by_peer) {
                // The answer to our liveness check on the survivor: act now.
                d.confirming = false;
                d.act_at = now;
            }
        }
        let mut due: Vec<SaHandle> = self.dups.iter().filter(|(_, d)| d.act_at <= now).map(|(r, _)| *r).collect();
        due.sort();
        for r in due {
            self.act_on_duplicate(r, now, rng);
        }
    }

    /// Deletes redundant SA `r` if that is safe now, else looks at it again later.
    fn act_on_duplicate<R: CryptoRng + ?Sized>(&mut self, r: SaHandle, now: Instant, rng: &mut R) {
        let Some(d) = self.dups.get(&r) else {
            return;
        };
        let (survivor, grace) = (d.survivor, d.grace);
        let (Some(rs), Some(ss)) = (self.sas.get(&r), self.sas.get(&survivor)) else {
            self.dups.remove(&r);
            return;
        };
        if !ss.is_established() || ss.is_closing() {
            // Never lose both: without a survivor the SA is no longer redundant.
            self.dups.remove(&r);
            return;
        }
        let wait = rs.is_closing()
            // A rekey of either SA under way could still fail (and take that SA with it) or cross
            // our DELETE: decide once it is over.
            || rs.is_rekeying_ike()
            || ss.is_rekeying_ike()
            // Never lose the last Child SA.
            || (ss.child_sas().next().is_none() && rs.child_sas().next().is_some());
        // The peer may not hold the survivor yet (we answered its IKE_AUTH; the answer may still be
        // on its way, or lost): ask, and delete once it answered (or keep the redundant SA if the
        // survivor dies of it). Traffic moved to the survivor before would be lost.
        let unconfirmed = !ss.is_confirmed_by_peer();
        if let Some(d) = self.dups.get_mut(&r) {
            d.act_at = now + DUPLICATE_RECHECK;
            d.confirming = unconfirmed;
        }
        if unconfirmed && !wait {
            if let Some(sa) = self.sas.get_mut(&survivor) {
                sa.check_liveness(now, rng);
            }
            self.sync(survivor);
        }
        if wait || unconfirmed {
            return;
        }
        self.duplicates.push_back(Duplicate {
            redundant: r,
            redundant_spis: self.spis_of_sa(r),
            survivor,
            survivor_spis: self.spis_of_sa(survivor),
            action: if grace { DuplicateAction::DeletingAfterGrace } else { DuplicateAction::Deleting },
        });
        if let Some(sa) = self.sas.get_mut(&r) {
            sa.close(now, rng);
        }
        self.sync(r);
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
        let established = sa.is_established();
        let half_open = sa.is_half_open();
        if established && !self.peers.contains_key(&h) {
            let key = PeerKey::of(sa);
            let at = sa.last_now();
            self.by_peer.entry(key.clone()).or_default().push(h);
            self.peers.insert(h, key);
            self.to_check.push(h);
            self.check_at = Some(self.check_at.map_or(at, |t| t.min(at)));
        }
        let spis = if finished { Vec::new() } else { sa.local_spis() };
        // Most calls change nothing (the SPIs change at set-up, IKE rekeys and the end): then
        // the routing table is left alone.
        let unchanged = !finished && self.spis_of.get(&h).is_some_and(|old| *old == spis);
        if !unchanged {
            for old in self.spis_of.remove(&h).unwrap_or_default() {
                if self.by_spi.get(&old) == Some(&h) {
                    self.by_spi.remove(&old);
                }
            }
            for s in &spis {
                self.by_spi.insert(*s, h);
            }
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
            self.forget_peer(h);
        } else if !unchanged {
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
    use crate::sim::{configs, Chaos, I_ADDR, R_ADDR};
    use crate::test_util::rng;
    use crate::transforms::build_offer;
    use std::collections::HashSet;

    /// A datagram on its way: (due, towards b, sequence, datagram).
    type InFlight = (Instant, bool, u64, Transmit);

    /// Two endpoints on a network with virtual time: lossless and immediate unless `chaos` or
    /// `latency` say otherwise; `filter` drops the datagrams it returns `true` for.
    struct Net {
        now: Instant,
        rng: ChaCha20Rng,
        a: Endpoint,
        b: Endpoint,
        ev_a: Vec<(SaHandle, Event)>,
        ev_b: Vec<(SaHandle, Event)>,
        /// Duplicate decisions, with when they were polled.
        dup_a: Vec<(Instant, Duplicate)>,
        dup_b: Vec<(Instant, Duplicate)>,
        /// Datagrams b sent (to check the COOKIE exchange).
        sent_by_b: Vec<Transmit>,
        flight: Vec<InFlight>,
        seq: u64,
        latency: Duration,
        chaos: Option<(Chaos, ChaCha20Rng)>,
        #[allow(clippy::type_complexity)]
        filter: Option<Box<dyn Fn(bool, &Transmit) -> bool>>,
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
                dup_a: Vec::new(),
                dup_b: Vec::new(),
                sent_by_b: Vec::new(),
                flight: Vec::new(),
                seq: 0,
                latency: Duration::ZERO,
                chaos: None,
                filter: None,
            }
        }

        fn send(&mut self, to_b: bool, t: Transmit) {
            if self.filter.as_ref().is_some_and(|f| f(to_b, &t)) {
                return;
            }
            let mut at = self.now + self.latency;
            let mut copies = 1;
            if let Some((c, r)) = self.chaos.as_mut() {
                let x = r.next_u32() % 1000;
                if x < c.drop {
                    return;
                }
                if x < c.drop + c.dup {
                    copies = 2;
                } else if x < c.drop + c.dup + c.delay {
                    at += Duration::from_millis(u64::from(r.next_u32()) % (c.max_delay.as_millis() as u64 + 1));
                }
            }
            for _ in 0..copies {
                self.seq += 1;
                self.flight.push((at, to_b, self.seq, t.clone()));
            }
        }

        fn collect(&mut self) -> bool {
            let mut moved = false;
            while let Some(d) = self.a.poll_duplicate() {
                self.dup_a.push((self.now, d));
            }
            while let Some(d) = self.b.poll_duplicate() {
                self.dup_b.push((self.now, d));
            }
            while let Some(t) = self.a.poll_transmit(self.now) {
                if t.remote.ip() == R_ADDR.ip() {
                    self.send(true, t);
                }
                moved = true;
            }
            while let Some(t) = self.b.poll_transmit(self.now) {
                self.sent_by_b.push(t.clone());
                if t.remote.ip() == I_ADDR.ip() {
                    self.send(false, t);
                }
                moved = true;
            }
            while let Some(e) = self.a.poll_event() {
                self.ev_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.ev_b.push(e);
            }
            moved
        }

        /// Delivers everything due, in order, until the network is quiet at the current time.
        fn drive(&mut self) {
            loop {
                self.collect();
                let next = (0..self.flight.len())
                    .filter(|k| self.flight[*k].0 <= self.now)
                    .min_by_key(|k| (self.flight[*k].0, self.flight[*k].2));
                let Some(k) = next else {
                    break;
                };
                let (_, to_b, _, t) = self.flight.remove(k);
                if to_b {
                    self.b.handle(self.now, t.remote, t.local, &t.payload, &mut self.rng);
                } else {
                    self.a.handle(self.now, t.remote, t.local, &t.payload, &mut self.rng);
                }
            }
        }

        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                self.drive();
                let next = [self.a.poll_timeout(), self.b.poll_timeout(), self.flight.iter().map(|f| f.0).min()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        if self.a.poll_timeout().is_some_and(|x| x <= self.now) {
                            self.a.handle_timeout(self.now, &mut self.rng);
                        }
                        if self.b.poll_timeout().is_some_and(|x| x <= self.now) {
                            self.b.handle_timeout(self.now, &mut self.rng);
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
        let old = n.a.ike_sa(h).unwrap().spis();
        assert!(n.a.routes_spi(old.0) && n.b.routes_spi(old.1) && !n.b.routes_spi(old.0));
        let now = n.now;
        n.a.with_sa(h, |sa| sa.rekey_ike(now, &mut rng(2)));
        n.drive();
        let spis = n.a.ike_sa(h).unwrap().spis();
        assert_eq!(spis, n.b.ike_sa(hb).unwrap().spis());
        assert_eq!(n.a.by_spi.len(), 1);
        assert_eq!(n.b.by_spi.len(), 1);
        assert!(n.a.routes_spi(spis.0) && n.b.routes_spi(spis.1));
        assert!(!n.a.routes_spi(old.0) && !n.b.routes_spi(old.1));
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

    /// The Child SAs installed and not deleted, according to the events.
    fn live(ev: &[(SaHandle, Event)]) -> Vec<ChildSa> {
        let mut v: Vec<ChildSa> = Vec::new();
        for (_, e) in ev {
            match e {
                Event::ChildSaInstalled(c) => v.push(c.clone()),
                Event::ChildSaDeleted { spi_in, .. } => v.retain(|c| c.inbound_spi() != *spi_in),
                _ => {}
            }
        }
        v
    }

    fn failed(ev: &[(SaHandle, Event)]) -> bool {
        ev.iter().any(|(_, e)| matches!(e, Event::Failed(_) | Event::PeerDead))
    }

    /// Both ends hold exactly one established IKE SA, the same one, with one Child SA with the
    /// same keys on both ends; returns its SPIs.
    fn assert_converged(n: &Net, allow_failures: bool) -> (u64, u64) {
        assert_eq!((n.a.len(), n.b.len()), (1, 1), "one IKE SA on each end");
        let sa_a = n.a.ike_sa(n.a.handles().next().unwrap()).unwrap();
        let sa_b = n.b.ike_sa(n.b.handles().next().unwrap()).unwrap();
        assert!(sa_a.is_established() && sa_b.is_established());
        assert_eq!(sa_a.spis(), sa_b.spis(), "the same IKE SA");
        let (la, lb) = (live(&n.ev_a), live(&n.ev_b));
        assert_eq!((la.len(), lb.len()), (1, 1), "one Child SA on each end");
        assert_eq!((la[0].spi_i, la[0].spi_r), (lb[0].spi_i, lb[0].spi_r));
        assert_eq!(la[0].keys, lb[0].keys, "identical Child SA keys");
        assert_eq!(la[0].inbound_keys(), lb[0].outbound_keys());
        let held: Vec<(u32, u32)> = sa_a.child_sas().map(|c| (c.spi_i, c.spi_r)).collect();
        assert_eq!(held, [(la[0].spi_i, la[0].spi_r)], "the Child SA is the surviving IKE SA's");
        if !allow_failures {
            assert!(!failed(&n.ev_a) && !failed(&n.ev_b), "{:?} {:?}", n.ev_a, n.ev_b);
        }
        assert!(n.a.dups.is_empty() && n.b.dups.is_empty() && n.a.peers.len() == 1 && n.b.peers.len() == 1);
        sa_a.spis()
    }

    /// Checks every decision against the rule when it is polled (both SAs still exist then).
    fn check_rule(ep: &Endpoint, d: &Duplicate) {
        let r = ep.ike_sa(d.redundant).unwrap().nonces();
        let s = ep.ike_sa(d.survivor).unwrap().nonces();
        assert!(r.0.min(r.1) < s.0.min(s.1), "the redundant SA has the lowest nonce");
        assert!(crate::ike_sa::duplicate_is_redundant(r, s) && !crate::ike_sa::duplicate_is_redundant(s, r));
        assert_eq!(ep.survivor_of(d.redundant), Some(d.survivor));
    }

    /// Both ends `connect` at once with RNG seed `seed`; the rule on b as `b_rule` says.
    fn simultaneous(seed: u64, b_rule: bool, grace: Duration) -> Net {
        let (ci, cr) = configs();
        let mut ca = EndpointConfig::new(Some(ci.clone()));
        ca.duplicate_grace = grace;
        let mut cb = EndpointConfig::new(Some(cr.clone()));
        cb.duplicate_grace = grace;
        cb.resolve_duplicates = b_rule;
        let mut n = Net::new(ca, cb);
        n.rng = rng(1000 + seed);
        n.a.connect(ci, I_ADDR, R_ADDR, n.now, &mut rng(100 + seed));
        n.b.connect(cr, R_ADDR, I_ADDR, n.now, &mut rng(200 + seed));
        n
    }

    fn actions(d: &[(Instant, Duplicate)]) -> Vec<DuplicateAction> {
        d.iter().map(|(_, x)| x.action).collect()
    }

    /// Runs and checks every decision against the rule as it is made.
    fn run_checked(n: &mut Net, d: Duration) {
        let end = n.now + d;
        let (mut seen_a, mut seen_b) = (0, 0);
        while n.now < end {
            n.run(Duration::from_millis(10).min(end - n.now));
            // Decisions are polled before the DELETE leaves, so both SAs exist here.
            for (_, x) in &n.dup_a[seen_a..] {
                if n.a.ike_sa(x.redundant).is_some() && n.a.ike_sa(x.survivor).is_some() {
                    check_rule(&n.a, x);
                }
            }
            for (_, x) in &n.dup_b[seen_b..] {
                if n.b.ike_sa(x.redundant).is_some() && n.b.ike_sa(x.survivor).is_some() {
                    check_rule(&n.b, x);
                }
            }
            (seen_a, seen_b) = (n.dup_a.len(), n.dup_b.len());
        }
    }

    #[test]
    fn duplicate_rule_is_a_strict_order_on_nonces() {
        use crate::ike_sa::duplicate_is_redundant as red;
        let (lo, mid, hi) = (&[1u8, 9][..], &[2u8, 0][..], &[2u8, 0, 0][..]);
        assert!(!red((mid, hi), (lo, hi)) && red((lo, hi), (mid, hi)));
        // Byte strings: a proper prefix is lower.
        assert!(red((mid, &[9u8; 4][..]), (hi, &[9u8; 4][..])));
        // The smaller nonce decides, whichever of Ni/Nr it is; then the larger one.
        assert!(red((hi, lo), (mid, mid)));
        assert!(red((lo, mid), (hi, lo)));
        // Identical nonces: neither is redundant.
        assert!(!red((lo, hi), (hi, lo)) && !red((hi, lo), (lo, hi)));
    }

    /// Both ends initiate at once: the initiator of the SA with the lowest nonce deletes it
    /// (taking its Child SA along); the other end waits (and has nothing to do). Both ends keep
    /// the same SA, whichever end initiated it.
    #[test]
    fn both_ends_initiating_at_once_converge_on_one_ike_sa() {
        let mut kept_initiated_by = HashSet::new();
        for seed in 0..8 {
            let mut n = simultaneous(seed, true, DUPLICATE_GRACE);
            run_checked(&mut n, Duration::from_secs(10));
            let spis = assert_converged(&n, false);
            let (deleter, waiter) = if n.dup_a.iter().any(|(_, d)| d.action == DuplicateAction::Deleting) {
                (&n.dup_a, &n.dup_b)
            } else {
                (&n.dup_b, &n.dup_a)
            };
            assert_eq!(actions(deleter), [DuplicateAction::Deleting], "seed {seed}");
            assert_eq!(actions(waiter), [DuplicateAction::AwaitingPeer { grace: DUPLICATE_GRACE }], "seed {seed}");
            // The same decision on both ends, and the kept SA is the survivor.
            assert_eq!(deleter[0].1.redundant_spis, waiter[0].1.redundant_spis);
            assert_eq!(deleter[0].1.survivor_spis, spis);
            assert_eq!(waiter[0].1.survivor_spis, spis);
            // Within a round trip (lossless, no latency: at once), no grace period needed.
            assert_eq!(deleter[0].0, waiter[0].0);
            let closed = |ev: &[(SaHandle, Event)]| ev.iter().filter(|(_, e)| *e == Event::Closed).count();
            assert_eq!((closed(&n.ev_a), closed(&n.ev_b)), (1, 1));
            kept_initiated_by.insert(n.a.ike_sa(n.a.handles().next().unwrap()).unwrap().is_initiator());
        }
        assert_eq!(kept_initiated_by.len(), 2, "seeds cover both ends' SA surviving");
    }

    #[test]
    fn both_ends_initiating_at_once_converge_over_a_bad_network() {
        let chaos = Chaos { drop: 100, dup: 100, delay: 200, max_delay: Duration::from_millis(400) };
        for seed in 0..12 {
            let mut n = simultaneous(seed, true, DUPLICATE_GRACE);
            n.latency = Duration::from_millis(20);
            n.chaos = Some((chaos, rng(500 + seed)));
            run_checked(&mut n, Duration::from_secs(120));
            assert_converged(&n, false);
            let all: Vec<_> = n.dup_a.iter().chain(&n.dup_b).map(|(_, d)| d.redundant_spis).collect();
            assert!(all.windows(2).all(|w| w[0] == w[1]), "one redundant SA, the same on both ends: {all:?}");
        }
    }

    /// The peer keeps duplicates (strongSwan's default): when it initiated the redundant SA, our
    /// end deletes it after the grace period.
    #[test]
    fn duplicate_deleted_by_its_responder_when_the_peer_keeps_it() {
        let mut cases = HashSet::new();
        for seed in 0..8 {
            let mut n = simultaneous(seed, false, DUPLICATE_GRACE);
            run_checked(&mut n, Duration::from_secs(20));
            assert_converged(&n, false);
            assert!(n.dup_b.is_empty());
            let acts = actions(&n.dup_a);
            if acts == [DuplicateAction::Deleting] {
                cases.insert("ours");
            } else {
                assert_eq!(
                    acts,
                    [DuplicateAction::AwaitingPeer { grace: DUPLICATE_GRACE }, DuplicateAction::DeletingAfterGrace],
                    "seed {seed}"
                );
                assert!(n.dup_a[1].0 >= n.dup_a[0].0 + DUPLICATE_GRACE);
                assert_eq!(n.dup_a[0].1.redundant_spis, n.dup_a[1].1.redundant_spis);
                cases.insert("peer's");
            }
        }
        assert_eq!(cases.len(), 2, "seeds cover both ends' SA being redundant");
    }

    /// Both ends delete the redundant SA at the same moment (50 ms one way; the grace period is
    /// the round trip the initiator of the redundant SA spends confirming the survivor): the
    /// DELETEs cross; each answers the other's and both end without it and without errors.
    #[test]
    fn crossing_deletes_of_the_redundant_sa() {
        for seed in 0..4 {
            let mut n = simultaneous(seed, true, Duration::from_millis(100));
            n.latency = Duration::from_millis(50);
            run_checked(&mut n, Duration::from_secs(10));
            assert_converged(&n, false);
            let del = |d: &[(Instant, Duplicate)]| {
                d.iter().find(|(_, x)| !matches!(x.action, DuplicateAction::AwaitingPeer { .. })).cloned()
            };
            let (ta, da) = del(&n.dup_a).unwrap();
            let (tb, db) = del(&n.dup_b).unwrap();
            assert_eq!(da.redundant_spis, db.redundant_spis);
            let gap = if ta > tb { ta - tb } else { tb - ta };
            assert!(gap < n.latency, "both DELETEs were in flight at once");
            let closed = |ev: &[(SaHandle, Event)]| ev.iter().filter(|(_, e)| *e == Event::Closed).count();
            assert_eq!((closed(&n.ev_a), closed(&n.ev_b)), (1, 1));
        }
    }

    /// The initiator of the redundant SA is the responder of the survivor; its IKE_AUTH answer for
    /// the survivor is lost, so the peer does not hold the survivor until it retransmits its
    /// request (0.5 s later). The redundant SA is deleted only after that (a liveness check on the
    /// survivor is answered), never while the peer would be left without a Child SA.
    #[test]
    fn redundant_sa_deleted_only_once_the_peer_holds_the_survivor() {
        let mut tested = 0;
        for seed in 0..16 {
            let mut n = simultaneous(seed, true, DUPLICATE_GRACE);
            let dropped = std::rc::Rc::new(std::cell::Cell::new(false));
            let d2 = dropped.clone();
            n.filter = Some(Box::new(move |to_b, t| {
                let h = Header::peek(&t.payload).unwrap().header;
                let hit = to_b && h.exchange_type == ExchangeType::IKE_AUTH && h.flags.response && !d2.get();
                d2.set(d2.get() || hit);
                hit
            }));
            let t0 = n.now;
            run_checked(&mut n, Duration::from_secs(10));
            assert!(dropped.get());
            assert_converged(&n, false);
            let Some((at, d)) = n.dup_a.iter().find(|(_, d)| d.action == DuplicateAction::Deleting).cloned() else {
                continue; // b initiated the redundant SA: not the case under test.
            };
            assert_ne!(d.survivor, SaHandle(1), "the survivor is the SA b initiated");
            assert!(at >= t0 + Duration::from_millis(500), "deleted {:?} after the start", at - t0);
            tested += 1;
        }
        assert!(tested >= 2, "{tested}");
    }

    /// The redundant SA is not deleted while a rekey of the survivor is in flight: here that
    /// rekey never completes (its answers are lost) and the survivor dies with it, so deleting
    /// the redundant SA at the end of the grace period would have left nothing. It is kept, and
    /// both ends end up with it.
    #[test]
    fn no_deletion_while_the_survivor_is_rekeying() {
        let mut tested = false;
        for seed in 0..16 {
            let mut n = simultaneous(seed, false, DUPLICATE_GRACE);
            n.run(Duration::from_millis(100));
            let Some((_, d)) = n.dup_a.first().cloned() else {
                continue;
            };
            if d.action == DuplicateAction::Deleting {
                continue; // We initiated the redundant SA: no grace period to test.
            }
            let (s, r) = (d.survivor, d.redundant);
            let s_spis = d.survivor_spis;
            n.filter = Some(Box::new(move |to_b, t| {
                let h = Header::peek(&t.payload).unwrap().header;
                !to_b && (h.spi_i, h.spi_r) == s_spis
            }));
            let now = n.now;
            n.a.with_sa(s, |sa| sa.rekey_ike(now, &mut rng(77)));
            n.run(Duration::from_secs(5));
            assert!(n.a.ike_sa(r).is_some(), "the redundant SA waits for the survivor's rekey");
            assert_eq!(actions(&n.dup_a), [DuplicateAction::AwaitingPeer { grace: DUPLICATE_GRACE }]);
            n.run(Duration::from_secs(200));
            assert!(n.ev_a.iter().any(|(h, e)| *h == s && *e == Event::Failed(crate::ike_sa::Failure::Timeout)));
            assert_eq!(actions(&n.dup_a), [DuplicateAction::AwaitingPeer { grace: DUPLICATE_GRACE }]);
            assert_eq!(assert_converged(&n, true), d.redundant_spis, "the formerly redundant SA is kept");
            tested = true;
            break;
        }
        assert!(tested);
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
