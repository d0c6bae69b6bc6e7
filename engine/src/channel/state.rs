//! The control-owned state of the engine and how channel requests change it, without sockets or
//! AF_XDP: [`ControlState::apply`] takes one [`Request`] and edits the ESP core's lock-free tables
//! (the same [`Tables`] the workers read, safe to change while they run).
//!
//! Contract (the channel crate's, made concrete):
//! - **Ownership.** Tunnels and SAs from the static configuration are never touched: a request
//!   naming a static tunnel is refused, and control tunnels may not take a static tunnel's routes,
//!   flows or inbound SPIs. Control tunnels get ids above every static id.
//! - **Registry.** Every control tunnel is kept by name with its [`TunnelSpec`], its id, its
//!   routes/flows, its current outbound SA and its inbound SAs, each SA with the [`SaSpec`] it was
//!   built from (key material included, wiped on drop: it is needed to rebuild SAs when a
//!   tunnel's endpoints move, and the expanded keys are in memory anyway).
//! - **Replace keeps sequence numbers.** An outbound SA replaced under the same SPI (changed
//!   lifetime, moved endpoints, …) is rebuilt with [`OutboundSa::resume`] from the old SA's last
//!   sequence number, so AES-GCM IVs never repeat under a key. A restated *identical* SA is not
//!   rebuilt at all: the same object stays in the tables, with its sequence counter, replay
//!   window and counters.
//! - **Reconciliation.** Between `BeginSync` and `EndSync` every restated tunnel and SA is
//!   remembered; `EndSync` removes the control tunnels and SAs that were not, and reports
//!   added / replaced / kept / removed SA counts. A new `BeginSync` abandons an unfinished one.
//! - **One outbound SA per tunnel**: an outbound `AddSa` with a new SPI switches the tunnel to it
//!   (one atomic pointer swap) and drops the previous one, remembering its last sequence number
//!   (the last [`RETIRED_SEQS`] per tunnel): an outbound SA switched back to — or deleted and
//!   added again — resumes after it instead of restarting at 1, so the peer's replay window does
//!   not drop the packets and AES-GCM never repeats an IV under a key.
//! - **Errors** name the field (`tunnel.local_addr: …`, `sa.enc_key: …`) and never contain key
//!   bytes. A refused request changes nothing.
//! - **Steering.** The inside XDP program must steer the remote subnets of every tunnel to the
//!   workers; prefixes are reference-counted (static tunnels hold theirs for good) and pushed
//!   through the [`Steering`] hook.
//!
//! Limitation: an inbound SA rebuilt because its tunnel's endpoints changed starts with a fresh
//! replay window (the ESP core cannot move a window between SAs).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ipsec_channel::{
    CountersReport, Direction, Event, Limit, Request, Response, Routing, SaCounters as ChSaCounters, SaSpec,
    TunnelSpec, WorkerCounters as ChWorkerCounters,
};
use ipsec_esp::table::{Spi, TunnelId};
use ipsec_esp::{
    Cipher, CryptoProvider, EventQueue, InboundSa, Integrity, Lifetime, LimitKind, Limits, OutboundSa, SaConfig,
    SaEvent, UdpEncap,
};

use crate::config::{EngineConfig, Tables};
use crate::stats::{EngineDrop, WorkerStats};

/// Where the inside XDP program learns which destinations to steer to the workers.
pub trait Steering: Send {
    fn add_protected(&mut self, net: IpNet) -> Result<(), String>;
    fn remove_protected(&mut self, net: IpNet) -> Result<(), String>;
}

/// No XDP program (unit tests, or steering managed elsewhere).
pub struct NoSteering;

impl Steering for NoSteering {
    fn add_protected(&mut self, _: IpNet) -> Result<(), String> {
        Ok(())
    }
    fn remove_protected(&mut self, _: IpNet) -> Result<(), String> {
        Ok(())
    }
}

/// The SAs the control side installed, as the stats views list them (republished after changes).
#[derive(Default, Clone)]
pub struct SaLists {
    pub outbound: Vec<(String, Arc<OutboundSa>)>,
    pub inbound: Vec<(String, Arc<InboundSa>)>,
}

struct Installed<T> {
    sa: Arc<T>,
    spec: SaSpec,
    installed: Instant,
}

struct CtlTunnel {
    id: TunnelId,
    spec: TunnelSpec,
    out: Option<Installed<OutboundSa>>,
    ins: BTreeMap<u32, Installed<InboundSa>>,
    /// `(SPI, last sequence number)` of the outbound SAs this tunnel sent on before, newest
    /// last (at most [`RETIRED_SEQS`]).
    retired: Vec<(u32, u64)>,
}

/// Outbound SAs per tunnel whose last sequence number is remembered after they are replaced.
pub const RETIRED_SEQS: usize = 8;

