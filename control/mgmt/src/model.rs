//! The resources (VPN gateway, customer gateway, VPN connection) and their value types.
//!
//! Field names serialize in the seed's PascalCase spelling, so the stored JSON, the API answers and
//! the `IkeConfig`/`IpsecConfig`/... request objects share one vocabulary. Enumerated values
//! serialize as the seed's lowercase strings (`aes`, `3des`, `group14`, `ikev2`, ...).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every accepted value, in the seed's spelling.
            pub const ALL: &'static [&'static str] = &[$($s),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// Exact (case-sensitive) match against [`Self::ALL`].
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown {} {s:?}", stringify!($name))))
            }
        }
    };
}

str_enum!(
    /// IKE version (`IkeConfig.IkeVersion`); the seed's default is ikev1.
    IkeVersion { Ikev1 = "ikev1", Ikev2 = "ikev2" }
);
str_enum!(
    /// IKEv1 phase-1 exchange mode (`IkeConfig.IkeMode`).
    IkeMode { Main = "main", Aggressive = "aggressive" }
);
str_enum!(
    /// Encryption algorithm (`IkeEncAlg`, `IpsecEncAlg`): the seed's set. `aes` is AES-128-CBC.
    EncAlg { Aes = "aes", Aes192 = "aes192", Aes256 = "aes256", Des = "des", TripleDes = "3des" }
);
str_enum!(
    /// Integrity / PRF algorithm (`IkeAuthAlg`, `IpsecAuthAlg`).
    AuthAlg { Md5 = "md5", Sha1 = "sha1", Sha256 = "sha256", Sha384 = "sha384", Sha512 = "sha512" }
);
str_enum!(
    /// Diffie-Hellman group (`IkeConfig.IkePfs`): MODP groups 1, 2, 5, 14 and 24.
    DhGroup { Group1 = "group1", Group2 = "group2", Group5 = "group5", Group14 = "group14", Group24 = "group24" }
);
str_enum!(
    /// PFS for the IPsec SAs (`IpsecConfig.IpsecPfs`): `disabled` or a DH group.
    IpsecPfs {
        Disabled = "disabled",
        Group1 = "group1",
        Group2 = "group2",
        Group5 = "group5",
        Group14 = "group14",
        Group24 = "group24",
    }
);
str_enum!(
    /// How traffic is steered into the tunnel: destination routes (default) or protected data flows
    /// (traffic selectors = LocalSubnet x RemoteSubnet).
    RoutingMode { DestRouting = "dest_routing", ProtectedDataFlows = "protected_data_flows" }
);
str_enum!(
    /// What a failed health check does: withdraw the routes (default) or keep them.
    HealthCheckPolicy { RevokeRoute = "revoke_route", ReserveRoute = "reserve_route" }
);

impl IpsecPfs {
    /// The DH group, or `None` when PFS is disabled.
    pub fn group(self) -> Option<DhGroup> {
        match self {
            IpsecPfs::Disabled => None,
            IpsecPfs::Group1 => Some(DhGroup::Group1),
            IpsecPfs::Group2 => Some(DhGroup::Group2),
            IpsecPfs::Group5 => Some(DhGroup::Group5),
            IpsecPfs::Group14 => Some(DhGroup::Group14),
            IpsecPfs::Group24 => Some(DhGroup::Group24),
        }
    }
}

/// An IP prefix in CIDR notation with no host bits set (`10.0.0.0/24`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn mask(&self) -> u128 {
        let width = Self::max_prefix(self.addr) as u32;
        let all = if width == 32 { u32::MAX as u128 } else { u128::MAX };
        if self.prefix == 0 {
            0
        } else {
            all & !((1u128 << (width - self.prefix as u32)) - 1)
        }
    }

    /// Whether `ip` (same family) lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && Self::bits(ip) & self.mask() == Self::bits(self.addr)
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR block (address/prefix)"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{s:?}: prefix length {p:?} is not a number"));
        }
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
        if prefix > Self::max_prefix(addr) {
            return Err(format!("{s:?}: prefix length {prefix} is too long for the address family"));
        }
        let c = Cidr { addr, prefix };
        if Self::bits(addr) & !c.mask() & if addr.is_ipv4() { u32::MAX as u128 } else { u128::MAX } != 0 {
            return Err(format!("{s:?}: host bits are set (not a network address)"));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A comma-separated list of CIDR blocks (`LocalSubnet`, `RemoteSubnet`), serialized as the seed's
/// comma-joined string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubnetList(pub Vec<Cidr>);

impl fmt::Display for SubnetList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl Serialize for SubnetList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SubnetList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(SubnetList)
            .map_err(serde::de::Error::custom)
    }
}

