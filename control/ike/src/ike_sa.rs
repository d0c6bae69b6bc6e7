//! Sans-IO IKE SA state machine: IKE_SA_INIT and IKE_AUTH with a pre-shared key, establishing the
//! IKE SA and its first Child SA (RFC 7296 §1.2, §2.15, §2.17).
//!
//! Every entry point takes `now`; nothing reads a clock. Inputs are datagrams
//! ([`IkeSa::handle`]) and timer expiries ([`IkeSa::handle_timeout`]); outputs are pulled with
//! [`IkeSa::poll_transmit`], [`IkeSa::poll_timeout`] and [`IkeSa::poll_event`]. States are named
//! for what they expect next (rustls style).
//!
//! Scope of this first version: one exchange in flight (window size 1), retransmission of the
//! outstanding request with exponential back-off, the responder answering retransmitted requests
//! with its cached response, NO_PROPOSAL_CHOSEN / INVALID_KE_PAYLOAD / AUTHENTICATION_FAILED /
//! TS_UNACCEPTABLE as error notifications. Not yet: COOKIE, NAT-T, INVALID_KE retry by the
//! initiator, traffic-selector narrowing (the responder accepts selectors contained in its own),
//! CREATE_CHILD_SA, INFORMATIONAL, rekeying, deletion.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;

use crate::crypto::dh::DhPrivate;
use crate::crypto::keys::{child_keymat, psk_auth, signed_octets, verify_psk_auth, ChildKeys, IkeSaKeys, IkeSuite};
use crate::crypto::sk::SkCipher;
use crate::crypto::SecretBytes;
use crate::message::{
    AddressRange, AuthMethod, AuthPayload, ExchangeType, Flags, Header, Identification, KePayload, Message,
    NotifyPayload, NotifyType, Payload, Proposal, ProtocolId, SaPayload, TrafficSelector,
};
use crate::transforms::{build_offer, select_proposal, ChosenProposal, EncrAlg, Esn, IntegAlg, ProposalSpec};

/// Configuration of one IKE SA (one peer).
#[derive(Clone, Debug)]
pub struct Config {
    /// Acceptable IKE proposals (also our offer as initiator).
    pub ike_proposals: Vec<ProposalSpec>,
    /// Acceptable ESP proposals for the first Child SA.
    pub esp_proposals: Vec<ProposalSpec>,
    /// Our identity (IDi or IDr).
    pub local_id: Identification,
    /// The identity the peer must present, if checked.
    pub remote_id: Option<Identification>,
    /// The pre-shared key.
    pub psk: SecretBytes,
    /// Initiator's traffic selectors (offered by the initiator; the limit for the responder).
    pub ts_i: Vec<TrafficSelector>,
    /// Responder's traffic selectors.
    pub ts_r: Vec<TrafficSelector>,
    /// First retransmission interval.
    pub retransmit_initial: Duration,
    /// Retransmissions before giving up.
    pub retransmit_max: u32,
}

/// An established Child SA (ESP), with the keys for both directions.
#[derive(Debug, PartialEq, Eq)]
pub struct ChildSa {
    /// SPI chosen by the initiator (its inbound SA, traffic responder→initiator).
    pub spi_i: u32,
    /// SPI chosen by the responder (its inbound SA, traffic initiator→responder).
    pub spi_r: u32,
    /// Encryption algorithm.
    pub encr: EncrAlg,
    /// Integrity algorithm (`None` with AEAD).
    pub integ: Option<IntegAlg>,
    /// Extended sequence numbers.
    pub esn: Esn,
    /// KEYMAT split per RFC 7296 §2.17.
    pub keys: ChildKeys,
    /// Initiator's traffic selectors.
    pub ts_i: Vec<TrafficSelector>,
    /// Responder's traffic selectors.
    pub ts_r: Vec<TrafficSelector>,
}

/// Why the IKE SA failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer answered with this error notification.
    PeerError(NotifyType),
    /// We rejected the peer's message with (or for) this error.
    LocalError(NotifyType),
    /// No answer after all retransmissions.
    Timeout,
}

/// Something the application must know.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The IKE SA and its first Child SA are established.
    Established(ChildSa),
    /// The IKE SA failed; it will not do anything more.
    Failed(Failure),
}

enum State {
    ExpectSaInitRequest,
    ExpectSaInitResponse { dh: DhPrivate },
    ExpectAuthRequest,
    ExpectAuthResponse { esp_offer: Vec<Proposal>, esp_spi: u32 },
    Established,
    Failed,
}

struct Retransmit {
    bytes: Vec<u8>,
    next: Instant,
    interval: Duration,
    count: u32,
}