impl CtlTunnel {
    fn sa_count(&self) -> u32 {
        self.ins.len() as u32 + self.out.is_some() as u32
    }

    /// Remembers where outbound SA `spi` stopped.
    fn retire(&mut self, spi: u32, last_seq: u64) {
        self.retired.retain(|(s, _)| *s != spi);
        if self.retired.len() == RETIRED_SEQS {
            self.retired.remove(0);
        }
        self.retired.push((spi, last_seq));
    }

    /// Where outbound SA `spi` stopped, if it was used before.
    fn retired_seq(&self, spi: u32) -> Option<u64> {
        self.retired.iter().find(|(s, _)| *s == spi).map(|(_, q)| *q)
    }
}

struct SyncRun {
    generation: u64,
    tunnels: HashSet<String>,
    sas: HashSet<(String, Direction, u32)>,
    added: u32,
    replaced: u32,
    kept: u32,
    removed: u32,
}

enum Outcome {
    Added,
    Replaced,
    Kept,
}

/// The engine's control-owned state; see the module docs.
pub struct ControlState {
    tables: Arc<Tables>,
    provider: &'static CryptoProvider,
    local_addrs: Vec<IpAddr>,
    static_tunnels: HashMap<String, TunnelId>,
    static_by_id: HashMap<u32, String>,
    started: Instant,
    tunnels: BTreeMap<String, CtlTunnel>,
    by_id: HashMap<u32, String>,
    next_id: u32,
    steering: Box<dyn Steering>,
    protected: HashMap<IpNet, u32>,
    sync: Option<SyncRun>,
    /// (direction, SPI) → tunnel, to name the tunnel of an SA event without a scan (checked
    /// against the registry before use; a miss falls back to a scan).
    sa_index: HashMap<(Direction, u32), String>,
    published: Arc<Mutex<SaLists>>,
    dirty: bool,
}

fn err(field: &str, msg: impl std::fmt::Display) -> String {
    format!("{field}: {msg}")
}

fn direction_of(d: ipsec_esp::Direction) -> Direction {
    match d {
        ipsec_esp::Direction::Inbound => Direction::In,
        ipsec_esp::Direction::Outbound => Direction::Out,
    }
}

fn limit_of(l: LimitKind) -> Limit {
    match l {
        LimitKind::Time => Limit::Time,
        LimitKind::Bytes => Limit::Bytes,
        LimitKind::Packets => Limit::Packets,
        LimitKind::Sequence => Limit::Sequence,
    }
}

fn check_net(field: &str, n: &IpNet) -> Result<(), String> {
    if n.trunc() != *n {
        return Err(err(field, format!("{n} has host bits set (did you mean {}?)", n.trunc())));
    }
    Ok(())
}

/// The (local, remote) subnet pairs of a flow-routed tunnel, same family only.
fn flow_pairs(spec: &TunnelSpec) -> Vec<(IpNet, IpNet)> {
    let mut v = Vec::new();
    for l in &spec.local_subnets {
        for r in &spec.remote_subnets {
            if l.addr().is_ipv4() == r.addr().is_ipv4() {
                v.push((*l, *r));
            }
        }
    }
    v
}

impl ControlState {
    /// State over `tables` (built from `cfg`, whose tunnels are the static ones). `steering`
    /// receives the remote subnets of control tunnels (the static ones are already steered).
    pub fn new(
        tables: Arc<Tables>,
        provider: &'static CryptoProvider,
        cfg: &EngineConfig,
        steering: Box<dyn Steering>,
        now: Instant,
    ) -> Self {
        let mut protected = HashMap::new();
        let mut max_id = 0;
        for t in &cfg.tunnels {
            for n in &t.remote_subnets {
                // Static tunnels hold their prefixes for good.
                *protected.entry(*n).or_insert(0) += 1 << 20;
            }
            max_id = max_id.max(t.id.0);
        }
        ControlState {
            tables,
            provider,
            local_addrs: cfg.local_addrs.clone(),
            static_tunnels: cfg.tunnels.iter().map(|t| (t.name.clone(), t.id)).collect(),
            static_by_id: cfg.tunnels.iter().map(|t| (t.id.0, t.name.clone())).collect(),
            started: now,
            tunnels: BTreeMap::new(),
            by_id: HashMap::new(),
            next_id: max_id.max(0xffff) + 1,
            steering,
            protected,
            sync: None,
            sa_index: HashMap::new(),
            published: Arc::new(Mutex::new(SaLists::default())),
            dirty: false,
        }
    }

    /// The list the stats views read; [`ControlState::publish`] refreshes it.
    pub fn published(&self) -> Arc<Mutex<SaLists>> {
        self.published.clone()
    }

