//! Run-time connection management of the [`Daemon`]: connections added, replaced and removed while
//! it runs (the management API's effects), per-connection logs and status snapshots for an
//! observer, and re-initiation with back-off after the peer was declared dead.
//!
//! * **Add** ([`Daemon::add_connection`]): a new [`Endpoint`] for the connection; with
//!   `effect_immediately` it initiates at once, otherwise it waits for the peer or for traffic
//!   ([`Daemon::acquire`], which the data plane's acquire calls).
//! * **Replace** ([`Daemon::replace_connection`]): when anything the peers negotiate changed
//!   (addresses, subnets, proposals, lifetimes, PSK, identities, DPD, NAT-T), every IKE SA of the
//!   connection is deleted (INFORMATIONAL with DELETE, so the peer removes its SAs too) and, for a
//!   connection that can initiate and was up or has `effect_immediately`, a new one is initiated
//!   with the new settings at once (the seed's ModifyVpnConnectionAttribute re-negotiates). New
//!   responder SAs use the new settings from then on.
//! * **Remove** ([`Daemon::remove_connection`]): DELETE to the peer, then the connection stays
//!   until its IKE SAs are gone or [`REMOVE_GRACE`] has passed (whatever is left is deleted from the
//!   sink), and is dropped.
//! * **Re-initiation**: when DPD declares the peer dead, or an IKE SA we wanted up fails (no answer,
//!   refused proposal, failed authentication), a connection with a remote address initiates again
//!   after [`RETRY_INITIAL`], doubling up to [`RETRY_MAX`]; an established IKE SA resets the
//!   back-off. A DELETE from the peer is respected (no re-initiation), as strongSwan's default
//!   `close_action = none` does.
//! * **Observer** ([`ConnObserver`]): one line per negotiation step (IKE_SA_INIT sent/received with
//!   the proposals offered or chosen, NO_PROPOSAL_CHOSEN and why, AUTH, Child SA installed with
//!   SPIs and algorithms, rekeys, DPD checks and failures, DELETEs, errors, re-initiation), and a
//!   [`ConnStatus`] snapshot whenever it changes and every [`PUBLISH_EVERY`] (for the counters).
//!   No line ever carries a PSK or key: lines are built from SPIs, algorithms, selectors and
//!   addresses only.

use std::collections::HashMap;
use std::time::SystemTime;

use ipsec_ike::crypto::dh::DhGroup;
use ipsec_ike::ike_sa::Failure;
use ipsec_ike::message::{Message, NotifyType, Payload, PayloadType, Proposal, TransformType};
use ipsec_ike::transforms::{EncrAlg, Esn, IntegAlg, PrfAlg, ProposalSpec};

use super::*;
use crate::sink::SaCounters;

/// First re-initiation delay after the peer was declared dead or an initiation failed.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// The re-initiation delay doubles up to this.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a removed connection waits for the peer to answer its DELETE.
pub const REMOVE_GRACE: Duration = Duration::from_secs(5);
/// Statuses (with traffic counters) are published at least this often.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// Run-time state of one connection.
#[derive(Debug, Default)]
pub(super) struct ConnRuntime {
    /// Being removed: dropped once its IKE SAs are gone or at this deadline.
    removing: Option<Instant>,
    /// The connection should be up (we initiated it, or it was established): re-initiate when the
    /// peer is declared dead or an initiation fails.
    wants_up: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    ike_up_at: Option<SystemTime>,
    child_up_at: HashMap<u32, SystemTime>,
    /// The last (exchange, message id) of a request we logged, to say "retransmitted".
    last_request: Option<(u8, u32, u64)>,
    dirty: bool,
}

impl ConnRuntime {
    pub(super) fn is_removing(&self) -> bool {
        self.removing.is_some()
    }

    /// An IKE SA of the connection came up: no re-initiation pending, back-off reset.
    pub(super) fn established(&mut self) {
        self.ike_up_at = Some(SystemTime::now());
        self.wants_up = true;
        self.backoff = Duration::ZERO;
        self.retry_at = None;
        self.dirty = true;
    }

    pub(super) fn ike_up_at(&self) -> Option<SystemTime> {
        self.ike_up_at
    }

    pub(super) fn child_up_at(&self, spi_in: u32) -> Option<SystemTime> {
        self.child_up_at.get(&spi_in).copied()
    }

    /// A Child SA was installed (`true`) or deleted.
    pub(super) fn child_changed(&mut self, spi_in: u32, installed: bool) {
        if installed {
            self.child_up_at.insert(spi_in, SystemTime::now());
        } else {
            self.child_up_at.remove(&spi_in);
        }
        self.dirty = true;
    }

    pub(super) fn retry_scheduled(&self) -> bool {
        self.retry_at.is_some()
    }

    /// Something changed: publish the status.
    pub(super) fn touch(&mut self) {
        self.dirty = true;
    }

