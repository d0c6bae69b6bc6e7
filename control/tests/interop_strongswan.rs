//! Interop with strongSwan 5.9 (charon + kernel-libipsec) in network namespaces, on both of our
//! data planes. Needs root; without it prints SKIPPED and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1` (then it fails). strongSwan is installed with apt if
//! `/usr/lib/ipsec/charon` is missing.
//!
//! Three tests run the same matrix, one after the other (never at once: they share the machine's
//! two cores and would blur the "at most one lost packet" checks):
//!
//! * `interop_strongswan` — our daemon with the userspace ESP forwarder (`run --forwarder`):
//!
//! ```text
//!  netns <p>a: ipsec-control --forwarder            netns <p>b: charon (libipsec, TUN ipsec0)
//!  lo 192.0.2.1, 192.0.2.129                        lo 198.51.100.1, 198.51.100.129
//!  <p>va 198.18.0.1/24  ------------ veth ------------  <p>vb 198.18.0.2/24
//! ```
//!
//! * `interop_strongswan_engine` — the AF_XDP engine (`ipsec-engine run --control-socket`, one
//!   for the whole matrix) with our daemon attached to it (`run --engine`): IKE is punted through
//!   the engine, the Child SAs are published to it, and the pings come from a host behind it.
//!   Every ping is also checked in the engine's own per-SA counters (the negotiated SPIs, both
//!   directions), and after DPD the engine must have dropped the SAs:
//!
//! ```text
//!  netns <p>h: host           netns <p>a: ipsec-engine + ipsec-control --engine    netns <p>b: charon
//!  eth0 192.0.2.1/24,    ---  <p>vi 192.0.2.254/24 (inside)
//!       192.0.2.129/24        <p>va 198.18.0.1/24 (outside)  ------------ veth ----  <p>vb 198.18.0.2/24
//! ```
//!
//! * `interop_strongswan_engine_afpacket` — the engine on its AF_PACKET backend (`--io afpacket`),
//!   two cases (aes128-sha1-modp1024 and 2×2 subnets), both roles, no rekey steps: its inside
//!   socket filter must follow the tunnels the channel installs (the pings pass, and pings of the
//!   gateway's own inside address never reach the engine).
//!
//! For every proposal case and both roles (we initiate / charon initiates): the IKE SA and the
//! Child SA come up, `swanctl --list-sas` shows the Child SA INSTALLED with the SPIs our daemon
//! logged, and a ping from 192.0.2.1 to 198.51.100.1 crosses our data plane and charon's
//! libipsec; SIGTERM makes our daemon DELETE the IKE SA and charon must drop it. Then, in both
//! roles, under a running ping (at most one lost packet per step): Child SA and IKE SA rekeys
//! started by charon and by us; rekey collisions (both ends at once, made deterministic by
//! dropping IKE messages with nftables in charon's namespace — the engine's XDP program takes
//! ours before any netfilter hook); a rekey of the SA we just created as responder whose response
//! charon has not received yet (charon answers CHILD_SA_NOT_FOUND: we recreate the Child SA, RFC
//! 7296 §2.25). Finally charon is killed and our DPD must notice within 30 s and remove the SAs.
//! Everything runs sequentially with short timeouts (about two minutes per data plane).
//!
//! Knobs: `INTEROP_ONLY=<case name substring>|rekey`, `INTEROP_STEP=<rekey step substring>`,
//! `INTEROP_KEEP=1` (keep logs and configs in the temporary directory).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod support;
use support::{ensure_strongswan, text, Charon};

const PSK: &str = "interop-psk-8c1f4e2a77d0";
const BIN: &str = env!("CARGO_BIN_EXE_ipsec-control");

/// The two tests take turns (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
}

fn is_root() -> bool {
    run("id", &["-u"]).stdout.starts_with(b"0\n")
}

/// Which of our data planes carries the ESP traffic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plane {
    /// `ipsec-control run --forwarder`: kernel routing + TUN + userspace ESP.
    Forwarder,
    /// `ipsec-engine run --control-socket` + `ipsec-control run --engine`.
    Engine,
    /// The same with the engine's AF_PACKET backend (`--io afpacket`).
    EnginePacket,
}

impl Plane {
    fn is_engine(self) -> bool {
        self != Plane::Forwarder
    }
}

/// The engine of the `Engine` plane: its control socket and its stdout (stats every second).
struct Engine {
    socket: PathBuf,
    out: PathBuf,
    /// The inside interface's name.
    inside: String,
    /// Whether it runs on AF_PACKET (`--io afpacket`).
    afpacket: bool,
}