    /// Refreshes [`ControlState::published`] if something changed since the last call.
    pub fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut l = SaLists::default();
        for (name, t) in &self.tunnels {
            if let Some(o) = &t.out {
                l.outbound.push((name.clone(), o.sa.clone()));
            }
            for i in t.ins.values() {
                l.inbound.push((name.clone(), i.sa.clone()));
            }
        }
        if let Ok(mut p) = self.published.lock() {
            *p = l;
        }
    }

    /// Drops an unfinished `BeginSync` (its session ended): nothing is removed, what was applied
    /// stays. Returns whether one was in progress.
    pub fn abandon_sync(&mut self) -> bool {
        self.sync.take().is_some()
    }

    /// Number of control-owned SAs (for the engine's `Hello`).
    pub fn control_sas(&self) -> u32 {
        self.tunnels.values().map(CtlTunnel::sa_count).sum()
    }

    /// Names of the control-owned tunnels.
    pub fn tunnel_names(&self) -> Vec<String> {
        self.tunnels.keys().cloned().collect()
    }

    /// The tunnel id of a control tunnel (tests, logs).
    pub fn tunnel_id(&self, name: &str) -> Option<TunnelId> {
        self.tunnels.get(name).map(|t| t.id)
    }

    /// The installed SA object of a control tunnel, for identity checks in tests.
    pub fn outbound_sa(&self, tunnel: &str) -> Option<Arc<OutboundSa>> {
        self.tunnels.get(tunnel)?.out.as_ref().map(|i| i.sa.clone())
    }

    /// The installed inbound SA `spi` of a control tunnel.
    pub fn inbound_sa(&self, tunnel: &str, spi: u32) -> Option<Arc<InboundSa>> {
        self.tunnels.get(tunnel)?.ins.get(&spi).map(|i| i.sa.clone())
    }

    /// Applies one request. `workers` feeds [`Request::Counters`].
    pub fn apply(&mut self, req: Request, now: Instant, workers: &[Arc<WorkerStats>]) -> Result<Response, String> {
        let r = match req {
            Request::Ping => return Ok(Response::Pong),
            Request::Counters { tunnel } => {
                return self.counters(tunnel.as_deref(), now, workers).map(Response::Counters)
            }
            Request::BeginSync { generation } => {
                self.sync = Some(SyncRun {
                    generation,
                    tunnels: HashSet::new(),
                    sas: HashSet::new(),
                    added: 0,
                    replaced: 0,
                    kept: 0,
                    removed: 0,
                });
                Ok(Response::Done)
            }
            Request::EndSync { generation } => self.end_sync(generation),
            Request::UpsertTunnel(spec) => self.upsert_tunnel(spec, now).map(|()| Response::Done),
            Request::RemoveTunnel { name } => self.remove_tunnel(&name).map(|()| Response::Done),
            Request::AddSa(spec) => self.add_sa(spec, now).map(|_| Response::Done),
            Request::DeleteSa { tunnel, direction, spi } => {
                self.delete_sa(&tunnel, direction, spi).map(|()| Response::Done)
            }
        };
        self.dirty = true;
        r
    }

    fn control_tunnel(&self, field: &str, name: &str) -> Result<&CtlTunnel, String> {
        if self.static_tunnels.contains_key(name) {
            return Err(err(field, format!("tunnel {name:?} belongs to the engine's static configuration")));
        }
        self.tunnels.get(name).ok_or_else(|| err(field, format!("no tunnel named {name:?}")))
    }

    // ---- tunnels --------------------------------------------------------------------------

    fn validate_tunnel(&self, spec: &TunnelSpec, id: Option<TunnelId>) -> Result<(), String> {
        if spec.name.is_empty() || spec.name.len() > 255 {
            return Err(err("tunnel.name", "must be 1 to 255 bytes"));
        }
        if self.static_tunnels.contains_key(&spec.name) {
            return Err(err("tunnel.name", format!("{:?} belongs to the engine's static configuration", spec.name)));
        }
        if !self.local_addrs.contains(&spec.local_addr) {
            return Err(err("tunnel.local_addr", format!("{} is not an address this engine serves", spec.local_addr)));
        }
        if spec.local_addr.is_ipv4() != spec.remote_addr.is_ipv4() {
            return Err(err("tunnel.remote_addr", "must be of the same family as local_addr"));
        }
        if spec.remote_addr.is_unspecified() || spec.remote_addr.is_multicast() {
            return Err(err("tunnel.remote_addr", format!("{} is not a unicast address", spec.remote_addr)));
        }
        if spec.local_subnets.is_empty() {
            return Err(err("tunnel.local_subnets", "at least one subnet is needed"));
        }
        if spec.remote_subnets.is_empty() {
            return Err(err("tunnel.remote_subnets", "at least one subnet is needed"));
        }
        for (k, n) in spec.local_subnets.iter().enumerate() {
            check_net(&format!("tunnel.local_subnets[{k}]"), n)?;
        }
        for (k, n) in spec.remote_subnets.iter().enumerate() {
            check_net(&format!("tunnel.remote_subnets[{k}]"), n)?;
        }
        if let Some(u) = spec.udp_encap {
            if u.local_port == 0 || u.remote_port == 0 {
                return Err(err("tunnel.udp_encap", "ports must be non-zero"));
            }
        }
        if let Some(m) = spec.mtu {
            if m < 576 {
                return Err(err("tunnel.mtu", format!("{m} is below 576")));
            }
        }
        let owner = |t: TunnelId| -> String {
            self.static_by_id.get(&t.0).or_else(|| self.by_id.get(&t.0)).cloned().unwrap_or_else(|| t.to_string())
        };
        match spec.routing {
            Routing::Destination => {
                for (k, n) in spec.remote_subnets.iter().enumerate() {
                    if let Some(t) = self.tables.outbound.routes.route(*n) {
                        if Some(t) != id {
                            return Err(err(
                                &format!("tunnel.remote_subnets[{k}]"),
                                format!("{n} is already routed to tunnel {:?}", owner(t)),
                            ));
                        }
                    }
                }
            }
            Routing::Flows => {
                if flow_pairs(spec).is_empty() {
                    return Err(err("tunnel.local_subnets", "no local/remote subnet pair of the same family"));
                }
                let ours: HashSet<_> = flow_pairs(spec).into_iter().collect();
                for (l, r, t) in self.tables.outbound.flows.flows() {
                    if Some(t) != id && ours.contains(&(l, r)) {
                        return Err(err(
                            "tunnel.remote_subnets",
                            format!("flow {l} -> {r} already belongs to tunnel {:?}", owner(t)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn add_policy(&mut self, spec: &TunnelSpec, id: TunnelId) {
        match spec.routing {
            Routing::Destination => {
                for n in &spec.remote_subnets {
                    self.tables.outbound.routes.add_route(*n, id);
                }
            }
            Routing::Flows => {
                for (l, r) in flow_pairs(spec) {
                    let _ = self.tables.outbound.flows.add_flow(l, r, id);
                }
            }
        }
        for n in &spec.remote_subnets {
            let c = self.protected.entry(*n).or_insert(0);
            *c += 1;
            if *c == 1 {
                if let Err(e) = self.steering.add_protected(*n) {
                    tracing::warn!("steering {n} to the workers: {e}");
                }
            }
        }
    }

    fn remove_policy(&mut self, spec: &TunnelSpec, id: TunnelId) {
        match spec.routing {
            Routing::Destination => {
                for n in &spec.remote_subnets {
                    if self.tables.outbound.routes.route(*n) == Some(id) {
                        self.tables.outbound.routes.remove_route(*n);
                    }
                }
            }
            Routing::Flows => {
                for (l, r) in flow_pairs(spec) {
                    if let Some(other) = self.tables.outbound.flows.remove_flow(l, r) {
                        if other != id {
                            let _ = self.tables.outbound.flows.add_flow(l, r, other);
                        }
                    }
                }
            }
        }
        for n in &spec.remote_subnets {
            if let Some(c) = self.protected.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    self.protected.remove(n);
                    if let Err(e) = self.steering.remove_protected(*n) {
                        tracing::warn!("unsteering {n}: {e}");
                    }
                }
            }
        }
    }

    fn upsert_tunnel(&mut self, spec: TunnelSpec, now: Instant) -> Result<(), String> {
        let existing = self.tunnels.get(&spec.name).map(|t| t.id);
        self.validate_tunnel(&spec, existing)?;
        if let Some(s) = self.sync.as_mut() {
            s.tunnels.insert(spec.name.clone());
        }
        let Some(id) = existing else {
            let mut id = self.next_id;
            while self.by_id.contains_key(&id) || self.static_by_id.contains_key(&id) {
                id = id.wrapping_add(1).max(0x10000);
            }
            self.next_id = id.wrapping_add(1).max(0x10000);
            let id = TunnelId(id);
            self.add_policy(&spec, id);
            self.by_id.insert(id.0, spec.name.clone());
            self.tunnels.insert(
                spec.name.clone(),
                CtlTunnel { id, spec, out: None, ins: BTreeMap::new(), retired: Vec::new() },
            );
            return Ok(());
        };
        let old = self.tunnels[&spec.name].spec.clone();
        if old == spec {
            return Ok(());
        }
        let moves = old.local_addr != spec.local_addr
            || old.remote_addr != spec.remote_addr
            || old.udp_encap != spec.udp_encap
            || old.local_subnets != spec.local_subnets
            || old.remote_subnets != spec.remote_subnets;
        // A new MTU only concerns the outbound SA.
        let rebuild_out = moves || old.mtu != spec.mtu;
        // Build the moved SAs first, so that a failure changes nothing.
        let mut new_out = None;
        let mut new_ins = Vec::new();
        let t = &self.tunnels[&spec.name];
        if rebuild_out {
            if let Some(o) = &t.out {
                let cfg = self.sa_config("sa", &o.spec, &spec)?;
                let cfg = self.with_inner_mtu(cfg, spec.mtu, now)?;
                let sa = OutboundSa::resume(&cfg, self.provider, now, o.sa.last_seq()).map_err(|e| err("sa", e))?;
                new_out = Some(Installed { sa: Arc::new(sa), spec: o.spec.clone(), installed: now });
            }
        }
        if moves {
            if spec.local_addr != old.local_addr {
                for spi in t.ins.keys() {
                    if self.tables.inbound.contains(Spi(*spi), spec.local_addr) {
                        return Err(err(
                            "tunnel.local_addr",
                            format!("inbound SPI {spi:#010x} is already in use on {}", spec.local_addr),
                        ));
                    }
                }
            }
            for (spi, i) in &t.ins {
                let cfg = self.sa_config("sa", &i.spec, &spec)?;
                let sa = InboundSa::new(&cfg, self.provider, now).map_err(|e| err("sa", e))?;
                new_ins.push((*spi, Installed { sa: Arc::new(sa), spec: i.spec.clone(), installed: now }));
            }
        }
        self.remove_policy(&old, id);
        self.add_policy(&spec, id);
        let t = self.tunnels.get_mut(&spec.name).expect("checked");
        if let Some(o) = new_out {
            self.tables.outbound.tunnels.set_sa(id, o.sa.clone());
            t.out = Some(o);
        }
        if moves {
            for (spi, i) in new_ins {
                if spec.local_addr == old.local_addr {
                    self.tables.inbound.replace(Spi(spi), spec.local_addr, i.sa.clone());
                } else {
                    let _ = self.tables.inbound.insert(Spi(spi), spec.local_addr, i.sa.clone());
                    self.tables.inbound.remove(Spi(spi), old.local_addr);
                }
                t.ins.insert(spi, i);
            }
        }
        t.spec = spec;
        Ok(())
    }

    fn remove_tunnel(&mut self, name: &str) -> Result<(), String> {
        self.control_tunnel("name", name)?;
        let removed = self.teardown(name);
        if let Some(s) = self.sync.as_mut() {
            s.removed += removed;
        }
        Ok(())
    }

    /// Removes a control tunnel with its SAs, routes and steering; returns its SA count.
    fn teardown(&mut self, name: &str) -> u32 {
        let Some(t) = self.tunnels.remove(name) else { return 0 };
        self.remove_policy(&t.spec, t.id);
        if t.out.is_some() {
            self.tables.outbound.tunnels.clear(t.id);
        }
        for spi in t.ins.keys() {
            self.tables.inbound.remove(Spi(*spi), t.spec.local_addr);
        }
        self.by_id.remove(&t.id.0);
        for key in t.out.iter().map(|o| (Direction::Out, o.spec.spi)).chain(t.ins.keys().map(|s| (Direction::In, *s))) {
            if self.sa_index.get(&key) == Some(&t.spec.name) {
                self.sa_index.remove(&key);
            }
        }
        t.sa_count()
    }

    // ---- SAs ------------------------------------------------------------------------------

    /// The ESP core's configuration of `sa` on tunnel `t`; errors name `prefix.field`.
    fn sa_config(&self, prefix: &str, sa: &SaSpec, t: &TunnelSpec) -> Result<SaConfig, String> {
        let f = |x: &str| format!("{prefix}.{x}");
        if sa.spi < 256 {
            return Err(err(&f("spi"), format!("{} is reserved (must be >= 256)", sa.spi)));
        }
        let cipher = Cipher::ALL.iter().copied().find(|c| c.name() == sa.cipher).ok_or_else(|| {
            let names: Vec<_> = Cipher::ALL.iter().map(|c| c.name()).collect();
            err(&f("cipher"), format!("unknown cipher {:?} (one of: {})", sa.cipher, names.join(", ")))
        })?;
        let integrity = Integrity::ALL.iter().copied().find(|i| i.name() == sa.integrity).ok_or_else(|| {
            let names: Vec<_> = Integrity::ALL.iter().map(|i| i.name()).collect();
            err(
                &f("integrity"),
                format!("unknown integrity algorithm {:?} (one of: {})", sa.integrity, names.join(", ")),
            )
        })?;
        if sa.enc_key.expose().len() != cipher.keymat_len() {
            return Err(err(
                &f("enc_key"),
                format!("{} needs {} bytes, got {}", cipher.name(), cipher.keymat_len(), sa.enc_key.expose().len()),
            ));
        }
        if sa.auth_key.expose().len() != integrity.key_len() {
            return Err(err(
                &f("auth_key"),
                format!("{} needs {} bytes, got {}", integrity.name(), integrity.key_len(), sa.auth_key.expose().len()),
            ));
        }
        if cipher.is_aead() && integrity != Integrity::None {
            return Err(err(&f("integrity"), "an AEAD cipher takes no separate integrity algorithm (use \"none\")"));
        }
        if !cipher.is_aead() && cipher != Cipher::Null && integrity == Integrity::None {
            return Err(err(&f("integrity"), "encryption without integrity is refused"));
        }
        let l = &sa.lifetime;
        for (name, soft, hard) in [
            ("seconds", l.soft_seconds, l.hard_seconds),
            ("bytes", l.soft_bytes, l.hard_bytes),
            ("packets", l.soft_packets, l.hard_packets),
        ] {
            if soft != 0 && hard != 0 && soft > hard {
                return Err(err(
                    &f(&format!("lifetime.soft_{name}")),
                    format!("soft limit {soft} is above the hard limit {hard}"),
                ));
            }
        }
        let mut cfg = SaConfig::new(
            sa.spi,
            cipher,
            sa.enc_key.expose(),
            integrity,
            sa.auth_key.expose(),
            t.local_addr,
            t.remote_addr,
        );
        cfg.esn = sa.esn;
        if sa.direction == Direction::In {
            if sa.replay_window != 0 && !(32..=ipsec_esp::replay::MAX_WINDOW).contains(&sa.replay_window) {
                return Err(err(
                    &f("replay_window"),
                    format!("{} out of range (0 or 32..={})", sa.replay_window, ipsec_esp::replay::MAX_WINDOW),
                ));
            }
            cfg.replay_window = sa.replay_window;
        }
        cfg.encap = t.udp_encap.map(|u| UdpEncap { local_port: u.local_port, remote_port: u.remote_port });
        cfg.local_ts = t.local_subnets.clone();
        cfg.remote_ts = t.remote_subnets.clone();
        let lim = |secs: u64, bytes: u64, packets: u64| Limits {
            time: (secs != 0).then(|| Duration::from_secs(secs)),
            bytes: (bytes != 0).then_some(bytes),
            packets: (packets != 0).then_some(packets),
        };
        cfg.lifetime = Lifetime {
            soft: lim(l.soft_seconds, l.soft_bytes, l.soft_packets),
            hard: lim(l.hard_seconds, l.hard_bytes, l.hard_packets),
        };
        Ok(cfg)
    }

    /// Applies a tunnel's inner MTU override to an outbound SA's configuration: the ESP core
    /// takes an *outer* path MTU ([`SaConfig::mtu`]), so this picks the smallest outer MTU whose
    /// inner MTU ([`OutboundSa::max_inner_len`]) is at least `inner` (it may exceed `inner` by
    /// less than one cipher block).
    fn with_inner_mtu(&self, mut cfg: SaConfig, inner: Option<u16>, now: Instant) -> Result<SaConfig, String> {
        let Some(inner) = inner else { return Ok(cfg) };
        let probe = OutboundSa::new(&cfg, self.provider, now).map_err(|e| err("sa", e))?;
        let inner = usize::from(inner);
        let base = inner + probe.header_overhead();
        let outer = (base..base + 128).find(|m| probe.max_inner_len(*m) >= inner).unwrap_or(base + 128);
        cfg.mtu = Some(u16::try_from(outer).map_err(|_| err("tunnel.mtu", format!("{inner} is too large")))?);
        Ok(cfg)
    }

    fn add_sa(&mut self, spec: SaSpec, now: Instant) -> Result<Outcome, String> {
        let t = self.control_tunnel("sa.tunnel", &spec.tunnel)?;
        let cfg = self.sa_config("sa", &spec, &t.spec)?;
        let (id, local, mtu) = (t.id, t.spec.local_addr, t.spec.mtu);
        let key = (spec.tunnel.clone(), spec.direction, spec.spi);
        let mut dropped = 0;
        let outcome = match spec.direction {
            Direction::In => {
                let prev = t.ins.get(&spec.spi);
                if prev.is_some_and(|p| p.spec == spec) {
                    Outcome::Kept
                } else {
                    if prev.is_none() && self.tables.inbound.contains(Spi(spec.spi), local) {
                        return Err(err("sa.spi", format!("inbound SPI {:#010x} on {local} is in use", spec.spi)));
                    }
                    let sa = Arc::new(InboundSa::new(&cfg, self.provider, now).map_err(|e| err("sa", e))?);
                    let outcome = if prev.is_some() {
                        self.tables.inbound.replace(Spi(spec.spi), local, sa.clone());
                        Outcome::Replaced
                    } else {
                        self.tables.inbound.insert(Spi(spec.spi), local, sa.clone()).map_err(|e| err("sa.spi", e))?;
                        Outcome::Added
                    };
                    let t = self.tunnels.get_mut(&spec.tunnel).expect("checked");
                    t.ins.insert(spec.spi, Installed { sa, spec, installed: now });
                    outcome
                }
            }
            Direction::Out => match t.out.as_ref() {
                Some(p) if p.spec == spec => Outcome::Kept,
                prev => {
                    let same_spi = prev.filter(|p| p.spec.spi == spec.spi);
                    // Same SPI as now or before (so the same keys, or the peer would not know
                    // it): continue the sequence numbers, never restart them under a key.
                    let last_seq = same_spi.map(|p| p.sa.last_seq()).or_else(|| t.retired_seq(spec.spi)).unwrap_or(0);
                    let replaced = prev.filter(|p| p.spec.spi != spec.spi).map(|p| (p.spec.spi, p.sa.last_seq()));
                    let outcome = match (prev.is_some(), same_spi.is_some()) {
                        (_, true) => Outcome::Replaced,
                        (true, false) => {
                            dropped = 1;
                            Outcome::Added
                        }
                        _ => Outcome::Added,
                    };
                    let cfg = self.with_inner_mtu(cfg.clone(), mtu, now)?;
                    let sa =
                        Arc::new(OutboundSa::resume(&cfg, self.provider, now, last_seq).map_err(|e| err("sa", e))?);
                    self.tables.outbound.tunnels.set_sa(id, sa.clone());
                    let t = self.tunnels.get_mut(&spec.tunnel).expect("checked");
                    if let Some((spi, seq)) = replaced {
                        t.retire(spi, seq);
                    }
                    t.out = Some(Installed { sa, spec, installed: now });
                    outcome
                }
            },
        };
        self.sa_index.insert((key.1, key.2), key.0.clone());
        if let Some(s) = self.sync.as_mut() {
            s.sas.insert(key);
            s.removed += dropped;
            match outcome {
                Outcome::Added => s.added += 1,
                Outcome::Replaced => s.replaced += 1,
                Outcome::Kept => s.kept += 1,
            }
        }
        Ok(outcome)
    }

    fn delete_sa(&mut self, tunnel: &str, direction: Direction, spi: u32) -> Result<(), String> {
        let t = self.control_tunnel("tunnel", tunnel)?;
        let (id, local) = (t.id, t.spec.local_addr);
        match direction {
            Direction::In => {
                if !t.ins.contains_key(&spi) {
                    return Err(err("spi", format!("tunnel {tunnel:?} has no inbound SA {spi:#010x}")));
                }
                self.tables.inbound.remove(Spi(spi), local);
                self.tunnels.get_mut(tunnel).expect("checked").ins.remove(&spi);
            }
            Direction::Out => {
                if t.out.as_ref().map(|o| o.spec.spi) != Some(spi) {
                    return Err(err("spi", format!("tunnel {tunnel:?} has no outbound SA {spi:#010x}")));
                }
                self.tables.outbound.tunnels.clear(id);
                let t = self.tunnels.get_mut(tunnel).expect("checked");
                if let Some(o) = t.out.take() {
                    t.retire(o.spec.spi, o.sa.last_seq());
                }
            }
        }
        if self.sa_index.get(&(direction, spi)).is_some_and(|n| n == tunnel) {
            self.sa_index.remove(&(direction, spi));
        }
        Ok(())
    }

    fn end_sync(&mut self, generation: u64) -> Result<Response, String> {
        match &self.sync {
            None => return Err(err("generation", format!("no BeginSync in progress (EndSync {generation})"))),
            Some(s) if s.generation != generation => {
                return Err(err(
                    "generation",
                    format!("EndSync {generation} does not match the BeginSync in progress ({})", s.generation),
                ))
            }
            _ => {}
        }
        let mut s = self.sync.take().expect("checked");
        let gone: Vec<String> = self.tunnels.keys().filter(|n| !s.tunnels.contains(*n)).cloned().collect();
        for name in gone {
            s.removed += self.teardown(&name);
        }
        let mut stale = Vec::new();
        for (name, t) in &self.tunnels {
            if let Some(o) = &t.out {
                if !s.sas.contains(&(name.clone(), Direction::Out, o.spec.spi)) {
                    stale.push((name.clone(), Direction::Out, o.spec.spi));
                }
            }
            for spi in t.ins.keys() {
                if !s.sas.contains(&(name.clone(), Direction::In, *spi)) {
                    stale.push((name.clone(), Direction::In, *spi));
                }
            }
        }
        for (name, d, spi) in stale {
            if self.delete_sa(&name, d, spi).is_ok() {
                s.removed += 1;
            }
        }
        Ok(Response::SyncDone { generation, added: s.added, replaced: s.replaced, kept: s.kept, removed: s.removed })
    }

    // ---- counters, events, housekeeping ---------------------------------------------------

    fn counters(
        &self,
        tunnel: Option<&str>,
        now: Instant,
        workers: &[Arc<WorkerStats>],
    ) -> Result<CountersReport, String> {
        if let Some(name) = tunnel {
            if !self.tunnels.contains_key(name) && !self.static_tunnels.contains_key(name) {
                return Err(err("tunnel", format!("no tunnel named {name:?}")));
            }
        }
        let wanted = |n: &str| tunnel.is_none_or(|t| t == n);
        let line = |name: &str, d: Direction, spi: u32, c: &ipsec_esp::SaCounters, at: Instant| ChSaCounters {
            tunnel: name.to_string(),
            direction: Some(d),
            spi,
            packets: c.packets(),
            bytes: c.bytes(),
            drops: c.total_drops(),
            age_seconds: now.saturating_duration_since(at).as_secs(),
        };
        let mut report = CountersReport::default();
        for (name, sa) in self.tables.outbound_sas.iter().filter(|(n, _)| wanted(n)) {
            report.sas.push(line(name, Direction::Out, sa.spi(), sa.counters(), self.started));
        }
        for (name, sa) in self.tables.inbound_sas.iter().filter(|(n, _)| wanted(n)) {
            report.sas.push(line(name, Direction::In, sa.spi(), sa.counters(), self.started));
        }
        for (name, t) in self.tunnels.iter().filter(|(n, _)| wanted(n)) {
            if let Some(o) = &t.out {
                report.sas.push(line(name, Direction::Out, o.sa.spi(), o.sa.counters(), o.installed));
            }
            for i in t.ins.values() {
                report.sas.push(line(name, Direction::In, i.sa.spi(), i.sa.counters(), i.installed));
            }
        }
        if tunnel.is_none() {
            for w in workers {
                let mut drops: Vec<(String, u64)> = EngineDrop::ALL
                    .iter()
                    .filter(|r| w.drops(**r) != 0)
                    .map(|r| (r.as_str().to_string(), w.drops(*r)))
                    .collect();
                drops.extend(w.esp.nonzero_drops().map(|(r, n)| (format!("esp.{}", r.as_str()), n)));
                report.workers.push(ChWorkerCounters {
                    worker: w.id as u32,
                    rx: w.rx.iter().map(|c| c.get()).sum(),
                    tx: w.tx.iter().map(|c| c.get()).sum(),
                    drops,
                });
            }
        }
        Ok(report)
    }

    /// The channel form of a data-plane event, with the tunnel's name; `None` when the SA or
    /// tunnel is gone (the event is stale).
    pub fn event(&self, e: SaEvent) -> Option<Event> {
        match e {
            SaEvent::Acquire { tunnel } => {
                let name = self.by_id.get(&tunnel).or_else(|| self.static_by_id.get(&tunnel))?;
                Some(Event::Acquire { tunnel: name.clone() })
            }
            SaEvent::RekeyRequested { spi, direction, limit } => {
                let tunnel = self.tunnel_of_sa(direction_of(direction), spi)?;
                Some(Event::RekeyRequested { tunnel, direction: direction_of(direction), spi, limit: limit_of(limit) })
            }
            SaEvent::Expired { spi, direction, limit } => {
                let tunnel = self.tunnel_of_sa(direction_of(direction), spi)?;
                Some(Event::Expired { tunnel, direction: direction_of(direction), spi, limit: limit_of(limit) })
            }
        }
    }

    fn tunnel_of_sa(&self, d: Direction, spi: u32) -> Option<String> {
        let holds = |t: &CtlTunnel| match d {
            Direction::Out => t.out.as_ref().is_some_and(|o| o.spec.spi == spi),
            Direction::In => t.ins.contains_key(&spi),
        };
        if let Some(name) = self.sa_index.get(&(d, spi)) {
            if self.tunnels.get(name).is_some_and(holds) {
                return Some(name.clone());
            }
        }
        for (name, t) in &self.tunnels {
            if holds(t) {
                return Some(name.clone());
            }
        }
        match d {
            Direction::Out => self.tables.outbound_sas.iter().find(|(_, s)| s.spi() == spi).map(|(n, _)| n.clone()),
            Direction::In => self.tables.inbound_sas.iter().find(|(_, s)| s.spi() == spi).map(|(n, _)| n.clone()),
        }
    }

    /// Checks the time limits of every SA (idle ones raise their events too).
    pub fn poll_lifetimes(&self, events: &EventQueue, now: Instant) {
        for (_, sa) in &self.tables.outbound_sas {
            sa.poll_lifetime(events, now);
        }
        for (_, sa) in &self.tables.inbound_sas {
            sa.poll_lifetime(events, now);
        }
        for t in self.tunnels.values() {
            if let Some(o) = &t.out {
                o.sa.poll_lifetime(events, now);
            }
            for i in t.ins.values() {
                i.sa.poll_lifetime(events, now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
