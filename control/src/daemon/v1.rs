//! The daemon's IKEv1 SAs: the one home of IKEv1 in the daemon.
//!
//! # Where the versions split
//!
//! At datagram classification ([`Daemon::drain`] in the parent module): an IKE message (after
//! [`nat::classify`](ipsec_ike::nat::classify)) whose ISAKMP version octet (offset 17) is 0x10
//! comes here ([`Daemon::v1_dispatch`]); everything else goes to the IKEv2 endpoints. A
//! connection is IKEv1 when its [`Connection::v1`](crate::config::Connection::v1) is set; its
//! IKEv2 endpoint then stays empty (IKEv2 dispatch skips it).
//!
//! # Routing and creation
//!
//! Each IKEv1 SA ([`Sa`]) lives in [`V1Sas`] with its connection's name. A message goes to the SA
//! whose initiator cookie it carries (and whose responder cookie, once both are known, matches);
//! an unknown initiator cookie with responder cookie 0, message ID 0 and exchange main (2) or
//! aggressive (4) creates a responder with the IKEv1 connection whose `remote_addr` is the
//! sender's address, else the first `%any` one, whose mode is that exchange. The responder is
//! kept only if the message was usable (it took the initiator cookie); at most
//! [`MAX_HALF_OPEN`] IKEv1 SAs may be unestablished at once.
//!
//! Not yet: a duplicate rule when both ends initiate at once (two ISAKMP SAs and two IPsec SA
//! pairs stay up side by side), choosing the responder's connection by the peer's ID (several
//! IKEv1 connections to one peer address: the first one answers).
//!
//! The control commands `rekey-child` and `rekey-ike` map to a new quick mode per IPsec SA and
//! to a reauthentication ([`Daemon::v1_rekey`]).
//!
//! # Events, traffic, reauthentication
//!
//! Events reach the same sink as IKEv2's (`ChildSaInstalled` → [`SaSink::install`], …). Inbound
//! ESP that the daemon sees (userspace forwarder: ESP-in-UDP arrives on our NAT-T socket) is
//! reported to its SA ([`Sa::note_inbound_traffic`], postpones DPD); with the AF_XDP engine ESP
//! never reaches the daemon, so DPD probes after `dpd_interval` whatever the traffic (the peer
//! answers them; only the probe traffic is extra). At [`Sa::reauth_at`] a new SA is initiated for
//! the connection and the old one is closed once the new one has installed as many IPsec SAs as
//! the connection has subnet pairs. The peer declared dead or an initiation failing re-initiates
//! with the connection's back-off (`runtime`), as for IKEv2.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use ipsec_ike::ike_sa::{ChildSa, Event};
use ipsec_ike::v1::sa::{Mode, Sa};

use super::runtime::{encr_name, integ_name};
use super::{describe, ChildStatus, ConnStatus, Daemon, IkeState};
use crate::logln;
use crate::sink::{DataplaneEvent, SaCounters};

/// At most this many IKEv1 SAs that are not established yet (half-open responders included): a
/// message 1 beyond it is dropped (IKEv1 has no cookie exchange to defend the responder).
pub(super) const MAX_HALF_OPEN: usize = 1024;

const EXCHANGE_MAIN: u8 = 2;
const EXCHANGE_AGGRESSIVE: u8 = 4;

/// Whether `msg` (an IKE message, non-ESP marker stripped) is IKEv1: major version 1.
#[must_use]
pub(super) fn is_v1(msg: &[u8]) -> bool {
    msg.len() >= 28 && msg[17] >> 4 == 1
}

struct Entry {
    id: u64,
    conn: String,
    sa: Sa,
    /// The SA this one replaces (reauthentication): closed once this one has its IPsec SAs.
    replaces: Option<u64>,
    /// A replacement was started for this SA.
    reauth_started: bool,
    installed: usize,
}

