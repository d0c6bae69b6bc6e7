//! Publication of Child SAs to a data plane: the [`SaSink`] trait and a recording implementation.
//!
//! The daemon calls the sink for every Child SA event of the IKE core, in order: on a rekey the
//! new SA is installed before the old one is deleted (make-before-break), so a data plane that
//! sends on the newest outbound SA and accepts on every installed inbound SA loses nothing.
//!
//! Implementations: [`RecordingSink`] (tests), [`crate::forwarder::EspForwarder`] (the userspace
//! ESP forwarder of the interop tests), [`crate::engine_link::EngineSink`] (the AF_XDP engine,
//! over its control channel).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipsec_ike::ike_sa::{ChildSa, UdpEncap};

/// Where negotiated Child SAs go.
pub trait SaSink {
    /// Installs both directions of a Child SA of connection `conn`.
    fn install(&mut self, conn: &str, sa: ChildSa);
    /// Removes the Child SA with these SPIs (our inbound, our outbound).
    fn delete(&mut self, conn: &str, spi_in: u32, spi_out: u32);
    /// Moves every Child SA of `conn` to these endpoints (NAT mapping change).
    fn update_endpoints(&mut self, conn: &str, local: SocketAddr, remote: SocketAddr, encap: Option<UdpEncap>);

    /// The Child SA with these SPIs (our inbound, our outbound) belongs to a redundant IKE SA that
    /// is about to be deleted (both ends initiated at once): stop sending on it now and send on
    /// another Child SA of `conn` (the surviving IKE SA's), but keep accepting on its inbound half
    /// until [`SaSink::delete`]. The daemon calls this before the DELETE leaves, so the peer never
    /// receives ESP on an SA it has removed. The default does nothing (the SA is used until it is
    /// deleted).
    ///
    /// It may come before [`SaSink::install`] of that SA (the IKE SA was known to be redundant
    /// when its Child SA came up): the SA is then installed but never sent on while another one
    /// exists. If the retired SA is the one being sent on and the only other candidate is one the
    /// peer may not hold yet (created as responder, see [`SaSink::confirmed`]), sending stays on
    /// the retired SA until that one is confirmed or the retired one deleted.
    fn retire(&mut self, _conn: &str, _spi_in: u32, _spi_out: u32) {}

    /// The peer is known to hold the Child SA with these SPIs (it answered on its IKE SA after
    /// IKE_AUTH): a data plane that defers sending on SAs created as responder may use it now; if
    /// the SA being sent on is retired, it switches to this one at once. The default does nothing.
    fn confirmed(&mut self, _conn: &str, _spi_in: u32, _spi_out: u32) {}

    /// ESP in UDP that arrived on our NAT-T socket at `to` from `from`. Returns the inbound SPI of
    /// the SA that accepted it, if any (the daemon then postpones that connection's DPD).
    fn esp_received(&mut self, _now: Instant, _from: SocketAddr, _to: SocketAddr, _datagram: &[u8]) -> Option<u32> {
        None
    }
    /// A file descriptor the daemon should poll for readability on the sink's behalf.
    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Called when [`SaSink::poll_fd`] is readable.
    fn on_readable(&mut self, _now: Instant) {}
    /// When the sink wants [`SaSink::handle_timeout`] called (reconnect back-off, deferred work).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Called at or after [`SaSink::poll_timeout`].
    fn handle_timeout(&mut self, _now: Instant) {}
    /// The next request of the data plane for the IKE side (drained by the daemon after every
    /// readiness or timer callback).
    fn poll_dataplane_event(&mut self) -> Option<DataplaneEvent> {
        None
    }
    /// A connection was added or its settings replaced at run time (the engine sink publishes its
    /// trap tunnel).
    fn connection_changed(&mut self, _spec: &crate::config::Connection) {}
    /// A connection was removed at run time, after its Child SAs were deleted.
    fn connection_removed(&mut self, _name: &str) {}
    /// Connections whose traffic found no SA since the last call (the data plane's "acquire"): the
    /// daemon initiates them ([`crate::daemon::Daemon::acquire`]). Polled after
    /// [`SaSink::on_readable`]; the default has none.
    fn take_acquires(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Traffic counters of the Child SA with these SPIs (our inbound, our outbound), when the data
    /// plane can tell; `None` (the default) when it cannot. Shown by DescribeVpnConnection.
    fn counters(&self, _conn: &str, _spi_in: u32, _spi_out: u32) -> Option<SaCounters> {
        None
    }
}

/// What a data plane asks of the IKE side (from the engine's events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataplaneEvent {
    /// Traffic matched connection `conn`'s tunnel, which has no outbound SA: negotiate one
    /// (initiate the connection, or create a Child SA on its IKE SA).
    Acquire {
        /// Connection.
        conn: String,
    },
    /// A soft limit of a Child SA was reached: rekey it.
    Rekey {
        /// Connection.
        conn: String,
        /// Our inbound SPI of the Child SA.
        spi_in: u32,
    },
    /// A hard limit of a Child SA was reached: the data plane stopped it; delete it (IKE DELETE).
    Expired {
        /// Connection.
        conn: String,
        /// Our inbound SPI of the Child SA.
        spi_in: u32,
    },
}

