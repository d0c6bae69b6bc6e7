//! End to end with IKE: host-A — gw-1 — wire — gw-2 — host-B in network namespaces made for this
//! run (`ike<pid>{ha,g1,w,g2,hb}`, removed on exit, also on failure), the same topology as
//! `engine/tests/e2e_static.rs`:
//!
//! ```text
//!  ha: a0 192.0.2.2 ── g1i 192.0.2.1 [gw-1] g1o 198.18.0.1 ── w1 [bridge in w] w2 ── g2o 198.18.0.2 [gw-2] g2i 198.51.100.1 ── b0 198.51.100.2 :hb
//! ```
//!
//! Each gateway runs `ipsec-engine run` with no tunnel in its configuration and
//! `ipsec-control run --engine SOCKET`: the engine owns the outside interface and punts IKE to
//! ipsec-control over the channel, and ipsec-control publishes the negotiated SAs to it. gw-1's
//! connection has `effect_immediately = false`: host-A's traffic makes gw-1's engine raise an
//! acquire, on which gw-1 initiates. Checked: ping both ways through the negotiated SAs; a Child SA
//! rekey (`rekey-child`) keeps ping working; after gw-1's ipsec-control is killed (SIGKILL) ping
//! still passes (the engine keeps forwarding with the SAs it has); a new ipsec-control on gw-1
//! takes over: the old SAs carry traffic through its takeover grace, then its restatement removes
//! them and traffic negotiates new ones (acquire).
//!
//! Needs root, iproute2, and the `ipsec-engine` binary next to `ipsec-control` (built by
//! `cargo test --workspace`, or `cargo build -p ipsec-engine`). Without them it prints
//! "SKIPPED: ..." and passes, unless `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

#[path = "../../engine/tests/common/mod.rs"]
mod common;
use common::topology::Topology;

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipsec_control::daemon::control_request;

const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PSK: &str = "e2e-engine-ike-psk-4c3b2a19";

fn skip(why: &str) -> bool {
    if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("e2e_engine_ike cannot run ({why}) and IPSEC_REQUIRE_ROOT_TESTS=1 is set");
    }
    println!("SKIPPED: {why}");
    false
}

/// The `ipsec-engine` binary of the same build, if it has the control channel.
fn engine_binary() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_ipsec-control")).with_file_name("ipsec-engine");
    let out = Command::new(&p).args(["run", "--help"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).contains("--control-socket").then_some(p)
}

/// A child process in a namespace, with its output in files; SIGTERM then SIGKILL on drop.
struct Proc {
    name: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(t: &Topology, ns: &str, name: &str, args: &[&str]) -> Proc {
        let out = t.dir.join(format!("{name}.out"));
        let err = t.dir.join(format!("{name}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", &t.ns(ns)])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { name: name.into(), child: Some(child), out, err }
    }