/// The IKEv1 SAs of the daemon; see the module documentation.
#[derive(Default)]
pub(super) struct V1Sas {
    entries: Vec<Entry>,
    next_id: u64,
    /// Our inbound IPsec SA SPI → the SA's id (inbound ESP postpones DPD).
    spi_owner: HashMap<u32, u64>,
}

impl V1Sas {
    fn insert(&mut self, conn: String, sa: Sa, replaces: Option<u64>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.entries.push(Entry { id, conn, sa, replaces, reauth_started: false, installed: 0 });
        id
    }

    fn get(&mut self, id: u64) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    /// The earliest timer of any IKEv1 SA (including reauthentication).
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .iter()
            .flat_map(|e| [e.sa.poll_timeout(), if e.reauth_started { None } else { e.sa.reauth_at() }])
            .flatten()
            .min()
    }

    /// Whether connection `conn` has an IKEv1 SA that is up or being set up.
    pub(super) fn is_live(&self, conn: &str) -> bool {
        self.entries.iter().any(|e| e.conn == conn && !e.sa.is_finished())
    }

    /// Whether any IKEv1 SA is left.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Status lines of connection `conn`'s SAs (the control socket's `status`).
    pub(super) fn status(&self, conn: &str) -> Option<String> {
        let mut s = String::new();
        for e in self.entries.iter().filter(|e| e.conn == conn && !e.sa.is_finished()) {
            let (a, b) = e.sa.cookies();
            let state = if e.sa.is_established() { "IKEv1 ESTABLISHED" } else { "IKEv1 CONNECTING" };
            s.push_str(&format!(" {state} spi_i={a:016x} spi_r={b:016x}\n"));
            for ch in e.sa.child_sas() {
                s.push_str(&format!("  child spi_in={:08x} spi_out={:08x}\n", ch.inbound_spi(), ch.outbound_spi()));
            }
        }
        (!s.is_empty()).then_some(s)
    }

    /// Forgets connection `conn`'s SAs (the connection was removed).
    pub(super) fn forget(&mut self, conn: &str) {
        let gone: Vec<u64> = self.entries.iter().filter(|e| e.conn == conn).map(|e| e.id).collect();
        self.entries.retain(|e| e.conn != conn);
        self.spi_owner.retain(|_, v| !gone.contains(v));
    }

    /// The child SAs of connection `conn` (for removal: out of the data plane).
    pub(super) fn child_spis(&self, conn: &str) -> Vec<(u32, u32)> {
        self.entries
            .iter()
            .filter(|e| e.conn == conn)
            .flat_map(|e| e.sa.child_sas().map(|c| (c.inbound_spi(), c.outbound_spi())))
            .collect()
    }
}

impl Daemon {
    /// The live status of IKEv1 connection `i` (management API).
    pub(super) fn v1_status_of(&self, i: usize) -> ConnStatus {
        let c = &self.conns[i];
        let name = &c.spec.name;
        let live: Vec<&Entry> = self.v1.entries.iter().filter(|e| e.conn == *name && !e.sa.is_finished()).collect();
        let (ike, ike_state) = if live.iter().any(|e| e.sa.is_established()) {
            (IkeState::Established, "IKEv1 established")
        } else if live.is_empty() {
            (IkeState::Down, "Down")
        } else {
            (IkeState::Connecting, "IKEv1 connecting")
        };
        let mut total: Option<SaCounters> = None;
        let children = live
            .iter()
            .flat_map(|e| e.sa.child_sas())
            .map(|ch| {
                let counters = self.sink.counters(name, ch.inbound_spi(), ch.outbound_spi());
                if let Some(k) = counters {
                    *total.get_or_insert_with(SaCounters::default) += k;
                }
                let mut algorithms = encr_name(ch.encr);
                if let Some(x) = ch.integ {
                    algorithms.push('-');
                    algorithms.push_str(integ_name(x));
                }
                ChildStatus {
                    spi_in: ch.inbound_spi(),
                    spi_out: ch.outbound_spi(),
                    algorithms,
                    established_at: c.rt.child_up_at(ch.inbound_spi()),
                    counters,
                }
            })
            .collect();
        ConnStatus {
            name: name.clone(),
            ike,
            ike_state,
            ike_established_at: if ike == IkeState::Established { c.rt.ike_up_at() } else { None },
            children,
            counters: total,
            retry_scheduled: c.rt.retry_scheduled(),
        }
    }

