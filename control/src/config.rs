//! The connection config file (TOML), until the management API lands.
//!
//! ```toml
//! [daemon]                       # optional
//! listen = "198.18.0.1"          # default: local_addr of the first connection
//! ike_port = 500                 # default 500
//! natt_port = 4500               # default 4500
//! control_socket = "/run/ipsec-control/ctl.sock"
//! state_file = "/run/ipsec-control/state"   # written 0600 on every SA change
//! log_messages = true            # a line per IKE message sent and received (default true)
//!
//! [[connection]]
//! name = "site-b"
//! local_addr = "198.18.0.1"
//! remote_addr = "198.18.0.2"     # or "%any": respond only
//! local_subnets = ["192.0.2.0/24"]
//! remote_subnets = ["198.51.100.0/24", "203.0.113.0/24"]
//! psk = "secret"                 # or psk_file = "/path" (first line, trailing newline stripped)
//! ike_version = 2                # or 1: IKEv1 (main or aggressive mode, PSK; see below)
//! effect_immediately = true      # initiate at start; false: wait for `ipsec-control initiate`
//!                                # or, with --engine, for traffic (the engine's acquire)
//! enable_dpd = true
//! dpd_interval = 30              # seconds
//! dpd_timeout = 30
//! enable_nat_traversal = true
//! force_encap = false
//!
//! [connection.ike]               # the seed's IkeConfig ...
//! mode = "main"                  # IKEv1 only: main | aggressive (IkeConfig.IkeMode)
//! enc = "aes256"                 # aes | aes192 | aes256 | des | 3des
//! auth = "sha256"                # md5 | sha1 | sha256 | sha384 | sha512 (PRF and integrity)
//! dh_group = 14
//! lifetime = 86400
//! local_id = "198.18.0.1"        # IP, FQDN, or user@FQDN
//! remote_id = "198.18.0.2"       # default: the remote address
//! # proposals = ["aes128gcm16-prfsha256-ecp256"]   # ... or strongSwan-style proposals
//!
//! [connection.ipsec]             # the seed's IpsecConfig
//! enc = "aes256"
//! auth = "sha256"
//! pfs_group = 14                 # or "disabled"
//! lifetime = 3600
//! # proposals = ["aes128gcm16-ecp256"]
//! ```
//!
//! With `ike_version = 1` the same fields are mapped to the IKEv1 core ([`v1_config`]): each IKE
//! proposal's cipher × PRF × DH group becomes a phase-1 transform (CBC ciphers only), each ESP
//! proposal's cipher × integrity an ESP transform, the first ESP DH group the PFS group; the
//! identities and subnets are the same (one quick mode per local × remote subnet pair);
//! `force_encap` is IKEv2 only.
//!
//! Either the seed's single algorithm fields or `proposals` (strongSwan syntax: `-`-separated
//! tokens; a DH group in an ESP proposal means PFS) are given; `proposals` wins. Nothing here ever
//! prints the PSK: the raw document type has no `Debug`, and [`Connection`]'s `Debug` goes through
//! [`ipsec_ike::config::Config`]'s, which redacts it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use ipsec_ike::config::{Config, IKE_PORT, NATT_PORT};
use ipsec_ike::crypto::dh::DhGroup;
use ipsec_ike::message::{AddressRange, Identification, ProtocolId, TrafficSelector};
use ipsec_ike::transforms::{EncrAlg, Esn, IntegAlg, PrfAlg, ProposalSpec};
use ipsec_ike::v1::keys::HashAlg;
use ipsec_ike::v1::message::{IdPayload, Subnet};
pub use ipsec_ike::v1::sa::{Config as V1Config, Mode};
use ipsec_ike::v1::sa::{EspProposal, Phase1Proposal};
use serde::Deserialize;

/// A config error, with the connection and field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    daemon: DaemonDoc,
    #[serde(default)]
    connection: Vec<ConnDoc>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DaemonDoc {
    listen: Option<IpAddr>,
    ike_port: Option<u16>,
    natt_port: Option<u16>,
    control_socket: Option<PathBuf>,
    state_file: Option<PathBuf>,
    log_messages: Option<bool>,
}

