//! Static configuration of the engine (`ipsec-engine run --config FILE`): interfaces, the
//! gateway's own addresses, tunnels and manually keyed SAs, in TOML.
//!
//! This plays the role of `ip xfrm state` / `ip xfrm policy` (or DPDK ipsec-secgw's config file);
//! tunnels and SAs may also (or only) come from the control process over the engine↔control
//! channel ([`crate::channel`]), in which case the file needs no `[[tunnel]]` / `[[sa]]`. Format:
//!
//! ```toml
//! [gateway]
//! local_addrs = ["198.18.0.1"]        # outer addresses ESP is received on
//! inside_addrs = ["192.0.2.1"]        # optional: source of ICMP errors to inside hosts (one per
//!                                     # family; default: the inside interface's address)
//!
//! [[interface]]
//! name = "eth0"
//! role = "outside"                    # underlay: ESP / ESP-in-UDP / IKE
//! queues = 1                          # rx/tx queue pairs to serve (one worker each)
//!
//! [[interface]]
//! name = "eth1"
//! role = "inside"                     # protected side
//! queues = 1
//!
//! [[tunnel]]
//! name = "to-gw2"
//! id = 1                              # optional, default: position + 1
//! remote_addr = "198.18.0.2"          # peer gateway (outer destination)
//! local_addr = "198.18.0.1"           # optional, default: first gateway address of the family
//! local_subnets = ["192.0.2.0/24"]
//! remote_subnets = ["198.51.100.0/24"]
//! routing = "destination"             # or "flows" (local × remote subnet pairs)
//! udp_encap = { local_port = 4500, remote_port = 4500 }   # optional: ESP in UDP
//! mtu = 1400                          # optional: outer path MTU to the peer (576-65535) when
//!                                     # below the outside link's (or route's) MTU; the inner MTU
//!                                     # is this minus the SA's ESP overhead
//!
//! [[sa]]
//! tunnel = "to-gw2"
//! direction = "out"                   # or "in"
//! spi = 0xc1a00001
//! cipher = "aes128gcm16"              # Cipher::name(): null des 3des aes128 aes192 aes256 aes{128,192,256}gcm16
//! enc_key = "00112233..."             # hex; AES-GCM: key followed by the 4-byte salt
//! integrity = "none"                  # Integrity::name(): none md5 sha1 sha256 sha384 sha512
//! auth_key = ""                       # hex
//! esn = false
//! replay_window = 1024                # inbound only; 0 disables anti-replay
//! lifetime = { hard_seconds = 3600, soft_seconds = 3240, hard_bytes = 0, soft_packets = 0 }
//! ```
//!
//! Contract:
//! - Every error names the field (`sa[1].enc_key: ...`, or a TOML line and column). Key material is
//!   never printed: not in errors (TOML syntax errors are reported by position and message, without
//!   the offending line), not in `Debug` output (keys go straight into [`SaConfig`], which redacts).
//! - A tunnel has at most one outbound SA; it may have several inbound SAs (rekey overlap).
//!   Inbound SPIs are unique per local address.
//! - [`EngineConfig::build`] turns the configuration into the ESP core's tables.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ipsec_esp::table::{Domain, OutboundTables, Spi, SpiTable, TunnelId};
use ipsec_esp::{Cipher, CryptoProvider, InboundSa, Integrity, Lifetime, Limits, OutboundSa, SaConfig, UdpEncap};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::xdp::Role;

/// A configuration error, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `sa[1].enc_key`, `tunnel[0].remote_subnets[2]`, `line 12 column 5`, or `file`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---- the TOML shape ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    interface: Vec<RawInterface>,
    #[serde(default)]
    tunnel: Vec<RawTunnel>,
    #[serde(default)]
    sa: Vec<RawSa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    local_addrs: Vec<String>,
    #[serde(default)]
    inside_addrs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    role: String,
    #[serde(default = "one")]
    queues: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    name: String,
    id: Option<u32>,
    remote_addr: String,
    local_addr: Option<String>,
    local_subnets: Vec<String>,
    remote_subnets: Vec<String>,
    #[serde(default = "destination")]
    routing: String,
    udp_encap: Option<RawUdpEncap>,
    mtu: Option<u32>,
}