/// Traffic of one Child SA as the data plane counted it (inbound = decapsulated, outbound =
/// encapsulated; bytes of the inner packets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaCounters {
    /// Inner bytes received (decapsulated and accepted).
    pub bytes_in: u64,
    /// Inner bytes sent (encapsulated).
    pub bytes_out: u64,
    /// Packets received.
    pub packets_in: u64,
    /// Packets sent.
    pub packets_out: u64,
}

impl std::ops::AddAssign for SaCounters {
    fn add_assign(&mut self, o: SaCounters) {
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.packets_in += o.packets_in;
        self.packets_out += o.packets_out;
    }
}

/// What a [`RecordingSink`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkRecord {
    /// [`SaSink::install`].
    Install {
        /// Connection.
        conn: String,
        /// The SA.
        sa: Box<ChildSa>,
    },
    /// [`SaSink::delete`].
    Delete {
        /// Connection.
        conn: String,
        /// Our inbound SPI.
        spi_in: u32,
        /// Our outbound SPI.
        spi_out: u32,
    },
    /// [`SaSink::retire`].
    Retire {
        /// Connection.
        conn: String,
        /// Our inbound SPI.
        spi_in: u32,
        /// Our outbound SPI.
        spi_out: u32,
    },
    /// [`SaSink::update_endpoints`].
    Endpoints {
        /// Connection.
        conn: String,
        /// Our address.
        local: SocketAddr,
        /// The peer's.
        remote: SocketAddr,
        /// Encapsulation.
        encap: Option<UdpEncap>,
    },
}

/// A sink that only records (shared, so a test keeps a handle while the daemon owns the sink).
#[derive(Clone, Debug, Default)]
pub struct RecordingSink {
    /// Everything seen, in order.
    pub records: Arc<Mutex<Vec<SinkRecord>>>,
}

impl RecordingSink {
    /// A snapshot of the records.
    #[must_use]
    pub fn snapshot(&self) -> Vec<SinkRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// (inbound, outbound) SPIs of the SAs installed and not deleted, in installation order.
    #[must_use]
    pub fn installed(&self) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        for r in self.snapshot() {
            match r {
                SinkRecord::Install { sa, .. } => v.push((sa.inbound_spi(), sa.outbound_spi())),
                SinkRecord::Delete { spi_in, spi_out, .. } => v.retain(|x| *x != (spi_in, spi_out)),
                SinkRecord::Retire { .. } | SinkRecord::Endpoints { .. } => {}
            }
        }
        v
    }

    /// (inbound, outbound) SPIs of the SA a data plane sending on the newest installed SA that is
    /// not retired (else the newest) would send on, as the engine does.
    #[must_use]
    pub fn sending_on(&self) -> Option<(u32, u32)> {
        let mut live = Vec::new();
        let mut retired = Vec::new();
        for r in self.snapshot() {
            match r {
                SinkRecord::Install { sa, .. } => live.push((sa.inbound_spi(), sa.outbound_spi())),
                SinkRecord::Delete { spi_in, spi_out, .. } => live.retain(|x| *x != (spi_in, spi_out)),
                SinkRecord::Retire { spi_in, spi_out, .. } => retired.push((spi_in, spi_out)),
                SinkRecord::Endpoints { .. } => {}
            }
        }
        live.iter().rev().find(|x| !retired.contains(x)).or(live.last()).copied()
    }

    fn push(&self, r: SinkRecord) {
        if let Ok(mut v) = self.records.lock() {
            v.push(r);
        }
    }
}

impl SaSink for RecordingSink {
    fn install(&mut self, conn: &str, sa: ChildSa) {
        self.push(SinkRecord::Install { conn: conn.into(), sa: Box::new(sa) });
    }

    fn delete(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        self.push(SinkRecord::Delete { conn: conn.into(), spi_in, spi_out });
    }

    fn update_endpoints(&mut self, conn: &str, local: SocketAddr, remote: SocketAddr, encap: Option<UdpEncap>) {
        self.push(SinkRecord::Endpoints { conn: conn.into(), local, remote, encap });
    }

    fn retire(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        self.push(SinkRecord::Retire { conn: conn.into(), spi_in, spi_out });
    }
}
