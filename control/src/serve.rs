//! `ipsec-control serve`: the whole control plane in one process — the management store and HTTP
//! API of [`ipsec_mgmt`] (on the main thread, a single-threaded tokio runtime) and the IKE
//! [`Daemon`] (on its own thread, its `mio` loop), joined by the management plane's
//! [`ChannelEffects`] and [`StatusBoard`].
//!
//! * **Connections** come from the store: at start every stored VPN connection is replayed (so a
//!   restart re-establishes the same connections), then every committed change
//!   ([`ConnectionChange`]) is applied in order: created → [`Daemon::add_connection`] (initiated
//!   at once with `EffectImmediately`), modified → [`Daemon::replace_connection`] (re-negotiated
//!   when anything negotiated changed), deleted → [`Daemon::remove_connection`] (DELETE to the
//!   peer, SAs out of the data plane).
//! * **Translation** ([`translate`]): the connection id is the IKE connection's name; the VPN
//!   gateway's `PublicIp` is the local address (it must be the address the daemon listens on,
//!   `--ike-listen`), the customer gateway's `IpAddress` the remote one; `IkeConfig`/`IpsecConfig`
//!   become one IKE and one ESP proposal (`aes` = AES-128-CBC, `groupN` = MODP group N, PFS when
//!   `IpsecPfs` is a group), `LocalSubnet`/`RemoteSubnet` the traffic selectors, `LocalId`/
//!   `RemoteId` the identities, `EnableDpd` DPD every 30 s and dead after 30 s without an answer
//!   (the seed's values), `EnableNatTraversal` NAT-T. A lifetime of 0 means "never rekey" (a
//!   10-year lifetime). `IkeVersion` ikev1 connections are negotiated by the IKEv1 core in the
//!   `IkeMode` (main or aggressive) with the same algorithms ([`crate::config::v1_config`]).
//! * **Status and logs**: the daemon's [`ConnObserver`] publishes each connection's
//!   [`ConnStatus`] to the status board (DescribeVpnConnection shows `Status`, `IkeSaState`,
//!   `IpsecSaState`, the established times and, when the sink counts, bytes and packets) and
//!   appends every negotiation step to the connection's log ([`Service::record_log`], which also
//!   scrubs the PSK should one ever slip into a line).
//! * **The data plane**: `--engine SOCKET` publishes the Child SAs to the AF_XDP engine and speaks
//!   IKE through it ([`crate::engine_link`], as `run --engine`; the daemon binds no UDP socket).
//!   Otherwise the SA sink stays pluggable: a factory builds it on the IKE thread once the sockets
//!   exist (`--forwarder TUN`: the userspace ESP forwarder of the interop tests; default: log only).
//! * **Shutdown**: SIGINT/SIGTERM stop the API; the IKE thread then deletes every IKE SA (DELETE to
//!   the peers) and exits.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use ipsec_ike::config::{Config, IKE_PORT, NATT_PORT};
use ipsec_ike::crypto::dh::DhGroup as IkeDh;
use ipsec_ike::message::ProtocolId;
use ipsec_ike::transforms::{EncrAlg, Esn, IntegAlg, PrfAlg, ProposalSpec};
use ipsec_mgmt::api::Service;
use ipsec_mgmt::effects::{ChannelEffects, ConnectionChange, StatusBoard};
use ipsec_mgmt::model::{
    AuthAlg, ConnectionStatus, DhGroup, EncAlg, IkeMode, IkeVersion, LiveStatus, TrafficCounters, VpnConnection,
};

use crate::config::{identification, ip_id, selector, v1_config, Connection, DaemonConfig, DaemonSettings, Mode};
use crate::daemon::{ConnObserver, ConnStatus, Daemon, IkeState};
use crate::log::Logger;
use crate::logln;
use crate::sink::{RecordingSink, SaSink};

/// Builds the SA sink on the IKE thread, once the daemon's sockets exist.
pub type SinkFactory = Box<dyn FnOnce(&Daemon) -> io::Result<Box<dyn SaSink>> + Send>;

/// Settings of the IKE side of `serve`.
pub struct IkeOptions {
    /// The address the IKE sockets are bound to: the VPN gateway's PublicIp.
    pub listen: IpAddr,
    /// Our IKE port (500).
    pub ike_port: u16,
    /// Our NAT-T port (4500).
    pub natt_port: u16,
    /// The customer gateways' IKE port (500; tests on unprivileged ports change it).
    pub peer_ike_port: u16,
    /// Pretend to be behind a NAT so ESP is always in UDP (the forwarder can serve nothing else).
    pub force_encap: bool,
    /// DPD (interval, timeout) instead of the seed's 30 s / 30 s (tests).
    pub dpd: Option<(Duration, Duration)>,
    /// The 0600 state file of the daemon, if any.
    pub state_file: Option<std::path::PathBuf>,
    /// The AF_XDP engine's channel socket (`--engine`): Child SAs are published to the engine and
    /// IKE is sent and received through it ([`crate::engine_link`]; no UDP socket is bound, the
    /// [`SinkFactory`] is not used).
    pub engine: Option<std::path::PathBuf>,
}