// No `Debug`: it holds the PSK in clear.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnDoc {
    name: String,
    local_addr: IpAddr,
    remote_addr: String,
    remote_port: Option<u16>,
    #[serde(default)]
    local_subnets: Vec<String>,
    #[serde(default)]
    remote_subnets: Vec<String>,
    psk: Option<String>,
    psk_file: Option<PathBuf>,
    #[serde(default = "two")]
    ike_version: u8,
    #[serde(default = "yes")]
    effect_immediately: bool,
    #[serde(default = "yes")]
    enable_dpd: bool,
    dpd_interval: Option<u64>,
    dpd_timeout: Option<u64>,
    #[serde(default = "yes")]
    enable_nat_traversal: bool,
    #[serde(default)]
    force_encap: bool,
    #[serde(default)]
    ike: IkeDoc,
    #[serde(default)]
    ipsec: IpsecDoc,
}

fn two() -> u8 {
    2
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IkeDoc {
    enc: Option<String>,
    auth: Option<String>,
    dh_group: Option<u16>,
    lifetime: Option<u64>,
    local_id: Option<String>,
    remote_id: Option<String>,
    proposals: Option<Vec<String>>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Pfs {
    Group(u16),
    Word(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IpsecDoc {
    enc: Option<String>,
    auth: Option<String>,
    pfs_group: Option<Pfs>,
    lifetime: Option<u64>,
    proposals: Option<Vec<String>>,
}

/// Daemon-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSettings {
    /// The address both sockets are bound to.
    pub listen: IpAddr,
    /// Our IKE port (500).
    pub ike_port: u16,
    /// Our NAT-T port (4500).
    pub natt_port: u16,
    /// The local control socket (`ipsec-control initiate NAME`), if any.
    pub control_socket: Option<PathBuf>,
    /// The state file (0600), if any.
    pub state_file: Option<PathBuf>,
    /// Log a line per IKE message sent and received (SA events are always logged).
    pub log_messages: bool,
}

/// One configured connection. `Debug` never shows the PSK.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Its name.
    pub name: String,
    /// Our gateway address.
    pub local: IpAddr,
    /// The peer's gateway address; `None` (`%any`): we only respond.
    pub remote: Option<IpAddr>,
    /// The peer's IKE port.
    pub remote_port: u16,
    /// Initiate at start.
    pub effect_immediately: bool,
    /// Local subnets as prefixes.
    pub local_subnets: Vec<IpNet>,
    /// Remote subnets as prefixes (the forwarder routes them to its TUN).
    pub remote_subnets: Vec<IpNet>,
    /// The IKE core's configuration (PSK inside, redacted in `Debug`).
    pub ike: Config,
    /// IKEv1 (`ike_version = 1`): the IKEv1 core's configuration, derived from `ike` by
    /// [`v1_config`] (PSK redacted in `Debug`); `None`: IKEv2.
    pub v1: Option<V1Config>,
}

/// A parsed config file.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Daemon-wide settings.
    pub daemon: DaemonSettings,
    /// The connections.
    pub connections: Vec<Connection>,
}

impl DaemonConfig {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, or any invalid setting (the message names it).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text, path.parent())
    }

    /// Parses a config document; relative `psk_file`s are taken relative to `base`.
    ///
    /// # Errors
    /// TOML syntax, or any invalid setting (the message names it).
    pub fn parse(text: &str, base: Option<&Path>) -> Result<Self, ConfigError> {
        // toml's error messages quote the offending line, which may hold a PSK: keep only the
        // position and the reason.
        let doc: Doc = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!(" at byte {}", s.start)).unwrap_or_default();
            ConfigError(format!("config syntax{at}: {}", e.message()))
        })?;
        if doc.connection.is_empty() {
            return err("no [[connection]] in the config");
        }
        let ike_port = doc.daemon.ike_port.unwrap_or(IKE_PORT);
        let natt_port = doc.daemon.natt_port.unwrap_or(NATT_PORT);
        let mut connections = Vec::new();
        for c in doc.connection {
            if connections.iter().any(|o: &Connection| o.name == c.name) {
                return err(format!("connection {:?} defined twice", c.name));
            }
            connections.push(connection(c, natt_port, base)?);
        }
        let listen = doc.daemon.listen.unwrap_or(connections[0].local);
        if let Some(c) = connections.iter().find(|c| c.local != listen) {
            return err(format!(
                "connection {}: local_addr {} differs from the listen address {listen} (one address per daemon)",
                c.name, c.local
            ));
        }
        Ok(DaemonConfig {
            daemon: DaemonSettings {
                listen,
                ike_port,
                natt_port,
                control_socket: doc.daemon.control_socket,
                state_file: doc.daemon.state_file,
                log_messages: doc.daemon.log_messages.unwrap_or(true),
            },
            connections,
        })
    }
}

