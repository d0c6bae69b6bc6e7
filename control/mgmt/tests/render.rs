//! DownloadVpnConnectionConfig renderings: the swapped JSON peer view and the peer's swanctl.conf
//! (algorithm mapping, IKE version/mode, PFS, lifetimes, traffic selectors, quoting), parsed back
//! with a small reader of the swanctl.conf syntax. A later task checks it against real strongSwan.

use std::collections::BTreeMap;

use ipsec_mgmt::model::{CustomerGateway, VpnConnection, VpnGateway};
use ipsec_mgmt::render::{peer_view, swanctl_conf};
use ipsec_mgmt::validate::{self, Params};

fn fixture(extra: &[(&str, &str)]) -> (VpnConnection, VpnGateway, CustomerGateway) {
    let gw = validate::new_vpn_gateway(&Params::new().with("PublicIp", "198.51.100.1"), 1).unwrap();
    let cgw = validate::new_customer_gateway(&Params::new().with("IpAddress", "203.0.113.7"), 1).unwrap();
    let mut p = Params::new()
        .with("VpnGatewayId", gw.vpn_gateway_id.clone())
        .with("CustomerGatewayId", cgw.customer_gateway_id.clone())
        .with("LocalSubnet", "10.0.0.0/24")
        .with("RemoteSubnet", "192.168.0.0/24");
    for (k, v) in extra {
        p = p.with(k, *v);
    }
    let mut c = validate::new_connection(&p, 1).unwrap();
    if c.ike_config.local_id.is_empty() {
        c.ike_config.local_id = gw.public_ip.to_string();
    }
    if c.ike_config.remote_id.is_empty() {
        c.ike_config.remote_id = cgw.ip_address.to_string();
    }
    (c, gw, cgw)
}

/// Reads swanctl.conf syntax into "section.sub.key" → value; panics on anything malformed.
fn parse(conf: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<String> = Vec::new();
    for (n, raw) in conf.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "}" {
            stack.pop().unwrap_or_else(|| panic!("line {}: unbalanced }}", n + 1));
        } else if let Some(name) = line.strip_suffix(" {") {
            assert!(!name.contains(' ') && !name.is_empty(), "line {}: bad section {line:?}", n + 1);
            stack.push(name.to_string());
        } else {
            let (k, v) = line.split_once(" = ").unwrap_or_else(|| panic!("line {}: not key = value: {line:?}", n + 1));
            assert!(!k.contains(' '), "line {}: bad key", n + 1);
            let mut key = stack.join(".");
            key.push('.');
            key.push_str(k);
            assert!(out.insert(key, v.to_string()).is_none(), "line {}: duplicate key", n + 1);
        }
    }
    assert!(stack.is_empty(), "unclosed sections {stack:?}");
    out
}

