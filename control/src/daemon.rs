//! The daemon's event loop: two UDP sockets (IKE 500, NAT-T 4500) bound to the configured local
//! address, the local control socket, the sink's file descriptor (the forwarder's TUN), and the
//! timers of the IKE endpoints.
//!
//! # Why a single-threaded `mio` loop
//!
//! The IKE core is sans-IO and single-owner: every input (datagram, timer, command) must reach the
//! `Endpoint` of its connection in order, and every output (transmits, events) be drained after it.
//! One thread with one readiness poll over four descriptors does exactly that without locks; the
//! poll's timeout is the earliest `poll_timeout` of the endpoints. Plain std sockets with
//! `set_read_timeout` would need a thread per descriptor (or busy polling) as soon as the TUN and
//! the control socket join; `mio` is the minimal portable epoll wrapper (no async runtime).
//!
//! # Transport
//!
//! IKE datagrams come and go through an [`IkeTransport`]: [`UdpTransport`] (our own sockets on
//! 500/4500, [`Daemon::new`]) or the engine's channel when the engine owns the interface and punts
//! IKE to us ([`crate::engine_link`], [`Daemon::with_transport`]). Either way a datagram is the
//! UDP payload as on the wire (non-ESP marker included on the NAT-T port) and goes through the
//! same [`nat::classify`] and dispatch.
//!
//! This module is the only place that reads the clock (`Instant::now()` once per loop iteration)
//! and the only owner of the RNG (ChaCha20 seeded from the OS).
//!
//! # Connections and dispatch
//!
//! Each configured connection has its own [`Endpoint`] (its responder configuration is that
//! connection's). An IKE_SA_INIT request goes to the connection whose `remote_addr` is the
//! sender's address, else to the first `%any` connection; every other message to the connection
//! that owns the IKE SPI it is addressed to.
//!
//! Several connections may accept the same initiator (several `%any`, or the same address): the
//! IKE_SA_INIT target then offers the others as [`Alternative`]s, and at IKE_AUTH the IKE core
//! keeps the connection whose remote ID and PSK the initiator's IDi and AUTH match (exact IDs
//! before `%any` IDs, in configuration order), as strongSwan does; the daemon moves the IKE SA
//! into that connection's endpoint (`follow_switches`). No match: AUTHENTICATION_FAILED.
//!
//! # IKEv1
//!
//! The versions split at datagram classification: an IKE message whose ISAKMP version octet
//! (offset 17) is 0x10 goes to the `v1` submodule (`daemon/v1.rs`: cookie routing, responders
//! chosen by peer address and mode, timers, reauthentication), everything else to the IKEv2
//! endpoints above. A connection
//! with [`Connection::v1`] set is IKEv1 only: IKEv2 dispatch skips it, and `initiate`,
//! `terminate`, `status`, removal, re-initiation and the data plane's requests go to `v1`. Both
//! versions publish to the same [`SaSink`].
//!
//! # Both ends initiating at once
//!
//! When both gateways initiate the same connection at the same time (EffectImmediately on both, or
//! strongSwan's `start_action = start`), two IKE SAs come up, each with a Child SA. The endpoint
//! applies the duplicate rule of [`ipsec_ike::endpoint`] (the SA whose smaller IKE_SA_INIT nonce
//! is the lowest is redundant; its initiator deletes it at once, its responder after a grace
//! period of a few seconds if the peer has not), so both ends converge on one IKE SA and one
//! Child SA per connection. For each decision ([`Endpoint::poll_duplicate`], drained after the
//! connection's events and before its transmits) the daemon logs one line, makes the survivor the
//! connection's IKE SA (status, `terminate`, re-initiation) and [`SaSink::retire`]s the redundant
//! SA's Child SAs (already before installing them when the redundancy is known by then); when the
//! DELETE is decided it also tells the sink that the peer holds the survivor's Child SAs
//! ([`SaSink::confirmed`]), so the data plane sends on them before the DELETE leaves.
//! While a duplicate waits for its deletion, the status lists the Child SAs of both IKE SAs.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipsec_ike::endpoint::{Duplicate, DuplicateAction, Endpoint, EndpointConfig, SaHandle};
use ipsec_ike::ike_sa::{Alternative, ChildSa, Event, Transmit};
use ipsec_ike::message::{ExchangeType, Header};
use ipsec_ike::nat::{self, Received};
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;

use crate::config::{selector_prefixes, Connection, DaemonConfig, DaemonSettings};
use crate::log::Logger;
use crate::logln;
use crate::sink::{DataplaneEvent, SaSink};

mod runtime;
mod v1;
pub use runtime::{
    next_backoff, ChildStatus, ConnObserver, ConnStatus, IkeState, PUBLISH_EVERY, REMOVE_GRACE, RETRY_INITIAL,
    RETRY_MAX,
};

