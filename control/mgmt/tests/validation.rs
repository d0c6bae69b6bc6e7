//! Table-driven tests of every validation rule, positive and negative, at the exact boundaries.

use ipsec_mgmt::model::*;
use ipsec_mgmt::validate::{self, Params};

fn conn_params() -> Params {
    Params::new()
        .with("VpnGatewayId", "vpn-aaaaaaaaaaaaaaaaaaaa")
        .with("CustomerGatewayId", "cgw-aaaaaaaaaaaaaaaaaaaa")
        .with("LocalSubnet", "10.0.0.0/24")
        .with("RemoteSubnet", "192.168.0.0/24")
}

/// Applies `k=v` to a valid CreateVpnConnection request: `Ok(())` or the error code.
fn create_with(k: &str, v: &str) -> Result<VpnConnection, String> {
    validate::new_connection(&conn_params().with(k, v), 1).map_err(|e| {
        assert_eq!(e.status, 400, "{e}");
        e.code
    })
}

fn ike(json: &str) -> Result<VpnConnection, String> {
    create_with("IkeConfig", json)
}

#[test]
fn defaults_are_the_seeds() {
    let c = validate::new_connection(&conn_params(), 7).unwrap();
    assert!(c.vpn_connection_id.starts_with("vco-"));
    assert_eq!(c.create_time, 7);
    assert!(!c.effect_immediately);
    assert_eq!(c.routing_mode, RoutingMode::DestRouting);
    assert!(c.enable_dpd && c.enable_nat_traversal);
    let i = &c.ike_config;
    assert_eq!(
        (i.ike_version, i.ike_mode, i.ike_enc_alg, i.ike_auth_alg, i.ike_pfs, i.ike_lifetime),
        (IkeVersion::Ikev1, IkeMode::Main, EncAlg::Aes, AuthAlg::Sha1, DhGroup::Group2, 86400)
    );
    assert_eq!(i.psk.len(), 16, "a random 16-character PSK when omitted");
    validate::psk(&i.psk).unwrap();
    let other = validate::new_connection(&conn_params(), 7).unwrap();
    assert_ne!(other.ike_config.psk, i.psk);
    let s = &c.ipsec_config;
    assert_eq!(
        (s.ipsec_enc_alg, s.ipsec_auth_alg, s.ipsec_pfs, s.ipsec_lifetime),
        (EncAlg::Aes, AuthAlg::Sha1, IpsecPfs::Group2, 86400)
    );
    assert_eq!(c.bgp_config.local_asn, 45104);
    assert!(!c.bgp_config.enable_bgp);
    let h = &c.health_check_config;
    assert_eq!((h.interval, h.retry, h.policy, h.enable), (3, 3, HealthCheckPolicy::RevokeRoute, false));
}

#[test]
fn required_parameters() {
    for k in ["VpnGatewayId", "CustomerGatewayId", "LocalSubnet", "RemoteSubnet"] {
        let mut p = conn_params();
        p.0.remove(k);
        let e = validate::new_connection(&p, 1).unwrap_err();
        assert_eq!(e.code, format!("MissingParameter.{k}"));
        assert!(e.message.contains(k));
    }
}

#[test]
fn names() {
    let ok = [
        "ab".to_string(),
        "a".repeat(128),
        "名字".to_string(),
        "中".to_string() + "x",
        "Conn-1_a.b".to_string(),
        "z9".to_string(),
    ];
    for n in &ok {
        assert_eq!(create_with("Name", n).map(|c| c.name), Ok(n.clone()), "{n}");
    }
    let bad = [
        "a".to_string(),
        "".to_string(),
        "a".repeat(129),
        "1abc".to_string(),
        "_abc".to_string(),
        "-abc".to_string(),
        "http://abc".to_string(),
        "https://abc".to_string(),
        "HTTP://abc".to_string(),
        "ab c".to_string(),
        "ab/c".to_string(),
        "ab:c".to_string(),
        "abé".to_string(),
    ];
    for n in &bad {
        assert_eq!(create_with("Name", n).err().as_deref(), Some("InvalidName.Malformed"), "{n:?}");
    }
    // 128 Chinese characters count as 128, not as their UTF-8 length.
    assert!(create_with("Name", &"中".repeat(128)).is_ok());
    assert!(create_with("Name", &"中".repeat(129)).is_err());
}