fn connection(c: ConnDoc, natt_port: u16, base: Option<&Path>) -> Result<Connection, ConfigError> {
    let name = c.name.clone();
    let ctx = |m: String| ConfigError(format!("connection {name}: {m}"));
    let mode = match (c.ike_version, c.ike.mode.as_deref()) {
        (2, None) => None,
        (2, Some(_)) => return Err(ctx("ike.mode (main|aggressive) is for IKEv1 (ike_version = 1) only".into())),
        (1, None | Some("main")) => Some(Mode::Main),
        (1, Some("aggressive")) => Some(Mode::Aggressive),
        (1, Some(m)) => return Err(ctx(format!("ike.mode {m:?}: main or aggressive"))),
        (v, _) => return Err(ctx(format!("ike_version = {v}: 1 or 2"))),
    };
    if mode.is_some() && c.force_encap {
        return Err(ctx("force_encap is not supported with IKEv1".into()));
    }
    if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(ctx("the name must be non-empty without spaces".into()));
    }
    let remote = match c.remote_addr.as_str() {
        "%any" | "any" | "0.0.0.0" | "::" => None,
        s => Some(s.parse::<IpAddr>().map_err(|_| ctx(format!("remote_addr {s:?} is not an IP address or %any")))?),
    };
    if remote.is_none() && c.effect_immediately {
        // A responder-only connection cannot initiate; that is not an error, just nothing to do.
    }
    let psk = match (c.psk, c.psk_file) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(f)) => {
            let f = match base {
                Some(b) if f.is_relative() => b.join(f),
                _ => f,
            };
            let mut v = std::fs::read(&f).map_err(|e| ctx(format!("psk_file {}: {}", f.display(), e.kind())))?;
            while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                v.pop();
            }
            v
        }
        (Some(_), Some(_)) => return Err(ctx("give psk or psk_file, not both".into())),
        (None, None) => return Err(ctx("a psk or psk_file is required".into())),
    };
    if psk.is_empty() {
        return Err(ctx("the PSK is empty".into()));
    }
    let local_subnets = subnets(&c.local_subnets).map_err(ctx)?;
    let remote_subnets = subnets(&c.remote_subnets).map_err(ctx)?;
    if local_subnets.is_empty() || remote_subnets.is_empty() {
        return Err(ctx("local_subnets and remote_subnets need at least one subnet each".into()));
    }

    let mut ike = Config::new(&psk);
    let mut psk = psk;
    psk.fill(0);
    ike.ike_proposals = ike_proposals(&c.ike).map_err(ctx)?;
    ike.esp_proposals = esp_proposals(&c.ipsec).map_err(ctx)?;
    if let Some(l) = c.ike.lifetime {
        ike.ike_lifetime = secs(l).map_err(|m| ctx(format!("ike.lifetime: {m}")))?;
    }
    if let Some(l) = c.ipsec.lifetime {
        ike.child_lifetime = secs(l).map_err(|m| ctx(format!("ipsec.lifetime: {m}")))?;
    }
    ike.local_id = c.ike.local_id.as_deref().map(identification);
    ike.remote_id = match (c.ike.remote_id.as_deref(), remote) {
        (Some(id), _) => Some(identification(id)),
        (None, Some(ip)) => Some(ip_id(ip)),
        (None, None) => None,
    };
    ike.local_ts = local_subnets.iter().map(selector).collect();
    ike.remote_ts = remote_subnets.iter().map(selector).collect();
    ike.dpd_interval = if c.enable_dpd { Some(Duration::from_secs(c.dpd_interval.unwrap_or(30).max(1))) } else { None };
    if let Some(t) = c.dpd_timeout {
        ike.dpd_timeout = Duration::from_secs(t.max(1));
    }
    ike.nat_traversal = c.enable_nat_traversal;
    if c.force_encap && !c.enable_nat_traversal {
        return Err(ctx("force_encap needs enable_nat_traversal".into()));
    }
    ike.force_encap = c.force_encap;
    ike.natt_port = natt_port;
    let v1 = match mode {
        Some(m) => Some(v1_config(&ike, m, &local_subnets, &remote_subnets).map_err(ctx)?),
        None => None,
    };
    Ok(Connection {
        name,
        local: c.local_addr,
        remote,
        remote_port: c.remote_port.unwrap_or(IKE_PORT),
        effect_immediately: c.effect_immediately && remote.is_some(),
        local_subnets,
        remote_subnets,
        ike,
        v1,
    })
}