    pub(super) fn initiated(&mut self) {
        self.wants_up = true;
        self.retry_at = None;
        self.dirty = true;
    }
}

/// Receives per-connection log lines and status snapshots (the management API's logs and
/// DescribeVpnConnection). Called on the daemon's thread: must not block long.
pub trait ConnObserver: Send {
    /// One log line of connection `conn` (no secrets in it).
    fn log(&mut self, conn: &str, line: &str);
    /// The connection's current status.
    fn status(&mut self, _status: &ConnStatus) {}
    /// The connection was removed.
    fn removed(&mut self, _conn: &str) {}
}

/// Phase-1 state of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IkeState {
    /// No IKE SA.
    Down,
    /// IKE_SA_INIT / IKE_AUTH in progress.
    Connecting,
    /// Authenticated.
    Established,
}

/// One installed Child SA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// Our inbound SPI.
    pub spi_in: u32,
    /// Our outbound SPI.
    pub spi_out: u32,
    /// Algorithms, strongSwan style (`aes256-sha256`, `aes128gcm16`).
    pub algorithms: String,
    /// When it was installed.
    pub established_at: Option<SystemTime>,
    /// Traffic, when the sink can tell.
    pub counters: Option<SaCounters>,
}

/// A connection's live status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnStatus {
    /// The connection's name.
    pub name: String,
    /// Phase 1.
    pub ike: IkeState,
    /// The IKE core's state name (`Established`, `ExpectAuthResponse`, ...), or `Down`.
    pub ike_state: &'static str,
    /// When the IKE SA (of the connection, across rekeys) was established.
    pub ike_established_at: Option<SystemTime>,
    /// The Child SAs of every live IKE SA of the connection: one per Child SA of the connection's
    /// IKE SA, plus, for a few seconds after both sides initiated at once, those of the redundant
    /// IKE SA being deleted.
    pub children: Vec<ChildStatus>,
    /// Sum of the Child SAs' counters, when the sink can tell.
    pub counters: Option<SaCounters>,
    /// A re-initiation is scheduled.
    pub retry_scheduled: bool,
}

impl ConnStatus {
    /// Whether at least one Child SA is installed.
    #[must_use]
    pub fn child_established(&self) -> bool {
        !self.children.is_empty()
    }
}

/// The re-initiation delay after `prev` (zero: none yet): [`RETRY_INITIAL`], then doubled up to
/// [`RETRY_MAX`].
#[must_use]
pub fn next_backoff(prev: Duration) -> Duration {
    if prev.is_zero() {
        RETRY_INITIAL
    } else {
        (prev * 2).min(RETRY_MAX)
    }
}

/// Whether anything the peers negotiate differs (a change re-negotiates).
fn negotiation_changed(a: &Connection, b: &Connection) -> bool {
    let (x, y) = (&a.ike, &b.ike);
    // The IKEv1 configuration is derived from `ike` but for the version and the mode.
    a.v1.as_ref().map(|v| v.mode) != b.v1.as_ref().map(|v| v.mode)
        || a.local != b.local
        || a.remote != b.remote
        || a.remote_port != b.remote_port
        || a.local_subnets != b.local_subnets
        || a.remote_subnets != b.remote_subnets
        || x.ike_proposals != y.ike_proposals
        || x.esp_proposals != y.esp_proposals
        || x.ike_lifetime != y.ike_lifetime
        || x.child_lifetime != y.child_lifetime
        || x.psk.expose() != y.psk.expose()
        || x.local_id != y.local_id
        || x.remote_id != y.remote_id
        || x.local_ts != y.local_ts
        || x.remote_ts != y.remote_ts
        || x.dpd_interval != y.dpd_interval
        || x.dpd_timeout != y.dpd_timeout
        || x.nat_traversal != y.nat_traversal
        || x.force_encap != y.force_encap
        || x.natt_port != y.natt_port
}

/// strongSwan's name of an encryption algorithm.
#[must_use]
pub fn encr_name(e: EncrAlg) -> String {
    match e {
        EncrAlg::Des => "des".into(),
        EncrAlg::TripleDes => "3des".into(),
        EncrAlg::AesCbc { key_bits } => format!("aes{key_bits}"),
        EncrAlg::AesGcm16 { key_bits } => format!("aes{key_bits}gcm16"),
    }
}

pub(super) fn integ_name(i: IntegAlg) -> &'static str {
    match i {
        IntegAlg::HmacMd5_96 => "md5",
        IntegAlg::HmacSha1_96 => "sha1",
        IntegAlg::HmacSha256_128 => "sha256",
        IntegAlg::HmacSha384_192 => "sha384",
        IntegAlg::HmacSha512_256 => "sha512",
    }
}

fn prf_name(p: PrfAlg) -> &'static str {
    match p {
        PrfAlg::HmacMd5 => "prfmd5",
        PrfAlg::HmacSha1 => "prfsha1",
        PrfAlg::HmacSha256 => "prfsha256",
        PrfAlg::HmacSha384 => "prfsha384",
        PrfAlg::HmacSha512 => "prfsha512",
    }
}

