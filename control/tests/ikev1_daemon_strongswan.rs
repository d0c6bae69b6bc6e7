//! Our daemon (`ipsec-control run`) negotiating IKEv1 with strongSwan 5.9 (charon +
//! kernel-libipsec) in network namespaces, with traffic. Needs root; without it prints SKIPPED
//! and passes, unless `IPSEC_REQUIRE_ROOT_TESTS=1` (then it fails). strongSwan is installed with
//! apt if missing.
//!
//! The cells: {main, aggressive} mode × {we initiate, charon initiates} on the userspace ESP
//! forwarder (`run --forwarder`), and the same four cells through the AF_XDP engine (`run
//! --engine`; skipped when no `ipsec-engine` binary with `--control-socket` sits next to ours).
//! In each: the ISAKMP SA and the IPsec SA come up, `swanctl --list-sas` shows the IKEv1 SA with
//! our cookies and the IPsec SA INSTALLED with our SPIs, a ping from 192.0.2.1 to 198.51.100.1
//! crosses the tunnel (through the engine: also counted on the negotiated SPIs), SIGTERM makes our
//! daemon send its DELETEs and charon drops the SA; the PSK never appears in our log. On both
//! data planes also: reauthentication at 90 % of a 10 s ISAKMP lifetime under a running ping (at
//! most one lost packet, charon ends with only the new SAs), and charon killed → our DPD declares
//! it dead, removes the SAs and schedules a re-initiation.
//!
//! ```text
//!  netns <p>a: ipsec-control (--forwarder)          netns <p>b: charon (libipsec, TUN ipsec0)
//!  lo 192.0.2.1                                     lo 198.51.100.1
//!  <p>va 198.18.0.1/24  ------------ veth ------------  <p>vb 198.18.0.2/24
//!
//!  engine plane: netns <p>h (eth0 192.0.2.1/24) -- <p>vi 192.0.2.254 (engine inside) in <p>a
//! ```
//!
//! Knob: `INTEROP_KEEP=1` keeps logs and configs in the temporary directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{ensure_strongswan, text, Charon};

const PSK: &str = "ikev1-daemon-psk-3b9d0c51";
const BIN: &str = env!("CARGO_BIN_EXE_ipsec-control");

