//! The `ipsec-mgmtd` binary over HTTP: bearer auth (401), token and state modes, GET/POST/path
//! forms, error JSON, the served OpenAPI document, read-only token (403), and restart durability
//! with SIGKILL between acknowledged writes.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{tmpdir, Daemon};
use ipsec_mgmt::client;
use serde_json::Value;

fn get(d: &Daemon, path: &str, auth: Option<&str>) -> (u16, Value) {
    let h = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = h.as_deref().map(|v| vec![("Authorization", v)]).unwrap_or_default();
    let r = client::request(&d.endpoint, "GET", path, &headers, b"").unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    (r.status, r.json().unwrap())
}

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4)
}

#[test]
fn auth_modes_and_forms() {
    let dir = tmpdir("http");
    let state = dir.join("state");
    let d = Daemon::start(&state, &[]);
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&state).unwrap() {
        let e = entry.unwrap();
        assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{}", e.path().display());
    }
    assert_eq!(d.token.len(), 64);

    // 401 without a token, with a wrong one, with the wrong scheme.
    for auth in [None, Some("wrong"), Some(&d.token[..63])] {
        let (s, v) = get(&d, "/?Action=DescribeVpnGateways", auth);
        assert_eq!(s, 401);
        assert_eq!(v["Code"], "Unauthorized");
        assert!(is_uuid(&v["RequestId"]));
    }
    let r = client::request(
        &d.endpoint,
        "GET",
        "/?Action=DescribeVpnGateways",
        &[("Authorization", &format!("Basic {}", d.token))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    // GET with a query string, POST with a form body, and the /<Action> path form.
    let (s, v) = get(&d, "/?Action=CreateVpnGateway&PublicIp=198.51.100.1&Name=gw%2D1", Some(&d.token));
    assert_eq!(s, 200, "{v}");
    assert!(is_uuid(&v["RequestId"]));
    assert_eq!(v["Name"], "gw-1");
    let gw = v["VpnGatewayId"].as_str().unwrap().to_string();
    let cgw = d.ok("CreateCustomerGateway", &[("IpAddress", "203.0.113.5"), ("Name", "中文名")]);
    assert_eq!(cgw["Name"], "中文名");
    let cgw = cgw["CustomerGatewayId"].as_str().unwrap().to_string();
    let (s, v) = get(&d, &format!("/DescribeVpnGateways?VpnGatewayId={gw}"), Some(&d.token));
    assert_eq!((s, v["TotalCount"].as_u64()), (200, Some(1)));
    let ike = r#"{"IkeVersion":"ikev2","Psk":"a+b&c=d%e"}"#;
    let c = d.ok(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw),
            ("LocalSubnet", "10.0.0.0/24,10.1.0.0/24"),
            ("RemoteSubnet", "192.168.0.0/24"),
            ("IkeConfig", ike),
        ],
    );
    let id = c["VpnConnectionId"].as_str().unwrap();
    assert!(c["CreateTime"].as_u64().unwrap() > 1_600_000_000_000);
    let v = d.ok("DescribeVpnConnection", &[("VpnConnectionId", id), ("ShowPsk", "true")]);
    assert_eq!(v["IkeConfig"]["Psk"], "a+b&c=d%e", "form encoding round-trips");

    // Errors: JSON with RequestId, Code, Message, HostId and the right status.
    let (s, v) = d.call("CreateVpnConnection", &[("VpnGatewayId", "vpn-x")]);
    assert_eq!(s, 400);
    assert_eq!(v["Code"], "MissingParameter.CustomerGatewayId");
    assert!(v["Message"].as_str().unwrap().contains("CustomerGatewayId"));
    assert!(is_uuid(&v["RequestId"]) && v["HostId"].is_string());
    let (s, v) = d.call("DescribeVpnConnection", &[("VpnConnectionId", "vco-x")]);
    assert_eq!((s, v["Code"].as_str()), (404, Some("InvalidVpnConnectionInstanceId.NotFound")));
    let (s, v) = get(&d, "/", Some(&d.token));
    assert_eq!((s, v["Code"].as_str()), (400, Some("MissingParameter.Action")));
    let (s, v) = get(&d, "/Nope", Some(&d.token));
    assert_eq!((s, v["Code"].as_str()), (404, Some("InvalidPath.NotFound")));
    let (s, v) = get(&d, "/DescribeVpnGateways?Action=DeleteVpnConnection", Some(&d.token));
    assert_eq!((s, v["Code"].as_str()), (400, Some("InvalidParameter.Action")));
    let r =
        client::request(&d.endpoint, "DELETE", "/", &[("Authorization", &format!("Bearer {}", d.token))], b"").unwrap();
    assert_eq!(r.status, 405);
    let big = vec![b'a'; 70 * 1024];
    let r =
        client::request(&d.endpoint, "POST", "/", &[("Authorization", &format!("Bearer {}", d.token))], &big).unwrap();
    assert_eq!(r.status, 413);

    // The served OpenAPI document is the checked-in one.
    let (s, served) = get(&d, "/openapi.json", Some(&d.token));
    assert_eq!(s, 200);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap())
            .unwrap();
    assert!(served == file, "the served /openapi.json differs from control/mgmt/openapi.json");
    assert_eq!(get(&d, "/openapi.json", None).0, 401);
}