#[test]
fn json_peer_view_swaps_sides() {
    let (c, gw, cgw) = fixture(&[("IkeConfig", r#"{"LocalId":"gw-id","RemoteId":"peer-id","Psk":"k1"}"#)]);
    let v = peer_view(&c, &gw, &cgw);
    assert_eq!(v["LocalSubnet"], "192.168.0.0/24");
    assert_eq!(v["RemoteSubnet"], "10.0.0.0/24");
    assert_eq!(v["RemoteIp"], "198.51.100.1");
    assert_eq!(v["LocalIp"], "203.0.113.7");
    assert_eq!(v["IkeConfig"]["LocalId"], "peer-id");
    assert_eq!(v["IkeConfig"]["RemoteId"], "gw-id");
    assert_eq!(v["IkeConfig"]["Psk"], "k1");
    assert_eq!(v["IkeConfig"]["IkeVersion"], "ikev1");
    assert_eq!(v["IpsecConfig"]["IpsecPfs"], "group2");
}

#[test]
fn swanctl_defaults() {
    let (c, gw, cgw) = fixture(&[("IkeConfig", r#"{"Psk":"simple-psk"}"#)]);
    let conf = swanctl_conf(&c, &gw, &cgw);
    let kv = parse(&conf);
    let id = &c.vpn_connection_id;
    let k =
        |s: &str| kv.get(&format!("connections.{id}.{s}")).cloned().unwrap_or_else(|| panic!("{s} missing:\n{conf}"));
    assert_eq!(k("version"), "1");
    assert!(!kv.contains_key(&format!("connections.{id}.aggressive")));
    assert_eq!(k("local_addrs"), "203.0.113.7");
    assert_eq!(k("remote_addrs"), "198.51.100.1");
    assert_eq!(k("proposals"), "aes128-sha1-modp1024");
    assert_eq!(k("rekey_time"), "86400s");
    assert_eq!(k("dpd_delay"), "30s");
    assert_eq!(k("local.auth"), "psk");
    assert_eq!(k("local.id"), "\"203.0.113.7\"");
    assert_eq!(k("remote.id"), "\"198.51.100.1\"");
    assert_eq!(k(&format!("children.{id}.local_ts")), "192.168.0.0/24");
    assert_eq!(k(&format!("children.{id}.remote_ts")), "10.0.0.0/24");
    assert_eq!(k(&format!("children.{id}.esp_proposals")), "aes128-sha1-modp1024");
    assert_eq!(k(&format!("children.{id}.rekey_time")), "86400s");
    assert_eq!(kv[&format!("secrets.ike-{id}.secret")], "\"simple-psk\"");
    assert_eq!(kv[&format!("secrets.ike-{id}.id-local")], "\"203.0.113.7\"");
    assert_eq!(kv[&format!("secrets.ike-{id}.id-remote")], "\"198.51.100.1\"");
}

#[test]
fn swanctl_algorithms_versions_and_quoting() {
    let (c, gw, cgw) = fixture(&[
        ("LocalSubnet", "10.0.0.0/24,10.1.0.0/16"),
        ("RemoteSubnet", "192.168.0.0/24,172.16.0.0/12"),
        ("EnableDpd", "false"),
        (
            "IkeConfig",
            r#"{"IkeVersion":"ikev2","IkeEncAlg":"aes256","IkeAuthAlg":"sha512","IkePfs":"group24","IkeLifetime":0,"Psk":"a\\b#{c}","RemoteId":"peer\"x"}"#,
        ),
        ("IpsecConfig", r#"{"IpsecEncAlg":"3des","IpsecAuthAlg":"md5","IpsecPfs":"disabled","IpsecLifetime":3600}"#),
    ]);
    let conf = swanctl_conf(&c, &gw, &cgw);
    let kv = parse(&conf);
    let id = &c.vpn_connection_id;
    let k =
        |s: &str| kv.get(&format!("connections.{id}.{s}")).cloned().unwrap_or_else(|| panic!("{s} missing:\n{conf}"));
    assert_eq!(k("version"), "2");
    assert_eq!(k("proposals"), "aes256-sha512-modp2048s256");
    assert_eq!(k("rekey_time"), "0");
    assert!(!kv.contains_key(&format!("connections.{id}.dpd_delay")));
    assert_eq!(k(&format!("children.{id}.local_ts")), "192.168.0.0/24,172.16.0.0/12");
    assert_eq!(k(&format!("children.{id}.remote_ts")), "10.0.0.0/24,10.1.0.0/16");
    assert_eq!(k(&format!("children.{id}.esp_proposals")), "3des-md5");
    assert_eq!(k(&format!("children.{id}.rekey_time")), "3600s");
    // The peer's own id is our RemoteId, escaped; a PSK with a backslash is given in hex.
    assert_eq!(k("local.id"), r#""peer\"x""#);
    let hex: String = r"a\b#{c}".bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(kv[&format!("secrets.ike-{id}.secret")], format!("0x{hex}"));

    let (c, gw, cgw) = fixture(&[
        ("IkeConfig", r#"{"IkeMode":"aggressive","IkeEncAlg":"des","IkeAuthAlg":"sha384","IkePfs":"group5"}"#),
        ("IpsecConfig", r#"{"IpsecEncAlg":"aes192","IpsecAuthAlg":"sha256","IpsecPfs":"group14"}"#),
    ]);
    let kv = parse(&swanctl_conf(&c, &gw, &cgw));
    let id = &c.vpn_connection_id;
    assert_eq!(kv[&format!("connections.{id}.aggressive")], "yes");
    assert_eq!(kv[&format!("connections.{id}.proposals")], "des-sha384-modp1536");
    assert_eq!(kv[&format!("connections.{id}.children.{id}.esp_proposals")], "aes192-sha256-modp2048");
    // The generated 16-character PSK is plain alphanumerics: quoted.
    assert_eq!(kv[&format!("secrets.ike-{id}.secret")], format!("\"{}\"", c.ike_config.psk));
}