/// The IKEv1 core's configuration equivalent to the IKEv2 configuration `ike` (see the module
/// documentation): proposals, lifetimes, PSK, identities, DPD, NAT-T.
///
/// # Errors
/// An AEAD cipher in an IKE proposal (IKEv1 phase 1 is CBC only), or no usable transform.
pub fn v1_config(ike: &Config, mode: Mode, local: &[IpNet], remote: &[IpNet]) -> Result<V1Config, String> {
    let mut v = V1Config::new(ike.psk.expose());
    v.mode = mode;
    v.ike_proposals.clear();
    for p in &ike.ike_proposals {
        for &encr in &p.encr {
            if encr.is_aead() {
                return Err(format!("IKEv1 phase 1 has no AEAD cipher ({encr:?}): use a CBC cipher"));
            }
            for prf in &p.prf {
                let hash = match prf {
                    PrfAlg::HmacMd5 => HashAlg::Md5,
                    PrfAlg::HmacSha1 => HashAlg::Sha1,
                    PrfAlg::HmacSha256 => HashAlg::Sha256,
                    PrfAlg::HmacSha384 => HashAlg::Sha384,
                    PrfAlg::HmacSha512 => HashAlg::Sha512,
                };
                for &group in &p.dh {
                    v.ike_proposals.push(Phase1Proposal { encr, hash, group });
                }
            }
        }
    }
    if mode == Mode::Aggressive {
        if let Some(g) = v.ike_proposals.first().map(|p| p.group) {
            if v.ike_proposals.iter().any(|p| p.group != g) {
                return Err("IKEv1 aggressive mode offers one DH group only: give one ike.dh_group".into());
            }
        }
    }
    v.esp_proposals.clear();
    for p in &ike.esp_proposals {
        for &encr in &p.encr {
            if encr.is_aead() {
                v.esp_proposals.push(EspProposal { encr, integ: None });
            } else {
                v.esp_proposals.extend(p.integ.iter().map(|&i| EspProposal { encr, integ: Some(i) }));
            }
        }
    }
    if v.ike_proposals.is_empty() || v.esp_proposals.is_empty() {
        return Err("no IKEv1 proposal left".into());
    }
    v.pfs = ike.esp_proposals.first().and_then(|p| p.dh.first().copied());
    v.ike_lifetime = ike.ike_lifetime;
    v.child_lifetime = ike.child_lifetime;
    v.local_id = ike.local_id.as_ref().map(IdPayload::from_identification);
    v.remote_id = ike.remote_id.as_ref().map(IdPayload::from_identification);
    v.local_subnets = local.iter().map(|n| Subnet::new(n.addr(), n.prefix_len())).collect();
    v.remote_subnets = remote.iter().map(|n| Subnet::new(n.addr(), n.prefix_len())).collect();
    v.nat_traversal = ike.nat_traversal;
    v.natt_port = ike.natt_port;
    v.dpd_interval = ike.dpd_interval;
    v.dpd_timeout = ike.dpd_timeout;
    Ok(v)
}

fn secs(s: u64) -> Result<Duration, String> {
    if s < 10 {
        return Err(format!("{s} s is too short (at least 10 s)"));
    }
    Ok(Duration::from_secs(s))
}

fn subnets(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{s:?} is not a subnet (a.b.c.d/len)"))
        })
        .collect()
}

/// The traffic selector covering a prefix (any protocol, any port).
#[must_use]
pub fn selector(net: &IpNet) -> TrafficSelector {
    let range = match net {
        IpNet::V4(n) => AddressRange::V4 { start: n.network(), end: n.broadcast() },
        IpNet::V6(n) => AddressRange::V6 { start: n.network(), end: n.broadcast() },
    };
    TrafficSelector { ip_protocol: 0, start_port: 0, end_port: 0xffff, range }
}

/// The prefixes exactly covering a selector's address range (protocol and ports are ignored).
#[must_use]
pub fn selector_prefixes(ts: &TrafficSelector) -> Vec<IpNet> {
    match ts.range {
        AddressRange::V4 { start, end } if start <= end => {
            ipnet::Ipv4Subnets::new(start, end, 0).map(IpNet::V4).collect()
        }
        AddressRange::V6 { start, end } if start <= end => {
            ipnet::Ipv6Subnets::new(start, end, 0).map(IpNet::V6).collect()
        }
        _ => Vec::new(),
    }
}