const IKE: Token = Token(0);
const NATT: Token = Token(1);
const CTL: Token = Token(2);
const SINK: Token = Token(3);

struct Conn {
    spec: Connection,
    endpoint: Endpoint,
    /// The connection's current IKE SA (the last one established or initiated).
    handle: Option<SaHandle>,
    /// Run-time management: removal, re-initiation with back-off, times (see `runtime`).
    rt: runtime::ConnRuntime,
}

/// The daemon; see the module documentation.
pub struct Daemon {
    settings: DaemonSettings,
    conns: Vec<Conn>,
    poll: Poll,
    events: Events,
    transport: Box<dyn IkeTransport>,
    natt_std: Option<std::net::UdpSocket>,
    ctl: Option<(UnixListener, PathBuf)>,
    sink: Box<dyn SaSink>,
    sink_registered: bool,
    rng: ChaCha20Rng,
    log: Logger,
    /// Our inbound Child SA SPI → its connection (DPD is postponed by inbound ESP).
    spi_owner: HashMap<u32, (usize, SaHandle)>,
    buf: Vec<u8>,
    /// Per-connection logs and status snapshots (the management API), if any.
    observer: Option<Box<dyn ConnObserver>>,
    /// When statuses (with counters) are next published to the observer.
    next_publish: Option<Instant>,
    /// The IKEv1 SAs (see [`v1`]).
    v1: v1::V1Sas,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("settings", &self.settings).field("conns", &self.conns.len()).finish()
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// How IKE datagrams (UDP payloads as on the wire, non-ESP marker included on the NAT-T port)
/// reach the daemon and leave it. Receiving is non-blocking: the daemon drains the transport after
/// every wake-up of its loop.
pub trait IkeTransport {
    /// Sends `datagram` from our `local` address and port to `remote`.
    ///
    /// # Errors
    /// The datagram could not be handed on (it is lost; IKE retransmits).
    fn send(&mut self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) -> io::Result<()>;
    /// The next received datagram, copied into `buf` (resized to fit): `Some((local, remote))`,
    /// or `None` when nothing is waiting.
    fn recv(&mut self, buf: &mut Vec<u8>) -> Option<(SocketAddr, SocketAddr)>;
    /// For the log: where IKE comes from and goes to.
    fn describe(&self) -> String;
}

/// The daemon's own UDP sockets: IKE (500) and NAT-T (4500) on the configured local address.
#[derive(Debug)]
pub struct UdpTransport {
    ike: UdpSocket,
    natt: UdpSocket,
    settings: DaemonSettings,
}

impl UdpTransport {
    /// Binds both sockets and registers them with `poll`; also returns a clone of the NAT-T
    /// socket (the userspace forwarder sends ESP in UDP from it).
    ///
    /// # Errors
    /// Socket errors (address in use, no such address, permissions).
    fn bind(s: &DaemonSettings, poll: &Poll) -> io::Result<(Self, std::net::UdpSocket)> {
        let ike_std = bind_udp(SocketAddr::new(s.listen, s.ike_port))?;
        let natt_std = bind_udp(SocketAddr::new(s.listen, s.natt_port))?;
        let mut ike = UdpSocket::from_std(ike_std);
        let mut natt = UdpSocket::from_std(natt_std.try_clone()?);
        poll.registry().register(&mut ike, IKE, Interest::READABLE)?;
        poll.registry().register(&mut natt, NATT, Interest::READABLE)?;
        Ok((UdpTransport { ike, natt, settings: s.clone() }, natt_std))
    }
}

impl IkeTransport for UdpTransport {
    fn send(&mut self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let sock = if local.port() == self.settings.natt_port { &self.natt } else { &self.ike };
        sock.send_to(datagram, remote).map(|_| ())
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> Option<(SocketAddr, SocketAddr)> {
        buf.resize(65536, 0);
        for (sock, port) in [(&self.ike, self.settings.ike_port), (&self.natt, self.settings.natt_port)] {
            // ICMP errors of earlier sends surface here once each; the next datagram may be fine.
            for _ in 0..16 {
                match sock.recv_from(buf) {
                    Ok((n, from)) => {
                        buf.truncate(n);
                        return Some((SocketAddr::new(self.settings.listen, port), from));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {}
                }
            }
        }
        None
    }

    fn describe(&self) -> String {
        format!(
            "listening on {} (IKE {}, NAT-T {})",
            self.settings.listen, self.settings.ike_port, self.settings.natt_port
        )
    }
}

impl Daemon {
    /// Binds the UDP sockets and the control socket; initiates nothing yet (see
    /// [`Daemon::start`]).
    ///
    /// # Errors
    /// Socket errors (address in use, no such address, permissions).
    pub fn new(config: DaemonConfig, sink: Box<dyn SaSink>, log: Logger) -> io::Result<Self> {
        let poll = Poll::new()?;
        let (udp, natt_std) = UdpTransport::bind(&config.daemon, &poll)?;
        Self::build(config, sink, Box::new(udp), Some(natt_std), poll, log)
    }

    /// Like [`Daemon::new`], but IKE goes through `transport` (e.g. the engine's channel) and no
    /// UDP socket is bound.
    ///
    /// # Errors
    /// The control socket or the poll could not be set up.
    pub fn with_transport(
        config: DaemonConfig,
        sink: Box<dyn SaSink>,
        transport: Box<dyn IkeTransport>,
        log: Logger,
    ) -> io::Result<Self> {
        Self::build(config, sink, transport, None, Poll::new()?, log)
    }

    fn build(
        config: DaemonConfig,
        sink: Box<dyn SaSink>,
        transport: Box<dyn IkeTransport>,
        natt_std: Option<std::net::UdpSocket>,
        poll: Poll,
        log: Logger,
    ) -> io::Result<Self> {
        let s = config.daemon.clone();
        let ctl = match &s.control_socket {
            Some(p) => {
                let l = bind_control(p)?;
                poll.registry().register(&mut SourceFd(&l.as_raw_fd()), CTL, Interest::READABLE)?;
                Some((l, p.clone()))
            }
            None => None,
        };
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
        let conns = config
            .connections
            .into_iter()
            .map(|spec| Conn {
                endpoint: Endpoint::new(EndpointConfig::new(Some(spec.ike.clone()))),
                spec,
                handle: None,
                rt: runtime::ConnRuntime::default(),
            })
            .collect();
        let mut d = Daemon {
            settings: s,
            conns,
            poll,
            events: Events::with_capacity(64),
            transport,
            natt_std,
            ctl,
            sink,
            sink_registered: false,
            rng: ChaCha20Rng::from_seed(seed),
            log,
            spi_owner: HashMap::new(),
            buf: vec![0u8; 65536],
            observer: None,
            next_publish: None,
            v1: v1::V1Sas::default(),
        };
        d.register_sink()?;
        // Lines are queued and written once per loop iteration (`step`); see `log`.
        d.log.set_deferred(true);
        logln!(d.log, "{}, {} connection(s)", d.transport.describe(), d.conns.len());
        for c in &d.conns {
            logln!(d.log, "conn {}: {:?}", c.spec.name, c.spec);
        }
        d.log.flush();
        Ok(d)
    }

    /// A clone of the NAT-T socket (the forwarder sends ESP in UDP from it).
    ///
    /// # Errors
    /// `dup` failed.
    pub fn natt_socket(&self) -> io::Result<std::net::UdpSocket> {
        match &self.natt_std {
            Some(s) => s.try_clone(),
            None => Err(io::Error::other("IKE goes through the engine: no NAT-T socket of our own")),
        }
    }

    /// Replaces the sink (before any SA exists).
    ///
    /// # Errors
    /// Registering its descriptor failed.
    pub fn set_sink(&mut self, sink: Box<dyn SaSink>) -> io::Result<()> {
        if self.sink_registered {
            if let Some(fd) = self.sink.poll_fd() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            self.sink_registered = false;
        }
        self.sink = sink;
        self.register_sink()
    }

    fn register_sink(&mut self) -> io::Result<()> {
        if let Some(fd) = self.sink.poll_fd() {
            self.poll.registry().register(&mut SourceFd(&fd), SINK, Interest::READABLE)?;
            self.sink_registered = true;
        }
        Ok(())
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &DaemonSettings {
        &self.settings
    }

    /// The keys of connection `name`'s current IKE SA: for the key-derivation cross-check against
    /// strongSwan's logged keys (`tests/keys_strongswan.rs`) only. No daemon path (log, control
    /// socket, state file, management API) calls it; keys otherwise leave the IKE core only as
    /// Child SA keys to the sink.
    #[doc(hidden)]
    #[must_use]
    pub fn ike_sa_keys_for_tests(&self, name: &str) -> Option<&ipsec_ike::crypto::keys::IkeSaKeys> {
        let i = self.conns.iter().position(|c| c.spec.name == name)?;
        self.live(i).and_then(|h| self.conns[i].endpoint.ike_sa(h)).and_then(|sa| sa.keys())
    }

    /// Initiates every connection with `effect_immediately`.
    pub fn start(&mut self) {
        let now = Instant::now();
        for i in 0..self.conns.len() {
            if self.conns[i].spec.effect_immediately {
                let _ = self.initiate(i, now);
            } else {
                logln!(self.log, "conn {}: waiting (effect_immediately = false)", self.conns[i].spec.name);
            }
        }
        self.flush(now);
        self.log.flush();
    }

    /// Runs until `stop` is set (checked at least every 200 ms).
    ///
    /// # Errors
    /// A poll error.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.step(Duration::from_millis(200))?;
        }
        Ok(())
    }

    /// One loop iteration: waits for I/O or the next timer (at most `max_wait`), handles it.
    ///
    /// # Errors
    /// A poll error.
    pub fn step(&mut self, max_wait: Duration) -> io::Result<()> {
        let now = Instant::now();
        let wait = self
            .conns
            .iter()
            .filter_map(|c| c.endpoint.poll_timeout())
            .chain(self.sink.poll_timeout())
            .chain(self.runtime_timeout())
            .chain(self.v1.poll_timeout())
            .min()
            .map_or(max_wait, |t| t.saturating_duration_since(now).min(max_wait));
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let tokens: Vec<Token> = self.events.iter().map(mio::event::Event::token).collect();
        for t in tokens {
            match t {
                IKE | NATT => self.drain(now),
                CTL => self.accept(now),
                SINK => {
                    self.sink.on_readable(now);
                    // The sink may be the transport's channel too (IKE punted by the engine).
                    self.drain(now);
                    for name in self.sink.take_acquires() {
                        if let Err(e) = self.acquire(&name, now) {
                            logln!(self.log, "acquire for {name}: {e}");
                        }
                    }
                }
                _ => {}
            }
        }
        if self.sink.poll_timeout().is_some_and(|t| t <= now) {
            self.sink.handle_timeout(now);
        }
        self.dataplane_events(now);
        for c in &mut self.conns {
            if c.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                c.endpoint.handle_timeout(now, &mut self.rng);
            }
        }
        self.v1_timeouts(now);
        self.flush(now);
        self.runtime_tick(now);
        self.log.flush();
        Ok(())
    }