fn dh_name(g: DhGroup) -> String {
    format!("{g:?}").to_ascii_lowercase()
}

/// A proposal of a received or sent SA payload, strongSwan style (`aes256-sha256-prfsha256-modp2048`).
fn wire_proposal(p: &Proposal) -> String {
    let rank = |t: TransformType| match t {
        TransformType::ENCR => 0,
        TransformType::INTEG => 1,
        TransformType::PRF => 2,
        TransformType::DH => 3,
        _ => 4,
    };
    let mut ts: Vec<_> = p.transforms.iter().collect();
    ts.sort_by_key(|t| rank(t.transform_type));
    let mut v = Vec::new();
    for t in ts {
        let id = t.transform_id;
        let s = match t.transform_type {
            TransformType::ENCR => EncrAlg::from_transform(t).map_or_else(|| format!("encr{id}"), encr_name),
            TransformType::PRF => PrfAlg::from_id(id).map_or_else(|| format!("prf{id}"), |x| prf_name(x).into()),
            TransformType::INTEG => {
                IntegAlg::from_id(id).map_or_else(|| format!("integ{id}"), |x| integ_name(x).into())
            }
            TransformType::DH => DhGroup::from_id(id).map_or_else(|| format!("dh{id}"), dh_name),
            TransformType::ESN => match Esn::from_id(id) {
                Some(Esn::Yes) => "esn".into(),
                Some(Esn::No) => "noesn".into(),
                None => format!("esn{id}"),
            },
            _ => format!("t{}:{id}", t.transform_type.0),
        };
        v.push(s);
    }
    v.join("-")
}

/// Our configured proposals, strongSwan style.
#[must_use]
pub fn spec_proposals(specs: &[ProposalSpec]) -> String {
    let list: Vec<String> = specs
        .iter()
        .map(|p| {
            let mut v: Vec<String> = p.encr.iter().map(|e| encr_name(*e)).collect();
            v.extend(p.integ.iter().map(|i| integ_name(*i).to_string()));
            v.extend(p.prf.iter().map(|x| prf_name(*x).to_string()));
            v.extend(p.dh.iter().map(|g| dh_name(*g)));
            v.join("-")
        })
        .collect();
    list.join(", ")
}

fn offer(m: &Message) -> Option<String> {
    match m.find(PayloadType::SA) {
        Some(Payload::Sa(sa)) => Some(sa.proposals.iter().map(wire_proposal).collect::<Vec<_>>().join(", ")),
        _ => None,
    }
}

fn first_error(m: &Message) -> Option<NotifyType> {
    m.payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
        _ => None,
    })
}

fn notify_has(m: &Message, t: NotifyType) -> bool {
    m.payloads.iter().any(|p| matches!(p, Payload::Notify(n) if n.notify_type == t))
}

fn notify_name(t: NotifyType) -> String {
    t.name().map_or_else(|| format!("notify {}", t.0), str::to_string)
}