/// A VPN gateway: the engine's outside address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpnGateway {
    pub vpn_gateway_id: String,
    pub name: String,
    /// The engine's outside (public) address: the local IKE endpoint.
    pub public_ip: IpAddr,
    /// `active` when connections may be changed; anything else answers `VpnGateway.Configuring`.
    pub status: String,
    pub description: String,
    /// Milliseconds since the Unix epoch.
    pub create_time: u64,
}

/// A customer gateway: the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomerGateway {
    pub customer_gateway_id: String,
    pub name: String,
    pub ip_address: IpAddr,
    /// 0 when not given.
    pub asn: u32,
    pub description: String,
    pub create_time: u64,
}

/// Phase-1 (IKE SA) parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IkeConfig {
    /// The pre-shared key. Never in logs; in Describe answers only with `ShowPsk=true`.
    pub psk: String,
    pub ike_version: IkeVersion,
    pub ike_mode: IkeMode,
    pub ike_enc_alg: EncAlg,
    pub ike_auth_alg: AuthAlg,
    pub ike_pfs: DhGroup,
    /// Seconds, 0..=86400.
    pub ike_lifetime: u32,
    /// Defaults to the VPN gateway's PublicIp.
    pub local_id: String,
    /// Defaults to the customer gateway's IpAddress.
    pub remote_id: String,
}

impl Default for IkeConfig {
    fn default() -> Self {
        IkeConfig {
            psk: String::new(),
            ike_version: IkeVersion::Ikev1,
            ike_mode: IkeMode::Main,
            ike_enc_alg: EncAlg::Aes,
            ike_auth_alg: AuthAlg::Sha1,
            ike_pfs: DhGroup::Group2,
            ike_lifetime: 86400,
            local_id: String::new(),
            remote_id: String::new(),
        }
    }
}

/// Phase-2 (IPsec SA) parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpsecConfig {
    pub ipsec_enc_alg: EncAlg,
    pub ipsec_auth_alg: AuthAlg,
    pub ipsec_pfs: IpsecPfs,
    /// Seconds, 0..=86400.
    pub ipsec_lifetime: u32,
}

impl Default for IpsecConfig {
    fn default() -> Self {
        IpsecConfig {
            ipsec_enc_alg: EncAlg::Aes,
            ipsec_auth_alg: AuthAlg::Sha1,
            ipsec_pfs: IpsecPfs::Group2,
            ipsec_lifetime: 86400,
        }
    }
}

/// The default local ASN of the seed.
pub const DEFAULT_LOCAL_ASN: u32 = 45104;

/// BGP over the tunnel (stored and validated now; acted on by a later issue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BgpConfig {
    pub enable_bgp: bool,
    /// A /30 inside 169.254.0.0/16, not a reserved one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_cidr: Option<Cidr>,
    /// An address inside `tunnel_cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_bgp_ip: Option<IpAddr>,
    pub local_asn: u32,
}

impl Default for BgpConfig {
    fn default() -> Self {
        BgpConfig { enable_bgp: false, tunnel_cidr: None, local_bgp_ip: None, local_asn: DEFAULT_LOCAL_ASN }
    }
}

/// Tunnel health check (stored and validated now; acted on by a later issue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheckConfig {
    pub enable: bool,
    /// Destination address of the probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dip: Option<IpAddr>,
    /// Source address of the probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<IpAddr>,
    /// Seconds between probes, 1..=16.
    pub interval: u32,
    /// Failed probes before the tunnel counts as down, 1..=16.
    pub retry: u32,
    pub policy: HealthCheckPolicy,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enable: false,
            dip: None,
            sip: None,
            interval: 3,
            retry: 3,
            policy: HealthCheckPolicy::RevokeRoute,
        }
    }
}

/// A VPN connection between a VPN gateway and a customer gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpnConnection {
    pub vpn_connection_id: String,
    pub name: String,
    pub vpn_gateway_id: String,
    pub customer_gateway_id: String,
    pub local_subnet: SubnetList,
    pub remote_subnet: SubnetList,
    /// true: negotiate at once; false: wait for traffic or the peer.
    pub effect_immediately: bool,
    pub routing_mode: RoutingMode,
    pub auto_config_route: bool,
    pub ike_config: IkeConfig,
    pub ipsec_config: IpsecConfig,
    pub enable_dpd: bool,
    pub enable_nat_traversal: bool,
    pub bgp_config: BgpConfig,
    pub health_check_config: HealthCheckConfig,
    pub create_time: u64,
}

