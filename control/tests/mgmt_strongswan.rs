//! `ipsec-control serve` against a real strongSwan customer gateway configured from the API's own
//! DownloadVpnConnectionConfig (`Format=swanctl`). Needs root; without it prints SKIPPED and
//! passes, unless `IPSEC_REQUIRE_ROOT_TESTS=1` (then it fails). strongSwan is installed with apt if
//! missing.
//!
//! Topology (per-run name prefix; removed afterwards, also on failure):
//!
//! ```text
//!  root netns: this test ── veth 198.18.1.1/30 ─┐
//!                                               └ 198.18.1.2/30 (management API :8470)
//!  netns <p>a: ipsec-control serve --forwarder         netns <p>b: charon (libipsec, TUN ipsec0)
//!  lo 192.0.2.1                                        lo 198.51.100.1
//!  <p>va 198.18.0.1/24  ------------ veth ------------  <p>vb 198.18.0.2/24
//! ```
//!
//! Through the HTTP API: CreateVpnGateway (198.18.0.1), CreateCustomerGateway (198.18.0.2),
//! CreateVpnConnection (IKEv2, then in a second round IKEv1 main mode; aes256/sha256/group14,
//! EffectImmediately = false), then
//! DownloadVpnConnectionConfig as swanctl.conf → written unchanged into charon's swanctl
//! directory, `swanctl --load-all` (its `start_action = start` initiates) → DescribeVpnConnection
//! shows `ipsec_sa_established`, a ping from 192.0.2.1 to 198.51.100.1 crosses our userspace
//! forwarder and charon's libipsec, and DescribeVpnConnection then shows the packets and bytes. The
//! connection log has the negotiation and no PSK; the state files are 0600; DeleteVpnConnection
//! sends DELETE and charon drops the IKE SA.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const PSK: &str = "mgmt-swan-psk-61d0a9c4";
const CHARON: &str = ipsec_control::lab::CHARON;
const BIN: &str = env!("CARGO_BIN_EXE_ipsec-control");
const API: &str = "http://198.18.1.2:8470";

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(cmd: &str, args: &[&str]) {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {}: {}", args.join(" "), text(&o));
}

fn is_root() -> bool {
    run("id", &["-u"]).stdout.starts_with(b"0\n")
}

fn ensure_strongswan() {
    if Path::new(CHARON).exists() && Path::new("/usr/sbin/swanctl").exists() && Path::new("/usr/bin/ping").exists() {
        return;
    }
    ok("apt-get", &["update"]);
    let o = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "strongswan-charon", "libcharon-extra-plugins", "strongswan-swanctl", "iputils-ping"])
        .output()
        .expect("apt-get");
    assert!(o.status.success(), "apt-get install: {}", text(&o));
}