    fn v1_index(&self, name: &str) -> Option<usize> {
        self.conns.iter().position(|c| c.spec.name == name)
    }

    /// One line to the daemon log and the connection's log (management API).
    fn v1_say(&mut self, name: &str, line: String) {
        match self.v1_index(name) {
            Some(i) => self.note(i, line, true),
            None => logln!(self.log, "conn {name}: {line}"),
        }
    }

    /// An IKEv1 message to or from the peer, for the connection's log.
    fn v1_observe(&mut self, name: &str, msg: &[u8], sent: bool, peer: SocketAddr) {
        let Some(i) = self.v1_index(name) else {
            return;
        };
        if self.observer.is_none() || msg.len() < 28 {
            return;
        }
        let what = match msg[18] {
            EXCHANGE_MAIN => "Main Mode",
            EXCHANGE_AGGRESSIVE => "Aggressive Mode",
            5 => "Informational",
            32 => "Quick Mode",
            _ => "unknown exchange",
        };
        let mid = u32::from_be_bytes([msg[20], msg[21], msg[22], msg[23]]);
        let dir = if sent { "sent to" } else { "received from" };
        self.note(i, format!("IKEv1 {what} message {dir} {peer} (message id {mid:08x})"), false);
    }

    /// Starts an IKEv1 SA for connection `i` (IKEv1), unless one is up or connecting.
    pub(super) fn v1_initiate(&mut self, i: usize, now: Instant) -> Result<String, String> {
        let c = &self.conns[i];
        let name = c.spec.name.clone();
        if self.v1.is_live(&name) {
            return Ok(format!("conn {name}: already up or connecting"));
        }
        self.v1_start(i, now, None).map(|()| format!("conn {name}: initiating"))
    }

    fn v1_start(&mut self, i: usize, now: Instant, replaces: Option<u64>) -> Result<(), String> {
        let c = &self.conns[i];
        let name = c.spec.name.clone();
        let Some(remote) = c.spec.remote else {
            return Err(format!("conn {name}: remote_addr is %any, cannot initiate"));
        };
        let Some(cfg) = c.spec.v1.clone() else {
            return Err(format!("conn {name}: not an IKEv1 connection"));
        };
        let local = SocketAddr::new(self.settings.listen, self.settings.ike_port);
        let remote = SocketAddr::new(remote, c.spec.remote_port);
        let mode = cfg.mode;
        let sa = Sa::initiate(cfg, local, remote, now, &mut self.rng);
        self.v1.insert(name.clone(), sa, replaces);
        self.conns[i].rt.initiated();
        let why = if replaces.is_some() { " (reauthentication)" } else { "" };
        self.v1_say(&name, format!("initiating IKEv1 {mode:?} mode {local} -> {remote}{why}"));
        Ok(())
    }