impl IkeOptions {
    /// Defaults: ports 500 / 4500, the seed's DPD.
    #[must_use]
    pub fn new(listen: IpAddr) -> Self {
        IkeOptions {
            listen,
            ike_port: IKE_PORT,
            natt_port: NATT_PORT,
            peer_ike_port: IKE_PORT,
            force_encap: false,
            dpd: None,
            state_file: None,
            engine: None,
        }
    }
}

fn encr(e: EncAlg) -> EncrAlg {
    match e {
        EncAlg::Aes => EncrAlg::AES128_CBC,
        EncAlg::Aes192 => EncrAlg::AesCbc { key_bits: 192 },
        EncAlg::Aes256 => EncrAlg::AES256_CBC,
        EncAlg::Des => EncrAlg::Des,
        EncAlg::TripleDes => EncrAlg::TripleDes,
    }
}

fn hash(a: AuthAlg) -> (PrfAlg, IntegAlg) {
    match a {
        AuthAlg::Md5 => (PrfAlg::HmacMd5, IntegAlg::HmacMd5_96),
        AuthAlg::Sha1 => (PrfAlg::HmacSha1, IntegAlg::HmacSha1_96),
        AuthAlg::Sha256 => (PrfAlg::HmacSha256, IntegAlg::HmacSha256_128),
        AuthAlg::Sha384 => (PrfAlg::HmacSha384, IntegAlg::HmacSha384_192),
        AuthAlg::Sha512 => (PrfAlg::HmacSha512, IntegAlg::HmacSha512_256),
    }
}

fn dh(g: DhGroup) -> IkeDh {
    match g {
        DhGroup::Group1 => IkeDh::Modp768,
        DhGroup::Group2 => IkeDh::Modp1024,
        DhGroup::Group5 => IkeDh::Modp1536,
        DhGroup::Group14 => IkeDh::Modp2048,
        DhGroup::Group24 => IkeDh::Modp2048S256,
    }
}

fn lifetime(secs: u32) -> Duration {
    if secs == 0 {
        Duration::from_secs(10 * 365 * 86400)
    } else {
        Duration::from_secs(u64::from(secs).max(10))
    }
}

fn nets(list: &ipsec_mgmt::model::SubnetList) -> Result<Vec<IpNet>, String> {
    list.0.iter().map(|c| c.to_string().parse::<IpNet>().map_err(|e| format!("subnet {c}: {e}"))).collect()
}

