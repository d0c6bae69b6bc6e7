//! The control side of the engine channel ([`ipsec_channel`]): `ipsec-control run --engine SOCKET`.
//!
//! One [`EngineLink`] holds the channel session and the **desired state**: one tunnel per
//! connection (named after it) and every live Child SA with its keys (inside
//! [`ipsec_channel::Secret`]s, wiped on drop). Two handles share it (single-threaded daemon, so an
//! `Rc<RefCell<_>>`):
//!
//! * [`EngineSink`], the daemon's [`SaSink`]: Child SA events become requests. `install` →
//!   `UpsertTunnel` (subnets from the negotiated selectors, destination routing, endpoints and
//!   UDP encapsulation of the Child SA) if the tunnel changed, `AddSa In`, then `AddSa Out`
//!   (make-before-break: on a rekey the new inbound SA is in before the outbound switches, and the
//!   old SA's delete comes later); `delete` → `DeleteSa`; `update_endpoints` → `UpsertTunnel`.
//!   Engine events become [`DataplaneEvent`]s for the daemon (acquire, rekey, expiry).
//! * [`EngineIke`], the daemon's [`IkeTransport`]: transmits leave as `SendIke`, `IkeReceived`
//!   datagrams are handed to the daemon's dispatch. The engine owns the interface; the daemon binds
//!   no UDP socket.
//!
//! # Which outbound SA
//!
//! The engine sends on one outbound SA per tunnel, the last `AddSa Out` ("send on the newest SA
//! the peer has"). A Child SA we negotiated as *initiator* is installed by the peer before it
//! answers, so its outbound half is sent at once. One we created as *responder* (the peer's rekey)
//! is installed by the peer only when our answer arrives: while an older outbound SA exists, the
//! switch waits until the peer deletes the old SA (which the rekey initiator does right after
//! installing the new one) or [`OUTBOUND_DEFER`] has passed. strongSwan defers the responder's
//! outbound SA the same way; the userspace forwarder waits for inbound ESP instead.
//!
//! Both ends initiating at once leave two IKE SAs, each with a Child SA, until the redundant one is
//! deleted (see [`crate::daemon`]); its Child SA is [`SaSink::retire`]d (before it is installed,
//! when the redundancy is known by then): a retired SA never becomes the outbound one while
//! another exists, and if it is the outbound one the survivor's takes over as soon as the peer
//! is known to hold it (at once if we created it as initiator, else on [`SaSink::confirmed`],
//! which the daemon calls before the DELETE leaves). Switching to a redundant SA and back is
//! avoided: the engine restarts an outbound SA's sequence numbers when it is added again, which
//! the peer's anti-replay check would drop. The retired SA's inbound half stays until the delete,
//! so nothing in flight is lost.
//!
//! Trap tunnels: every configured connection with a known peer gets its tunnel (configured
//! subnets, no SA) from the start, so traffic on a connection with `effect_immediately = false`
//! makes the engine raise `Acquire`, on which the daemon initiates. The tunnel stays while the
//! daemon runs; tunnels of `%any` connections go with their last SA.
//!
//! # Sessions
//!
//! On every (re)connection: `Hello` both ways (a version mismatch closes the session and retries
//! slowly), then the complete desired set in `BeginSync` … `EndSync`; the engine keeps unchanged SAs
//! with their state, so a reconnect never interrupts traffic, and an engine that restarted (new
//! `boot_id`) gets everything back. While disconnected, SA changes only update the desired set
//! and IKE transmits are dropped (IKE retransmits). Exception: a freshly started daemon that finds
//! SAs of a previous control process in the engine publishes its tunnels and new SAs at once but
//! restates (removing the old SAs) only after [`TAKEOVER_GRACE`], so traffic keeps flowing while
//! its IKE SAs come back. Lost sessions are retried with exponential
//! back-off ([`RETRY_MIN`] … [`RETRY_MAX`]); failures are logged on the 1st, 2nd, 4th, 8th …
//! attempt only. Error replies are logged with the request they answer (tunnel, direction,
//! SPI: never key material).
//!
//! Writes never block the daemon: frames are queued and written as the socket accepts them (the
//! socket sits in an inner `mio::Poll`, whose descriptor is the sink's [`SaSink::poll_fd`]); a
//! queue above [`MAX_QUEUED`] means the engine is stuck and the session is dropped and
//! re-established. Queued frames are wiped once written or dropped.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ipsec_channel::{
    encode, ControlMsg, Decoder, Direction, EngineMsg, Event, IkeDatagram, Request, Response, Routing, SaSpec,
    TunnelSpec, UdpEncap as ChanEncap, PROTOCOL_VERSION,
};
use ipsec_ike::ike_sa::{ChildSa, UdpEncap};
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use zeroize::Zeroize;