#[test]
fn token_file_flag_and_read_only_token() {
    let dir = tmpdir("http-ro");
    let token_file = dir.join("admin.token");
    let ro_file = dir.join("ro.token");
    let d = Daemon::start(
        &dir.join("state"),
        &["--token-file", token_file.to_str().unwrap(), "--readonly-token-file", ro_file.to_str().unwrap()],
    );
    for f in [&token_file, &ro_file] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let ro = std::fs::read_to_string(&ro_file).unwrap().trim().to_string();
    assert_ne!(ro, d.token);
    let (s, v) = client::call(&d.endpoint, &ro, "CreateVpnGateway", &[("PublicIp", "198.51.100.1")]).unwrap();
    assert_eq!((s, v["Code"].as_str()), (403, Some("Forbidden")));
    let (s, v) = client::call(&d.endpoint, &ro, "DescribeVpnGateways", &[]).unwrap();
    assert_eq!((s, v["TotalCount"].as_u64()), (200, Some(0)));
    drop(d);
    // A token file others can read is refused at start.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipsec-mgmtd"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[test]
fn quota_flag() {
    let dir = tmpdir("http-quota");
    let d = Daemon::start(&dir.join("state"), &["--quota", "1"]);
    let gw = d.ok("CreateVpnGateway", &[("PublicIp", "198.51.100.1")])["VpnGatewayId"].as_str().unwrap().to_string();
    let mut codes = Vec::new();
    for ip in ["203.0.113.1", "203.0.113.2"] {
        let cgw =
            d.ok("CreateCustomerGateway", &[("IpAddress", ip)])["CustomerGatewayId"].as_str().unwrap().to_string();
        let (s, v) = d.call(
            "CreateVpnConnection",
            &[
                ("VpnGatewayId", &gw),
                ("CustomerGatewayId", &cgw),
                ("LocalSubnet", "10.0.0.0/8"),
                ("RemoteSubnet", "0.0.0.0/0"),
            ],
        );
        codes.push((s, v["Code"].as_str().unwrap_or("").to_string()));
    }
    assert_eq!(codes, [(200, String::new()), (400, "Resource.QuotaFull".to_string())]);
}

/// Acknowledged writes survive SIGKILL of the daemon: kill -9 between writes, restart on the same
/// state directory (same token, same port-independent state), check every acknowledged resource.
#[test]
fn restart_durability_with_sigkill() {
    let dir = tmpdir("http-kill");
    let state = dir.join("state");
    let mut acked_gw: Vec<String> = Vec::new();
    let mut acked_conn: Vec<(String, String)> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut token = None;
    for round in 0..4 {
        let d = Daemon::start(&state, &["--quota", "100"]);
        if let Some(t) = &token {
            assert_eq!(&d.token, t, "the token is kept across restarts");
        }
        token = Some(d.token.clone());
        // Everything acknowledged before is still there, exactly.
        for g in &acked_gw {
            let v = d.ok("DescribeVpnGateways", &[("VpnGatewayId", g)]);
            assert_eq!(v["TotalCount"], 1, "round {round}: gateway {g} lost");
        }
        for (id, name) in &acked_conn {
            let v = d.ok("DescribeVpnConnection", &[("VpnConnectionId", id)]);
            assert_eq!(v["Name"], name.as_str(), "round {round}: connection {id}");
        }
        for id in &deleted {
            assert_eq!(d.call("DescribeVpnConnection", &[("VpnConnectionId", id)]).0, 404, "deleted {id} came back");
        }
        let gw =
            d.ok("CreateVpnGateway", &[("PublicIp", "198.51.100.1")])["VpnGatewayId"].as_str().unwrap().to_string();
        acked_gw.push(gw.clone());
        for i in 0..3 {
            let cgw = d.ok("CreateCustomerGateway", &[("IpAddress", &format!("203.0.{round}.{}", i + 1))]);
            let cgw = cgw["CustomerGatewayId"].as_str().unwrap();
            let name = format!("r{round}c{i}");
            let c = d.ok(
                "CreateVpnConnection",
                &[
                    ("VpnGatewayId", &gw),
                    ("CustomerGatewayId", cgw),
                    ("LocalSubnet", "10.0.0.0/24"),
                    ("RemoteSubnet", "10.9.0.0/24"),
                    ("Name", &name),
                ],
            );
            acked_conn.push((c["VpnConnectionId"].as_str().unwrap().to_string(), name));
        }
        // A modification and a deletion, both acknowledged, then SIGKILL at once.
        let (id, _) = acked_conn[acked_conn.len() - 1].clone();
        d.ok("ModifyVpnConnectionAttribute", &[("VpnConnectionId", &id), ("Name", "modified")]);
        acked_conn.last_mut().unwrap().1 = "modified".into();
        let (gone, _) = acked_conn.remove(acked_conn.len() - 2);
        d.ok("DeleteVpnConnection", &[("VpnConnectionId", &gone)]);
        deleted.push(gone);
        d.kill9();
    }
}
