//! One IKEv1 ISAKMP SA with one peer (RFC 2409, pre-shared keys), sans-IO.
//!
//! # What it does
//!
//! * Phase 1 in main mode (6 messages) or aggressive mode (3 messages), as initiator
//!   ([`Sa::initiate`]) or responder ([`Sa::respond`]); proposal selection as responder over the
//!   initiator's transforms (AES-CBC-128/192/256, 3DES, DES; MD5, SHA-1, SHA2-256/384/512; DH
//!   groups 1, 2, 5, 14, 24, 19, 20, 21; life type seconds); identities from
//!   [`Config::local_id`] / [`Config::remote_id`] (default: the gateways' addresses).
//! * NAT-T per RFC 3947: the RFC 3947 vendor ID, NAT-D in main mode messages 3/4 and aggressive
//!   mode messages 2/3, floating to the NAT-T port (non-ESP marker: [`Transmit::non_esp_marker`])
//!   from main mode message 5 or aggressive mode message 3 when a NAT is detected, and
//!   UDP-encapsulated tunnel mode (encapsulation mode 3) in quick mode.
//! * Quick mode (3 messages) as initiator (one per pair of [`Config::local_subnets`] ×
//!   [`Config::remote_subnets`], one after the other, started once phase 1 is up when we
//!   initiated phase 1) and as responder, with optional PFS ([`Config::pfs`]); the responder
//!   narrows the proposed subnets to what it has configured. The result is published as
//!   [`Event::ChildSaInstalled`] with the same [`ChildSa`] type as IKEv2.
//! * Lifetimes (life type seconds; variable-length durations above 65535 s): the initiator's
//!   proposal, capped by the responder's configuration. The ISAKMP SA deletes itself at the
//!   end of its lifetime ([`Sa::expires_at`]; [`Sa::reauth_at`] tells the daemon when to
//!   replace it).
//! * IPsec SA lifetimes: SAs whose quick mode we initiated are rekeyed `rekey_margin_percent`
//!   before their lifetime (a new quick mode for the same subnets, then DELETE of the old SA:
//!   make before break; also on demand, [`Sa::rekey_child`]); every SA is deleted at the end of
//!   its lifetime. A peer's rekey is a new quick mode we answer, followed by its DELETE.
//! * INFORMATIONAL exchanges protected by HASH(1): DELETE for phase 2 and phase 1 (sent by
//!   [`Sa::close`] / [`Sa::delete_child`], acted upon when received); DPD (RFC 3706): the DPD
//!   vendor ID, R-U-THERE answered with R-U-THERE-ACK, our own R-U-THERE after
//!   [`Config::dpd_interval`] of inbound silence (authenticated messages, or ESP reported with
//!   [`Sa::note_inbound_traffic`]), [`Event::PeerDead`] after [`Config::dpd_timeout`].
//! * Retransmission with exponential back-off and give-up ([`Event::Failed`] /
//!   [`Event::ChildSaFailed`] with [`Failure::Timeout`]); a retransmitted message from the peer
//!   is answered by resending our last reply to it, byte for byte. A responder gives up on an
//!   unfinished phase 1 after [`Config::half_open_timeout`].
//!
//! # Not yet
//!
//! Phase-1 reauthentication inside the SA (IKEv1 has no in-place rekey: the daemon starts a
//! new SA at [`Sa::reauth_at`]; this one closes itself at [`Sa::expires_at`]), RESPONDER-LIFETIME
//! (a responder uses the smaller of the proposed and its own lifetime without telling),
//! kilobyte lifetimes, INITIAL-CONTACT handling (ignored), NAT
//! keepalives, pre-RFC NAT-T drafts, commit bit, XAUTH/mode config, certificates, AH, IPComp,
//! transport mode, several subnets or ranges in one quick mode, choosing the configuration by
//! the peer's ID, and a dispatcher routing datagrams by cookie (the daemon's job, see
//! [`crate::v1`]).
//!
//! Failures carry the ISAKMP notify number in [`crate::message::NotifyType`] (the values that
//! matter, 14 NO-PROPOSAL-CHOSEN and 24 AUTHENTICATION-FAILED, coincide with IKEv2's).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::CryptoRng;

use super::keys::{HashAlg, Phase1Input, Phase1Keys};
use super::message::{
    emit_chain, protocol, AttrValue, Attribute, Body, Delete, ExchangeType, Header, IdPayload, Message, Notification,
    NotifyType, Payload, Proposal, SaPayload, Subnet, Transform, DOI_IPSEC, FLAG_ENCRYPTION, SIT_IDENTITY_ONLY,
};
use crate::crypto::dh::{DhGroup, DhPrivate};
use crate::crypto::keys::ChildKeys;
use crate::crypto::SecretBytes;
use crate::ike_sa::{ChildSa, Event, Failure, Transmit, UdpEncap};
use crate::message::{AddressRange, TrafficSelector};
use crate::transforms::{EncrAlg, Esn, IntegAlg};

/// MD5("RFC 3947"): the NAT-T vendor ID.
pub const VID_NATT_RFC3947: [u8; 16] =
    [0x4a, 0x13, 0x1c, 0x81, 0x07, 0x03, 0x58, 0x45, 0x5c, 0x57, 0x28, 0xf2, 0x0e, 0x95, 0x45, 0x2f];
/// The DPD vendor ID (RFC 3706 §4.1), version 1.0.
pub const VID_DPD: [u8; 16] =
    [0xaf, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96, 0xfc, 0x77, 0x57, 0x01, 0x00];

const NONCE_LEN: usize = 32;

/// After aggressive mode as initiator our last message (HASH_I) and the first quick mode would
/// leave back to back, and a multi-threaded peer may process the quick mode first and drop it
/// ("phase 1 incomplete": strongSwan does), costing a retransmission interval. Wait this long.
const QUICK_AFTER_AGGRESSIVE: Duration = Duration::from_millis(100);

/// Phase-1 attribute types (RFC 2409 Appendix A).
mod p1attr {
    pub const ENCR: u16 = 1;
    pub const HASH: u16 = 2;
    pub const AUTH: u16 = 3;
    pub const GROUP: u16 = 4;
    pub const LIFE_TYPE: u16 = 11;
    pub const LIFE_DURATION: u16 = 12;
    pub const KEY_LENGTH: u16 = 14;
    pub const AUTH_PSK: u64 = 1;
    pub const ENCR_DES: u64 = 1;
    pub const ENCR_3DES: u64 = 5;
    pub const ENCR_AES: u64 = 7;
    pub const KEY_IKE: u8 = 1;
}

/// Phase-2 attribute types (RFC 2407 §4.5, RFC 3947 §5.3).
mod p2attr {
    pub const LIFE_TYPE: u16 = 1;
    pub const LIFE_DURATION: u16 = 2;
    pub const GROUP: u16 = 3;
    pub const ENCAP: u16 = 4;
    pub const AUTH: u16 = 5;
    pub const KEY_LENGTH: u16 = 6;
    pub const ENCAP_TUNNEL: u64 = 1;
    pub const ENCAP_UDP_TUNNEL: u64 = 3;
    pub const ENCAP_UDP_TUNNEL_DRAFT: u64 = 61443;
}

/// Phase-1 mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Main mode (identity protection), 6 messages.
    Main,
    /// Aggressive mode, 3 messages; identities in the clear and one DH group only.
    Aggressive,
}

/// One phase-1 transform: cipher, hash and DH group (authentication is always PSK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase1Proposal {
    /// Cipher (CBC only).
    pub encr: EncrAlg,
    /// Hash (and prf).
    pub hash: HashAlg,
    /// DH group.
    pub group: DhGroup,
}

/// One ESP transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspProposal {
    /// Cipher (CBC or AES-GCM-16).
    pub encr: EncrAlg,
    /// Integrity (`None` with GCM).
    pub integ: Option<IntegAlg>,
}

/// Configuration of one IKEv1 connection. `Debug` never shows the PSK.
#[derive(Clone, Debug)]
pub struct Config {
    /// Main or aggressive mode (as initiator; a responder follows the initiator's exchange type
    /// only if it equals this).
    pub mode: Mode,
    /// Acceptable phase-1 transforms, our offer in this order. In aggressive mode every one must
    /// use the first one's DH group.
    pub ike_proposals: Vec<Phase1Proposal>,
    /// ISAKMP SA lifetime (proposed; not enforced yet).
    pub ike_lifetime: Duration,
    /// Acceptable ESP transforms, our offer in this order.
    pub esp_proposals: Vec<EspProposal>,
    /// PFS group for quick mode (`None`: no PFS).
    pub pfs: Option<DhGroup>,
    /// IPsec SA lifetime (proposed and reported in [`ChildSa::lifetime`]).
    pub child_lifetime: Duration,
    /// The pre-shared key.
    pub psk: SecretBytes,
    /// Our phase-1 identity; `None`: our address.
    pub local_id: Option<IdPayload>,
    /// The peer's phase-1 identity; `None`: its address.
    pub remote_id: Option<IdPayload>,
    /// Our subnets.
    pub local_subnets: Vec<Subnet>,
    /// The peer's subnets.
    pub remote_subnets: Vec<Subnet>,
    /// RFC 3947 NAT traversal.
    pub nat_traversal: bool,
    /// The NAT-T port we float to.
    pub natt_port: u16,
    /// First retransmission interval (doubled each time).
    pub retransmit_initial: Duration,
    /// Retransmissions before giving up.
    pub retransmit_max: u32,
    /// Cap of the retransmission interval.
    pub retransmit_max_interval: Duration,
    /// A responder gives up on a phase 1 not completed this long after its message 1.
    pub half_open_timeout: Duration,
    /// IPsec SAs we initiated are rekeyed this many percent before the end of their lifetime.
    pub rekey_margin_percent: u8,
    /// Send a DPD R-U-THERE after this much inbound silence (`None`: DPD off; we still answer).
    pub dpd_interval: Option<Duration>,
    /// Declare the peer dead when no R-U-THERE-ACK arrives within this time.
    pub dpd_timeout: Duration,
}

