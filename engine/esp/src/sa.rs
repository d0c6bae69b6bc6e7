//! Security Associations: the configuration the control side installs ([`SaConfig`]) and the
//! runtime objects the workers use ([`OutboundSa`], [`InboundSa`]).
//!
//! A runtime SA is built once from its configuration: keys are expanded through the
//! [`CryptoProvider`] at that point, and key material is dropped (zeroized) with the config. After
//! that the SA is shared read-only by every worker (`Arc`), except for its atomics: the outbound
//! sequence counter, the replay window, the counters and the lifetime flags.
//!
//! Construction fails with a [`SaError`] naming the problem (bad key length, AEAD combined with a
//! separate integrity transform, encryption without integrity, bad replay window, unsupported
//! algorithm); an SA that was built is always usable.

use crate::counters::SaCounters;
use crate::crypto::{AeadKey, Cipher, CipherKey, CryptoError, CryptoProvider, Integrity, MacKey, GCM_SALT_LEN};
use crate::events::{Direction, EventQueue};
use crate::lifetime::{EventCtx, Lifetime, LifetimeState};
use crate::replay::{ReplayWindow, SeqCounter};
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::time::Instant;
use zeroize::Zeroizing;

/// UDP encapsulation of ESP (RFC 3948): the outer UDP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpEncap {
    /// Our port (normally 4500).
    pub local_port: u16,
    /// The peer's port (4500, or whatever its NAT mapped it to).
    pub remote_port: u16,
}

impl UdpEncap {
    /// Both sides on 4500.
    pub const STANDARD: UdpEncap = UdpEncap { local_port: 4500, remote_port: 4500 };
}

/// How the outer IPv4 header's Don't-Fragment bit is set (RFC 4301 §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DfPolicy {
    /// Copy DF from an inner IPv4 header; set it for inner IPv6 (which never fragments en route).
    #[default]
    Copy,
    Clear,
    Set,
}

/// How the outer DSCP is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DscpPolicy {
    /// Copy the inner packet's DSCP (RFC 2983 uniform model on encap).
    #[default]
    Copy,
    /// Always use this value (0–63).
    Set(u8),
}

/// Everything needed to build an SA. Key material is zeroized on drop and never printed.
#[derive(Clone)]
pub struct SaConfig {
    pub spi: u32,
    pub cipher: Cipher,
    /// Encryption key material: the key, plus the 4-byte salt for AES-GCM (RFC 4106 §8.1).
    pub enc_key: Zeroizing<Vec<u8>>,
    pub integrity: Integrity,
    pub auth_key: Zeroizing<Vec<u8>>,
    /// Extended (64-bit) sequence numbers.
    pub esn: bool,
    /// Inbound replay window in packets; 0 disables replay protection (manual SAs only).
    pub replay_window: u32,
    /// Our outer (tunnel) address.
    pub local: IpAddr,
    /// The peer's outer (tunnel) address.
    pub remote: IpAddr,
    pub encap: Option<UdpEncap>,
    /// Traffic selectors: protected subnets on our side.
    pub local_ts: Vec<IpNet>,
    /// Traffic selectors: protected subnets on the peer's side.
    pub remote_ts: Vec<IpNet>,
    pub lifetime: Lifetime,
    pub df: DfPolicy,
    pub dscp: DscpPolicy,
    /// Outer TTL / hop limit.
    pub ttl: u8,
    /// Outer path MTU towards the peer, when smaller than the outside link's MTU (an operator's
    /// per-tunnel override); `None`: the link MTU. See [`OutboundSa::inner_mtu`].
    pub mtu: Option<u16>,
}