/// The daemon's connection for a stored VPN connection between `local` (the VPN gateway's
/// PublicIp) and `remote` (the customer gateway's IpAddress); see the module doc.
///
/// # Errors
/// A subnet the IKE side cannot express, or algorithms IKEv1 cannot use (IkeVersion ikev1).
pub fn translate(c: &VpnConnection, local: IpAddr, remote: IpAddr, o: &IkeOptions) -> Result<Connection, String> {
    let (i, s) = (&c.ike_config, &c.ipsec_config);
    let (prf, integ) = hash(i.ike_auth_alg);
    let (_, esp_integ) = hash(s.ipsec_auth_alg);
    let mut ike = Config::new(i.psk.as_bytes());
    ike.ike_proposals = vec![ProposalSpec {
        protocol: ProtocolId::IKE,
        encr: vec![encr(i.ike_enc_alg)],
        prf: vec![prf],
        integ: vec![integ],
        dh: vec![dh(i.ike_pfs)],
        esn: vec![],
    }];
    ike.esp_proposals = vec![ProposalSpec {
        protocol: ProtocolId::ESP,
        encr: vec![encr(s.ipsec_enc_alg)],
        prf: vec![],
        integ: vec![esp_integ],
        dh: s.ipsec_pfs.group().map(dh).into_iter().collect(),
        esn: vec![Esn::No],
    }];
    ike.ike_lifetime = lifetime(i.ike_lifetime);
    ike.child_lifetime = lifetime(s.ipsec_lifetime);
    ike.local_id = if i.local_id.is_empty() { None } else { Some(identification(&i.local_id)) };
    ike.remote_id = Some(if i.remote_id.is_empty() { ip_id(remote) } else { identification(&i.remote_id) });
    let local_subnets = nets(&c.local_subnet)?;
    let remote_subnets = nets(&c.remote_subnet)?;
    ike.local_ts = local_subnets.iter().map(selector).collect();
    ike.remote_ts = remote_subnets.iter().map(selector).collect();
    let (interval, timeout) = o.dpd.unwrap_or((Duration::from_secs(30), Duration::from_secs(30)));
    ike.dpd_interval = c.enable_dpd.then_some(interval);
    ike.dpd_timeout = timeout;
    ike.nat_traversal = c.enable_nat_traversal;
    ike.force_encap = o.force_encap && c.enable_nat_traversal;
    ike.natt_port = o.natt_port;
    let v1 = if i.ike_version == IkeVersion::Ikev1 {
        let mode = if i.ike_mode == IkeMode::Aggressive { Mode::Aggressive } else { Mode::Main };
        ike.force_encap = false;
        Some(v1_config(&ike, mode, &local_subnets, &remote_subnets).map_err(|e| format!("IKEv1: {e}"))?)
    } else {
        None
    };
    Ok(Connection {
        name: c.vpn_connection_id.clone(),
        local,
        remote: Some(remote),
        remote_port: o.peer_ike_port,
        effect_immediately: c.effect_immediately,
        local_subnets,
        remote_subnets,
        ike,
        v1,
    })
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The management API's view of a connection's status.
#[must_use]
pub fn live_status(st: &ConnStatus) -> LiveStatus {
    let child = st.child_established();
    let status = match (st.ike, child) {
        (_, true) => ConnectionStatus::IpsecSaEstablished,
        (IkeState::Established, false) => ConnectionStatus::IpsecSaNotEstablished,
        _ => ConnectionStatus::IkeSaNotEstablished,
    };
    LiveStatus {
        status,
        ike_sa_state: match st.ike {
            IkeState::Down => "down",
            IkeState::Connecting => "connecting",
            IkeState::Established => "established",
        },
        ipsec_sa_state: if child { "established" } else { "down" },
        ike_sa_established_time: st.ike_established_at.map(ms),
        ipsec_sa_established_time: st.children.iter().filter_map(|c| c.established_at).max().map(ms),
        counters: st.counters.map(|k| TrafficCounters {
            bytes_in: k.bytes_in,
            bytes_out: k.bytes_out,
            packets_in: k.packets_in,
            packets_out: k.packets_out,
        }),
    }
}

/// Logs and statuses of the daemon into the management store and status board. Log lines go to
/// a writer thread ([`log_writer`]) so that the IKE loop never waits for a disk commit.
struct MgmtObserver {
    lines: std::sync::mpsc::Sender<(String, String)>,
    board: Arc<StatusBoard>,
}

impl ConnObserver for MgmtObserver {
    fn log(&mut self, conn: &str, line: &str) {
        let _ = self.lines.send((conn.to_string(), line.to_string()));
    }

    fn status(&mut self, status: &ConnStatus) {
        self.board.set_live(&status.name, live_status(status));
    }

    fn removed(&mut self, conn: &str) {
        self.board.remove(conn);
    }
}

/// Stores the connection log lines the IKE thread produces: waits for one, takes whatever else is
/// queued (up to 512), commits them in one transaction; ends when the IKE thread drops its sender.
fn log_writer(service: Arc<Service>, rx: Receiver<(String, String)>, log: Logger) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        if let Err(e) = service.record_logs(&batch) {
            logln!(log, "storing {} connection log line(s) failed: {}", batch.len(), e.message);
        }
    }
}

/// The IKE side of `serve`: applies the management plane's changes to the daemon.
struct IkeSide {
    daemon: Daemon,
    service: Arc<Service>,
    board: Arc<StatusBoard>,
    opts: IkeOptions,
    log: Logger,
}

impl IkeSide {
    fn upsert(&mut self, c: &VpnConnection, now: Instant) {
        let id = c.vpn_connection_id.as_str();
        let known = self.daemon.connection_status(id).is_some();
        let translated = self
            .service
            .gateways_of(c)
            .map_err(|e| e.message)
            .and_then(|(gw, cgw)| translate(c, gw.public_ip, cgw.ip_address, &self.opts));
        let r = match translated {
            Ok(spec) if known => self.daemon.replace_connection(spec, now).map(|_| ()),
            Ok(spec) => self.daemon.add_connection(spec, now),
            Err(e) => {
                if known {
                    let _ = self.daemon.remove_connection(id, now);
                }
                self.board.remove(id);
                Err(e)
            }
        };
        if let Err(e) = r {
            logln!(self.log, "conn {id}: {e}");
            let _ = self.service.record_log(id, &format!("not negotiated: {e}"));
        }
    }