/// One IKE SA, initiator or responder.
pub struct IkeSa {
    config: Config,
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    state: State,
    ni: Vec<u8>,
    nr: Vec<u8>,
    sa_init_request: Vec<u8>,
    sa_init_response: Vec<u8>,
    keys: Option<IkeSaKeys>,
    outbound: Option<SkCipher>,
    inbound: Option<SkCipher>,
    /// Outstanding request (initiator) awaiting its response.
    pending: Option<Retransmit>,
    /// Our last response and the Message ID it answers (responder), for retransmitted requests.
    last_response: Option<(u32, Vec<u8>)>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl core::fmt::Debug for IkeSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkeSa")
            .field("initiator", &self.initiator)
            .field("spi_i", &format_args!("{:016x}", self.spi_i))
            .field("spi_r", &format_args!("{:016x}", self.spi_r))
            .field("state", &self.state_name())
            .finish_non_exhaustive()
    }
}

const NONCE_LEN: usize = 32;

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

fn nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rng.fill_bytes(&mut n);
    n
}

impl IkeSa {
    /// Starts an IKE SA as initiator: queues the IKE_SA_INIT request.
    ///
    /// # Panics
    /// If the configuration has no IKE proposal with a DH group.
    pub fn initiate<R: CryptoRng + ?Sized>(config: Config, now: Instant, rng: &mut R) -> Self {
        let group =
            config.ike_proposals.iter().find_map(|p| p.dh.first().copied()).expect("an IKE proposal needs a DH group");
        let spi_i = nonzero_u64(rng);
        let (dh, public) = group.generate(rng);
        let ni = nonce(rng);
        let mut sa = IkeSa::new(config, true, spi_i, 0, State::ExpectSaInitResponse { dh });
        let msg = Message {
            header: sa.header(ExchangeType::IKE_SA_INIT, 0, false),
            payloads: vec![
                Payload::Sa(SaPayload { proposals: build_offer(&sa.config.ike_proposals, &[]) }),
                Payload::Ke(KePayload { dh_group: group.id(), data: public }),
                Payload::Nonce(ni.clone()),
            ],
        };
        sa.ni = ni;
        match msg.emit() {
            Ok(bytes) => {
                sa.sa_init_request.clone_from(&bytes);
                sa.send_request(bytes, now);
            }
            Err(_) => sa.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX)),
        }
        sa
    }

    /// Creates a responder waiting for an IKE_SA_INIT request.
    #[must_use]
    pub fn respond(config: Config) -> Self {
        IkeSa::new(config, false, 0, 0, State::ExpectSaInitRequest)
    }

    fn new(config: Config, initiator: bool, spi_i: u64, spi_r: u64, state: State) -> Self {
        IkeSa {
            config,
            initiator,
            spi_i,
            spi_r,
            state,
            ni: Vec::new(),
            nr: Vec::new(),
            sa_init_request: Vec::new(),
            sa_init_response: Vec::new(),
            keys: None,
            outbound: None,
            inbound: None,
            pending: None,
            last_response: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The state's name, for logs.
    #[must_use]
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::ExpectSaInitRequest => "ExpectSaInitRequest",
            State::ExpectSaInitResponse { .. } => "ExpectSaInitResponse",
            State::ExpectAuthRequest => "ExpectAuthRequest",
            State::ExpectAuthResponse { .. } => "ExpectAuthResponse",
            State::Established => "Established",
            State::Failed => "Failed",
        }
    }

    /// Initiator's and responder's IKE SPIs.
    #[must_use]
    pub fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }

    /// The IKE SA keys, once derived.
    #[must_use]
    pub fn keys(&self) -> Option<&IkeSaKeys> {
        self.keys.as_ref()
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// When [`IkeSa::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.next)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Retransmits the outstanding request or gives up, as due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if now < p.next {
            return;
        }
        if p.count >= self.config.retransmit_max {
            self.fail(Failure::Timeout);
            return;
        }
        p.count += 1;
        p.interval = p.interval.saturating_mul(2);
        p.next = now + p.interval;
        self.transmits.push_back(p.bytes.clone());
    }

    /// Processes one received datagram. Malformed, unauthenticated or unexpected input is dropped
    /// (or answered with an error notification where RFC 7296 says so).
    pub fn handle<R: CryptoRng + ?Sized>(&mut self, now: Instant, datagram: &[u8], rng: &mut R) {
        let Ok(peek) = Header::peek(datagram) else {
            return;
        };
        let h = peek.header;
        // Messages from the peer carry the opposite I flag.
        if h.flags.initiator == self.initiator {
            return;
        }
        if !h.flags.response {
            if let Some((mid, bytes)) = &self.last_response {
                if *mid == h.message_id && self.spi_i == h.spi_i {
                    // Retransmitted request: answer again with the cached response.
                    self.transmits.push_back(bytes.clone());
                    return;
                }
            }
        }
        let state = core::mem::replace(&mut self.state, State::Failed);
        self.state = match state {
            State::ExpectSaInitRequest => self.on_sa_init_request(now, datagram, rng),
            State::ExpectSaInitResponse { dh } => self.on_sa_init_response(now, datagram, dh, rng),
            State::ExpectAuthRequest => self.on_auth_request(now, datagram, rng),
            State::ExpectAuthResponse { esp_offer, esp_spi } => self.on_auth_response(datagram, esp_offer, esp_spi),
            s @ (State::Established | State::Failed) => s,
        };
    }

    // ------------------------------------------------------------------------------------------
    // Responder

    fn on_sa_init_request<R: CryptoRng + ?Sized>(&mut self, _now: Instant, bytes: &[u8], rng: &mut R) -> State {
        let keep = State::ExpectSaInitRequest;
        let Ok(m) = Message::parse(bytes) else {
            return keep;
        };
        let h = m.header;
        if h.exchange_type != ExchangeType::IKE_SA_INIT || h.flags.response || h.message_id != 0 || h.spi_r != 0 {
            return keep;
        }
        self.spi_i = h.spi_i;
        let (Some(Payload::Sa(sa)), Some(Payload::Ke(ke)), Some(Payload::Nonce(ni))) = (
            m.find(crate::message::PayloadType::SA),
            m.find(crate::message::PayloadType::KE),
            m.find(crate::message::PayloadType::NONCE),
        ) else {
            self.reply_error_unprotected(h, NotifyType::INVALID_SYNTAX, vec![]);
            return keep;
        };
        let chosen = match select_proposal(&sa.proposals, &self.config.ike_proposals) {
            Ok(c) => c,
            Err(_) => {
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
        self.spi_r = nonzero_u64(rng);
        self.ni.clone_from(ni);
        self.nr = nonce(rng);
        let resp = Message {
            header: Header { spi_r: self.spi_r, ..self.header(ExchangeType::IKE_SA_INIT, 0, true) },
            payloads: vec![
                Payload::Sa(SaPayload { proposals: vec![chosen.to_proposal(vec![])] }),
                Payload::Ke(KePayload { dh_group: group.id(), data: public }),
                Payload::Nonce(self.nr.clone()),
            ],
        };
        let Ok(resp_bytes) = resp.emit() else {
            return keep;
        };
        if !self.install_keys(&chosen, &g_ir) {
            return keep;
        }
        self.sa_init_request = bytes.to_vec();
        self.sa_init_response.clone_from(&resp_bytes);
        self.send_response(0, resp_bytes);
        State::ExpectAuthRequest
    }

    fn on_auth_request<R: CryptoRng + ?Sized>(&mut self, _now: Instant, bytes: &[u8], rng: &mut R) -> State {
        let keep = State::ExpectAuthRequest;
        let Some(inbound) = self.inbound.as_ref() else {
            return keep;
        };
        let Ok(opened) = inbound.open(bytes) else {
            // Unauthenticated or malformed: drop silently.
            return keep;
        };
        let h = opened.header;
        if h.exchange_type != ExchangeType::IKE_AUTH
            || h.flags.response
            || h.message_id != 1
            || (h.spi_i, h.spi_r) != (self.spi_i, self.spi_r)
        {
            return keep;
        }
        let p = &opened.inner;
        let find = |t| p.iter().find(|x: &&Payload| x.payload_type() == t);
        use crate::message::PayloadType as T;
        let (
            Some(Payload::IdI(idi)),
            Some(Payload::Auth(auth)),
            Some(Payload::Sa(sa)),
            Some(Payload::TsI(tsi)),
            Some(Payload::TsR(tsr)),
        ) = (find(T::IDI), find(T::AUTH), find(T::SA), find(T::TSI), find(T::TSR))
        else {
            self.reply_error_protected(h.message_id, NotifyType::INVALID_SYNTAX, rng);
            return State::Failed;
        };
        let keys = self.keys.as_ref().map(|k| (k.suite.prf, k.sk_pi.clone(), k.sk_pr.clone()));
        let Some((prf, sk_pi, sk_pr)) = keys else {
            return keep;
        };
        let octets = signed_octets(prf, &self.sa_init_request, &self.nr, &sk_pi, &idi.body_bytes());
        let id_ok = self.config.remote_id.as_ref().is_none_or(|want| want == idi);
        if auth.method != AuthMethod::SHARED_KEY_MIC
            || !id_ok
            || !verify_psk_auth(prf, &self.config.psk, &octets, &auth.data)
        {
            self.reply_error_protected(h.message_id, NotifyType::AUTHENTICATION_FAILED, rng);
            self.fail(Failure::LocalError(NotifyType::AUTHENTICATION_FAILED));
            return State::Failed;
        }
        // Authenticated. The IKE SA exists from here on, even if the Child SA fails.
        let chosen = match select_proposal(&sa.proposals, &self.config.esp_proposals) {
            Ok(c) if c.protocol == ProtocolId::ESP && c.dh.is_none() => c,
            _ => {
                self.reply_error_protected(h.message_id, NotifyType::NO_PROPOSAL_CHOSEN, rng);
                self.fail(Failure::LocalError(NotifyType::NO_PROPOSAL_CHOSEN));
                return State::Failed;
            }
        };
        if !ts_within(tsi, &self.config.ts_i) || !ts_within(tsr, &self.config.ts_r) {
            self.reply_error_protected(h.message_id, NotifyType::TS_UNACCEPTABLE, rng);
            self.fail(Failure::LocalError(NotifyType::TS_UNACCEPTABLE));
            return State::Failed;
        }
        let spi_i_esp = match <[u8; 4]>::try_from(chosen.spi.as_slice()) {
            Ok(a) => u32::from_be_bytes(a),
            Err(_) => return State::Failed,
        };
        let esp_spi = nonzero_u32(rng);
        let idr = self.config.local_id.clone();
        let octets_r = signed_octets(prf, &self.sa_init_response, &self.ni, &sk_pr, &idr.body_bytes());
        let auth_r = psk_auth(prf, &self.config.psk, &octets_r);
        let inner = vec![
            Payload::IdR(idr),
            Payload::Auth(AuthPayload { method: AuthMethod::SHARED_KEY_MIC, data: auth_r }),
            Payload::Sa(SaPayload { proposals: vec![chosen.to_proposal(esp_spi.to_be_bytes().to_vec())] }),
            Payload::TsI(tsi.clone()),
            Payload::TsR(tsr.clone()),
        ];
        let Some(child) = self.child_sa(&chosen, spi_i_esp, esp_spi, tsi.clone(), tsr.clone()) else {
            return State::Failed;
        };
        let header = self.header(ExchangeType::IKE_AUTH, 1, true);
        let Some(out) = self.outbound.as_mut() else {
            return State::Failed;
        };
        let Ok(resp) = out.seal(&header, &[], &inner, rng) else {
            return State::Failed;
        };
        self.send_response(1, resp);
        self.events.push_back(Event::Established(child));
        State::Established
    }

    // ------------------------------------------------------------------------------------------
    // Initiator

    fn on_sa_init_response<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        bytes: &[u8],
        dh: DhPrivate,
        rng: &mut R,
    ) -> State {
        let Ok(m) = Message::parse(bytes) else {
            return State::ExpectSaInitResponse { dh };
        };
        let h = m.header;
        if h.exchange_type != ExchangeType::IKE_SA_INIT
            || !h.flags.response
            || h.message_id != 0
            || h.spi_i != self.spi_i
        {
            return State::ExpectSaInitResponse { dh };
        }
        if let Some(n) = m.payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
            _ => None,
        }) {
            // Unauthenticated error: RFC 7296 §2.21.1 lets us wait for a better answer, but with
            // no retry logic yet we give up (INVALID_KE_PAYLOAD retry is future work).
            self.fail(Failure::PeerError(n));
            return State::Failed;
        }
        use crate::message::PayloadType as T;
        let (Some(Payload::Sa(sa)), Some(Payload::Ke(ke)), Some(Payload::Nonce(nr))) =
            (m.find(T::SA), m.find(T::KE), m.find(T::NONCE))
        else {
            return State::ExpectSaInitResponse { dh };
        };
        // The answer must be exactly one proposal that our own configuration accepts, with the
        // group we sent.
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
        self.spi_r = h.spi_r;
        self.nr.clone_from(nr);
        self.sa_init_response = bytes.to_vec();
        if !self.install_keys(&chosen, &g_ir) {
            return State::Failed;
        }
        self.pending = None;
        self.send_auth_request(now, rng)
    }

    fn send_auth_request<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> State {
        let Some((prf, sk_pi)) = self.keys.as_ref().map(|k| (k.suite.prf, k.sk_pi.clone())) else {
            return State::Failed;
        };
        let idi = self.config.local_id.clone();
        let octets = signed_octets(prf, &self.sa_init_request, &self.nr, &sk_pi, &idi.body_bytes());
        let auth = psk_auth(prf, &self.config.psk, &octets);
        let esp_spi = nonzero_u32(rng);
        let esp_offer = build_offer(&self.config.esp_proposals, &esp_spi.to_be_bytes());
        let inner = vec![
            Payload::IdI(idi),
            Payload::Auth(AuthPayload { method: AuthMethod::SHARED_KEY_MIC, data: auth }),
            Payload::Sa(SaPayload { proposals: esp_offer.clone() }),
            Payload::TsI(self.config.ts_i.clone()),
            Payload::TsR(self.config.ts_r.clone()),
        ];
        let header = self.header(ExchangeType::IKE_AUTH, 1, false);
        let Some(out) = self.outbound.as_mut() else {
            return State::Failed;
        };
        match out.seal(&header, &[], &inner, rng) {
            Ok(bytes) => {
                self.send_request(bytes, now);
                State::ExpectAuthResponse { esp_offer, esp_spi }
            }
            Err(_) => {
                self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
                State::Failed
            }
        }
    }

    fn on_auth_response(&mut self, bytes: &[u8], esp_offer: Vec<Proposal>, esp_spi: u32) -> State {
        let keep = |o, s| State::ExpectAuthResponse { esp_offer: o, esp_spi: s };
        let Some(inbound) = self.inbound.as_ref() else {
            return keep(esp_offer, esp_spi);
        };
        let Ok(opened) = inbound.open(bytes) else {
            return keep(esp_offer, esp_spi);
        };
        let h = opened.header;
        if h.exchange_type != ExchangeType::IKE_AUTH
            || !h.flags.response
            || h.message_id != 1
            || (h.spi_i, h.spi_r) != (self.spi_i, self.spi_r)
        {
            return keep(esp_offer, esp_spi);
        }
        self.pending = None;
        let p = &opened.inner;
        if let Some(n) = p.iter().find_map(|x| match x {
            Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
            _ => None,
        }) {
            self.fail(Failure::PeerError(n));
            return State::Failed;
        }
        use crate::message::PayloadType as T;
        let find = |t| p.iter().find(|x: &&Payload| x.payload_type() == t);
        let (
            Some(Payload::IdR(idr)),
            Some(Payload::Auth(auth)),
            Some(Payload::Sa(sa)),
            Some(Payload::TsI(tsi)),
            Some(Payload::TsR(tsr)),
        ) = (find(T::IDR), find(T::AUTH), find(T::SA), find(T::TSI), find(T::TSR))
        else {
            self.fail(Failure::LocalError(NotifyType::INVALID_SYNTAX));
            return State::Failed;
        };
        let Some((prf, sk_pr)) = self.keys.as_ref().map(|k| (k.suite.prf, k.sk_pr.clone())) else {
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
        // The reply must be one proposal that we offered (same number) and accept.
        let chosen = match sa.proposals.as_slice() {
            [reply] => select_proposal(std::slice::from_ref(reply), &self.config.esp_proposals)
                .ok()
                .filter(|c| esp_offer.iter().any(|o| o.number == c.number)),
            _ => None,
        };
        let Some(chosen) = chosen.filter(|c| c.dh.is_none()) else {
            self.fail(Failure::LocalError(NotifyType::NO_PROPOSAL_CHOSEN));
            return State::Failed;
        };
        let Ok(spi_r_esp) = <[u8; 4]>::try_from(chosen.spi.as_slice()).map(u32::from_be_bytes) else {
            return State::Failed;
        };
        if !ts_within(tsi, &self.config.ts_i) || !ts_within(tsr, &self.config.ts_r) {
            self.fail(Failure::LocalError(NotifyType::TS_UNACCEPTABLE));
            return State::Failed;
        }
        let Some(child) = self.child_sa(&chosen, esp_spi, spi_r_esp, tsi.clone(), tsr.clone()) else {
            return State::Failed;
        };
        self.events.push_back(Event::Established(child));
        State::Established
    }

    // ------------------------------------------------------------------------------------------
    // Helpers

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

    fn install_keys(&mut self, chosen: &ChosenProposal, g_ir: &SecretBytes) -> bool {
        let Some(prf) = chosen.prf else {
            return false;
        };
        let suite = IkeSuite { encr: chosen.encr, prf, integ: chosen.integ };
        let Ok(keys) = IkeSaKeys::derive_initial(suite, g_ir.expose(), &self.ni, &self.nr, self.spi_i, self.spi_r)
        else {
            return false;
        };
        match (keys.outbound(self.initiator), keys.inbound(self.initiator)) {
            (Ok(o), Ok(i)) => {
                self.outbound = Some(o);
                self.inbound = Some(i);
                self.keys = Some(keys);
                true
            }
            _ => false,
        }
    }

    fn child_sa(
        &self,
        chosen: &ChosenProposal,
        spi_i: u32,
        spi_r: u32,
        ts_i: Vec<TrafficSelector>,
        ts_r: Vec<TrafficSelector>,
    ) -> Option<ChildSa> {
        let k = self.keys.as_ref()?;
        let keys = child_keymat(k.suite.prf, &k.sk_d, None, &self.ni, &self.nr, chosen.encr, chosen.integ).ok()?;
        Some(ChildSa { spi_i, spi_r, encr: chosen.encr, integ: chosen.integ, esn: chosen.esn?, keys, ts_i, ts_r })
    }

    fn send_request(&mut self, bytes: Vec<u8>, now: Instant) {
        let interval = self.config.retransmit_initial;
        self.transmits.push_back(bytes.clone());
        self.pending = Some(Retransmit { bytes, next: now + interval, interval, count: 0 });
    }

    fn send_response(&mut self, message_id: u32, bytes: Vec<u8>) {
        self.transmits.push_back(bytes.clone());
        self.last_response = Some((message_id, bytes));
    }

    fn reply_error_unprotected(&mut self, req: Header, t: NotifyType, data: Vec<u8>) {
        let m = Message {
            header: Header { flags: Flags { initiator: false, version: false, response: true }, ..req },
            payloads: vec![Payload::Notify(NotifyPayload::new(t, data))],
        };
        if let Ok(b) = m.emit() {
            // Stateless: not cached, the request will be answered again if retransmitted.
            self.transmits.push_back(b);
        }
    }

    fn reply_error_protected<R: CryptoRng + ?Sized>(&mut self, mid: u32, t: NotifyType, rng: &mut R) {
        let header = self.header(ExchangeType::IKE_AUTH, mid, true);
        let inner = [Payload::Notify(NotifyPayload::new(t, vec![]))];
        let Some(out) = self.outbound.as_mut() else {
            return;
        };
        if let Ok(b) = out.seal(&header, &[], &inner, rng) {
            self.send_response(mid, b);
        }
    }

    fn fail(&mut self, why: Failure) {
        self.pending = None;
        self.state = State::Failed;
        self.events.push_back(Event::Failed(why));
    }
}

