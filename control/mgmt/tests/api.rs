//! The actions through `Service::call` (no HTTP): error codes and statuses, nothing stored on error,
//! idempotency, quota, read-only role, effects, PSK hiding, logs (window, paging, pruning, no PSK),
//! the peer view, and the OpenAPI document against the checked-in file.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipsec_mgmt::api::{Role, Service};
use ipsec_mgmt::effects::{ConnectionChange, MemoryEffects};
use ipsec_mgmt::model::ConnectionStatus;
use ipsec_mgmt::store::Store;
use ipsec_mgmt::validate::Params;
use serde_json::Value;

struct Env {
    svc: Service,
    effects: Arc<MemoryEffects>,
    now: Arc<AtomicU64>,
}

const T0: u64 = 1_700_000_000_000;

fn env_with_quota(quota: u64) -> Env {
    let dir = common::tmpdir("api");
    let effects = MemoryEffects::new();
    let now = Arc::new(AtomicU64::new(T0));
    let n = now.clone();
    let svc = Service::with_clock(
        Store::open(&dir.join("mgmt.db")).unwrap(),
        effects.clone(),
        quota,
        Arc::new(move || n.load(Ordering::SeqCst)),
    );
    Env { svc, effects, now }
}

fn env() -> Env {
    env_with_quota(10)
}

fn params(kv: &[(&str, &str)]) -> Params {
    kv.iter().fold(Params::new(), |p, (k, v)| p.with(k, *v))
}

impl Env {
    fn call(&self, action: &str, kv: &[(&str, &str)]) -> Result<Value, (u16, String)> {
        self.svc.call(action, &params(kv), Role::Admin).map_err(|e| (e.status, e.code))
    }

    fn ok(&self, action: &str, kv: &[(&str, &str)]) -> Value {
        self.call(action, kv).unwrap_or_else(|e| panic!("{action} {kv:?}: {e:?}"))
    }

    fn gw(&self) -> String {
        self.ok("CreateVpnGateway", &[("PublicIp", "198.51.100.1"), ("Name", "gw")])["VpnGatewayId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn cgw(&self, ip: &str) -> String {
        self.ok("CreateCustomerGateway", &[("IpAddress", ip)])["CustomerGatewayId"].as_str().unwrap().to_string()
    }

    fn conn(&self, gw: &str, cgw: &str, extra: &[(&str, &str)]) -> String {
        let mut kv = vec![
            ("VpnGatewayId", gw),
            ("CustomerGatewayId", cgw),
            ("LocalSubnet", "10.0.0.0/24"),
            ("RemoteSubnet", "10.9.0.0/24"),
        ];
        kv.extend_from_slice(extra);
        self.ok("CreateVpnConnection", &kv)["VpnConnectionId"].as_str().unwrap().to_string()
    }

    fn count(&self, action: &str) -> u64 {
        self.ok(action, &[])["TotalCount"].as_u64().unwrap()
    }
}

#[test]
fn unknown_action_and_missing_id() {
    let e = env();
    assert_eq!(e.call("Bogus", &[]).unwrap_err(), (400, "InvalidAction.NotFound".into()));
    assert_eq!(e.call("DescribeVpnConnection", &[]).unwrap_err(), (400, "MissingParameter.VpnConnectionId".into()));
}

#[test]
fn not_found_codes() {
    let e = env();
    let gw = e.gw();
    let cgw = e.cgw("203.0.113.1");
    let base = |g: &str, c: &str| {
        e.call(
            "CreateVpnConnection",
            &[
                ("VpnGatewayId", g),
                ("CustomerGatewayId", c),
                ("LocalSubnet", "10.0.0.0/24"),
                ("RemoteSubnet", "10.9.0.0/24"),
            ],
        )
    };
    assert_eq!(base("vpn-nope", &cgw).unwrap_err(), (404, "InvalidVpnGatewayInstanceId.NotFound".into()));
    assert_eq!(base(&gw, "cgw-nope").unwrap_err(), (404, "InvalidCustomerGatewayInstanceId.NotFound".into()));
    for a in [
        "DescribeVpnConnection",
        "DeleteVpnConnection",
        "ModifyVpnConnectionAttribute",
        "DownloadVpnConnectionConfig",
        "DescribeVpnConnectionLogs",
    ] {
        assert_eq!(
            e.call(a, &[("VpnConnectionId", "vco-nope")]).unwrap_err(),
            (404, "InvalidVpnConnectionInstanceId.NotFound".into()),
            "{a}"
        );
    }
    assert_eq!(
        e.call("DeleteCustomerGateway", &[("CustomerGatewayId", "cgw-nope")]).unwrap_err(),
        (404, "InvalidCustomerGatewayInstanceId.NotFound".into())
    );
    assert_eq!(e.count("DescribeVpnConnections"), 0);
}

#[test]
fn create_describe_modify_delete_with_effects() {
    let e = env();
    let gw = e.gw();
    let cgw = e.cgw("203.0.113.1");
    let answer = e.ok(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw),
            ("LocalSubnet", "10.0.0.0/24,10.1.0.0/24"),
            ("RemoteSubnet", "10.9.0.0/24"),
            ("Name", "to-branch"),
            ("EffectImmediately", "true"),
            ("IkeConfig", r#"{"IkeVersion":"ikev2","Psk":"s3cr3t-psk!","IkeEncAlg":"aes256"}"#),
        ],
    );
    let id = answer["VpnConnectionId"].as_str().unwrap().to_string();
    assert_eq!(answer["CreateTime"], T0);
    assert_eq!(answer["Name"], "to-branch");