    /// `rekey-child` (a new quick mode for each IPsec SA, then DELETE of the old one) or
    /// `rekey-ike` (reauthentication: a new ISAKMP SA with its IPsec SAs, then the old one is
    /// closed; IKEv1 has no in-place phase-1 rekey) for IKEv1 connection `i`.
    pub(super) fn v1_rekey(&mut self, i: usize, ike: bool, now: Instant) -> Result<String, String> {
        let name = self.conns[i].spec.name.clone();
        let up = |e: &&mut Entry| e.conn == name && e.sa.is_established();
        if ike {
            let Some(e) = self.v1.entries.iter_mut().filter(up).find(|e| !e.reauth_started) else {
                return Err(format!("conn {name}: no established IKEv1 SA to reauthenticate"));
            };
            e.reauth_started = true;
            let id = e.id;
            self.v1_start(i, now, Some(id))?;
            return Ok(format!("conn {name}: rekey-ike (reauthentication) started"));
        }
        let mut n = 0;
        for e in self.v1.entries.iter_mut().filter(up) {
            let spis: Vec<u32> = e.sa.child_sas().map(ChildSa::inbound_spi).collect();
            for spi in spis {
                e.sa.rekey_child(now, spi, &mut self.rng);
                n += 1;
            }
        }
        if n == 0 {
            return Err(format!("conn {name}: no IPsec SA to rekey"));
        }
        Ok(format!("conn {name}: rekey-child started ({n} IPsec SA(s))"))
    }

    /// Closes every IKEv1 SA of connection `name` (DELETEs to the peer).
    pub(super) fn v1_close(&mut self, name: &str, now: Instant) -> usize {
        let mut n = 0;
        for e in self.v1.entries.iter_mut().filter(|e| e.conn == name && !e.sa.is_finished()) {
            e.sa.close(now, &mut self.rng);
            n += 1;
        }
        n
    }

    /// Closes every IKEv1 SA (shutdown).
    pub(super) fn v1_close_all(&mut self, now: Instant) -> usize {
        let names: Vec<String> = self.v1.entries.iter().map(|e| e.conn.clone()).collect();
        let mut n = 0;
        for name in names {
            n += self.v1_close(&name, now);
        }
        n
    }

    /// An IKEv1 message received at `local` from `remote` (see the module documentation).
    pub(super) fn v1_dispatch(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, msg: &[u8]) {
        let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
        let (ci, cr) = (be64(&msg[0..8]), be64(&msg[8..16]));
        let exchange = msg[18];
        let mid = u32::from_be_bytes(msg[20..24].try_into().unwrap_or([0; 4]));
        if self.settings.log_messages {
            logln!(self.log, "recv IKEv1 exchange {exchange} mid {mid:08x} ({} B) from {remote}", msg.len());
        }
        let found = self.v1.entries.iter().position(|e| {
            let (a, b) = e.sa.cookies();
            a == ci && (b == 0 || cr == 0 || b == cr)
        });
        let idx = match found {
            Some(k) => k,
            None => {
                if cr != 0 || mid != 0 || !(exchange == EXCHANGE_MAIN || exchange == EXCHANGE_AGGRESSIVE) {
                    logln!(self.log, "  no IKEv1 SA for this message from {remote}: dropped");
                    return;
                }
                let mode = if exchange == EXCHANGE_MAIN { Mode::Main } else { Mode::Aggressive };
                let fits = |c: &super::Conn| !c.rt.is_removing() && c.spec.v1.as_ref().is_some_and(|v| v.mode == mode);
                let i = self
                    .conns
                    .iter()
                    .position(|c| fits(c) && c.spec.remote == Some(remote.ip()))
                    .or_else(|| self.conns.iter().position(|c| fits(c) && c.spec.remote.is_none()));
                let Some(i) = i else {
                    logln!(self.log, "  no IKEv1 {mode:?} mode connection for {remote}: dropped");
                    return;
                };
                let Some(cfg) = self.conns[i].spec.v1.clone() else {
                    return;
                };
                if self.v1.entries.iter().filter(|e| !e.sa.is_established()).count() >= MAX_HALF_OPEN {
                    logln!(self.log, "  {MAX_HALF_OPEN} IKEv1 SAs half-open: message 1 from {remote} dropped");
                    return;
                }
                let name = self.conns[i].spec.name.clone();
                let mut sa = Sa::respond(cfg, local, remote, now);
                sa.handle(now, local, remote, msg, &mut self.rng);
                if sa.cookies().0 == 0 {
                    // Not a usable message 1 (no SA payload, unparsable): no state kept for it.
                    logln!(self.log, "  IKEv1 {mode:?} mode message 1 from {remote} unusable: dropped");
                    return;
                }
                self.v1_say(&name, format!("IKEv1 {mode:?} mode from {remote}: responding"));
                self.v1_observe(&name, msg, false, remote);
                self.v1.insert(name, sa, None);
                return;
            }
        };
        self.v1_observe(&self.v1.entries[idx].conn.clone(), msg, false, remote);
        self.v1.entries[idx].sa.handle(now, local, remote, msg, &mut self.rng);
    }

