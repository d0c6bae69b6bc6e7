//! Validation of request parameters, exactly as the seed documents them. Every function returns the
//! first failure as an [`ApiError`] naming the field; callers store nothing on error.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::model::*;

/// Request parameters by their seed names (query string and form body merged; the body wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder used by tests and the CLI.
    pub fn with(mut self, k: &str, v: impl Into<String>) -> Self {
        self.0.insert(k.to_string(), v.into());
        self
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn required(&self, k: &str) -> Result<&str, ApiError> {
        match self.get(k) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::missing(k)),
        }
    }

    pub fn bool_or(&self, k: &str, default: bool) -> Result<bool, ApiError> {
        self.get(k).map_or(Ok(default), |v| parse_bool(k, v))
    }

    pub fn opt_bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        self.get(k).map(|v| parse_bool(k, v)).transpose()
    }

    /// An integer parameter in `min..=max`, `default` when absent.
    pub fn int_or(&self, k: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        self.get(k).map_or(Ok(default), |v| parse_int(k, v, min, max))
    }
}

pub fn parse_bool(field: &str, v: &str) -> Result<bool, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::invalid(field, format!("{:?} is not a boolean (true or false)", clip(v)))),
    }
}

pub fn parse_int(field: &str, v: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    let n = if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().ok()
    } else {
        None
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(field, format!("{:?} is not an integer in {min}..={max}", clip(v)))),
    }
}

/// Shortens a user value before quoting it in an error message.
fn clip(v: &str) -> String {
    if v.chars().count() > 64 {
        format!("{}...", v.chars().take(64).collect::<String>())
    } else {
        v.to_string()
    }
}

fn is_chinese(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{20000}'..='\u{2A6DF}' | '\u{F900}'..='\u{FAFF}')
}

fn starts_with_http(v: &str) -> bool {
    let l = v.get(..8).unwrap_or(v).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// Name: 2-128 characters; first a letter or a Chinese character; then letters (including Chinese),
/// digits, '.', '_', '-'; not starting with `http://` or `https://`.
pub fn name(field: &str, v: &str) -> Result<String, ApiError> {
    if starts_with_http(v) {
        return Err(ApiError::malformed(field, "must not start with http:// or https://"));
    }
    let n = v.chars().count();
    if !(2..=128).contains(&n) {
        return Err(ApiError::malformed(field, format!("must be 2 to 128 characters long, got {n}")));
    }
    let first = v.chars().next().unwrap_or(' ');
    if !(first.is_ascii_alphabetic() || is_chinese(first)) {
        return Err(ApiError::malformed(field, "must start with a letter or a Chinese character"));
    }
    if let Some(bad) =
        v.chars().find(|&c| !(c.is_ascii_alphanumeric() || is_chinese(c) || matches!(c, '.' | '_' | '-')))
    {
        return Err(ApiError::malformed(
            field,
            format!("character {bad:?} is not allowed (letters, digits, '.', '_', '-' only)"),
        ));
    }
    Ok(v.to_string())
}

/// Description: 1-100 characters, not starting with `http://` or `https://`.
pub fn description(field: &str, v: &str) -> Result<String, ApiError> {
    if starts_with_http(v) {
        return Err(ApiError::malformed(field, "must not start with http:// or https://"));
    }
    let n = v.chars().count();
    if !(1..=100).contains(&n) {
        return Err(ApiError::malformed(field, format!("must be 1 to 100 characters long, got {n}")));
    }
    Ok(v.to_string())
}

/// The PSK alphabet beyond letters and digits: ``~`!@#$%^&*()_-+={}[]\|;:',.<>/?``.
pub const PSK_SPECIALS: &str = "~`!@#$%^&*()_-+={}[]\\|;:',.<>/?";

/// PSK: 1-100 characters of letters, digits and [`PSK_SPECIALS`]; no spaces. The message never
/// echoes the key.
pub fn psk(v: &str) -> Result<String, ApiError> {
    let n = v.chars().count();
    if !(1..=100).contains(&n) {
        return Err(ApiError::malformed("IkeConfig.Psk", format!("must be 1 to 100 characters long, got {n}")));
    }
    if let Some(pos) = v.chars().position(|c| !(c.is_ascii_alphanumeric() || PSK_SPECIALS.contains(c))) {
        return Err(ApiError::malformed(
            "IkeConfig.Psk",
            format!(
                "character at position {} is not allowed (letters, digits and {PSK_SPECIALS} only; no spaces)",
                pos + 1
            ),
        ));
    }
    Ok(v.to_string())
}

/// LocalId / RemoteId: at most 100 characters, no whitespace.
pub fn ike_id(field: &str, v: &str) -> Result<String, ApiError> {
    let n = v.chars().count();
    if n > 100 {
        return Err(ApiError::malformed(field, format!("must be at most 100 characters long, got {n}")));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::malformed(field, "must not contain spaces"));
    }
    Ok(v.to_string())
}