    /// Deletes every IKE SA (INFORMATIONAL with DELETE, so the peer removes its SAs too) and runs
    /// the loop until they are gone or `grace` has passed.
    ///
    /// # Errors
    /// A poll error.
    pub fn shutdown(&mut self, grace: Duration) -> io::Result<()> {
        let now = Instant::now();
        let live: Vec<(usize, SaHandle)> = (0..self.conns.len()).filter_map(|i| self.live(i).map(|h| (i, h))).collect();
        let v1 = self.v1_close_all(now);
        logln!(self.log, "shutting down: closing {} IKE SA(s) and {v1} IKEv1 SA(s)", live.len());
        for &(i, h) in &live {
            let rng = &mut self.rng;
            self.conns[i].endpoint.with_sa(h, |sa| sa.close(now, rng));
        }
        self.flush(now);
        let deadline = now + grace;
        while Instant::now() < deadline
            && ((0..self.conns.len()).any(|i| self.live(i).is_some()) || !self.v1.is_empty())
        {
            self.step(Duration::from_millis(50))?;
        }
        self.log.flush();
        Ok(())
    }

    fn drain(&mut self, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        while let Some((local, from)) = self.transport.recv(&mut buf) {
            let on_natt = local.port() == self.settings.natt_port;
            match nat::classify(on_natt, &buf) {
                // The version split: IKEv1 (ISAKMP version 0x10) goes to `v1`, the rest to IKEv2.
                Received::Ike(msg) if v1::is_v1(msg) => self.v1_dispatch(now, local, from, msg),
                Received::Ike(msg) => self.dispatch(now, local, from, msg),
                Received::Esp(d) => {
                    if let Some(spi) = self.sink.esp_received(now, from, local, d) {
                        if let Some(&(i, h)) = self.spi_owner.get(&spi) {
                            self.conns[i].endpoint.with_sa(h, |sa| sa.note_inbound_traffic(now));
                        } else {
                            self.v1_note_inbound(spi, now);
                        }
                    }
                }
                Received::Keepalive | Received::Invalid => {}
            }
            self.flush(now);
        }
        self.buf = buf;
    }