/// The two tests take turns (they share the machine's two cores).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// The `ipsec-engine` binary of the same build, if it has the control channel.
fn engine_binary() -> Option<PathBuf> {
    let p = Path::new(BIN).with_file_name("ipsec-engine");
    let out = Command::new(&p).args(["run", "--help"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).contains("--control-socket").then_some(p)
}

/// The namespaces, the processes and the temporary directory; torn down on drop (also when a
/// test panics).
struct Lab {
    a: String,
    b: String,
    /// Where pings start: `a` (forwarder) or the host behind the engine.
    src: String,
    namespaces: Vec<String>,
    dir: PathBuf,
    children: Vec<Child>,
    /// The engine's control socket and stdout (engine plane).
    engine: Option<(PathBuf, PathBuf)>,
}

impl Lab {
    fn new(engine: bool) -> Lab {
        let p = format!("i1d{}{}", std::process::id() % 100_000, if engine { "e" } else { "f" });
        let dir = std::env::temp_dir().join(format!("{p}-ikev1d"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, h) = (format!("{p}a"), format!("{p}b"), format!("{p}h"));
        let src = if engine { h.clone() } else { a.clone() };
        let mut lab = Lab { a, b, src, namespaces: Vec::new(), dir, children: Vec::new(), engine: None };
        let (va, vb, vi) = (format!("{p}va"), format!("{p}vb"), format!("{p}vi"));
        let mut nss = vec![lab.a.clone(), lab.b.clone()];
        if engine {
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
        let a_inner: &[&str] = if engine { &[] } else { &["192.0.2.1/32"] };
        for (ns, dev, addr, inner) in
            [(&lab.a, &va, "198.18.0.1/24", a_inner), (&lab.b, &vb, "198.18.0.2/24", &["198.51.100.1/32"][..])]
        {
            lab.ns_ok(ns, &["ip", "addr", "add", addr, "dev", dev]);
            lab.ns_ok(ns, &["ip", "link", "set", dev, "up"]);
            for i in inner {
                lab.ns_ok(ns, &["ip", "addr", "add", i, "dev", "lo"]);
            }
        }
        if engine {
            ok("ip", &["link", "add", &vi, "netns", &lab.a, "type", "veth", "peer", "name", "eth0", "netns", &h]);
            lab.ns_ok(&lab.a, &["ip", "addr", "add", "192.0.2.254/24", "dev", &vi]);
            lab.ns_ok(&lab.a, &["ip", "link", "set", &vi, "up"]);
            lab.ns_ok(&h, &["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"]);
            lab.ns_ok(&h, &["ip", "link", "set", "eth0", "up"]);
            lab.ns_ok(&h, &["ip", "route", "add", "default", "via", "192.0.2.254"]);
            // The engine forwards frames as they are: every sender fills its checksums itself.
            for (ns, dev) in [(&h, "eth0"), (&lab.a, vi.as_str()), (&lab.a, va.as_str()), (&lab.b, vb.as_str())] {
                lab.ns_ok(ns, &["ethtool", "-K", dev, "tx", "off"]);
            }
            lab.ns_ok(&lab.a, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
            lab.start_engine(&va, &vi);
        }
        lab
    }

    fn start_engine(&mut self, outside: &str, inside: &str) {
        let exe = engine_binary().expect("ipsec-engine with --control-socket");
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
                   "--neigh-interval-ms", "200", "--stats-interval", "1"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(self.dir.join("engine.err")).unwrap())
            .spawn()
            .expect("ipsec-engine");
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            let err = std::fs::read_to_string(self.dir.join("engine.err")).unwrap_or_default();
            assert!(Instant::now() < deadline, "the engine did not open its control socket:\n{err}");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.engine = Some((socket, out));
    }

    /// `(packets in, packets out)` of the SAs with these SPIs in the engine's last stats block.
    fn engine_packets(&self, spi_in: &str, spi_out: &str) -> Option<(u64, u64)> {
        let out = std::fs::read_to_string(&self.engine.as_ref()?.1).unwrap_or_default();
        let block = &out[out.rfind("stats:\n")?..];
        let block: Vec<&str> = block.lines().skip(1).take_while(|l| l.starts_with(' ')).collect();
        let packets = |dir: &str, spi: &str| {
            let spi = format!("spi 0x{}", spi.to_ascii_lowercase());
            block.iter().find(|l| l.contains(&format!(" {dir} ")) && l.contains(&spi)).and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter().position(|x| *x == "packets").and_then(|i| w.get(i + 1)?.parse::<u64>().ok())
            })
        };
        Some((packets("in", spi_in)?, packets("out", spi_out)?))
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
        if std::env::var("INTEROP_KEEP").is_ok() || std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn swanctl_conf(aggressive: bool) -> String {
    format!(
        "connections {{
  t {{
    version = 1
    aggressive = {agg}
    local_addrs = 198.18.0.2
    remote_addrs = 198.18.0.1
    proposals = aes256-sha256-modp2048
    rekey_time = 0
    reauth_time = 0
    local {{
      auth = psk
      id = 198.18.0.2
    }}
    remote {{
      auth = psk
      id = 198.18.0.1
    }}
    children {{
      t {{
        local_ts = 198.51.100.0/24
        remote_ts = 192.0.2.0/24
        esp_proposals = aes128-sha256-modp2048
        rekey_time = 0
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-t {{
    id-a = 198.18.0.1
    id-b = 198.18.0.2
    secret = \"{PSK}\"
  }}
}}
",
        agg = if aggressive { "yes" } else { "no" },
    )
}

/// Our daemon in netns a.
struct Ours {
    dir: PathBuf,
}

impl Ours {
    fn start(lab: &mut Lab, tag: &str, aggressive: bool, initiate: bool) -> Ours {
        Ours::start_with(lab, tag, aggressive, initiate, "dpd_interval = 5\ndpd_timeout = 15", "")
    }

    /// With `conn` (DPD settings) and `ike` (more `[connection.ike]` lines).
    fn start_with(lab: &mut Lab, tag: &str, aggressive: bool, initiate: bool, conn: &str, ike: &str) -> Ours {
        let dir = lab.dir.join(format!("ours-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!(
            "[daemon]
control_socket = \"{d}/ctl.sock\"
state_file = \"{d}/state\"

[[connection]]
name = \"t\"
local_addr = \"198.18.0.1\"
remote_addr = \"198.18.0.2\"
local_subnets = [\"192.0.2.0/24\"]
remote_subnets = [\"198.51.100.0/24\"]
psk = \"{PSK}\"
ike_version = 1
effect_immediately = {initiate}
{conn}

[connection.ike]
mode = \"{mode}\"
enc = \"aes256\"
auth = \"sha256\"
dh_group = 14
{ike}

[connection.ipsec]
enc = \"aes\"
auth = \"sha256\"
pfs_group = 14
",
            d = dir.display(),
            mode = if aggressive { "aggressive" } else { "main" },
        );
        let cfg_path = dir.join("ipsec-control.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.a, BIN, "run", "--config"]).arg(&cfg_path);
        match &lab.engine {
            Some((socket, _)) => cmd.arg("--engine").arg(socket),
            None => cmd.args(["--forwarder", &format!("{}t", lab.a)]),
        };
        let child = cmd
            .arg("--log")
            .arg(dir.join("daemon.log"))
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

    /// `key=` value of the last log line containing `what`.
    fn field(&self, what: &str, key: &str) -> Option<String> {
        let l = self.log();
        let line = l.lines().rev().find(|l| l.contains(what))?;
        line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_string)
    }
}

fn ping(lab: &Lab) -> (u32, u32, String) {
    let args = ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", "192.0.2.1", "198.51.100.1"];
    let t = text(&lab.ns(&lab.src, &args));
    let stats = t.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
    let nums: Vec<u32> = stats.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0), t)
}

/// One cell: up, SPIs in charon's list, ping, SIGTERM → DELETE.
fn cell(lab: &mut Lab, aggressive: bool, we_initiate: bool) -> Result<String, String> {
    let tag = format!("{}-{}", if aggressive { "aggr" } else { "main" }, if we_initiate { "init" } else { "resp" });
    let extra = "charon {\n  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n}\n";
    let charon = Charon::start_with(
        &lab.b,
        lab.dir.join(format!("charon-{tag}")),
        &swanctl_conf(aggressive),
        ipsec_control::lab::CHARON_LOG_LEVELS,
        extra,
    );
    let ours = Ours::start(lab, &tag, aggressive, we_initiate);
    let r = (|| {
        if !we_initiate {
            let o = charon.swanctl(&["--initiate", "--child", "t", "--timeout", "10"]);
            if !o.status.success() {
                return Err(format!("swanctl --initiate failed: {}", text(&o)));
            }
        }
        ours.wait_log("ISAKMP SA established", Duration::from_secs(10))?;
        ours.wait_log("CHILD_SA installed", Duration::from_secs(5))?;
        let ci = ours.field("ISAKMP SA established", "spi_i=").ok_or("no cookies in our log")?;
        let cr = ours.field("ISAKMP SA established", "spi_r=").ok_or("no cookies in our log")?;
        let spi_in = ours.field("CHILD_SA installed", "spi_in=").ok_or("no SPIs in our log")?;
        let spi_out = ours.field("CHILD_SA installed", "spi_out=").ok_or("no SPIs in our log")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let l = charon.list_sas();
            let good = l.contains("IKEv1")
                && l.contains("ESTABLISHED")
                && l.contains(&format!("{ci}_i"))
                && l.contains(&format!("{cr}_r"))
                && l.contains("INSTALLED")
                && l.contains(&format!("in  {spi_out}"))
                && l.contains(&format!("out {spi_in}"));
            if good {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "swanctl --list-sas lacks our cookies {ci}/{cr} or SPIs in {spi_out} / out {spi_in}:\n{l}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut detail = format!("cookies {ci}/{cr}, esp spi in/out {spi_in}/{spi_out}");
        let (tx, rx, out) = ping(lab);
        if rx == 0 {
            return Err(format!("ping 192.0.2.1 -> 198.51.100.1: {tx} sent, 0 received\n{out}"));
        }
        let _ = write!(detail, ", ping {rx}/{tx}");
        if lab.engine.is_some() {
            let deadline = Instant::now() + Duration::from_secs(4);
            loop {
                match lab.engine_packets(&spi_in, &spi_out) {
                    Some((i, o)) if i > 0 && o > 0 => {
                        let _ = write!(detail, ", engine SA packets in/out {i}/{o}");
                        break;
                    }
                    last if Instant::now() > deadline => {
                        return Err(format!("the engine's counters show no traffic on our SPIs: {last:?}"));
                    }
                    _ => std::thread::sleep(Duration::from_millis(250)),
                }
            }
        }
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

/// Main mode, we initiate with a 10 s ISAKMP lifetime: at 9 s we reauthenticate (new ISAKMP SA
/// and IPsec SA, then DELETE of the old ones) under a running ping (at most one packet lost);
/// charon ends with one ISAKMP SA, the new one.
fn reauth(lab: &mut Lab) -> Result<String, String> {
    let extra = "charon {\n  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n}\n";
    let charon = Charon::start_with(
        &lab.b,
        lab.dir.join("charon-reauth"),
        &swanctl_conf(false),
        ipsec_control::lab::CHARON_LOG_LEVELS,
        extra,
    );
    let ours = Ours::start_with(lab, "reauth", false, true, "dpd_interval = 5\ndpd_timeout = 15", "lifetime = 10");
    let r = (|| {
        ours.wait_log("CHILD_SA installed", Duration::from_secs(10))?;
        let ci = ours.field("ISAKMP SA established", "spi_i=").ok_or("no cookies in our log")?;
        let mut args = vec!["netns", "exec", &lab.src];
        args.extend(["ping", "-n", "-q", "-c", "44", "-i", "0.25", "-W", "1", "-I", "192.0.2.1", "198.51.100.1"]);
        let pinger = Command::new("ip").args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let pinger = pinger.map_err(|e| format!("ping: {e}"))?;
        ours.wait_log("IKEv1 reauthenticated: closing the old", Duration::from_secs(15))?;
        ours.wait_count("CHILD_SA deleted", 1, Duration::from_secs(3))?;
        let out = pinger.wait_with_output().map_err(|e| e.to_string())?;
        let t = text(&out);
        let stats = t.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
        let nums: Vec<u32> = stats.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
        let (tx, rx) = (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0));
        if tx == 0 || rx + 1 < tx {
            return Err(format!("ping across the reauthentication: {rx}/{tx}\n{t}"));
        }
        let ci2 = ours.field("ISAKMP SA established", "spi_i=").ok_or("no cookies in our log")?;
        if ci2 == ci {
            return Err("no new ISAKMP SA".into());
        }
        let (spi_in, spi_out) = (
            ours.field("CHILD_SA installed", "spi_in=").unwrap_or_default(),
            ours.field("CHILD_SA installed", "spi_out=").unwrap_or_default(),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let l = charon.list_sas();
            let one = l.matches("ESTABLISHED").count() == 1 && l.matches("INSTALLED").count() == 1;
            if one && l.contains(&format!("{ci2}_i")) && l.contains(&format!("out {spi_in}")) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("charon does not hold just the new SAs ({ci2}, out {spi_in}):\n{l}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(format!("reauthenticated {ci} -> {ci2} (esp {spi_in}/{spi_out}), ping {rx}/{tx} across it"))
    })();
    charon.kill("-TERM");
    let log = ours.log();
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

/// Main mode, we respond (charon initiates): charon is killed, our DPD (2 s / 6 s) declares it
/// dead, removes the SAs, and (our connection has an address to initiate to) schedules a
/// re-initiation.
fn dpd(lab: &mut Lab) -> Result<String, String> {
    let charon =
        Charon::start(&lab.b, lab.dir.join("charon-dpd"), &swanctl_conf(false), ipsec_control::lab::CHARON_LOG_LEVELS);
    let ours = Ours::start_with(lab, "dpd", false, false, "dpd_interval = 2\ndpd_timeout = 6", "");
    let r = (|| {
        let o = charon.swanctl(&["--initiate", "--child", "t", "--timeout", "10"]);
        if !o.status.success() {
            return Err(format!("swanctl --initiate failed: {}", text(&o)));
        }
        ours.wait_log("CHILD_SA installed", Duration::from_secs(10))?;
        charon.kill("-KILL");
        let t0 = Instant::now();
        ours.wait_log("peer dead (DPD)", Duration::from_secs(15))?;
        let dead = t0.elapsed().as_secs_f32();
        ours.wait_log("CHILD_SA deleted", Duration::from_secs(1))?;
        ours.wait_log("re-initiating in", Duration::from_secs(2))?;
        Ok(format!("charon killed -> peer dead after {dead:.1} s, IPsec SA removed, re-initiation scheduled"))
    })();
    let log = ours.log();
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

fn skip(name: &str) -> bool {
    if is_root() {
        return false;
    }
    if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("IPSEC_REQUIRE_ROOT_TESTS=1 but not running as root");
    }
    eprintln!("SKIPPED: {name} needs root (set IPSEC_REQUIRE_ROOT_TESTS=1 to make this a failure)");
    true
}

fn matrix(engine: bool, modes: &[bool]) {
    let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    ensure_strongswan();
    let started = Instant::now();
    let mut lab = Lab::new(engine);
    let mut report = format!("\nIKEv1 daemon vs charon ({}):\n", if engine { "engine" } else { "forwarder" });
    let mut failures = 0;
    for &aggressive in modes {
        for we_initiate in [true, false] {
            let t = Instant::now();
            let r = cell(&mut lab, aggressive, we_initiate);
            let mode = if aggressive { "aggressive" } else { "main      " };
            let role = if we_initiate { "we initiate" } else { "we respond " };
            let secs = t.elapsed().as_secs_f32();
            match &r {
                Ok(d) => {
                    let _ = writeln!(report, "  PASS  {mode} {role} ({secs:.1} s): {d}");
                }
                Err(e) => {
                    failures += 1;
                    let _ = writeln!(report, "  FAIL  {mode} {role} ({secs:.1} s): {e}");
                }
            }
        }
    }
    {
        type Extra = fn(&mut Lab) -> Result<String, String>;
        let extras: [(&str, Extra); 2] = [("reauth main we initiate", reauth), ("DPD    main we respond ", dpd)];
        for (name, f) in extras {
            let t = Instant::now();
            let r = f(&mut lab);
            let secs = t.elapsed().as_secs_f32();
            match &r {
                Ok(d) => {
                    let _ = writeln!(report, "  PASS  {name} ({secs:.1} s): {d}");
                }
                Err(e) => {
                    failures += 1;
                    let _ = writeln!(report, "  FAIL  {name} ({secs:.1} s): {e}");
                }
            }
        }
    }
    let _ = writeln!(report, "{failures} failure(s), {:.0} s", started.elapsed().as_secs_f32());
    eprintln!("{report}");
    assert_eq!(failures, 0, "{report}");
}

#[test]
fn ikev1_daemon_strongswan() {
    if skip("ikev1_daemon_strongswan") {
        return;
    }
    matrix(false, &[false, true]);
}

#[test]
fn ikev1_daemon_strongswan_engine() {
    if skip("ikev1_daemon_strongswan_engine") {
        return;
    }
    if engine_binary().is_none() {
        if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("no ipsec-engine with --control-socket next to ipsec-control (cargo build -p ipsec-engine)");
        }
        eprintln!("SKIPPED: ikev1_daemon_strongswan_engine: no ipsec-engine next to ipsec-control");
        return;
    }
    matrix(true, &[false, true]);
}
