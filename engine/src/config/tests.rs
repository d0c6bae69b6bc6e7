use super::*;

const GCM_KEY: &str = "000102030405060708090a0b0c0d0e0f10111213";
const CBC_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const SHA1_KEY: &str = "0102030405060708090a0b0c0d0e0f1011121314";

fn sample() -> String {
    format!(
        r#"
[gateway]
local_addrs = ["198.18.0.1"]

[[interface]]
name = "gw1o"
role = "outside"

[[interface]]
name = "gw1i"
role = "inside"
queues = 2

[[tunnel]]
name = "t1"
remote_addr = "198.18.0.2"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["198.51.100.0/24"]

[[tunnel]]
name = "t2"
id = 7
remote_addr = "198.18.0.3"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["203.0.113.0/24"]
routing = "flows"
udp_encap = {{ local_port = 4500, remote_port = 4501 }}

[[sa]]
tunnel = "t1"
direction = "out"
spi = 0xc1a00001
cipher = "aes128gcm16"
enc_key = "{GCM_KEY}"

[[sa]]
tunnel = "t1"
direction = "in"
spi = 0xc1a00002
cipher = "aes128gcm16"
enc_key = "{GCM_KEY}"
replay_window = 64
lifetime = {{ soft_seconds = 90, hard_seconds = 100 }}

[[sa]]
tunnel = "t2"
direction = "out"
spi = 0x1000
cipher = "aes128"
enc_key = "{CBC_KEY}"
integrity = "sha1"
auth_key = "{SHA1_KEY}"
esn = true
"#
    )
}