use crate::config::{Connection, DaemonConfig};
use crate::daemon::IkeTransport;
use crate::esp_map;
use crate::log::Logger;
use crate::logln;
use crate::sink::{DataplaneEvent, SaSink};

/// First reconnect delay.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay (also the delay after a protocol version mismatch).
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a responder-created outbound SA waits for the peer to delete the one it replaces.
pub const OUTBOUND_DEFER: Duration = Duration::from_secs(5);
/// How long the SAs a previous control process left in the engine are kept (while our own IKE
/// SAs come up) before the first restatement of a freshly started daemon removes them.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(10);
/// How long a new session may wait for the engine's `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes queued towards an engine that does not read before the session is given up.
pub const MAX_QUEUED: usize = 8 << 20;
/// IKE datagrams buffered between the channel and the daemon's dispatch.
const MAX_IKE_QUEUE: usize = 1024;
/// How often the SAs' counters are read from the engine while SAs are installed (the daemon
/// publishes statuses with counters every 2 s: `serve`'s DescribeVpnConnection).
pub const COUNTERS_EVERY: Duration = Duration::from_secs(1);

const STREAM: Token = Token(0);

/// One encoded frame on its way out; wiped when dropped (it may carry keys).
struct Frame {
    bytes: Vec<u8>,
    sent: usize,
}

impl Drop for Frame {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

struct Session {
    stream: UnixStream,
    dec: Decoder,
    out: VecDeque<Frame>,
    queued: usize,
    /// The engine's `Hello` arrived (requests may be sent).
    ready: bool,
    /// Given up at this time if the engine's `Hello` has not arrived.
    hello_by: Instant,
}

/// One direction pair of a live Child SA.
struct LiveSa {
    spi_in: u32,
    spi_out: u32,
    inbound: SaSpec,
    outbound: SaSpec,
    /// A responder-created SA waiting to become the outbound one at this time at the latest.
    switch_at: Option<Instant>,
    /// Its IKE SA is a redundant duplicate about to be deleted ([`SaSink::retire`]): never made
    /// the outbound SA again while another SA exists.
    retired: bool,
}

struct Tunnel {
    spec: TunnelSpec,
    /// From the configuration (a trap tunnel): kept without SAs.
    configured: bool,
    /// In installation order.
    sas: Vec<LiveSa>,
    /// The SPI of the outbound SA the engine sends on.
    out: Option<u32>,
    /// (inbound, outbound) SPIs retired before they were installed.
    pre_retired: Vec<(u32, u32)>,
}

/// The shared state behind [`EngineSink`] and [`EngineIke`]; see the module documentation.
pub struct EngineLink {
    path: PathBuf,
    client: String,
    log: Logger,
    poll: Poll,
    events: Events,
    session: Option<Session>,
    retry_at: Option<Instant>,
    backoff: Duration,
    failures: u32,
    boot_id: Option<u64>,
    next_id: u64,
    generation: u64,
    /// Requests awaiting their reply: (id, what it was, for the log).
    pending: VecDeque<(u64, String)>,
    tunnels: BTreeMap<String, Tunnel>,
    ike_in: VecDeque<IkeDatagram>,
    dp_events: VecDeque<DataplaneEvent>,
    /// Completed `EndSync`s (for tests and status).
    syncs: u64,
    /// A deferred first restatement (see [`TAKEOVER_GRACE`]).
    sync_at: Option<Instant>,
    takeover_grace: Duration,
    /// The engine's last answer to `Counters`: (packets, bytes) by (direction, SPI).
    sa_counters: HashMap<(Direction, u32), (u64, u64)>,
    /// When `Counters` is next asked for (while a session is up and SAs are installed).
    counters_at: Instant,
}

impl std::fmt::Debug for EngineLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineLink")
            .field("path", &self.path)
            .field("connected", &self.session.as_ref().is_some_and(|s| s.ready))
            .field("tunnels", &self.tunnels.len())
            .finish_non_exhaustive()
    }
}