    fn dispatch(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, msg: &[u8]) {
        let Ok(p) = Header::peek(msg) else {
            return;
        };
        let h = p.header;
        if self.settings.log_messages {
            logln!(
                self.log,
                "recv {} {} mid {} ({} B) from {remote}",
                h.exchange_type.name().unwrap_or("?"),
                if h.flags.response { "response" } else { "request" },
                h.message_id,
                msg.len()
            );
        }
        let idx = if h.exchange_type == ExchangeType::IKE_SA_INIT && !h.flags.response {
            self.conns
                .iter()
                .position(|c| c.spec.remote == Some(remote.ip()) && !c.rt.is_removing() && c.spec.v1.is_none())
                .or_else(|| {
                    self.conns
                        .iter()
                        .position(|c| c.spec.remote.is_none() && !c.rt.is_removing() && c.spec.v1.is_none())
                })
        } else {
            let ours = if h.flags.initiator { h.spi_r } else { h.spi_i };
            self.conns.iter().position(|c| c.endpoint.routes_spi(ours))
        };
        match idx {
            Some(i) => {
                self.observe_received(i, remote, msg);
                if h.exchange_type == ExchangeType::IKE_SA_INIT && !h.flags.response {
                    let alternatives = self.alternatives_for(i, remote);
                    self.conns[i].endpoint.set_responder_alternatives(alternatives);
                }
                self.conns[i].endpoint.handle(now, local, remote, msg, &mut self.rng);
                self.follow_switches(i);
            }
            None => logln!(self.log, "  no connection for this message from {remote}: dropped"),
        }
    }