impl fmt::Debug for SaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaConfig")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("cipher", &self.cipher)
            .field("enc_key", &"<redacted>")
            .field("integrity", &self.integrity)
            .field("auth_key", &"<redacted>")
            .field("esn", &self.esn)
            .field("replay_window", &self.replay_window)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("encap", &self.encap)
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .field("lifetime", &self.lifetime)
            .field("df", &self.df)
            .field("dscp", &self.dscp)
            .field("ttl", &self.ttl)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl SaConfig {
    /// A config with the defaults an operator would expect: 1024-packet replay window, no ESN,
    /// no UDP encapsulation, selectors "any", DF copied, DSCP copied, TTL 64, no lifetime.
    pub fn new(
        spi: u32,
        cipher: Cipher,
        enc_key: &[u8],
        integrity: Integrity,
        auth_key: &[u8],
        local: IpAddr,
        remote: IpAddr,
    ) -> Self {
        let any = |a: IpAddr| -> IpNet {
            match a {
                IpAddr::V4(_) => "0.0.0.0/0".parse().expect("literal"),
                IpAddr::V6(_) => "::/0".parse().expect("literal"),
            }
        };
        SaConfig {
            spi,
            cipher,
            enc_key: Zeroizing::new(enc_key.to_vec()),
            integrity,
            auth_key: Zeroizing::new(auth_key.to_vec()),
            esn: false,
            replay_window: crate::replay::DEFAULT_WINDOW,
            local,
            remote,
            encap: None,
            local_ts: vec![
                any(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                any(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            ],
            remote_ts: vec![
                any(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                any(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            ],
            lifetime: Lifetime::default(),
            df: DfPolicy::Copy,
            dscp: DscpPolicy::Copy,
            ttl: 64,
            mtu: None,
        }
    }

    fn validate(&self) -> Result<(), SaError> {
        if self.spi < 256 {
            // RFC 4303 §2.1: 1–255 are reserved by IANA, 0 is local-use only.
            return Err(SaError::ReservedSpi(self.spi));
        }
        if self.cipher.is_aead() && self.integrity != Integrity::None {
            return Err(SaError::AeadWithIntegrity);
        }
        if !self.cipher.is_aead() && self.cipher != Cipher::Null && self.integrity == Integrity::None {
            return Err(SaError::NoIntegrity);
        }
        if self.enc_key.len() != self.cipher.keymat_len() {
            return Err(SaError::Crypto(CryptoError::KeyLength {
                expected: self.cipher.keymat_len(),
                got: self.enc_key.len(),
            }));
        }
        if self.auth_key.len() != self.integrity.key_len() {
            return Err(SaError::Crypto(CryptoError::KeyLength {
                expected: self.integrity.key_len(),
                got: self.auth_key.len(),
            }));
        }
        if self.local.is_ipv4() != self.remote.is_ipv4() {
            return Err(SaError::MixedOuterFamilies);
        }
        if let DscpPolicy::Set(d) = self.dscp {
            if d > 63 {
                return Err(SaError::BadDscp(d));
            }
        }
        if self.ttl == 0 {
            return Err(SaError::ZeroTtl);
        }
        Ok(())
    }
}

/// Why an SA could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaError {
    Crypto(CryptoError),
    ReservedSpi(u32),
    AeadWithIntegrity,
    NoIntegrity,
    MixedOuterFamilies,
    BadReplayWindow(u32),
    BadDscp(u8),
    ZeroTtl,
}

impl fmt::Display for SaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaError::Crypto(e) => write!(f, "crypto: {e}"),
            SaError::ReservedSpi(s) => write!(f, "SPI {s} is reserved (must be >= 256)"),
            SaError::AeadWithIntegrity => {
                f.write_str("an AEAD cipher must not be combined with a separate integrity algorithm")
            }
            SaError::NoIntegrity => {
                f.write_str("encryption without integrity is refused; choose an integrity algorithm")
            }
            SaError::MixedOuterFamilies => f.write_str("local and remote tunnel addresses must be of the same family"),
            SaError::BadReplayWindow(w) => {
                write!(f, "replay window {w} out of range (0 or 32..={})", crate::replay::MAX_WINDOW)
            }
            SaError::BadDscp(d) => write!(f, "DSCP {d} out of range 0-63"),
            SaError::ZeroTtl => f.write_str("outer TTL must be at least 1"),
        }
    }
}

impl std::error::Error for SaError {}

impl From<CryptoError> for SaError {
    fn from(e: CryptoError) -> Self {
        SaError::Crypto(e)
    }
}

/// Expanded keys of one SA.
pub(crate) enum Transform {
    Aead {
        key: Box<dyn AeadKey>,
        salt: [u8; GCM_SALT_LEN],
    },
    Cbc {
        key: Box<dyn CipherKey>,
        mac: Box<dyn MacKey>,
    },
    /// NULL encryption with an integrity check (RFC 2410; tests and baselines).
    NullAuth {
        mac: Box<dyn MacKey>,
    },
    /// NULL encryption and no integrity: only for tests.
    Null,
}