/// Whether every selector of `offered` lies inside one of `allowed`.
fn ts_within(offered: &[TrafficSelector], allowed: &[TrafficSelector]) -> bool {
    !offered.is_empty() && offered.iter().all(|o| allowed.iter().any(|a| ts_contains(a, o)))
}

fn ts_contains(outer: &TrafficSelector, inner: &TrafficSelector) -> bool {
    let proto = outer.ip_protocol == 0 || outer.ip_protocol == inner.ip_protocol;
    let ports = outer.start_port <= inner.start_port && inner.end_port <= outer.end_port;
    let addrs = match (outer.range, inner.range) {
        (AddressRange::V4 { start: os, end: oe }, AddressRange::V4 { start: is, end: ie }) => {
            os <= is && ie <= oe && is <= ie
        }
        (AddressRange::V6 { start: os, end: oe }, AddressRange::V6 { start: is, end: ie }) => {
            os <= is && ie <= oe && is <= ie
        }
        _ => false,
    };
    proto && ports && addrs
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::crypto::dh::DhGroup;
    use crate::crypto::keys::ChildKeys;
    use crate::test_util::rng;
    use crate::transforms::PrfAlg;

    fn ike_spec(encr: EncrAlg, integ: Option<IntegAlg>, dh: Vec<DhGroup>) -> ProposalSpec {
        ProposalSpec {
            protocol: ProtocolId::IKE,
            encr: vec![encr],
            prf: vec![PrfAlg::HmacSha256],
            integ: integ.into_iter().collect(),
            dh,
            esn: vec![],
        }
    }

    fn esp_spec() -> ProposalSpec {
        ProposalSpec {
            protocol: ProtocolId::ESP,
            encr: vec![EncrAlg::AES128_GCM16, EncrAlg::AES256_CBC],
            prf: vec![],
            integ: vec![IntegAlg::HmacSha256_128],
            dh: vec![],
            esn: vec![Esn::No],
        }
    }

    fn net(a: u8) -> TrafficSelector {
        TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: 0xffff,
            range: AddressRange::V4 { start: Ipv4Addr::new(10, a, 0, 0), end: Ipv4Addr::new(10, a, 255, 255) },
        }
    }

    fn config(local: &str, remote: &str, psk: &[u8]) -> Config {
        Config {
            ike_proposals: vec![ike_spec(EncrAlg::AES256_CBC, Some(IntegAlg::HmacSha256_128), vec![DhGroup::Ecp256])],
            esp_proposals: vec![esp_spec()],
            local_id: Identification::Fqdn(local.as_bytes().to_vec()),
            remote_id: Some(Identification::Fqdn(remote.as_bytes().to_vec())),
            psk: SecretBytes::from_slice(psk),
            ts_i: vec![net(1)],
            ts_r: vec![net(2)],
            retransmit_initial: Duration::from_millis(500),
            retransmit_max: 3,
        }
    }

    /// Two endpoints wired together in memory.
    struct Pair {
        now: Instant,
        rng: ChaCha20Rng,
        i: IkeSa,
        r: IkeSa,
        /// Datagrams carried so far, initiator→responder and back.
        to_r: Vec<Vec<u8>>,
        to_i: Vec<Vec<u8>>,
        /// Drop the n-th datagram from the responder (0-based), once.
        drop_to_i: Option<usize>,
    }

    impl Pair {
        fn new(ci: Config, cr: Config) -> Self {
            let now = Instant::now();
            let mut rng = rng(42);
            let i = IkeSa::initiate(ci, now, &mut rng);
            Pair { now, rng, i, r: IkeSa::respond(cr), to_r: Vec::new(), to_i: Vec::new(), drop_to_i: None }
        }

        /// Delivers datagrams both ways until neither side has anything to send.
        fn drive(&mut self) {
            loop {
                let mut moved = false;
                while let Some(d) = self.i.poll_transmit(self.now) {
                    self.r.handle(self.now, &d, &mut self.rng);
                    self.to_r.push(d);
                    moved = true;
                }
                while let Some(d) = self.r.poll_transmit(self.now) {
                    let n = self.to_i.len();
                    self.to_i.push(d.clone());
                    if self.drop_to_i == Some(n) {
                        self.drop_to_i = None;
                    } else {
                        self.i.handle(self.now, &d, &mut self.rng);
                    }
                    moved = true;
                }
                if !moved {
                    return;
                }
            }
        }

        /// Advances time to the initiator's next timer and fires it.
        fn fire_timer(&mut self) -> bool {
            match self.i.poll_timeout() {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.i.handle_timeout(self.now);
                    true
                }
                None => false,
            }
        }

        fn established(&mut self) -> (ChildSa, ChildSa) {
            let ci = match self.i.poll_event() {
                Some(Event::Established(c)) => c,
                other => panic!("initiator: {other:?} in {}", self.i.state_name()),
            };
            let cr = match self.r.poll_event() {
                Some(Event::Established(c)) => c,
                other => panic!("responder: {other:?} in {}", self.r.state_name()),
            };
            (ci, cr)
        }
    }

    fn assert_same_keys(a: &ChildKeys, b: &ChildKeys) {
        assert_eq!(a, b);
        assert!(!a.encr_i.is_empty() && a.encr_i != a.encr_r);
    }

    #[test]
    fn pair_establishes_ike_sa_and_child_sa_with_identical_keys() {
        let mut p = Pair::new(
            config("alice.example", "bob.example", b"s3cret"),
            config("bob.example", "alice.example", b"s3cret"),
        );
        assert_eq!(p.i.state_name(), "ExpectSaInitResponse");
        assert_eq!(p.r.state_name(), "ExpectSaInitRequest");
        p.drive();
        assert_eq!(p.i.state_name(), "Established");
        assert_eq!(p.r.state_name(), "Established");
        assert_eq!(p.to_r.len(), 2, "IKE_SA_INIT and IKE_AUTH requests");
        assert_eq!(p.to_i.len(), 2);
        assert_eq!(p.i.spis(), p.r.spis());
        assert_eq!(p.i.keys(), p.r.keys());
        let (ci, cr) = p.established();
        assert_eq!((ci.spi_i, ci.spi_r), (cr.spi_i, cr.spi_r));
        assert_ne!(ci.spi_i, ci.spi_r);
        assert_eq!(ci.encr, EncrAlg::AES128_GCM16);
        assert_eq!(ci.integ, None);
        assert_eq!(ci.esn, Esn::No);
        assert_same_keys(&ci.keys, &cr.keys);
        assert_eq!(ci.keys.encr_i.len(), 20);
        assert_eq!(ci.ts_i, vec![net(1)]);
        assert_eq!(ci.ts_r, vec![net(2)]);
        assert_eq!(p.i.poll_timeout(), None, "nothing outstanding");
        // The IKE_AUTH messages really are encrypted: the PSK-derived AUTH and IDs are not in clear.
        assert!(!p.to_r[1].windows(13).any(|w| w == b"alice.example"));
        // Independent check of the Child SA keys from the IKE SA keys.
        let k = p.i.keys().unwrap();
        let want = child_keymat(k.suite.prf, &k.sk_d, None, &p.i.ni, &p.i.nr, EncrAlg::AES128_GCM16, None).unwrap();
        assert_eq!(ci.keys, want);
    }

    #[test]
    fn pair_with_other_suites() {
        for (encr, integ, group) in [
            (EncrAlg::AES128_GCM16, None, DhGroup::Curve25519),
            (EncrAlg::AES128_CBC, Some(IntegAlg::HmacSha1_96), DhGroup::Modp2048),
            (EncrAlg::TripleDes, Some(IntegAlg::HmacSha512_256), DhGroup::Ecp384),
        ] {
            let mut ci = config("a", "b", b"k");
            let mut cr = config("b", "a", b"k");
            ci.ike_proposals = vec![ike_spec(encr, integ, vec![group])];
            cr.ike_proposals = ci.ike_proposals.clone();
            ci.esp_proposals[0].encr = vec![EncrAlg::AES256_CBC];
            cr.esp_proposals[0].encr = vec![EncrAlg::AES256_CBC];
            let mut p = Pair::new(ci, cr);
            p.drive();
            let (a, b) = p.established();
            assert_same_keys(&a.keys, &b.keys);
            assert_eq!(a.integ, Some(IntegAlg::HmacSha256_128));
            assert_eq!(a.keys.integ_i.len(), 32);
            assert_eq!(p.i.keys().unwrap().suite.encr, encr);
        }
    }

    #[test]
    fn wrong_psk_fails_on_both_sides() {
        let mut p =
            Pair::new(config("alice.example", "bob.example", b"one"), config("bob.example", "alice.example", b"two"));
        p.drive();
        assert_eq!(p.r.poll_event(), Some(Event::Failed(Failure::LocalError(NotifyType::AUTHENTICATION_FAILED))));
        assert_eq!(p.i.poll_event(), Some(Event::Failed(Failure::PeerError(NotifyType::AUTHENTICATION_FAILED))));
        assert_eq!(p.i.state_name(), "Failed");
    }

    #[test]
    fn unexpected_peer_identity_fails() {
        let mut p =
            Pair::new(config("mallory.example", "bob.example", b"k"), config("bob.example", "alice.example", b"k"));
        p.drive();
        assert_eq!(p.r.poll_event(), Some(Event::Failed(Failure::LocalError(NotifyType::AUTHENTICATION_FAILED))));
    }

    #[test]
    fn no_common_ike_proposal() {
        let ci = config("a", "b", b"k");
        let mut cr = config("b", "a", b"k");
        cr.ike_proposals[0].encr = vec![EncrAlg::AES128_CBC];
        let mut p = Pair::new(ci, cr);
        p.drive();
        assert_eq!(p.i.poll_event(), Some(Event::Failed(Failure::PeerError(NotifyType::NO_PROPOSAL_CHOSEN))));
        assert_eq!(p.r.state_name(), "ExpectSaInitRequest", "responder keeps no state");
    }

    #[test]
    fn wrong_ke_group_gets_invalid_ke_payload() {
        let mut ci = config("a", "b", b"k");
        ci.ike_proposals[0].dh = vec![DhGroup::Ecp256, DhGroup::Curve25519];
        let mut cr = config("b", "a", b"k");
        cr.ike_proposals[0].dh = vec![DhGroup::Curve25519];
        let mut p = Pair::new(ci, cr);
        p.drive();
        let resp = Message::parse(&p.to_i[0]).unwrap();
        let n: Vec<_> = resp.notifies(NotifyType::INVALID_KE_PAYLOAD).collect();
        assert_eq!(n[0].data, 31u16.to_be_bytes());
        assert_eq!(p.i.poll_event(), Some(Event::Failed(Failure::PeerError(NotifyType::INVALID_KE_PAYLOAD))));
    }

    #[test]
    fn unacceptable_traffic_selectors() {
        let mut ci = config("a", "b", b"k");
        ci.ts_r = vec![net(3)];
        let mut p = Pair::new(ci, config("b", "a", b"k"));
        p.drive();
        assert_eq!(p.i.poll_event(), Some(Event::Failed(Failure::PeerError(NotifyType::TS_UNACCEPTABLE))));
    }

    #[test]
    fn lost_auth_response_is_recovered_by_retransmission() {
        let mut p = Pair::new(config("a", "b", b"k"), config("b", "a", b"k"));
        p.drop_to_i = Some(1); // the IKE_AUTH response
        p.drive();
        assert_eq!(p.i.state_name(), "ExpectAuthResponse");
        assert_eq!(p.r.state_name(), "Established");
        let before = p.now;
        assert!(p.fire_timer());
        assert!(p.now >= before + Duration::from_millis(500));
        p.drive();
        assert_eq!(p.i.state_name(), "Established");
        // The responder answered the retransmitted request with the identical cached response.
        assert_eq!(p.to_r[1], p.to_r[2]);
        assert_eq!(p.to_i[1], p.to_i[2]);
        p.established();
    }

    #[test]
    fn silent_peer_times_out_with_backoff() {
        let now = Instant::now();
        let mut r = rng(1);
        let mut i = IkeSa::initiate(config("a", "b", b"k"), now, &mut r);
        let first = i.poll_transmit(now).unwrap();
        let mut deadlines = Vec::new();
        while let Some(t) = i.poll_timeout() {
            deadlines.push(t - now);
            i.handle_timeout(t);
            if let Some(d) = i.poll_transmit(t) {
                assert_eq!(d, first, "retransmissions are identical");
            }
        }
        assert_eq!(
            deadlines,
            vec![
                Duration::from_millis(500),
                Duration::from_millis(1500),
                Duration::from_millis(3500),
                Duration::from_millis(7500),
            ]
        );
        assert_eq!(i.poll_event(), Some(Event::Failed(Failure::Timeout)));
        // Early timer calls do nothing.
        let mut i = IkeSa::initiate(config("a", "b", b"k"), now, &mut r);
        i.handle_timeout(now);
        assert!(i.poll_transmit(now).is_some());
        assert!(i.poll_transmit(now).is_none());
    }

    #[test]
    fn garbage_and_replays_are_ignored() {
        let mut p = Pair::new(config("a", "b", b"k"), config("b", "a", b"k"));
        p.drive();
        p.established();
        let mut rng = rng(5);
        // Garbage, truncated and tampered copies change nothing.
        for d in [vec![0u8; 10], p.to_r[1][..40].to_vec()] {
            p.r.handle(p.now, &d, &mut rng);
            p.i.handle(p.now, &d, &mut rng);
        }
        let mut bad = p.to_i[1].clone();
        *bad.last_mut().unwrap() ^= 1;
        p.i.handle(p.now, &bad, &mut rng);
        assert_eq!(p.i.state_name(), "Established");
        assert!(p.i.poll_event().is_none() && p.r.poll_event().is_none());
        // A replayed IKE_AUTH request is answered from the cache, nothing else happens.
        p.r.handle(p.now, &p.to_r[1].clone(), &mut rng);
        assert_eq!(p.r.poll_transmit(p.now), Some(p.to_i[1].clone()));
        assert!(p.r.poll_event().is_none());
    }
}