    // ---- responder selection by identity (see the module documentation) ----

    /// The other connections that accept an IKE_SA_INIT from `remote` besides `i`: same
    /// `remote_addr` first, then `%any`, each in configuration order.
    fn alternatives_for(&self, i: usize, remote: SocketAddr) -> Vec<Alternative> {
        let open = |k: usize, c: &Conn| k != i && !c.rt.is_removing() && c.spec.v1.is_none();
        let same = self.conns.iter().enumerate().filter(|(k, c)| open(*k, c) && c.spec.remote == Some(remote.ip()));
        let any = self.conns.iter().enumerate().filter(|(k, c)| open(*k, c) && c.spec.remote.is_none());
        same.chain(any).map(|(_, c)| Alternative { label: c.spec.name.clone(), config: c.spec.ike.clone() }).collect()
    }

    /// Moves every IKE SA of connection `i` that switched to another connection at IKE_AUTH into
    /// that connection's endpoint, with its pending events.
    fn follow_switches(&mut self, i: usize) {
        while let Some((h, name)) = self.conns[i].endpoint.poll_switched() {
            let Some(k) = self.conns.iter().position(|c| c.spec.name == name) else {
                continue;
            };
            if let Some(sa) = self.conns[i].endpoint.detach(h) {
                self.conns[k].endpoint.attach(sa);
                logln!(self.log, "conn {}: peer authenticated as conn {name}: IKE_SA moved", self.conns[i].spec.name);
            }
        }
    }

    // ---- end of responder selection ----

    fn send(&mut self, t: &Transmit) {
        if self.settings.log_messages && !t.is_keepalive() {
            if let Ok(p) = Header::peek(&t.payload) {
                let h = p.header;
                logln!(
                    self.log,
                    "send {} {} mid {} ({} B) to {}",
                    h.exchange_type.name().unwrap_or("?"),
                    if h.flags.response { "response" } else { "request" },
                    h.message_id,
                    t.payload.len(),
                    t.remote
                );
            }
        }
        if let Err(e) = self.transport.send(t.local, t.remote, &t.to_datagram()) {
            logln!(self.log, "send to {}: {e}", t.remote);
        }
    }

    fn flush(&mut self, now: Instant) {
        loop {
            let mut any = false;
            for i in 0..self.conns.len() {
                // Events first (Child SAs reach the data plane before the answers that let the
                // peer use them), then duplicate decisions (the data plane leaves a redundant SA
                // before its DELETE is sent), then the datagrams.
                while let Some((h, ev)) = self.conns[i].endpoint.poll_event() {
                    any = true;
                    self.on_event(i, h, ev);
                }
                while let Some(d) = self.conns[i].endpoint.poll_duplicate() {
                    any = true;
                    self.on_duplicate(i, &d);
                }
                while let Some(t) = self.conns[i].endpoint.poll_transmit(now) {
                    any = true;
                    self.observe_transmit(i, &t);
                    self.send(&t);
                }
            }
            any |= self.v1_flush(now);
            if !any {
                break;
            }
        }
    }