    fn logs(&self) -> String {
        format!(
            "--- {} stdout\n{}\n--- {} stderr\n{}",
            self.name,
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            self.name,
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    fn wait_for(&mut self, what: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.logs().contains(what) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited ({status}):\n{}", self.name, self.logs());
            }
            assert!(Instant::now() < deadline, "{}: no {what:?}:\n{}", self.name, self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn engine_config(outside: &str, inside: &str, me: &str) -> String {
    format!(
        "[gateway]\nlocal_addrs = [\"{me}\"]\n\n\
         [[interface]]\nname = \"{outside}\"\nrole = \"outside\"\nqueues = 1\n\n\
         [[interface]]\nname = \"{inside}\"\nrole = \"inside\"\nqueues = 1\n"
    )
}

#[allow(clippy::too_many_arguments)]
fn control_config(me: &str, peer: &str, ours: &str, theirs: &str, immediately: bool, ctl: &Path) -> String {
    format!(
        r#"[daemon]
listen = "{me}"
control_socket = "{ctl}"

[[connection]]
name = "site"
local_addr = "{me}"
remote_addr = "{peer}"
local_subnets = ["{ours}"]
remote_subnets = ["{theirs}"]
psk = "{PSK}"
effect_immediately = {immediately}
[connection.ike]
proposals = ["aes128gcm16-prfsha256-ecp256"]
[connection.ipsec]
proposals = ["aes128gcm16-ecp256"]
"#,
        ctl = ctl.display()
    )
}

fn ping(t: &Topology, from: &str, to: Ipv4Addr, count: u32) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(from), "ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
        .arg(to.to_string())
        .output()
        .expect("ping");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("{count} received"))
}

fn warm_up(t: &Topology, from: &str, to: Ipv4Addr, tries: u32) -> bool {
    (0..tries).any(|_| ping(t, from, to, 1))
}

#[test]
fn ike_through_two_engines_and_control_loss() {
    if !common::can_run("ike", "e2e_engine_ike") {
        return;
    }
    let Some(engine) = engine_binary() else {
        skip("no ipsec-engine binary with --control-socket next to ipsec-control (cargo build -p ipsec-engine)");
        return;
    };
    common::remove_stale_namespaces("ike", &["ha", "g1", "w", "g2", "hb", "p"]);
    let t = Topology::bridged("ike", 1);
    let engine = engine.to_str().unwrap().to_string();
    let control = env!("CARGO_BIN_EXE_ipsec-control");
    let mut procs: Vec<Proc> = Vec::new();
    let gws = [
        ("g1", "g1o", "g1i", "198.18.0.1", "198.18.0.2", "192.0.2.0/24", "198.51.100.0/24", false),
        ("g2", "g2o", "g2i", "198.18.0.2", "198.18.0.1", "198.51.100.0/24", "192.0.2.0/24", false),
    ];
    let mut ctl_sockets = Vec::new();
    for (ns, outside, inside, me, peer, ours, theirs, immediately) in gws {
        let sock = t.dir.join(format!("{ns}-engine/control.sock"));
        let ecfg = t.dir.join(format!("{ns}-engine.toml"));
        std::fs::write(&ecfg, engine_config(&t.dev(outside), &t.dev(inside), me)).unwrap();
        #[rustfmt::skip]
        let mut e = Proc::spawn(&t, ns, &format!("engine-{ns}"), &[
            &engine, "run", "--config", ecfg.to_str().unwrap(), "--control-socket", sock.to_str().unwrap(),
            "--no-pin", "--xdp-mode", "auto", "--frames", "2048", "--ring-size", "512",
            "--neigh-interval-ms", "200",
        ]);
        e.wait_for("running", 30);
        procs.push(e);
        let ctl = t.dir.join(format!("{ns}-control.sock"));
        let ccfg = t.dir.join(format!("{ns}-control.toml"));
        std::fs::write(&ccfg, control_config(me, peer, ours, theirs, immediately, &ctl)).unwrap();
        let log = t.dir.join(format!("{ns}-control.log"));
        #[rustfmt::skip]
        let c = Proc::spawn(&t, ns, &format!("control-{ns}"), &[
            control, "run", "--config", ccfg.to_str().unwrap(), "--engine", sock.to_str().unwrap(),
            "--log", log.to_str().unwrap(),
        ]);
        procs.push(c);
        ctl_sockets.push((ctl, log));
    }
    let logs = |procs: &[Proc]| -> String {
        let mut s: String = procs.iter().map(Proc::logs).collect();
        for (_, log) in &ctl_sockets {
            s += &format!("--- {}\n{}\n", log.display(), std::fs::read_to_string(log).unwrap_or_default());
        }
        s
    };
    // Both daemons attached and restated (trap tunnels) before any traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl_sockets.iter().all(|(_, l)| std::fs::read_to_string(l).unwrap_or_default().contains("sync 1 done")) {
        assert!(Instant::now() < deadline, "control sessions not up:\n{}", logs(&procs));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Traffic from host-A: gw-1's engine raises an acquire, gw-1 initiates through its engine.
    assert!(warm_up(&t, "ha", HOST_B, 20), "host-A cannot reach host-B:\n{}", logs(&procs));
    let log1 = std::fs::read_to_string(&ctl_sockets[0].1).unwrap();
    assert!(log1.contains("acquire from the data plane"), "no acquire:\n{}", logs(&procs));
    assert!(log1.contains("CHILD_SA installed"), "{log1}");
    assert!(ping(&t, "ha", HOST_B, 5), "ping host-A -> host-B lost packets:\n{}", logs(&procs));
    assert!(warm_up(&t, "hb", HOST_A, 5) && ping(&t, "hb", HOST_A, 5), "host-B -> host-A:\n{}", logs(&procs));
    let status = control_request(&ctl_sockets[0].0, "status").expect("status");
    assert!(status.contains("child spi_in="), "{status}");

    // A Child SA rekey through the engines (make-before-break): ping keeps working.
    control_request(&ctl_sockets[0].0, "rekey-child site").expect("rekey-child");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = control_request(&ctl_sockets[0].0, "status").unwrap_or_default();
        if !s.is_empty() && s.contains("child spi_in=") && !s.contains(status.lines().nth(1).unwrap_or("?")) {
            break;
        }
        assert!(Instant::now() < deadline, "rekey did not complete: {s}\n{}", logs(&procs));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ping(&t, "ha", HOST_B, 5), "ping after the rekey:\n{}", logs(&procs));

    // gw-1's control process dies: its engine keeps forwarding.
    procs[1].kill();
    std::thread::sleep(Duration::from_millis(500));
    assert!(ping(&t, "ha", HOST_B, 5), "ping without gw-1's ipsec-control:\n{}", logs(&procs));
    assert!(ping(&t, "hb", HOST_A, 5), "ping back without gw-1's ipsec-control:\n{}", logs(&procs));

    // A new ipsec-control on gw-1 (no IKE state) finds the old SAs in the engine: they keep
    // carrying traffic through the takeover grace; then its restatement removes them, traffic
    // raises an acquire and a new IKE SA and Child SA take over.
    let log2 = t.dir.join("g1-control-2.log");
    let (sock1, ccfg1) = (t.dir.join("g1-engine/control.sock"), t.dir.join("g1-control.toml"));
    #[rustfmt::skip]
    procs.push(Proc::spawn(&t, "g1", "control-g1-2", &[
        control, "run", "--config", ccfg1.to_str().unwrap(), "--engine", sock1.to_str().unwrap(),
        "--log", log2.to_str().unwrap(),
    ]));
    let text2 = || std::fs::read_to_string(&log2).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text2().contains("previous control process") {
        assert!(Instant::now() < deadline, "no takeover:\n{}\n{}", text2(), logs(&procs));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ping(&t, "ha", HOST_B, 3), "ping during the takeover grace:\n{}\n{}", text2(), logs(&procs));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text2().contains("sync 1 done") {
        assert!(Instant::now() < deadline, "no restatement after the grace:\n{}", text2());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(text2().contains("removed"), "{}", text2());
    assert!(warm_up(&t, "ha", HOST_B, 20), "no new SA after the takeover:\n{}\n{}", text2(), logs(&procs));
    assert!(text2().contains("acquire from the data plane") && text2().contains("CHILD_SA installed"), "{}", text2());
    assert!(warm_up(&t, "hb", HOST_A, 10), "host-B -> host-A after the takeover:\n{}\n{}", text2(), logs(&procs));
    assert!(ping(&t, "ha", HOST_B, 5) && ping(&t, "hb", HOST_A, 5), "after the takeover:\n{}", text2());
    assert!(!text2().contains(PSK));
    if std::env::var("E2E_SHOW_LOGS").is_ok() {
        println!("--- {}\n{}", log2.display(), text2());
    }

    if std::env::var("E2E_SHOW_LOGS").is_ok() {
        println!("{}", logs(&procs));
    }
    for l in logs(&procs).lines() {
        assert!(!l.contains(PSK), "a log shows the PSK: {l}");
    }
    for p in procs.iter_mut().rev() {
        p.stop();
    }
}