pub fn ip(field: &str, v: &str) -> Result<IpAddr, ApiError> {
    v.parse().map_err(|_| ApiError::invalid(field, format!("{:?} is not an IP address", clip(v))))
}

/// A comma-separated list of CIDR blocks (network addresses, no host bits set), at least one.
pub fn subnets(field: &str, v: &str) -> Result<SubnetList, ApiError> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let c: Cidr = part.trim().parse().map_err(|e: String| ApiError::invalid(field, clip(&e)))?;
        if out.contains(&c) {
            return Err(ApiError::invalid(field, format!("{c} is listed twice")));
        }
        out.push(c);
    }
    Ok(SubnetList(out))
}

/// An ASN, 1..=4294967295, plain ("65001") or asdot ("123.456" = 123*65536+456).
pub fn asn(field: &str, v: &str) -> Result<u32, ApiError> {
    let bad =
        || ApiError::invalid(field, format!("{:?} is not an ASN in 1..=4294967295 (plain or asdot x.y)", clip(v)));
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    let n: u64 = match v.split_once('.') {
        Some((hi, lo)) => {
            if !digits(hi) || !digits(lo) {
                return Err(bad());
            }
            let (hi, lo): (u64, u64) = (hi.parse().map_err(|_| bad())?, lo.parse().map_err(|_| bad())?);
            if hi > 65535 || lo > 65535 {
                return Err(bad());
            }
            hi * 65536 + lo
        }
        None if digits(v) => v.parse().map_err(|_| bad())?,
        None => return Err(bad()),
    };
    if (1..=u32::MAX as u64).contains(&n) {
        Ok(n as u32)
    } else {
        Err(bad())
    }
}

/// The /30 tunnel CIDRs the seed reserves.
pub const RESERVED_TUNNEL_CIDRS: &[&str] = &[
    "169.254.0.0/30",
    "169.254.1.0/30",
    "169.254.2.0/30",
    "169.254.3.0/30",
    "169.254.4.0/30",
    "169.254.5.0/30",
    "169.254.169.252/30",
];

/// TunnelCidr: a /30 inside 169.254.0.0/16, not one of [`RESERVED_TUNNEL_CIDRS`].
pub fn tunnel_cidr(v: &str) -> Result<Cidr, ApiError> {
    const F: &str = "BgpConfig.TunnelCidr";
    let c: Cidr = v.parse().map_err(|e: String| ApiError::invalid(F, clip(&e)))?;
    let link_local: Cidr = "169.254.0.0/16".parse().expect("constant");
    if !link_local.covers(&c) {
        return Err(ApiError::invalid(F, format!("{c} is not inside 169.254.0.0/16")));
    }
    if c.prefix != 30 {
        return Err(ApiError::invalid(F, format!("{c}: the prefix length must be /30")));
    }
    if RESERVED_TUNNEL_CIDRS.iter().any(|r| r.parse::<Cidr>().ok() == Some(c)) {
        return Err(ApiError::invalid(F, format!("{c} is reserved")));
    }
    Ok(c)
}