fn nets(list: &[ipnet::IpNet]) -> String {
    list.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// A Child SA for the connection log: SPIs, algorithms (strongSwan names), selectors, endpoints.
fn child_line(sa: &ipsec_ike::ike_sa::ChildSa) -> String {
    let ts = |l: &[ipsec_ike::message::TrafficSelector]| {
        l.iter().flat_map(selector_prefixes).map(|n| n.to_string()).collect::<Vec<_>>().join(",")
    };
    let mut alg = encr_name(sa.encr);
    if let Some(i) = sa.integ {
        alg.push('-');
        alg.push_str(integ_name(i));
    }
    if sa.esn == Esn::Yes {
        alg.push_str("-esn");
    }
    format!(
        "spi_in={:08x} spi_out={:08x} {alg} local {} remote {} {} <-> {}{}",
        sa.inbound_spi(),
        sa.outbound_spi(),
        ts(sa.local_ts()),
        ts(sa.remote_ts()),
        sa.local,
        sa.remote,
        sa.encap.map_or_else(String::new, |e| format!(" in UDP {}->{}", e.local_port, e.remote_port)),
    )
}

impl Daemon {
    /// Sets the observer of per-connection logs and statuses (the management API).
    pub fn set_observer(&mut self, observer: Box<dyn ConnObserver>) {
        self.observer = Some(observer);
        self.next_publish = None;
        for c in &mut self.conns {
            c.rt.dirty = true;
        }
    }

    /// Names of the connections (including ones being removed).
    #[must_use]
    pub fn connection_names(&self) -> Vec<String> {
        self.conns.iter().map(|c| c.spec.name.clone()).collect()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.conns.iter().position(|c| c.spec.name == name && !c.rt.is_removing())
    }

    /// Adds a connection at run time; with `effect_immediately` it is initiated at once.
    ///
    /// # Errors
    /// The name exists already, or the connection's local address is not the daemon's.
    pub fn add_connection(&mut self, spec: Connection, now: Instant) -> Result<(), String> {
        if self.conns.iter().any(|c| c.spec.name == spec.name) {
            return Err(format!("conn {}: exists already (or is still being removed)", spec.name));
        }
        if spec.local != self.settings.listen {
            return Err(format!(
                "conn {}: local address {} is not this daemon's address {}",
                spec.name, spec.local, self.settings.listen
            ));
        }
        let line = format!(
            "connection added: {} -> {} local {} remote {} (IKE {}; ESP {})",
            spec.local,
            spec.remote.map_or_else(|| "%any".to_string(), |r| r.to_string()),
            nets(&spec.local_subnets),
            nets(&spec.remote_subnets),
            spec_proposals(&spec.ike.ike_proposals),
            spec_proposals(&spec.ike.esp_proposals),
        );
        self.conns.push(Conn {
            endpoint: Endpoint::new(EndpointConfig::new(Some(spec.ike.clone()))),
            spec,
            handle: None,
            rt: ConnRuntime { dirty: true, ..ConnRuntime::default() },
        });
        let i = self.conns.len() - 1;
        self.sink.connection_changed(&self.conns[i].spec);
        self.note(i, line, true);
        if self.conns[i].spec.effect_immediately {
            if let Err(e) = self.initiate(i, now) {
                self.note(i, e, true);
            }
        } else {
            self.note(i, "waiting for traffic or the peer (EffectImmediately = false)".into(), true);
        }
        self.flush(now);
        Ok(())
    }

    /// Replaces a connection's settings. Returns whether it re-negotiates (see the module doc).
    ///
    /// # Errors
    /// No connection of that name, or the local address is not the daemon's.
    pub fn replace_connection(&mut self, spec: Connection, now: Instant) -> Result<bool, String> {
        let i = self.index_of(&spec.name).ok_or_else(|| format!("no connection named {:?}", spec.name))?;
        if spec.local != self.settings.listen {
            return Err(format!(
                "conn {}: local address {} is not this daemon's address {}",
                spec.name, spec.local, self.settings.listen
            ));
        }
        let renegotiate = negotiation_changed(&self.conns[i].spec, &spec);
        let was_up = self.is_connected(i);
        let now_immediate = spec.effect_immediately && !self.conns[i].spec.effect_immediately;
        self.conns[i].endpoint.set_responder(Some(spec.ike.clone()));
        self.conns[i].spec = spec;
        self.conns[i].rt.dirty = true;
        self.sink.connection_changed(&self.conns[i].spec);
        if !renegotiate {
            self.note(i, "configuration changed; nothing negotiated changed".into(), true);
            if now_immediate && !was_up && self.conns[i].spec.remote.is_some() {
                self.note(i, "EffectImmediately is now true: initiating".into(), true);
                if let Err(e) = self.initiate(i, now) {
                    self.note(i, e, true);
                }
                self.flush(now);
            }
            return Ok(false);
        }
        self.note(
            i,
            format!(
                "configuration changed: re-negotiating (IKE {}; ESP {}; local {} remote {})",
                spec_proposals(&self.conns[i].spec.ike.ike_proposals),
                spec_proposals(&self.conns[i].spec.ike.esp_proposals),
                nets(&self.conns[i].spec.local_subnets),
                nets(&self.conns[i].spec.remote_subnets),
            ),
            true,
        );
        self.close_all(i, now);
        self.conns[i].handle = None;
        self.conns[i].rt.retry_at = None;
        self.conns[i].rt.backoff = Duration::ZERO;
        self.conns[i].rt.ike_up_at = None;
        let c = &self.conns[i];
        if c.spec.remote.is_some() && (was_up || c.spec.effect_immediately || c.rt.wants_up) {
            if let Err(e) = self.initiate(i, now) {
                self.note(i, e, true);
            }
        }
        self.flush(now);
        Ok(true)
    }

    /// Removes a connection: DELETE to the peer, then dropped once its IKE SAs are gone (at most
    /// [`REMOVE_GRACE`] later).
    ///
    /// # Errors
    /// No connection of that name.
    pub fn remove_connection(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.index_of(name).ok_or_else(|| format!("no connection named {name:?}"))?;
        self.note(i, "connection deleted: deleting its IKE SA and Child SAs".into(), true);
        self.conns[i].rt.removing = Some(now + REMOVE_GRACE);
        self.conns[i].rt.wants_up = false;
        self.conns[i].rt.retry_at = None;
        self.close_all(i, now);
        self.flush(now);
        self.runtime_tick(now);
        Ok(())
    }

    /// Traffic for connection `name` needs an SA (the data plane's acquire, or EffectImmediately =
    /// false connections on demand): initiates unless an IKE SA is up or being set up.
    ///
    /// # Errors
    /// No such connection, or it cannot initiate (no remote address).
    pub fn acquire(&mut self, name: &str, now: Instant) -> Result<String, String> {
        let i = self.index_of(name).ok_or_else(|| format!("no connection named {name:?}"))?;
        if !self.is_connected(i) {
            self.note(i, "acquire: traffic needs an SA, initiating".into(), true);
        }
        let r = self.initiate(i, now);
        self.flush(now);
        r
    }

    /// The live status of a connection.
    #[must_use]
    pub fn connection_status(&self, name: &str) -> Option<ConnStatus> {
        self.index_of(name).map(|i| self.status_of(i))
    }

    /// The live status of every connection.
    #[must_use]
    pub fn statuses(&self) -> Vec<ConnStatus> {
        (0..self.conns.len()).filter(|i| !self.conns[*i].rt.is_removing()).map(|i| self.status_of(i)).collect()
    }

    fn status_of(&self, i: usize) -> ConnStatus {
        if self.conns[i].spec.v1.is_some() {
            return self.v1_status_of(i);
        }
        let c = &self.conns[i];
        let sa = self.live(i).and_then(|h| c.endpoint.ike_sa(h));
        let (ike, ike_state) = match sa {
            Some(sa) if sa.is_established() => (IkeState::Established, sa.state_name()),
            Some(sa) => (IkeState::Connecting, sa.state_name()),
            None => (IkeState::Down, "Down"),
        };
        let mut total: Option<SaCounters> = None;
        // Every IKE SA of the connection, not only the current one: when both sides initiate at
        // once two IKE SAs (each with a Child SA) exist side by side until the redundant one is
        // deleted (see the daemon's documentation), and both may carry traffic meanwhile.
        let children: Vec<ChildStatus> = c
            .endpoint
            .handles()
            .filter_map(|h| c.endpoint.ike_sa(h))
            .filter(|sa| !sa.is_finished())
            .flat_map(|sa| {
                sa.child_sas()
                    .map(|ch| {
                        let counters = self.sink.counters(&c.spec.name, ch.inbound_spi(), ch.outbound_spi());
                        if let Some(k) = counters {
                            *total.get_or_insert_with(SaCounters::default) += k;
                        }
                        let mut algorithms = encr_name(ch.encr);
                        if let Some(i) = ch.integ {
                            algorithms.push('-');
                            algorithms.push_str(integ_name(i));
                        }
                        ChildStatus {
                            spi_in: ch.inbound_spi(),
                            spi_out: ch.outbound_spi(),
                            algorithms,
                            established_at: c.rt.child_up_at.get(&ch.inbound_spi()).copied(),
                            counters,
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        ConnStatus {
            name: c.spec.name.clone(),
            ike,
            ike_state,
            ike_established_at: if ike == IkeState::Established { c.rt.ike_up_at } else { None },
            children,
            counters: total,
            retry_scheduled: c.rt.retry_at.is_some(),
        }
    }

    /// Closes every IKE SA of connection `i` (DELETE to the peer for established ones).
    fn close_all(&mut self, i: usize, now: Instant) {
        let name = self.conns[i].spec.name.clone();
        self.v1_close(&name, now);
        let handles: Vec<SaHandle> = self.conns[i].endpoint.handles().collect();
        for h in handles {
            let rng = &mut self.rng;
            self.conns[i].endpoint.with_sa(h, |sa| sa.close(now, rng));
        }
    }

    /// One line to the observer (and, with `also_log`, to the daemon log).
    pub(super) fn note(&mut self, i: usize, line: String, also_log: bool) {
        let name = &self.conns[i].spec.name;
        if also_log {
            logln!(self.log, "conn {name}: {line}");
        }
        if let Some(o) = self.observer.as_mut() {
            o.log(name, &line);
        }
    }

    /// Connection `i` lost its last SA (peer dead, failed initiation): re-initiates with back-off
    /// if it should be up.
    pub(super) fn lost(&mut self, i: usize, now: Instant, why: &str) {
        let rt = &self.conns[i].rt;
        if rt.wants_up && !rt.is_removing() && self.conns[i].spec.remote.is_some() {
            self.schedule_retry(i, now, why);
        }
    }

    fn schedule_retry(&mut self, i: usize, now: Instant, why: &str) {
        let rt = &mut self.conns[i].rt;
        rt.backoff = next_backoff(rt.backoff);
        rt.retry_at = Some(now + rt.backoff);
        let secs = rt.backoff.as_secs_f32();
        self.note(i, format!("{why}: re-initiating in {secs:.0} s"), true);
    }

    /// The earliest run-time timer (re-initiation, removal deadline, status publication).
    pub(super) fn runtime_timeout(&self) -> Option<Instant> {
        let conns = self.conns.iter().flat_map(|c| [c.rt.retry_at, c.rt.removing]).flatten();
        let publish = if self.observer.is_some() { self.next_publish } else { None };
        conns.chain(publish).min()
    }

    /// Fires due re-initiations, finishes removals, publishes statuses.
    pub(super) fn runtime_tick(&mut self, now: Instant) {
        let mut acted = false;
        for i in 0..self.conns.len() {
            let rt = &self.conns[i].rt;
            if rt.removing.is_none() && rt.retry_at.is_some_and(|t| t <= now) {
                self.conns[i].rt.retry_at = None;
                if !self.is_connected(i) {
                    let backoff = self.conns[i].rt.backoff.as_secs_f32();
                    self.note(i, format!("re-initiating (after {backoff:.0} s back-off)"), true);
                    if let Err(e) = self.initiate(i, now) {
                        self.note(i, e, true);
                    }
                    acted = true;
                }
            }
        }
        if acted {
            self.flush(now);
        }
        // Removals, from the back so indices below stay valid.
        for i in (0..self.conns.len()).rev() {
            let Some(deadline) = self.conns[i].rt.removing else {
                continue;
            };
            let v1_left = self.v1.is_live(&self.conns[i].spec.name);
            if (!self.conns[i].endpoint.is_empty() || v1_left) && now < deadline {
                continue;
            }
            let c = self.conns.remove(i);
            let name = c.spec.name.clone();
            for (spi_in, spi_out) in self.v1.child_spis(&name) {
                self.sink.delete(&name, spi_in, spi_out);
            }
            self.v1.forget(&name);
            for h in c.endpoint.handles() {
                if let Some(sa) = c.endpoint.ike_sa(h) {
                    for ch in sa.child_sas() {
                        self.sink.delete(&name, ch.inbound_spi(), ch.outbound_spi());
                    }
                }
            }
            self.sink.connection_removed(&name);
            self.spi_owner.retain(|_, v| v.0 != i);
            for v in self.spi_owner.values_mut() {
                if v.0 > i {
                    v.0 -= 1;
                }
            }
            let leftover = if c.endpoint.is_empty() { "" } else { " (the peer did not answer the DELETE)" };
            logln!(self.log, "conn {name}: removed{leftover}");
            if let Some(o) = self.observer.as_mut() {
                o.log(&name, &format!("connection removed{leftover}"));
                o.removed(&name);
            }
            self.write_state();
        }
        if self.observer.is_some() {
            let all = self.next_publish.is_none_or(|t| t <= now);
            if all {
                self.next_publish = Some(now + PUBLISH_EVERY);
            }
            for i in 0..self.conns.len() {
                if self.conns[i].rt.is_removing() || !(all || self.conns[i].rt.dirty) {
                    continue;
                }
                self.conns[i].rt.dirty = false;
                let st = self.status_of(i);
                if let Some(o) = self.observer.as_mut() {
                    o.status(&st);
                }
            }
        }
    }

    /// An IKE message from the peer for connection `i` (before the IKE core sees it).
    pub(super) fn observe_received(&mut self, i: usize, remote: SocketAddr, msg: &[u8]) {
        if self.observer.is_none() {
            return;
        }
        let Ok(p) = Header::peek(msg) else {
            return;
        };
        let h = p.header;
        let ex = h.exchange_type.name().unwrap_or("?");
        let kind = if h.flags.response { "response" } else { "request" };
        let line = if h.exchange_type == ExchangeType::IKE_SA_INIT {
            let Ok(m) = Message::parse(msg) else {
                return;
            };
            let ours = spec_proposals(&self.conns[i].spec.ike.ike_proposals);
            match (h.flags.response, first_error(&m)) {
                (false, _) => format!(
                    "IKE_SA_INIT request received from {remote}, peer offers: {}",
                    offer(&m).unwrap_or_else(|| "nothing".into())
                ),
                (true, Some(e)) if e == NotifyType::NO_PROPOSAL_CHOSEN => {
                    format!("IKE_SA_INIT: the peer refused our proposals with NO_PROPOSAL_CHOSEN (we offered: {ours})")
                }
                (true, Some(e)) if e == NotifyType::INVALID_KE_PAYLOAD => {
                    "IKE_SA_INIT: the peer wants another DH group (INVALID_KE_PAYLOAD), retrying".into()
                }
                (true, Some(e)) => format!("IKE_SA_INIT: the peer answered with error {}", notify_name(e)),
                (true, None) if notify_has(&m, NotifyType::COOKIE) => {
                    "IKE_SA_INIT: the peer asks for a COOKIE, retrying with it".into()
                }
                (true, None) => format!(
                    "IKE_SA_INIT response received from {remote}, proposal chosen: {}",
                    offer(&m).unwrap_or_else(|| "none".into())
                ),
            }
        } else {
            format!("{ex} {kind} received from {remote} (message id {})", h.message_id)
        };
        self.note(i, line, false);
    }

    /// An IKE message we send for connection `i`.
    pub(super) fn observe_transmit(&mut self, i: usize, t: &Transmit) {
        if self.observer.is_none() || t.is_keepalive() {
            return;
        }
        let Ok(p) = Header::peek(&t.payload) else {
            return;
        };
        let h = p.header;
        let ex = h.exchange_type.name().unwrap_or("?");
        let remote = t.remote;
        if h.flags.response {
            let line = if h.exchange_type == ExchangeType::IKE_SA_INIT {
                match Message::parse(&t.payload) {
                    Ok(m) if notify_has(&m, NotifyType::NO_PROPOSAL_CHOSEN) => format!(
                        "IKE_SA_INIT: refused the peer's offer with NO_PROPOSAL_CHOSEN: none matches ours ({})",
                        spec_proposals(&self.conns[i].spec.ike.ike_proposals)
                    ),
                    Ok(m) if notify_has(&m, NotifyType::INVALID_KE_PAYLOAD) => {
                        "IKE_SA_INIT: asked the peer for another DH group (INVALID_KE_PAYLOAD)".into()
                    }
                    Ok(m) if notify_has(&m, NotifyType::COOKIE) => "IKE_SA_INIT: answered with a COOKIE".into(),
                    Ok(m) => format!(
                        "IKE_SA_INIT response sent to {remote}, proposal chosen: {}",
                        offer(&m).unwrap_or_else(|| "none".into())
                    ),
                    Err(_) => return,
                }
            } else {
                format!("{ex} response sent to {remote} (message id {})", h.message_id)
            };
            self.note(i, line, false);
            return;
        }
        // A request: what for, and whether it is a retransmission.
        let spi = if h.flags.initiator { h.spi_i } else { h.spi_r };
        let key = (h.exchange_type.0, h.message_id, spi);
        let again = self.conns[i].rt.last_request == Some(key);
        self.conns[i].rt.last_request = Some(key);
        let ep = &self.conns[i].endpoint;
        let task = ep
            .handles()
            .filter_map(|hd| ep.ike_sa(hd))
            .find(|sa| sa.local_spis().contains(&spi))
            .and_then(|sa| sa.outstanding_request())
            .filter(|(mid, _)| *mid == h.message_id)
            .map(|(_, what)| what);
        let what = match (h.exchange_type, task) {
            (ExchangeType::IKE_SA_INIT, _) => {
                let offered = Message::parse(&t.payload).ok().and_then(|m| offer(&m)).unwrap_or_default();
                format!("IKE_SA_INIT request sent to {remote}, offering: {offered}")
            }
            (ExchangeType::IKE_AUTH, _) => format!("IKE_AUTH request sent to {remote} (PSK authentication)"),
            (_, Some("dpd")) => format!("DPD: liveness check sent to {remote}"),
            (_, Some("delete_ike")) => format!("DELETE of the IKE SA sent to {remote}"),
            (_, Some("delete_child")) => format!("DELETE of a Child SA sent to {remote}"),
            (_, Some("rekey_child")) => format!("rekeying a Child SA: CREATE_CHILD_SA sent to {remote}"),
            (_, Some("rekey_ike")) => format!("rekeying the IKE SA: CREATE_CHILD_SA sent to {remote}"),
            (_, Some("create_child")) => format!("new Child SA: CREATE_CHILD_SA sent to {remote}"),
            _ => format!("{ex} request sent to {remote}"),
        };
        let line = if again {
            format!("{what} (retransmission, message id {})", h.message_id)
        } else {
            format!("{what} (message id {})", h.message_id)
        };
        self.note(i, line, false);
    }

    /// An event of connection `i` (before the daemon acts on it).
    pub(super) fn observe_event(&mut self, i: usize, h: SaHandle, ev: &Event) {
        let now = Instant::now();
        // The connection's IKE SA, and no other one (a duplicate) carries on without it.
        let current = self.conns[i].handle == Some(h) && self.other_live(i, h).is_none();
        self.conns[i].rt.dirty = true;
        // Our proposals, written out only for the failures that show them (not per event: this
        // runs for every SA set up).
        let reason = |f: &Failure, what: &str| -> String {
            match f {
                Failure::PeerError(n) if *n == NotifyType::NO_PROPOSAL_CHOSEN => {
                    format!("NO_PROPOSAL_CHOSEN: the peer accepted none of our {what} proposals")
                }
                Failure::LocalError(n) if *n == NotifyType::NO_PROPOSAL_CHOSEN => {
                    format!("NO_PROPOSAL_CHOSEN: none of the peer's {what} proposals matches ours")
                }
                Failure::PeerError(n) if *n == NotifyType::AUTHENTICATION_FAILED => {
                    "AUTH failed: the peer refused our authentication (PSK or identity mismatch)".into()
                }
                Failure::LocalError(n) if *n == NotifyType::AUTHENTICATION_FAILED => {
                    "AUTH failed: the peer's AUTH did not verify (PSK or identity mismatch)".into()
                }
                Failure::PeerError(n) if *n == NotifyType::TS_UNACCEPTABLE => {
                    "TS_UNACCEPTABLE: the peer refused our subnets".into()
                }
                Failure::LocalError(n) if *n == NotifyType::TS_UNACCEPTABLE => {
                    "TS_UNACCEPTABLE: the peer's subnets are not within ours".into()
                }
                Failure::PeerError(n) => format!("the peer answered with error {}", notify_name(*n)),
                Failure::LocalError(n) => format!("refused the peer's message with {}", notify_name(*n)),
                Failure::Timeout => "no answer from the peer after all retransmissions".into(),
            }
        };
        match ev {
            Event::IkeSaEstablished { spi_i, spi_r, local, remote } => {
                let suite = self.conns[i]
                    .endpoint
                    .ike_sa(h)
                    .and_then(|sa| sa.keys())
                    .map(|k| {
                        let mut s = encr_name(k.suite.encr);
                        if let Some(x) = k.suite.integ {
                            s.push('-');
                            s.push_str(integ_name(x));
                        }
                        s.push('-');
                        s.push_str(prf_name(k.suite.prf));
                        s
                    })
                    .unwrap_or_default();
                let rt = &mut self.conns[i].rt;
                rt.ike_up_at = Some(SystemTime::now());
                rt.wants_up = true;
                rt.backoff = Duration::ZERO;
                rt.retry_at = None;
                self.note(
                    i,
                    format!(
                        "AUTH ok: IKE SA established spi_i={spi_i:016x} spi_r={spi_r:016x} {local} <-> {remote} ({suite})"
                    ),
                    false,
                );
            }
            Event::ChildSaInstalled(sa) => {
                self.conns[i].rt.child_up_at.insert(sa.inbound_spi(), SystemTime::now());
                self.note(i, format!("Child SA installed: {}", child_line(sa)), false);
            }
            Event::ChildSaDeleted { spi_in, spi_out } => {
                self.conns[i].rt.child_up_at.remove(spi_in);
                self.note(i, format!("Child SA deleted spi_in={spi_in:08x} spi_out={spi_out:08x}"), false);
            }
            Event::ChildSaFailed(f) => {
                let r = reason(f, "ESP");
                let esp = spec_proposals(&self.conns[i].spec.ike.esp_proposals);
                self.note(i, format!("Child SA negotiation failed: {r} (ours: {esp})"), false);
            }
            Event::IkeSaRekeyed { old, new } => self.note(
                i,
                format!("IKE SA rekeyed {:016x}/{:016x} -> {:016x}/{:016x}", old.0, old.1, new.0, new.1),
                false,
            ),
            Event::EndpointsChanged { local, remote, encap } => {
                let e = encap.map_or_else(|| "none".into(), |e| format!("udp {}->{}", e.local_port, e.remote_port));
                self.note(i, format!("endpoints changed {local} <-> {remote} encap {e}"), false);
            }
            Event::PeerDead => {
                let t = self.conns[i].spec.ike.dpd_timeout.as_secs();
                self.note(i, format!("DPD: peer dead (no answer within {t} s), IKE SA and Child SAs deleted"), false);
                if current {
                    self.conns[i].rt.ike_up_at = None;
                    if self.conns[i].spec.remote.is_some() && !self.conns[i].rt.is_removing() {
                        self.schedule_retry(i, now, "peer dead");
                    }
                }
            }
            Event::Closed => {
                self.note(i, "IKE SA deleted".into(), false);
                if current {
                    self.conns[i].rt.ike_up_at = None;
                    // A DELETE from the peer (or ours): respected, no re-initiation.
                    self.conns[i].rt.wants_up = false;
                }
            }
            Event::Failed(f) => {
                let r = reason(f, "IKE");
                let ours = if matches!(f, Failure::PeerError(n) | Failure::LocalError(n) if *n == NotifyType::NO_PROPOSAL_CHOSEN)
                {
                    format!(" (ours: {})", spec_proposals(&self.conns[i].spec.ike.ike_proposals))
                } else {
                    String::new()
                };
                self.note(i, format!("IKE SA failed: {r}{ours}"), false);
                let c = &self.conns[i];
                if current && c.rt.wants_up && c.spec.remote.is_some() && !c.rt.is_removing() {
                    self.conns[i].rt.ike_up_at = None;
                    self.schedule_retry(i, now, "IKE SA failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..9 {
            d = next_backoff(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn proposals_in_strongswan_syntax() {
        let c = ipsec_ike::config::Config::new(b"k");
        assert_eq!(
            spec_proposals(&c.ike_proposals),
            "aes256gcm16-aes256-aes128-sha256-sha1-prfsha256-prfsha384-prfsha1-ecp256-curve25519-modp2048"
        );
        let offer: Vec<Proposal> = ipsec_ike::transforms::build_offer(&c.esp_proposals, &[1, 2, 3, 4]);
        let names: Vec<String> = offer.iter().map(wire_proposal).collect();
        assert_eq!(names, ["aes128gcm16-noesn-esn", "aes256-sha256-noesn-esn"]);
    }
}