    fn apply(&mut self, change: ConnectionChange, now: Instant) {
        match change {
            ConnectionChange::Created(c) | ConnectionChange::Modified(c) => self.upsert(&c, now),
            ConnectionChange::Deleted { vpn_connection_id, .. } => {
                if self.daemon.remove_connection(&vpn_connection_id, now).is_err() {
                    self.board.remove(&vpn_connection_id);
                }
            }
        }
    }
}

/// Starts the IKE thread: builds the daemon (sockets on `opts.listen`), its sink, replays every
/// stored connection, then applies `changes` in order until `stop` is set, and finally deletes
/// every IKE SA. Returns once the sockets are bound (or failed to bind).
///
/// # Errors
/// Binding the sockets or building the sink failed.
pub fn spawn_ike(
    service: Arc<Service>,
    changes: Receiver<ConnectionChange>,
    board: Arc<StatusBoard>,
    opts: IkeOptions,
    sink: SinkFactory,
    log: Logger,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = std::thread::Builder::new()
        .name("ike".into())
        .spawn(move || {
            let settings = DaemonSettings {
                listen: opts.listen,
                ike_port: opts.ike_port,
                natt_port: opts.natt_port,
                control_socket: None,
                state_file: opts.state_file.clone(),
                log_messages: true,
            };
            let cfg = DaemonConfig { daemon: settings, connections: Vec::new() };
            let built = match &opts.engine {
                Some(socket) => crate::engine_link::attach(socket, &cfg, log.clone())
                    .and_then(|(sink, ike)| Daemon::with_transport(cfg, Box::new(sink), Box::new(ike), log.clone())),
                None => Daemon::new(cfg, Box::new(RecordingSink::default()), log.clone()).and_then(|mut d| {
                    let s = sink(&d)?;
                    d.set_sink(s)?;
                    Ok(d)
                }),
            };
            let mut daemon = match built {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("IKE daemon: {e}")));
                    return;
                }
            };
            let (lines_tx, lines_rx) = std::sync::mpsc::channel();
            let writer = {
                let (service, log) = (service.clone(), log.clone());
                std::thread::Builder::new().name("ike-log".into()).spawn(move || log_writer(service, lines_rx, log))
            };
            daemon.set_observer(Box::new(MgmtObserver { lines: lines_tx, board: board.clone() }));
            let _ = ready_tx.send(Ok(()));
            let mut side = IkeSide { daemon, service, board, opts, log };
            match side.service.vpn_connections() {
                Ok(all) => {
                    logln!(side.log, "replaying {} stored VPN connection(s)", all.len());
                    let now = Instant::now();
                    for c in all {
                        side.upsert(&c, now);
                    }
                }
                Err(e) => logln!(side.log, "reading the stored connections failed: {}", e.message),
            }
            while !stop.load(Ordering::Relaxed) {
                loop {
                    match changes.try_recv() {
                        Ok(ch) => side.apply(ch, Instant::now()),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                if let Err(e) = side.daemon.step(Duration::from_millis(20)) {
                    logln!(side.log, "IKE loop: {e}");
                    break;
                }
            }
            let _ = side.daemon.shutdown(Duration::from_secs(3));
            let IkeSide { daemon, log, .. } = side;
            // Dropping the daemon drops the observer's sender: the writer stores the rest and ends.
            drop(daemon);
            if let Ok(w) = writer {
                let _ = w.join();
            }
            logln!(log, "IKE thread exits");
        })
        .map_err(|e| format!("IKE thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err("IKE thread died".into()),
    }
}

/// `ipsec-control serve`: the management API (`mgmt` options of `ipsec-mgmtd`) with the IKE side
/// attached; returns after SIGINT/SIGTERM once the IKE SAs are deleted.
///
/// # Errors
/// The state, the API socket or the IKE sockets could not be opened.
pub fn serve(
    mgmt: ipsec_mgmt::daemon::Options,
    opts: IkeOptions,
    sink: SinkFactory,
    log: Logger,
) -> Result<(), String> {
    let board = Arc::new(StatusBoard::default());
    let (effects, rx) = ChannelEffects::new(board.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let mut thread = None;
    let r = ipsec_mgmt::daemon::serve_with_hook(mgmt, effects, |service| {
        thread = Some(spawn_ike(service, rx, board, opts, sink, log.clone(), stop.clone())?);
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = thread {
        let _ = t.join();
    }
    r
}