/// Parses a nested config parameter (`IkeConfig`, ...) as a JSON object.
pub fn json_object(field: &str, v: &str) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_str::<Value>(v) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid(field, "must be a JSON object")),
        Err(e) => Err(ApiError::invalid(field, format!("is not valid JSON ({e})"))),
    }
}

/// A value inside a nested config: strings as they are, numbers and booleans as their JSON text.
fn scalar(field: &str, v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        _ => Err(ApiError::invalid(field, "must be a string, number or boolean")),
    }
}

fn enum_value<T>(field: &str, v: &str, parse: fn(&str) -> Option<T>, all: &[&str]) -> Result<T, ApiError> {
    parse(v).ok_or_else(|| ApiError::invalid(field, format!("{:?} is not one of {}", clip(v), all.join(", "))))
}

fn unknown_key(config: &str, k: &str) -> ApiError {
    ApiError::invalid(config, format!("unknown key {:?}", clip(k)))
}

/// Applies an `IkeConfig` JSON object onto `cfg` (defaults on create, the stored config on modify).
/// `Psk` absent keeps `cfg.psk` (the caller generates one on create).
pub fn apply_ike_config(cfg: &mut IkeConfig, obj: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in obj {
        let field = format!("IkeConfig.{k}");
        let Some(s) = scalar(&field, v)? else { continue };
        match k.as_str() {
            "Psk" => cfg.psk = psk(&s)?,
            "IkeVersion" => cfg.ike_version = enum_value(&field, &s, IkeVersion::parse, IkeVersion::ALL)?,
            "IkeMode" => cfg.ike_mode = enum_value(&field, &s, IkeMode::parse, IkeMode::ALL)?,
            "IkeEncAlg" => cfg.ike_enc_alg = enum_value(&field, &s, EncAlg::parse, EncAlg::ALL)?,
            "IkeAuthAlg" => cfg.ike_auth_alg = enum_value(&field, &s, AuthAlg::parse, AuthAlg::ALL)?,
            "IkePfs" => cfg.ike_pfs = enum_value(&field, &s, DhGroup::parse, DhGroup::ALL)?,
            "IkeLifetime" => cfg.ike_lifetime = parse_int(&field, &s, 0, 86400)? as u32,
            "LocalId" => cfg.local_id = ike_id(&field, &s)?,
            "RemoteId" => cfg.remote_id = ike_id(&field, &s)?,
            _ => return Err(unknown_key("IkeConfig", k)),
        }
    }
    Ok(())
}

/// Applies an `IpsecConfig` JSON object onto `cfg`.
pub fn apply_ipsec_config(cfg: &mut IpsecConfig, obj: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in obj {
        let field = format!("IpsecConfig.{k}");
        let Some(s) = scalar(&field, v)? else { continue };
        match k.as_str() {
            "IpsecEncAlg" => cfg.ipsec_enc_alg = enum_value(&field, &s, EncAlg::parse, EncAlg::ALL)?,
            "IpsecAuthAlg" => cfg.ipsec_auth_alg = enum_value(&field, &s, AuthAlg::parse, AuthAlg::ALL)?,
            "IpsecPfs" => cfg.ipsec_pfs = enum_value(&field, &s, IpsecPfs::parse, IpsecPfs::ALL)?,
            "IpsecLifetime" => cfg.ipsec_lifetime = parse_int(&field, &s, 0, 86400)? as u32,
            _ => return Err(unknown_key("IpsecConfig", k)),
        }
    }
    Ok(())
}