/// Live state of a connection as the IKE side reports it (the seed's `Status` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionStatus {
    #[default]
    IkeSaNotEstablished,
    IkeSaEstablished,
    IpsecSaNotEstablished,
    IpsecSaEstablished,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::IkeSaNotEstablished => "ike_sa_not_established",
            ConnectionStatus::IkeSaEstablished => "ike_sa_established",
            ConnectionStatus::IpsecSaNotEstablished => "ipsec_sa_not_established",
            ConnectionStatus::IpsecSaEstablished => "ipsec_sa_established",
        }
    }
}

/// Phase-1 state shown by DescribeVpnConnection(s) as `IkeSaState`.
pub const IKE_SA_STATES: &[&str] = &["down", "connecting", "established"];
/// Phase-2 state shown as `IpsecSaState`.
pub const IPSEC_SA_STATES: &[&str] = &["down", "established"];

/// Traffic of a connection's IPsec SAs, as the data plane counted it (inner bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

/// Live status of a connection as the IKE side reports it: the seed's `Status`, plus the IKE and
/// IPsec SA states, when they were established and the traffic counters (when the data plane can
/// tell).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveStatus {
    pub status: ConnectionStatus,
    /// One of [`IKE_SA_STATES`].
    pub ike_sa_state: &'static str,
    /// One of [`IPSEC_SA_STATES`].
    pub ipsec_sa_state: &'static str,
    /// Milliseconds since the epoch when the IKE SA was established.
    pub ike_sa_established_time: Option<u64>,
    /// Milliseconds since the epoch when the newest IPsec SA was installed.
    pub ipsec_sa_established_time: Option<u64>,
    pub counters: Option<TrafficCounters>,
}

impl LiveStatus {
    /// The live status implied by a bare seed `Status`.
    pub fn from_status(status: ConnectionStatus) -> Self {
        let (ike, ipsec) = match status {
            ConnectionStatus::IkeSaNotEstablished => ("down", "down"),
            ConnectionStatus::IkeSaEstablished | ConnectionStatus::IpsecSaNotEstablished => ("established", "down"),
            ConnectionStatus::IpsecSaEstablished => ("established", "established"),
        };
        LiveStatus { status, ike_sa_state: ike, ipsec_sa_state: ipsec, ..LiveStatus::default() }
    }
}

/// Id prefixes in the seed's style: prefix + 20 lowercase alphanumerics.
pub const VPN_GATEWAY_PREFIX: &str = "vpn-";
pub const CUSTOMER_GATEWAY_PREFIX: &str = "cgw-";
pub const VPN_CONNECTION_PREFIX: &str = "vco-";

/// Fills `out` with uniformly chosen characters of `alphabet` from the OS CSPRNG (rejection sampling,
/// no modulo bias).
pub fn random_chars(alphabet: &[u8], len: usize) -> String {
    assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).expect("OS random number generator unavailable");
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A new resource id: `prefix` + 20 random lowercase alphanumerics.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", random_chars(LOWER_ALNUM, 20))
}

/// A random 16-character PSK (letters and digits, a subset of the documented set) from the OS CSPRNG.
pub fn random_psk() -> String {
    random_chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 16)
}

/// A random UUID (version 4), upper-case like the seed's RequestIds.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("OS random number generator unavailable");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_uuids_have_the_seed_shape() {
        let id = new_id(VPN_CONNECTION_PREFIX);
        assert_eq!(id.len(), 24);
        assert!(id[4..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(id, new_id(VPN_CONNECTION_PREFIX));
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(random_psk().len(), 16);
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "169.254.10.0/30".parse().unwrap();
        assert!(c.contains("169.254.10.2".parse().unwrap()));
        assert!(!c.contains("169.254.10.4".parse().unwrap()));
        assert!("10.0.0.1/24".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().is_ok());
        assert!("2001:db8::/32".parse::<Cidr>().is_ok());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
        let wide: Cidr = "169.254.0.0/16".parse().unwrap();
        assert!(wide.covers(&c));
        assert!(!c.covers(&wide));
    }
}