/// The daemon's [`SaSink`] over the engine channel.
#[derive(Debug, Clone)]
pub struct EngineSink(Rc<RefCell<EngineLink>>);

/// The daemon's [`IkeTransport`] over the engine channel.
#[derive(Debug, Clone)]
pub struct EngineIke(Rc<RefCell<EngineLink>>);

/// Creates the link to the engine at `socket` for the connections of `config` and tries to
/// connect at once (a failure is logged and retried: the engine may start later).
///
/// # Errors
/// The inner poll could not be created.
pub fn attach(socket: &Path, config: &DaemonConfig, log: Logger) -> io::Result<(EngineSink, EngineIke)> {
    let mut link = EngineLink {
        path: socket.to_path_buf(),
        client: format!("ipsec-control {} pid {}", env!("CARGO_PKG_VERSION"), std::process::id()),
        log,
        poll: Poll::new()?,
        events: Events::with_capacity(8),
        session: None,
        retry_at: None,
        backoff: RETRY_MIN,
        failures: 0,
        boot_id: None,
        next_id: 1,
        generation: 0,
        pending: VecDeque::new(),
        tunnels: BTreeMap::new(),
        ike_in: VecDeque::new(),
        dp_events: VecDeque::new(),
        syncs: 0,
        sync_at: None,
        takeover_grace: TAKEOVER_GRACE,
        sa_counters: HashMap::new(),
        counters_at: Instant::now(),
    };
    for c in &config.connections {
        link.add_connection(c);
    }
    link.connect(Instant::now());
    let rc = Rc::new(RefCell::new(link));
    Ok((EngineSink(Rc::clone(&rc)), EngineIke(rc)))
}

impl EngineSink {
    /// Whether a session is up (the engine's `Hello` arrived).
    #[must_use]
    pub fn connected(&self) -> bool {
        self.0.borrow().session.as_ref().is_some_and(|s| s.ready)
    }

    /// How many `EndSync` replies arrived (full restatements completed).
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.0.borrow().syncs
    }

    /// The `boot_id` of the engine last talked to.
    #[must_use]
    pub fn boot_id(&self) -> Option<u64> {
        self.0.borrow().boot_id
    }

    /// Changes [`TAKEOVER_GRACE`] (before the first session).
    pub fn set_takeover_grace(&self, grace: Duration) {
        self.0.borrow_mut().takeover_grace = grace;
    }

    /// Publishes the trap tunnel of a connection added (or changed) at run time; a tunnel that
    /// carries SAs keeps its negotiated selectors until they go. No-op without a known peer.
    pub fn add_connection(&self, c: &Connection) {
        self.0.borrow_mut().add_connection(c);
    }

    /// Removes a connection's tunnel and all its SAs from the engine.
    pub fn remove_connection(&self, name: &str) {
        let mut l = self.0.borrow_mut();
        if l.tunnels.remove(name).is_some() {
            l.request(format!("tunnel {name}: remove"), Request::RemoveTunnel { name: name.to_string() });
        }
    }
}

fn chan_encap(e: Option<UdpEncap>) -> Option<ChanEncap> {
    e.map(|e| ChanEncap { local_port: e.local_port, remote_port: e.remote_port })
}

impl EngineLink {
    fn add_connection(&mut self, c: &Connection) {
        let Some(remote) = c.remote else {
            return;
        };
        let spec = TunnelSpec {
            name: c.name.clone(),
            local_addr: c.local,
            remote_addr: remote,
            local_subnets: c.local_subnets.clone(),
            remote_subnets: c.remote_subnets.clone(),
            routing: Routing::Destination,
            udp_encap: None,
            mtu: None,
        };
        if let Some(t) = self.tunnels.get_mut(&c.name) {
            t.configured = true;
            if !t.sas.is_empty() || t.spec == spec {
                return;
            }
        }
        self.tunnels.insert(
            c.name.clone(),
            Tunnel { spec: spec.clone(), configured: true, sas: Vec::new(), out: None, pre_retired: Vec::new() },
        );
        self.request(format!("tunnel {}: upsert", c.name), Request::UpsertTunnel(spec));
    }