    let d = e.ok("DescribeVpnConnection", &[("VpnConnectionId", &id)]);
    assert!(d["IkeConfig"].get("Psk").is_none(), "PSK hidden by default: {d}");
    assert!(!d.to_string().contains("s3cr3t-psk!"));
    assert_eq!(d["IkeConfig"]["LocalId"], "198.51.100.1");
    assert_eq!(d["IkeConfig"]["RemoteId"], "203.0.113.1");
    assert_eq!(d["IkeConfig"]["IkeEncAlg"], "aes256");
    assert_eq!(d["Status"], "ike_sa_not_established");
    assert_eq!(d["LocalSubnet"], "10.0.0.0/24,10.1.0.0/24");
    let shown = e.ok("DescribeVpnConnection", &[("VpnConnectionId", &id), ("ShowPsk", "true")]);
    assert_eq!(shown["IkeConfig"]["Psk"], "s3cr3t-psk!");
    let list = e.ok("DescribeVpnConnections", &[("VpnGatewayId", &gw)]);
    assert_eq!(list["TotalCount"], 1);
    assert!(list["VpnConnections"]["VpnConnection"][0]["IkeConfig"].get("Psk").is_none());

    e.effects.statuses.set(&id, ConnectionStatus::IpsecSaEstablished);
    assert_eq!(e.ok("DescribeVpnConnection", &[("VpnConnectionId", &id)])["Status"], "ipsec_sa_established");