#[test]
fn psks() {
    let psk_json = |p: &str| serde_json::json!({ "Psk": p }).to_string();
    for p in ["a", &"x".repeat(100), "A1", validate::PSK_SPECIALS, "abc~`!@#$%^&*()_-+={}[]\\|;:',.<>/?"] {
        assert_eq!(ike(&psk_json(p)).map(|c| c.ike_config.psk), Ok(p.to_string()), "{p:?}");
    }
    let over = "x".repeat(101);
    let mut bad: Vec<&str> = vec!["", &over, "a b", "a\tb", "a\"b", "pské", "a\nb", "中文"];
    // Every printable ASCII character outside the documented set is refused.
    let outside: Vec<String> = (0x20u8..0x7f)
        .map(|b| b as char)
        .filter(|c| !c.is_ascii_alphanumeric() && !validate::PSK_SPECIALS.contains(*c))
        .map(|c| format!("ab{c}"))
        .collect();
    assert_eq!(outside.len(), 2, "only space and '\"' are outside the set: {outside:?}");
    bad.extend(outside.iter().map(String::as_str));
    for p in bad {
        let e = validate::new_connection(&conn_params().with("IkeConfig", psk_json(p)), 1).unwrap_err();
        assert_eq!(e.code, "InvalidPsk.Malformed", "{p:?}");
        assert!(e.message.starts_with("IkeConfig.Psk:"), "{}", e.message);
        if p.len() > 2 {
            assert!(!e.message.contains(p), "the message must not echo the PSK");
        }
    }
}