    // ------------------------------------------------------------------------------------------
    // Session

    fn connect(&mut self, now: Instant) {
        self.retry_at = None;
        let std_stream = match std::os::unix::net::UnixStream::connect(&self.path) {
            Ok(s) => s,
            Err(e) => {
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    logln!(
                        self.log,
                        "engine {}: {e} (attempt {}, retrying every {} ms at most)",
                        self.path.display(),
                        self.failures,
                        RETRY_MAX.as_millis()
                    );
                }
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(RETRY_MAX);
                return;
            }
        };
        let r = std_stream.set_nonblocking(true).and_then(|()| {
            let mut stream = UnixStream::from_std(std_stream);
            self.poll.registry().register(&mut stream, STREAM, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match r {
            Ok(stream) => {
                self.session = Some(Session {
                    stream,
                    dec: Decoder::new(),
                    out: VecDeque::new(),
                    queued: 0,
                    ready: false,
                    hello_by: now + HELLO_TIMEOUT,
                });
                self.queue(&ControlMsg::Hello { version: PROTOCOL_VERSION, client: self.client.clone() });
            }
            Err(e) => {
                logln!(self.log, "engine {}: {e}", self.path.display());
                self.retry_at = Some(now + self.backoff);
            }
        }
    }

    fn lose(&mut self, now: Instant, why: &str, retry: Duration) {
        if let Some(mut s) = self.session.take() {
            let _ = self.poll.registry().deregister(&mut s.stream);
            logln!(
                self.log,
                "engine {}: session lost ({why}); keeping {} SA(s) to restate, reconnecting",
                self.path.display(),
                self.sa_count()
            );
        }
        self.pending.clear();
        self.failures = 0;
        self.backoff = (retry * 2).min(RETRY_MAX);
        self.retry_at = Some(now + retry);
    }

    fn sa_count(&self) -> usize {
        self.tunnels.values().map(|t| t.sas.len()).sum()
    }

    /// Encodes `msg` into the session's queue and writes what the socket takes.
    fn queue(&mut self, msg: &ControlMsg) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // Sized so that encoding an SA (~200 bytes) never reallocates (no stray key copies).
        let mut bytes = Vec::with_capacity(1024);
        if let Err(e) = encode(msg, &mut bytes) {
            bytes.zeroize();
            logln!(self.log, "engine: message not encodable: {e}");
            return;
        }
        s.queued += bytes.len();
        s.out.push_back(Frame { bytes, sent: 0 });
        self.write_out(Instant::now());
    }

    fn write_out(&mut self, now: Instant) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut err = None;
        while let Some(f) = s.out.front_mut() {
            match s.stream.write(&f.bytes[f.sent..]) {
                Ok(0) => {
                    err = Some("socket closed".to_string());
                    break;
                }
                Ok(n) => {
                    f.sent += n;
                    s.queued -= n;
                    if f.sent == f.bytes.len() {
                        s.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        if s.queued > MAX_QUEUED {
            err = Some(format!("engine not reading: {} bytes queued", s.queued));
        }
        if let Some(e) = err {
            self.lose(now, &e, RETRY_MIN);
        }
    }

    /// Sends a request if a session is up; otherwise the next restatement carries its effect.
    fn request(&mut self, what: String, req: Request) {
        if !self.session.as_ref().is_some_and(|s| s.ready) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back((id, what));
        self.queue(&ControlMsg::Request { id, req });
    }

    fn read_in(&mut self, now: Instant) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            let r = s.stream.read(&mut buf);
            match r {
                Ok(0) => {
                    self.lose(now, "closed by the engine", RETRY_MIN);
                    return;
                }
                Ok(n) => {
                    s.dec.push(&buf[..n]);
                    buf[..n].zeroize();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lose(now, &e.to_string(), RETRY_MIN);
                    return;
                }
            }
            loop {
                let Some(s) = self.session.as_mut() else {
                    return;
                };
                match s.dec.decode::<EngineMsg>() {
                    Ok(Some(m)) => self.handle(now, m),
                    Ok(None) => break,
                    Err(e) => {
                        self.lose(now, &format!("protocol error: {e}"), RETRY_MIN);
                        return;
                    }
                }
            }
        }
    }

    fn handle(&mut self, now: Instant, m: EngineMsg) {
        match m {
            EngineMsg::Hello { version, engine, boot_id, control_sas } => {
                if version != PROTOCOL_VERSION {
                    logln!(
                        self.log,
                        "engine {}: protocol version {version}, we speak {PROTOCOL_VERSION}: closing",
                        self.path.display()
                    );
                    self.lose(now, "version mismatch", RETRY_MAX);
                    return;
                }
                let what = match self.boot_id {
                    None => "first session",
                    Some(b) if b == boot_id => "same engine, reconnected",
                    Some(_) => "engine restarted: its SAs are gone",
                };
                logln!(
                    self.log,
                    "engine {}: connected to {engine} (boot {boot_id:016x}, {what}; it holds {control_sas} SA(s) of ours); restating {} tunnel(s), {} SA(s)",
                    self.path.display(),
                    self.tunnels.len(),
                    self.sa_count()
                );
                let first = self.boot_id.is_none();
                self.boot_id = Some(boot_id);
                self.failures = 0;
                self.backoff = RETRY_MIN;
                if let Some(s) = self.session.as_mut() {
                    s.ready = true;
                }
                if first && control_sas > 0 {
                    // A previous control process left SAs: they keep traffic flowing while our IKE
                    // SAs come up; the restatement that removes them waits a little.
                    logln!(
                        self.log,
                        "engine: keeping the {control_sas} SA(s) of a previous control process for up to {:.1} s",
                        self.takeover_grace.as_secs_f32()
                    );
                    self.sync_at = Some(now + self.takeover_grace);
                    self.announce();
                } else {
                    self.sync_at = None;
                    self.restate();
                }
            }
            EngineMsg::Reply { id, result } => {
                let what = match self.pending.front() {
                    Some((pid, _)) if *pid == id => self.pending.pop_front().map(|(_, w)| w).unwrap_or_default(),
                    _ => {
                        logln!(self.log, "engine: reply to unknown request {id}");
                        String::new()
                    }
                };
                match result {
                    Ok(Response::SyncDone { generation, added, replaced, kept, removed }) => {
                        self.syncs += 1;
                        logln!(
                            self.log,
                            "engine: sync {generation} done: {added} added, {replaced} replaced, {kept} kept, {removed} removed"
                        );
                    }
                    Ok(Response::Counters(r)) => {
                        self.sa_counters = r
                            .sas
                            .iter()
                            .filter_map(|c| c.direction.map(|d| ((d, c.spi), (c.packets, c.bytes))))
                            .collect();
                    }
                    Ok(_) => {}
                    Err(e) => logln!(self.log, "engine: {what}: refused: {e}"),
                }
            }
            EngineMsg::IkeReceived(d) => {
                if self.ike_in.len() >= MAX_IKE_QUEUE {
                    self.ike_in.pop_front();
                }
                self.ike_in.push_back(d);
            }
            EngineMsg::Event(ev) => self.on_event(ev),
        }
    }

    fn on_event(&mut self, ev: Event) {
        let spi_in = |t: &Tunnel, d: Direction, spi: u32| match d {
            Direction::In => t.sas.iter().find(|s| s.spi_in == spi).map(|s| s.spi_in),
            Direction::Out => t.sas.iter().find(|s| s.spi_out == spi).map(|s| s.spi_in),
        };
        let out = match &ev {
            Event::Acquire { tunnel } => {
                self.tunnels.contains_key(tunnel).then(|| DataplaneEvent::Acquire { conn: tunnel.clone() })
            }
            Event::RekeyRequested { tunnel, direction, spi, .. } => self
                .tunnels
                .get(tunnel)
                .and_then(|t| spi_in(t, *direction, *spi))
                .map(|spi_in| DataplaneEvent::Rekey { conn: tunnel.clone(), spi_in }),
            Event::Expired { tunnel, direction, spi, .. } => self
                .tunnels
                .get(tunnel)
                .and_then(|t| spi_in(t, *direction, *spi))
                .map(|spi_in| DataplaneEvent::Expired { conn: tunnel.clone(), spi_in }),
        };
        match out {
            Some(e) => self.dp_events.push_back(e),
            None => logln!(self.log, "engine: event {ev:?} for no SA of ours: ignored"),
        }
    }

    /// The complete desired set: `BeginSync`, every tunnel, its inbound SAs, its outbound SA,
    /// `EndSync`.
    fn restate(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        self.request(format!("sync {generation}: begin"), Request::BeginSync { generation });
        self.announce();
        self.request(format!("sync {generation}: end"), Request::EndSync { generation });
    }

    /// Every tunnel, its inbound SAs and its outbound SA.
    fn announce(&mut self) {
        let mut reqs = Vec::new();
        for (name, t) in &self.tunnels {
            reqs.push((format!("tunnel {name}: upsert"), Request::UpsertTunnel(t.spec.clone())));
            for sa in &t.sas {
                reqs.push((format!("tunnel {name}: add in {:08x}", sa.spi_in), Request::AddSa(sa.inbound.clone())));
            }
            if let Some(sa) = t.out.and_then(|o| t.sas.iter().find(|s| s.spi_out == o)) {
                reqs.push((format!("tunnel {name}: add out {:08x}", sa.spi_out), Request::AddSa(sa.outbound.clone())));
            }
        }
        for (what, req) in reqs {
            self.request(what, req);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Desired state

    fn install(&mut self, conn: &str, sa: &ChildSa, now: Instant) {
        let (inbound, outbound) = match esp_map::sa_specs(conn, sa) {
            Ok(x) => x,
            Err(e) => {
                logln!(self.log, "engine: conn {conn}: CHILD_SA not published: {e}");
                return;
            }
        };
        let (local_subnets, remote_subnets) = esp_map::subnets(sa);
        let spec = TunnelSpec {
            name: conn.to_string(),
            local_addr: sa.local.ip(),
            remote_addr: sa.remote.ip(),
            local_subnets,
            remote_subnets,
            routing: Routing::Destination,
            udp_encap: chan_encap(sa.encap),
            mtu: None,
        };
        let t = self.tunnels.entry(conn.to_string()).or_insert_with(|| Tunnel {
            spec: spec.clone(),
            configured: false,
            sas: Vec::new(),
            out: None,
            pre_retired: Vec::new(),
        });
        let upsert = t.sas.is_empty() || t.spec != spec;
        t.spec = spec.clone();
        // The peer has this SA already if it answered our request for it; if we answered, it
        // installs it when our answer arrives (see the module documentation).
        let (spi_in, spi_out) = (sa.inbound_spi(), sa.outbound_spi());
        let retired = t.pre_retired.contains(&(spi_in, spi_out));
        t.pre_retired.retain(|x| *x != (spi_in, spi_out));
        let out_retired = t.sas.iter().any(|s| Some(s.spi_out) == t.out && s.retired);
        // A retired SA is only sent on when there is nothing else (it is installed all the same:
        // switching to it and back would restart the other SA's sequence numbers in the engine,
        // which the peer's anti-replay check drops).
        let immediate = if retired { t.out.is_none() } else { sa.initiator || t.out.is_none() || out_retired };
        t.sas.push(LiveSa {
            spi_in,
            spi_out,
            inbound: inbound.clone(),
            outbound,
            switch_at: (!immediate && !retired).then(|| now + OUTBOUND_DEFER),
            retired,
        });
        if upsert {
            self.request(format!("tunnel {conn}: upsert"), Request::UpsertTunnel(spec));
        }
        self.request(format!("tunnel {conn}: add in {spi_in:08x}"), Request::AddSa(inbound));
        if immediate {
            self.activate(conn, spi_out);
        } else if retired {
            logln!(self.log, "engine: conn {conn}: outbound {spi_out:08x} not used (redundant IKE SA)");
        } else {
            logln!(self.log, "engine: conn {conn}: outbound {spi_out:08x} deferred until the peer retires the old SA");
        }
    }

    /// Makes `spi_out` the outbound SA of tunnel `conn`.
    fn activate(&mut self, conn: &str, spi_out: u32) {
        let Some(t) = self.tunnels.get_mut(conn) else {
            return;
        };
        let Some(sa) = t.sas.iter_mut().find(|s| s.spi_out == spi_out) else {
            return;
        };
        sa.switch_at = None;
        t.out = Some(spi_out);
        let req = Request::AddSa(sa.outbound.clone());
        self.request(format!("tunnel {conn}: add out {spi_out:08x}"), req);
    }

    fn delete(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        let Some(t) = self.tunnels.get_mut(conn) else {
            return;
        };
        let Some(pos) = t.sas.iter().position(|s| s.spi_in == spi_in && s.spi_out == spi_out) else {
            return;
        };
        t.sas.remove(pos);
        let was_out = t.out == Some(spi_out);
        let successor = t.sas.iter().rev().find(|s| !s.retired).or(t.sas.last()).map(|s| s.spi_out);
        let remove = t.sas.is_empty() && !t.configured;
        if was_out {
            t.out = None;
        }
        self.request(
            format!("tunnel {conn}: delete in {spi_in:08x}"),
            Request::DeleteSa { tunnel: conn.to_string(), direction: Direction::In, spi: spi_in },
        );
        if was_out {
            match successor {
                // The newest remaining SA takes over (AddSa Out replaces the old outbound SA).
                Some(next) => self.activate(conn, next),
                None => self.request(
                    format!("tunnel {conn}: delete out {spi_out:08x}"),
                    Request::DeleteSa { tunnel: conn.to_string(), direction: Direction::Out, spi: spi_out },
                ),
            }
        }
        // A non-active outbound half was already dropped by the engine when the tunnel switched.
        if remove {
            self.tunnels.remove(conn);
            self.request(format!("tunnel {conn}: remove"), Request::RemoveTunnel { name: conn.to_string() });
        }
    }

    /// Stops sending on the SA (see [`SaSink::retire`]): if it is the outbound one, the newest
    /// other SA that is neither retired nor deferred (the peer has it) becomes the outbound one at
    /// once; a deferred one takes over when [`SaSink::confirmed`] or at the delete.
    fn retire(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        let Some(t) = self.tunnels.get_mut(conn) else {
            return;
        };
        let Some(sa) = t.sas.iter_mut().find(|s| s.spi_in == spi_in && s.spi_out == spi_out) else {
            if !t.pre_retired.contains(&(spi_in, spi_out)) {
                t.pre_retired.push((spi_in, spi_out));
            }
            return;
        };
        sa.retired = true;
        sa.switch_at = None;
        if t.out != Some(spi_out) {
            return;
        }
        let Some(next) = t.sas.iter().rev().find(|s| !s.retired && s.switch_at.is_none()).map(|s| s.spi_out) else {
            return;
        };
        logln!(
            self.log,
            "engine: conn {conn}: outbound {spi_out:08x} retired (redundant IKE SA); sending on {next:08x}"
        );
        self.activate(conn, next);
    }

    /// The peer holds this SA (see [`SaSink::confirmed`]): no longer deferred; the outbound one
    /// at once if the current outbound SA is retired.
    fn confirmed(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        let Some(t) = self.tunnels.get_mut(conn) else {
            return;
        };
        let out_retired = t.sas.iter().any(|s| Some(s.spi_out) == t.out && s.retired);
        let Some(sa) = t.sas.iter_mut().find(|s| s.spi_in == spi_in && s.spi_out == spi_out && !s.retired) else {
            return;
        };
        sa.switch_at = None;
        if t.out.is_none() || (out_retired && t.out != Some(spi_out)) {
            logln!(self.log, "engine: conn {conn}: the peer holds {spi_out:08x}: sending on it");
            self.activate(conn, spi_out);
        }
    }

    fn update_endpoints(&mut self, conn: &str, local: SocketAddr, remote: SocketAddr, encap: Option<UdpEncap>) {
        let Some(t) = self.tunnels.get_mut(conn) else {
            return;
        };
        let mut spec = t.spec.clone();
        spec.local_addr = local.ip();
        spec.remote_addr = remote.ip();
        spec.udp_encap = chan_encap(encap);
        if spec != t.spec {
            t.spec = spec.clone();
            self.request(format!("tunnel {conn}: endpoints"), Request::UpsertTunnel(spec));
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.tunnels
            .values()
            .flat_map(|t| t.sas.iter().filter_map(|s| s.switch_at))
            .chain(self.retry_at)
            .chain(self.sync_at)
            .chain(self.session.as_ref().filter(|s| !s.ready).map(|s| s.hello_by))
            .chain(self.wants_counters().then_some(self.counters_at))
            .min()
    }

    /// Whether counters are worth reading: a session is up and SAs are installed.
    fn wants_counters(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.ready) && self.tunnels.values().any(|t| !t.sas.is_empty())
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|t| t <= now) && self.session.is_none() {
            self.connect(now);
        }
        if self.session.as_ref().is_some_and(|s| !s.ready && s.hello_by <= now) {
            self.lose(now, "no Hello from the engine", RETRY_MAX);
        }
        if self.sync_at.is_some_and(|t| t <= now) {
            self.sync_at = None;
            self.restate();
        }
        if self.wants_counters() && self.counters_at <= now {
            self.counters_at = now + COUNTERS_EVERY;
            self.request("counters".into(), Request::Counters { tunnel: None });
        }
        let due: Vec<(String, u32)> = self
            .tunnels
            .iter()
            .flat_map(|(n, t)| {
                t.sas.iter().filter(|s| s.switch_at.is_some_and(|w| w <= now)).map(|s| (n.clone(), s.spi_out))
            })
            .collect();
        for (conn, spi_out) in due {
            logln!(self.log, "engine: conn {conn}: old SA not retired in time; sending on {spi_out:08x}");
            self.activate(&conn, spi_out);
        }
    }
}

impl SaSink for EngineSink {
    fn install(&mut self, conn: &str, sa: ChildSa) {
        self.0.borrow_mut().install(conn, &sa, Instant::now());
    }

    fn delete(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        self.0.borrow_mut().delete(conn, spi_in, spi_out);
    }

    fn retire(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        self.0.borrow_mut().retire(conn, spi_in, spi_out);
    }

    fn confirmed(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        self.0.borrow_mut().confirmed(conn, spi_in, spi_out);
    }

    fn update_endpoints(&mut self, conn: &str, local: SocketAddr, remote: SocketAddr, encap: Option<UdpEncap>) {
        self.0.borrow_mut().update_endpoints(conn, local, remote, encap);
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.0.borrow().poll.as_raw_fd())
    }

    fn on_readable(&mut self, now: Instant) {
        let mut l = self.0.borrow_mut();
        let l = &mut *l;
        // Consume the inner poll's readiness (edge-triggered), then serve both directions.
        let _ = l.poll.poll(&mut l.events, Some(Duration::ZERO));
        l.read_in(now);
        l.write_out(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.borrow().next_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.0.borrow_mut().on_timeout(now);
    }

    fn poll_dataplane_event(&mut self) -> Option<DataplaneEvent> {
        self.0.borrow_mut().dp_events.pop_front()
    }

    fn counters(&self, _conn: &str, spi_in: u32, spi_out: u32) -> Option<crate::sink::SaCounters> {
        let l = self.0.borrow();
        let (packets_in, bytes_in) = l.sa_counters.get(&(Direction::In, spi_in)).copied()?;
        let (packets_out, bytes_out) = l.sa_counters.get(&(Direction::Out, spi_out)).copied().unwrap_or((0, 0));
        Some(crate::sink::SaCounters { bytes_in, bytes_out, packets_in, packets_out })
    }

    fn connection_changed(&mut self, spec: &Connection) {
        self.add_connection(spec);
    }

    fn connection_removed(&mut self, name: &str) {
        self.remove_connection(name);
    }
}

impl IkeTransport for EngineIke {
    fn send(&mut self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let mut l = self.0.borrow_mut();
        if l.session.is_none() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no engine session"));
        }
        l.queue(&ControlMsg::SendIke(IkeDatagram { local, remote, payload: datagram.to_vec() }));
        Ok(())
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> Option<(SocketAddr, SocketAddr)> {
        let d = self.0.borrow_mut().ike_in.pop_front()?;
        buf.clear();
        buf.extend_from_slice(&d.payload);
        Some((d.local, d.remote))
    }

    fn describe(&self) -> String {
        format!("IKE through the engine's channel {}", self.0.borrow().path.display())
    }
}