/// Applies a `BgpConfig` JSON object onto `cfg` and checks the cross-field rules: with EnableBgp,
/// TunnelCidr and LocalBgpIp are required; LocalBgpIp lies inside TunnelCidr.
pub fn apply_bgp_config(cfg: &mut BgpConfig, obj: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in obj {
        let field = format!("BgpConfig.{k}");
        let Some(s) = scalar(&field, v)? else { continue };
        match k.as_str() {
            "EnableBgp" => cfg.enable_bgp = parse_bool(&field, &s)?,
            "TunnelCidr" => cfg.tunnel_cidr = Some(tunnel_cidr(&s)?),
            "LocalBgpIp" => cfg.local_bgp_ip = Some(ip(&field, &s)?),
            "LocalAsn" => cfg.local_asn = asn(&field, &s)?,
            _ => return Err(unknown_key("BgpConfig", k)),
        }
    }
    if cfg.enable_bgp {
        if cfg.tunnel_cidr.is_none() {
            return Err(ApiError::missing("BgpConfig.TunnelCidr"));
        }
        if cfg.local_bgp_ip.is_none() {
            return Err(ApiError::missing("BgpConfig.LocalBgpIp"));
        }
    }
    if let (Some(c), Some(ip)) = (cfg.tunnel_cidr, cfg.local_bgp_ip) {
        if !c.contains(ip) {
            return Err(ApiError::invalid("BgpConfig.LocalBgpIp", format!("{ip} is not inside TunnelCidr {c}")));
        }
    }
    Ok(())
}

/// Applies a `HealthCheckConfig` JSON object onto `cfg`; with Enable, Dip and Sip are required.
pub fn apply_health_check_config(cfg: &mut HealthCheckConfig, obj: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in obj {
        let field = format!("HealthCheckConfig.{k}");
        let Some(s) = scalar(&field, v)? else { continue };
        match k.as_str() {
            "Enable" => cfg.enable = parse_bool(&field, &s)?,
            "Dip" => cfg.dip = Some(ip(&field, &s)?),
            "Sip" => cfg.sip = Some(ip(&field, &s)?),
            "Interval" => cfg.interval = parse_int(&field, &s, 1, 16)? as u32,
            "Retry" => cfg.retry = parse_int(&field, &s, 1, 16)? as u32,
            "Policy" => cfg.policy = enum_value(&field, &s, HealthCheckPolicy::parse, HealthCheckPolicy::ALL)?,
            _ => return Err(unknown_key("HealthCheckConfig", k)),
        }
    }
    if cfg.enable {
        if cfg.dip.is_none() {
            return Err(ApiError::missing("HealthCheckConfig.Dip"));
        }
        if cfg.sip.is_none() {
            return Err(ApiError::missing("HealthCheckConfig.Sip"));
        }
    }
    Ok(())
}

/// Rules across a whole connection: more than one local or remote subnet needs IKEv2.
pub fn connection(c: &VpnConnection) -> Result<(), ApiError> {
    if c.ike_config.ike_version != IkeVersion::Ikev2 {
        for (field, list) in [("LocalSubnet", &c.local_subnet), ("RemoteSubnet", &c.remote_subnet)] {
            if list.0.len() > 1 {
                return Err(ApiError::invalid(
                    field,
                    "more than one CIDR block requires IkeConfig.IkeVersion=ikev2 (ikev1 allows exactly one)",
                ));
            }
        }
    }
    Ok(())
}

