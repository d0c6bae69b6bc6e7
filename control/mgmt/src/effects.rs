//! The seam between the management plane and the IKE side.
//!
//! Outbound: after a change is durably committed, the API calls [`Effects::apply`] with a
//! [`ConnectionChange`], in commit order (the API serializes writes). The IKE side (the
//! `ipsec-control serve` process's IKE thread) starts, re-negotiates or tears down the connection;
//! at start-up it reads the full set with [`crate::api::Service::vpn_connections`].
//!
//! Inbound: [`Effects::live`] answers the live status shown by DescribeVpnConnection(s) (`Status`,
//! SA states, established times, counters: [`LiveStatus`]), and the
//! IKE side appends negotiation logs with [`crate::api::Service::record_log`] (PSKs scrubbed).
//!
//! Two implementations: [`MemoryEffects`] records changes and serves a settable status map (tests,
//! and the stand-alone daemon until IKE is wired in); [`ChannelEffects`] forwards changes over a
//! channel to another thread and reads statuses from a shared [`StatusBoard`].

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use crate::model::{ConnectionStatus, LiveStatus, VpnConnection};

/// A committed change of a VPN connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionChange {
    /// A new connection; with `effect_immediately` the IKE side initiates at once, otherwise it
    /// waits for traffic or for the peer.
    Created(VpnConnection),
    /// The connection's configuration changed (the full new configuration).
    Modified(VpnConnection),
    /// The connection is gone: tear its SAs down.
    Deleted { vpn_connection_id: String, vpn_gateway_id: String },
}

/// What the API needs from the IKE side.
pub trait Effects: Send + Sync {
    /// Called once per committed change, after the commit, in commit order. Must not block long.
    fn apply(&self, change: ConnectionChange);
    /// Live status; `None` means unknown and is shown as `ike_sa_not_established`.
    fn status(&self, vpn_connection_id: &str) -> Option<ConnectionStatus>;
    /// Live status with SA states, times and counters; by default derived from [`Effects::status`].
    fn live(&self, vpn_connection_id: &str) -> Option<LiveStatus> {
        self.status(vpn_connection_id).map(LiveStatus::from_status)
    }
}

/// Statuses reported by the IKE side, shared with the API.
#[derive(Debug, Default)]
pub struct StatusBoard(RwLock<HashMap<String, LiveStatus>>);

impl StatusBoard {
    pub fn set(&self, vpn_connection_id: &str, status: ConnectionStatus) {
        self.set_live(vpn_connection_id, LiveStatus::from_status(status));
    }

    pub fn set_live(&self, vpn_connection_id: &str, status: LiveStatus) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(vpn_connection_id.to_string(), status);
    }

    pub fn get_live(&self, vpn_connection_id: &str) -> Option<LiveStatus> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(vpn_connection_id).cloned()
    }

    pub fn remove(&self, vpn_connection_id: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(vpn_connection_id);
    }

    pub fn get(&self, vpn_connection_id: &str) -> Option<ConnectionStatus> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(vpn_connection_id).map(|l| l.status)
    }
}

/// In-memory effects: records every change; statuses are set by the test (or nobody).
#[derive(Debug, Default)]
pub struct MemoryEffects {
    changes: Mutex<Vec<ConnectionChange>>,
    pub statuses: StatusBoard,
}

impl MemoryEffects {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every change applied so far, in order.
    pub fn changes(&self) -> Vec<ConnectionChange> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Effects for MemoryEffects {
    fn apply(&self, change: ConnectionChange) {
        self.changes.lock().unwrap_or_else(|e| e.into_inner()).push(change);
    }

    fn status(&self, vpn_connection_id: &str) -> Option<ConnectionStatus> {
        self.statuses.get(vpn_connection_id)
    }

    fn live(&self, vpn_connection_id: &str) -> Option<LiveStatus> {
        self.statuses.get_live(vpn_connection_id)
    }
}

/// Forwards changes to a receiver (the IKE thread); statuses come from a shared board.
pub struct ChannelEffects {
    tx: Mutex<mpsc::Sender<ConnectionChange>>,
    statuses: Arc<StatusBoard>,
}

impl ChannelEffects {
    /// The effects object for the API, and the receiving end for the IKE side.
    pub fn new(statuses: Arc<StatusBoard>) -> (Arc<Self>, mpsc::Receiver<ConnectionChange>) {
        let (tx, rx) = mpsc::channel();
        (Arc::new(ChannelEffects { tx: Mutex::new(tx), statuses }), rx)
    }
}

impl Effects for ChannelEffects {
    fn apply(&self, change: ConnectionChange) {
        // A gone receiver means the IKE side stopped; the change is durable and replayed at start.
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(change);
    }

    fn status(&self, vpn_connection_id: &str) -> Option<ConnectionStatus> {
        self.statuses.get(vpn_connection_id)
    }

    fn live(&self, vpn_connection_id: &str) -> Option<LiveStatus> {
        self.statuses.get_live(vpn_connection_id)
    }
}