    fn on_event(&mut self, i: usize, h: SaHandle, ev: Event) {
        self.observe_event(i, h, &ev);
        let name = self.conns[i].spec.name.clone();
        let mut changed = true;
        match ev {
            Event::IkeSaEstablished { spi_i, spi_r, local, remote } => {
                if self.conns[i].endpoint.survivor_of(h).is_none() {
                    self.conns[i].handle = Some(h);
                }
                logln!(
                    self.log,
                    "conn {name}: IKE_SA established spi_i={spi_i:016x} spi_r={spi_r:016x} {local} <-> {remote}"
                );
            }
            Event::ChildSaInstalled(sa) => {
                logln!(self.log, "conn {name}: CHILD_SA installed {}", describe(&sa));
                self.spi_owner.insert(sa.inbound_spi(), (i, h));
                if self.conns[i].endpoint.survivor_of(h).is_some() {
                    // Its IKE SA is already known to be redundant: never send on it.
                    self.sink.retire(&name, sa.inbound_spi(), sa.outbound_spi());
                }
                self.sink.install(&name, sa);
            }
            Event::ChildSaDeleted { spi_in, spi_out } => {
                logln!(self.log, "conn {name}: CHILD_SA deleted spi_in={spi_in:08x} spi_out={spi_out:08x}");
                self.spi_owner.remove(&spi_in);
                self.sink.delete(&name, spi_in, spi_out);
            }
            Event::ChildSaFailed(f) => {
                logln!(self.log, "conn {name}: CHILD_SA negotiation failed: {f:?}");
                changed = false;
            }
            Event::IkeSaRekeyed { old, new } => {
                logln!(
                    self.log,
                    "conn {name}: IKE_SA rekeyed {:016x}/{:016x} -> spi_i={:016x} spi_r={:016x}",
                    old.0,
                    old.1,
                    new.0,
                    new.1
                );
            }
            Event::EndpointsChanged { local, remote, encap } => {
                logln!(self.log, "conn {name}: endpoints changed {local} <-> {remote} encap {encap:?}");
                self.sink.update_endpoints(&name, local, remote, encap);
            }
            Event::PeerDead => {
                logln!(self.log, "conn {name}: peer dead (DPD), IKE_SA and CHILD_SAs removed");
                self.forget(i, h);
            }
            Event::Closed => {
                logln!(self.log, "conn {name}: IKE_SA closed");
                self.forget(i, h);
            }
            Event::Failed(f) => {
                logln!(self.log, "conn {name}: IKE_SA failed: {f:?}");
                self.forget(i, h);
            }
        }
        if changed {
            self.write_state();
        }
    }

    /// Acts on the data plane's requests (engine events); see [`DataplaneEvent`].
    fn dataplane_events(&mut self, now: Instant) {
        while let Some(ev) = self.sink.poll_dataplane_event() {
            let (DataplaneEvent::Acquire { conn }
            | DataplaneEvent::Rekey { conn, .. }
            | DataplaneEvent::Expired { conn, .. }) = &ev;
            let Some(i) = self.conns.iter().position(|c| c.spec.name == *conn) else {
                logln!(self.log, "data plane: {ev:?} for an unknown connection: ignored");
                continue;
            };
            if self.conns[i].spec.v1.is_some() {
                self.v1_dataplane_event(ev, now);
                self.flush(now);
                continue;
            }
            let live = self.live(i);
            let rng = &mut self.rng;
            match (ev, live) {
                (DataplaneEvent::Acquire { conn }, None) => {
                    logln!(self.log, "conn {conn}: acquire from the data plane");
                    if let Err(e) = self.acquire(&conn, now) {
                        logln!(self.log, "acquire for {conn}: {e}");
                    }
                }
                (DataplaneEvent::Acquire { conn }, Some(h)) => {
                    // An IKE SA exists (or is being set up): only a missing Child SA is negotiated.
                    let need = self.conns[i]
                        .endpoint
                        .ike_sa(h)
                        .is_some_and(|sa| sa.is_established() && sa.child_sas().next().is_none());
                    if need {
                        logln!(self.log, "conn {conn}: acquire from the data plane: creating a CHILD_SA");
                        self.conns[i].endpoint.with_sa(h, |sa| sa.create_child(now, None, rng));
                    }
                }
                (DataplaneEvent::Rekey { conn, spi_in }, Some(h)) => {
                    logln!(self.log, "conn {conn}: data plane asks to rekey CHILD_SA spi_in={spi_in:08x}");
                    self.conns[i].endpoint.with_sa(h, |sa| sa.rekey_child(now, spi_in, rng));
                }
                (DataplaneEvent::Expired { conn, spi_in }, Some(h)) => {
                    logln!(self.log, "conn {conn}: CHILD_SA spi_in={spi_in:08x} expired in the data plane: deleting");
                    self.conns[i].endpoint.with_sa(h, |sa| sa.delete_child(now, spi_in, rng));
                }
                (ev, None) => logln!(self.log, "data plane: {ev:?} but the connection is down: ignored"),
            }
            self.flush(now);
        }
    }

