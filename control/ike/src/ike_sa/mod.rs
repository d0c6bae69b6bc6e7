//! Sans-IO IKE SA state machine (RFC 7296): IKE_SA_INIT and IKE_AUTH with a pre-shared key,
//! CREATE_CHILD_SA (new Child SA, Child SA rekey, IKE SA rekey, each with or without PFS),
//! INFORMATIONAL (DELETE, liveness checks), NAT traversal (§2.23, RFC 3948), COOKIE and
//! INVALID_KE_PAYLOAD retries as initiator.
//!
//! Every entry point takes `now`; nothing reads a clock. Inputs are IKE messages with the socket
//! addresses they came to and from ([`IkeSa::handle`]), timer expiries ([`IkeSa::handle_timeout`])
//! and requests of the daemon ([`IkeSa::create_child`], [`IkeSa::rekey_child`],
//! [`IkeSa::rekey_ike`], [`IkeSa::delete_child`], [`IkeSa::close`]). Outputs are pulled with
//! [`IkeSa::poll_transmit`], [`IkeSa::poll_timeout`] and [`IkeSa::poll_event`]. The handshake
//! states are named for what they expect next (rustls style) and consumed by value.
//!
//! # Structure
//!
//! One `IkeSa` is one connection with one peer for its whole life, across IKE SA rekeys: it owns
//! the *current* IKE SA (SPIs, keys, Message ID windows) and, around a rekey, the old one being
//! deleted and, in a rekey collision, the peer's redundant new one. [`IkeSa::local_spis`] lists
//! every SPI that routes to this object. Child SAs belong to the connection and survive IKE SA
//! rekeys. Exchanges we initiate are queued requests, started one at a time (window size 1 in
//! each direction); each request carries the state of its task (strongSwan's task model: the
//! `Task` of the outstanding request is what processes its response).
//!
//! # Collisions (§2.8.1, §2.8.2)
//!
//! When both ends rekey the same Child SA (or the IKE SA) at once, each answers the other's
//! request and remembers the SA it created as responder. When its own response arrives, the
//! exchange whose smaller nonce is the lowest of the four loses: its initiator deletes the SA it
//! created; the winner's initiator deletes the old SA. If one end completes its own exchange
//! before it sees the other's request, it answers that request with TEMPORARY_FAILURE (the SA is
//! already being replaced) and the other end keeps the SA it created as responder. Either way,
//! both ends keep the same single new SA and delete the old one and the redundant one.
//!
//! # NAT traversal
//!
//! NAT_DETECTION_* notifies go in IKE_SA_INIT; when a NAT is detected on either side the
//! initiator floats to the NAT-T port. Child SAs are UDP-encapsulated (their [`ChildSa::encap`])
//! whenever a NAT was detected (or faked: `force_encap` here, or a peer such as strongSwan with
//! kernel-libipsec) or the peer uses the NAT-T port. The non-ESP marker is added by
//! [`Transmit::to_datagram`] and stripped by [`crate::nat::classify`] (see [`crate::nat`]). An
//! authenticated new request or response from another address moves the IKE SA there and emits
//! [`Event::EndpointsChanged`]. While we are behind a NAT, a keepalive is sent after
//! `keepalive_interval` without other traffic.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::CryptoRng;

pub use crate::config::Config;
use crate::crypto::dh::{DhGroup, DhPrivate};
use crate::crypto::keys::{
    child_keymat, psk_auth, signed_octets, skeyseed_rekey, verify_psk_auth, ChildKeys, IkeSaKeys, IkeSuite,
};
use crate::crypto::sk::{Opened, SkCipher};
use crate::crypto::SecretBytes;
use crate::message::{
    notifies, AuthMethod, AuthPayload, DeletePayload, ExchangeType, Flags, Header, Identification, KePayload, Message,
    NotifyPayload, NotifyType, Payload, PayloadType, Proposal, ProtocolId, SaPayload, TrafficSelector,
};
use crate::nat;
use crate::transforms::{build_offer, select_proposal, ChosenProposal, EncrAlg, Esn, IntegAlg, ProposalSpec};
use crate::ts;

#[cfg(test)]
mod tests;

/// UDP encapsulation of ESP (RFC 3948): the ports of the outer UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpEncap {
    /// Our port (source of outbound packets).
    pub local_port: u16,
    /// The peer's port (as seen by us, i.e. after its NAT).
    pub remote_port: u16,
}

/// An established Child SA (ESP), with everything the data plane needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildSa {
    /// SPI chosen by the initiator of the exchange that created this SA (its inbound SA).
    pub spi_i: u32,
    /// SPI chosen by the responder of that exchange (its inbound SA).
    pub spi_r: u32,
    /// Whether we initiated the exchange that created this SA (selects the halves below).
    pub initiator: bool,
    /// Encryption algorithm.
    pub encr: EncrAlg,
    /// Integrity algorithm (`None` with AEAD).
    pub integ: Option<IntegAlg>,
    /// Extended sequence numbers.
    pub esn: Esn,
    /// KEYMAT split per RFC 7296 §2.17 (`*_i`: traffic from the exchange initiator).
    pub keys: ChildKeys,
    /// Exchange initiator's traffic selectors.
    pub ts_i: Vec<TrafficSelector>,
    /// Exchange responder's traffic selectors.
    pub ts_r: Vec<TrafficSelector>,
    /// Our tunnel endpoint.
    pub local: SocketAddr,
    /// The peer's tunnel endpoint (as seen by us).
    pub remote: SocketAddr,
    /// UDP encapsulation, if ESP must be carried in UDP.
    pub encap: Option<UdpEncap>,
    /// Hard lifetime: the SA is deleted this long after installation unless rekeyed before.
    pub lifetime: Duration,
}

impl ChildSa {
    /// The SPI of our inbound SA.
    #[must_use]
    pub fn inbound_spi(&self) -> u32 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    /// The SPI of our outbound SA.
    #[must_use]
    pub fn outbound_spi(&self) -> u32 {
        if self.initiator {
            self.spi_r
        } else {
            self.spi_i
        }
    }

    /// Our selectors.
    #[must_use]
    pub fn local_ts(&self) -> &[TrafficSelector] {
        if self.initiator {
            &self.ts_i
        } else {
            &self.ts_r
        }
    }

    /// The peer's selectors.
    #[must_use]
    pub fn remote_ts(&self) -> &[TrafficSelector] {
        if self.initiator {
            &self.ts_r
        } else {
            &self.ts_i
        }
    }

    /// (encryption key material, integrity key) of our outbound SA.
    #[must_use]
    pub fn outbound_keys(&self) -> (&SecretBytes, &SecretBytes) {
        if self.initiator {
            (&self.keys.encr_i, &self.keys.integ_i)
        } else {
            (&self.keys.encr_r, &self.keys.integ_r)
        }
    }

    /// (encryption key material, integrity key) of our inbound SA.
    #[must_use]
    pub fn inbound_keys(&self) -> (&SecretBytes, &SecretBytes) {
        if self.initiator {
            (&self.keys.encr_r, &self.keys.integ_r)
        } else {
            (&self.keys.encr_i, &self.keys.integ_i)
        }
    }
}

/// Why the IKE SA (or an exchange) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer answered with this error notification.
    PeerError(NotifyType),
    /// We rejected the peer's message with (or for) this error.
    LocalError(NotifyType),
    /// No answer after all retransmissions.
    Timeout,
}

/// Something the daemon must act on. Child SA events carry everything to publish to the data
/// plane; on a rekey the new SA is installed before the old one is deleted (make-before-break:
/// the engine sends on the newest outbound SA and keeps accepting on both inbound ones until the
/// delete).
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The IKE SA is authenticated and established.
    IkeSaEstablished {
        /// Initiator's IKE SPI.
        spi_i: u64,
        /// Responder's IKE SPI.
        spi_r: u64,
        /// Our address.
        local: SocketAddr,
        /// The peer's address.
        remote: SocketAddr,
    },
    /// Install this Child SA (both directions) in the data plane.
    ChildSaInstalled(ChildSa),
    /// Remove the Child SA with these SPIs from the data plane.
    ChildSaDeleted {
        /// Our inbound SPI.
        spi_in: u32,
        /// Our outbound SPI.
        spi_out: u32,
    },
    /// A CREATE_CHILD_SA for a new Child SA failed (the IKE SA is unaffected).
    ChildSaFailed(Failure),
    /// The IKE SA was rekeyed: the connection continues under new SPIs with the same Child SAs.
    IkeSaRekeyed {
        /// Old (SPIi, SPIr).
        old: (u64, u64),
        /// New (SPIi, SPIr).
        new: (u64, u64),
    },
    /// The peer's address or port changed (NAT mapping change): update every Child SA of this
    /// connection to these endpoints and encapsulation.
    EndpointsChanged {
        /// Our address.
        local: SocketAddr,
        /// The peer's new address.
        remote: SocketAddr,
        /// UDP encapsulation for the Child SAs.
        encap: Option<UdpEncap>,
    },
    /// The peer did not answer a liveness check within `dpd_timeout`; every Child SA was reported
    /// deleted before this event. Nothing more happens on this connection.
    PeerDead,
    /// The IKE SA was deleted (by either end); every Child SA was reported deleted before.
    Closed,
    /// The IKE SA failed; Child SAs, if any, were reported deleted before. Nothing more happens.
    Failed(Failure),
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Our source address (and port: 500 or the NAT-T port).
    pub local: SocketAddr,
    /// Destination.
    pub remote: SocketAddr,
    /// An IKE message, or the single octet 0xff of a NAT keepalive.
    pub payload: Vec<u8>,
    /// Whether the IKE message must be preceded by the non-ESP marker (NAT-T port).
    pub non_esp_marker: bool,
}

impl Transmit {
    /// The UDP payload to send: the message, after the non-ESP marker if needed.
    #[must_use]
    pub fn to_datagram(&self) -> Vec<u8> {
        if self.non_esp_marker {
            let mut v = Vec::with_capacity(4 + self.payload.len());
            v.extend_from_slice(&nat::NON_ESP_MARKER);
            v.extend_from_slice(&self.payload);
            v
        } else {
            self.payload.clone()
        }
    }

    /// Whether this is a NAT keepalive.
    #[must_use]
    pub fn is_keepalive(&self) -> bool {
        self.payload == nat::KEEPALIVE
    }
}

enum State {
    ExpectSaInitRequest,
    ExpectSaInitResponse { dh: DhPrivate, cookie: Option<Vec<u8>>, retries: u8 },
    ExpectAuthRequest,
    ExpectAuthResponse { child: ChildOffer },
    Established,
    Closed,
    Failed,
}

struct ChildOffer {
    spi: u32,
    offer: Vec<Proposal>,
    ts_i: Vec<TrafficSelector>,
    ts_r: Vec<TrafficSelector>,
}

/// What one IKE SA (one SPI pair) is to the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// The SA in use.
    Current,
    /// Replaced by a rekey: deleted by us (DELETE sent when its window is free) or by the peer.
    Dying { by_us: bool, deadline: Instant },
    /// The peer's new SA from a rekey collision, kept until our own exchange decides.
    Candidate { min_nonce: Vec<u8> },
    /// To be removed.
    Gone,
}

/// Exchanges we initiate, with the state needed to process their response.
enum Task {
    Handshake,
    CreateChild {
        rekey: Option<u32>,
        spi: u32,
        offer: Vec<Proposal>,
        dh: Option<DhPrivate>,
        ni: Vec<u8>,
        ts_i: Vec<TrafficSelector>,
        ts_r: Vec<TrafficSelector>,
        retried: bool,
    },
    RekeyIke {
        spi: u64,
        dh: DhPrivate,
        ni: Vec<u8>,
    },
    DeleteChild {
        spi: u32,
    },
    DeleteIke,
    Dpd,
}

/// Requests waiting for the window.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    CreateChild {
        rekey: Option<u32>,
        ts: Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)>,
        /// The PFS group the peer asked for with INVALID_KE_PAYLOAD (retried once).
        group: Option<DhGroup>,
    },
    RekeyIke,
    DeleteChild(u32),
    DeleteIke,
    Dpd,
}

