//! The `vpnctl` binary against a running `ipsec-mgmtd`: JSON and table output, the token file,
//! exit codes and Code/Message on API errors.

mod common;

use std::process::{Command, Output};

use common::{tmpdir, Daemon};
use serde_json::Value;

fn vpnctl(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpnctl"))
        .args(["--endpoint", &d.endpoint, "--token-file"])
        .arg(d.state_dir.join("api-token"))
        .args(args)
        .output()
        .unwrap()
}

fn json_ok(d: &Daemon, args: &[&str]) -> Value {
    let o = vpnctl(d, args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn vpnctl_against_a_running_daemon() {
    let dir = tmpdir("vpnctl");
    let d = Daemon::start(&dir.join("state"), &[]);
    let gw = json_ok(&d, &["CreateVpnGateway", "--PublicIp", "198.51.100.1", "--Name", "gw1"]);
    let gw = gw["VpnGatewayId"].as_str().unwrap().to_string();
    let cgw = json_ok(&d, &["CreateCustomerGateway", "--IpAddress=203.0.113.9", "--Asn", "65001"]);
    let cgw = cgw["CustomerGatewayId"].as_str().unwrap().to_string();
    let c = json_ok(
        &d,
        &[
            "CreateVpnConnection",
            "--VpnGatewayId",
            &gw,
            "--CustomerGatewayId",
            &cgw,
            "--LocalSubnet",
            "10.0.0.0/24,10.1.0.0/24",
            "--RemoteSubnet",
            "10.9.0.0/24",
            "--IkeConfig",
            r#"{"IkeVersion":"ikev2","IkeEncAlg":"aes256","Psk":"abc&def=1"}"#,
            "--Name",
            "branch-1",
        ],
    );
    let id = c["VpnConnectionId"].as_str().unwrap().to_string();
    assert!(id.starts_with("vco-"));
    let v = json_ok(&d, &["DescribeVpnConnection", "--VpnConnectionId", &id, "--ShowPsk", "true"]);
    assert_eq!(v["IkeConfig"]["Psk"], "abc&def=1");

    // Table output: key/value rows for one resource, one row per item for lists.
    let o = vpnctl(&d, &["--output", "table", "DescribeVpnConnection", "--VpnConnectionId", &id]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("IkeConfig.IkeEncAlg") && l.ends_with("aes256")), "{text}");
    assert!(!text.contains("abc&def=1"));
    let o = vpnctl(&d, &["DescribeVpnConnections", "--output", "table"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("VpnConnections.VpnConnection:"), "{text}");
    let header = text.lines().skip_while(|l| !l.starts_with("VpnConnections.")).nth(1).unwrap();
    assert!(header.contains("VpnConnectionId") && header.contains("Name"), "{text}");
    assert!(text.contains(&id) && text.contains("branch-1"));
    assert!(text.lines().any(|l| l.starts_with("TotalCount") && l.ends_with('1')));

    // Swanctl rendering as text in table mode.
    let o = vpnctl(
        &d,
        &["DownloadVpnConnectionConfig", "--VpnConnectionId", &id, "--Format", "swanctl", "--output", "table"],
    );
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("connections {") && text.contains("remote_addrs = 198.51.100.1"), "{text}");

    // API errors: non-zero exit, Code and Message on stderr.
    let o = vpnctl(&d, &["DescribeVpnConnection", "--VpnConnectionId", "vco-nope"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("Code: InvalidVpnConnectionInstanceId.NotFound"), "{err}");
    assert!(err.contains("Message: VpnConnectionId:"), "{err}");
    let o = vpnctl(&d, &["CreateVpnConnection", "--VpnGatewayId", &gw]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("MissingParameter.CustomerGatewayId"));

    // Usage and transport errors.
    let o = vpnctl(&d, &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = vpnctl(&d, &["DescribeVpnGateways", "--bogus", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(env!("CARGO_BIN_EXE_vpnctl"))
        .args(["--endpoint", &d.endpoint, "--token-file", "/nonexistent/token", "DescribeVpnGateways"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    // A wrong token: the API's 401 is an API error.
    let bad = dir.join("bad-token");
    std::fs::write(&bad, "nope\n").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vpnctl"))
        .args(["--endpoint", &d.endpoint, "--token-file"])
        .arg(&bad)
        .arg("DescribeVpnGateways")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Code: Unauthorized"));
    // The default token file comes from VPNCTL_TOKEN_FILE.
    let o = Command::new(env!("CARGO_BIN_EXE_vpnctl"))
        .env("VPNCTL_TOKEN_FILE", d.state_dir.join("api-token"))
        .env("VPNCTL_ENDPOINT", &d.endpoint)
        .arg("DescribeVpnGateways")
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["TotalCount"], 1);
}
