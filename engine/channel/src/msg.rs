//! The messages.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Control process → engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// First message of a session.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// Who is talking (for the engine's log), e.g. `"ipsec-control 0.1.0 pid 1234"`.
        client: String,
    },
    /// A request; answered by exactly one [`EngineMsg::Reply`] with the same id.
    Request {
        /// Chosen by the control side, echoed in the reply.
        id: u64,
        /// What to do.
        req: Request,
    },
    /// Send this IKE datagram (or NAT keepalive) out of the engine's outside interface.
    SendIke(IkeDatagram),
}

/// Engine → control process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineMsg {
    /// First message of a session.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// Engine name and version, for the control side's log.
        engine: String,
        /// Random per engine start: a change tells the control side the engine restarted (its
        /// SAs are gone and must be restated).
        boot_id: u64,
        /// SAs the engine holds from earlier control sessions (0 after a restart).
        control_sas: u32,
    },
    /// The answer to [`ControlMsg::Request`] `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The outcome; errors are human-readable and name the field at fault.
        result: Result<Response, String>,
    },
    /// An IKE datagram (or NAT keepalive) that arrived on the outside interface.
    IkeReceived(IkeDatagram),
    /// Something the control side should act on.
    Event(Event),
}

/// What the control side asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start of a full statement of the desired state (see the crate docs).
    BeginSync {
        /// Echoed by [`Response::SyncDone`]; a new `BeginSync` abandons an unfinished one.
        generation: u64,
    },
    /// End of the statement: remove what was not restated.
    EndSync {
        /// Must match the `BeginSync`.
        generation: u64,
    },
    /// Add a tunnel, or change one (same name); changed endpoints move its SAs.
    UpsertTunnel(TunnelSpec),
    /// Remove a tunnel and all its SAs.
    RemoveTunnel {
        /// [`TunnelSpec::name`].
        name: String,
    },
    /// Add an SA, or replace the SA with the same (tunnel, direction, SPI). An outbound SA becomes
    /// the tunnel's only outbound SA.
    AddSa(SaSpec),
    /// Remove one SA.
    DeleteSa {
        /// [`TunnelSpec::name`].
        tunnel: String,
        /// Which side.
        direction: Direction,
        /// Its SPI.
        spi: u32,
    },
    /// Read counters: of one tunnel's SAs, or of everything.
    Counters {
        /// `None`: all tunnels and the workers.
        tunnel: Option<String>,
    },
    /// Liveness check.
    Ping,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request was applied.
    Done,
    /// [`Request::EndSync`] was applied.
    SyncDone {
        /// The generation.
        generation: u64,
        /// SAs that were new.
        added: u32,
        /// SAs restated with other keys or parameters, replaced.
        replaced: u32,
        /// SAs restated unchanged, kept with their state.
        kept: u32,
        /// Control-owned SAs (and tunnels' SAs) not restated, removed.
        removed: u32,
    },
    /// Answer to [`Request::Counters`].
    Counters(CountersReport),
    /// Answer to [`Request::Ping`].
    Pong,
}

/// A tunnel: the policy ("these subnets go through that peer") and the outer endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSpec {
    /// Unique key, chosen by the control side (e.g. the connection id).
    pub name: String,
    /// Our outer address (must be one the engine serves).
    pub local_addr: IpAddr,
    /// The peer gateway's outer address.
    pub remote_addr: IpAddr,
    /// Protected subnets on our side.
    pub local_subnets: Vec<IpNet>,
    /// Protected subnets on the peer's side.
    pub remote_subnets: Vec<IpNet>,
    /// How outbound traffic is matched to the tunnel.
    pub routing: Routing,
    /// ESP in UDP (NAT traversal), with the ports to use.
    pub udp_encap: Option<UdpEncap>,
    /// Inner MTU override; `None`: derived from the outside link's MTU and the SA's overhead.
    pub mtu: Option<u16>,
}

/// How outbound packets find their tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Routing {
    /// Longest-prefix match of the destination over the remote subnets (the seed's destination
    /// routing mode).
    Destination,
    /// (source, destination) pairs of local × remote subnets (the seed's protected data flows).
    Flows,
}

/// UDP encapsulation ports (RFC 3948).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpEncap {
    /// Our port (4500 normally).
    pub local_port: u16,
    /// The peer's port (4500, or what a NAT maps it to).
    pub remote_port: u16,
}