    /// One decision about a duplicate IKE SA of connection `i` (see the module documentation).
    fn on_duplicate(&mut self, i: usize, d: &Duplicate) {
        let name = self.conns[i].spec.name.clone();
        let (r, s) = (d.redundant_spis, d.survivor_spis);
        let what = match d.action {
            DuplicateAction::Deleting => "deleting it (we initiated it)".to_string(),
            DuplicateAction::AwaitingPeer { grace } => {
                format!("the peer initiated it and should delete it; deleting it in {} s otherwise", grace.as_secs())
            }
            DuplicateAction::DeletingAfterGrace => "the peer did not delete it: deleting it".to_string(),
        };
        let line = format!(
            "duplicate IKE_SA spi_i={:016x} spi_r={:016x} (both ends initiated): {what}, keeping spi_i={:016x} spi_r={:016x}",
            r.0, r.1, s.0, s.1
        );
        self.note(i, line, true);
        if self.conns[i].endpoint.ike_sa(d.survivor).is_some() {
            self.conns[i].handle = Some(d.survivor);
        }
        if !matches!(d.action, DuplicateAction::AwaitingPeer { .. }) {
            // Deleting now: the peer holds the survivor (the endpoint made sure), so the data
            // plane may send on its Child SAs before the DELETE leaves.
            let survivors: Vec<(u32, u32)> = self.conns[i]
                .endpoint
                .ike_sa(d.survivor)
                .map(|sa| sa.child_sas().map(|c| (c.inbound_spi(), c.outbound_spi())).collect())
                .unwrap_or_default();
            for (spi_in, spi_out) in survivors {
                self.sink.confirmed(&name, spi_in, spi_out);
            }
        }
        let children: Vec<(u32, u32)> = self.conns[i]
            .endpoint
            .ike_sa(d.redundant)
            .map(|sa| sa.child_sas().map(|c| (c.inbound_spi(), c.outbound_spi())).collect())
            .unwrap_or_default();
        for (spi_in, spi_out) in children {
            self.sink.retire(&name, spi_in, spi_out);
        }
        self.write_state();
    }

    /// Another live IKE SA of connection `i` than `h`, not being deleted (established ones first).
    pub(super) fn other_live(&self, i: usize, h: SaHandle) -> Option<SaHandle> {
        let ep = &self.conns[i].endpoint;
        let live = || ep.handles().filter(|x| *x != h && ep.ike_sa(*x).is_some_and(|sa| !sa.is_closing()));
        live().find(|x| ep.ike_sa(*x).is_some_and(|sa| sa.is_established())).or_else(|| live().next())
    }

    fn forget(&mut self, i: usize, h: SaHandle) {
        if self.conns[i].handle == Some(h) {
            // Another IKE SA of the connection (a duplicate) carries on, if there is one.
            self.conns[i].handle = self.other_live(i, h);
        }
        self.spi_owner.retain(|_, v| *v != (i, h));
    }

    /// Whether connection `i` has an IKE SA (IKEv2 or IKEv1) that is up or being set up.
    fn is_connected(&self, i: usize) -> bool {
        self.live(i).is_some() || self.v1.is_live(&self.conns[i].spec.name)
    }

    fn live(&self, i: usize) -> Option<SaHandle> {
        let c = &self.conns[i];
        c.handle.filter(|h| c.endpoint.ike_sa(*h).is_some_and(|sa| !sa.is_finished()))
    }

    fn initiate(&mut self, i: usize, now: Instant) -> Result<String, String> {
        if self.conns[i].spec.v1.is_some() {
            return self.v1_initiate(i, now);
        }
        let c = &self.conns[i];
        let name = c.spec.name.clone();
        if self.live(i).is_some() {
            return Ok(format!("conn {name}: already up or connecting"));
        }
        let Some(remote) = c.spec.remote else {
            return Err(format!("conn {name}: remote_addr is %any, cannot initiate"));
        };
        let local = SocketAddr::new(self.settings.listen, self.settings.ike_port);
        let remote = SocketAddr::new(remote, c.spec.remote_port);
        let cfg = c.spec.ike.clone();
        let h = self.conns[i].endpoint.connect(cfg, local, remote, now, &mut self.rng);
        self.conns[i].handle = Some(h);
        self.conns[i].rt.initiated();
        logln!(self.log, "conn {name}: initiating {local} -> {remote}");
        Ok(format!("conn {name}: initiating"))
    }