/// The mutable, user-supplied part of a VPN connection as parsed from Create/Modify parameters.
/// Applies every present parameter onto `c`; Create starts from defaults, Modify from the stored one.
pub fn apply_connection_params(c: &mut VpnConnection, p: &Params) -> Result<(), ApiError> {
    if let Some(v) = p.get("Name") {
        c.name = name("Name", v)?;
    }
    if let Some(v) = p.get("LocalSubnet") {
        c.local_subnet = subnets("LocalSubnet", v)?;
    }
    if let Some(v) = p.get("RemoteSubnet") {
        c.remote_subnet = subnets("RemoteSubnet", v)?;
    }
    if let Some(v) = p.opt_bool("EffectImmediately")? {
        c.effect_immediately = v;
    }
    if let Some(v) = p.get("RoutingMode") {
        c.routing_mode = enum_value("RoutingMode", v, RoutingMode::parse, RoutingMode::ALL)?;
    }
    if let Some(v) = p.opt_bool("AutoConfigRoute")? {
        c.auto_config_route = v;
    }
    if let Some(v) = p.get("IkeConfig") {
        apply_ike_config(&mut c.ike_config, &json_object("IkeConfig", v)?)?;
    }
    if let Some(v) = p.get("IpsecConfig") {
        apply_ipsec_config(&mut c.ipsec_config, &json_object("IpsecConfig", v)?)?;
    }
    if let Some(v) = p.opt_bool("EnableDpd")? {
        c.enable_dpd = v;
    }
    if let Some(v) = p.opt_bool("EnableNatTraversal")? {
        c.enable_nat_traversal = v;
    }
    if let Some(v) = p.get("BgpConfig") {
        apply_bgp_config(&mut c.bgp_config, &json_object("BgpConfig", v)?)?;
    }
    if let Some(v) = p.get("HealthCheckConfig") {
        apply_health_check_config(&mut c.health_check_config, &json_object("HealthCheckConfig", v)?)?;
    }
    connection(c)
}

/// Parameters of CreateVpnConnection turned into a connection (ids and defaults filled in; the
/// caller checks the gateways exist and sets LocalId/RemoteId defaults from their addresses).
pub fn new_connection(p: &Params, now_ms: u64) -> Result<VpnConnection, ApiError> {
    let vpn_gateway_id = p.required("VpnGatewayId")?.to_string();
    let customer_gateway_id = p.required("CustomerGatewayId")?.to_string();
    p.required("LocalSubnet")?;
    p.required("RemoteSubnet")?;
    let id = new_id(VPN_CONNECTION_PREFIX);
    let mut c = VpnConnection {
        vpn_connection_id: id.clone(),
        name: id,
        vpn_gateway_id,
        customer_gateway_id,
        local_subnet: SubnetList::default(),
        remote_subnet: SubnetList::default(),
        effect_immediately: false,
        routing_mode: RoutingMode::DestRouting,
        auto_config_route: true,
        ike_config: IkeConfig::default(),
        ipsec_config: IpsecConfig::default(),
        enable_dpd: true,
        enable_nat_traversal: true,
        bgp_config: BgpConfig::default(),
        health_check_config: HealthCheckConfig::default(),
        create_time: now_ms,
    };
    apply_connection_params(&mut c, p)?;
    if c.ike_config.psk.is_empty() {
        c.ike_config.psk = random_psk();
    }
    Ok(c)
}

/// Parameters of CreateCustomerGateway.
pub fn new_customer_gateway(p: &Params, now_ms: u64) -> Result<CustomerGateway, ApiError> {
    let ip_address = ip("IpAddress", p.required("IpAddress")?)?;
    let id = new_id(CUSTOMER_GATEWAY_PREFIX);
    Ok(CustomerGateway {
        name: p.get("Name").map(|v| name("Name", v)).transpose()?.unwrap_or_else(|| id.clone()),
        customer_gateway_id: id,
        ip_address,
        asn: p.get("Asn").map(|v| asn("Asn", v)).transpose()?.unwrap_or(0),
        description: p.get("Description").map(|v| description("Description", v)).transpose()?.unwrap_or_default(),
        create_time: now_ms,
    })
}

/// Parameters of CreateVpnGateway.
pub fn new_vpn_gateway(p: &Params, now_ms: u64) -> Result<VpnGateway, ApiError> {
    let public_ip = ip("PublicIp", p.required("PublicIp")?)?;
    let id = new_id(VPN_GATEWAY_PREFIX);
    Ok(VpnGateway {
        name: p.get("Name").map(|v| name("Name", v)).transpose()?.unwrap_or_else(|| id.clone()),
        vpn_gateway_id: id,
        public_ip,
        status: "active".to_string(),
        description: p.get("Description").map(|v| description("Description", v)).transpose()?.unwrap_or_default(),
        create_time: now_ms,
    })
}