#[test]
fn parses_and_builds_tables() {
    let cfg = EngineConfig::parse(&sample()).expect("parse");
    assert_eq!(cfg.local_addrs, vec!["198.18.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(cfg.interfaces.len(), 2);
    assert_eq!(cfg.interfaces[1], InterfaceConfig { name: "gw1i".into(), role: Role::Inside, queues: 2 });
    assert_eq!(cfg.tunnels[0].id, TunnelId(1));
    assert_eq!(cfg.tunnels[1].id, TunnelId(7));
    assert_eq!(cfg.tunnels[1].routing, Routing::Flows);
    assert_eq!(cfg.tunnels[1].encap, Some(UdpEncap { local_port: 4500, remote_port: 4501 }));
    assert_eq!(cfg.sas.len(), 3);
    assert_eq!(cfg.sas[1].config.replay_window, 64);
    assert_eq!(cfg.sas[1].config.lifetime.hard.time, Some(Duration::from_secs(100)));
    assert!(cfg.sas[2].config.esn);
    assert_eq!(cfg.sas[2].config.integrity, Integrity::HmacSha1_96);
    assert_eq!(cfg.protected_prefixes().len(), 2);

    let tables = cfg.build(ipsec_esp::default_provider(), Instant::now()).expect("build");
    let g = tables.outbound.pin();
    let src: IpAddr = "192.0.2.5".parse().unwrap();
    let (t, sa) = tables.outbound.resolve(src, "198.51.100.9".parse().unwrap(), &g).expect("route");
    assert_eq!((t, sa.spi()), (TunnelId(1), 0xc1a00001));
    let (t, sa) = tables.outbound.resolve(src, "203.0.113.9".parse().unwrap(), &g).expect("flow");
    assert_eq!((t, sa.spi()), (TunnelId(7), 0x1000));
    assert!(tables.outbound.resolve("192.0.3.5".parse().unwrap(), "203.0.113.9".parse().unwrap(), &g).is_none());
    drop(g);
    assert!(tables.inbound.contains(Spi(0xc1a00002), "198.18.0.1".parse().unwrap()));
}

fn err_of(text: &str) -> ConfigError {
    EngineConfig::parse(text).expect_err("should fail")
}

#[test]
fn errors_name_the_field_and_never_print_keys() {
    let base = sample();
    let cases: Vec<(String, &str)> = vec![
        (base.replace("\"aes128gcm16\"\nenc_key", "\"aes999\"\nenc_key"), "sa[0].cipher"),
        (base.replacen(GCM_KEY, &GCM_KEY[..38], 1), "sa[0].enc_key"),
        (base.replacen(GCM_KEY, &format!("{}zz", &GCM_KEY[..38]), 1), "sa[0].enc_key"),
        (base.replace(SHA1_KEY, &SHA1_KEY[2..]), "sa[2].auth_key"),
        (base.replace("\"198.18.0.3\"", "\"198.18.0.300\""), "tunnel[1].remote_addr"),
        (base.replace("\"203.0.113.0/24\"", "\"203.0.113.1/24\""), "tunnel[1].remote_subnets[0]"),
        (base.replace("routing = \"flows\"", "routing = \"policy\""), "tunnel[1].routing"),
        (base.replace("role = \"inside\"", "role = \"middle\""), "interface[1].role"),
        (base.replace("queues = 2", "queues = 0"), "interface[1].queues"),
        (base.replace("tunnel = \"t2\"", "tunnel = \"t3\""), "sa[2].tunnel"),
        (base.replace("spi = 0x1000", "spi = 12"), "sa[2].spi"),
        (base.replace("spi = 0xc1a00002", "spi = 0xc1a00001\nreplay_window = 1"), "line"),
        (base.replace("soft_seconds = 90", "soft_seconds = 900"), "sa[1].lifetime.soft_seconds"),
        (base.replace("direction = \"in\"", "direction = \"out\""), "sa[1].direction"),
        (base.replace("esn = true", "esn = true\ncolour = 3"), "line"),
    ];
    for (text, field) in cases {
        let e = err_of(&text);
        assert!(e.field.starts_with(field), "expected field {field}, got {e}");
        let shown = format!("{e} {e:?}");
        for key in [GCM_KEY, CBC_KEY, SHA1_KEY, &GCM_KEY[..38], &SHA1_KEY[2..]] {
            assert!(!shown.contains(key), "error shows key material: {shown}");
        }
    }
    // A syntax error on a key's line is reported by position only.
    let broken = base.replacen(&format!("enc_key = \"{GCM_KEY}\""), &format!("enc_key = \"{GCM_KEY}"), 1);
    let e = err_of(&broken);
    assert!(e.field.starts_with("line "), "{e}");
    assert!(!format!("{e}").contains(GCM_KEY), "{e}");
}

#[test]
fn the_esp_core_refusing_an_sa_is_reported_by_index() {
    // AEAD with a separate integrity algorithm parses but the ESP core refuses it.
    let text = sample().replacen(
        "enc_key = \"000102",
        "integrity = \"sha1\"\nauth_key = \"0102030405060708090a0b0c0d0e0f1011121314\"\nenc_key = \"000102",
        1,
    );
    let cfg = EngineConfig::parse(&text).expect("parse");
    let e = cfg.build(ipsec_esp::default_provider(), Instant::now()).err().expect("refused");
    assert_eq!(e.field, "sa[0]");
}

#[test]
fn debug_output_redacts_keys() {
    let cfg = EngineConfig::parse(&sample()).unwrap();
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("2b7e15") && shown.contains("redacted"));
}

#[test]
fn tunnel_mtu_and_inside_addrs() {
    let text = sample()
        .replace("local_addrs = [\"198.18.0.1\"]", "local_addrs = [\"198.18.0.1\"]\ninside_addrs = [\"192.0.2.1\"]")
        .replace("routing = \"flows\"", "routing = \"flows\"\nmtu = 1400");
    let cfg = EngineConfig::parse(&text).expect("parse");
    assert_eq!(cfg.inside_addrs, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    assert_eq!((cfg.tunnels[0].mtu, cfg.tunnels[1].mtu), (None, Some(1400)));
    // The outbound SA of tunnel t2 carries it: its inner MTU follows the smaller of the two.
    assert_eq!(cfg.sas[2].config.mtu, Some(1400));
    let tables = cfg.build(ipsec_esp::default_provider(), Instant::now()).expect("build");
    let sa = &tables.outbound_sas.iter().find(|(t, _)| t == "t2").unwrap().1;
    assert_eq!(sa.inner_mtu(1500), sa.max_inner_len(1400));
    assert_eq!(sa.inner_mtu(1300), sa.max_inner_len(1300));
    let e = err_of(&sample().replace("routing = \"flows\"", "routing = \"flows\"\nmtu = 500"));
    assert_eq!(e.field, "tunnel[1].mtu");
    let e = err_of(&sample().replace("[gateway]", "[gateway]\ninside_addrs = [\"nope\"]"));
    assert_eq!(e.field, "gateway.inside_addrs[0]");
}