impl Transform {
    fn new(cfg: &SaConfig, provider: &CryptoProvider) -> Result<Self, SaError> {
        let mac = |p: &CryptoProvider| p.mac_key(cfg.integrity, &cfg.auth_key);
        Ok(if cfg.cipher.is_aead() {
            let k = cfg.cipher.key_len();
            let mut salt = [0u8; GCM_SALT_LEN];
            salt.copy_from_slice(&cfg.enc_key[k..]);
            Transform::Aead { key: provider.aead_key(cfg.cipher, &cfg.enc_key[..k])?, salt }
        } else if cfg.cipher == Cipher::Null {
            if cfg.integrity == Integrity::None {
                Transform::Null
            } else {
                Transform::NullAuth { mac: mac(provider)? }
            }
        } else {
            Transform::Cbc { key: provider.cipher_key(cfg.cipher, &cfg.enc_key)?, mac: mac(provider)? }
        })
    }
}

/// Sizes derived from the transforms, used for layout on every packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub iv_len: u8,
    pub icv_len: u8,
    pub block_len: u8,
}

impl Layout {
    fn new(cipher: Cipher, integrity: Integrity) -> Self {
        Layout {
            iv_len: cipher.iv_len() as u8,
            icv_len: (cipher.icv_len() + integrity.icv_len()) as u8,
            block_len: cipher.block_len() as u8,
        }
    }
}

/// Fields shared by both directions.
pub(crate) struct SaCore {
    pub spi: u32,
    pub cipher: Cipher,
    pub integrity: Integrity,
    pub esn: bool,
    pub layout: Layout,
    pub transform: Transform,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub encap: Option<UdpEncap>,
    pub local_ts: Box<[IpNet]>,
    pub remote_ts: Box<[IpNet]>,
    pub lifetime: Lifetime,
    pub state: LifetimeState,
    pub counters: SaCounters,
}

impl SaCore {
    fn new(cfg: &SaConfig, provider: &CryptoProvider, now: Instant) -> Result<Self, SaError> {
        cfg.validate()?;
        Ok(SaCore {
            spi: cfg.spi,
            cipher: cfg.cipher,
            integrity: cfg.integrity,
            esn: cfg.esn,
            layout: Layout::new(cfg.cipher, cfg.integrity),
            transform: Transform::new(cfg, provider)?,
            local: cfg.local,
            remote: cfg.remote,
            encap: cfg.encap,
            local_ts: cfg.local_ts.clone().into_boxed_slice(),
            remote_ts: cfg.remote_ts.clone().into_boxed_slice(),
            lifetime: cfg.lifetime,
            state: LifetimeState::new(now),
            counters: SaCounters::default(),
        })
    }

    pub(crate) fn event_ctx<'a>(&'a self, direction: Direction, events: &'a EventQueue) -> EventCtx<'a> {
        EventCtx { spi: self.spi, direction, lifetime: &self.lifetime, events }
    }
}

/// Does `addr` fall in any of `nets`?
#[inline]
pub(crate) fn selector_contains(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&addr))
}

/// An outbound SA: encrypts traffic towards the peer.
pub struct OutboundSa {
    pub(crate) core: SaCore,
    pub(crate) seq: SeqCounter,
    pub(crate) df: DfPolicy,
    pub(crate) dscp: DscpPolicy,
    pub(crate) ttl: u8,
    pub(crate) mtu: Option<u16>,
}

impl OutboundSa {
    /// Builds the SA, expanding its keys with `provider`. `now` starts its lifetime clock; the
    /// first packet gets sequence number 1.
    pub fn new(cfg: &SaConfig, provider: &CryptoProvider, now: Instant) -> Result<Self, SaError> {
        Self::resume(cfg, provider, now, 0)
    }

    /// Rebuilds an SA that already sent packets up to sequence number `last_seq` (e.g. when the
    /// control side republishes its SAs to a restarted engine): numbers, and so AES-GCM IVs, must
    /// never repeat under a key. A `last_seq` at or past the SA's limit yields an exhausted SA.
    pub fn resume(cfg: &SaConfig, provider: &CryptoProvider, now: Instant, last_seq: u64) -> Result<Self, SaError> {
        Ok(OutboundSa {
            core: SaCore::new(cfg, provider, now)?,
            seq: SeqCounter::starting_after(last_seq),
            df: cfg.df,
            dscp: cfg.dscp,
            ttl: cfg.ttl,
            mtu: cfg.mtu,
        })
    }