    // Modify merges nested configs key by key.
    let m = e.ok(
        "ModifyVpnConnectionAttribute",
        &[("VpnConnectionId", &id), ("IkeConfig", r#"{"IkeLifetime":3600}"#), ("Name", "renamed")],
    );
    assert_eq!(m["Name"], "renamed");
    assert_eq!(m["IkeConfig"]["IkeLifetime"], 3600);
    assert_eq!(m["IkeConfig"]["IkeEncAlg"], "aes256");
    assert!(m["IkeConfig"].get("Psk").is_none());
    // A modification that breaks a rule stores nothing.
    assert_eq!(
        e.call("ModifyVpnConnectionAttribute", &[("VpnConnectionId", &id), ("IkeConfig", r#"{"IkeVersion":"ikev1"}"#)])
            .unwrap_err(),
        (400, "InvalidParameter.LocalSubnet".into())
    );
    assert_eq!(e.ok("DescribeVpnConnection", &[("VpnConnectionId", &id)])["IkeConfig"]["IkeVersion"], "ikev2");

    // The customer gateway is in use.
    assert_eq!(
        e.call("DeleteCustomerGateway", &[("CustomerGatewayId", &cgw)]).unwrap_err(),
        (400, "DependencyViolation.VpnConnection".into())
    );
    e.ok("DeleteVpnConnection", &[("VpnConnectionId", &id)]);
    e.ok("DeleteCustomerGateway", &[("CustomerGatewayId", &cgw)]);
    assert_eq!(e.count("DescribeCustomerGateways"), 0);

    let changes = e.effects.changes();
    assert_eq!(changes.len(), 3, "{changes:?}");
    match &changes[0] {
        ConnectionChange::Created(c) => {
            assert!(c.effect_immediately);
            assert_eq!(c.ike_config.psk, "s3cr3t-psk!");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&changes[1], ConnectionChange::Modified(c) if c.ike_config.ike_lifetime == 3600));
    assert!(matches!(&changes[2], ConnectionChange::Deleted { vpn_connection_id, .. } if *vpn_connection_id == id));
}

#[test]
fn already_exists_configuring_and_quota() {
    let e = env_with_quota(2);
    let gw = e.gw();
    let (c1, c2, c3) = (e.cgw("203.0.113.1"), e.cgw("203.0.113.2"), e.cgw("203.0.113.3"));
    e.conn(&gw, &c1, &[]);
    let again = e.call(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &c1),
            ("LocalSubnet", "10.0.0.0/24"),
            ("RemoteSubnet", "10.9.0.0/24"),
        ],
    );
    assert_eq!(again.unwrap_err(), (400, "InvalidVpnConnection.AlreadyExists".into()));
    let id2 = e.conn(&gw, &c2, &[]);
    let full = e.call(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &c3),
            ("LocalSubnet", "10.0.0.0/24"),
            ("RemoteSubnet", "10.9.0.0/24"),
        ],
    );
    assert_eq!(full.unwrap_err(), (400, "Resource.QuotaFull".into()));
    assert_eq!(e.count("DescribeVpnConnections"), 2);

    // While the gateway is being configured, writes to its connections are refused.
    e.svc.set_vpn_gateway_status(&gw, "updating").unwrap();
    let configuring = (400, "VpnGateway.Configuring".to_string());
    assert_eq!(e.call("DeleteVpnConnection", &[("VpnConnectionId", &id2)]).unwrap_err(), configuring);
    assert_eq!(
        e.call("ModifyVpnConnectionAttribute", &[("VpnConnectionId", &id2), ("Name", "xy")]).unwrap_err(),
        configuring
    );
    let gw2 = e.gw();
    e.svc.set_vpn_gateway_status(&gw2, "updating").unwrap();
    let r = e.call(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw2),
            ("CustomerGatewayId", &c3),
            ("LocalSubnet", "10.0.0.0/24"),
            ("RemoteSubnet", "10.9.0.0/24"),
        ],
    );
    assert_eq!(r.unwrap_err(), configuring);
    e.svc.set_vpn_gateway_status(&gw, "active").unwrap();
    e.ok("DeleteVpnConnection", &[("VpnConnectionId", &id2)]);
    // A freed slot can be used again.
    e.conn(&gw, &c3, &[]);
}

#[test]
fn read_only_role_is_forbidden_to_write() {
    let e = env();
    for (action, mutating) in ipsec_mgmt::api::ACTIONS {
        let r = e.svc.call(action, &Params::new(), Role::ReadOnly);
        match r {
            Err(err) if *mutating => assert_eq!((err.status, err.code.as_str()), (403, "Forbidden"), "{action}"),
            Err(err) => assert_ne!(err.status, 403, "{action}"),
            Ok(_) => assert!(!mutating, "{action}"),
        }
    }
    assert_eq!(e.count("DescribeVpnGateways"), 0);
}