    /// Inbound ESP on our inbound SPI `spi`: postpones DPD of its IKEv1 SA, if it is one.
    pub(super) fn v1_note_inbound(&mut self, spi: u32, now: Instant) {
        if let Some(&id) = self.v1.spi_owner.get(&spi) {
            if let Some(e) = self.v1.get(id) {
                e.sa.note_inbound_traffic(now);
            }
        }
    }

    /// A data-plane request for an IKEv1 connection: acquire (initiates unless up), rekey or
    /// expiry of an IPsec SA (a new quick mode / its DELETE).
    pub(super) fn v1_dataplane_event(&mut self, ev: DataplaneEvent, now: Instant) {
        let (conn, spi_in, rekey) = match ev {
            DataplaneEvent::Acquire { conn } => {
                if let Err(e) = self.acquire(&conn, now) {
                    logln!(self.log, "acquire for {conn}: {e}");
                }
                return;
            }
            DataplaneEvent::Rekey { conn, spi_in } => (conn, spi_in, true),
            DataplaneEvent::Expired { conn, spi_in } => (conn, spi_in, false),
        };
        let owner = self.v1.spi_owner.get(&spi_in).copied();
        let Some(e) = owner.and_then(|id| self.v1.get(id)) else {
            logln!(self.log, "conn {conn}: data plane asks about IPsec SA spi_in={spi_in:08x}, unknown: ignored");
            return;
        };
        if rekey {
            e.sa.rekey_child(now, spi_in, &mut self.rng);
        } else {
            e.sa.delete_child(now, spi_in, &mut self.rng);
        }
        let what = if rekey { "rekeying it (quick mode)" } else { "expired: deleting it" };
        self.v1_say(&conn, format!("data plane: IPsec SA spi_in={spi_in:08x} {what}"));
    }

    /// Fires due timers: retransmissions, DPD, lifetimes, reauthentication.
    pub(super) fn v1_timeouts(&mut self, now: Instant) {
        let mut reauth = Vec::new();
        for e in &mut self.v1.entries {
            if e.sa.poll_timeout().is_some_and(|t| t <= now) {
                e.sa.handle_timeout(now, &mut self.rng);
            }
            if !e.reauth_started && e.sa.reauth_at().is_some_and(|t| t <= now) {
                e.reauth_started = true;
                reauth.push((e.conn.clone(), e.id));
            }
        }
        for (name, id) in reauth {
            if let Some(i) = self.v1_index(&name) {
                if let Err(e) = self.v1_start(i, now, Some(id)) {
                    logln!(self.log, "conn {name}: IKEv1 reauthentication: {e}");
                }
            }
        }
    }

    /// Drains the IKEv1 SAs: events (to the sink) before datagrams, then forgets finished SAs.
    /// Returns whether anything happened.
    pub(super) fn v1_flush(&mut self, now: Instant) -> bool {
        let mut any = false;
        let mut k = 0;
        while k < self.v1.entries.len() {
            while let Some(ev) = self.v1.entries[k].sa.poll_event() {
                any = true;
                self.v1_on_event(k, ev, now);
            }
            while let Some(t) = self.v1.entries[k].sa.poll_transmit(now) {
                any = true;
                self.v1_observe(&self.v1.entries[k].conn.clone(), &t.payload, true, t.remote);
                if self.settings.log_messages {
                    let x = t.payload.get(18).copied().unwrap_or(0);
                    logln!(self.log, "send IKEv1 exchange {x} ({} B) to {}", t.payload.len(), t.remote);
                }
                if let Err(e) = self.transport.send(t.local, t.remote, &t.to_datagram()) {
                    logln!(self.log, "send to {}: {e}", t.remote);
                }
            }
            if self.v1.entries[k].sa.is_finished() {
                let e = self.v1.entries.remove(k);
                self.v1.spi_owner.retain(|_, v| *v != e.id);
                any = true;
            } else {
                k += 1;
            }
        }
        any
    }