    pub fn spi(&self) -> u32 {
        self.core.spi
    }

    /// The peer's outer (tunnel) address.
    pub fn remote(&self) -> IpAddr {
        self.core.remote
    }

    pub fn counters(&self) -> &SaCounters {
        &self.core.counters
    }

    pub fn cipher(&self) -> Cipher {
        self.core.cipher
    }

    pub fn integrity(&self) -> Integrity {
        self.core.integrity
    }

    /// Last sequence number handed out (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.seq.last_used()
    }

    pub fn is_expired(&self) -> bool {
        self.core.state.is_expired()
    }

    /// Housekeeping: checks time limits of an idle SA. Returns `false` once expired.
    pub fn poll_lifetime(&self, events: &EventQueue, now: Instant) -> bool {
        self.core.state.poll_time(self.core.event_ctx(Direction::Outbound, events), now)
    }

    /// Bytes of headers this SA puts in front of an inner packet (outer IP, UDP, ESP, IV).
    pub fn header_overhead(&self) -> usize {
        let ip = if self.core.local.is_ipv4() { 20 } else { 40 };
        ip + if self.core.encap.is_some() { 8 } else { 0 } + 8 + self.core.layout.iv_len as usize
    }

    /// Largest inner packet that fits an outer MTU of `mtu` bytes: `mtu` minus the outer IP
    /// header (20 / 40), the UDP header (8, if encapsulated), the ESP header (8), the IV, the
    /// ICV, and the trailer (pad length and next header, 2) with the padding the cipher's block
    /// needs. An inner packet of exactly this size encapsulates to at most `mtu` bytes, one
    /// byte more to more than `mtu` (tested per transform in `tests/mtu.rs`). 0 when nothing fits.
    pub fn max_inner_len(&self, mtu: usize) -> usize {
        let l = self.core.layout;
        let room = mtu.saturating_sub(self.header_overhead() + l.icv_len as usize);
        let block = l.block_len as usize;
        (room / block * block).saturating_sub(2)
    }

    /// The tunnel's inner MTU when the outside link's MTU is `link_mtu`: [`max_inner_len`] of
    /// the smaller of `link_mtu` and the SA's configured path MTU ([`SaConfig::mtu`]). What an
    /// ICMP "fragmentation needed" / "packet too big" reports to an inner sender.
    ///
    /// [`max_inner_len`]: Self::max_inner_len
    pub fn inner_mtu(&self, link_mtu: usize) -> usize {
        let outer = match self.mtu {
            Some(m) => link_mtu.min(usize::from(m)),
            None => link_mtu,
        };
        self.max_inner_len(outer)
    }
}

/// An inbound SA: decrypts and checks traffic from the peer.
pub struct InboundSa {
    pub(crate) core: SaCore,
    pub(crate) replay: Option<ReplayWindow>,
}

impl InboundSa {
    /// Builds the SA, expanding its keys with `provider`. `now` starts its lifetime clock.
    pub fn new(cfg: &SaConfig, provider: &CryptoProvider, now: Instant) -> Result<Self, SaError> {
        let replay = match cfg.replay_window {
            0 => None,
            w => Some(ReplayWindow::new(w, cfg.esn).map_err(|_| SaError::BadReplayWindow(w))?),
        };
        Ok(InboundSa { core: SaCore::new(cfg, provider, now)?, replay })
    }

    pub fn spi(&self) -> u32 {
        self.core.spi
    }

    /// Our outer address the SA receives on (the inbound table's second key).
    pub fn local(&self) -> IpAddr {
        self.core.local
    }

    pub fn counters(&self) -> &SaCounters {
        &self.core.counters
    }

    pub fn is_expired(&self) -> bool {
        self.core.state.is_expired()
    }

    /// Highest sequence number accepted so far.
    pub fn highest_seq(&self) -> u64 {
        self.replay.as_ref().map_or(0, |r| r.top())
    }

    /// Housekeeping: checks time limits of an idle SA. Returns `false` once expired.
    pub fn poll_lifetime(&self, events: &EventQueue, now: Instant) -> bool {
        self.core.state.poll_time(self.core.event_ctx(Direction::Inbound, events), now)
    }
}