#[test]
fn idempotency() {
    let e = env();
    let gw = e.gw();
    let cgw = e.cgw("203.0.113.1");
    let kv = [
        ("VpnGatewayId", gw.as_str()),
        ("CustomerGatewayId", cgw.as_str()),
        ("LocalSubnet", "10.0.0.0/24"),
        ("RemoteSubnet", "10.9.0.0/24"),
        ("ClientToken", "tok-1"),
    ];
    let first = e.ok("CreateVpnConnection", &kv);
    e.now.fetch_add(5000, Ordering::SeqCst);
    let second = e.ok("CreateVpnConnection", &kv);
    assert_eq!(first, second, "same token, same parameters: the same answer");
    assert_eq!(e.count("DescribeVpnConnections"), 1);
    assert_eq!(e.effects.changes().len(), 1, "the replay has no effect");
    let mut other = kv.to_vec();
    other[2] = ("LocalSubnet", "10.5.0.0/24");
    assert_eq!(e.call("CreateVpnConnection", &other).unwrap_err(), (400, "IdempotentParameterMismatch".into()));
    assert_eq!(e.count("DescribeVpnConnections"), 1);

    // Gateways too; tokens are per action.
    let g1 = e.ok("CreateVpnGateway", &[("PublicIp", "198.51.100.9"), ("ClientToken", "tok-1")]);
    let g2 = e.ok("CreateVpnGateway", &[("PublicIp", "198.51.100.9"), ("ClientToken", "tok-1")]);
    assert_eq!(g1, g2);
    assert_eq!(
        e.call("CreateVpnGateway", &[("PublicIp", "198.51.100.8"), ("ClientToken", "tok-1")]).unwrap_err(),
        (400, "IdempotentParameterMismatch".into())
    );
    let c1 = e.ok("CreateCustomerGateway", &[("IpAddress", "203.0.113.50"), ("ClientToken", "abc")]);
    assert_eq!(c1, e.ok("CreateCustomerGateway", &[("IpAddress", "203.0.113.50"), ("ClientToken", "abc")]));
    assert_eq!(e.count("DescribeVpnGateways"), 2);
    assert_eq!(e.count("DescribeCustomerGateways"), 2);
    // A failed call does not consume the token.
    assert!(e.call("CreateCustomerGateway", &[("IpAddress", "bad"), ("ClientToken", "t2")]).is_err());
    e.ok("CreateCustomerGateway", &[("IpAddress", "203.0.113.51"), ("ClientToken", "t2")]);
    assert_eq!(
        e.call("CreateCustomerGateway", &[("IpAddress", "203.0.113.51"), ("ClientToken", "has space")]).unwrap_err(),
        (400, "InvalidParameter.ClientToken".into())
    );
}