/// The IP-address identity of `ip` (ID_IPV4_ADDR / ID_IPV6_ADDR).
#[must_use]
pub fn ip_id(ip: IpAddr) -> Identification {
    match ip {
        IpAddr::V4(a) => Identification::Ipv4(a),
        IpAddr::V6(a) => Identification::Ipv6(a),
    }
}

/// An identity as written in the seed's `LocalId`/`RemoteId` (and this file): an IP address, an
/// FQDN (optionally `@`-prefixed), or `user@fqdn`.
#[must_use]
pub fn identification(s: &str) -> Identification {
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        Identification::Ipv4(a)
    } else if let Ok(a) = s.parse::<Ipv6Addr>() {
        Identification::Ipv6(a)
    } else if let Some(fqdn) = s.strip_prefix('@') {
        Identification::Fqdn(fqdn.as_bytes().to_vec())
    } else if s.contains('@') {
        Identification::Rfc822(s.as_bytes().to_vec())
    } else {
        Identification::Fqdn(s.as_bytes().to_vec())
    }
}

fn encr_word(s: &str) -> Option<EncrAlg> {
    Some(match s {
        "aes" | "aes128" => EncrAlg::AES128_CBC,
        "aes192" => EncrAlg::AesCbc { key_bits: 192 },
        "aes256" => EncrAlg::AES256_CBC,
        "des" => EncrAlg::Des,
        "3des" => EncrAlg::TripleDes,
        "aes128gcm16" | "aes128gcm" => EncrAlg::AES128_GCM16,
        "aes192gcm16" | "aes192gcm" => EncrAlg::AesGcm16 { key_bits: 192 },
        "aes256gcm16" | "aes256gcm" => EncrAlg::AES256_GCM16,
        _ => return None,
    })
}

fn hash_word(s: &str) -> Option<(PrfAlg, IntegAlg)> {
    Some(match s {
        "md5" => (PrfAlg::HmacMd5, IntegAlg::HmacMd5_96),
        "sha1" | "sha" => (PrfAlg::HmacSha1, IntegAlg::HmacSha1_96),
        "sha256" | "sha2_256" => (PrfAlg::HmacSha256, IntegAlg::HmacSha256_128),
        "sha384" | "sha2_384" => (PrfAlg::HmacSha384, IntegAlg::HmacSha384_192),
        "sha512" | "sha2_512" => (PrfAlg::HmacSha512, IntegAlg::HmacSha512_256),
        _ => return None,
    })
}

fn dh_word(s: &str) -> Option<DhGroup> {
    Some(match s {
        "modp768" => DhGroup::Modp768,
        "modp1024" => DhGroup::Modp1024,
        "modp1536" => DhGroup::Modp1536,
        "modp2048" => DhGroup::Modp2048,
        "modp2048s256" => DhGroup::Modp2048S256,
        "ecp256" => DhGroup::Ecp256,
        "ecp384" => DhGroup::Ecp384,
        "ecp521" => DhGroup::Ecp521,
        "curve25519" | "x25519" => DhGroup::Curve25519,
        _ => return None,
    })
}

fn dh_group(id: u16) -> Result<DhGroup, String> {
    DhGroup::from_id(id).ok_or_else(|| format!("DH group {id} is not supported"))
}