struct Outstanding {
    mid: u32,
    exchange: ExchangeType,
    bytes: Vec<u8>,
    next: Instant,
    interval: Duration,
    count: u32,
    give_up: Option<Instant>,
    task: Task,
}

/// One IKE SA: SPIs, keys and the Message ID state of both directions.
struct Core {
    spi_i: u64,
    spi_r: u64,
    /// Whether we are the original initiator of this IKE SA (the I flag we send).
    initiator: bool,
    role: Role,
    keys: Option<IkeSaKeys>,
    out: Option<SkCipher>,
    inb: Option<SkCipher>,
    /// Message ID of our next request.
    next_mid: u32,
    /// Message ID of the peer's next request.
    peer_mid: u32,
    pending: Option<Outstanding>,
    /// Our last response and the Message ID it answers.
    last_response: Option<(u32, Vec<u8>)>,
    delete_sent: bool,
}

impl Core {
    fn new(spi_i: u64, spi_r: u64, initiator: bool) -> Self {
        Core {
            spi_i,
            spi_r,
            initiator,
            role: Role::Current,
            keys: None,
            out: None,
            inb: None,
            next_mid: 0,
            peer_mid: 0,
            pending: None,
            last_response: None,
            delete_sent: false,
        }
    }

    fn install(&mut self, keys: IkeSaKeys) -> bool {
        match (keys.outbound(self.initiator), keys.inbound(self.initiator)) {
            (Ok(o), Ok(i)) => {
                self.out = Some(o);
                self.inb = Some(i);
                self.keys = Some(keys);
                true
            }
            _ => false,
        }
    }

    fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }

    fn our_spi(&self) -> u64 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    fn header(&self, exchange_type: ExchangeType, message_id: u32, response: bool) -> Header {
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            minor_version: 0,
            exchange_type,
            flags: Flags { initiator: self.initiator, version: false, response },
            message_id,
        }
    }

    fn open(&self, bytes: &[u8]) -> Option<Opened> {
        let o = self.inb.as_ref()?.open(bytes).ok()?;
        ((o.header.spi_i, o.header.spi_r) == self.spis()).then_some(o)
    }

    fn seal<R: CryptoRng + ?Sized>(
        &mut self,
        exchange: ExchangeType,
        mid: u32,
        response: bool,
        inner: &[Payload],
        rng: &mut R,
    ) -> Option<Vec<u8>> {
        let header = self.header(exchange, mid, response);
        self.out.as_mut()?.seal(&header, &[], inner, rng).ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildState {
    Installed,
    /// Our rekey is in flight.
    Rekeying,
    /// Replaced; the peer deletes it (or it expires).
    Rekeyed,
    /// Our DELETE is queued or in flight.
    Deleting,
}

struct Child {
    sa: ChildSa,
    state: ChildState,
    rekey_at: Option<Instant>,
    expire_at: Instant,
    /// Rekey collision: the inbound SPI of the SA the peer created for its rekey of this one, and
    /// the smaller nonce of that exchange.
    peer_rekey: Option<(u32, Vec<u8>)>,
}

/// How long a replaced IKE SA waits for the peer's DELETE, at least (and at least as long as
/// the peer may retransmit its rekey request, assuming its retransmission settings are ours).
const DYING_TIMEOUT: Duration = Duration::from_secs(60);
/// Delay before retrying a rekey the peer refused (TEMPORARY_FAILURE etc.).
const REKEY_RETRY: Duration = Duration::from_secs(10);
/// How many times IKE_SA_INIT is resent for COOKIE or INVALID_KE_PAYLOAD.
const MAX_INIT_RETRIES: u8 = 3;
const NONCE_LEN: usize = 32;

/// One IKE connection with one peer: the IKE SA (across rekeys) and its Child SAs.
pub struct IkeSa {
    config: Config,
    state: State,
    cores: Vec<Core>,
    local: SocketAddr,
    remote: SocketAddr,
    /// Whether the peer sent NAT detection notifies (it does NAT-T).
    natt: bool,
    local_behind_nat: bool,
    remote_behind_nat: bool,
    children: Vec<Child>,
    /// Outbound SPIs the peer deleted before we knew them (our CREATE_CHILD_SA was in flight).
    deleted_early: Vec<u32>,
    /// Collision records (old inbound SPI, peer's new inbound SPI, its smaller nonce) of SAs
    /// deleted while our rekey of them was in flight.
    orphaned_rekeys: Vec<(u32, u32, Vec<u8>)>,
    queue: VecDeque<Request>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    sa_init_request: Vec<u8>,
    sa_init_response: Vec<u8>,
    ike_group: Option<DhGroup>,
    ike_rekey_at: Option<Instant>,
    last_inbound: Instant,
    last_sent: Instant,
    handshake_deadline: Option<Instant>,
    now: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Responder only, until IKE_AUTH: other configurations the initiator may authenticate to.
    alternatives: Vec<Alternative>,
    /// The label of the alternative chosen at IKE_AUTH, until taken by [`IkeSa::take_switch`].
    switched: Option<String>,
    /// The identity the peer authenticated with (IDi as responder, IDr as initiator).
    peer_id: Option<Identification>,
    /// The peer is known to hold the established IKE SA and its first Child SA: we initiated it
    /// (it answered IKE_AUTH), or an authenticated message or ESP came from it since.
    peer_confirmed: bool,
}

/// Another configuration a responder may switch to at IKE_AUTH, chosen by the initiator's IDi and
/// PSK (strongSwan picks its peer config the same way: the IKE_SA_INIT exchange only tells the
/// addresses, the identity arrives encrypted in IKE_AUTH).
#[derive(Clone, Debug)]
pub struct Alternative {
    /// The caller's name for this configuration (e.g. the connection name); reported back by
    /// [`IkeSa::take_switch`].
    pub label: String,
    /// The configuration: its `remote_id`, `psk`, `local_id`, subnets, ESP proposals, lifetimes
    /// and DPD apply from IKE_AUTH on. Its IKE proposals must allow the suite already negotiated.
    pub config: Config,
}

/// Whether `specs` allow the IKE suite negotiated in IKE_SA_INIT.
fn ike_suite_allowed(specs: &[ProposalSpec], suite: IkeSuite, group: Option<DhGroup>) -> bool {
    specs.iter().any(|p| {
        p.protocol == ProtocolId::IKE
            && p.encr.contains(&suite.encr)
            && p.prf.contains(&suite.prf)
            && suite.integ.is_none_or(|i| p.integ.contains(&i))
            && group.is_none_or(|g| p.dh.contains(&g))
    })
}

impl core::fmt::Debug for IkeSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (i, r) = self.spis();
        f.debug_struct("IkeSa")
            .field("spi_i", &format_args!("{i:016x}"))
            .field("spi_r", &format_args!("{r:016x}"))
            .field("state", &self.state_name())
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

fn nonzero_u64<R: CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u32<R: CryptoRng + ?Sized>(rng: &mut R) -> u32 {
    loop {
        // SPIs 1..=255 are reserved by IANA for ESP.
        let v = rng.next_u32();
        if v > 255 {
            return v;
        }
    }
}

/// Both ends initiated the same connection at once and two IKE SAs came up: whether the one whose
/// IKE_SA_INIT nonces are `this` = (Ni, Nr) is the redundant one next to the one with `other`.
///
/// RFC 7296 gives no rule for this case; this applies the idea of its rule for rekey collisions
/// (§2.8.1, "the SA created with the lowest of the four nonces" is the redundant one) to the two
/// IKE_SA_INIT exchanges: each SA is ranked by its smaller nonce, nonces compared as byte strings
/// (lexicographically, a shorter prefix first); the SA with the lower rank is redundant. If the
/// smaller nonces are equal the larger ones decide; if both are equal (never with random nonces)
/// neither is redundant. Nonces are public and both ends know the same ones, so both ends
/// compute the same answer: exactly one of `is_redundant(a, b)` and `is_redundant(b, a)` is true
/// unless the nonces are identical.
#[must_use]
pub fn duplicate_is_redundant(this: (&[u8], &[u8]), other: (&[u8], &[u8])) -> bool {
    fn rank<'a>((a, b): (&'a [u8], &'a [u8])) -> (&'a [u8], &'a [u8]) {
        if a <= b {
            (a, b)
        } else {
            (b, a)
        }
    }
    rank(this) < rank(other)
}

fn nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rng.fill_bytes(&mut n);
    n
}

fn min_nonce(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.min(b).to_vec()
}

fn notify(t: NotifyType, data: Vec<u8>) -> Vec<Payload> {
    vec![Payload::Notify(NotifyPayload::new(t, data))]
}

fn find(p: &[Payload], t: PayloadType) -> Option<&Payload> {
    p.iter().find(|x| x.payload_type() == t)
}

fn first_error(p: &[Payload]) -> Option<NotifyType> {
    p.iter().find_map(|x| match x {
        Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
        _ => None,
    })
}

fn spi32(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_be_bytes)
}