#[test]
fn validation_errors_store_nothing() {
    let e = env();
    let gw = e.gw();
    let cgw = e.cgw("203.0.113.1");
    for (k, v, code) in [
        ("Name", "a", "InvalidName.Malformed"),
        ("IkeConfig", r#"{"Psk":"a b"}"#, "InvalidPsk.Malformed"),
        ("IkeConfig", r#"{"IkeLifetime":86401}"#, "InvalidParameter.IkeConfig.IkeLifetime"),
        ("IpsecConfig", r#"{"IpsecPfs":"group3"}"#, "InvalidParameter.IpsecConfig.IpsecPfs"),
        ("BgpConfig", r#"{"TunnelCidr":"169.254.169.252/30"}"#, "InvalidParameter.BgpConfig.TunnelCidr"),
        ("LocalSubnet", "10.0.0.0/24,10.1.0.0/24", "InvalidParameter.LocalSubnet"),
    ] {
        let r = e.call(
            "CreateVpnConnection",
            &[
                ("VpnGatewayId", &gw),
                ("CustomerGatewayId", &cgw),
                ("LocalSubnet", "10.0.0.0/24"),
                ("RemoteSubnet", "10.9.0.0/24"),
                (k, v),
            ],
        );
        assert_eq!(r.unwrap_err(), (400, code.to_string()), "{k}={v}");
    }
    assert_eq!(e.count("DescribeVpnConnections"), 0);
    assert!(e.effects.changes().is_empty());
    for (k, v, code) in
        [("PageSize", "51", "InvalidParameter.PageSize"), ("PageNumber", "0", "InvalidParameter.PageNumber")]
    {
        assert_eq!(e.call("DescribeVpnConnections", &[(k, v)]).unwrap_err(), (400, code.to_string()));
    }
}

#[test]
fn paging() {
    let e = env_with_quota(100);
    let gw = e.gw();
    for i in 0..12 {
        let cgw = e.cgw(&format!("203.0.113.{}", i + 1));
        e.now.fetch_add(1, Ordering::SeqCst);
        e.conn(&gw, &cgw, &[]);
    }
    let p1 = e.ok("DescribeVpnConnections", &[]);
    assert_eq!(
        (p1["TotalCount"].as_u64(), p1["PageNumber"].as_u64(), p1["PageSize"].as_u64()),
        (Some(12), Some(1), Some(10))
    );
    assert_eq!(p1["VpnConnections"]["VpnConnection"].as_array().unwrap().len(), 10);
    let p2 = e.ok("DescribeVpnConnections", &[("PageNumber", "2")]);
    assert_eq!(p2["VpnConnections"]["VpnConnection"].as_array().unwrap().len(), 2);
    let p = e.ok("DescribeVpnConnections", &[("PageSize", "5"), ("PageNumber", "3")]);
    assert_eq!(p["VpnConnections"]["VpnConnection"].as_array().unwrap().len(), 2);
}

#[test]
fn logs_window_paging_pruning_and_no_psk() {
    let e = env();
    let gw = e.gw();
    let cgw = e.cgw("203.0.113.1");
    let id = e.conn(&gw, &cgw, &[("IkeConfig", r#"{"Psk":"Top$ecret9"}"#)]);
    let t0 = T0 / 1000;
    // Lines at t0 (the creation), then one per 10 s for 20 minutes.
    for i in 1..=120u64 {
        e.now.store(T0 + i * 10_000, Ordering::SeqCst);
        e.svc.record_log(&id, &format!("ike: event {i} with psk Top$ecret9 inside")).unwrap();
    }
    let logs = |kv: &[(&str, &str)]| {
        let mut all = vec![("VpnConnectionId", id.as_str())];
        all.extend_from_slice(kv);
        e.call("DescribeVpnConnectionLogs", &all)
    };
    let (from, to) = (t0.to_string(), (t0 + 600).to_string());
    let r = logs(&[("From", &from), ("To", &to)]).unwrap();
    assert_eq!(r["Count"], 61, "creation line + 60 events in 0..=600 s: {r}");
    assert_eq!(r["PageSize"], 50);
    assert_eq!(r["IsCompleted"], false);
    let lines = r["Data"]["Logs"].as_array().unwrap();
    assert_eq!(lines.len(), 50);
    assert!(lines[0].as_str().unwrap().starts_with("2023-11-14 22:13:20 "), "{}", lines[0]);
    assert!(lines[0].as_str().unwrap().contains("configuration created"));
    let r2 = logs(&[("From", &from), ("To", &to), ("PageNumber", "2")]).unwrap();
    assert_eq!(r2["Data"]["Logs"].as_array().unwrap().len(), 11);
    assert_eq!(r2["IsCompleted"], true);
    let all_text = format!("{r}{r2}");
    assert!(!all_text.contains("Top$ecret9"), "logs never contain the PSK");
    assert!(all_text.contains("******"));

    // Window rules: at most 10 minutes, To not before From, MinutePeriod 1..=10.
    let over = (t0 + 601).to_string();
    assert_eq!(logs(&[("From", &from), ("To", &over)]).unwrap_err(), (400, "InvalidParameter.To".into()));
    let before = (t0 - 1).to_string();
    assert_eq!(logs(&[("From", &from), ("To", &before)]).unwrap_err(), (400, "InvalidParameter.To".into()));
    assert_eq!(logs(&[("MinutePeriod", "11")]).unwrap_err(), (400, "InvalidParameter.MinutePeriod".into()));
    assert_eq!(logs(&[("MinutePeriod", "0")]).unwrap_err(), (400, "InvalidParameter.MinutePeriod".into()));
    assert_eq!(logs(&[("From", "x")]).unwrap_err(), (400, "InvalidParameter.From".into()));
    // From alone: From + MinutePeriod.
    let r = logs(&[("From", &from), ("MinutePeriod", "1")]).unwrap();
    assert_eq!(r["Count"], 7);
    // Neither: the last MinutePeriod minutes before now (now = t0 + 1200 s).
    let r = logs(&[("MinutePeriod", "1")]).unwrap();
    assert_eq!(r["Count"], 7, "t0+1140 ..= t0+1200: {r}");

    // Retention: 30 days.
    e.now.store(T0 + 30 * 24 * 3600 * 1000 + 300_000, Ordering::SeqCst);
    let pruned = e.svc.prune_logs().unwrap();
    assert_eq!(pruned, 30, "the lines before t0 + 300 s are older than 30 days");
    let r = logs(&[("From", &from), ("To", &to)]).unwrap();
    assert_eq!(r["Count"], 31);
}

#[test]
fn download_peer_view() {
    let e = env();
    let gw = e.gw();
    let cgw = e.cgw("203.0.113.1");
    let id = e.conn(
        &gw,
        &cgw,
        &[("IkeConfig", r#"{"Psk":"pw\\x","IkeVersion":"ikev2","LocalId":"gw.example","RemoteId":"peer.example"}"#)],
    );
    let d = e.ok("DownloadVpnConnectionConfig", &[("VpnConnectionId", &id)]);
    let v = &d["VpnConnectionConfig"];
    assert_eq!(v["LocalSubnet"], "10.9.0.0/24");
    assert_eq!(v["RemoteSubnet"], "10.0.0.0/24");
    assert_eq!(v["RemoteIp"], "198.51.100.1");
    assert_eq!(v["IkeConfig"]["LocalId"], "peer.example");
    assert_eq!(v["IkeConfig"]["RemoteId"], "gw.example");
    assert_eq!(v["IkeConfig"]["Psk"], "pw\\x");
    assert!(d.get("SwanctlConf").is_none());
    assert_eq!(
        e.call("DownloadVpnConnectionConfig", &[("VpnConnectionId", &id), ("Format", "xml")]).unwrap_err(),
        (400, "InvalidParameter.Format".into())
    );
}

#[test]
fn openapi_document_matches_checked_in_file() {
    let doc = serde_json::to_string_pretty(&ipsec_mgmt::openapi::document()).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let file = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        file == doc,
        "control/mgmt/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p ipsec-mgmt --test api openapi"
    );
    let v: Value = serde_json::from_str(&file).unwrap();
    for (action, _) in ipsec_mgmt::api::ACTIONS {
        assert!(v["paths"][format!("/{action}")]["post"].is_object(), "{action} is documented");
        assert!(v["paths"][format!("/{action}")]["get"].is_object(), "{action} is documented");
    }
}

#[test]
fn batched_logs_keep_order_scrub_and_skip_unknown() {
    let e = env();
    let gw = e.gw();
    let cgw = e.cgw("203.0.113.1");
    let id = e.conn(&gw, &cgw, &[("IkeConfig", r#"{"Psk":"Batch$ecret7"}"#)]);
    let lines: Vec<(String, String)> = (1..=5)
        .map(|i| (id.clone(), format!("step {i} (Batch$ecret7)")))
        .chain([("vco-doesnotexist00000000".to_string(), "lost".to_string())])
        .collect();
    e.svc.record_logs(&lines).unwrap();
    let t0 = (T0 / 1000).to_string();
    let r = e.ok("DescribeVpnConnectionLogs", &[("VpnConnectionId", &id), ("From", &t0)]);
    let got: Vec<String> =
        r["Data"]["Logs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(got.len(), 6, "the creation line and the 5 steps: {got:?}");
    for (i, l) in got[1..].iter().enumerate() {
        assert!(l.ends_with(&format!("step {} (******)", i + 1)), "{l}");
    }
    assert!(!format!("{r}").contains("Batch$ecret7"));
}