#[test]
fn subnets() {
    for (v, ok) in [
        ("10.0.0.0/8", true),
        ("0.0.0.0/0", true),
        ("10.1.2.3/32", true),
        ("2001:db8::/48", true),
        ("10.0.0.1/24", false),
        ("10.0.0.0/33", false),
        ("10.0.0.0", false),
        ("10.0.0/24", false),
        ("abc", false),
        ("10.0.0.0/24,", false),
        ("", false),
    ] {
        let r = create_with("LocalSubnet", v);
        if ok {
            assert_eq!(r.unwrap().local_subnet.to_string(), v);
        } else if v.is_empty() {
            assert_eq!(r.err().as_deref(), Some("MissingParameter.LocalSubnet"));
        } else {
            assert_eq!(r.err().as_deref(), Some("InvalidParameter.LocalSubnet"), "{v}");
        }
    }
    assert_eq!(create_with("RemoteSubnet", "1.2.3.4/33").err().as_deref(), Some("InvalidParameter.RemoteSubnet"));
    // More than one subnet only with IKEv2.
    let two = "10.0.0.0/24,10.1.0.0/24";
    for k in ["LocalSubnet", "RemoteSubnet"] {
        let e = validate::new_connection(&conn_params().with(k, two), 1).unwrap_err();
        assert_eq!(e.code, format!("InvalidParameter.{k}"));
        assert!(e.message.contains("ikev2"));
        let e = validate::new_connection(&conn_params().with(k, two).with("IkeConfig", r#"{"IkeVersion":"ikev1"}"#), 1)
            .unwrap_err();
        assert_eq!(e.code, format!("InvalidParameter.{k}"));
        let c = validate::new_connection(&conn_params().with(k, two).with("IkeConfig", r#"{"IkeVersion":"ikev2"}"#), 1)
            .unwrap();
        assert_eq!(if k == "LocalSubnet" { &c.local_subnet } else { &c.remote_subnet }.0.len(), 2);
    }
    let e = create_with("LocalSubnet", "10.0.0.0/24,10.0.0.0/24").unwrap_err();
    assert_eq!(e, "InvalidParameter.LocalSubnet");
}

#[test]
fn ike_config_enums_and_lifetime() {
    let sets: [(&str, &[&str], &[&str]); 5] = [
        ("IkeVersion", &["ikev1", "ikev2"], &["ikev3", "IKEV2", ""]),
        ("IkeMode", &["main", "aggressive"], &["quick", "Main"]),
        ("IkeEncAlg", &["aes", "aes192", "aes256", "des", "3des"], &["aes128", "aes-gcm", "AES"]),
        ("IkeAuthAlg", &["md5", "sha1", "sha256", "sha384", "sha512"], &["sha224", "SHA1"]),
        ("IkePfs", &["group1", "group2", "group5", "group14", "group24"], &["group3", "disabled", "group19"]),
    ];
    for (k, good, bad) in sets {
        for v in good {
            assert!(ike(&format!(r#"{{"{k}":"{v}"}}"#)).is_ok(), "{k}={v}");
        }
        for v in bad {
            assert_eq!(ike(&format!(r#"{{"{k}":"{v}"}}"#)).err(), Some(format!("InvalidParameter.IkeConfig.{k}")));
        }
    }
    for (v, ok) in [("0", true), ("86400", true), ("86401", false), ("-1", false), ("1.5", false), ("\"600\"", true)] {
        let r = ike(&format!(r#"{{"IkeLifetime":{v}}}"#));
        assert_eq!(r.is_ok(), ok, "IkeLifetime={v}");
        if !ok {
            assert_eq!(r.err().as_deref(), Some("InvalidParameter.IkeConfig.IkeLifetime"));
        }
    }
    assert_eq!(ike(r#"{"Bogus":1}"#).err().as_deref(), Some("InvalidParameter.IkeConfig"));
    assert_eq!(ike("not json").err().as_deref(), Some("InvalidParameter.IkeConfig"));
    assert_eq!(ike("[1]").err().as_deref(), Some("InvalidParameter.IkeConfig"));
    assert_eq!(ike(r#"{"IkeVersion":["ikev2"]}"#).err().as_deref(), Some("InvalidParameter.IkeConfig.IkeVersion"));
}

#[test]
fn ike_ids() {
    for k in ["LocalId", "RemoteId"] {
        let j = |v: &str| serde_json::json!({ k: v }).to_string();
        assert!(ike(&j(&"i".repeat(100))).is_ok());
        assert!(ike(&j("peer@example.com")).is_ok());
        assert_eq!(ike(&j(&"i".repeat(101))).err(), Some(format!("Invalid{k}.Malformed")));
        assert_eq!(ike(&j("a b")).err(), Some(format!("Invalid{k}.Malformed")));
    }
}

#[test]
fn ipsec_config() {
    let sets: [(&str, &[&str], &[&str]); 3] = [
        ("IpsecEncAlg", &["aes", "aes192", "aes256", "des", "3des"], &["aes-gcm", "null"]),
        ("IpsecAuthAlg", &["md5", "sha1", "sha256", "sha384", "sha512"], &["none"]),
        ("IpsecPfs", &["disabled", "group1", "group2", "group5", "group14", "group24"], &["group3", "off"]),
    ];
    for (k, good, bad) in sets {
        for v in good {
            assert!(create_with("IpsecConfig", &format!(r#"{{"{k}":"{v}"}}"#)).is_ok(), "{k}={v}");
        }
        for v in bad {
            let r = create_with("IpsecConfig", &format!(r#"{{"{k}":"{v}"}}"#));
            assert_eq!(r.err(), Some(format!("InvalidParameter.IpsecConfig.{k}")));
        }
    }
    for (v, ok) in [("0", true), ("86400", true), ("86401", false)] {
        let r = create_with("IpsecConfig", &format!(r#"{{"IpsecLifetime":{v}}}"#));
        assert_eq!(r.is_ok(), ok);
        if !ok {
            assert_eq!(r.err().as_deref(), Some("InvalidParameter.IpsecConfig.IpsecLifetime"));
        }
    }
}

#[test]
fn asns() {
    for (v, want) in [
        ("1", Some(1)),
        ("4294967295", Some(4294967295)),
        ("45104", Some(45104)),
        ("123.456", Some(8061384)),
        ("0.1", Some(1)),
        ("65535.65535", Some(4294967295)),
        ("0", None),
        ("0.0", None),
        ("4294967296", None),
        ("65536.0", None),
        ("1.65536", None),
        ("-1", None),
        ("1.", None),
        (".1", None),
        ("1.2.3", None),
        ("abc", None),
        ("", None),
    ] {
        assert_eq!(validate::asn("Asn", v).ok(), want, "{v:?}");
        let r = create_with("BgpConfig", &format!(r#"{{"LocalAsn":"{v}"}}"#));
        match want {
            Some(n) => assert_eq!(r.unwrap().bgp_config.local_asn, n),
            None => assert_eq!(r.err().as_deref(), Some("InvalidParameter.BgpConfig.LocalAsn"), "{v:?}"),
        }
    }
    // Numbers in JSON are accepted too.
    assert_eq!(create_with("BgpConfig", r#"{"LocalAsn":65001}"#).unwrap().bgp_config.local_asn, 65001);
}

#[test]
fn tunnel_cidrs() {
    let bgp = |cidr: &str, ip: &str| {
        create_with("BgpConfig", &format!(r#"{{"EnableBgp":true,"TunnelCidr":"{cidr}","LocalBgpIp":"{ip}"}}"#))
    };
    let c = bgp("169.254.10.0/30", "169.254.10.1").unwrap();
    assert_eq!(c.bgp_config.tunnel_cidr.unwrap().to_string(), "169.254.10.0/30");
    assert!(bgp("169.254.6.0/30", "169.254.6.2").is_ok());
    assert!(bgp("169.254.169.248/30", "169.254.169.249").is_ok());
    assert!(bgp("169.254.0.4/30", "169.254.0.5").is_ok(), "only x.0/30 of 169.254.0-5 are reserved");
    for reserved in validate::RESERVED_TUNNEL_CIDRS {
        let base: std::net::Ipv4Addr = reserved.split('/').next().unwrap().parse().unwrap();
        let ip = std::net::Ipv4Addr::from(u32::from(base) + 1).to_string();
        assert_eq!(bgp(reserved, &ip).err().as_deref(), Some("InvalidParameter.BgpConfig.TunnelCidr"), "{reserved}");
    }
    for bad in ["169.254.10.0/29", "169.254.10.0/31", "10.0.0.0/30", "169.255.0.0/30", "169.254.10.1/30", "x"] {
        assert_eq!(bgp(bad, "169.254.10.1").err().as_deref(), Some("InvalidParameter.BgpConfig.TunnelCidr"), "{bad}");
    }
    assert_eq!(bgp("169.254.10.0/30", "169.254.10.4").err().as_deref(), Some("InvalidParameter.BgpConfig.LocalBgpIp"));
    assert_eq!(bgp("169.254.10.0/30", "nope").err().as_deref(), Some("InvalidParameter.BgpConfig.LocalBgpIp"));
    assert_eq!(
        create_with("BgpConfig", r#"{"EnableBgp":true}"#).err().as_deref(),
        Some("MissingParameter.BgpConfig.TunnelCidr")
    );
    assert_eq!(
        create_with("BgpConfig", r#"{"EnableBgp":true,"TunnelCidr":"169.254.10.0/30"}"#).err().as_deref(),
        Some("MissingParameter.BgpConfig.LocalBgpIp")
    );
    assert_eq!(
        create_with("BgpConfig", r#"{"EnableBgp":"maybe"}"#).err().as_deref(),
        Some("InvalidParameter.BgpConfig.EnableBgp")
    );
}

#[test]
fn health_check() {
    let hc = |j: &str| create_with("HealthCheckConfig", j);
    let c =
        hc(r#"{"Enable":true,"Dip":"192.168.0.1","Sip":"10.0.0.1","Interval":16,"Retry":1,"Policy":"reserve_route"}"#)
            .unwrap();
    assert_eq!(c.health_check_config.policy, HealthCheckPolicy::ReserveRoute);
    assert_eq!(
        hc(r#"{"Enable":true,"Sip":"10.0.0.1"}"#).err().as_deref(),
        Some("MissingParameter.HealthCheckConfig.Dip")
    );
    assert_eq!(
        hc(r#"{"Enable":true,"Dip":"10.0.0.1"}"#).err().as_deref(),
        Some("MissingParameter.HealthCheckConfig.Sip")
    );
    for (k, v) in [
        ("Interval", "0"),
        ("Interval", "17"),
        ("Retry", "0"),
        ("Retry", "17"),
        ("Policy", "\"drop\""),
        ("Dip", "\"x\""),
    ] {
        assert_eq!(hc(&format!(r#"{{"{k}":{v}}}"#)).err(), Some(format!("InvalidParameter.HealthCheckConfig.{k}")));
    }
}

#[test]
fn booleans_and_routing_mode() {
    for k in ["EffectImmediately", "EnableDpd", "EnableNatTraversal", "AutoConfigRoute"] {
        assert!(create_with(k, "true").is_ok());
        assert!(create_with(k, "False").is_ok());
        assert_eq!(create_with(k, "yes").err(), Some(format!("InvalidParameter.{k}")));
    }
    assert_eq!(
        create_with("RoutingMode", "protected_data_flows").unwrap().routing_mode,
        RoutingMode::ProtectedDataFlows
    );
    assert_eq!(create_with("RoutingMode", "bgp").err().as_deref(), Some("InvalidParameter.RoutingMode"));
}

#[test]
fn gateways() {
    let cgw = |p: Params| validate::new_customer_gateway(&p, 1).map_err(|e| e.code);
    let base = Params::new().with("IpAddress", "203.0.113.7");
    let g = cgw(base.clone().with("Asn", "123.456").with("Name", "peer1").with("Description", "x")).unwrap();
    assert!(g.customer_gateway_id.starts_with("cgw-"));
    assert_eq!(g.asn, 8061384);
    assert_eq!(cgw(Params::new()).err().as_deref(), Some("MissingParameter.IpAddress"));
    assert_eq!(cgw(Params::new().with("IpAddress", "1.2.3")).err().as_deref(), Some("InvalidParameter.IpAddress"));
    assert_eq!(cgw(base.clone().with("Asn", "0")).err().as_deref(), Some("InvalidParameter.Asn"));
    assert_eq!(cgw(base.clone().with("Name", "1x")).err().as_deref(), Some("InvalidName.Malformed"));
    assert_eq!(cgw(base.clone().with("Description", "")).err().as_deref(), Some("InvalidDescription.Malformed"));
    assert_eq!(
        cgw(base.clone().with("Description", "d".repeat(101))).err().as_deref(),
        Some("InvalidDescription.Malformed")
    );
    assert!(cgw(base.clone().with("Description", "d".repeat(100))).is_ok());
    assert_eq!(cgw(base.with("Description", "https://x")).err().as_deref(), Some("InvalidDescription.Malformed"));

    let vgw = validate::new_vpn_gateway(&Params::new().with("PublicIp", "198.51.100.1"), 1).unwrap();
    assert!(vgw.vpn_gateway_id.starts_with("vpn-"));
    assert_eq!(vgw.status, "active");
    assert_eq!(validate::new_vpn_gateway(&Params::new(), 1).unwrap_err().code, "MissingParameter.PublicIp");
}