impl Config {
    /// Main mode, AES-128-CBC/SHA-256/MODP-2048 and AES-256-CBC/SHA-1/MODP-2048, ESP
    /// AES-128-CBC/HMAC-SHA-256-128, no PFS, lifetimes 8 h / 1 h, NAT-T on; set the subnets.
    #[must_use]
    pub fn new(psk: &[u8]) -> Self {
        Config {
            mode: Mode::Main,
            ike_proposals: vec![
                Phase1Proposal { encr: EncrAlg::AES128_CBC, hash: HashAlg::Sha256, group: DhGroup::Modp2048 },
                Phase1Proposal { encr: EncrAlg::AES256_CBC, hash: HashAlg::Sha1, group: DhGroup::Modp2048 },
            ],
            ike_lifetime: Duration::from_secs(8 * 3600),
            esp_proposals: vec![EspProposal { encr: EncrAlg::AES128_CBC, integ: Some(IntegAlg::HmacSha256_128) }],
            pfs: None,
            child_lifetime: Duration::from_secs(3600),
            psk: SecretBytes::from_slice(psk),
            local_id: None,
            remote_id: None,
            local_subnets: Vec::new(),
            remote_subnets: Vec::new(),
            nat_traversal: true,
            natt_port: crate::config::NATT_PORT,
            retransmit_initial: Duration::from_millis(500),
            retransmit_max: 5,
            retransmit_max_interval: Duration::from_secs(30),
            half_open_timeout: Duration::from_secs(30),
            rekey_margin_percent: 10,
            dpd_interval: Some(Duration::from_secs(30)),
            dpd_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum P1 {
    MainExpect2,
    MainExpect4,
    MainExpect6,
    MainExpect1,
    MainExpect3,
    MainExpect5,
    AggrExpect2,
    AggrExpect1,
    AggrExpect3,
    Established,
    Dead,
}

struct Pending {
    t: Transmit,
    next: Instant,
    interval: Duration,
    sent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QmState {
    ExpectReply,
    ExpectFinal,
}

/// A quick mode to start.
#[derive(Clone, Copy, Debug)]
struct Planned {
    local: Subnet,
    remote: Subnet,
    /// Our inbound SPI of the IPsec SA this one replaces (rekey).
    replaces: Option<u32>,
}

/// An installed IPsec SA and its timers.
struct Installed {
    sa: ChildSa,
    local: Subnet,
    remote: Subnet,
    /// When we rekey it (only SAs whose quick mode we initiated).
    rekey_at: Option<Instant>,
    /// When it is deleted if not replaced before.
    expire_at: Instant,
    rekeying: bool,
}

struct Quick {
    mid: u32,
    replaces: Option<u32>,
    initiator: bool,
    state: QmState,
    iv: Vec<u8>,
    spi_in: u32,
    ni: Vec<u8>,
    /// Responder nonce (responder side, for HASH(3)).
    nr: Vec<u8>,
    dh: Option<DhPrivate>,
    local: Subnet,
    remote: Subnet,
    offered: Vec<EspProposal>,
    /// Responder: what was chosen and computed, installed at message 3.
    ready: Option<ChildSa>,
    pending: Option<Pending>,
}

/// One IKEv1 SA. Drive it with [`Sa::handle`] and [`Sa::handle_timeout`]; pull
/// [`Sa::poll_transmit`], [`Sa::poll_event`], [`Sa::poll_timeout`].
pub struct Sa {
    config: Config,
    initiator: bool,
    state: P1,
    now: Instant,
    created: Instant,
    local: SocketAddr,
    remote: SocketAddr,
    cookie_i: u64,
    cookie_r: u64,
    sai_b: Vec<u8>,
    /// Initiator: the SA payload we offered.
    offer: Option<SaPayload>,
    chosen: Option<Phase1Proposal>,
    dh: Option<DhPrivate>,
    g_xi: Vec<u8>,
    g_xr: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    keys: Option<Phase1Keys>,
    iv: Vec<u8>,
    peer_natt: bool,
    nat_local: bool,
    nat_remote: bool,
    quick: Vec<Quick>,
    queued: VecDeque<Planned>,
    children: Vec<Installed>,
    pending: Option<Pending>,
    replies: VecDeque<(Vec<u8>, Transmit)>,
    dpd_seq: u32,
    dpd_acked: Option<u32>,
    /// Last authenticated inbound message (or traffic reported by the daemon).
    last_inbound: Instant,
    /// An unanswered R-U-THERE: (first sent, when to send another).
    dpd_probe: Option<(Instant, Instant)>,
    /// No quick mode of ours starts before this (see [`QUICK_AFTER_AGGRESSIVE`]).
    quick_hold: Option<Instant>,
    /// Negotiated ISAKMP SA lifetime.
    p1_lifetime: Duration,
    /// When phase 1 completed.
    established_at: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl core::fmt::Debug for Sa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sa")
            .field("initiator", &self.initiator)
            .field("state", &self.state)
            .field("cookie_i", &format_args!("{:016x}", self.cookie_i))
            .field("cookie_r", &format_args!("{:016x}", self.cookie_r))
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

fn nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rng.fill_bytes(&mut n);
    n
}

fn duration_attr(kind: u16, d: Duration) -> Attribute {
    let s = d.as_secs().clamp(1, u64::from(u32::MAX));
    match u16::try_from(s) {
        Ok(v) => Attribute::basic(kind, v),
        Err(_) => {
            Attribute { kind, value: AttrValue::Variable(u32::try_from(s).unwrap_or(u32::MAX).to_be_bytes().to_vec()) }
        }
    }
}

fn encode_p1(p: &Phase1Proposal, number: u8, lifetime: Duration) -> Transform {
    let mut a = Vec::new();
    match p.encr {
        EncrAlg::Des => a.push(Attribute::basic(p1attr::ENCR, 1)),
        EncrAlg::TripleDes => a.push(Attribute::basic(p1attr::ENCR, 5)),
        EncrAlg::AesCbc { key_bits } | EncrAlg::AesGcm16 { key_bits } => {
            a.push(Attribute::basic(p1attr::ENCR, 7));
            a.push(Attribute::basic(p1attr::KEY_LENGTH, key_bits));
        }
    }
    a.push(Attribute::basic(p1attr::HASH, p.hash.id()));
    a.push(Attribute::basic(p1attr::AUTH, 1));
    a.push(Attribute::basic(p1attr::GROUP, p.group.id()));
    a.push(Attribute::basic(p1attr::LIFE_TYPE, 1));
    a.push(duration_attr(p1attr::LIFE_DURATION, lifetime));
    Transform { number, id: p1attr::KEY_IKE, attributes: a }
}

fn decode_p1(t: &Transform) -> Option<Phase1Proposal> {
    if t.id != p1attr::KEY_IKE || t.attr(p1attr::AUTH)? != p1attr::AUTH_PSK {
        return None;
    }
    let bits = t.attr(p1attr::KEY_LENGTH).and_then(|b| u16::try_from(b).ok());
    let encr = match (t.attr(p1attr::ENCR)?, bits) {
        (p1attr::ENCR_DES, None) => EncrAlg::Des,
        (p1attr::ENCR_3DES, None) => EncrAlg::TripleDes,
        (p1attr::ENCR_AES, Some(b @ (128 | 192 | 256))) => EncrAlg::AesCbc { key_bits: b },
        _ => return None,
    };
    let hash = HashAlg::from_id(t.attr(p1attr::HASH)?)?;
    let group = DhGroup::from_id(u16::try_from(t.attr(p1attr::GROUP)?).ok()?)?;
    if group == DhGroup::Curve25519 {
        return None;
    }
    Some(Phase1Proposal { encr, hash, group })
}

/// The lifetime in seconds a transform proposes (life type seconds), if any. Kilobyte
/// lifetimes are ignored.
fn proposed_lifetime(t: &Transform, life_type: u16, duration: u16) -> Option<Duration> {
    let mut seconds = None;
    let mut kind = None;
    for a in &t.attributes {
        if a.kind == life_type {
            kind = a.as_u64();
        } else if a.kind == duration && kind == Some(1) {
            seconds = a.as_u64();
        }
    }
    seconds.filter(|s| *s > 0).map(Duration::from_secs)
}

fn integ_id(i: IntegAlg) -> u16 {
    match i {
        IntegAlg::HmacMd5_96 => 1,
        IntegAlg::HmacSha1_96 => 2,
        IntegAlg::HmacSha256_128 => 5,
        IntegAlg::HmacSha384_192 => 6,
        IntegAlg::HmacSha512_256 => 7,
    }
}

fn integ_from(id: u64) -> Option<IntegAlg> {
    Some(match id {
        1 => IntegAlg::HmacMd5_96,
        2 => IntegAlg::HmacSha1_96,
        5 => IntegAlg::HmacSha256_128,
        6 => IntegAlg::HmacSha384_192,
        7 => IntegAlg::HmacSha512_256,
        _ => return None,
    })
}

fn encode_esp(p: &EspProposal, number: u8, lifetime: Duration, pfs: Option<DhGroup>, encap: u64) -> Transform {
    let mut a = vec![Attribute::basic(p2attr::LIFE_TYPE, 1), duration_attr(p2attr::LIFE_DURATION, lifetime)];
    if let Some(g) = pfs {
        a.push(Attribute::basic(p2attr::GROUP, g.id()));
    }
    a.push(Attribute::basic(p2attr::ENCAP, u16::try_from(encap).unwrap_or(1)));
    if let Some(i) = p.integ {
        a.push(Attribute::basic(p2attr::AUTH, integ_id(i)));
    }
    if let Some(b) = p.encr.key_length_attr() {
        a.push(Attribute::basic(p2attr::KEY_LENGTH, b));
    }
    Transform { number, id: u8::try_from(p.encr.id()).unwrap_or(0), attributes: a }
}

fn decode_esp(t: &Transform) -> Option<(EspProposal, Option<DhGroup>, u64)> {
    let bits = t.attr(p2attr::KEY_LENGTH).and_then(|b| u16::try_from(b).ok());
    let encr = match (t.id, bits) {
        (2, None) => EncrAlg::Des,
        (3, None) => EncrAlg::TripleDes,
        (12, Some(b @ (128 | 192 | 256))) => EncrAlg::AesCbc { key_bits: b },
        (20, Some(b @ (128 | 192 | 256))) => EncrAlg::AesGcm16 { key_bits: b },
        _ => return None,
    };
    let integ = match t.attr(p2attr::AUTH) {
        Some(a) => Some(integ_from(a)?),
        None => None,
    };
    if encr.is_aead() != integ.is_none() {
        return None;
    }
    let group = match t.attr(p2attr::GROUP) {
        Some(g) => Some(DhGroup::from_id(u16::try_from(g).ok()?)?),
        None => None,
    };
    Some((EspProposal { encr, integ }, group, t.attr(p2attr::ENCAP).unwrap_or(p2attr::ENCAP_TUNNEL)))
}

pub(crate) fn subnet_ts(s: Subnet) -> TrafficSelector {
    let range = match s.addr {
        IpAddr::V4(a) => {
            let host = if s.prefix >= 32 { 0 } else { u32::MAX >> s.prefix };
            AddressRange::V4 { start: a, end: (u32::from(a) | host).into() }
        }
        IpAddr::V6(a) => {
            let host = if s.prefix >= 128 { 0 } else { u128::MAX >> s.prefix };
            AddressRange::V6 { start: a, end: (u128::from(a) | host).into() }
        }
    };
    TrafficSelector { ip_protocol: 0, start_port: 0, end_port: 0xffff, range }
}

/// The narrower of two nested subnets, `None` if disjoint.
fn narrow(a: Subnet, b: Subnet) -> Option<Subnet> {
    if a.contains(&b) {
        Some(b)
    } else if b.contains(&a) {
        Some(a)
    } else {
        None
    }
}

fn payload_ke(p: &[Payload]) -> Option<&Vec<u8>> {
    p.iter().find_map(|x| if let Payload::Ke(v) = x { Some(v) } else { None })
}

fn payload_nonce(p: &[Payload]) -> Option<&Vec<u8>> {
    p.iter().find_map(|x| if let Payload::Nonce(v) = x { Some(v) } else { None })
}

fn payload_hash(p: &[Payload]) -> Option<&Vec<u8>> {
    p.iter().find_map(|x| if let Payload::Hash(v) = x { Some(v) } else { None })
}

fn payload_id(p: &[Payload]) -> Option<&IdPayload> {
    p.iter().find_map(|x| if let Payload::Id(v) = x { Some(v) } else { None })
}

fn payload_sa(p: &[Payload]) -> Option<&SaPayload> {
    p.iter().find_map(|x| if let Payload::Sa(v) = x { Some(v) } else { None })
}

fn valid_nonce(n: &[u8]) -> bool {
    (8..=256).contains(&n.len())
}

impl Sa {
    /// Starts phase 1 as initiator from `local` to `remote` (port 500): queues message 1.
    pub fn initiate<R: CryptoRng + ?Sized>(
        config: Config,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &mut R,
    ) -> Self {
        let mut sa = Sa::new(config, true, local, remote, now);
        sa.cookie_i = nonzero_u64(rng);
        for l in &sa.config.local_subnets {
            for r in &sa.config.remote_subnets {
                sa.queued.push_back(Planned { local: *l, remote: *r, replaces: None });
            }
        }
        let Some(first) = sa.config.ike_proposals.first().copied() else {
            sa.fail(Failure::LocalError(crate::message::NotifyType::NO_PROPOSAL_CHOSEN));
            return sa;
        };
        let transforms: Vec<Transform> = sa
            .config
            .ike_proposals
            .iter()
            .filter(|p| sa.config.mode == Mode::Main || p.group == first.group)
            .zip(1u8..)
            .map(|(p, n)| encode_p1(p, n, sa.config.ike_lifetime))
            .collect();
        let offer = SaPayload {
            situation: SIT_IDENTITY_ONLY,
            proposals: vec![Proposal { number: 1, protocol: protocol::ISAKMP, spi: vec![], transforms }],
        };
        sa.offer = Some(offer.clone());
        let sa_payload = Payload::Sa(offer);
        sa.sai_b = sa_payload.body().unwrap_or_default();
        let mut payloads = vec![sa_payload];
        let exchange = match sa.config.mode {
            Mode::Main => {
                sa.state = P1::MainExpect2;
                ExchangeType::MAIN
            }
            Mode::Aggressive => {
                let (dh, g_xi) = first.group.generate(rng);
                sa.dh = Some(dh);
                sa.g_xi = g_xi.clone();
                sa.ni = nonce(rng);
                payloads.push(Payload::Ke(g_xi));
                payloads.push(Payload::Nonce(sa.ni.clone()));
                payloads.push(Payload::Id(sa.local_identity()));
                sa.state = P1::AggrExpect2;
                ExchangeType::AGGRESSIVE
            }
        };
        payloads.extend(sa.vendor_ids());
        let h = Header::new(sa.cookie_i, 0, exchange, 0, 0);
        if let Ok(bytes) = (Message { header: h, body: Body::Plain(payloads) }).emit() {
            sa.send_request(bytes);
        }
        sa
    }

    /// A responder for a phase-1 message 1 that arrived at `local` from `remote`; pass that
    /// message to [`Sa::handle`] next.
    #[must_use]
    pub fn respond(config: Config, local: SocketAddr, remote: SocketAddr, now: Instant) -> Self {
        let mode = config.mode;
        let mut sa = Sa::new(config, false, local, remote, now);
        sa.state = match mode {
            Mode::Main => P1::MainExpect1,
            Mode::Aggressive => P1::AggrExpect1,
        };
        sa
    }

    fn new(config: Config, initiator: bool, local: SocketAddr, remote: SocketAddr, now: Instant) -> Self {
        Sa {
            config,
            initiator,
            state: P1::Dead,
            now,
            created: now,
            local,
            remote,
            cookie_i: 0,
            cookie_r: 0,
            sai_b: Vec::new(),
            offer: None,
            chosen: None,
            dh: None,
            g_xi: Vec::new(),
            g_xr: Vec::new(),
            ni: Vec::new(),
            nr: Vec::new(),
            keys: None,
            iv: Vec::new(),
            peer_natt: false,
            nat_local: false,
            nat_remote: false,
            quick: Vec::new(),
            queued: VecDeque::new(),
            children: Vec::new(),
            pending: None,
            replies: VecDeque::new(),
            dpd_seq: 0,
            dpd_acked: None,
            last_inbound: now,
            dpd_probe: None,
            quick_hold: None,
            p1_lifetime: Duration::ZERO,
            established_at: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ------------------------------------------------------------------------------------------
    // Accessors

    /// (initiator cookie, responder cookie); the responder cookie is 0 until known.
    #[must_use]
    pub fn cookies(&self) -> (u64, u64) {
        (self.cookie_i, self.cookie_r)
    }

    /// Whether phase 1 is established.
    #[must_use]
    pub fn is_established(&self) -> bool {
        self.state == P1::Established
    }

    /// Whether nothing more will happen (failed, deleted).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.state == P1::Dead
    }

    /// The phase-1 keys, once derived.
    #[must_use]
    pub fn keys(&self) -> Option<&Phase1Keys> {
        self.keys.as_ref()
    }

    /// The negotiated phase-1 transform.
    #[must_use]
    pub fn phase1_proposal(&self) -> Option<Phase1Proposal> {
        self.chosen
    }

    /// (we are behind a NAT, the peer is behind a NAT), from the NAT-D payloads.
    #[must_use]
    pub fn nat_detected(&self) -> (bool, bool) {
        (self.nat_local, self.nat_remote)
    }

    /// Our current address (port 500 or the NAT-T port).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's current address.
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The installed IPsec SAs.
    pub fn child_sas(&self) -> impl Iterator<Item = &ChildSa> {
        self.children.iter().map(|c| &c.sa)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Sa::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        let half_open =
            (!self.initiator && self.state != P1::Established).then(|| self.created + self.config.half_open_timeout);
        let child_timers =
            self.children.iter().flat_map(|c| [Some(c.expire_at), c.rekey_at.filter(|_| !c.rekeying)]).flatten();
        self.pending
            .iter()
            .chain(self.quick.iter().filter_map(|q| q.pending.as_ref()))
            .map(|p| p.next)
            .chain(half_open)
            .chain(child_timers)
            .chain(self.dpd_timer())
            .chain(self.expires_at())
            .chain(self.quick_hold.filter(|_| !self.queued.is_empty()))
            .min()
    }

    // ------------------------------------------------------------------------------------------
    // Output helpers

    fn encap(&self) -> Option<UdpEncap> {
        (self.nat_local || self.nat_remote)
            .then_some(UdpEncap { local_port: self.local.port(), remote_port: self.remote.port() })
    }

    fn transmit(&self, payload: Vec<u8>) -> Transmit {
        Transmit {
            local: self.local,
            remote: self.remote,
            payload,
            non_esp_marker: self.config.nat_traversal && self.local.port() == self.config.natt_port,
        }
    }

    fn new_pending(&self, t: Transmit) -> Pending {
        Pending {
            t,
            next: self.now + self.config.retransmit_initial,
            interval: self.config.retransmit_initial,
            sent: 0,
        }
    }

    fn send_request(&mut self, bytes: Vec<u8>) {
        let t = self.transmit(bytes);
        self.pending = Some(self.new_pending(t.clone()));
        self.transmits.push_back(t);
    }

    /// Sends `bytes` as the answer to `received` (resent if `received` comes again).
    fn send_reply(&mut self, received: &[u8], bytes: Vec<u8>) -> Transmit {
        let t = self.transmit(bytes);
        self.replies.push_back((received.to_vec(), t.clone()));
        while self.replies.len() > 8 {
            self.replies.pop_front();
        }
        self.transmits.push_back(t.clone());
        t
    }

    fn fail(&mut self, f: Failure) {
        if self.state == P1::Dead {
            return;
        }
        for c in self.children.drain(..) {
            self.events.push_back(Event::ChildSaDeleted { spi_in: c.sa.inbound_spi(), spi_out: c.sa.outbound_spi() });
        }
        self.state = P1::Dead;
        self.pending = None;
        self.quick.clear();
        self.events.push_back(Event::Failed(f));
    }

    fn vendor_ids(&self) -> Vec<Payload> {
        let mut v = vec![Payload::VendorId(VID_DPD.to_vec())];
        if self.config.nat_traversal {
            v.push(Payload::VendorId(VID_NATT_RFC3947.to_vec()));
        }
        v
    }

    fn local_identity(&self) -> IdPayload {
        self.config.local_id.clone().unwrap_or_else(|| IdPayload::address(self.local.ip()))
    }

    fn remote_identity_ok(&self, id: &IdPayload) -> bool {
        let want = self.config.remote_id.clone().unwrap_or_else(|| IdPayload::address(self.remote.ip()));
        want.id_type == id.id_type && want.data == id.data
    }

    fn nat_hash(&self, hash: HashAlg, addr: SocketAddr) -> Vec<u8> {
        let ip = match addr.ip() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        hash.digest(&[&self.cookie_i.to_be_bytes(), &self.cookie_r.to_be_bytes(), &ip, &addr.port().to_be_bytes()])
    }

    /// NAT-D payloads to send: the peer's address first, then ours.
    fn natd_payloads(&self, hash: HashAlg) -> Vec<Payload> {
        if !(self.config.nat_traversal && self.peer_natt) {
            return Vec::new();
        }
        vec![Payload::NatD(self.nat_hash(hash, self.remote)), Payload::NatD(self.nat_hash(hash, self.local))]
    }

    fn process_natd(&mut self, hash: HashAlg, payloads: &[Payload]) {
        let hashes: Vec<&Vec<u8>> = payloads
            .iter()
            .filter_map(|p| match p {
                Payload::NatD(h) => Some(h),
                _ => None,
            })
            .collect();
        if !(self.config.nat_traversal && self.peer_natt) || hashes.len() < 2 {
            return;
        }
        self.nat_local = *hashes[0] != self.nat_hash(hash, self.local);
        let theirs = self.nat_hash(hash, self.remote);
        self.nat_remote = !hashes[1..].iter().any(|h| **h == theirs);
    }

    fn float(&mut self) {
        if self.config.nat_traversal && self.peer_natt && (self.nat_local || self.nat_remote) {
            self.local.set_port(self.config.natt_port);
            self.remote.set_port(self.config.natt_port);
        }
    }

    fn input(&self) -> Phase1Input<'_> {
        Phase1Input {
            ni: &self.ni,
            nr: &self.nr,
            g_xy: &[],
            g_xi: &self.g_xi,
            g_xr: &self.g_xr,
            cky_i: self.cookie_i,
            cky_r: self.cookie_r,
        }
    }

    /// Computes g^xy and the phase-1 keys from the peer's public value.
    fn derive(&mut self, peer_public: &[u8]) -> bool {
        let (Some(dh), Some(p)) = (self.dh.as_ref(), self.chosen) else {
            return false;
        };
        let Ok(g_xy) = p.group.compute_shared(dh, peer_public) else {
            return false;
        };
        let mut i = self.input();
        i.g_xy = g_xy.expose();
        match Phase1Keys::derive_psk(p.hash, p.encr, self.config.psk.expose(), &i) {
            Ok(k) => {
                self.iv = k.iv.clone();
                self.keys = Some(k);
                self.dh = None;
                true
            }
            Err(_) => false,
        }
    }

    fn hash_i(&self, idii_b: &[u8]) -> Option<SecretBytes> {
        Some(self.keys.as_ref()?.hash_i(&self.input(), &self.sai_b, idii_b))
    }

    fn hash_r(&self, idir_b: &[u8]) -> Option<SecretBytes> {
        Some(self.keys.as_ref()?.hash_r(&self.input(), &self.sai_b, idir_b))
    }

    /// Phase 1 is complete; the phase-1 initiator then starts its quick modes
    /// ([`Sa::start_next_quick`], called by the caller, which has the RNG).
    fn established(&mut self) {
        self.established_at = Some(self.now);
        self.last_inbound = self.now;
        self.state = P1::Established;
        self.pending = None;
        self.events.push_back(Event::IkeSaEstablished {
            spi_i: self.cookie_i,
            spi_r: self.cookie_r,
            local: self.local,
            remote: self.remote,
        });
        if self.initiator && self.config.mode == Mode::Aggressive {
            self.quick_hold = Some(self.now + QUICK_AFTER_AGGRESSIVE);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Input

    /// Processes one ISAKMP message (non-ESP marker already stripped) received at `local` from
    /// `remote`. Malformed, unauthenticated or unexpected messages are dropped.
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
        if let Some((_, t)) = self.replies.iter().find(|(r, _)| r == msg) {
            let t = t.clone();
            self.transmits.push_back(t);
            return;
        }
        let Ok(m) = Message::parse(msg) else {
            return;
        };
        let h = m.header;
        if self.cookie_i != 0 && h.cookie_i != self.cookie_i {
            return;
        }
        if self.cookie_r != 0 && h.cookie_r != self.cookie_r {
            return;
        }
        match (h.exchange, self.state) {
            (ExchangeType::MAIN, P1::MainExpect1) if h.message_id == 0 => self.main_r1(local, remote, msg, &m, rng),
            (ExchangeType::MAIN, P1::MainExpect2) if h.message_id == 0 => self.main_i2(&m, rng),
            (ExchangeType::MAIN, P1::MainExpect3) if h.message_id == 0 => self.main_r3(msg, &m, rng),
            (ExchangeType::MAIN, P1::MainExpect4) if h.message_id == 0 => self.main_i4(&m),
            (ExchangeType::MAIN, P1::MainExpect5) if h.message_id == 0 => self.main_r5(local, remote, msg, &h, rng),
            (ExchangeType::MAIN, P1::MainExpect6) if h.message_id == 0 => self.main_i6(msg, &h, rng),
            (ExchangeType::AGGRESSIVE, P1::AggrExpect1) if h.message_id == 0 => {
                self.aggr_r1(local, remote, msg, &m, rng);
            }
            (ExchangeType::AGGRESSIVE, P1::AggrExpect2) if h.message_id == 0 => self.aggr_i2(msg, &m, rng),
            (ExchangeType::AGGRESSIVE, P1::AggrExpect3) if h.message_id == 0 => {
                self.aggr_r3(local, remote, msg, &m, rng);
            }
            (ExchangeType::QUICK, P1::Established) if h.message_id != 0 => self.quick_in(msg, &h, rng),
            (ExchangeType::INFORMATIONAL, _) => self.informational_in(msg, &m, rng),
            _ => {}
        }
    }

    fn plain(m: &Message) -> Option<&[Payload]> {
        match &m.body {
            Body::Plain(p) => Some(p),
            Body::Encrypted(_) => None,
        }
    }

    fn select_p1(&self, sa: &SaPayload) -> Option<(Proposal, Phase1Proposal)> {
        for p in &sa.proposals {
            if p.protocol != protocol::ISAKMP {
                continue;
            }
            for t in &p.transforms {
                if let Some(d) = decode_p1(t) {
                    if self.config.ike_proposals.contains(&d) {
                        let chosen = Proposal {
                            number: p.number,
                            protocol: p.protocol,
                            spi: p.spi.clone(),
                            transforms: vec![t.clone()],
                        };
                        return Some((chosen, d));
                    }
                }
            }
        }
        None
    }

    fn accept_p1(&self, ours: &SaPayload, theirs: &SaPayload) -> Option<Phase1Proposal> {
        let t = theirs.proposals.first()?.transforms.first()?;
        let d = decode_p1(t)?;
        ours.proposals.first()?.transforms.iter().any(|o| decode_p1(o) == Some(d)).then_some(d)
    }

    /// The ISAKMP SA lifetime: what the chosen transform says, at most ours.
    fn negotiated(&self, t: Option<&Transform>) -> Duration {
        let ours = self.config.ike_lifetime;
        t.and_then(|t| proposed_lifetime(t, p1attr::LIFE_TYPE, p1attr::LIFE_DURATION)).map_or(ours, |l| l.min(ours))
    }

    fn note_vids(&mut self, payloads: &[Payload]) {
        self.peer_natt |= payloads.iter().any(|p| matches!(p, Payload::VendorId(v) if v[..] == VID_NATT_RFC3947));
    }

    fn reject_p1(&mut self, received: &[u8], exchange_kind: NotifyType) {
        let n = Payload::Notification(Notification {
            doi: DOI_IPSEC,
            protocol: protocol::ISAKMP,
            spi: [self.cookie_i.to_be_bytes(), self.cookie_r.to_be_bytes()].concat(),
            kind: exchange_kind,
            data: vec![],
        });
        let h = Header::new(self.cookie_i, self.cookie_r, ExchangeType::INFORMATIONAL, 0, 0);
        if let Ok(b) = (Message { header: h, body: Body::Plain(vec![n]) }).emit() {
            self.send_reply(received, b);
        }
        self.fail(Failure::LocalError(crate::message::NotifyType(exchange_kind.0)));
    }

    /// The responder's part of the first message that both modes share: endpoints, cookies,
    /// vendor IDs, SAi_b, and the proposal chosen with its lifetime (`None`: refused with
    /// NO_PROPOSAL_CHOSEN).
    #[allow(clippy::too_many_arguments)]
    fn accept_offer<R: CryptoRng + ?Sized>(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
        m: &Message,
        p: &[Payload],
        sa: &SaPayload,
        rng: &mut R,
    ) -> Option<(Proposal, Phase1Proposal)> {
        self.local = local;
        self.remote = remote;
        self.cookie_i = m.header.cookie_i;
        self.cookie_r = nonzero_u64(rng);
        self.note_vids(p);
        self.sai_b = Payload::Sa(sa.clone()).body().unwrap_or_default();
        let Some((chosen, d)) = self.select_p1(sa) else {
            self.reject_p1(raw, NotifyType::NO_PROPOSAL_CHOSEN);
            return None;
        };
        self.p1_lifetime = self.negotiated(chosen.transforms.first());
        Some((chosen, d))
    }

    // Main mode, responder

    fn main_r1<R: CryptoRng + ?Sized>(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
        m: &Message,
        rng: &mut R,
    ) {
        let Some(p) = Self::plain(m) else { return };
        let Some(Payload::Sa(sa)) = p.first() else { return };
        let Some((chosen, d)) = self.accept_offer(local, remote, raw, m, p, sa, rng) else { return };
        self.chosen = Some(d);
        let mut out = vec![Payload::Sa(SaPayload { situation: sa.situation, proposals: vec![chosen] })];
        out.extend(self.vendor_ids());
        let h = Header::new(self.cookie_i, self.cookie_r, ExchangeType::MAIN, 0, 0);
        if let Ok(b) = (Message { header: h, body: Body::Plain(out) }).emit() {
            self.send_reply(raw, b);
            self.state = P1::MainExpect3;
        }
    }

    fn main_r3<R: CryptoRng + ?Sized>(&mut self, raw: &[u8], m: &Message, rng: &mut R) {
        let Some(p) = Self::plain(m) else { return };
        let (Some(ke), Some(ni), Some(d)) = (payload_ke(p), payload_nonce(p), self.chosen) else {
            return;
        };
        if !valid_nonce(ni) {
            return;
        }
        let (dh, g_xr) = d.group.generate(rng);
        self.dh = Some(dh);
        self.g_xi = ke.clone();
        self.g_xr = g_xr.clone();
        self.ni = ni.clone();
        self.nr = nonce(rng);
        if !self.derive(&self.g_xi.clone()) {
            self.dh = None;
            return;
        }
        self.process_natd(d.hash, p);
        let mut out = vec![Payload::Ke(g_xr), Payload::Nonce(self.nr.clone())];
        out.extend(self.natd_payloads(d.hash));
        let h = Header::new(self.cookie_i, self.cookie_r, ExchangeType::MAIN, 0, 0);
        if let Ok(b) = (Message { header: h, body: Body::Plain(out) }).emit() {
            self.send_reply(raw, b);
            self.state = P1::MainExpect5;
        }
    }

    fn main_r5<R: CryptoRng + ?Sized>(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
        h: &Header,
        rng: &mut R,
    ) {
        if h.flags & FLAG_ENCRYPTION == 0 {
            return;
        }
        let Some(k) = self.keys.as_ref() else { return };
        let Ok((p, last)) = k.decrypt(h, raw, &self.iv) else { return };
        let (Some(id), Some(hash)) = (payload_id(&p), payload_hash(&p)) else {
            return;
        };
        let idii_b = Payload::Id(id.clone()).body().unwrap_or_default();
        let Some(want) = self.hash_i(&idii_b) else { return };
        if want.expose() != hash.as_slice() {
            // Wrong PSK (or garbage after a wrong IV): RFC 2409 gives no authenticated way to
            // tell the peer; fail quietly.
            return self.fail(Failure::LocalError(crate::message::NotifyType::AUTHENTICATION_FAILED));
        }
        // The peer may have floated to the NAT-T port with this message.
        self.local = local;
        self.remote = remote;
        if !self.remote_identity_ok(id) {
            return self.fail(Failure::LocalError(crate::message::NotifyType::AUTHENTICATION_FAILED));
        }
        self.iv = last;
        let idir = self.local_identity();
        let idir_b = Payload::Id(idir.clone()).body().unwrap_or_default();
        let Some(hr) = self.hash_r(&idir_b) else { return };
        let out = vec![Payload::Id(idir), Payload::Hash(hr.expose().to_vec())];
        let hdr = Header::new(self.cookie_i, self.cookie_r, ExchangeType::MAIN, 0, 0);
        let Some(k) = self.keys.as_ref() else { return };
        if let Ok((b, last)) = k.encrypt(&hdr, &out, &self.iv) {
            self.iv = last;
            self.send_reply(raw, b);
            self.established();
            self.start_next_quick(rng);
        }
    }

    // Main mode, initiator

    fn main_i2<R: CryptoRng + ?Sized>(&mut self, m: &Message, rng: &mut R) {
        let Some(p) = Self::plain(m) else { return };
        if let Some(f) = self.peer_error(p) {
            return self.fail(f);
        }
        let Some(Payload::Sa(theirs)) = p.first() else { return };
        let Some(ours) = self.offer.clone() else { return };
        let Some(d) = self.accept_p1(&ours, theirs) else {
            return self.fail(Failure::LocalError(crate::message::NotifyType::NO_PROPOSAL_CHOSEN));
        };
        self.p1_lifetime = self.negotiated(theirs.proposals.first().and_then(|p| p.transforms.first()));
        self.chosen = Some(d);
        self.cookie_r = m.header.cookie_r;
        self.note_vids(p);
        let (dh, g_xi) = d.group.generate(rng);
        self.dh = Some(dh);
        self.g_xi = g_xi.clone();
        self.ni = nonce(rng);
        let mut out = vec![Payload::Ke(g_xi), Payload::Nonce(self.ni.clone())];
        out.extend(self.natd_payloads(d.hash));
        let h = Header::new(self.cookie_i, self.cookie_r, ExchangeType::MAIN, 0, 0);
        if let Ok(b) = (Message { header: h, body: Body::Plain(out) }).emit() {
            self.send_request(b);
            self.state = P1::MainExpect4;
        }
    }

    fn main_i4(&mut self, m: &Message) {
        let Some(p) = Self::plain(m) else { return };
        let (Some(ke), Some(nr), Some(d)) = (payload_ke(p), payload_nonce(p), self.chosen) else {
            return;
        };
        if !valid_nonce(nr) {
            return;
        }
        self.g_xr = ke.clone();
        self.nr = nr.clone();
        if !self.derive(&self.g_xr.clone()) {
            return;
        }
        self.process_natd(d.hash, p);
        self.float();
        let idii = self.local_identity();
        let idii_b = Payload::Id(idii.clone()).body().unwrap_or_default();
        let Some(hi) = self.hash_i(&idii_b) else { return };
        let out = vec![Payload::Id(idii), Payload::Hash(hi.expose().to_vec())];
        let hdr = Header::new(self.cookie_i, self.cookie_r, ExchangeType::MAIN, 0, 0);
        let Some(k) = self.keys.as_ref() else { return };
        if let Ok((b, last)) = k.encrypt(&hdr, &out, &self.iv) {
            self.iv = last;
            self.send_request(b);
            self.state = P1::MainExpect6;
        }
    }

    fn main_i6<R: CryptoRng + ?Sized>(&mut self, raw: &[u8], h: &Header, rng: &mut R) {
        if h.flags & FLAG_ENCRYPTION == 0 {
            return;
        }
        let Some(k) = self.keys.as_ref() else { return };
        let Ok((p, last)) = k.decrypt(h, raw, &self.iv) else { return };
        let (Some(id), Some(hash)) = (payload_id(&p), payload_hash(&p)) else {
            return;
        };
        let idir_b = Payload::Id(id.clone()).body().unwrap_or_default();
        let Some(want) = self.hash_r(&idir_b) else { return };
        if want.expose() != hash.as_slice() || !self.remote_identity_ok(id) {
            return self.fail(Failure::LocalError(crate::message::NotifyType::AUTHENTICATION_FAILED));
        }
        self.iv = last;
        self.established();
        self.start_next_quick(rng);
    }

    // Aggressive mode

    fn aggr_r1<R: CryptoRng + ?Sized>(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
        m: &Message,
        rng: &mut R,
    ) {
        let Some(p) = Self::plain(m) else { return };
        let (Some(Payload::Sa(sa)), Some(ke), Some(ni), Some(idii)) =
            (p.first(), payload_ke(p), payload_nonce(p), payload_id(p))
        else {
            return;
        };
        if !valid_nonce(ni) {
            return;
        }
        let Some((chosen, d)) = self.accept_offer(local, remote, raw, m, p, sa, rng) else { return };
        if !self.remote_identity_ok(idii) {
            return self.reject_p1(raw, NotifyType::INVALID_ID_INFORMATION);
        }
        self.chosen = Some(d);
        let (dh, g_xr) = d.group.generate(rng);
        self.dh = Some(dh);
        self.g_xi = ke.clone();
        self.g_xr = g_xr.clone();
        self.ni = ni.clone();
        self.nr = nonce(rng);
        if !self.derive(&self.g_xi.clone()) {
            return self.reject_p1(raw, NotifyType::INVALID_KEY_INFORMATION);
        }
        self.process_natd(d.hash, p);
        let idir = self.local_identity();
        let idir_b = Payload::Id(idir.clone()).body().unwrap_or_default();
        let Some(hr) = self.hash_r(&idir_b) else { return };
        let mut out = vec![
            Payload::Sa(SaPayload { situation: sa.situation, proposals: vec![chosen] }),
            Payload::Ke(g_xr),
            Payload::Nonce(self.nr.clone()),
            Payload::Id(idir),
            Payload::Hash(hr.expose().to_vec()),
        ];
        out.extend(self.vendor_ids());
        out.extend(self.natd_payloads(d.hash));
        let h = Header::new(self.cookie_i, self.cookie_r, ExchangeType::AGGRESSIVE, 0, 0);
        if let Ok(b) = (Message { header: h, body: Body::Plain(out) }).emit() {
            // Retransmitted until message 3 arrives (message 3 is not answered).
            let t = self.send_reply(raw, b);
            self.pending = Some(self.new_pending(t));
            self.state = P1::AggrExpect3;
        }
    }

    fn aggr_i2<R: CryptoRng + ?Sized>(&mut self, raw: &[u8], m: &Message, rng: &mut R) {
        let Some(p) = Self::plain(m) else { return };
        if let Some(f) = self.peer_error(p) {
            return self.fail(f);
        }
        let (Some(Payload::Sa(theirs)), Some(ke), Some(nr), Some(idir), Some(hash)) =
            (p.first(), payload_ke(p), payload_nonce(p), payload_id(p), payload_hash(p))
        else {
            return;
        };
        let Some(ours) = self.offer.clone() else { return };
        let Some(d) = self.accept_p1(&ours, theirs) else {
            return self.fail(Failure::LocalError(crate::message::NotifyType::NO_PROPOSAL_CHOSEN));
        };
        self.p1_lifetime = self.negotiated(theirs.proposals.first().and_then(|p| p.transforms.first()));
        if !valid_nonce(nr) {
            return;
        }
        self.chosen = Some(d);
        self.cookie_r = m.header.cookie_r;
        self.note_vids(p);
        self.g_xr = ke.clone();
        self.nr = nr.clone();
        if !self.derive(&self.g_xr.clone()) {
            return self.fail(Failure::LocalError(crate::message::NotifyType::INVALID_KE_PAYLOAD));
        }
        let idir_b = Payload::Id(idir.clone()).body().unwrap_or_default();
        let Some(want) = self.hash_r(&idir_b) else { return };
        if want.expose() != hash.as_slice() || !self.remote_identity_ok(idir) {
            return self.fail(Failure::LocalError(crate::message::NotifyType::AUTHENTICATION_FAILED));
        }
        self.process_natd(d.hash, p);
        self.float();
        let idii_b = Payload::Id(self.local_identity()).body().unwrap_or_default();
        let Some(hi) = self.hash_i(&idii_b) else { return };
        let mut out = vec![Payload::Hash(hi.expose().to_vec())];
        out.extend(self.natd_payloads(d.hash));
        let h = Header::new(self.cookie_i, self.cookie_r, ExchangeType::AGGRESSIVE, 0, 0);
        if let Ok(b) = (Message { header: h, body: Body::Plain(out) }).emit() {
            self.pending = None;
            self.send_reply(raw, b);
            self.established();
            self.start_next_quick(rng);
        }
    }

    fn aggr_r3<R: CryptoRng + ?Sized>(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
        m: &Message,
        rng: &mut R,
    ) {
        let payloads = match &m.body {
            Body::Plain(p) => p.clone(),
            Body::Encrypted(_) => {
                let Some(k) = self.keys.as_ref() else { return };
                let Ok((p, last)) = k.decrypt(&m.header, raw, &self.iv) else { return };
                self.iv = last;
                p
            }
        };
        let Some(hash) = payload_hash(&payloads) else {
            return;
        };
        let Some(d) = self.chosen else { return };
        let remote_id = self.config.remote_id.clone().unwrap_or_else(|| IdPayload::address(self.remote.ip()));
        let idii_b = Payload::Id(remote_id).body().unwrap_or_default();
        let Some(want) = self.hash_i(&idii_b) else { return };
        if want.expose() != hash.as_slice() {
            return self.fail(Failure::LocalError(crate::message::NotifyType::AUTHENTICATION_FAILED));
        }
        self.local = local;
        self.remote = remote;
        self.process_natd(d.hash, &payloads);
        self.established();
        self.start_next_quick(rng);
    }

    fn peer_error(&self, p: &[Payload]) -> Option<Failure> {
        p.iter().find_map(|x| match x {
            Payload::Notification(n) if n.kind.0 < 8192 => {
                Some(Failure::PeerError(crate::message::NotifyType(n.kind.0)))
            }
            _ => None,
        })
    }

    // ------------------------------------------------------------------------------------------
    // Quick mode

    fn start_next_quick<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) {
        if let Some(t) = self.quick_hold {
            if t > self.now {
                return;
            }
            self.quick_hold = None;
        }
        if self.quick.iter().any(|q| q.initiator) {
            return;
        }
        if let Some(p) = self.queued.pop_front() {
            self.start_quick(p, rng);
        }
    }

    fn new_mid<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> u32 {
        loop {
            let m = rng.next_u32();
            if m != 0 && !self.quick.iter().any(|q| q.mid == m) {
                return m;
            }
        }
    }

    fn new_spi<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> u32 {
        loop {
            let s = rng.next_u32();
            if s >= 256
                && !self.children.iter().any(|c| c.sa.inbound_spi() == s)
                && !self.quick.iter().any(|q| q.spi_in == s)
            {
                return s;
            }
        }
    }

    fn encap_mode(&self) -> u64 {
        if self.nat_local || self.nat_remote {
            p2attr::ENCAP_UDP_TUNNEL
        } else {
            p2attr::ENCAP_TUNNEL
        }
    }

    fn quick_header(&self, mid: u32) -> Header {
        Header::new(self.cookie_i, self.cookie_r, ExchangeType::QUICK, 0, mid)
    }

    /// Starts a quick mode for `local` ↔ `remote` (phase 1 must be established).
    fn start_quick<R: CryptoRng + ?Sized>(&mut self, plan: Planned, rng: &mut R) {
        let Planned { local, remote, replaces } = plan;
        let Some(k) = self.keys.as_ref() else { return };
        let mid = self.new_mid(rng);
        let iv = k.phase2_iv(&self.iv, mid);
        let spi_in = self.new_spi(rng);
        let ni = nonce(rng);
        let pfs = self.config.pfs;
        let encap = self.encap_mode();
        let transforms: Vec<Transform> = self
            .config
            .esp_proposals
            .iter()
            .zip(1u8..)
            .map(|(p, n)| encode_esp(p, n, self.config.child_lifetime, pfs, encap))
            .collect();
        let mut rest = vec![
            Payload::Sa(SaPayload {
                situation: SIT_IDENTITY_ONLY,
                proposals: vec![Proposal {
                    number: 1,
                    protocol: protocol::ESP,
                    spi: spi_in.to_be_bytes().to_vec(),
                    transforms,
                }],
            }),
            Payload::Nonce(ni.clone()),
        ];
        let dh = pfs.map(|g| {
            let (d, public) = g.generate(rng);
            rest.push(Payload::Ke(public));
            d
        });
        rest.push(Payload::Id(IdPayload::subnet(local)));
        rest.push(Payload::Id(IdPayload::subnet(remote)));
        let mut rest_b = Vec::new();
        if emit_chain(&rest, &mut rest_b).is_err() {
            return;
        }
        let hash = k.qm_hash1(mid, &rest_b);
        let mut payloads = vec![Payload::Hash(hash.expose().to_vec())];
        payloads.extend(rest);
        let Ok((b, last)) = k.encrypt(&self.quick_header(mid), &payloads, &iv) else { return };
        let t = self.transmit(b);
        let pending = Some(self.new_pending(t.clone()));
        self.transmits.push_back(t);
        self.quick.push(Quick {
            mid,
            replaces,
            initiator: true,
            state: QmState::ExpectReply,
            iv: last,
            spi_in,
            ni,
            nr: Vec::new(),
            dh,
            local,
            remote,
            offered: self.config.esp_proposals.clone(),
            ready: None,
            pending,
        });
    }

    fn rest_bytes(p: &[Payload]) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        emit_chain(p.get(1..)?, &mut v).ok()?;
        Some(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn child(
        &self,
        initiator: bool,
        spi_i: u32,
        spi_r: u32,
        esp: EspProposal,
        g_qm: Option<&SecretBytes>,
        ni: &[u8],
        nr: &[u8],
        ts_i: Subnet,
        ts_r: Subnet,
    ) -> Option<ChildSa> {
        let k = self.keys.as_ref()?;
        let (el, al) = (esp.encr.keymat_len(), esp.integ.map_or(0, IntegAlg::key_len));
        let g = g_qm.map(SecretBytes::expose);
        // Traffic initiator → responder is received by the responder, under its SPI.
        let km_i = k.keymat(protocol::ESP, spi_r, g, ni, nr, el + al);
        let km_r = k.keymat(protocol::ESP, spi_i, g, ni, nr, el + al);
        let split = |km: &SecretBytes| {
            let (e, a) = km.expose().split_at(el);
            (SecretBytes::from_slice(e), SecretBytes::from_slice(a))
        };
        let (encr_i, integ_i) = split(&km_i);
        let (encr_r, integ_r) = split(&km_r);
        Some(ChildSa {
            spi_i,
            spi_r,
            initiator,
            encr: esp.encr,
            integ: esp.integ,
            esn: Esn::No,
            keys: ChildKeys { encr_i, integ_i, encr_r, integ_r },
            ts_i: vec![subnet_ts(ts_i)],
            ts_r: vec![subnet_ts(ts_r)],
            local: self.local,
            remote: self.remote,
            encap: self.encap(),
            lifetime: self.config.child_lifetime,
        })
    }

    fn install(&mut self, c: ChildSa, local: Subnet, remote: Subnet) {
        let life = c.lifetime;
        let keep = u32::from(100u8.saturating_sub(self.config.rekey_margin_percent.min(100)));
        let life = life.min(Duration::from_secs(10 * 365 * 24 * 3600));
        let rekey_at = c.initiator.then(|| self.now + life * keep / 100);
        self.children.push(Installed {
            sa: c.clone(),
            local,
            remote,
            rekey_at,
            expire_at: self.now + life,
            rekeying: false,
        });
        self.events.push_back(Event::ChildSaInstalled(c));
    }

    /// Removes our IPsec SA with inbound SPI `spi_in`, tells the peer (DELETE) and reports it.
    fn delete_installed<R: CryptoRng + ?Sized>(&mut self, spi_in: u32, rng: &mut R) {
        let Some(i) = self.children.iter().position(|c| c.sa.inbound_spi() == spi_in) else { return };
        let c = self.children.remove(i);
        let d =
            Delete { doi: DOI_IPSEC, protocol: protocol::ESP, spi_size: 4, spis: vec![spi_in.to_be_bytes().to_vec()] };
        self.send_informational(vec![Payload::Delete(d)], rng);
        self.events.push_back(Event::ChildSaDeleted { spi_in: c.sa.inbound_spi(), spi_out: c.sa.outbound_spi() });
    }

    fn quick_in<R: CryptoRng + ?Sized>(&mut self, raw: &[u8], h: &Header, rng: &mut R) {
        if h.flags & FLAG_ENCRYPTION == 0 {
            return;
        }
        match self.quick.iter().position(|q| q.mid == h.message_id) {
            None => self.quick_r1(raw, h, rng),
            Some(i) => match (self.quick[i].initiator, self.quick[i].state) {
                (true, QmState::ExpectReply) => self.quick_i2(i, raw, h, rng),
                (false, QmState::ExpectFinal) => self.quick_r3(i, raw, h),
                _ => {}
            },
        }
    }

    fn quick_r1<R: CryptoRng + ?Sized>(&mut self, raw: &[u8], h: &Header, rng: &mut R) {
        let Some(k) = self.keys.as_ref() else { return };
        let iv = k.phase2_iv(&self.iv, h.message_id);
        let Ok((p, last)) = k.decrypt(h, raw, &iv) else { return };
        let (Some(Payload::Hash(hash)), Some(rest)) = (p.first(), Self::rest_bytes(&p)) else { return };
        if k.qm_hash1(h.message_id, &rest).expose() != hash.as_slice() {
            return;
        }
        self.last_inbound = self.now;
        let (Some(sa), Some(ni)) = (payload_sa(&p), payload_nonce(&p)) else {
            return;
        };
        if !valid_nonce(ni) {
            return;
        }
        let ke = payload_ke(&p);
        let ids: Vec<&IdPayload> =
            p.iter().filter_map(|x| if let Payload::Id(i) = x { Some(i) } else { None }).collect();
        let (ts_i, ts_r) = match ids.as_slice() {
            [i, r] => match (i.as_subnet(), r.as_subnet()) {
                (Some(i), Some(r)) => (i, r),
                _ => return self.quick_reject(NotifyType::INVALID_ID_INFORMATION, rng),
            },
            [] => (Subnet::new(self.remote.ip(), 128), Subnet::new(self.local.ip(), 128)),
            _ => return,
        };
        // Narrow to a configured pair: theirs (ts_i) within/around our remote, ours likewise.
        let pair = self.config.remote_subnets.iter().find_map(|r| {
            let ni_ = narrow(*r, ts_i)?;
            self.config.local_subnets.iter().find_map(|l| narrow(*l, ts_r).map(|nr_| (ni_, nr_)))
        });
        let Some((ts_i, ts_r)) = pair else {
            return self.quick_reject(NotifyType::INVALID_ID_INFORMATION, rng);
        };
        // Choose the first acceptable transform of the first ESP proposal.
        let mut choice = None;
        'outer: for prop in &sa.proposals {
            if prop.protocol != protocol::ESP || prop.spi.len() != 4 {
                continue;
            }
            for t in &prop.transforms {
                if let Some((esp, group, encap)) = decode_esp(t) {
                    let encap_ok = matches!(
                        encap,
                        p2attr::ENCAP_TUNNEL | p2attr::ENCAP_UDP_TUNNEL | p2attr::ENCAP_UDP_TUNNEL_DRAFT
                    );
                    if self.config.esp_proposals.contains(&esp) && group == self.config.pfs && encap_ok {
                        choice = Some((prop.clone(), t.clone(), esp, group));
                        break 'outer;
                    }
                }
            }
        }
        let Some((prop, t, esp, group)) = choice else {
            return self.quick_reject(NotifyType::NO_PROPOSAL_CHOSEN, rng);
        };
        let t_chosen = t.clone();
        let spi_i = u32::from_be_bytes([prop.spi[0], prop.spi[1], prop.spi[2], prop.spi[3]]);
        let spi_r = self.new_spi(rng);
        let nr = nonce(rng);
        let mut rest = vec![
            Payload::Sa(SaPayload {
                situation: sa.situation,
                proposals: vec![Proposal {
                    number: prop.number,
                    protocol: protocol::ESP,
                    spi: spi_r.to_be_bytes().to_vec(),
                    transforms: vec![t],
                }],
            }),
            Payload::Nonce(nr.clone()),
        ];
        let mut g_qm = None;
        if let Some(g) = group {
            let Some(ke) = ke else { return };
            let (d, public) = g.generate(rng);
            let Ok(s) = g.compute_shared(&d, ke) else {
                return self.quick_reject(NotifyType::INVALID_KEY_INFORMATION, rng);
            };
            g_qm = Some(s);
            rest.push(Payload::Ke(public));
        }
        rest.push(Payload::Id(IdPayload::subnet(ts_i)));
        rest.push(Payload::Id(IdPayload::subnet(ts_r)));
        let mut rest_b = Vec::new();
        if emit_chain(&rest, &mut rest_b).is_err() {
            return;
        }
        let Some(mut child) = self.child(false, spi_i, spi_r, esp, g_qm.as_ref(), ni, &nr, ts_i, ts_r) else { return };
        child.lifetime = proposed_lifetime(&t_chosen, p2attr::LIFE_TYPE, p2attr::LIFE_DURATION)
            .map_or(child.lifetime, |l| l.min(child.lifetime));
        let Some(k) = self.keys.as_ref() else { return };
        let hash2 = k.qm_hash2(h.message_id, ni, &rest_b);
        let mut payloads = vec![Payload::Hash(hash2.expose().to_vec())];
        payloads.extend(rest);
        let Ok((b, last2)) = k.encrypt(&self.quick_header(h.message_id), &payloads, &last) else { return };
        let t = self.send_reply(raw, b);
        let pending = Some(self.new_pending(t));
        self.quick.push(Quick {
            mid: h.message_id,
            replaces: None,
            initiator: false,
            state: QmState::ExpectFinal,
            iv: last2,
            spi_in: spi_r,
            ni: ni.clone(),
            nr,
            dh: None,
            local: ts_r,
            remote: ts_i,
            offered: vec![],
            ready: Some(child),
            pending,
        });
    }

    fn quick_r3(&mut self, i: usize, raw: &[u8], h: &Header) {
        let Some(k) = self.keys.as_ref() else { return };
        let q = &self.quick[i];
        let Ok((p, _)) = k.decrypt(h, raw, &q.iv) else { return };
        let Some(Payload::Hash(hash)) = p.first() else { return };
        if k.qm_hash3(h.message_id, &q.ni, &q.nr).expose() != hash.as_slice() {
            return;
        }
        self.last_inbound = self.now;
        let q = self.quick.remove(i);
        if let Some(c) = q.ready {
            self.install(c, q.local, q.remote);
        }
    }

    fn quick_i2<R: CryptoRng + ?Sized>(&mut self, i: usize, raw: &[u8], h: &Header, rng: &mut R) {
        let Some(k) = self.keys.as_ref() else { return };
        let Ok((p, last)) = k.decrypt(h, raw, &self.quick[i].iv) else { return };
        let (Some(Payload::Hash(hash)), Some(rest)) = (p.first(), Self::rest_bytes(&p)) else { return };
        let q = &self.quick[i];
        if k.qm_hash2(h.message_id, &q.ni, &rest).expose() != hash.as_slice() {
            return;
        }
        self.last_inbound = self.now;
        let (Some(sa), Some(nr)) = (payload_sa(&p), payload_nonce(&p)) else {
            return;
        };
        let Some(prop) = sa.proposals.first().filter(|p| p.protocol == protocol::ESP && p.spi.len() == 4) else {
            return;
        };
        let Some((esp, group, _)) = prop.transforms.first().and_then(decode_esp) else { return };
        let life = prop
            .transforms
            .first()
            .and_then(|t| proposed_lifetime(t, p2attr::LIFE_TYPE, p2attr::LIFE_DURATION))
            .map_or(self.config.child_lifetime, |l| l.min(self.config.child_lifetime));
        if !q.offered.contains(&esp) || group != self.config.pfs || !valid_nonce(nr) {
            return;
        }
        let spi_r = u32::from_be_bytes([prop.spi[0], prop.spi[1], prop.spi[2], prop.spi[3]]);
        let ids: Vec<Subnet> =
            p.iter().filter_map(|x| if let Payload::Id(i) = x { i.as_subnet() } else { None }).collect();
        let (ts_i, ts_r) = match ids.as_slice() {
            [a, b] if q.local.contains(a) && q.remote.contains(b) => (*a, *b),
            [] => (q.local, q.remote),
            _ => return,
        };
        let g_qm = match (&q.dh, group) {
            (Some(d), Some(g)) => {
                let Some(ke) = payload_ke(&p) else { return };
                match g.compute_shared(d, ke) {
                    Ok(s) => Some(s),
                    Err(_) => return,
                }
            }
            _ => None,
        };
        let hash3 = k.qm_hash3(h.message_id, &q.ni, nr);
        let Ok((b, _)) = k.encrypt(&self.quick_header(h.message_id), &[Payload::Hash(hash3.expose().to_vec())], &last)
        else {
            return;
        };
        let (spi_i, ni) = (q.spi_in, q.ni.clone());
        let Some(mut child) = self.child(true, spi_i, spi_r, esp, g_qm.as_ref(), &ni, nr, ts_i, ts_r) else { return };
        child.lifetime = life;
        self.send_reply(raw, b);
        let q = self.quick.remove(i);
        self.install(child, q.local, q.remote);
        // Make before break: the new SA is installed, now the old one goes.
        if let Some(old) = q.replaces {
            self.delete_installed(old, rng);
        }
        self.start_next_quick(rng);
    }

    fn quick_reject<R: CryptoRng + ?Sized>(&mut self, kind: NotifyType, rng: &mut R) {
        self.send_informational(
            vec![Payload::Notification(Notification {
                doi: DOI_IPSEC,
                protocol: protocol::ESP,
                spi: vec![],
                kind,
                data: vec![],
            })],
            rng,
        );
    }

    // ------------------------------------------------------------------------------------------
    // Informational

    fn send_informational<R: CryptoRng + ?Sized>(&mut self, payloads: Vec<Payload>, rng: &mut R) {
        let Some(k) = self.keys.as_ref() else { return };
        if !matches!(self.state, P1::Established) {
            return;
        }
        let mid = self.new_mid(rng);
        let mut rest_b = Vec::new();
        if emit_chain(&payloads, &mut rest_b).is_err() {
            return;
        }
        let hash = k.info_hash(mid, &rest_b);
        let mut all = vec![Payload::Hash(hash.expose().to_vec())];
        all.extend(payloads);
        let iv = k.phase2_iv(&self.iv, mid);
        let h = Header::new(self.cookie_i, self.cookie_r, ExchangeType::INFORMATIONAL, 0, mid);
        if let Ok((b, _)) = k.encrypt(&h, &all, &iv) {
            let t = self.transmit(b);
            self.transmits.push_back(t);
        }
    }

    fn informational_in<R: CryptoRng + ?Sized>(&mut self, raw: &[u8], m: &Message, rng: &mut R) {
        let p = match &m.body {
            Body::Plain(p) => {
                // Unauthenticated: only believed while phase 1 is not established yet.
                if self.state != P1::Established && self.keys.is_none() {
                    if let Some(f) = self.peer_error(p) {
                        self.fail(f);
                    }
                }
                return;
            }
            Body::Encrypted(_) => {
                let Some(k) = self.keys.as_ref() else { return };
                if self.state != P1::Established {
                    return;
                }
                let iv = k.phase2_iv(&self.iv, m.header.message_id);
                let Ok((p, _)) = k.decrypt(&m.header, raw, &iv) else { return };
                let (Some(Payload::Hash(hash)), Some(rest)) = (p.first(), Self::rest_bytes(&p)) else { return };
                if k.info_hash(m.header.message_id, &rest).expose() != hash.as_slice() {
                    return;
                }
                self.last_inbound = self.now;
                p
            }
        };
        for x in &p[1..] {
            match x {
                Payload::Notification(n) if n.kind == NotifyType::R_U_THERE => {
                    let ack = Payload::Notification(Notification { kind: NotifyType::R_U_THERE_ACK, ..n.clone() });
                    self.send_informational(vec![ack], rng);
                }
                Payload::Notification(n) if n.kind == NotifyType::R_U_THERE_ACK => {
                    if let Ok(seq) = <[u8; 4]>::try_from(&n.data[..]) {
                        let seq = u32::from_be_bytes(seq);
                        self.dpd_acked = Some(seq);
                        if seq == self.dpd_seq {
                            self.dpd_probe = None;
                        }
                    }
                }
                Payload::Notification(n) if n.kind.0 < 8192 => {
                    // An error for a quick mode of ours: give up on the one in flight.
                    if let Some(i) = self.quick.iter().position(|q| q.initiator) {
                        self.quick.remove(i);
                        self.events
                            .push_back(Event::ChildSaFailed(Failure::PeerError(crate::message::NotifyType(n.kind.0))));
                        self.start_next_quick(rng);
                    }
                }
                Payload::Delete(d) if d.protocol == protocol::ISAKMP => {
                    let ours = [self.cookie_i.to_be_bytes(), self.cookie_r.to_be_bytes()].concat();
                    if d.spis.contains(&ours) {
                        self.closed();
                        return;
                    }
                }
                Payload::Delete(d) if d.protocol == protocol::ESP && d.spi_size == 4 => {
                    for s in &d.spis {
                        let spi = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
                        if let Some(i) = self.children.iter().position(|c| c.sa.outbound_spi() == spi) {
                            let c = self.children.remove(i);
                            self.events.push_back(Event::ChildSaDeleted {
                                spi_in: c.sa.inbound_spi(),
                                spi_out: c.sa.outbound_spi(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn closed(&mut self) {
        for c in self.children.drain(..) {
            self.events.push_back(Event::ChildSaDeleted { spi_in: c.sa.inbound_spi(), spi_out: c.sa.outbound_spi() });
        }
        self.state = P1::Dead;
        self.pending = None;
        self.quick.clear();
        self.events.push_back(Event::Closed);
    }

    /// Deletes every IPsec SA and the ISAKMP SA: sends the DELETEs (one informational exchange
    /// each, not acknowledged in IKEv1) and reports the SAs deleted, then [`Event::Closed`].
    pub fn close<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.now = now;
        if self.state == P1::Established {
            let spis: Vec<Vec<u8>> = self.children.iter().map(|c| c.sa.inbound_spi().to_be_bytes().to_vec()).collect();
            if !spis.is_empty() {
                let d = Delete { doi: DOI_IPSEC, protocol: protocol::ESP, spi_size: 4, spis };
                self.send_informational(vec![Payload::Delete(d)], rng);
            }
            let cookies = [self.cookie_i.to_be_bytes(), self.cookie_r.to_be_bytes()].concat();
            let d = Delete { doi: DOI_IPSEC, protocol: protocol::ISAKMP, spi_size: 16, spis: vec![cookies] };
            self.send_informational(vec![Payload::Delete(d)], rng);
        }
        if self.state != P1::Dead {
            self.closed();
        }
    }

    /// Sends a DPD R-U-THERE (RFC 3706) now and returns its sequence number; the answer shows in
    /// [`Sa::last_dpd_ack`]. With [`Config::dpd_interval`] set the SA also does this by itself
    /// after inbound silence and reports [`Event::PeerDead`] when no answer comes.
    pub fn send_dpd<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> u32 {
        self.now = now;
        if self.dpd_seq == 0 {
            self.dpd_seq = rng.next_u32() >> 1;
        }
        self.dpd_seq = self.dpd_seq.wrapping_add(1).max(1);
        let n = Notification {
            doi: DOI_IPSEC,
            protocol: protocol::ISAKMP,
            spi: [self.cookie_i.to_be_bytes(), self.cookie_r.to_be_bytes()].concat(),
            kind: NotifyType::R_U_THERE,
            data: self.dpd_seq.to_be_bytes().to_vec(),
        };
        self.send_informational(vec![Payload::Notification(n)], rng);
        self.dpd_seq
    }

    /// When the ISAKMP SA should be replaced: `rekey_margin_percent` before the end of its
    /// negotiated lifetime, for the phase-1 initiator only (`None` otherwise or before phase 1
    /// completes). IKEv1 has no in-place phase-1 rekey: the daemon starts a new [`Sa::initiate`]
    /// for the connection at this time and [`Sa::close`]s this one once the new one has its IPsec
    /// SAs (strongSwan's IKEv1 reauthentication does the same).
    #[must_use]
    pub fn reauth_at(&self) -> Option<Instant> {
        let keep = u32::from(100u8.saturating_sub(self.config.rekey_margin_percent.min(100)));
        let at = self.established_at?;
        (self.initiator && self.state == P1::Established).then(|| at + self.lifetime_clamped() * keep / 100)
    }

    /// When the ISAKMP SA ends: then it deletes itself ([`Sa::close`]: DELETEs, then
    /// [`Event::Closed`]).
    #[must_use]
    pub fn expires_at(&self) -> Option<Instant> {
        let at = self.established_at?;
        (self.state == P1::Established).then(|| at + self.lifetime_clamped())
    }

    fn lifetime_clamped(&self) -> Duration {
        self.p1_lifetime.min(Duration::from_secs(10 * 365 * 24 * 3600))
    }

    /// Tells the SA that ESP traffic arrived from the peer (postpones DPD).
    pub fn note_inbound_traffic(&mut self, now: Instant) {
        self.last_inbound = self.last_inbound.max(now);
    }

    fn dpd_timer(&self) -> Option<Instant> {
        if self.state != P1::Established {
            return None;
        }
        match self.dpd_probe {
            Some((sent, resend)) => Some(resend.min(sent + self.config.dpd_timeout)),
            None => self.config.dpd_interval.map(|i| self.last_inbound + i),
        }
    }

    fn handle_dpd<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        if self.dpd_timer().is_none_or(|t| t > now) {
            return;
        }
        match self.dpd_probe {
            Some((sent, _)) if now >= sent + self.config.dpd_timeout => {
                for c in self.children.drain(..) {
                    self.events
                        .push_back(Event::ChildSaDeleted { spi_in: c.sa.inbound_spi(), spi_out: c.sa.outbound_spi() });
                }
                self.state = P1::Dead;
                self.pending = None;
                self.quick.clear();
                self.events.push_back(Event::PeerDead);
            }
            Some((sent, _)) => {
                // One more R-U-THERE half way (a new sequence number, RFC 3706 §5.5).
                self.send_dpd(now, rng);
                self.dpd_probe = Some((sent, sent + self.config.dpd_timeout));
            }
            None => {
                if self.last_inbound + self.config.dpd_interval.unwrap_or(Duration::MAX) <= now {
                    self.send_dpd(now, rng);
                    self.dpd_probe = Some((now, now + self.config.dpd_timeout / 2));
                }
            }
        }
    }

    /// The sequence number of the last R-U-THERE-ACK received.
    #[must_use]
    pub fn last_dpd_ack(&self) -> Option<u32> {
        self.dpd_acked
    }

    /// Retransmits what is due and gives up on what has been retransmitted too often.
    pub fn handle_timeout<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.now = now;
        if self.is_finished() {
            return;
        }
        if !self.initiator && self.state != P1::Established && now >= self.created + self.config.half_open_timeout {
            return self.fail(Failure::Timeout);
        }
        let (max, cap) = (self.config.retransmit_max, self.config.retransmit_max_interval);
        let step = |p: &mut Pending, out: &mut VecDeque<Transmit>| -> bool {
            if now < p.next {
                return true;
            }
            if p.sent >= max {
                return false;
            }
            p.sent += 1;
            p.interval = p.interval.saturating_mul(2).min(cap);
            p.next = now + p.interval;
            out.push_back(p.t.clone());
            true
        };
        if let Some(p) = self.pending.as_mut() {
            if !step(p, &mut self.transmits) {
                return self.fail(Failure::Timeout);
            }
        }
        let mut failed = Vec::new();
        for q in &mut self.quick {
            if let Some(p) = q.pending.as_mut() {
                if !step(p, &mut self.transmits) {
                    failed.push(q.mid);
                }
            }
        }
        for mid in failed {
            if let Some(i) = self.quick.iter().position(|q| q.mid == mid) {
                let q = self.quick.remove(i);
                if q.initiator {
                    self.events.push_back(Event::ChildSaFailed(Failure::Timeout));
                }
                if let Some(c) = self.children.iter_mut().find(|c| Some(c.sa.inbound_spi()) == q.replaces) {
                    // Try again later, unless the SA expires first.
                    c.rekeying = false;
                    c.rekey_at = Some(now + self.config.retransmit_max_interval);
                }
            }
        }
        if self.expires_at().is_some_and(|t| t <= now) {
            return self.close(now, rng);
        }
        if self.state == P1::Established {
            let expired: Vec<u32> =
                self.children.iter().filter(|c| c.expire_at <= now).map(|c| c.sa.inbound_spi()).collect();
            for spi in expired {
                self.delete_installed(spi, rng);
            }
            let due: Vec<u32> = self
                .children
                .iter()
                .filter(|c| !c.rekeying && c.rekey_at.is_some_and(|t| t <= now))
                .map(|c| c.sa.inbound_spi())
                .collect();
            for spi in due {
                self.rekey_child(now, spi, rng);
            }
            self.start_next_quick(rng);
            self.handle_dpd(now, rng);
        }
    }

    /// Starts a quick mode for one more pair of subnets (phase 1 established, or queued until
    /// it is).
    pub fn create_child<R: CryptoRng + ?Sized>(&mut self, now: Instant, local: Subnet, remote: Subnet, rng: &mut R) {
        self.now = now;
        self.queued.push_back(Planned { local, remote, replaces: None });
        if self.state == P1::Established {
            self.start_next_quick(rng);
        }
    }

    /// Rekeys the IPsec SA whose inbound SPI is `spi_in`: a new quick mode for the same subnets;
    /// once it is installed the old SA is deleted (DELETE to the peer, then
    /// [`Event::ChildSaDeleted`]). Done automatically `rekey_margin_percent` before the end of
    /// the lifetime of SAs we initiated; the peer's rekeys are simply new quick modes followed
    /// by its DELETE of the old SA.
    pub fn rekey_child<R: CryptoRng + ?Sized>(&mut self, now: Instant, spi_in: u32, rng: &mut R) {
        self.now = now;
        let Some(c) = self.children.iter_mut().find(|c| c.sa.inbound_spi() == spi_in && !c.rekeying) else {
            return;
        };
        c.rekeying = true;
        let plan = Planned { local: c.local, remote: c.remote, replaces: Some(spi_in) };
        self.queued.push_back(plan);
        if self.state == P1::Established {
            self.start_next_quick(rng);
        }
    }

    /// Deletes the IPsec SA whose inbound SPI is `spi_in` (DELETE to the peer, then
    /// [`Event::ChildSaDeleted`]).
    pub fn delete_child<R: CryptoRng + ?Sized>(&mut self, now: Instant, spi_in: u32, rng: &mut R) {
        self.now = now;
        if self.state == P1::Established {
            self.delete_installed(spi_in, rng);
        }
    }
}