fn spi64(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

/// ESP specs without DH groups, for the first Child SA (IKE_AUTH never has PFS).
fn without_pfs(specs: &[ProposalSpec]) -> Vec<ProposalSpec> {
    specs.iter().map(|s| ProposalSpec { dh: Vec::new(), ..s.clone() }).collect()
}

impl IkeSa {
    /// Starts an IKE SA as initiator from `local` to `remote`: queues the IKE_SA_INIT request.
    /// Fails at once (event [`Event::Failed`]) if no IKE proposal has a DH group.
    pub fn initiate<R: CryptoRng + ?Sized>(
        config: Config,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &mut R,
    ) -> Self {
        let group = config.ike_proposals.iter().find_map(|p| p.dh.first().copied());
        let spi_i = nonzero_u64(rng);
        let mut sa = IkeSa::new(config, local, remote, now, Core::new(spi_i, 0, true), State::Failed);
        sa.ni = nonce(rng);
        sa.state = match group {
            Some(g) => {
                let (dh, _) = g.generate(rng);
                sa.send_sa_init(dh, None, 0, rng)
            }
            None => {
                sa.fail(Failure::LocalError(NotifyType::NO_PROPOSAL_CHOSEN));
                State::Failed
            }
        };
        sa
    }

    /// Creates a responder for an IKE_SA_INIT request that arrived at `local` from `remote`
    /// (pass that request to [`IkeSa::handle`] next).
    #[must_use]
    pub fn respond(config: Config, local: SocketAddr, remote: SocketAddr, now: Instant) -> Self {
        IkeSa::new(config, local, remote, now, Core::new(0, 0, false), State::ExpectSaInitRequest)
    }

    fn new(config: Config, local: SocketAddr, remote: SocketAddr, now: Instant, core: Core, state: State) -> Self {
        IkeSa {
            config,
            state,
            cores: vec![core],
            local,
            remote,
            natt: false,
            local_behind_nat: false,
            remote_behind_nat: false,
            children: Vec::new(),
            deleted_early: Vec::new(),
            orphaned_rekeys: Vec::new(),
            queue: VecDeque::new(),
            ni: Vec::new(),
            nr: Vec::new(),
            sa_init_request: Vec::new(),
            sa_init_response: Vec::new(),
            ike_group: None,
            ike_rekey_at: None,
            last_inbound: now,
            last_sent: now,
            handshake_deadline: None,
            now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            alternatives: Vec::new(),
            switched: None,
            peer_id: None,
            peer_confirmed: false,
        }
    }

    /// Responder, before IKE_AUTH: other configurations the initiator may authenticate to (see
    /// [`Alternative`]). At IKE_AUTH the candidates are this SA's own configuration followed by
    /// `alternatives`; those whose `remote_id` equals the initiator's IDi are tried before those
    /// that accept any identity, each group in order, and the first whose IKE proposals allow the
    /// negotiated suite and whose PSK verifies the initiator's AUTH is taken. None: AUTHENTICATION_FAILED.
    /// Ignored for initiators and after IKE_AUTH.
    pub fn set_alternatives(&mut self, alternatives: Vec<Alternative>) {
        if matches!(self.state, State::ExpectSaInitRequest | State::ExpectAuthRequest) && !self.cores[0].initiator {
            self.alternatives = alternatives;
        }
    }

    /// The label of the [`Alternative`] this responder switched to at IKE_AUTH, once (`None`: it
    /// kept its own configuration, or the switch was already taken).
    pub fn take_switch(&mut self) -> Option<String> {
        self.switched.take()
    }

    // ------------------------------------------------------------------------------------------
    // Accessors

    /// The state's name, for logs.
    #[must_use]
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::ExpectSaInitRequest => "ExpectSaInitRequest",
            State::ExpectSaInitResponse { .. } => "ExpectSaInitResponse",
            State::ExpectAuthRequest => "ExpectAuthRequest",
            State::ExpectAuthResponse { .. } => "ExpectAuthResponse",
            State::Established => "Established",
            State::Closed => "Closed",
            State::Failed => "Failed",
        }
    }

    /// Whether the IKE SA is established (authenticated and not closed).
    #[must_use]
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// Whether nothing more will happen (closed, failed or dead): the owner may drop it once its
    /// events are drained.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// Whether this is a responder that answered IKE_SA_INIT but is not authenticated yet.
    #[must_use]
    pub fn is_half_open(&self) -> bool {
        matches!(self.state, State::ExpectAuthRequest)
    }

    fn current(&self) -> Option<usize> {
        self.cores.iter().position(|c| c.role == Role::Current)
    }

    /// (SPIi, SPIr) of the current IKE SA.
    #[must_use]
    pub fn spis(&self) -> (u64, u64) {
        self.current().map_or((0, 0), |i| self.cores[i].spis())
    }

    /// Our SPI of every IKE SA of this connection (current, being deleted, collision candidate):
    /// a dispatcher routes messages whose SPI (ours) is among these here.
    #[must_use]
    pub fn local_spis(&self) -> Vec<u64> {
        self.cores.iter().filter(|c| c.role != Role::Gone).map(Core::our_spi).filter(|s| *s != 0).collect()
    }

    /// The nonces of the IKE_SA_INIT exchange that created this connection, (Ni, Nr). They are
    /// public (sent in clear) and the same on both ends; they do not change when the IKE SA is
    /// rekeyed, so they identify the connection for [`duplicate_is_redundant`].
    #[must_use]
    pub fn nonces(&self) -> (&[u8], &[u8]) {
        (&self.ni, &self.nr)
    }

    /// Whether we are the initiator of the current IKE SA (the original initiator, or the end
    /// that initiated its last rekey). Both ends agree on it (the I flag).
    #[must_use]
    pub fn is_initiator(&self) -> bool {
        self.current().map_or(self.cores[0].initiator, |i| self.cores[i].initiator)
    }

    /// The identity the peer authenticated with in IKE_AUTH (its IDi, or IDr when we initiated);
    /// `None` before.
    #[must_use]
    pub fn peer_id(&self) -> Option<&Identification> {
        self.peer_id.as_ref()
    }

    /// The latest time this SA was given (for the dispatcher's timers).
    pub(crate) fn last_now(&self) -> Instant {
        self.now
    }

    /// Whether the peer is known to hold this established IKE SA and its first Child SA: we
    /// initiated it (the peer answered our IKE_AUTH), or an authenticated message (e.g. the answer
    /// to [`IkeSa::check_liveness`]) or ESP ([`IkeSa::note_inbound_traffic`]) came from the peer
    /// after IKE_AUTH. A responder is not sure before: its IKE_AUTH answer may still be on the way
    /// (or lost).
    #[must_use]
    pub fn is_confirmed_by_peer(&self) -> bool {
        self.is_established() && self.peer_confirmed
    }

    /// Whether the IKE SA is being deleted (our DELETE is queued or in flight) or is gone.
    #[must_use]
    pub fn is_closing(&self) -> bool {
        let delete_pending = self
            .current()
            .and_then(|i| self.cores[i].pending.as_ref())
            .is_some_and(|p| matches!(p.task, Task::DeleteIke));
        self.is_finished() || delete_pending || self.queue.contains(&Request::DeleteIke)
    }

    /// Whether an IKE SA rekey is under way: ours queued or in flight, the peer's new SA waiting
    /// as a collision candidate, or the replaced SA not deleted yet.
    #[must_use]
    pub fn is_rekeying_ike(&self) -> bool {
        let ours =
            self.cores.iter().filter_map(|c| c.pending.as_ref()).any(|p| matches!(p.task, Task::RekeyIke { .. }));
        ours || self.queue.contains(&Request::RekeyIke) || self.cores.iter().any(|c| c.role != Role::Current)
    }

    /// The IKE SA keys of the current IKE SA, once derived.
    #[must_use]
    pub fn keys(&self) -> Option<&IkeSaKeys> {
        self.current().and_then(|i| self.cores[i].keys.as_ref())
    }

    /// Our address and port for this IKE SA.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's address and port (as seen by us).
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// (we are behind a NAT, the peer is behind a NAT), as detected in IKE_SA_INIT.
    #[must_use]
    pub fn nat_detected(&self) -> (bool, bool) {
        (self.local_behind_nat, self.remote_behind_nat)
    }

    /// The UDP encapsulation our Child SAs use: when a NAT was detected (or faked by either end),
    /// or either end uses the NAT-T port.
    #[must_use]
    pub fn encap(&self) -> Option<UdpEncap> {
        let p = self.config.natt_port;
        let nat = self.natt && (self.local_behind_nat || self.remote_behind_nat);
        (nat || self.local.port() == p || self.remote.port() == p)
            .then_some(UdpEncap { local_port: self.local.port(), remote_port: self.remote.port() })
    }

    /// The Child SAs currently installed (including ones being replaced or deleted).
    pub fn child_sas(&self) -> impl Iterator<Item = &ChildSa> {
        self.children.iter().map(|c| &c.sa)
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the request we are waiting an answer for (on any IKE SA of this connection) does, for
    /// logs: `"handshake"`, `"create_child"`, `"rekey_child"`, `"rekey_ike"`, `"delete_child"`,
    /// `"delete_ike"` or `"dpd"` (a liveness check); `None` when no request is outstanding.
    #[must_use]
    pub fn outstanding_request(&self) -> Option<(u32, &'static str)> {
        self.cores.iter().filter_map(|c| c.pending.as_ref()).next().map(|p| {
            let what = match &p.task {
                Task::Handshake => "handshake",
                Task::CreateChild { rekey: Some(_), .. } => "rekey_child",
                Task::CreateChild { rekey: None, .. } => "create_child",
                Task::RekeyIke { .. } => "rekey_ike",
                Task::DeleteChild { .. } => "delete_child",
                Task::DeleteIke => "delete_ike",
                Task::Dpd => "dpd",
            };
            (p.mid, what)
        })
    }

    // ------------------------------------------------------------------------------------------
    // Outputs

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub(crate) fn transmits_pop(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`IkeSa::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut m = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        for c in &self.cores {
            if let Some(p) = &c.pending {
                m(p.next);
                if let Some(g) = p.give_up {
                    m(g);
                }
            }
            if let Role::Dying { deadline, .. } = c.role {
                m(deadline);
            }
        }
        if let Some(d) = self.handshake_deadline {
            m(d);
        }
        if self.is_established() {
            for c in &self.children {
                if c.state == ChildState::Installed {
                    if let Some(r) = c.rekey_at {
                        m(r);
                    }
                }
                if c.state != ChildState::Deleting {
                    m(c.expire_at);
                }
            }
            if let Some(r) = self.ike_rekey_at {
                m(r);
            }
            if let Some(d) = self.dpd_due() {
                m(d);
            }
            if self.local_behind_nat && self.natt {
                m(self.last_sent + self.config.keepalive_interval);
            }
        }
        t
    }

    fn dpd_due(&self) -> Option<Instant> {
        let interval = self.config.dpd_interval?;
        let cur = self.current()?;
        (self.cores[cur].pending.is_none() && self.queue.is_empty()).then_some(self.last_inbound + interval)
    }

    // ------------------------------------------------------------------------------------------
    // Requests of the daemon

    /// Negotiates an additional Child SA (CREATE_CHILD_SA) for `ts` = (our selectors, the peer's),
    /// or the configured subnets. Outcome: [`Event::ChildSaInstalled`] or [`Event::ChildSaFailed`].
    pub fn create_child<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        ts: Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)>,
        rng: &mut R,
    ) {
        self.now = now;
        self.queue.push_back(Request::CreateChild { rekey: None, ts, group: None });
        self.after(rng);
    }

    /// Rekeys the Child SA whose inbound SPI is `spi_in` now (normally done by its timer).
    pub fn rekey_child<R: CryptoRng + ?Sized>(&mut self, now: Instant, spi_in: u32, rng: &mut R) {
        self.now = now;
        if let Some(c) = self.children.iter_mut().find(|c| c.sa.inbound_spi() == spi_in) {
            if c.state == ChildState::Installed {
                c.rekey_at = None;
                self.queue.push_back(Request::CreateChild { rekey: Some(spi_in), ts: None, group: None });
            }
        }
        self.after(rng);
    }

    /// Rekeys the IKE SA now (normally done by its timer).
    pub fn rekey_ike<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.now = now;
        self.ike_rekey_at = None;
        if !self.queue.contains(&Request::RekeyIke) {
            self.queue.push_back(Request::RekeyIke);
        }
        self.after(rng);
    }

    /// Deletes the Child SA whose inbound SPI is `spi_in`.
    pub fn delete_child<R: CryptoRng + ?Sized>(&mut self, now: Instant, spi_in: u32, rng: &mut R) {
        self.now = now;
        if let Some(c) = self.children.iter_mut().find(|c| c.sa.inbound_spi() == spi_in) {
            if c.state != ChildState::Deleting {
                c.state = ChildState::Deleting;
                self.queue.push_front(Request::DeleteChild(spi_in));
            }
        }
        self.after(rng);
    }

    /// Deletes the IKE SA and with it every Child SA (ends in [`Event::Closed`]).
    pub fn close<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.now = now;
        match self.state {
            State::Established => {
                self.queue.clear();
                self.queue.push_front(Request::DeleteIke);
            }
            State::Closed | State::Failed => {}
            _ => {
                self.state = State::Closed;
                self.events.push_back(Event::Closed);
            }
        }
        self.after(rng);
    }

    /// Tells the IKE SA that authenticated traffic (ESP) arrived from the peer, which postpones
    /// the liveness check.
    pub fn note_inbound_traffic(&mut self, now: Instant) {
        self.last_inbound = self.last_inbound.max(now);
        if self.is_established() {
            self.peer_confirmed = true;
        }
    }

    /// Sends a liveness check (an empty INFORMATIONAL) now unless one is queued or in flight. An
    /// answer confirms the SA ([`IkeSa::is_confirmed_by_peer`]); none within `dpd_timeout`
    /// declares the peer dead ([`Event::PeerDead`]), as a DPD does.
    pub fn check_liveness<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.now = now;
        let in_flight = self.cores.iter().filter_map(|c| c.pending.as_ref()).any(|p| matches!(p.task, Task::Dpd));
        if self.is_established() && !in_flight && !self.queue.contains(&Request::Dpd) {
            self.queue.push_back(Request::Dpd);
        }
        self.after(rng);
    }

    // ------------------------------------------------------------------------------------------
    // Timers

    /// Does what is due at `now`: retransmissions and give-ups, rekeys, expiries, liveness
    /// checks, keepalives.
    pub fn handle_timeout<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.now = now;
        if self.is_finished() {
            return;
        }
        let cap = self.config.retransmit_max_interval;
        for idx in 0..self.cores.len() {
            let max = self.config.retransmit_max;
            let Some(p) = self.cores[idx].pending.as_mut() else {
                continue;
            };
            let expired = match p.give_up {
                Some(g) => now >= g,
                None => now >= p.next && p.count >= max,
            };
            if expired {
                self.give_up(idx);
                if self.is_finished() {
                    return;
                }
                continue;
            }
            if now >= p.next {
                p.count += 1;
                p.interval = p.interval.saturating_mul(2).min(cap);
                p.next = now + p.interval;
                let bytes = p.bytes.clone();
                self.send(bytes);
            }
        }
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            self.fail(Failure::Timeout);
            return;
        }
        for c in &mut self.cores {
            if let Role::Dying { deadline, .. } = c.role {
                if now >= deadline {
                    c.role = Role::Gone;
                }
            }
        }
        if self.is_established() {
            for c in &mut self.children {
                if c.state != ChildState::Deleting && now >= c.expire_at {
                    c.state = ChildState::Deleting;
                    self.queue.push_front(Request::DeleteChild(c.sa.inbound_spi()));
                } else if c.state == ChildState::Installed && c.rekey_at.is_some_and(|r| now >= r) {
                    c.rekey_at = None;
                    self.queue.push_back(Request::CreateChild {
                        rekey: Some(c.sa.inbound_spi()),
                        ts: None,
                        group: None,
                    });
                }
            }
            if self.ike_rekey_at.is_some_and(|r| now >= r) {
                self.ike_rekey_at = None;
                if !self.queue.contains(&Request::RekeyIke) {
                    self.queue.push_back(Request::RekeyIke);
                }
            }
            if self.dpd_due().is_some_and(|d| now >= d) {
                self.queue.push_back(Request::Dpd);
            }
        }
        self.after(rng);
        if self.is_established()
            && self.natt
            && self.local_behind_nat
            && now >= self.last_sent + self.config.keepalive_interval
        {
            self.last_sent = now;
            self.transmits.push_back(Transmit {
                local: self.local,
                remote: self.remote,
                payload: nat::KEEPALIVE.to_vec(),
                non_esp_marker: false,
            });
        }
    }

    fn give_up(&mut self, idx: usize) {
        let Some(p) = self.cores[idx].pending.take() else {
            return;
        };
        if self.cores[idx].role != Role::Current {
            self.cores[idx].role = Role::Gone;
            self.abandon(p.task);
            return;
        }
        self.die(match p.task {
            Task::Dpd => Event::PeerDead,
            // Our DELETE was not answered (perhaps only the answer was lost, and the peer has
            // forgotten the SA already): deleted all the same (RFC 7296 §1.4.1).
            Task::DeleteIke => Event::Closed,
            _ => Event::Failed(Failure::Timeout),
        });
    }

    /// An exchange on an IKE SA that went away (deleted after a rekey) will never complete: put
    /// what it was doing back so that it is retried on the current IKE SA.
    fn abandon(&mut self, task: Task) {
        match task {
            Task::CreateChild { rekey: Some(old), .. } => {
                let retry = self.now + REKEY_RETRY;
                if let Some(c) = self.child_mut(old) {
                    if c.state == ChildState::Rekeying {
                        c.state =
                            if c.peer_rekey.take().is_some() { ChildState::Rekeyed } else { ChildState::Installed };
                        c.rekey_at = Some(retry);
                    }
                }
            }
            Task::CreateChild { rekey: None, .. } => {
                self.events.push_back(Event::ChildSaFailed(Failure::PeerError(NotifyType::TEMPORARY_FAILURE)));
            }
            Task::DeleteChild { spi } => {
                if self.child_mut(spi).is_some() {
                    self.queue.push_front(Request::DeleteChild(spi));
                }
            }
            Task::Handshake | Task::RekeyIke { .. } | Task::DeleteIke | Task::Dpd => {}
        }
    }

    /// Reports every Child SA deleted, then `last`; nothing more happens afterwards.
    fn die(&mut self, last: Event) {
        for c in self.children.drain(..) {
            self.events.push_back(Event::ChildSaDeleted { spi_in: c.sa.inbound_spi(), spi_out: c.sa.outbound_spi() });
        }
        self.queue.clear();
        for c in &mut self.cores {
            c.pending = None;
        }
        self.handshake_deadline = None;
        self.state = if last == Event::Closed { State::Closed } else { State::Failed };
        self.events.push_back(last);
    }

    fn fail(&mut self, why: Failure) {
        self.die(Event::Failed(why));
    }

    // ------------------------------------------------------------------------------------------
    // Input

    /// Processes one IKE message (non-ESP marker already stripped) received at `local` from
    /// `remote`. Malformed, unauthenticated or unexpected input is dropped (or answered with an
    /// error notification where RFC 7296 says so); it never changes an established SA.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        rng: &mut R,
    ) {
        self.now = now;
        if self.is_finished() {
            return;
        }
        let Ok(peek) = Header::peek(msg) else {
            return;
        };
        let h = peek.header;
        if h.exchange_type == ExchangeType::IKE_SA_INIT {
            self.handle_sa_init(local, remote, msg, h, rng);
        } else {
            self.handle_protected(local, remote, msg, h, rng);
        }
        self.after(rng);
    }

    fn handle_sa_init<R: CryptoRng + ?Sized>(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        h: Header,
        rng: &mut R,
    ) {
        let Some(c0) = self.cores.first() else {
            return;
        };
        if h.flags.response {
            if h.flags.initiator || h.spi_i != c0.spi_i || h.message_id != 0 || !c0.initiator {
                return;
            }
            let state = core::mem::replace(&mut self.state, State::Failed);
            self.state = match state {
                State::ExpectSaInitResponse { dh, cookie, retries } => {
                    self.on_sa_init_response(msg, dh, cookie, retries, rng)
                }
                s => s,
            };
        } else {
            if !h.flags.initiator || h.message_id != 0 || h.spi_r != 0 {
                return;
            }
            match self.state {
                State::ExpectSaInitRequest => {
                    self.local = local;
                    self.remote = remote;
                    self.state = State::Failed;
                    self.state = self.on_sa_init_request(msg, rng);
                }
                _ => {
                    if !c0.initiator && h.spi_i == c0.spi_i {
                        if let Some((0, bytes)) = &c0.last_response {
                            let b = bytes.clone();
                            self.send(b);
                        }
                    }
                }
            }
        }
    }

    fn handle_protected<R: CryptoRng + ?Sized>(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        h: Header,
        rng: &mut R,
    ) {
        let Some(idx) = self.cores.iter().position(|c| {
            c.role != Role::Gone && c.spi_i == h.spi_i && c.spi_r == h.spi_r && h.flags.initiator != c.initiator
        }) else {
            return;
        };
        if h.flags.response {
            let c = &self.cores[idx];
            if !c.pending.as_ref().is_some_and(|p| p.mid == h.message_id && p.exchange == h.exchange_type) {
                return;
            }
            let Some(opened) = c.open(msg) else {
                return;
            };
            let Some(out) = self.cores[idx].pending.take() else {
                return;
            };
            self.authenticated(idx, local, remote);
            self.on_response(idx, out.task, &opened, rng);
        } else {
            let c = &self.cores[idx];
            if h.message_id.wrapping_add(1) == c.peer_mid {
                // A retransmitted request: answer with the cached response, if authentic.
                if let Some((mid, bytes)) = &c.last_response {
                    if *mid == h.message_id && c.open(msg).is_some() {
                        let b = bytes.clone();
                        self.send(b);
                    }
                }
                return;
            }
            if h.message_id != c.peer_mid {
                return;
            }
            let Some(opened) = c.open(msg) else {
                return;
            };
            self.authenticated(idx, local, remote);
            let Some(inner) = self.on_request(idx, &opened, rng) else {
                return;
            };
            let c = &mut self.cores[idx];
            c.peer_mid = c.peer_mid.wrapping_add(1);
            if let Some(bytes) = c.seal(h.exchange_type, h.message_id, true, &inner, rng) {
                c.last_response = Some((h.message_id, bytes.clone()));
                self.send(bytes);
            }
        }
    }

    /// A new request or a matching response authenticated on core `idx` arrived at `local` from
    /// `remote`: note liveness and follow an address change.
    fn authenticated(&mut self, idx: usize, local: SocketAddr, remote: SocketAddr) {
        if self.cores[idx].role == Role::Current {
            self.last_inbound = self.now;
        }
        if self.is_established() {
            // Past IKE_AUTH (a retransmitted IKE_AUTH request does not get here).
            self.peer_confirmed = true;
        }
        if (local, remote) != (self.local, self.remote) && self.config.nat_traversal {
            self.local = local;
            self.remote = remote;
            if self.is_established() {
                for c in &mut self.children {
                    c.sa.local = local;
                    c.sa.remote = remote;
                }
                let encap = self.encap();
                for c in &mut self.children {
                    c.sa.encap = encap;
                }
                self.events.push_back(Event::EndpointsChanged { local, remote, encap });
            }
        }
    }

    fn send(&mut self, payload: Vec<u8>) {
        self.last_sent = self.now;
        let p = self.config.natt_port;
        self.transmits.push_back(Transmit {
            local: self.local,
            remote: self.remote,
            payload,
            non_esp_marker: self.local.port() == p || self.remote.port() == p,
        });
    }

    fn send_request(&mut self, idx: usize, mid: u32, exchange: ExchangeType, bytes: Vec<u8>, task: Task) {
        let interval = self.config.retransmit_initial;
        let give_up = matches!(task, Task::Dpd).then(|| self.now + self.config.dpd_timeout);
        let c = &mut self.cores[idx];
        c.next_mid = mid.wrapping_add(1);
        c.pending = Some(Outstanding {
            mid,
            exchange,
            bytes: bytes.clone(),
            next: self.now + interval,
            interval,
            count: 0,
            give_up,
            task,
        });
        self.send(bytes);
    }

    /// Starts queued requests where windows are free, then removes what is gone.
    fn after<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) {
        let abandoned: Vec<Task> = self
            .cores
            .iter_mut()
            .filter(|c| c.role == Role::Gone)
            .filter_map(|c| c.pending.take())
            .map(|p| p.task)
            .collect();
        for t in abandoned {
            self.abandon(t);
        }
        if self.is_established() {
            for idx in 0..self.cores.len() {
                let c = &self.cores[idx];
                if matches!(c.role, Role::Dying { by_us: true, .. }) && !c.delete_sent && c.pending.is_none() {
                    self.cores[idx].delete_sent = true;
                    let inner =
                        [Payload::Delete(DeletePayload { protocol_id: ProtocolId::IKE, spi_size: 0, spis: vec![] })];
                    self.request_on(idx, ExchangeType::INFORMATIONAL, &inner, Task::DeleteIke, rng);
                }
            }
            while let Some(cur) = self.current() {
                if self.cores[cur].pending.is_some() || !self.is_established() {
                    break;
                }
                let Some(req) = self.queue.pop_front() else {
                    break;
                };
                self.start(cur, req, rng);
            }
        }
        if self.is_finished() {
            self.queue.clear();
        }
        self.cores.retain(|c| c.role != Role::Gone);
        if !self.child_exchange_in_flight() {
            self.deleted_early.clear();
            self.orphaned_rekeys.clear();
        }
    }

    fn request_on<R: CryptoRng + ?Sized>(
        &mut self,
        idx: usize,
        exchange: ExchangeType,
        inner: &[Payload],
        task: Task,
        rng: &mut R,
    ) {
        let mid = self.cores[idx].next_mid;
        if let Some(bytes) = self.cores[idx].seal(exchange, mid, false, inner, rng) {
            self.send_request(idx, mid, exchange, bytes, task);
        }
    }

    fn start<R: CryptoRng + ?Sized>(&mut self, cur: usize, req: Request, rng: &mut R) {
        match req {
            Request::Dpd => self.request_on(cur, ExchangeType::INFORMATIONAL, &[], Task::Dpd, rng),
            Request::DeleteIke => {
                let inner =
                    [Payload::Delete(DeletePayload { protocol_id: ProtocolId::IKE, spi_size: 0, spis: vec![] })];
                self.request_on(cur, ExchangeType::INFORMATIONAL, &inner, Task::DeleteIke, rng);
            }
            Request::DeleteChild(spi) => {
                if !self.children.iter().any(|c| c.sa.inbound_spi() == spi) {
                    return;
                }
                let inner = [Payload::Delete(DeletePayload {
                    protocol_id: ProtocolId::ESP,
                    spi_size: 4,
                    spis: vec![spi.to_be_bytes().to_vec()],
                })];
                self.request_on(cur, ExchangeType::INFORMATIONAL, &inner, Task::DeleteChild { spi }, rng);
            }
            Request::CreateChild { rekey, ts, group: retry_group } => {
                let (ts_i, ts_r) = match rekey {
                    Some(old) => {
                        let Some(c) = self.children.iter_mut().find(|c| c.sa.inbound_spi() == old) else {
                            return;
                        };
                        if c.state != ChildState::Installed {
                            return;
                        }
                        c.state = ChildState::Rekeying;
                        c.peer_rekey = None;
                        (c.sa.local_ts().to_vec(), c.sa.remote_ts().to_vec())
                    }
                    None => ts.unwrap_or_else(|| (self.config.local_ts.clone(), self.config.remote_ts.clone())),
                };
                let spi = self.new_child_spi(rng);
                let ni = nonce(rng);
                let group =
                    retry_group.or_else(|| self.config.esp_proposals.iter().find_map(|p| p.dh.first().copied()));
                let dh = group.map(|g| g.generate(rng));
                let offer = build_offer(&self.config.esp_proposals, &spi.to_be_bytes());
                let mut inner = Vec::new();
                if let Some(old) = rekey {
                    inner.push(Payload::Notify(NotifyPayload {
                        protocol_id: ProtocolId::ESP,
                        spi: old.to_be_bytes().to_vec(),
                        notify_type: NotifyType::REKEY_SA,
                        data: vec![],
                    }));
                }
                inner.push(Payload::Sa(SaPayload { proposals: offer.clone() }));
                inner.push(Payload::Nonce(ni.clone()));
                if let Some((d, public)) = &dh {
                    inner.push(Payload::Ke(KePayload { dh_group: d.group().id(), data: public.clone() }));
                }
                inner.push(Payload::TsI(ts_i.clone()));
                inner.push(Payload::TsR(ts_r.clone()));
                let task = Task::CreateChild {
                    rekey,
                    spi,
                    offer,
                    dh: dh.map(|(d, _)| d),
                    ni,
                    ts_i,
                    ts_r,
                    retried: retry_group.is_some(),
                };
                self.request_on(cur, ExchangeType::CREATE_CHILD_SA, &inner, task, rng);
            }
            Request::RekeyIke => {
                let Some(group) =
                    self.ike_group.or_else(|| self.config.ike_proposals.iter().find_map(|p| p.dh.first().copied()))
                else {
                    return;
                };
                let spi = nonzero_u64(rng);
                let ni = nonce(rng);
                let (dh, public) = group.generate(rng);
                // Offer our proposals with the current group first, so the peer picks the KE we send.
                let specs: Vec<ProposalSpec> = self
                    .config
                    .ike_proposals
                    .iter()
                    .map(|s| {
                        let mut s = s.clone();
                        s.dh.sort_by_key(|g| *g != group);
                        s
                    })
                    .collect();
                let inner = [
                    Payload::Sa(SaPayload { proposals: build_offer(&specs, &spi.to_be_bytes()) }),
                    Payload::Nonce(ni.clone()),
                    Payload::Ke(KePayload { dh_group: group.id(), data: public }),
                ];
                self.request_on(cur, ExchangeType::CREATE_CHILD_SA, &inner, Task::RekeyIke { spi, dh, ni }, rng);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // IKE_SA_INIT

    fn nat_notifies<R: CryptoRng + ?Sized>(&self, spi_i: u64, spi_r: u64, rng: &mut R) -> Vec<Payload> {
        if !self.config.nat_traversal {
            return Vec::new();
        }
        let src = if self.config.force_encap {
            let mut fake = vec![0u8; 20];
            rng.fill_bytes(&mut fake);
            fake
        } else {
            nat::detection_hash(spi_i, spi_r, self.local)
        };
        vec![
            Payload::Notify(NotifyPayload::new(NotifyType::NAT_DETECTION_SOURCE_IP, src)),
            Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat::detection_hash(spi_i, spi_r, self.remote),
            )),
        ]
    }

    /// Evaluates the peer's NAT detection notifies in an IKE_SA_INIT message.
    fn detect_nat(&mut self, payloads: &[Payload], spi_i: u64, spi_r: u64) {
        if !self.config.nat_traversal {
            return;
        }
        let src: Vec<&NotifyPayload> = notifies(payloads, NotifyType::NAT_DETECTION_SOURCE_IP).collect();
        let Some(dst) = notifies(payloads, NotifyType::NAT_DETECTION_DESTINATION_IP).next() else {
            return;
        };
        if src.is_empty() {
            return;
        }
        self.natt = true;
        let remote_hash = nat::detection_hash(spi_i, spi_r, self.remote);
        self.remote_behind_nat = !src.iter().any(|n| n.data == remote_hash);
        self.local_behind_nat = self.config.force_encap || dst.data != nat::detection_hash(spi_i, spi_r, self.local);
    }

    fn send_sa_init<R: CryptoRng + ?Sized>(
        &mut self,
        dh: DhPrivate,
        cookie: Option<Vec<u8>>,
        retries: u8,
        rng: &mut R,
    ) -> State {
        let spi_i = self.cores[0].spi_i;
        let mut payloads = Vec::new();
        if let Some(c) = &cookie {
            payloads.push(Payload::Notify(NotifyPayload::new(NotifyType::COOKIE, c.clone())));
        }
        payloads.push(Payload::Sa(SaPayload { proposals: build_offer(&self.config.ike_proposals, &[]) }));
        payloads.push(Payload::Ke(KePayload { dh_group: dh.group().id(), data: dh.public_value() }));
        payloads.push(Payload::Nonce(self.ni.clone()));
        payloads.extend(self.nat_notifies(spi_i, 0, rng));
        let msg = Message { header: self.cores[0].header(ExchangeType::IKE_SA_INIT, 0, false), payloads };
        match msg.emit() {
            Ok(bytes) => {
                self.sa_init_request.clone_from(&bytes);
                self.send_request(0, 0, ExchangeType::IKE_SA_INIT, bytes, Task::Handshake);
                State::ExpectSaInitResponse { dh, cookie, retries }
            }
            Err(_) => {
                self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
                State::Failed
            }
        }
    }

    fn on_sa_init_request<R: CryptoRng + ?Sized>(&mut self, bytes: &[u8], rng: &mut R) -> State {
        let keep = State::ExpectSaInitRequest;
        let Ok(m) = Message::parse(bytes) else {
            return keep;
        };
        let h = m.header;
        let (Some(Payload::Sa(sa)), Some(Payload::Ke(ke)), Some(Payload::Nonce(ni))) =
            (m.find(PayloadType::SA), m.find(PayloadType::KE), m.find(PayloadType::NONCE))
        else {
            self.reply_error_unprotected(h, NotifyType::INVALID_SYNTAX, vec![]);
            return keep;
        };
        let chosen = match select_proposal(&sa.proposals, &self.config.ike_proposals) {
            Ok(c) if c.protocol == ProtocolId::IKE => c,
            _ => {
                self.reply_error_unprotected(h, NotifyType::NO_PROPOSAL_CHOSEN, vec![]);
                return keep;
            }
        };
        let Some(group) = chosen.dh else {
            return keep;
        };
        if ke.dh_group != group.id() {
            self.reply_error_unprotected(h, NotifyType::INVALID_KE_PAYLOAD, group.id().to_be_bytes().to_vec());
            return keep;
        }
        let (dh, public) = group.generate(rng);
        let Ok(g_ir) = group.compute_shared(&dh, &ke.data) else {
            self.reply_error_unprotected(h, NotifyType::INVALID_SYNTAX, vec![]);
            return keep;
        };
        let spi_r = nonzero_u64(rng);
        self.cores[0].spi_i = h.spi_i;
        self.cores[0].spi_r = spi_r;
        self.ni.clone_from(ni);
        self.nr = nonce(rng);
        self.detect_nat(&m.payloads, h.spi_i, 0);
        let mut payloads = vec![
            Payload::Sa(SaPayload { proposals: vec![chosen.to_proposal(vec![])] }),
            Payload::Ke(KePayload { dh_group: group.id(), data: public }),
            Payload::Nonce(self.nr.clone()),
        ];
        if self.natt {
            payloads.extend(self.nat_notifies(h.spi_i, spi_r, rng));
        }
        let resp = Message { header: self.cores[0].header(ExchangeType::IKE_SA_INIT, 0, true), payloads };
        let Ok(resp_bytes) = resp.emit() else {
            return keep;
        };
        if !self.install_initial_keys(&chosen, &g_ir) {
            return keep;
        }
        self.ike_group = Some(group);
        self.sa_init_request = bytes.to_vec();
        self.sa_init_response.clone_from(&resp_bytes);
        let c = &mut self.cores[0];
        c.peer_mid = 1;
        c.last_response = Some((0, resp_bytes.clone()));
        self.send(resp_bytes);
        self.handshake_deadline = Some(self.now + self.config.half_open_timeout);
        State::ExpectAuthRequest
    }

    fn on_sa_init_response<R: CryptoRng + ?Sized>(
        &mut self,
        bytes: &[u8],
        dh: DhPrivate,
        cookie: Option<Vec<u8>>,
        retries: u8,
        rng: &mut R,
    ) -> State {
        let Ok(m) = Message::parse(bytes) else {
            return State::ExpectSaInitResponse { dh, cookie, retries };
        };
        let h = m.header;
        if let Some(c) = m.notifies(NotifyType::COOKIE).next() {
            if retries < MAX_INIT_RETRIES && !c.data.is_empty() && c.data.len() <= 64 {
                let data = c.data.clone();
                return self.send_sa_init(dh, Some(data), retries + 1, rng);
            }
            self.fail(Failure::PeerError(NotifyType::COOKIE));
            return State::Failed;
        }
        if let Some(n) = m.notifies(NotifyType::INVALID_KE_PAYLOAD).next() {
            let wanted = <[u8; 2]>::try_from(n.data.as_slice()).ok().map(u16::from_be_bytes);
            let ours = wanted
                .and_then(DhGroup::from_id)
                .filter(|g| *g != dh.group() && self.config.ike_proposals.iter().any(|p| p.dh.contains(g)));
            if let (Some(g), true) = (ours, retries < MAX_INIT_RETRIES) {
                let (new_dh, _) = g.generate(rng);
                return self.send_sa_init(new_dh, cookie, retries + 1, rng);
            }
            self.fail(Failure::PeerError(NotifyType::INVALID_KE_PAYLOAD));
            return State::Failed;
        }
        if let Some(n) = first_error(&m.payloads) {
            // Unauthenticated error (RFC 7296 §2.21.1 allows waiting for a better answer; the
            // errors that can be fixed are handled above).
            self.fail(Failure::PeerError(n));
            return State::Failed;
        }
        let (Some(Payload::Sa(sa)), Some(Payload::Ke(ke)), Some(Payload::Nonce(nr))) =
            (m.find(PayloadType::SA), m.find(PayloadType::KE), m.find(PayloadType::NONCE))
        else {
            return State::ExpectSaInitResponse { dh, cookie, retries };
        };
        if h.spi_r == 0 {
            return State::ExpectSaInitResponse { dh, cookie, retries };
        }
        // Exactly one proposal that our configuration accepts, with the group we sent.
        let chosen = match sa.proposals.as_slice() {
            [p] => select_proposal(std::slice::from_ref(p), &self.config.ike_proposals).ok(),
            _ => None,
        };
        let Some(chosen) = chosen.filter(|c| c.dh == Some(dh.group()) && ke.dh_group == dh.group().id()) else {
            self.fail(Failure::LocalError(NotifyType::NO_PROPOSAL_CHOSEN));
            return State::Failed;
        };
        let Ok(g_ir) = dh.group().compute_shared(&dh, &ke.data) else {
            self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
            return State::Failed;
        };
        self.cores[0].spi_r = h.spi_r;
        self.cores[0].pending = None;
        self.nr.clone_from(nr);
        self.sa_init_response = bytes.to_vec();
        self.ike_group = Some(dh.group());
        if !self.install_initial_keys(&chosen, &g_ir) {
            self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
            return State::Failed;
        }
        self.detect_nat(&m.payloads, self.cores[0].spi_i, h.spi_r);
        if self.natt && (self.local_behind_nat || self.remote_behind_nat) {
            // RFC 7296 §2.23: float to the NAT-T port for IKE_AUTH and everything after.
            self.local.set_port(self.config.natt_port);
            self.remote.set_port(self.config.natt_port);
        }
        self.send_auth_request(rng)
    }

    fn install_initial_keys(&mut self, chosen: &ChosenProposal, g_ir: &SecretBytes) -> bool {
        let Some(prf) = chosen.prf else {
            return false;
        };
        let suite = IkeSuite { encr: chosen.encr, prf, integ: chosen.integ };
        let c = &self.cores[0];
        match IkeSaKeys::derive_initial(suite, g_ir.expose(), &self.ni, &self.nr, c.spi_i, c.spi_r) {
            Ok(keys) => self.cores[0].install(keys),
            Err(_) => false,
        }
    }

    fn reply_error_unprotected(&mut self, req: Header, t: NotifyType, data: Vec<u8>) {
        let m = Message {
            header: Header { flags: Flags { initiator: false, version: false, response: true }, ..req },
            payloads: notify(t, data),
        };
        if let Ok(b) = m.emit() {
            // Stateless: not cached, the request will be answered again if retransmitted.
            self.send(b);
        }
    }

    // ------------------------------------------------------------------------------------------
    // IKE_AUTH

    fn local_identity(&self) -> Identification {
        self.config.local_id.clone().unwrap_or(match self.local.ip() {
            IpAddr::V4(a) => Identification::Ipv4(a),
            IpAddr::V6(a) => Identification::Ipv6(a),
        })
    }

    fn send_auth_request<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> State {
        let Some((prf, sk_pi)) = self.cores[0].keys.as_ref().map(|k| (k.suite.prf, k.sk_pi.clone())) else {
            return State::Failed;
        };
        let idi = self.local_identity();
        let octets = signed_octets(prf, &self.sa_init_request, &self.nr, &sk_pi, &idi.body_bytes());
        let auth = psk_auth(prf, &self.config.psk, &octets);
        let spi = nonzero_u32(rng);
        let offer = build_offer(&without_pfs(&self.config.esp_proposals), &spi.to_be_bytes());
        let child = ChildOffer {
            spi,
            offer: offer.clone(),
            ts_i: self.config.local_ts.clone(),
            ts_r: self.config.remote_ts.clone(),
        };
        let inner = vec![
            Payload::IdI(idi),
            Payload::Auth(AuthPayload { method: AuthMethod::SHARED_KEY_MIC, data: auth }),
            Payload::Sa(SaPayload { proposals: offer }),
            Payload::TsI(child.ts_i.clone()),
            Payload::TsR(child.ts_r.clone()),
        ];
        match self.cores[0].seal(ExchangeType::IKE_AUTH, 1, false, &inner, rng) {
            Some(bytes) => {
                self.send_request(0, 1, ExchangeType::IKE_AUTH, bytes, Task::Handshake);
                State::ExpectAuthResponse { child }
            }
            None => {
                self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
                State::Failed
            }
        }
    }

    /// Responder: processes IKE_AUTH; returns the response's inner payloads. Once the initiator
    /// is authenticated the IKE SA exists even if its first Child SA is refused (RFC 7296
    /// §1.2): the response then carries IDr, AUTH and the error notification.
    fn on_auth_request<R: CryptoRng + ?Sized>(&mut self, opened: &Opened, rng: &mut R) -> Option<Vec<Payload>> {
        let p = &opened.inner;
        let (Some(Payload::IdI(idi)), Some(Payload::Auth(auth))) =
            (find(p, PayloadType::IDI), find(p, PayloadType::AUTH))
        else {
            self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
            return Some(notify(NotifyType::INVALID_SYNTAX, vec![]));
        };
        let (prf, sk_pi, sk_pr) =
            self.cores[0].keys.as_ref().map(|k| (k.suite.prf, k.sk_pi.clone(), k.sk_pr.clone()))?;
        let octets = signed_octets(prf, &self.sa_init_request, &self.nr, &sk_pi, &idi.body_bytes());
        let suite = self.cores[0].keys.as_ref().map(|k| k.suite)?;
        let alternatives = core::mem::take(&mut self.alternatives);
        // Candidates: (label, config); None is our own configuration, allowed by construction.
        let candidates = core::iter::once((None, &self.config))
            .chain(alternatives.iter().map(|a| (Some(&a.label), &a.config)))
            .collect::<Vec<_>>();
        let exact = candidates.iter().filter(|(_, c)| c.remote_id.as_ref() == Some(idi));
        let wildcard = candidates.iter().filter(|(_, c)| c.remote_id.is_none());
        let chosen = exact.chain(wildcard).find(|(label, c)| {
            (label.is_none() || ike_suite_allowed(&c.ike_proposals, suite, self.ike_group))
                && verify_psk_auth(prf, &c.psk, &octets, &auth.data)
        });
        let switch = match chosen {
            Some((label, c)) if auth.method == AuthMethod::SHARED_KEY_MIC => label.map(|l| (l.clone(), (*c).clone())),
            _ => {
                self.fail(Failure::LocalError(NotifyType::AUTHENTICATION_FAILED));
                return Some(notify(NotifyType::AUTHENTICATION_FAILED, vec![]));
            }
        };
        if let Some((label, config)) = switch {
            self.config = config;
            self.switched = Some(label);
        }
        self.peer_id = Some(idi.clone());
        let idr = self.local_identity();
        let octets_r = signed_octets(prf, &self.sa_init_response, &self.ni, &sk_pr, &idr.body_bytes());
        let auth_r = psk_auth(prf, &self.config.psk, &octets_r);
        let mut out =
            vec![Payload::IdR(idr), Payload::Auth(AuthPayload { method: AuthMethod::SHARED_KEY_MIC, data: auth_r })];
        self.establish(rng);
        match self.first_child_as_responder(p, rng) {
            Ok((child, payloads)) => {
                self.install_child(child, rng);
                out.extend(payloads);
            }
            Err(t) => {
                self.events.push_back(Event::ChildSaFailed(Failure::LocalError(t)));
                out.extend(notify(t, vec![]));
            }
        }
        Some(out)
    }

    fn first_child_as_responder<R: CryptoRng + ?Sized>(
        &mut self,
        p: &[Payload],
        rng: &mut R,
    ) -> Result<(ChildSa, Vec<Payload>), NotifyType> {
        let (Some(Payload::Sa(sa)), Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) =
            (find(p, PayloadType::SA), find(p, PayloadType::TSI), find(p, PayloadType::TSR))
        else {
            return Err(NotifyType::INVALID_SYNTAX);
        };
        let chosen = match select_proposal(&sa.proposals, &without_pfs(&self.config.esp_proposals)) {
            Ok(c) if c.protocol == ProtocolId::ESP && c.dh.is_none() => c,
            _ => return Err(NotifyType::NO_PROPOSAL_CHOSEN),
        };
        let tsi = ts::narrow(tsi, &self.config.remote_ts);
        let tsr = ts::narrow(tsr, &self.config.local_ts);
        if tsi.is_empty() || tsr.is_empty() {
            return Err(NotifyType::TS_UNACCEPTABLE);
        }
        let peer_spi = spi32(&chosen.spi).ok_or(NotifyType::INVALID_SYNTAX)?;
        let our_spi = self.new_child_spi(rng);
        let (ni, nr) = (self.ni.clone(), self.nr.clone());
        let child = self
            .make_child(0, &chosen, None, &ni, &nr, (peer_spi, our_spi), false, tsi.clone(), tsr.clone())
            .ok_or(NotifyType::NO_PROPOSAL_CHOSEN)?;
        Ok((
            child,
            vec![
                Payload::Sa(SaPayload { proposals: vec![chosen.to_proposal(our_spi.to_be_bytes().to_vec())] }),
                Payload::TsI(tsi),
                Payload::TsR(tsr),
            ],
        ))
    }

    fn on_auth_response<R: CryptoRng + ?Sized>(&mut self, opened: &Opened, offer: ChildOffer, rng: &mut R) -> State {
        let p = &opened.inner;
        let (Some(Payload::IdR(idr)), Some(Payload::Auth(auth))) =
            (find(p, PayloadType::IDR), find(p, PayloadType::AUTH))
        else {
            // Not authenticated by the responder: AUTHENTICATION_FAILED or another fatal error.
            self.fail(first_error(p).map_or(Failure::LocalError(NotifyType::INVALID_SYNTAX), Failure::PeerError));
            return State::Failed;
        };
        let Some((prf, sk_pr)) = self.cores[0].keys.as_ref().map(|k| (k.suite.prf, k.sk_pr.clone())) else {
            return State::Failed;
        };
        let octets = signed_octets(prf, &self.sa_init_response, &self.ni, &sk_pr, &idr.body_bytes());
        let id_ok = self.config.remote_id.as_ref().is_none_or(|want| want == idr);
        if auth.method != AuthMethod::SHARED_KEY_MIC
            || !id_ok
            || !verify_psk_auth(prf, &self.config.psk, &octets, &auth.data)
        {
            self.fail(Failure::LocalError(NotifyType::AUTHENTICATION_FAILED));
            return State::Failed;
        }
        self.peer_id = Some(idr.clone());
        if let Some(n) = first_error(p) {
            // The IKE SA is up; the responder refused the first Child SA.
            self.establish(rng);
            self.events.push_back(Event::ChildSaFailed(Failure::PeerError(n)));
            return State::Established;
        }
        let (Some(Payload::Sa(sa)), Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) =
            (find(p, PayloadType::SA), find(p, PayloadType::TSI), find(p, PayloadType::TSR))
        else {
            self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
            return State::Failed;
        };
        let chosen = accept_reply(sa, &without_pfs(&self.config.esp_proposals), &offer.offer);
        let Some(chosen) = chosen.filter(|c| c.dh.is_none()) else {
            self.fail(Failure::LocalError(NotifyType::NO_PROPOSAL_CHOSEN));
            return State::Failed;
        };
        let Some(peer_spi) = spi32(&chosen.spi) else {
            self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
            return State::Failed;
        };
        if !ts::within(tsi, &offer.ts_i) || !ts::within(tsr, &offer.ts_r) {
            self.fail(Failure::LocalError(NotifyType::TS_UNACCEPTABLE));
            return State::Failed;
        }
        let (ni, nr) = (self.ni.clone(), self.nr.clone());
        let Some(child) =
            self.make_child(0, &chosen, None, &ni, &nr, (offer.spi, peer_spi), true, tsi.clone(), tsr.clone())
        else {
            self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
            return State::Failed;
        };
        self.establish(rng);
        self.install_child(child, rng);
        State::Established
    }

    fn establish<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) {
        self.state = State::Established;
        // As initiator we got the peer's IKE_AUTH answer; as responder the peer holds the SA
        // only once our answer arrives.
        self.peer_confirmed = self.cores[0].initiator;
        self.handshake_deadline = None;
        self.last_inbound = self.now;
        self.ike_rekey_at = Some(self.now + self.config.rekey_after(self.config.ike_lifetime, rng.next_u32()));
        let (spi_i, spi_r) = self.cores[0].spis();
        self.events.push_back(Event::IkeSaEstablished { spi_i, spi_r, local: self.local, remote: self.remote });
    }

    // ------------------------------------------------------------------------------------------
    // Child SAs

    #[allow(clippy::too_many_arguments)]
    fn make_child(
        &self,
        idx: usize,
        chosen: &ChosenProposal,
        g_ir: Option<&SecretBytes>,
        ni: &[u8],
        nr: &[u8],
        (spi_i, spi_r): (u32, u32),
        initiator: bool,
        ts_i: Vec<TrafficSelector>,
        ts_r: Vec<TrafficSelector>,
    ) -> Option<ChildSa> {
        let k = self.cores[idx].keys.as_ref()?;
        let keys = child_keymat(k.suite.prf, &k.sk_d, g_ir.map(SecretBytes::expose), ni, nr, chosen.encr, chosen.integ)
            .ok()?;
        Some(ChildSa {
            spi_i,
            spi_r,
            initiator,
            encr: chosen.encr,
            integ: chosen.integ,
            esn: chosen.esn?,
            keys,
            ts_i,
            ts_r,
            local: self.local,
            remote: self.remote,
            encap: self.encap(),
            lifetime: self.config.child_lifetime,
        })
    }

    fn install_child<R: CryptoRng + ?Sized>(&mut self, sa: ChildSa, rng: &mut R) {
        let rekey = self.config.rekey_after(self.config.child_lifetime, rng.next_u32());
        self.children.push(Child {
            sa: sa.clone(),
            state: ChildState::Installed,
            rekey_at: Some(self.now + rekey),
            expire_at: self.now + self.config.child_lifetime,
            peer_rekey: None,
        });
        self.events.push_back(Event::ChildSaInstalled(sa));
    }

    fn remove_child(&mut self, spi_in: u32) -> Option<u32> {
        let i = self.children.iter().position(|c| c.sa.inbound_spi() == spi_in)?;
        let c = self.children.remove(i);
        if let (ChildState::Rekeying, Some((n, m))) = (c.state, c.peer_rekey.clone()) {
            // Collision not decided yet: keep its record for our response.
            self.orphaned_rekeys.push((spi_in, n, m));
        }
        self.events.push_back(Event::ChildSaDeleted { spi_in, spi_out: c.sa.outbound_spi() });
        Some(spi_in)
    }

    /// A fresh inbound SPI, not used by any Child SA of this connection.
    fn new_child_spi<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> u32 {
        loop {
            let s = nonzero_u32(rng);
            if !self.children.iter().any(|c| c.sa.inbound_spi() == s) {
                return s;
            }
        }
    }

    fn child_exchange_in_flight(&self) -> bool {
        self.cores.iter().any(|c| c.pending.as_ref().is_some_and(|p| matches!(p.task, Task::CreateChild { .. })))
    }

    fn child_mut(&mut self, spi_in: u32) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.sa.inbound_spi() == spi_in)
    }

    // ------------------------------------------------------------------------------------------
    // Requests from the peer

    fn on_request<R: CryptoRng + ?Sized>(&mut self, idx: usize, opened: &Opened, rng: &mut R) -> Option<Vec<Payload>> {
        let h = opened.header;
        match (&self.state, h.exchange_type) {
            (State::ExpectAuthRequest, ExchangeType::IKE_AUTH) if h.message_id == 1 && idx == 0 => {
                self.on_auth_request(opened, rng)
            }
            (State::Established, ExchangeType::CREATE_CHILD_SA) => Some(self.on_create_child_request(idx, opened, rng)),
            (State::Established, ExchangeType::INFORMATIONAL) => Some(self.on_informational_request(idx, opened)),
            _ => None,
        }
    }

    fn on_create_child_request<R: CryptoRng + ?Sized>(
        &mut self,
        idx: usize,
        opened: &Opened,
        rng: &mut R,
    ) -> Vec<Payload> {
        let p = &opened.inner;
        let (Some(Payload::Sa(sa)), Some(Payload::Nonce(ni))) = (find(p, PayloadType::SA), find(p, PayloadType::NONCE))
        else {
            return notify(NotifyType::INVALID_SYNTAX, vec![]);
        };
        if self.cores[idx].role != Role::Current {
            // Being replaced or deleted, or not adopted yet (§2.25).
            return notify(NotifyType::TEMPORARY_FAILURE, vec![]);
        }
        let ke = match find(p, PayloadType::KE) {
            Some(Payload::Ke(k)) => Some(k),
            _ => None,
        };
        if sa.proposals.first().is_some_and(|x| x.protocol_id == ProtocolId::IKE) {
            return self.on_rekey_ike_request(idx, sa, ni, ke, rng);
        }
        let rekey = notifies(p, NotifyType::REKEY_SA).next();
        let old = match rekey {
            None => None,
            Some(n) => {
                let found = spi32(&n.spi).and_then(|s| self.children.iter().position(|c| c.sa.outbound_spi() == s));
                match found {
                    // It may be the SA our own CREATE_CHILD_SA in flight is creating (the peer
                    // has it, we do not yet): ask the peer to retry rather than to forget it.
                    None if self.child_exchange_in_flight() => return notify(NotifyType::TEMPORARY_FAILURE, vec![]),
                    None => return notify(NotifyType::CHILD_SA_NOT_FOUND, vec![]),
                    Some(i) if matches!(self.children[i].state, ChildState::Installed | ChildState::Rekeying) => {
                        Some(i)
                    }
                    Some(_) => return notify(NotifyType::TEMPORARY_FAILURE, vec![]),
                }
            }
        };
        let (Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) = (find(p, PayloadType::TSI), find(p, PayloadType::TSR))
        else {
            return notify(NotifyType::INVALID_SYNTAX, vec![]);
        };
        let chosen = match select_proposal(&sa.proposals, &self.config.esp_proposals) {
            Ok(c) if c.protocol == ProtocolId::ESP => c,
            _ => return notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![]),
        };
        let Some(peer_spi) = spi32(&chosen.spi) else {
            return notify(NotifyType::INVALID_SYNTAX, vec![]);
        };
        let mut ke_out = None;
        let g_ir = match chosen.dh {
            None => None,
            Some(g) => {
                let Some(ke) = ke.filter(|k| k.dh_group == g.id()) else {
                    return notify(NotifyType::INVALID_KE_PAYLOAD, g.id().to_be_bytes().to_vec());
                };
                let (dh, public) = g.generate(rng);
                let Ok(s) = g.compute_shared(&dh, &ke.data) else {
                    return notify(NotifyType::INVALID_SYNTAX, vec![]);
                };
                ke_out = Some(Payload::Ke(KePayload { dh_group: g.id(), data: public }));
                Some(s)
            }
        };
        let tsi = ts::narrow(tsi, &self.config.remote_ts);
        let tsr = ts::narrow(tsr, &self.config.local_ts);
        if tsi.is_empty() || tsr.is_empty() {
            return notify(NotifyType::TS_UNACCEPTABLE, vec![]);
        }
        let nr = nonce(rng);
        let our_spi = self.new_child_spi(rng);
        let Some(child) =
            self.make_child(idx, &chosen, g_ir.as_ref(), ni, &nr, (peer_spi, our_spi), false, tsi.clone(), tsr.clone())
        else {
            return notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![]);
        };
        if let Some(i) = old {
            let c = &mut self.children[i];
            if c.state == ChildState::Rekeying {
                // Collision: we are rekeying it too; our response decides (§2.8.1).
                c.peer_rekey = Some((our_spi, min_nonce(ni, &nr)));
            } else {
                c.state = ChildState::Rekeyed;
                c.rekey_at = None;
            }
        }
        self.install_child(child, rng);
        let mut out = vec![
            Payload::Sa(SaPayload { proposals: vec![chosen.to_proposal(our_spi.to_be_bytes().to_vec())] }),
            Payload::Nonce(nr),
        ];
        out.extend(ke_out);
        out.push(Payload::TsI(tsi));
        out.push(Payload::TsR(tsr));
        out
    }

    fn on_rekey_ike_request<R: CryptoRng + ?Sized>(
        &mut self,
        idx: usize,
        sa: &SaPayload,
        ni: &[u8],
        ke: Option<&KePayload>,
        rng: &mut R,
    ) -> Vec<Payload> {
        let chosen = match select_proposal(&sa.proposals, &self.config.ike_proposals) {
            Ok(c) if c.protocol == ProtocolId::IKE => c,
            _ => return notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![]),
        };
        let (Some(spi_i), Some(group)) = (spi64(&chosen.spi), chosen.dh) else {
            return notify(NotifyType::INVALID_SYNTAX, vec![]);
        };
        let Some(ke) = ke.filter(|k| k.dh_group == group.id()) else {
            return notify(NotifyType::INVALID_KE_PAYLOAD, group.id().to_be_bytes().to_vec());
        };
        // Refuse while another rekey collision is being resolved, or while one of our other
        // exchanges is in flight on this IKE SA: it must complete before the SA is replaced and
        // deleted, or its outcome would be known to one end only.
        let busy = self.cores[idx].pending.as_ref().is_some_and(|p| !matches!(p.task, Task::RekeyIke { .. }));
        if busy || self.cores.iter().any(|c| matches!(c.role, Role::Candidate { .. })) {
            return notify(NotifyType::TEMPORARY_FAILURE, vec![]);
        }
        let (dh, public) = group.generate(rng);
        let Ok(g_ir) = group.compute_shared(&dh, &ke.data) else {
            return notify(NotifyType::INVALID_SYNTAX, vec![]);
        };
        let nr = nonce(rng);
        let spi_r = nonzero_u64(rng);
        let Some(mut core) = self.rekeyed_core(idx, &chosen, &g_ir, ni, &nr, (spi_i, spi_r), false) else {
            return notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![]);
        };
        let collision = self.cores[idx].pending.as_ref().is_some_and(|p| matches!(p.task, Task::RekeyIke { .. }));
        self.queue.retain(|r| *r != Request::RekeyIke);
        if collision {
            core.role = Role::Candidate { min_nonce: min_nonce(ni, &nr) };
            self.cores.push(core);
        } else {
            let old = self.cores[idx].spis();
            self.cores[idx].role = Role::Dying { by_us: false, deadline: self.now + self.dying_timeout() };
            let new = core.spis();
            self.cores.push(core);
            self.ike_rekeyed(old, new, group, rng);
        }
        vec![
            Payload::Sa(SaPayload { proposals: vec![chosen.to_proposal(spi_r.to_be_bytes().to_vec())] }),
            Payload::Nonce(nr),
            Payload::Ke(KePayload { dh_group: group.id(), data: public }),
        ]
    }

    fn dying_timeout(&self) -> Duration {
        DYING_TIMEOUT.max(self.config.retransmit_budget() + self.config.retransmit_initial)
    }

    fn ike_rekeyed<R: CryptoRng + ?Sized>(&mut self, old: (u64, u64), new: (u64, u64), group: DhGroup, rng: &mut R) {
        self.ike_group = Some(group);
        self.ike_rekey_at = Some(self.now + self.config.rekey_after(self.config.ike_lifetime, rng.next_u32()));
        self.last_inbound = self.now;
        self.events.push_back(Event::IkeSaRekeyed { old, new });
    }

    /// The new IKE SA of a rekey on core `idx` (§2.18: SKEYSEED from the old SA's SK_d and PRF).
    #[allow(clippy::too_many_arguments)]
    fn rekeyed_core(
        &self,
        idx: usize,
        chosen: &ChosenProposal,
        g_ir: &SecretBytes,
        ni: &[u8],
        nr: &[u8],
        (spi_i, spi_r): (u64, u64),
        initiator: bool,
    ) -> Option<Core> {
        let old = self.cores[idx].keys.as_ref()?;
        let seed = skeyseed_rekey(old.suite.prf, &old.sk_d, g_ir.expose(), ni, nr);
        let suite = IkeSuite { encr: chosen.encr, prf: chosen.prf?, integ: chosen.integ };
        let keys = IkeSaKeys::derive(suite, &seed, ni, nr, spi_i, spi_r).ok()?;
        let mut core = Core::new(spi_i, spi_r, initiator);
        core.install(keys).then_some(core)
    }

    fn on_informational_request(&mut self, idx: usize, opened: &Opened) -> Vec<Payload> {
        let mut ours = Vec::new();
        let mut delete_ike = false;
        for p in &opened.inner {
            let Payload::Delete(d) = p else {
                continue;
            };
            match d.protocol_id {
                ProtocolId::IKE => delete_ike = true,
                ProtocolId::ESP => {
                    for s in d.spis.iter().filter_map(|s| spi32(s)) {
                        let found = self.children.iter().find(|c| c.sa.outbound_spi() == s).map(|c| c.sa.inbound_spi());
                        match found.and_then(|i| self.remove_child(i)) {
                            Some(spi_in) => ours.push(spi_in.to_be_bytes().to_vec()),
                            // Perhaps the SA our CREATE_CHILD_SA in flight is creating: remember
                            // that the peer deleted it already.
                            None if self.child_exchange_in_flight() => self.deleted_early.push(s),
                            None => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if delete_ike {
            if self.cores[idx].role == Role::Current {
                let cand = self.cores.iter().position(|c| matches!(c.role, Role::Candidate { .. }));
                if let Some(ci) = cand {
                    // The peer completed its rekey and deletes the old SA: adopt its new one.
                    let old = self.cores[idx].spis();
                    self.cores[idx].role = Role::Gone;
                    self.cores[ci].role = Role::Current;
                    let new = self.cores[ci].spis();
                    let group = self.ike_group.unwrap_or(DhGroup::Ecp256);
                    self.ike_group = Some(group);
                    self.ike_rekey_at = self.ike_rekey_at.or(Some(self.now + self.config.ike_lifetime / 2));
                    self.events.push_back(Event::IkeSaRekeyed { old, new });
                } else {
                    self.die(Event::Closed);
                }
            } else {
                // Keep it until the response is sealed; `after` removes it.
                self.cores[idx].role = Role::Gone;
            }
            return Vec::new();
        }
        if ours.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(DeletePayload { protocol_id: ProtocolId::ESP, spi_size: 4, spis: ours })]
        }
    }

    // ------------------------------------------------------------------------------------------
    // Responses to our requests

    fn on_response<R: CryptoRng + ?Sized>(&mut self, idx: usize, task: Task, opened: &Opened, rng: &mut R) {
        match task {
            Task::Handshake => {
                let state = core::mem::replace(&mut self.state, State::Failed);
                self.state = match state {
                    State::ExpectAuthResponse { child } => self.on_auth_response(opened, child, rng),
                    s => s,
                };
            }
            Task::CreateChild { rekey, spi, offer, dh, ni, ts_i, ts_r, retried } => {
                if !retried && self.retry_child_with_group(opened, rekey, dh.as_ref(), &ts_i, &ts_r) {
                    return;
                }
                self.on_create_child_response(idx, opened, rekey, spi, &offer, dh, &ni, (ts_i, ts_r), rng);
            }
            Task::RekeyIke { spi, dh, ni } => self.on_rekey_ike_response(idx, opened, spi, dh, &ni, rng),
            Task::DeleteChild { spi } => {
                self.remove_child(spi);
            }
            Task::DeleteIke => {
                if self.cores[idx].role == Role::Current {
                    self.die(Event::Closed);
                } else {
                    self.cores[idx].role = Role::Gone;
                }
            }
            Task::Dpd => {}
        }
    }

    /// INVALID_KE_PAYLOAD in answer to a CREATE_CHILD_SA with PFS: if the group the peer wants is
    /// one of ours, queue the same request again (once) with it.
    fn retry_child_with_group(
        &mut self,
        opened: &Opened,
        rekey: Option<u32>,
        dh: Option<&DhPrivate>,
        ts_i: &[TrafficSelector],
        ts_r: &[TrafficSelector],
    ) -> bool {
        let Some(n) = notifies(&opened.inner, NotifyType::INVALID_KE_PAYLOAD).next() else {
            return false;
        };
        let wanted = <[u8; 2]>::try_from(n.data.as_slice()).ok().map(u16::from_be_bytes).and_then(DhGroup::from_id);
        let Some(g) = wanted.filter(|g| {
            Some(*g) != dh.map(DhPrivate::group) && self.config.esp_proposals.iter().any(|p| p.dh.contains(g))
        }) else {
            return false;
        };
        if let Some(old) = rekey {
            match self.child_mut(old) {
                Some(c) if c.state == ChildState::Rekeying && c.peer_rekey.is_none() => c.state = ChildState::Installed,
                _ => return false,
            }
        }
        let ts = rekey.is_none().then(|| (ts_i.to_vec(), ts_r.to_vec()));
        self.queue.push_front(Request::CreateChild { rekey, ts, group: Some(g) });
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn on_create_child_response<R: CryptoRng + ?Sized>(
        &mut self,
        idx: usize,
        opened: &Opened,
        rekey: Option<u32>,
        spi: u32,
        offer: &[Proposal],
        dh: Option<DhPrivate>,
        ni: &[u8],
        (ts_i, ts_r): (Vec<TrafficSelector>, Vec<TrafficSelector>),
        rng: &mut R,
    ) {
        let p = &opened.inner;
        let result = (|| {
            if let Some(n) = first_error(p) {
                return Err(Failure::PeerError(n));
            }
            let bad = Failure::LocalError(NotifyType::INVALID_SYNTAX);
            let (Some(Payload::Sa(sa)), Some(Payload::Nonce(nr)), Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) = (
                find(p, PayloadType::SA),
                find(p, PayloadType::NONCE),
                find(p, PayloadType::TSI),
                find(p, PayloadType::TSR),
            ) else {
                return Err(bad);
            };
            let chosen = accept_reply(sa, &self.config.esp_proposals, offer)
                .filter(|c| c.dh == dh.as_ref().map(DhPrivate::group))
                .ok_or(Failure::LocalError(NotifyType::NO_PROPOSAL_CHOSEN))?;
            let peer_spi = spi32(&chosen.spi).ok_or(bad)?;
            let g_ir = match &dh {
                None => None,
                Some(d) => match find(p, PayloadType::KE) {
                    Some(Payload::Ke(ke)) if ke.dh_group == d.group().id() => {
                        Some(d.group().compute_shared(d, &ke.data).map_err(|_| bad)?)
                    }
                    _ => return Err(bad),
                },
            };
            if !ts::within(tsi, &ts_i) || !ts::within(tsr, &ts_r) {
                return Err(Failure::LocalError(NotifyType::TS_UNACCEPTABLE));
            }
            let child = self
                .make_child(idx, &chosen, g_ir.as_ref(), ni, nr, (spi, peer_spi), true, tsi.clone(), tsr.clone())
                .ok_or(bad)?;
            Ok((child, min_nonce(ni, nr)))
        })();
        let (child, ours) = match result {
            Ok(x) => x,
            Err(why) => {
                let retry = self.now + REKEY_RETRY;
                match rekey.and_then(|old| self.child_mut(old).map(|c| (old, c))) {
                    Some((_, c)) if c.peer_rekey.is_some() => {
                        // Collision and the peer already replaced the SA: keep its new one.
                        c.peer_rekey = None;
                        c.state = ChildState::Rekeyed;
                    }
                    Some((old, c)) if why == Failure::PeerError(NotifyType::CHILD_SA_NOT_FOUND) => {
                        // RFC 7296 §2.25: delete it silently and create a new Child SA from
                        // scratch unless one for these selectors still exists. (strongSwan answers
                        // so for an SA it does not have *yet*: one we created as responder of its
                        // own rekey whose response it has not received.)
                        let ts = (c.sa.local_ts().to_vec(), c.sa.remote_ts().to_vec());
                        self.remove_child(old);
                        let covered = self.children.iter().any(|k| {
                            k.state != ChildState::Deleting && k.sa.local_ts() == ts.0 && k.sa.remote_ts() == ts.1
                        });
                        if !covered {
                            self.queue.push_back(Request::CreateChild { rekey: None, ts: Some(ts), group: None });
                        }
                    }
                    Some((_, c)) => {
                        c.state = ChildState::Installed;
                        c.rekey_at = Some(retry);
                    }
                    // A rekey of an SA that is gone meanwhile: nothing to report.
                    None if rekey.is_some() => {}
                    None => self.events.push_back(Event::ChildSaFailed(why)),
                }
                return;
            }
        };
        let new_in = child.inbound_spi();
        if let Some(k) = self.deleted_early.iter().position(|s| *s == child.outbound_spi()) {
            // The peer created and deleted it before our response arrived.
            self.deleted_early.swap_remove(k);
            if let Some(c) = rekey.and_then(|old| self.child_mut(old)) {
                if c.state == ChildState::Rekeying {
                    c.state = if c.peer_rekey.take().is_some() { ChildState::Rekeyed } else { ChildState::Installed };
                }
            }
            return;
        }
        self.install_child(child, rng);
        let Some(old) = rekey else {
            return;
        };
        // The collision record: on the old SA, or kept aside if the old SA is already gone
        // (the peer deleted it: as the winner, or at its hard lifetime).
        let (present, collision) = match self.child_mut(old) {
            Some(c) => (true, c.peer_rekey.take()),
            None => match self.orphaned_rekeys.iter().position(|(s, _, _)| *s == old) {
                Some(k) => {
                    let (_, n, m) = self.orphaned_rekeys.swap_remove(k);
                    (false, Some((n, m)))
                }
                None => (false, None),
            },
        };
        match collision {
            Some((_, theirs)) if ours < theirs => {
                // We lose: delete our new SA; the peer deletes the old one.
                if let Some(c) = self.child_mut(old) {
                    c.state = ChildState::Rekeyed;
                    c.rekey_at = None;
                }
                if let Some(n) = self.child_mut(new_in) {
                    n.state = ChildState::Deleting;
                }
                self.queue.push_front(Request::DeleteChild(new_in));
            }
            Some((peer_new, _)) => {
                // We win: delete the old SA; the peer deletes its new one.
                if present {
                    if let Some(c) = self.child_mut(old) {
                        c.state = ChildState::Deleting;
                    }
                    self.queue.push_front(Request::DeleteChild(old));
                }
                if let Some(n) = self.child_mut(peer_new) {
                    n.state = ChildState::Rekeyed;
                    n.rekey_at = None;
                }
            }
            None if present => {
                if let Some(c) = self.child_mut(old) {
                    c.state = ChildState::Deleting;
                }
                self.queue.push_front(Request::DeleteChild(old));
            }
            None => {}
        }
    }

    fn on_rekey_ike_response<R: CryptoRng + ?Sized>(
        &mut self,
        idx: usize,
        opened: &Opened,
        spi_i: u64,
        dh: DhPrivate,
        ni: &[u8],
        rng: &mut R,
    ) {
        let p = &opened.inner;
        let cand = self.cores.iter().position(|c| matches!(c.role, Role::Candidate { .. }));
        let result = (|| {
            if first_error(p).is_some() {
                return None;
            }
            let (Some(Payload::Sa(sa)), Some(Payload::Nonce(nr)), Some(Payload::Ke(ke))) =
                (find(p, PayloadType::SA), find(p, PayloadType::NONCE), find(p, PayloadType::KE))
            else {
                return None;
            };
            let chosen = match sa.proposals.as_slice() {
                [x] => select_proposal(std::slice::from_ref(x), &self.config.ike_proposals).ok(),
                _ => None,
            }?;
            let spi_r = spi64(&chosen.spi)?;
            if chosen.dh != Some(dh.group()) || ke.dh_group != dh.group().id() {
                return None;
            }
            let g_ir = dh.group().compute_shared(&dh, &ke.data).ok()?;
            let core = self.rekeyed_core(idx, &chosen, &g_ir, ni, nr, (spi_i, spi_r), true)?;
            Some((core, min_nonce(ni, nr)))
        })();
        let old = self.cores[idx].spis();
        let deadline = self.now + self.dying_timeout();
        let dying = |by_us| Role::Dying { by_us, deadline };
        let Some((mut core, ours)) = result else {
            if let Some(ci) = cand {
                // Collision and the peer refused ours: its new SA is the one.
                self.cores[idx].role = dying(false);
                self.cores[ci].role = Role::Current;
                let new = self.cores[ci].spis();
                self.ike_rekeyed(old, new, dh.group(), rng);
            } else {
                self.ike_rekey_at = Some(self.now + REKEY_RETRY);
            }
            return;
        };
        let new = match cand {
            Some(ci) => {
                let theirs = match &self.cores[ci].role {
                    Role::Candidate { min_nonce } => min_nonce.clone(),
                    _ => Vec::new(),
                };
                if ours < theirs {
                    // We lose: we delete our new SA, the peer deletes the old one.
                    core.role = dying(true);
                    self.cores[ci].role = Role::Current;
                    self.cores[idx].role = dying(false);
                    self.cores[ci].spis()
                } else {
                    core.role = Role::Current;
                    self.cores[ci].role = dying(false);
                    self.cores[idx].role = dying(true);
                    core.spis()
                }
            }
            None => {
                core.role = Role::Current;
                self.cores[idx].role = dying(true);
                core.spis()
            }
        };
        self.cores.push(core);
        self.ike_rekeyed(old, new, dh.group(), rng);
    }
}

/// The peer's single-proposal reply, if our configuration accepts it and it answers one of our
/// offered proposals.
fn accept_reply(sa: &SaPayload, specs: &[ProposalSpec], offer: &[Proposal]) -> Option<ChosenProposal> {
    match sa.proposals.as_slice() {
        [reply] => select_proposal(std::slice::from_ref(reply), specs)
            .ok()
            .filter(|c| offer.iter().any(|o| o.number == c.number)),
        _ => None,
    }
}