    fn v1_on_event(&mut self, k: usize, ev: Event, now: Instant) {
        let name = self.v1.entries[k].conn.clone();
        let id = self.v1.entries[k].id;
        let i = self.v1_index(&name);
        match ev {
            Event::IkeSaEstablished { spi_i, spi_r, local, remote } => {
                let line =
                    format!("IKEv1 ISAKMP SA established spi_i={spi_i:016x} spi_r={spi_r:016x} {local} <-> {remote}");
                self.v1_say(&name, line);
                if let Some(i) = i {
                    self.conns[i].rt.established();
                }
            }
            Event::ChildSaInstalled(sa) => {
                self.v1_say(&name, format!("CHILD_SA installed {}", describe(&sa)));
                self.v1.spi_owner.insert(sa.inbound_spi(), id);
                if let Some(i) = i {
                    self.conns[i].rt.child_changed(sa.inbound_spi(), true);
                }
                self.sink.install(&name, sa);
                let e = &mut self.v1.entries[k];
                e.installed += 1;
                let pairs = i.map_or(1, |i| {
                    let s = &self.conns[i].spec;
                    (s.local_subnets.len() * s.remote_subnets.len()).max(1)
                });
                if e.installed == pairs {
                    if let Some(old) = e.replaces.take() {
                        let line = "IKEv1 reauthenticated: closing the old ISAKMP SA".to_string();
                        self.v1_say(&name, line);
                        if let Some(o) = self.v1.get(old) {
                            o.sa.close(now, &mut self.rng);
                        }
                    }
                }
            }
            Event::ChildSaDeleted { spi_in, spi_out } => {
                self.v1_say(&name, format!("CHILD_SA deleted spi_in={spi_in:08x} spi_out={spi_out:08x}"));
                self.v1.spi_owner.remove(&spi_in);
                if let Some(i) = i {
                    self.conns[i].rt.child_changed(spi_in, false);
                }
                self.sink.delete(&name, spi_in, spi_out);
            }
            Event::ChildSaFailed(f) => self.v1_say(&name, format!("CHILD_SA (quick mode) failed: {f:?}")),
            Event::EndpointsChanged { local, remote, encap } => {
                logln!(self.log, "conn {name}: endpoints changed {local} <-> {remote} encap {encap:?}");
                self.sink.update_endpoints(&name, local, remote, encap);
            }
            Event::IkeSaRekeyed { .. } => {}
            Event::PeerDead | Event::Failed(_) | Event::Closed => {
                let what = match &ev {
                    Event::PeerDead => "peer dead (DPD), ISAKMP SA and IPsec SAs removed".to_string(),
                    Event::Failed(f) => format!("IKEv1 SA failed: {f:?}"),
                    _ => "IKEv1 ISAKMP SA closed".to_string(),
                };
                self.v1_say(&name, what.clone());
                let replaced = self.v1.entries.iter().any(|e| e.replaces == Some(id));
                if let Some(i) = i {
                    if !matches!(ev, Event::Closed) && !replaced && self.v1_others_live(&name, id) == 0 {
                        self.lost(i, now, &what);
                    }
                }
            }
        }
        if let Some(i) = i {
            self.conns[i].rt.touch();
        }
        self.write_state();
    }

    fn v1_others_live(&self, name: &str, id: u64) -> usize {
        self.v1.entries.iter().filter(|e| e.conn == name && e.id != id && !e.sa.is_finished()).count()
    }
}