    /// Executes a control command (`initiate NAME`, `rekey-child NAME`, `rekey-ike NAME`,
    /// `terminate NAME`, `status`) and returns its answer.
    pub fn command(&mut self, line: &str, now: Instant) -> Result<String, String> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("");
        if verb == "status" {
            return Ok(self.status());
        }
        let name = words.next().ok_or_else(|| format!("usage: {verb} NAME"))?;
        let i = self
            .conns
            .iter()
            .position(|c| c.spec.name == name)
            .ok_or_else(|| format!("no connection named {name:?}"))?;
        logln!(self.log, "control: {verb} {name}");
        let r = match verb {
            "initiate" => self.initiate(i, now),
            "terminate" if self.conns[i].spec.v1.is_some() => match self.v1_close(name, now) {
                0 => Err(format!("conn {name}: not up")),
                _ => Ok(format!("conn {name}: terminate started")),
            },
            "rekey-child" | "rekey-ike" if self.conns[i].spec.v1.is_some() => {
                self.v1_rekey(i, verb == "rekey-ike", now)
            }
            "rekey-child" | "rekey-ike" | "terminate" => {
                let h = self.live(i).ok_or_else(|| format!("conn {name}: not up"))?;
                let rng = &mut self.rng;
                self.conns[i].endpoint.with_sa(h, |sa| match verb {
                    "rekey-child" => {
                        let spis: Vec<u32> = sa.child_sas().map(ChildSa::inbound_spi).collect();
                        for s in spis {
                            sa.rekey_child(now, s, rng);
                        }
                    }
                    "rekey-ike" => sa.rekey_ike(now, rng),
                    _ => sa.close(now, rng),
                });
                Ok(format!("conn {name}: {verb} started"))
            }
            _ => Err(format!("unknown command {verb:?}")),
        };
        self.flush(now);
        r
    }

    fn status(&self) -> String {
        let mut s = String::new();
        for (i, c) in self.conns.iter().enumerate() {
            s.push_str(&format!("conn {}:", c.spec.name));
            if c.spec.v1.is_some() {
                s.push_str(&self.v1.status(&c.spec.name).unwrap_or_else(|| " down\n".into()));
                continue;
            }
            match self.live(i).and_then(|h| c.endpoint.ike_sa(h)) {
                Some(sa) => {
                    let (a, b) = sa.spis();
                    s.push_str(&format!(" {} spi_i={a:016x} spi_r={b:016x}\n", sa.state_name()));
                    for ch in sa.child_sas() {
                        s.push_str(&format!(
                            "  child spi_in={:08x} spi_out={:08x}\n",
                            ch.inbound_spi(),
                            ch.outbound_spi()
                        ));
                    }
                }
                None => s.push_str(" down\n"),
            }
        }
        s
    }

    fn write_state(&self) {
        let Some(path) = &self.settings.state_file else {
            return;
        };
        if let Err(e) = write_private(path, self.status().as_bytes()) {
            logln!(self.log, "state file {}: {e}", path.display());
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some((l, _)) = &self.ctl else {
                return;
            };
            let stream = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    logln!(self.log, "control socket accept: {e}");
                    return;
                }
            };
            // A short blocking exchange with a local root client: read one line, answer, close.
            let std_stream = stream;
            let _ = std_stream.set_nonblocking(false);
            let _ = std_stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = std_stream.set_write_timeout(Some(Duration::from_secs(1)));
            let mut line = String::new();
            if BufReader::new(&std_stream).take(4096).read_line(&mut line).is_err() {
                continue;
            }
            let reply = match self.command(line.trim(), now) {
                Ok(s) => format!("ok {s}\n"),
                Err(s) => format!("error {s}\n"),
            };
            let _ = (&std_stream).write_all(reply.as_bytes());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.log.set_deferred(false);
        if let Some((_, p)) = &self.ctl {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn bind_control(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Writes a file readable by its owner only (mode 0600), atomically (temporary file + rename).
///
/// # Errors
/// File system errors.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// One line describing a Child SA for the log (SPIs, algorithms, selectors, endpoints; no keys).
#[must_use]
pub fn describe(sa: &ChildSa) -> String {
    let nets = |ts: &[ipsec_ike::message::TrafficSelector]| -> String {
        ts.iter().flat_map(selector_prefixes).map(|n| n.to_string()).collect::<Vec<_>>().join(",")
    };
    format!(
        "spi_in={:08x} spi_out={:08x} encr={:?} integ={:?} esn={:?} local_ts={} remote_ts={} {} <-> {} encap={}",
        sa.inbound_spi(),
        sa.outbound_spi(),
        sa.encr,
        sa.integ,
        sa.esn,
        nets(sa.local_ts()),
        nets(sa.remote_ts()),
        sa.local,
        sa.remote,
        sa.encap.map_or_else(|| "none".to_string(), |e| format!("udp {}->{}", e.local_port, e.remote_port)),
    )
}

/// Sends one control command to a running daemon and returns its answer.
///
/// # Errors
/// The socket cannot be reached, or the daemon answered with an error.
pub fn control_request(socket: &Path, line: &str) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(format!("{line}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.strip_prefix("ok ") {
        Some(r) => Ok(r.trim_end().to_string()),
        None => Err(out.strip_prefix("error ").unwrap_or(&out).trim_end().to_string()),
    }
}