impl Engine {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// `(packets in, packets out)` of the tunnel `t` SAs with these SPIs (our daemon's hex
    /// notation) in the engine's last stats block; `None` when either SA is not listed.
    fn sa_packets(&self, spi_in: &str, spi_out: &str) -> Option<(u64, u64)> {
        let out = self.output();
        let block = &out[out.rfind("stats:\n")?..];
        let block: Vec<&str> = block.lines().skip(1).take_while(|l| l.starts_with(' ')).collect();
        let packets = |dir: &str, spi: &str| {
            let spi = format!("spi 0x{}", spi.to_ascii_lowercase());
            block.iter().find(|l| l.contains(" sa t ") && l.contains(&format!(" {dir} ")) && l.contains(&spi)).and_then(
                |l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.iter().position(|x| *x == "packets").and_then(|i| w.get(i + 1)?.parse::<u64>().ok())
                },
            )
        };
        Some((packets("in", spi_in)?, packets("out", spi_out)?))
    }

    /// Waits (a few stats intervals) until both SAs have carried packets; returns the counts.
    fn wait_traffic(&self, spi_in: &str, spi_out: &str) -> Result<(u64, u64), String> {
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            match self.sa_packets(spi_in, spi_out) {
                Some((i, o)) if i > 0 && o > 0 => return Ok((i, o)),
                last if Instant::now() > deadline => {
                    return Err(format!(
                        "the engine's counters for in {spi_in} / out {spi_out} show no traffic ({last:?}):\n{}",
                        tail(&self.output(), 25)
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Frames the engine received on its inside interface so far (last stats block).
    fn inside_rx(&self) -> Option<u64> {
        let out = self.output();
        let block = &out[out.rfind("stats:\n")?..];
        let key = format!("{}/0 rx ", self.inside);
        let line = block.lines().find(|l| l.contains(&key))?;
        let rest = &line[line.find(&key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    /// Waits until the engine no longer lists an SA with `spi` (our daemon's hex notation).
    fn wait_gone(&self, spi: &str) -> Result<(), String> {
        let spi = format!("spi 0x{}", spi.to_ascii_lowercase());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.output();
            let last = out.rfind("stats:\n").map(|i| &out[i..]).unwrap_or("");
            let block: Vec<&str> = last.lines().skip(1).take_while(|l| l.starts_with(' ')).collect();
            if !last.is_empty() && !block.iter().any(|l| l.contains(&spi)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the engine still lists {spi}:\n{}", block.join("\n")));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The `ipsec-engine` binary of the same build, if it has the control channel.
fn engine_binary() -> Option<PathBuf> {
    let p = Path::new(BIN).with_file_name("ipsec-engine");
    let out = Command::new(&p).args(["run", "--help"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).contains("--control-socket").then_some(p)
}

/// The namespaces and the temporary directory; torn down on drop (also when a test panics).
struct Lab {
    /// Our gateway.
    a: String,
    /// charon.
    b: String,
    /// Where pings start: `a` (forwarder) or the host behind the engine.
    src: String,
    namespaces: Vec<String>,
    dir: PathBuf,
    children: Vec<Child>,
    engine: Option<Engine>,
    keep: bool,
}

impl Lab {
    fn new(plane: Plane) -> Lab {
        let tag = match plane {
            Plane::Forwarder => "f",
            Plane::Engine => "e",
            Plane::EnginePacket => "p",
        };
        let p = format!("ipt{}{tag}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("{p}-interop"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, h) = (format!("{p}a"), format!("{p}b"), format!("{p}h"));
        let src = if plane.is_engine() { h.clone() } else { a.clone() };
        let mut lab = Lab { a, b, src, namespaces: Vec::new(), dir, children: Vec::new(), engine: None, keep: false };
        let (va, vb, vi) = (format!("{p}va"), format!("{p}vb"), format!("{p}vi"));
        let mut nss = vec![lab.a.clone(), lab.b.clone()];
        if plane.is_engine() {
            nss.push(h.clone());
        }
        for ns in &nss {
            ok("ip", &["netns", "add", ns]);
            lab.namespaces.push(ns.clone());
            lab.ns_ok(ns, &["ip", "link", "set", "lo", "up"]);
            lab.ns_ok(ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
            lab.ns_ok(ns, &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
        }
        ok("ip", &["link", "add", &va, "netns", &lab.a, "type", "veth", "peer", "name", &vb, "netns", &lab.b]);
        // Ours: inner addresses on lo (forwarder: the kernel routes them into its TUN) or on a
        // host behind the engine. charon's: on lo, routed into libipsec's TUN.
        let (a_inner, h_inner): (&[&str], &[&str]) = match plane {
            Plane::Forwarder => (&["192.0.2.1/32", "192.0.2.129/32"], &[]),
            Plane::Engine | Plane::EnginePacket => (&[], &["192.0.2.1/24", "192.0.2.129/24"]),
        };
        for (ns, dev, addr, inner) in [
            (&lab.a, &va, "198.18.0.1/24", a_inner),
            (&lab.b, &vb, "198.18.0.2/24", &["198.51.100.1/32", "198.51.100.129/32"][..]),
        ] {
            lab.ns_ok(ns, &["ip", "addr", "add", addr, "dev", dev]);
            lab.ns_ok(ns, &["ip", "link", "set", dev, "up"]);
            for i in inner {
                lab.ns_ok(ns, &["ip", "addr", "add", i, "dev", "lo"]);
            }
        }
        if plane.is_engine() {
            ok("ip", &["link", "add", &vi, "netns", &lab.a, "type", "veth", "peer", "name", "eth0", "netns", &h]);
            lab.ns_ok(&lab.a, &["ip", "addr", "add", "192.0.2.254/24", "dev", &vi]);
            lab.ns_ok(&lab.a, &["ip", "link", "set", &vi, "up"]);
            for i in h_inner {
                lab.ns_ok(&h, &["ip", "addr", "add", i, "dev", "eth0"]);
            }
            lab.ns_ok(&h, &["ip", "link", "set", "eth0", "up"]);
            lab.ns_ok(&h, &["ip", "route", "add", "default", "via", "192.0.2.254"]);
            // The engine forwards frames as they are: every sender fills its checksums itself.
            // The gateway's kernel must not route anything in clear.
            for (ns, dev) in [(&h, "eth0"), (&lab.a, vi.as_str()), (&lab.a, va.as_str()), (&lab.b, vb.as_str())] {
                lab.ns_ok(ns, &["ethtool", "-K", dev, "tx", "off"]);
            }
            lab.ns_ok(&lab.a, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
            lab.start_engine(&va, &vi, plane == Plane::EnginePacket);
        }
        lab
    }

    /// One engine for the whole matrix; each cell's daemon attaches to it in turn (a new daemon
    /// re-states its SAs and the engine drops the previous daemon's).
    fn start_engine(&mut self, outside: &str, inside: &str, afpacket: bool) {
        let exe = engine_binary().expect("ipsec-engine with --control-socket next to ipsec-control");
        let cfg = self.dir.join("engine.toml");
        std::fs::write(
            &cfg,
            format!(
                "[gateway]\nlocal_addrs = [\"198.18.0.1\"]\ninside_addrs = [\"192.0.2.254\"]\n\n\
                 [[interface]]\nname = \"{outside}\"\nrole = \"outside\"\nqueues = 1\n\n\
                 [[interface]]\nname = \"{inside}\"\nrole = \"inside\"\nqueues = 1\n"
            ),
        )
        .unwrap();
        let socket = self.dir.join("engine/control.sock");
        let out = self.dir.join("engine.out");
        #[rustfmt::skip]
        let child = Command::new("ip")
            .args(["netns", "exec", &self.a]).arg(&exe)
            .args(["run", "--config", cfg.to_str().unwrap(), "--control-socket", socket.to_str().unwrap(),
                   "--no-pin", "--xdp-mode", "auto", "--frames", "2048", "--ring-size", "512",
                   "--neigh-interval-ms", "200", "--stats-interval", "1",
                   "--io", if afpacket { "afpacket" } else { "afxdp" }])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(self.dir.join("engine.err")).unwrap())
            .spawn()
            .expect("ipsec-engine");
        self.children.push(child);
        let engine = Engine { socket, out, inside: inside.to_string(), afpacket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !engine.socket.exists() {
            let err = std::fs::read_to_string(self.dir.join("engine.err")).unwrap_or_default();
            assert!(Instant::now() < deadline, "the engine did not open its control socket:\n{err}");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.engine = Some(engine);
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

    /// Stops the processes of one cell (everything but the engine).
    fn stop_cell(&mut self) {
        let keep = usize::from(self.engine.is_some());
        for mut c in self.children.drain(keep..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        if self.keep || std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One proposal case: strongSwan's proposals and our config's `[connection.ike]` and
/// `[connection.ipsec]` bodies.
struct Case {
    name: &'static str,
    swan_ike: &'static str,
    swan_esp: &'static str,
    our_ike: &'static str,
    our_esp: &'static str,
    multi: bool,
    /// Also rekey the Child SA (from charon) and ping again: exercises PFS where configured.
    rekey: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "aes128-sha1-modp1024",
        swan_ike: "aes128-sha1-modp1024",
        swan_esp: "aes128-sha1",
        our_ike: "enc = \"aes\"\nauth = \"sha1\"\ndh_group = 2",
        our_esp: "enc = \"aes\"\nauth = \"sha1\"\npfs_group = \"disabled\"",
        multi: false,
        rekey: false,
    },
    Case {
        name: "aes256-sha256-modp2048",
        swan_ike: "aes256-sha256-modp2048",
        swan_esp: "aes256-sha256",
        our_ike: "enc = \"aes256\"\nauth = \"sha256\"\ndh_group = 14",
        our_esp: "enc = \"aes256\"\nauth = \"sha256\"\npfs_group = \"disabled\"",
        multi: false,
        rekey: false,
    },
    Case {
        name: "3des-md5-modp1024",
        swan_ike: "3des-md5-modp1024",
        swan_esp: "3des-md5",
        our_ike: "enc = \"3des\"\nauth = \"md5\"\ndh_group = 2",
        our_esp: "enc = \"3des\"\nauth = \"md5\"\npfs_group = \"disabled\"",
        multi: false,
        rekey: false,
    },
    Case {
        name: "aes192-sha384-modp1536",
        swan_ike: "aes192-sha384-modp1536",
        swan_esp: "aes192-sha384",
        our_ike: "enc = \"aes192\"\nauth = \"sha384\"\ndh_group = 5",
        our_esp: "enc = \"aes192\"\nauth = \"sha384\"\npfs_group = \"disabled\"",
        multi: false,
        rekey: false,
    },
    Case {
        name: "aes128gcm16-prfsha256-ecp256",
        swan_ike: "aes128gcm16-prfsha256-ecp256",
        swan_esp: "aes128gcm16",
        our_ike: "proposals = [\"aes128gcm16-prfsha256-ecp256\"]",
        our_esp: "proposals = [\"aes128gcm16\"]",
        multi: false,
        rekey: false,
    },
    Case {
        name: "aes256-sha512-modp2048+pfs14",
        swan_ike: "aes256-sha512-modp2048",
        swan_esp: "aes256-sha512-modp2048",
        our_ike: "enc = \"aes256\"\nauth = \"sha512\"\ndh_group = 14",
        our_esp: "enc = \"aes256\"\nauth = \"sha512\"\npfs_group = 14",
        multi: false,
        rekey: true,
    },
    Case {
        name: "aes256gcm16-prfsha384-curve25519+pfs",
        swan_ike: "aes256gcm16-prfsha384-curve25519",
        swan_esp: "aes256gcm16-curve25519",
        our_ike: "proposals = [\"aes256gcm16-prfsha384-curve25519\"]",
        our_esp: "proposals = [\"aes256gcm16-curve25519\"]",
        multi: false,
        rekey: true,
    },
    Case {
        name: "2x2 subnets (aes128-sha256-ecp256)",
        swan_ike: "aes128-sha256-ecp256",
        swan_esp: "aes128-sha256",
        our_ike: "proposals = [\"aes128-sha256-ecp256\"]",
        our_esp: "proposals = [\"aes128-sha256\"]",
        multi: true,
        rekey: false,
    },
];

fn subnets(multi: bool) -> (&'static [&'static str], &'static [&'static str]) {
    if multi {
        (&["192.0.2.0/25", "192.0.2.128/25"], &["198.51.100.0/25", "198.51.100.128/25"])
    } else {
        (&["192.0.2.0/24"], &["198.51.100.0/24"])
    }
}

fn toml_list(v: &[&str]) -> String {
    v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// charon in netns b for `case`, its files in `DIR/charon-<tag>`.
fn start_charon(lab: &Lab, case: &Case, tag: &str) -> Charon {
    let (ours, theirs) = subnets(case.multi);
    let conf = support::psk_connection(case.swan_ike, case.swan_esp, theirs, ours, PSK);
    Charon::start(&lab.b, lab.dir.join(format!("charon-{tag}")), &conf, ipsec_control::lab::CHARON_LOG_LEVELS)
}

/// Our daemon in netns a, on the lab's data plane.
struct Ours {
    dir: PathBuf,
}

impl Ours {
    fn start(lab: &mut Lab, case: &Case, tag: &str, initiate: bool) -> Ours {
        let dir = lab.dir.join(format!("ours-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (ours, theirs) = subnets(case.multi);
        let cfg = format!(
            "[daemon]
control_socket = \"{d}/ctl.sock\"
state_file = \"{d}/state\"

[[connection]]
name = \"t\"
local_addr = \"198.18.0.1\"
remote_addr = \"198.18.0.2\"
local_subnets = [{ours}]
remote_subnets = [{theirs}]
psk = \"{PSK}\"
effect_immediately = {initiate}
dpd_interval = 3
dpd_timeout = 12

[connection.ike]
{ike}

[connection.ipsec]
{esp}
",
            d = dir.display(),
            ours = toml_list(ours),
            theirs = toml_list(theirs),
            ike = case.our_ike,
            esp = case.our_esp,
        );
        let cfg_path = dir.join("ipsec-control.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.join("daemon.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.a, BIN, "run", "--config"]).arg(&cfg_path);
        match &lab.engine {
            Some(e) => cmd.arg("--engine").arg(&e.socket),
            None => cmd.args(["--forwarder", &format!("{}t", lab.a)]),
        };
        let child = cmd
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("ipsec-control");
        lab.children.push(child);
        let o = Ours { dir };
        o.wait_log("connection(s)", Duration::from_secs(5)).expect("daemon started");
        o
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, t: Duration) -> Result<String, String> {
        self.wait_count(what, 1, t)
    }

    /// Waits until `what` appears `n` times; returns the log.
    fn wait_count(&self, what: &str, n: usize, t: Duration) -> Result<String, String> {
        let deadline = Instant::now() + t;
        loop {
            let l = self.log();
            if l.matches(what).count() >= n {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(format!("no {what:?} (x{n}) in our log within {t:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (spi_in, spi_out) of the last Child SA our daemon installed.
    fn last_child(&self) -> Option<(String, String)> {
        let l = self.log();
        let line = l.lines().rev().find(|l| l.contains("CHILD_SA installed"))?;
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
        Some((field("spi_in=")?, field("spi_out=")?))
    }

    /// (spi_in, spi_out) of the one Child SA our daemon holds (installed and not deleted).
    fn live_child(&self) -> Result<(String, String), String> {
        let mut live: Vec<(String, String)> = Vec::new();
        for line in self.log().lines() {
            let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
            let (Some(i), Some(o)) = (field("spi_in="), field("spi_out=")) else {
                continue;
            };
            if line.contains("CHILD_SA installed") {
                live.push((i, o));
            } else if line.contains("CHILD_SA deleted") {
                live.retain(|x| x.0 != i);
            }
        }
        match live.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(format!("we hold {} Child SAs: {live:?}", live.len())),
        }
    }

    /// (SPIi, SPIr) of our current IKE SA, from the last "established" or "rekeyed" line.
    fn ike_spis(&self) -> Option<(String, String)> {
        let l = self.log();
        let line = l.lines().rev().find(|l| l.contains("IKE_SA established") || l.contains("IKE_SA rekeyed"))?;
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
        Some((field("spi_i=")?, field("spi_r=")?))
    }

    /// Checks the state file: mode 0600, lists the SA, no PSK.
    fn check_state_file(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.join("state");
        let m = std::fs::metadata(&p).map_err(|e| format!("state file: {e}"))?.permissions().mode() & 0o777;
        let s = std::fs::read_to_string(&p).unwrap_or_default();
        if m != 0o600 || s.contains(PSK) || !s.contains("spi_in=") {
            return Err(format!("state file mode {m:o} or content wrong: {s}"));
        }
        Ok(())
    }

    fn ctl(&self, cmd: &str) -> Output {
        run(BIN, &[cmd, "t", "--socket", self.dir.join("ctl.sock").to_str().unwrap()])
    }
}

fn ping(lab: &Lab, src: &str, dst: &str, count: u32, interval: &str) -> (u32, u32, String) {
    let o =
        lab.ns(&lab.src, &["ping", "-n", "-q", "-c", &count.to_string(), "-i", interval, "-W", "1", "-I", src, dst]);
    let t = text(&o);
    let stats = t.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
    let nums: Vec<u32> = stats.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0), t)
}

/// Waits until charon lists the Child SA INSTALLED with our SPIs (its inbound = our outbound).
fn swan_has(charon: &Charon, ours: &Ours) -> Result<(), String> {
    let (spi_in, spi_out) = ours.live_child()?;
    let (ike_i, ike_r) = ours.ike_spis().ok_or("no IKE SPIs in our log")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = charon.list_sas();
        let installed =
            l.contains("INSTALLED") && l.contains(&format!("{ike_i}_i")) && l.contains(&format!("{ike_r}_r"));
        let ins = l.contains(&format!("in  {spi_out}"));
        let outs = l.contains(&format!("out {spi_in}"));
        if installed && ins && outs && l.contains("ESTABLISHED") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "swanctl --list-sas lacks our SPIs (IKE {ike_i}_i {ike_r}_r, ESP in {spi_out} / out {spi_in}):\n{l}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Every IKE message on port 4500 (non-ESP marker).
    All,
    /// IKE responses only (R flag).
    Responses,
}

/// Drops IKE messages on port 4500 in both directions in charon's netns (`None`: stops
/// dropping). Not in ours: the engine's XDP program takes IKE before any netfilter hook.
fn block_ike(lab: &Lab, how: Option<Block>) {
    let _ = lab.ns(&lab.b, &["nft", "delete", "table", "inet", "ipt"]);
    let Some(how) = how else {
        return;
    };
    lab.ns_ok(&lab.b, &["nft", "add", "table", "inet", "ipt"]);
    // UDP payload: the 4-octet zero marker at bit 64, the IKE flags octet at 8 + 4 + 19.
    let rule = match how {
        Block::All => "udp dport 4500 @th,64,32 0 drop",
        Block::Responses => "udp dport 4500 @th,64,32 0 @th,248,8 & 0x20 == 0x20 drop",
    };
    for hook in ["input", "output"] {
        let chain = format!("{{ type filter hook {hook} priority 0; }}");
        lab.ns_ok(&lab.b, &["nft", "add", "chain", "inet", "ipt", hook, &chain]);
        lab.ns_ok(&lab.b, &["nft", "add", "rule", "inet", "ipt", hook, rule]);
    }
}

/// Waits until charon has exactly one IKE SA and one Child SA (no redundant SA left over).
fn swan_single(charon: &Charon) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let l = charon.list_sas();
        if l.matches("ESTABLISHED").count() == 1 && l.matches("INSTALLED").count() == 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("charon does not settle on one IKE SA and one Child SA:\n{l}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One cell: bring up, compare SPIs, ping. Returns Ok(detail) or Err(reason).
fn cell(lab: &mut Lab, case: &Case, we_initiate: bool, idx: usize) -> Result<String, String> {
    let tag = format!("{idx}-{}", if we_initiate { "init" } else { "resp" });
    let charon = start_charon(lab, case, &tag);
    let ours = Ours::start(lab, case, &tag, we_initiate);
    let r = (|| {
        if !we_initiate {
            let o = charon.swanctl(&["--initiate", "--child", "t", "--timeout", "10"]);
            if !o.status.success() {
                return Err(format!("swanctl --initiate failed: {}", text(&o)));
            }
        }
        ours.wait_log("IKE_SA established", Duration::from_secs(10))?;
        ours.wait_log("CHILD_SA installed", Duration::from_secs(5))?;
        swan_has(&charon, &ours)?;
        ours.check_state_file()?;
        let (spi_in, spi_out) = ours.last_child().ok_or("no SPIs in our log")?;
        let mut detail = format!("esp spi in/out {spi_in}/{spi_out}");
        let pairs: &[(&str, &str)] = if case.multi {
            &[("192.0.2.1", "198.51.100.1"), ("192.0.2.129", "198.51.100.129"), ("192.0.2.1", "198.51.100.129")]
        } else {
            &[("192.0.2.1", "198.51.100.1")]
        };
        for (s, d) in pairs {
            let (tx, rx, out) = ping(lab, s, d, 3, "0.2");
            if rx == 0 {
                return Err(format!("ping {s} -> {d}: {tx} sent, 0 received\n{out}"));
            }
            let _ = write!(detail, ", ping {s}->{d} {rx}/{tx}");
        }
        if let Some(e) = &lab.engine {
            let (i, o) = e.wait_traffic(&spi_in, &spi_out)?;
            let _ = write!(detail, ", engine SA packets in/out {i}/{o}");
            if e.afpacket {
                // The inside socket filter follows the tunnels: traffic to the gateway itself (no
                // tunnel) never reaches the engine.
                std::thread::sleep(Duration::from_millis(1100));
                let before = e.inside_rx().ok_or("no inside rx counter in the engine's stats")?;
                let (tx, rx, out) = ping(lab, "192.0.2.1", "192.0.2.254", 3, "0.2");
                if rx != tx || tx == 0 {
                    return Err(format!("ping of the gateway's inside address failed:\n{out}"));
                }
                std::thread::sleep(Duration::from_millis(2100));
                let after = e.inside_rx().ok_or("no inside rx counter")?;
                if after != before {
                    return Err(format!("the engine received {} frames not for a tunnel", after - before));
                }
                let _ = write!(detail, ", inside filter: no frame for the gateway itself");
            }
        }
        if case.rekey {
            let o = charon.swanctl(&["--rekey", "--child", "t"]);
            if !o.status.success() {
                return Err(format!("swanctl --rekey: {}", text(&o)));
            }
            ours.wait_count("CHILD_SA installed", 2, Duration::from_secs(5))?;
            ours.wait_log("CHILD_SA deleted", Duration::from_secs(5))?;
            swan_has(&charon, &ours)?;
            let log = charon.log();
            let with_ke =
                |l: &&str| l.contains("generating CREATE_CHILD_SA request") && l.contains("N(REKEY_SA) SA No KE");
            if !log.lines().any(|l| with_ke(&l)) {
                return Err("charon's rekey request carried no KE payload (no PFS)".into());
            }
            let (tx, rx, out) = ping(lab, "192.0.2.1", "198.51.100.1", 3, "0.2");
            if rx == 0 {
                return Err(format!("ping after the PFS rekey: {tx} sent, 0 received\n{out}"));
            }
            let (i, o) = ours.last_child().unwrap_or_default();
            let _ = write!(detail, ", PFS rekey (KE) -> {i}/{o}, ping {rx}/{tx}");
            if let Some(e) = &lab.engine {
                let (pi, po) = e.wait_traffic(&i, &o)?;
                let _ = write!(detail, " (engine {pi}/{po})");
            }
        }
        // Graceful stop: SIGTERM makes our daemon delete its IKE SA; charon must drop it.
        let pid = lab.children.last().map(Child::id).ok_or("no daemon")?;
        let _ = run("kill", &["-TERM", &pid.to_string()]);
        ours.wait_log("exiting", Duration::from_secs(5))?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while charon.list_sas().contains("ESTABLISHED") {
            if Instant::now() > deadline {
                return Err(format!("charon kept the SA after our SIGTERM:\n{}", charon.list_sas()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        detail.push_str(", SIGTERM -> DELETE, charon SA gone");
        Ok(detail)
    })();
    charon.kill("-TERM");
    let log = ours.log();
    // Stop our daemon (the most recent child but one is charon; kill ours explicitly).
    lab.stop_cell();
    if log.contains(PSK) {
        return Err("the PSK appears in our log".into());
    }
    r.map_err(|e| {
        format!(
            "{e}\n--- our log (tail) ---\n{}\n--- charon log (tail) ---\n{}",
            tail(&log, 40),
            tail(&charon.log(), 40)
        )
    })
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Rekeys (charon's and ours) under a running ping, then DPD after killing charon.
fn rekeys_and_dpd(lab: &mut Lab, we_initiate: bool) -> Vec<(String, Result<String, String>)> {
    let role = if we_initiate { "we initiated" } else { "charon initiated" };
    let case = Case {
        name: "rekey",
        swan_ike: "aes256-sha256-modp2048",
        swan_esp: "aes256-sha256-modp2048",
        our_ike: "enc = \"aes256\"\nauth = \"sha256\"\ndh_group = 14",
        our_esp: "enc = \"aes256\"\nauth = \"sha256\"\npfs_group = 14",
        multi: false,
        rekey: false,
    };
    let mut results = Vec::new();
    let tag = format!("rekey-{we_initiate}");
    let charon = start_charon(lab, &case, &tag);
    let ours = Ours::start(lab, &case, &tag, we_initiate);
    if !we_initiate {
        let o = charon.swanctl(&["--initiate", "--child", "t", "--timeout", "10"]);
        if !o.status.success() {
            results.push((format!("setup ({role})"), Err(format!("swanctl --initiate: {}", text(&o)))));
            return results;
        }
    }
    if let Err(e) = ours.wait_log("CHILD_SA installed", Duration::from_secs(10)) {
        results.push(("setup".into(), Err(format!("{e}\n{}\n{}", tail(&ours.log(), 30), tail(&charon.log(), 30)))));
        return results;
    }
    type Action<'a> = Box<dyn Fn() -> Output + 'a>;
    // A rekey collision (RFC 7296 §2.8.1/§2.8.2), made deterministic with nftables in netns a:
    // all IKE messages on 4500 are dropped while both ends send their CREATE_CHILD_SA request;
    // then only responses are dropped, so both retransmitted requests arrive while both ends have
    // theirs outstanding; then everything passes and the nonces decide.
    let collide = |swan: &'static str, ctl: &'static str| -> Action<'_> {
        let (charon, ours, lab) = (&charon, &ours, &*lab);
        Box::new(move || {
            block_ike(lab, Some(Block::All));
            let o = ours.ctl(ctl);
            let o2 = charon.swanctl(&["--rekey", swan, "t"]);
            std::thread::sleep(Duration::from_millis(300));
            block_ike(lab, Some(Block::Responses));
            std::thread::sleep(Duration::from_millis(2000));
            block_ike(lab, None);
            if o.status.success() {
                o2
            } else {
                o
            }
        })
    };
    // charon rekeys, our response is lost, and we rekey the SA we just created before charon has
    // it: charon answers CHILD_SA_NOT_FOUND (Child SA) or ignores the unknown IKE SPIs (IKE SA)
    // until its retransmission gets our response.
    let after_lost = |swan: &'static str, ctl: &'static str, marker: &'static str| -> Action<'_> {
        let (charon, ours, lab) = (&charon, &ours, &*lab);
        Box::new(move || {
            block_ike(lab, Some(Block::Responses));
            let before = ours.log().matches(marker).count();
            let o2 = charon.swanctl(&["--rekey", swan, "t"]);
            let _ = ours.wait_count(marker, before + 1, Duration::from_secs(3));
            let o = ours.ctl(ctl);
            std::thread::sleep(Duration::from_millis(1500));
            block_ike(lab, None);
            if o.status.success() {
                o2
            } else {
                o
            }
        })
    };
    const CHILD: &str = "CHILD_SA installed";
    const IKE: &str = "IKE_SA rekeyed";
    // (name, action, marker, how many new markers, whether charon must end with exactly one SA)
    let steps: [(&str, Action<'_>, &str, usize, bool); 8] = [
        ("child rekey by charon", Box::new(|| charon.swanctl(&["--rekey", "--child", "t"])), CHILD, 1, true),
        ("IKE rekey by charon", Box::new(|| charon.swanctl(&["--rekey", "--ike", "t"])), IKE, 1, true),
        ("child rekey by us", Box::new(|| ours.ctl("rekey-child")), CHILD, 1, true),
        ("IKE rekey by us", Box::new(|| ours.ctl("rekey-ike")), IKE, 1, true),
        ("child rekey collision", collide("--child", "rekey-child"), CHILD, 2, true),
        ("IKE rekey collision", collide("--ike", "rekey-ike"), IKE, 1, true),
        ("IKE rekey after lost response", after_lost("--ike", "rekey-ike", IKE), IKE, 2, true),
        // charon answers CHILD_SA_NOT_FOUND and we recreate the Child SA (RFC 7296 §2.25); charon
        // keeps the SA it did not have yet as a stale extra one (it would expire at its lifetime),
        // so this step comes last and has no single-SA check.
        ("child rekey after lost response", after_lost("--child", "rekey-child", CHILD), CHILD, 2, false),
    ];
    let only_step = std::env::var("INTEROP_STEP").ok();
    for (name, action, marker, n, single) in steps {
        if only_step.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let before = ours.log().matches(marker).count();
        let lab_ref: &Lab = lab;
        let r = std::thread::scope(|s| {
            let pinger = s.spawn(|| ping(lab_ref, "192.0.2.1", "198.51.100.1", 40, "0.1"));
            std::thread::sleep(Duration::from_millis(500));
            let o = action();
            let done = ours.wait_count(marker, before + n, Duration::from_secs(15));
            let (tx, rx, out) = pinger.join().unwrap();
            if !o.status.success() {
                return Err(format!("command failed: {}", text(&o)));
            }
            done?;
            if single {
                swan_single(&charon)?;
            }
            if name == "child rekey after lost response"
                && !charon.log().contains("unable to rekey, CHILD_SA not found")
            {
                return Err("charon never answered CHILD_SA_NOT_FOUND: the scenario did not happen".into());
            }
            swan_has(&charon, &ours)?;
            let lost = tx.saturating_sub(rx);
            let (spi_in, spi_out) = ours.live_child()?;
            let mut d = format!("ping {rx}/{tx} (lost {lost}), child now {spi_in}/{spi_out}");
            if let Some(e) = &lab_ref.engine {
                // The survivor must be what the engine forwards on (a short ping after the step).
                let _ = ping(lab_ref, "192.0.2.1", "198.51.100.1", 2, "0.2");
                let (pi, po) = e.wait_traffic(&spi_in, &spi_out)?;
                let _ = write!(d, ", engine {pi}/{po}");
            }
            if tx == 0 || lost > 1 {
                Err(format!("{d}\n{out}"))
            } else {
                Ok(d)
            }
        });
        results.push((
            format!("{name} ({role})"),
            r.map_err(|e| format!("{e}\n{}\n{}", tail(&ours.log(), 30), tail(&charon.log(), 30))),
        ));
    }
    // DPD: kill charon without a DELETE.
    let before = ours.log().matches("CHILD_SA deleted").count();
    charon.kill("-KILL");
    let t0 = Instant::now();
    let live = ours.live_child();
    let r = ours.wait_log("peer dead", Duration::from_secs(30)).and_then(|l| {
        let dead = t0.elapsed().as_secs_f64();
        if l.matches("CHILD_SA deleted").count() <= before {
            return Err("peer dead but the Child SA was not removed".into());
        }
        match (&lab.engine, live) {
            (None, _) if l.contains("forwarder: deleted") => {
                Ok(format!("peer declared dead after {dead:.1} s, SAs removed from the forwarder"))
            }
            (None, _) => Err("peer dead but the forwarder kept the SA".into()),
            (Some(e), Ok((i, o))) => {
                e.wait_gone(&i)?;
                e.wait_gone(&o)?;
                Ok(format!("peer declared dead after {dead:.1} s, SAs {i}/{o} removed from the engine"))
            }
            (Some(_), Err(e)) => Err(format!("before the kill: {e}")),
        }
    });
    results
        .push((format!("DPD after kill -9 charon ({role})"), r.map_err(|e| format!("{e}\n{}", tail(&ours.log(), 30)))));
    let log = ours.log();
    if log.contains(PSK) {
        results.push(("PSK redaction".into(), Err("the PSK appears in our log".into())));
    }
    lab.stop_cell();
    results
}

#[test]
fn interop_strongswan() {
    matrix(Plane::Forwarder);
}

#[test]
fn interop_strongswan_engine() {
    matrix(Plane::Engine);
}

/// Two cases, both roles, on the engine's AF_PACKET backend: its inside socket filter must follow
/// the tunnels the channel installs (no rekey steps: the data path is the same as AF_XDP's).
#[test]
fn interop_strongswan_engine_afpacket() {
    matrix(Plane::EnginePacket);
}

fn matrix(plane: Plane) {
    let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let name = match plane {
        Plane::Forwarder => "interop_strongswan",
        Plane::Engine => "interop_strongswan_engine",
        Plane::EnginePacket => "interop_strongswan_engine_afpacket",
    };
    if !is_root() {
        if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("IPSEC_REQUIRE_ROOT_TESTS=1 but not running as root");
        }
        eprintln!("SKIPPED: {name} needs root (set IPSEC_REQUIRE_ROOT_TESTS=1 to make this a failure)");
        return;
    }
    if plane.is_engine() && engine_binary().is_none() {
        if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("{name}: no ipsec-engine with --control-socket next to ipsec-control (cargo build -p ipsec-engine)");
        }
        eprintln!("SKIPPED: {name}: no ipsec-engine next to ipsec-control (cargo build -p ipsec-engine)");
        return;
    }
    ensure_strongswan();
    let started = Instant::now();
    let mut lab = Lab::new(plane);
    let only = std::env::var("INTEROP_ONLY").ok();
    let mut report = format!("\ninterop matrix (ipsec-control vs strongSwan charon, data plane: {plane:?}):\n");
    let mut failures = 0;
    for (i, case) in CASES.iter().enumerate() {
        if only.as_deref().is_some_and(|o| !case.name.contains(o)) {
            continue;
        }
        if plane == Plane::EnginePacket && !(case.name.starts_with("aes128-sha1") || case.multi) {
            continue;
        }
        for we_initiate in [true, false] {
            let role = if we_initiate { "we initiate" } else { "we respond " };
            let r = cell(&mut lab, case, we_initiate, i);
            match &r {
                Ok(d) => {
                    let _ = writeln!(report, "  PASS {:<40} {role}  {d}", case.name);
                }
                Err(e) => {
                    failures += 1;
                    let _ = writeln!(report, "  FAIL {:<40} {role}  {}", case.name, e.lines().next().unwrap_or(""));
                    eprintln!("=== {} ({role}) failed:\n{e}", case.name);
                }
            }
        }
    }
    if plane != Plane::EnginePacket && (only.is_none() || only.as_deref() == Some("rekey")) {
        let all: Vec<_> = [true, false].into_iter().flat_map(|we| rekeys_and_dpd(&mut lab, we)).collect();
        for (name, r) in all {
            match &r {
                Ok(d) => {
                    let _ = writeln!(report, "  PASS {name:<50} {d}");
                }
                Err(e) => {
                    failures += 1;
                    let _ = writeln!(report, "  FAIL {name:<50} {}", e.lines().next().unwrap_or(""));
                    eprintln!("=== {name} failed:\n{e}");
                }
            }
        }
    }
    let _ = writeln!(report, "total {:.1} s", started.elapsed().as_secs_f64());
    eprintln!("{report}");
    lab.keep = failures > 0 || std::env::var_os("INTEROP_KEEP").is_some();
    assert_eq!(failures, 0, "{report}");
}