fn destination() -> String {
    "destination".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUdpEncap {
    #[serde(default = "port_4500")]
    local_port: u16,
    #[serde(default = "port_4500")]
    remote_port: u16,
}

fn port_4500() -> u16 {
    4500
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    tunnel: String,
    direction: String,
    spi: u32,
    cipher: String,
    enc_key: Secret,
    #[serde(default = "none")]
    integrity: String,
    #[serde(default)]
    auth_key: Secret,
    #[serde(default)]
    esn: bool,
    replay_window: Option<u32>,
    #[serde(default)]
    lifetime: RawLifetime,
    ttl: Option<u8>,
}

/// Key material as written in the file: wiped on drop.
#[derive(Default)]
struct Secret(Zeroizing<String>);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Secret(Zeroizing::new(s)))
    }
}

fn none() -> String {
    "none".into()
}

/// Lifetime limits; 0 or absent = no limit.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLifetime {
    #[serde(default)]
    soft_seconds: u64,
    #[serde(default)]
    hard_seconds: u64,
    #[serde(default)]
    soft_bytes: u64,
    #[serde(default)]
    hard_bytes: u64,
    #[serde(default)]
    soft_packets: u64,
    #[serde(default)]
    hard_packets: u64,
}

// ---- the parsed configuration ----------------------------------------------------------------

/// One interface the engine serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub role: Role,
    pub queues: u32,
}

/// How outbound packets are matched to a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Route-based: inner destination in a remote subnet.
    Destination,
    /// Policy-based: (inner source in a local subnet, inner destination in a remote subnet).
    Flows,
}

/// One tunnel (a pair of gateways and the subnets behind them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    pub name: String,
    pub id: TunnelId,
    pub local_addr: IpAddr,
    pub remote_addr: IpAddr,
    pub local_subnets: Vec<IpNet>,
    pub remote_subnets: Vec<IpNet>,
    pub routing: Routing,
    pub encap: Option<UdpEncap>,
    /// Outer path MTU override (see the format above).
    pub mtu: Option<u16>,
}

/// SA direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaDirection {
    In,
    Out,
}

/// One manually keyed SA, ready to be built (keys inside, redacted by `Debug`).
#[derive(Debug, Clone)]
pub struct SaEntry {
    /// Index into [`EngineConfig::tunnels`].
    pub tunnel: usize,
    pub direction: SaDirection,
    pub config: SaConfig,
}

/// The whole static configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub local_addrs: Vec<IpAddr>,
    /// Source addresses of ICMP errors sent to inside hosts (empty: from the inside interface).
    pub inside_addrs: Vec<IpAddr>,
    pub interfaces: Vec<InterfaceConfig>,
    pub tunnels: Vec<TunnelConfig>,
    pub sas: Vec<SaEntry>,
}

/// The ESP core's tables built from a configuration.
pub struct Tables {
    pub domain: Domain,
    pub outbound: OutboundTables<OutboundSa>,
    pub inbound: SpiTable<InboundSa>,
    /// Every SA built, for stats: `(tunnel name, direction, SA)`.
    pub outbound_sas: Vec<(String, Arc<OutboundSa>)>,
    pub inbound_sas: Vec<(String, Arc<InboundSa>)>,
}

fn parse_addr(field: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse().map_err(|_| ConfigError::new(field, format!("not an IP address: {s:?}")))
}

fn parse_net(field: &str, s: &str) -> Result<IpNet, ConfigError> {
    let net: IpNet = s.parse().map_err(|_| ConfigError::new(field, format!("not an IP prefix: {s:?}")))?;
    if net.trunc() != net {
        return Err(ConfigError::new(field, format!("{s} has host bits set (did you mean {}?)", net.trunc())));
    }
    Ok(net)
}

fn parse_cipher(field: &str, s: &str) -> Result<Cipher, ConfigError> {
    Cipher::ALL.iter().copied().find(|c| c.name() == s).ok_or_else(|| {
        let names: Vec<_> = Cipher::ALL.iter().map(|c| c.name()).collect();
        ConfigError::new(field, format!("unknown cipher {s:?} (one of: {})", names.join(", ")))
    })
}

fn parse_integrity(field: &str, s: &str) -> Result<Integrity, ConfigError> {
    Integrity::ALL.iter().copied().find(|i| i.name() == s).ok_or_else(|| {
        let names: Vec<_> = Integrity::ALL.iter().map(|i| i.name()).collect();
        ConfigError::new(field, format!("unknown integrity algorithm {s:?} (one of: {})", names.join(", ")))
    })
}