/// Parses a strongSwan-style proposal (`aes128-sha1-modp1024`, `aes128gcm16-prfsha256-ecp256`,
/// `aes256-sha512-modp2048` for ESP with PFS, `...-esn`/`-noesn`).
///
/// # Errors
/// An unknown token, or a proposal missing what its protocol needs.
pub fn parse_proposal(protocol: ProtocolId, s: &str) -> Result<ProposalSpec, String> {
    let mut p = ProposalSpec { protocol, encr: vec![], prf: vec![], integ: vec![], dh: vec![], esn: vec![] };
    for tok in s.split('-').map(str::trim).filter(|t| !t.is_empty()) {
        let tok = tok.to_ascii_lowercase();
        if let Some(e) = encr_word(&tok) {
            p.encr.push(e);
        } else if let Some((prf, integ)) = hash_word(&tok) {
            p.integ.push(integ);
            if protocol == ProtocolId::IKE && !p.prf.contains(&prf) {
                p.prf.push(prf);
            }
        } else if let Some((prf, _)) = tok.strip_prefix("prf").and_then(hash_word) {
            if protocol != ProtocolId::IKE {
                return Err(format!("proposal {s:?}: a PRF in an ESP proposal"));
            }
            if !p.prf.contains(&prf) {
                p.prf.push(prf);
            }
        } else if let Some(g) = dh_word(&tok) {
            p.dh.push(g);
        } else if tok == "esn" && protocol == ProtocolId::ESP {
            p.esn.push(Esn::Yes);
        } else if tok == "noesn" && protocol == ProtocolId::ESP {
            p.esn.push(Esn::No);
        } else {
            return Err(format!("proposal {s:?}: unknown algorithm {tok:?}"));
        }
    }
    if p.encr.is_empty() {
        return Err(format!("proposal {s:?}: no encryption algorithm"));
    }
    let aead = p.encr.iter().all(|e| e.is_aead());
    if p.encr.iter().any(|e| e.is_aead()) && !aead {
        return Err(format!("proposal {s:?}: AEAD and non-AEAD ciphers cannot share a proposal"));
    }
    if aead {
        if protocol == ProtocolId::IKE && p.prf.is_empty() {
            return Err(format!("proposal {s:?}: an AEAD IKE proposal needs a PRF (e.g. prfsha256)"));
        }
        // The hash words of an AEAD proposal name only the PRF.
        p.integ.clear();
    } else if p.integ.is_empty() {
        return Err(format!("proposal {s:?}: no integrity algorithm"));
    }
    if protocol == ProtocolId::IKE && p.dh.is_empty() {
        return Err(format!("proposal {s:?}: an IKE proposal needs a DH group"));
    }
    if protocol == ProtocolId::ESP && p.esn.is_empty() {
        p.esn.push(Esn::No);
    }
    Ok(p)
}

fn legacy_hash(auth: Option<&str>) -> Result<(PrfAlg, IntegAlg), String> {
    let a = auth.unwrap_or("sha256");
    hash_word(&a.to_ascii_lowercase()).ok_or_else(|| format!("auth {a:?}: expected md5|sha1|sha256|sha384|sha512"))
}

fn legacy_encr(enc: Option<&str>) -> Result<EncrAlg, String> {
    let e = enc.unwrap_or("aes256");
    match encr_word(&e.to_ascii_lowercase()) {
        Some(x) if !x.is_aead() => Ok(x),
        _ => Err(format!("enc {e:?}: expected aes|aes192|aes256|des|3des (AEAD ciphers go in `proposals`)")),
    }
}

fn ike_proposals(d: &IkeDoc) -> Result<Vec<ProposalSpec>, String> {
    if let Some(list) = &d.proposals {
        if d.enc.is_some() || d.auth.is_some() || d.dh_group.is_some() {
            return Err("ike: give either enc/auth/dh_group or proposals".into());
        }
        if list.is_empty() {
            return Err("ike.proposals is empty".into());
        }
        return list.iter().map(|s| parse_proposal(ProtocolId::IKE, s)).collect();
    }
    let (prf, integ) = legacy_hash(d.auth.as_deref()).map_err(|m| format!("ike.{m}"))?;
    Ok(vec![ProposalSpec {
        protocol: ProtocolId::IKE,
        encr: vec![legacy_encr(d.enc.as_deref()).map_err(|m| format!("ike.{m}"))?],
        prf: vec![prf],
        integ: vec![integ],
        dh: vec![dh_group(d.dh_group.unwrap_or(14)).map_err(|m| format!("ike.dh_group: {m}"))?],
        esn: vec![],
    }])
}