/// Which way an SA protects traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Peer → us: decapsulation.
    In,
    /// Us → peer: encapsulation.
    Out,
}

/// One direction of a Child SA, with its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaSpec {
    /// [`TunnelSpec::name`] of an installed tunnel.
    pub tunnel: String,
    /// Which side.
    pub direction: Direction,
    /// The SPI (ours for inbound, the peer's for outbound).
    pub spi: u32,
    /// The ESP core's cipher name (`ipsec_esp::Cipher::name`): `aes128gcm16`, `aes256`, `3des`, ….
    pub cipher: String,
    /// Encryption key; for AES-GCM followed by the 4-byte salt.
    pub enc_key: Secret,
    /// The ESP core's integrity name (`ipsec_esp::Integrity::name`): `none`, `sha1`, `sha256`, ….
    pub integrity: String,
    /// Integrity key (empty with AEAD ciphers).
    pub auth_key: Secret,
    /// Extended sequence numbers.
    pub esn: bool,
    /// Inbound anti-replay window in packets (0 disables it; ignored outbound).
    pub replay_window: u32,
    /// Limits; 0 means none.
    pub lifetime: Lifetime,
}

/// SA limits, enforced by the data plane (soft: a [`Event::RekeyRequested`]; hard: the SA stops
/// and [`Event::Expired`] is raised). 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// Soft limit, seconds since installation.
    pub soft_seconds: u64,
    /// Hard limit, seconds since installation.
    pub hard_seconds: u64,
    /// Soft limit, bytes.
    pub soft_bytes: u64,
    /// Hard limit, bytes.
    pub hard_bytes: u64,
    /// Soft limit, packets.
    pub soft_packets: u64,
    /// Hard limit, packets.
    pub hard_packets: u64,
}

/// Key material: `Debug` is redacted and the bytes are wiped when dropped.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Takes ownership of the bytes (no copy is left behind by this call).
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Secret {
    fn from(b: &[u8]) -> Self {
        Secret(b.to_vec())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

/// An IKE datagram (UDP payload exactly as on the wire: on port 4500 it starts with the four-byte
/// non-ESP marker; a NAT keepalive is the single byte 0xff).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeDatagram {
    /// Our address and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// Why an SA limit fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// Seconds.
    Time,
    /// Bytes.
    Bytes,
    /// Packets.
    Packets,
    /// Outbound sequence numbers (nearly) exhausted.
    Sequence,
}

/// Data-plane events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A soft limit was reached: negotiate a replacement.
    RekeyRequested {
        /// Tunnel name.
        tunnel: String,
        /// Which side.
        direction: Direction,
        /// SPI.
        spi: u32,
        /// Which limit.
        limit: Limit,
    },
    /// A hard limit was reached: the SA no longer passes traffic.
    Expired {
        /// Tunnel name.
        tunnel: String,
        /// Which side.
        direction: Direction,
        /// SPI.
        spi: u32,
        /// Which limit.
        limit: Limit,
    },
    /// Outbound traffic matched a tunnel that has no outbound SA: negotiate one (rate-limited per
    /// tunnel by the engine).
    Acquire {
        /// Tunnel name.
        tunnel: String,
    },
}

/// Counters, as of the moment the request was served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersReport {
    /// Per SA.
    pub sas: Vec<SaCounters>,
    /// Per worker (empty when one tunnel was asked for).
    pub workers: Vec<WorkerCounters>,
}

/// Counters of one SA.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaCounters {
    /// Tunnel name.
    pub tunnel: String,
    /// Which side (`In` for decapsulation).
    pub direction: Option<Direction>,
    /// SPI.
    pub spi: u32,
    /// Packets protected or accepted.
    pub packets: u64,
    /// Bytes protected or accepted (inner packet bytes).
    pub bytes: u64,
    /// Packets dropped on this SA (replay, authentication, …).
    pub drops: u64,
    /// Seconds since the SA was installed.
    pub age_seconds: u64,
}

/// Counters of one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Worker index.
    pub worker: u32,
    /// Frames received.
    pub rx: u64,
    /// Frames transmitted.
    pub tx: u64,
    /// Drops by reason name, non-zero ones only.
    pub drops: Vec<(String, u64)>,
}