/// Decodes hex key material (whitespace and `:` separators allowed). Errors never echo the input.
fn parse_key(field: &str, s: &str, expected: usize, what: &str) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let digits: Zeroizing<Vec<u8>> =
        Zeroizing::new(s.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b':').collect());
    let digits = digits.strip_prefix(b"0x").unwrap_or(&digits);
    if !digits.len().is_multiple_of(2) {
        return Err(ConfigError::new(field, "odd number of hex digits"));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(digits.len() / 2));
    for (k, pair) in digits.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16);
        let lo = (pair[1] as char).to_digit(16);
        match (hi, lo) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => return Err(ConfigError::new(field, format!("not hex (at digit {})", 2 * k))),
        }
    }
    if out.len() != expected {
        return Err(ConfigError::new(
            field,
            format!("{what} needs {expected} bytes ({} hex digits), got {} bytes", 2 * expected, out.len()),
        ));
    }
    Ok(out)
}

/// Line and column (1-based) of byte offset `at` in `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, col)
}

impl EngineConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(path.display().to_string(), format!("cannot read: {e}")))?,
        );
        Self::parse(&text)
    }

    /// Parses a configuration from TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // Position and message only: the default rendering quotes the source line, which may
            // hold a key.
            let field = match e.span() {
                Some(span) => {
                    let (l, c) = position(text, span.start);
                    format!("line {l} column {c}")
                }
                None => "config".to_string(),
            };
            ConfigError::new(field, e.message().trim().to_string())
        })?;

        let mut local_addrs = Vec::new();
        for (k, a) in raw.gateway.local_addrs.iter().enumerate() {
            local_addrs.push(parse_addr(&format!("gateway.local_addrs[{k}]"), a)?);
        }
        if local_addrs.is_empty() {
            return Err(ConfigError::new("gateway.local_addrs", "at least one address is needed"));
        }
        let mut inside_addrs = Vec::new();
        for (k, a) in raw.gateway.inside_addrs.iter().enumerate() {
            inside_addrs.push(parse_addr(&format!("gateway.inside_addrs[{k}]"), a)?);
        }

        let mut interfaces = Vec::new();
        let mut names = HashSet::new();
        for (k, i) in raw.interface.iter().enumerate() {
            let f = |x: &str| format!("interface[{k}].{x}");
            if i.name.is_empty() || i.name.len() > 15 {
                return Err(ConfigError::new(f("name"), "interface names are 1 to 15 characters"));
            }
            if !names.insert(i.name.clone()) {
                return Err(ConfigError::new(f("name"), format!("{} is listed twice", i.name)));
            }
            let role = match i.role.as_str() {
                "outside" => Role::Outside,
                "inside" => Role::Inside,
                other => {
                    return Err(ConfigError::new(f("role"), format!("{other:?}: expected \"outside\" or \"inside\"")))
                }
            };
            if i.queues == 0 || i.queues > 64 {
                return Err(ConfigError::new(f("queues"), format!("{} out of range 1-64", i.queues)));
            }
            interfaces.push(InterfaceConfig { name: i.name.clone(), role, queues: i.queues });
        }

        let mut tunnels: Vec<TunnelConfig> = Vec::new();
        let mut ids = HashSet::new();
        for (k, t) in raw.tunnel.iter().enumerate() {
            let f = |x: &str| format!("tunnel[{k}].{x}");
            if tunnels.iter().any(|o| o.name == t.name) {
                return Err(ConfigError::new(f("name"), format!("{:?} is used twice", t.name)));
            }
            let id = t.id.unwrap_or(k as u32 + 1);
            if !ids.insert(id) {
                return Err(ConfigError::new(f("id"), format!("{id} is used twice")));
            }
            let remote_addr = parse_addr(&f("remote_addr"), &t.remote_addr)?;
            let local_addr = match &t.local_addr {
                Some(a) => parse_addr(&f("local_addr"), a)?,
                None => *local_addrs.iter().find(|a| a.is_ipv4() == remote_addr.is_ipv4()).ok_or_else(|| {
                    ConfigError::new(f("local_addr"), "no gateway.local_addrs entry of the remote's family")
                })?,
            };
            if local_addr.is_ipv4() != remote_addr.is_ipv4() {
                return Err(ConfigError::new(f("local_addr"), "must be of the same family as remote_addr"));
            }
            if !local_addrs.contains(&local_addr) {
                return Err(ConfigError::new(f("local_addr"), format!("{local_addr} is not in gateway.local_addrs")));
            }
            let mut local_subnets = Vec::new();
            for (j, s) in t.local_subnets.iter().enumerate() {
                local_subnets.push(parse_net(&f(&format!("local_subnets[{j}]")), s)?);
            }
            let mut remote_subnets = Vec::new();
            for (j, s) in t.remote_subnets.iter().enumerate() {
                remote_subnets.push(parse_net(&f(&format!("remote_subnets[{j}]")), s)?);
            }
            if local_subnets.is_empty() {
                return Err(ConfigError::new(f("local_subnets"), "at least one subnet is needed"));
            }
            if remote_subnets.is_empty() {
                return Err(ConfigError::new(f("remote_subnets"), "at least one subnet is needed"));
            }
            let routing = match t.routing.as_str() {
                "destination" => Routing::Destination,
                "flows" => Routing::Flows,
                other => {
                    return Err(ConfigError::new(
                        f("routing"),
                        format!("{other:?}: expected \"destination\" or \"flows\""),
                    ))
                }
            };
            let encap = t.udp_encap.as_ref().map(|u| UdpEncap { local_port: u.local_port, remote_port: u.remote_port });
            if let Some(e) = encap {
                if e.local_port == 0 || e.remote_port == 0 {
                    return Err(ConfigError::new(f("udp_encap"), "ports must be non-zero"));
                }
            }
            let mtu = match t.mtu {
                None => None,
                Some(m @ 576..=65535) => Some(m as u16),
                Some(m) => return Err(ConfigError::new(f("mtu"), format!("{m} out of range 576-65535"))),
            };
            tunnels.push(TunnelConfig {
                mtu,
                name: t.name.clone(),
                id: TunnelId(id),
                local_addr,
                remote_addr,
                local_subnets,
                remote_subnets,
                routing,
                encap,
            });
        }

        let mut sas = Vec::new();
        let mut outbound_of = HashSet::new();
        let mut inbound_spis = HashSet::new();
        for (k, s) in raw.sa.iter().enumerate() {
            let f = |x: &str| format!("sa[{k}].{x}");
            let tunnel = tunnels
                .iter()
                .position(|t| t.name == s.tunnel)
                .ok_or_else(|| ConfigError::new(f("tunnel"), format!("no tunnel named {:?}", s.tunnel)))?;
            let t = &tunnels[tunnel];
            let direction = match s.direction.as_str() {
                "in" => SaDirection::In,
                "out" => SaDirection::Out,
                other => {
                    return Err(ConfigError::new(f("direction"), format!("{other:?}: expected \"in\" or \"out\"")))
                }
            };
            if s.spi < 256 {
                return Err(ConfigError::new(f("spi"), format!("{} is reserved (must be >= 256)", s.spi)));
            }
            match direction {
                SaDirection::Out if !outbound_of.insert(tunnel) => {
                    return Err(ConfigError::new(
                        f("direction"),
                        format!("tunnel {:?} already has an outbound SA", t.name),
                    ))
                }
                SaDirection::In if !inbound_spis.insert((s.spi, t.local_addr)) => {
                    return Err(ConfigError::new(
                        f("spi"),
                        format!("inbound SPI {:#010x} on {} is used twice", s.spi, t.local_addr),
                    ))
                }
                _ => {}
            }
            let cipher = parse_cipher(&f("cipher"), &s.cipher)?;
            let integrity = parse_integrity(&f("integrity"), &s.integrity)?;
            let enc_key = parse_key(&f("enc_key"), &s.enc_key.0, cipher.keymat_len(), cipher.name())?;
            let auth_key = parse_key(&f("auth_key"), &s.auth_key.0, integrity.key_len(), integrity.name())?;
            let mut cfg = SaConfig::new(s.spi, cipher, &enc_key, integrity, &auth_key, t.local_addr, t.remote_addr);
            cfg.esn = s.esn;
            if let Some(w) = s.replay_window {
                if direction == SaDirection::Out {
                    return Err(ConfigError::new(f("replay_window"), "only inbound SAs have a replay window"));
                }
                cfg.replay_window = w;
            }
            cfg.encap = t.encap;
            cfg.local_ts = t.local_subnets.clone();
            cfg.remote_ts = t.remote_subnets.clone();
            let l = &s.lifetime;
            let lim = |secs: u64, bytes: u64, packets: u64| Limits {
                time: (secs != 0).then(|| Duration::from_secs(secs)),
                bytes: (bytes != 0).then_some(bytes),
                packets: (packets != 0).then_some(packets),
            };
            cfg.lifetime = Lifetime {
                soft: lim(l.soft_seconds, l.soft_bytes, l.soft_packets),
                hard: lim(l.hard_seconds, l.hard_bytes, l.hard_packets),
            };
            for (name, soft, hard) in [
                ("seconds", l.soft_seconds, l.hard_seconds),
                ("bytes", l.soft_bytes, l.hard_bytes),
                ("packets", l.soft_packets, l.hard_packets),
            ] {
                if soft != 0 && hard != 0 && soft > hard {
                    return Err(ConfigError::new(
                        f(&format!("lifetime.soft_{name}")),
                        format!("soft limit {soft} is above the hard limit {hard}"),
                    ));
                }
            }
            cfg.mtu = t.mtu;
            if let Some(ttl) = s.ttl {
                cfg.ttl = ttl;
            }
            sas.push(SaEntry { tunnel, direction, config: cfg });
        }
        Ok(EngineConfig { local_addrs, inside_addrs, interfaces, tunnels, sas })
    }

    /// The interfaces of one role.
    pub fn interfaces_of(&self, role: Role) -> impl Iterator<Item = &InterfaceConfig> {
        self.interfaces.iter().filter(move |i| i.role == role)
    }

    /// Remote subnets of every tunnel (what the inside XDP program steers to the engine).
    pub fn protected_prefixes(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for t in &self.tunnels {
            for n in &t.remote_subnets {
                if !out.contains(n) {
                    out.push(*n);
                }
            }
        }
        out
    }

    /// Builds every SA (keys expanded by `provider`) and fills the tables. An SA the ESP core
    /// refuses is reported by its field path `sa[N]`.
    pub fn build(&self, provider: &CryptoProvider, now: Instant) -> Result<Tables, ConfigError> {
        let domain = Domain::new();
        let outbound = OutboundTables::new(&domain);
        let inbound = SpiTable::new(&domain);
        for t in &self.tunnels {
            match t.routing {
                Routing::Destination => {
                    for n in &t.remote_subnets {
                        outbound.routes.add_route(*n, t.id);
                    }
                }
                Routing::Flows => {
                    for l in &t.local_subnets {
                        for r in &t.remote_subnets {
                            if l.addr().is_ipv4() == r.addr().is_ipv4() {
                                outbound.flows.add_flow(*l, *r, t.id).map_err(|_| {
                                    ConfigError::new(format!("tunnel {:?}", t.name), "mixed address families")
                                })?;
                            }
                        }
                    }
                }
            }
        }
        let mut outbound_sas = Vec::new();
        let mut inbound_sas = Vec::new();
        let mut by_tunnel: HashMap<usize, usize> = HashMap::new();
        for (k, s) in self.sas.iter().enumerate() {
            let t = &self.tunnels[s.tunnel];
            let field = format!("sa[{k}]");
            match s.direction {
                SaDirection::Out => {
                    let sa = Arc::new(
                        OutboundSa::new(&s.config, provider, now)
                            .map_err(|e| ConfigError::new(&field, e.to_string()))?,
                    );
                    outbound.tunnels.set_sa(t.id, sa.clone());
                    by_tunnel.insert(s.tunnel, k);
                    outbound_sas.push((t.name.clone(), sa));
                }
                SaDirection::In => {
                    let sa = Arc::new(
                        InboundSa::new(&s.config, provider, now)
                            .map_err(|e| ConfigError::new(&field, e.to_string()))?,
                    );
                    inbound
                        .insert(Spi(s.config.spi), t.local_addr, sa.clone())
                        .map_err(|e| ConfigError::new(format!("{field}.spi"), e.to_string()))?;
                    inbound_sas.push((t.name.clone(), sa));
                }
            }
        }
        Ok(Tables { domain, outbound, inbound, outbound_sas, inbound_sas })
    }
}

#[cfg(test)]
mod tests;