fn esp_proposals(d: &IpsecDoc) -> Result<Vec<ProposalSpec>, String> {
    if let Some(list) = &d.proposals {
        if d.enc.is_some() || d.auth.is_some() || d.pfs_group.is_some() {
            return Err("ipsec: give either enc/auth/pfs_group or proposals".into());
        }
        if list.is_empty() {
            return Err("ipsec.proposals is empty".into());
        }
        return list.iter().map(|s| parse_proposal(ProtocolId::ESP, s)).collect();
    }
    let (_, integ) = legacy_hash(d.auth.as_deref()).map_err(|m| format!("ipsec.{m}"))?;
    let dh = match &d.pfs_group {
        None | Some(Pfs::Group(0)) => vec![],
        Some(Pfs::Group(g)) => vec![dh_group(*g).map_err(|m| format!("ipsec.pfs_group: {m}"))?],
        Some(Pfs::Word(w)) if matches!(w.as_str(), "disabled" | "none" | "off") => vec![],
        Some(Pfs::Word(w)) => match dh_word(w) {
            Some(g) => vec![g],
            None => return Err(format!("ipsec.pfs_group {w:?}: a group number, a group name or \"disabled\"")),
        },
    };
    Ok(vec![ProposalSpec {
        protocol: ProtocolId::ESP,
        encr: vec![legacy_encr(d.enc.as_deref()).map_err(|m| format!("ipsec.{m}"))?],
        prf: vec![],
        integ: vec![integ],
        dh,
        esn: vec![Esn::No],
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASIC: &str = r#"
[[connection]]
name = "b"
local_addr = "198.18.0.1"
remote_addr = "198.18.0.2"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["198.51.100.0/24", "203.0.113.0/25"]
psk = "hunter2-very-secret"
[connection.ike]
enc = "3des"
auth = "md5"
dh_group = 2
[connection.ipsec]
enc = "aes192"
auth = "sha384"
pfs_group = 14
"#;

    #[test]
    fn seed_fields() {
        let c = DaemonConfig::parse(BASIC, None).unwrap();
        assert_eq!(c.daemon.listen, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((c.daemon.ike_port, c.daemon.natt_port), (500, 4500));
        let k = &c.connections[0];
        assert!(k.effect_immediately);
        assert_eq!(k.ike.ike_proposals[0].encr, vec![EncrAlg::TripleDes]);
        assert_eq!(k.ike.ike_proposals[0].prf, vec![PrfAlg::HmacMd5]);
        assert_eq!(k.ike.ike_proposals[0].dh, vec![DhGroup::Modp1024]);
        assert_eq!(k.ike.esp_proposals[0].encr, vec![EncrAlg::AesCbc { key_bits: 192 }]);
        assert_eq!(k.ike.esp_proposals[0].integ, vec![IntegAlg::HmacSha384_192]);
        assert_eq!(k.ike.esp_proposals[0].dh, vec![DhGroup::Modp2048]);
        assert_eq!(k.ike.remote_ts.len(), 2);
        assert_eq!(k.ike.remote_id, Some(Identification::Ipv4(Ipv4Addr::new(198, 18, 0, 2))));
        assert!(k.ike.dpd_interval.is_some() && k.ike.nat_traversal);
        assert!(!format!("{c:?}").contains("hunter2"), "Debug never shows the PSK");
        assert!(c.daemon.log_messages, "per-message lines by default");
        let quiet = format!("[daemon]\nlog_messages = false\n{BASIC}");
        assert!(!DaemonConfig::parse(&quiet, None).unwrap().daemon.log_messages);
    }

    #[test]
    fn modern_proposals() {
        let p = parse_proposal(ProtocolId::IKE, "aes128gcm16-prfsha256-ecp256").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::AES128_GCM16]);
        assert!(p.integ.is_empty());
        assert_eq!(p.prf, vec![PrfAlg::HmacSha256]);
        assert_eq!(p.dh, vec![DhGroup::Ecp256]);
        let e = parse_proposal(ProtocolId::ESP, "aes256-sha512-modp2048").unwrap();
        assert_eq!(e.dh, vec![DhGroup::Modp2048]);
        assert_eq!(e.esn, vec![Esn::No]);
        let e = parse_proposal(ProtocolId::ESP, "aes128gcm16-curve25519-esn").unwrap();
        assert_eq!((e.dh[0], e.esn[0]), (DhGroup::Curve25519, Esn::Yes));
        assert!(parse_proposal(ProtocolId::IKE, "aes128gcm16-ecp256").is_err());
        assert!(parse_proposal(ProtocolId::IKE, "aes128-sha1").is_err());
        assert!(parse_proposal(ProtocolId::ESP, "aes128-blake").is_err());
    }

    #[test]
    fn refusals_are_clear_and_never_show_the_psk() {
        let v3 = BASIC.replace("psk =", "ike_version = 3\npsk =");
        let e = DaemonConfig::parse(&v3, None).unwrap_err();
        assert!(e.0.contains("ike_version = 3"), "{e}");
        // A syntax error on the PSK's line must not echo the line.
        let bad = BASIC.replace("psk = \"hunter2-very-secret\"", "psk = \"hunter2-very-secret");
        let e = DaemonConfig::parse(&bad, None).unwrap_err();
        assert!(!e.0.contains("hunter2"), "{e}");
        let e = DaemonConfig::parse(&BASIC.replace("dh_group = 2", "dh_group = 99"), None).unwrap_err();
        assert!(e.0.contains("DH group 99"), "{e}");
    }

    #[test]
    fn ikev1_is_accepted_and_mapped() {
        use ipsec_ike::v1::keys::HashAlg;
        let v1 = BASIC
            .replace("psk =", "ike_version = 1\npsk =")
            .replace("[connection.ike]", "[connection.ike]\nmode = \"aggressive\"");
        let c = &DaemonConfig::parse(&v1, None).unwrap().connections[0];
        let v = c.v1.as_ref().expect("an IKEv1 configuration");
        assert_eq!(v.mode, Mode::Aggressive);
        assert_eq!(
            v.ike_proposals,
            vec![Phase1Proposal { encr: EncrAlg::TripleDes, hash: HashAlg::Md5, group: DhGroup::Modp1024 }]
        );
        let aes192 = EncrAlg::AesCbc { key_bits: 192 };
        assert_eq!(v.esp_proposals, vec![EspProposal { encr: aes192, integ: Some(IntegAlg::HmacSha384_192) }]);
        assert_eq!(v.pfs, Some(DhGroup::Modp2048));
        assert_eq!(v.remote_subnets.len(), 2);
        assert_eq!(v.remote_id, Some(IdPayload::from_identification(&Identification::Ipv4([198, 18, 0, 2].into()))));
        assert!(!format!("{c:?}").contains("hunter2"), "Debug shows the PSK");
        // Main mode by default; IKEv2 has none.
        let main = BASIC.replace("psk =", "ike_version = 1\npsk =");
        assert_eq!(DaemonConfig::parse(&main, None).unwrap().connections[0].v1.as_ref().unwrap().mode, Mode::Main);
        assert!(DaemonConfig::parse(BASIC, None).unwrap().connections[0].v1.is_none());
    }

    #[test]
    fn ikev1_bad_combinations_are_clear() {
        let v1 = BASIC.replace("psk =", "ike_version = 1\npsk =");
        let cases = [
            (
                BASIC.replace("[connection.ike]", "[connection.ike]\nmode = \"main\""),
                "for IKEv1 (ike_version = 1) only",
            ),
            (v1.replace("[connection.ike]", "[connection.ike]\nmode = \"quick\""), "main or aggressive"),
            (v1.replace("psk =", "force_encap = true\npsk ="), "force_encap is not supported with IKEv1"),
            (
                v1.replace(
                    "enc = \"3des\"\nauth = \"md5\"\ndh_group = 2",
                    "proposals = [\"aes128gcm16-prfsha256-ecp256\"]",
                ),
                "no AEAD",
            ),
            (
                v1.replace("[connection.ike]", "[connection.ike]\nmode = \"aggressive\"").replace(
                    "enc = \"3des\"\nauth = \"md5\"\ndh_group = 2",
                    "proposals = [\"aes128-sha1-modp2048-ecp256\"]",
                ),
                "one DH group",
            ),
        ];
        for (doc, want) in cases {
            let e = DaemonConfig::parse(&doc, None).unwrap_err();
            assert!(e.0.contains(want), "{e} (want {want:?})");
            assert!(!e.0.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn psk_file_and_any_peer() {
        let dir = std::env::temp_dir().join(format!("ipsec-control-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "from-file\n").unwrap();
        let doc = BASIC
            .replace("psk = \"hunter2-very-secret\"", "psk_file = \"k\"")
            .replace("remote_addr = \"198.18.0.2\"", "remote_addr = \"%any\"");
        let c = DaemonConfig::parse(&doc, Some(&dir)).unwrap();
        let k = &c.connections[0];
        assert_eq!(k.ike.psk.expose(), b"from-file");
        assert_eq!(k.remote, None);
        assert!(!k.effect_immediately);
        assert_eq!(k.ike.remote_id, None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn selector_ranges_to_prefixes() {
        let n: IpNet = "198.51.100.0/24".parse().unwrap();
        assert_eq!(selector_prefixes(&selector(&n)), vec![n]);
        let ts = TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: 0xffff,
            range: AddressRange::V4 { start: Ipv4Addr::new(10, 0, 0, 0), end: Ipv4Addr::new(10, 0, 1, 127) },
        };
        let v: Vec<String> = selector_prefixes(&ts).iter().map(ToString::to_string).collect();
        assert_eq!(v, ["10.0.0.0/24", "10.0.1.0/25"]);
    }
}