/// Namespaces, links, child processes and the temporary directory; torn down on drop.
struct Lab {
    a: String,
    b: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        let p = format!("mgs{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("{p}-mgmt-swan"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab { a: format!("{p}a"), b: format!("{p}b"), dir, children: Vec::new() };
        let (va, vb, vh, vm) = (format!("{p}va"), format!("{p}vb"), format!("{p}vh"), format!("{p}vm"));
        ok("ip", &["netns", "add", &lab.a]);
        ok("ip", &["netns", "add", &lab.b]);
        ok("ip", &["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ok("ip", &["link", "set", &va, "netns", &lab.a]);
        ok("ip", &["link", "set", &vb, "netns", &lab.b]);
        for (ns, dev, addr, inner) in
            [(&lab.a, &va, "198.18.0.1/24", "192.0.2.1/32"), (&lab.b, &vb, "198.18.0.2/24", "198.51.100.1/32")]
        {
            lab.ns_ok(ns, &["ip", "link", "set", "lo", "up"]);
            lab.ns_ok(ns, &["ip", "addr", "add", addr, "dev", dev]);
            lab.ns_ok(ns, &["ip", "link", "set", dev, "up"]);
            lab.ns_ok(ns, &["ip", "addr", "add", inner, "dev", "lo"]);
            lab.ns_ok(ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
            lab.ns_ok(ns, &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
        }
        // The management link: this test (root netns) ↔ the API in netns a.
        ok("ip", &["link", "add", &vh, "type", "veth", "peer", "name", &vm]);
        ok("ip", &["link", "set", &vm, "netns", &lab.a]);
        ok("ip", &["addr", "add", "198.18.1.1/30", "dev", &vh]);
        ok("ip", &["link", "set", &vh, "up"]);
        lab.ns_ok(&lab.a, &["ip", "addr", "add", "198.18.1.2/30", "dev", &vm]);
        lab.ns_ok(&lab.a, &["ip", "link", "set", &vm, "up"]);
        lab
    }

    fn ns(&self, ns: &str, args: &[&str]) -> Output {
        let mut v = vec!["netns", "exec", ns];
        v.extend_from_slice(args);
        run("ip", &v)
    }

    fn ns_ok(&self, ns: &str, args: &[&str]) {
        let o = self.ns(ns, args);
        assert!(o.status.success(), "in {ns}: {}: {}", args.join(" "), text(&o));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = run("kill", &["-TERM", &c.id().to_string()]);
        }
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes its veth ends, and with them their peers.
        let _ = run("ip", &["netns", "del", &self.a]);
        let _ = run("ip", &["netns", "del", &self.b]);
        if std::thread::panicking() || std::env::var_os("INTEROP_KEEP").is_some() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Api {
    token: String,
}

impl Api {
    fn call(&self, action: &str, params: &[(&str, &str)]) -> Value {
        let (status, v) =
            ipsec_mgmt::client::call(API, &self.token, action, params).unwrap_or_else(|e| panic!("{action}: {e}"));
        assert_eq!(status, 200, "{action}: {v}");
        v
    }
}

fn swanctl(dir: &Path, args: &[&str]) -> Output {
    ipsec_control::lab::swanctl(dir, args).expect("swanctl")
}

fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

#[test]
fn downloaded_swanctl_conf_brings_the_tunnel_up() {
    if !is_root() {
        if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("IPSEC_REQUIRE_ROOT_TESTS=1 but not running as root");
        }
        eprintln!("SKIPPED: mgmt_strongswan needs root (set IPSEC_REQUIRE_ROOT_TESTS=1 to make this a failure)");
        return;
    }
    ensure_strongswan();
    for v1 in [false, true] {
        let t = Instant::now();
        scenario(v1);
        eprintln!(
            "mgmt_strongswan {}: ok in {:.1} s",
            if v1 { "IKEv1 main" } else { "IKEv2" },
            t.elapsed().as_secs_f32()
        );
    }
}

/// The scenario of the module documentation, with an IKEv2 or an IKEv1 (main mode) connection.
fn scenario(v1: bool) {
    let mut lab = Lab::new();

    // Our side: one process with the API and IKE.
    let state = lab.dir.join("state");
    let ours_log = lab.dir.join("ours.log");
    let tun = format!("{}t", lab.a);
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.a, BIN, "serve", "--ike-listen", "198.18.0.1", "--forwarder", &tun])
        .args(["--listen", "198.18.1.2:8470", "--state-dir"])
        .arg(&state)
        .arg("--log")
        .arg(&ours_log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(lab.dir.join("ours.stderr")).unwrap())
        .spawn()
        .expect("ipsec-control serve");
    lab.children.push(child);
    let ours = || {
        std::fs::read_to_string(&ours_log).unwrap_or_default()
            + &std::fs::read_to_string(lab.dir.join("ours.stderr")).unwrap_or_default()
    };
    wait_for(10, "the API", || {
        let token = std::fs::read_to_string(state.join("api-token")).map_err(|e| e.to_string())?;
        ipsec_mgmt::client::call(API, token.trim(), "DescribeVpnGateways", &[]).map(|_| ())
    });
    let api = Api { token: std::fs::read_to_string(state.join("api-token")).unwrap().trim().to_string() };

    let gw = api.call("CreateVpnGateway", &[("PublicIp", "198.18.0.1"), ("Name", "lab")])["VpnGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let cgw = api.call("CreateCustomerGateway", &[("IpAddress", "198.18.0.2"), ("Name", "customer")])
        ["CustomerGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let version = if v1 { r#""IkeVersion":"ikev1","IkeMode":"main""# } else { r#""IkeVersion":"ikev2""# };
    let ike = format!(
        r#"{{{version},"Psk":"{PSK}","IkeEncAlg":"aes256","IkeAuthAlg":"sha256","IkePfs":"group14","IkeLifetime":3600}}"#
    );
    let id = api.call(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw),
            ("LocalSubnet", "192.0.2.0/24"),
            ("RemoteSubnet", "198.51.100.0/24"),
            ("EffectImmediately", "false"),
            ("IkeConfig", &ike),
            (
                "IpsecConfig",
                r#"{"IpsecEncAlg":"aes256","IpsecAuthAlg":"sha256","IpsecPfs":"group14","IpsecLifetime":1800}"#,
            ),
        ],
    )["VpnConnectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let conf = api.call("DownloadVpnConnectionConfig", &[("VpnConnectionId", &id), ("Format", "swanctl")])
        ["SwanctlConf"]
        .as_str()
        .unwrap()
        .to_string();

    // The customer gateway: charon with the downloaded swanctl.conf, unchanged.
    let cdir = lab.dir.join("charon");
    let child = ipsec_control::lab::charon_command(&lab.b, &cdir, &conf)
        .expect("charon's files")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("charon");
    lab.children.push(child);
    let charon_log = || std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default();
    wait_for(10, "charon's VICI socket", || if cdir.join("charon.vici").exists() { Ok(()) } else { Err(charon_log()) });
    let o = swanctl(&cdir, &["--load-all", "--noprompt"]);
    assert!(o.status.success(), "swanctl --load-all of the downloaded conf: {}\n{conf}", text(&o));

    // Up: DescribeVpnConnection says so; charon lists the Child SA.
    wait_for(30, "the tunnel", || {
        let d = api.call("DescribeVpnConnection", &[("VpnConnectionId", &id)]);
        if d["Status"] == "ipsec_sa_established" {
            Ok(())
        } else {
            Err(format!("{d}\nours:\n{}\ncharon:\n{}", ours(), charon_log()))
        }
    });
    let sas = text(&swanctl(&cdir, &["--list-sas"]));
    assert!(sas.contains("INSTALLED"), "{sas}");
    assert!(sas.contains(if v1 { "IKEv1" } else { "IKEv2" }), "{sas}");

    // Traffic through both data planes, then the counters in Describe.
    let o = lab.ns(&lab.a, &["ping", "-n", "-q", "-c", "5", "-i", "0.2", "-W", "2", "-I", "192.0.2.1", "198.51.100.1"]);
    let t = text(&o);
    let stats = t.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
    let nums: Vec<u64> = stats.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    let received = nums.get(1).copied().unwrap_or(0);
    assert!(received >= 4, "ping across the tunnel: {t}\nours:\n{}", ours());
    wait_for(10, "the counters", || {
        let d = api.call("DescribeVpnConnection", &[("VpnConnectionId", &id)]);
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        if n("PacketsOut") >= received
            && n("PacketsIn") >= received
            && n("BytesOut") >= 64 * received
            && n("BytesIn") >= 64 * received
        {
            Ok(())
        } else {
            Err(d.to_string())
        }
    });
    let d = api.call("DescribeVpnConnection", &[("VpnConnectionId", &id)]);
    assert_eq!((d["IkeSaState"].as_str(), d["IpsecSaState"].as_str()), (Some("established"), Some("established")));
    assert!(d["IkeSaEstablishedTime"].as_u64().unwrap() > 0 && d["IpsecSaEstablishedTime"].as_u64().unwrap() > 0);

    // The connection log: the negotiation as the responder, no PSK.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (from, to) = ((now - 300).to_string(), (now + 5).to_string());
    let logs = api.call(
        "DescribeVpnConnectionLogs",
        &[("VpnConnectionId", &id), ("From", &from), ("To", &to), ("PageSize", "50")],
    );
    let lines = logs["Data"]["Logs"].to_string();
    let steps: &[&str] = if v1 {
        &[
            "IKEv1 Main mode from 198.18.0.2:500: responding",
            "IKEv1 Main Mode message received from 198.18.0.2",
            "IKEv1 ISAKMP SA established",
            "IKEv1 Quick Mode message sent to 198.18.0.2",
            "CHILD_SA installed",
        ]
    } else {
        &[
            "IKE_SA_INIT request received from 198.18.0.2",
            "peer offers: aes256-sha256-prfsha256-modp2048",
            "IKE_SA_INIT response sent",
            "AUTH ok",
            "Child SA installed",
        ]
    };
    for step in steps {
        assert!(lines.contains(step), "log lacks {step:?}: {lines}");
    }
    assert!(!lines.contains(PSK) && !ours().contains(PSK), "a log shows the PSK");
    for f in ["mgmt.db", "api-token", "ike-state"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert!(!std::fs::read_to_string(state.join("ike-state")).unwrap().contains(PSK));

    // Delete: DELETE to charon, which drops the IKE SA (the downloaded conf restarts only on DPD).
    api.call("DeleteVpnConnection", &[("VpnConnectionId", &id)]);
    wait_for(15, "charon to drop the IKE SA", || {
        let s = text(&swanctl(&cdir, &["--list-sas"]));
        if s.contains("ESTABLISHED") {
            Err(s)
        } else {
            Ok(())
        }
    });
}
