//! `ipsec-control lab`: the one-command demonstration. It builds a complete lab on this machine —
//! four network namespaces, our VPN gateway (`ipsec-control serve` with the management store and
//! API, and the data plane), a strongSwan customer gateway — drives it through the management API
//! like a customer would, waits for the tunnel, pings across it, prints `DescribeVpnConnection`
//! and the traffic counters, and removes everything again.
//!
//! ```text
//!  root netns: the lab (API client) ── veth lab<pid>m 198.19.x.y+1/30 ──┐
//!                                                          mgmt 198.19.x.y+2/30 (API :8470)
//!  lab<pid>-a            lab<pid>-gw                      lab<pid>-cgw                  lab<pid>-b
//!  host-a                our gateway                      strongSwan (charon, libipsec) host-b
//!  eth0 192.0.2.10 ── inside 192.0.2.1                    inside 198.51.100.1 ──────── eth0 198.51.100.10
//!                     outside 198.18.0.1 ─────────────── outside 198.18.0.2
//! ```
//!
//! # Contract
//!
//! * **Needs root** and the tools `.ci/lab-deps.sh` installs (iproute2, ping, ethtool, strongSwan's
//!   charon with kernel-libipsec, swanctl). The gateway programs are the binaries next to the
//!   running `ipsec-control` (`ipsec-engine` for `--gateway engine`); a missing one is an error
//!   that names the `cargo build` command.
//! * **Gateway modes** ([`GatewayMode`]): `forwarder` runs `ipsec-control serve --forwarder TUN`
//!   (the userspace ESP forwarder of the interop tests: kernel routing + TUN); `engine` runs the
//!   AF_XDP engine (`ipsec-engine run --control-socket`) with `ipsec-control serve --engine` (IKE
//!   punted through the engine, Child SAs published to it).
//! * **Through the API only**: CreateVpnGateway (PublicIp 198.18.0.1), CreateCustomerGateway
//!   (198.18.0.2), CreateVpnConnection (IKEv2, 192.0.2.0/24 ↔ 198.51.100.0/24, EffectImmediately,
//!   a PSK generated from the OS's random source), DownloadVpnConnectionConfig (`swanctl`) loaded
//!   unchanged into charon. The PSK is never printed; the files holding it live in a 0700
//!   temporary directory.
//! * **Bounded**: every wait has a deadline (the tunnel: [`LabOptions::tunnel_timeout`]) and checks
//!   the interrupt flag; SIGINT/SIGTERM stop the lab at the next check.
//! * **Clean**: a guard ([`Lab`]) stops the processes (SIGTERM, then SIGKILL after 5 s), deletes the
//!   namespaces (and with them every veth) and the temporary directory on success, on error and on
//!   Ctrl-C. Child processes run in their own process group, so a terminal's Ctrl-C reaches the lab
//!   only and the teardown happens in order. `--keep` waits for Ctrl-C before tearing down.
//! * Leftovers of labs killed with SIGKILL (their pid no longer runs) are removed at start.
//! * Exit status: success when the tunnel came up and at least one ping crossed it.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// strongSwan's IKE daemon (Debian's path).
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// The name of our control process in the lab's messages.
const SERVE: &str = "ipsec-control serve";
/// The name of the engine process in the lab's messages.
const ENGINE: &str = "ipsec-engine";
/// The management API's port inside the gateway namespace.
pub const API_PORT: u16 = 8470;

/// Our gateway's outside address (the VPN gateway's PublicIp).
pub const GW_OUTSIDE: &str = "198.18.0.1";
/// The customer gateway's outside address (its IpAddress).
pub const CGW_OUTSIDE: &str = "198.18.0.2";
/// host-a, behind our gateway.
pub const HOST_A: &str = "192.0.2.10";
/// host-b, behind the customer gateway.
pub const HOST_B: &str = "198.51.100.10";
/// Our side's protected subnet.
pub const LOCAL_SUBNET: &str = "192.0.2.0/24";
/// The customer's protected subnet.
pub const REMOTE_SUBNET: &str = "198.51.100.0/24";

/// How our gateway forwards ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayMode {
    /// `ipsec-control serve --forwarder TUN`: the userspace ESP forwarder (interop tests' data plane).
    Forwarder,
    /// `ipsec-engine run --control-socket` + `ipsec-control serve --engine`: the AF_XDP engine.
    Engine,
}

impl std::str::FromStr for GatewayMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "forwarder" => Ok(GatewayMode::Forwarder),
            "engine" => Ok(GatewayMode::Engine),
            _ => Err(format!("--gateway {s}: expected engine or forwarder")),
        }
    }
}

impl GatewayMode {
    fn name(self) -> &'static str {
        match self {
            GatewayMode::Forwarder => "forwarder",
            GatewayMode::Engine => "engine",
        }
    }
}

/// What `ipsec-control lab` does; see the module documentation.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub gateway: GatewayMode,
    /// Leave the lab running until SIGINT/SIGTERM after the demonstration.
    pub keep: bool,
    /// How long to wait for the IPsec SA.
    pub tunnel_timeout: Duration,
    /// Pings from host-a to host-b.
    pub pings: u32,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions { gateway: GatewayMode::Engine, keep: false, tunnel_timeout: Duration::from_secs(60), pings: 5 }
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs a command to completion.
///
/// # Errors
/// It could not be started or exited unsuccessfully (its output is in the message).
pub fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(text(&o))
    } else {
        Err(format!("{cmd} {}: {}: {}", args.join(" "), o.status, text(&o).trim()))
    }
}

/// `ip netns exec NS args…`.
///
/// # Errors
/// As [`sh`].
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut v = vec!["netns", "exec", ns];
    v.extend_from_slice(args);
    sh("ip", &v)
}

/// charon's log levels in the lab and the interop tests (strongswan.conf `filelog` syntax).
pub const CHARON_LOG_LEVELS: &str = "ike = 2\n      cfg = 2";

/// A strongswan.conf for one charon living in `dir` (own VICI socket, log file `dir/charon.log`
/// with `default = 1` and `log_levels`, e.g. [`CHARON_LOG_LEVELS`]; kernel-libipsec before
/// kernel-netlink); see `/work/shared/interop/strongswan.md`.
#[must_use]
pub fn strongswan_conf(dir: &Path, log_levels: &str) -> String {
    let d = dir.display();
    format!(
        "charon {{
  load = random nonce openssl aes des sha1 sha2 md5 hmac gcm pem pkcs1 x509 pubkey gmp kdf kernel-libipsec kernel-netlink socket-default vici updown
  retransmit_timeout = 1
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
  }}
  filelog {{
    log {{
      path = {d}/charon.log
      time_format = %T
      default = 1
      {log_levels}
      flush_line = yes
      ike_name = yes
    }}
  }}
}}
swanctl {{
  socket = unix://{d}/charon.vici
}}
"
    )
}

/// Prepares `dir` for a charon (`run/`, `swanctl/swanctl.conf` = `swanctl_conf`, strongswan.conf)
/// and returns the command starting it in namespace `ns` with a private `/run` (its pid is
/// charon's own); it logs with [`CHARON_LOG_LEVELS`].
///
/// # Errors
/// Writing the files.
pub fn charon_command(ns: &str, dir: &Path, swanctl_conf: &str) -> Result<Command, String> {
    charon_command_logging(ns, dir, swanctl_conf, CHARON_LOG_LEVELS)
}

/// [`charon_command`] with other log levels (e.g. `"ike = 4\n chd = 4"` to make charon dump its
/// keys).
///
/// # Errors
/// Writing the files.
pub fn charon_command_logging(ns: &str, dir: &Path, swanctl_conf: &str, log_levels: &str) -> Result<Command, String> {
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir.join("run")).map_err(io)?;
    std::fs::create_dir_all(dir.join("swanctl")).map_err(io)?;
    std::fs::write(dir.join("strongswan.conf"), strongswan_conf(dir, log_levels)).map_err(io)?;
    let conf = dir.join("swanctl/swanctl.conf");
    std::fs::write(&conf, swanctl_conf).map_err(io)?;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let d = dir.display();
    let script = format!("mount --bind {d}/run /run && export STRONGSWAN_CONF={d}/strongswan.conf && exec {CHARON}");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c", &script]);
    Ok(c)
}

/// `swanctl ARGS` against the charon of `dir`.
///
/// # Errors
/// swanctl could not be started.
pub fn swanctl(dir: &Path, args: &[&str]) -> Result<Output, String> {
    Command::new("swanctl")
        .env("STRONGSWAN_CONF", dir.join("strongswan.conf"))
        .env("SWANCTL_DIR", dir.join("swanctl"))
        .args(args)
        .output()
        .map_err(|e| format!("swanctl: {e}"))
}

/// One child process of the lab, with its log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// The lab's namespaces, management link, processes and temporary directory; dropping it tears
/// everything down (processes first, then the namespaces, then the directory).
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    stop: Arc<AtomicBool>,
    /// The management API as reached from the root namespace.
    api: String,
}

fn step(n: u32, msg: &str) {
    println!("lab: [{n}/6] {msg}");
    let _ = std::io::stdout().flush();
}

impl Lab {
    /// The namespace `lab<pid>-<role>`.
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn interrupted(&self) -> Result<(), String> {
        if self.stop.load(Ordering::Relaxed) {
            Err("interrupted".into())
        } else {
            Ok(())
        }
    }

    /// Sleeps `d` unless interrupted.
    fn sleep(&self, d: Duration) -> Result<(), String> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.interrupted()?;
            std::thread::sleep(Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())));
        }
        self.interrupted()
    }

    /// Polls `f` every 200 ms until it succeeds, `secs` pass or the lab is interrupted.
    fn wait_for<T>(&mut self, secs: u64, what: &str, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            self.interrupted()?;
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("timed out after {secs} s waiting for {what}: {e}"))
                }
                Err(_) => self.sleep(Duration::from_millis(200))?,
            }
            self.check_procs()?;
        }
    }

    /// Fails when one of the lab's processes has exited.
    fn check_procs(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(format!("{} exited ({st}); its log:\n{}", p.name, tail(&p.log, 20)));
            }
        }
        Ok(())
    }

    /// Starts `cmd` in its own process group, output to `DIR/<name>.log`.
    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> Result<(), String> {
        let log = self.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    fn tail_of(&self, name: &str, n: usize) -> String {
        self.procs.iter().find(|p| p.name == name).map(|p| tail(&p.log, n)).unwrap_or_default()
    }
}

fn terminate(c: &mut Child) {
    if let Ok(None) = c.try_wait() {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).output();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
    }
    let _ = c.wait();
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Our control process first (it sends DELETEs while the data plane and charon still run),
        // then the rest in start order.
        self.procs.sort_by_key(|p| p.name != SERVE);
        for p in &mut self.procs {
            terminate(&mut p.child);
        }
        self.procs.clear();
        // Deleting a namespace deletes its veth ends, and with them their peers (also the
        // management link's end in the root namespace).
        for ns in &self.namespaces {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        let _ = sh("ip", &["link", "del", &format!("{}m", self.prefix)]);
        let _ = std::fs::remove_dir_all(&self.dir);
        println!(
            "lab: cleaned up (processes stopped, namespaces {}-* and {} removed)",
            self.prefix,
            self.dir.display()
        );
    }
}

/// The checks before anything is created: root, tools, our binaries.
fn preflight(o: &LabOptions, bin_dir: &Path) -> Result<(), String> {
    let uid = sh("id", &["-u"])?;
    if uid.trim() != "0" {
        return Err("the lab needs root (network namespaces, veth, XDP): run it with sudo".into());
    }
    let deps = "run `bash .ci/lab-deps.sh` (as root) to install the lab's dependencies";
    let mut tools = vec![("ip", "iproute2"), ("ping", "iputils-ping"), ("swanctl", "strongswan-swanctl")];
    if o.gateway == GatewayMode::Engine {
        tools.push(("ethtool", "ethtool"));
    }
    for (tool, pkg) in tools {
        if sh("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Err(format!("`{tool}` not found (Debian package {pkg}): {deps}"));
        }
    }
    if !Path::new(CHARON).exists() {
        return Err(format!("{CHARON} not found (Debian package strongswan-charon): {deps}"));
    }
    let plugin = "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so";
    if !Path::new(plugin).exists() {
        return Err(format!("{plugin} not found (Debian package libcharon-extra-plugins): {deps}"));
    }
    if o.gateway == GatewayMode::Engine && !bin_dir.join("ipsec-engine").exists() {
        return Err(format!(
            "{} not found next to ipsec-control: build it with `cargo build --release -p ipsec-engine -p ipsec-control` \
             (or use --gateway forwarder)",
            bin_dir.join("ipsec-engine").display()
        ));
    }
    Ok(())
}

/// Removes what labs killed with SIGKILL left behind: `lab<pid>-{a,gw,cgw,b}` namespaces, the
/// `lab<pid>m` link and the temporary directory of every `<pid>` that no longer runs.
fn remove_stale() {
    let Ok(list) = sh("ip", &["netns", "list"]) else { return };
    let mut dead: Vec<u32> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.strip_prefix("lab"))
        .filter_map(|n| n.split_once('-'))
        .filter(|(_, role)| ["a", "gw", "cgw", "b"].contains(role))
        .filter_map(|(pid, _)| pid.parse::<u32>().ok())
        .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    dead.sort_unstable();
    dead.dedup();
    for pid in dead {
        println!("lab: removing the leftovers of lab{pid} (no longer running)");
        for role in ["a", "gw", "cgw", "b"] {
            let _ = sh("ip", &["netns", "del", &format!("lab{pid}-{role}")]);
        }
        let _ = sh("ip", &["link", "del", &format!("lab{pid}m")]);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("ipsec-lab{pid}")));
    }
}

/// A 32-hex-digit PSK from the OS's random source.
fn generate_psk() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("random source: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The management link's /30 in 198.19.0.0/16, from the pid (distinct labs get distinct links).
fn mgmt_net(pid: u32) -> (String, String) {
    let n = pid % 16384;
    let (third, fourth) = (n / 64, (n % 64) * 4);
    (format!("198.19.{third}.{}", fourth + 1), format!("198.19.{third}.{}", fourth + 2))
}

/// Step 1: the namespaces, links, addresses and routes.
fn topology(lab: &mut Lab, mode: GatewayMode) -> Result<(), String> {
    let (a, gw, cgw, b) = (lab.ns("a"), lab.ns("gw"), lab.ns("cgw"), lab.ns("b"));
    for ns in [&a, &gw, &cgw, &b] {
        sh("ip", &["netns", "add", ns])?;
        lab.namespaces.push(ns.clone());
        in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        for k in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
            in_ns(ns, &["sysctl", "-qw", k])?;
        }
    }
    // The customer gateway routes (charon's libipsec TUN); ours only in forwarder mode (its TUN).
    // The engine forwards by itself: the gateway's kernel must not route anything in clear.
    in_ns(&cgw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let fwd = if mode == GatewayMode::Forwarder { "net.ipv4.ip_forward=1" } else { "net.ipv4.ip_forward=0" };
    in_ns(&gw, &["sysctl", "-qw", fwd])?;
    // (namespace, device, address) pairs joined by veth.
    let links = [
        ((&a, "eth0", "192.0.2.10/24"), (&gw, "inside", "192.0.2.1/24")),
        ((&gw, "outside", "198.18.0.1/24"), (&cgw, "outside", "198.18.0.2/24")),
        ((&cgw, "inside", "198.51.100.1/24"), (&b, "eth0", "198.51.100.10/24")),
    ];
    for ((ns1, d1, a1), (ns2, d2, a2)) in links {
        sh("ip", &["link", "add", "name", d1, "netns", ns1, "type", "veth", "peer", "name", d2, "netns", ns2])?;
        for (ns, dev, addr) in [(ns1, d1, a1), (ns2, d2, a2)] {
            in_ns(ns, &["ip", "addr", "add", addr, "dev", dev])?;
            in_ns(ns, &["ip", "link", "set", dev, "up"])?;
            // veth leaves checksums to "hardware"; the engine forwards frames as they are.
            let r = in_ns(ns, &["ethtool", "-K", dev, "tx", "off"]);
            if mode == GatewayMode::Engine {
                r?;
            }
        }
    }
    in_ns(&a, &["ip", "route", "add", "default", "via", "192.0.2.1"])?;
    in_ns(&b, &["ip", "route", "add", "default", "via", "198.51.100.1"])?;
    // The management link: the lab (root namespace) ↔ the API in the gateway namespace.
    let (host, inner) = mgmt_net(std::process::id());
    let m = format!("{}m", lab.prefix);
    sh("ip", &["link", "add", "name", &m, "type", "veth", "peer", "name", "mgmt", "netns", &gw])?;
    sh("ip", &["addr", "add", &format!("{host}/30"), "dev", &m])?;
    sh("ip", &["link", "set", &m, "up"])?;
    in_ns(&gw, &["ip", "addr", "add", &format!("{inner}/30"), "dev", "mgmt"])?;
    in_ns(&gw, &["ip", "link", "set", "mgmt", "up"])?;
    lab.api = format!("http://{inner}:{API_PORT}");
    Ok(())
}

/// Step 2: our gateway in the `gw` namespace, in the chosen mode; returns once the API answers.
fn start_gateway(lab: &mut Lab, mode: GatewayMode, bin_dir: &Path) -> Result<String, String> {
    let gw = lab.ns("gw");
    let me = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let state = lab.dir.join("state");
    let listen = lab.api.trim_start_matches("http://").to_string();
    let mut serve = Command::new("ip");
    serve.args(["netns", "exec", &gw]).arg(&me).args(["serve", "--ike-listen", GW_OUTSIDE, "--listen", &listen]);
    serve.arg("--state-dir").arg(&state);
    match mode {
        GatewayMode::Forwarder => {
            serve.args(["--forwarder", "labtun"]);
        }
        GatewayMode::Engine => {
            // The data plane: no static tunnels, everything comes over the channel.
            let cfg = lab.dir.join("engine.toml");
            let toml = format!(
                "[gateway]\nlocal_addrs = [\"{GW_OUTSIDE}\"]\ninside_addrs = [\"192.0.2.1\"]\n\n\
                 [[interface]]\nname = \"outside\"\nrole = \"outside\"\n\n\
                 [[interface]]\nname = \"inside\"\nrole = \"inside\"\n"
            );
            std::fs::write(&cfg, toml).map_err(|e| format!("{}: {e}", cfg.display()))?;
            let socket = lab.dir.join("engine/engine.sock");
            let mut engine = Command::new("ip");
            engine.args(["netns", "exec", &gw]).arg(bin_dir.join("ipsec-engine")).args(["run", "--config"]).arg(&cfg);
            engine.args(["--no-pin", "--stats-interval", "1", "--control-socket"]).arg(&socket);
            lab.spawn(ENGINE, engine)?;
            lab.wait_for(20, "the engine's control socket", || {
                if socket.exists() {
                    Ok(())
                } else {
                    Err("not there yet".into())
                }
            })?;
            serve.arg("--engine").arg(&socket);
        }
    }
    lab.spawn(SERVE, serve)?;
    let token_file = state.join("api-token");
    let api = lab.api.clone();
    let token = lab.wait_for(15, "the management API", || {
        let token = ipsec_mgmt::http::read_token(&token_file).map_err(|e| e.to_string())?;
        ipsec_mgmt::client::call(&api, &token, "DescribeVpnGateways", &[])?;
        Ok(token)
    })?;
    Ok(token)
}

struct Api<'a> {
    endpoint: &'a str,
    token: &'a str,
}

impl Api<'_> {
    fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let (status, v) = ipsec_mgmt::client::call(self.endpoint, self.token, action, params)?;
        if status == 200 {
            Ok(v)
        } else {
            Err(format!("{action}: HTTP {status}: {} {}", v["Code"], v["Message"]))
        }
    }

    fn id(&self, action: &str, params: &[(&str, &str)], field: &str) -> Result<String, String> {
        let v = self.call(action, params)?;
        v[field].as_str().map(str::to_string).ok_or_else(|| format!("{action}: no {field} in the answer"))
    }
}

/// Removes every `Psk` member (defence in depth: Describe hides it already).
fn strip_psk(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("Psk");
            m.values_mut().for_each(strip_psk);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_psk),
        _ => {}
    }
}

/// The last `stats:` block the engine printed (up to the next line that is not indented).
fn last_stats_block(log: &str) -> Option<String> {
    let start = log.rfind("\nstats:\n").map(|i| i + 1).or_else(|| log.starts_with("stats:\n").then_some(0))?;
    let body: Vec<&str> =
        log[start..].lines().skip(1).take_while(|l| l.starts_with(' ') || l.starts_with('\t')).collect();
    Some(body.join("\n"))
}

/// `(transmitted, received)` from ping's summary.
/// Pings of [`BackgroundPing`], one every 100 ms: long enough to span the duplicate grace period.
const BACKGROUND_PINGS: u32 = 60;

/// A ping from host-a to host-b running while the lab does other things; killed if dropped.
struct BackgroundPing(Option<Child>);

impl BackgroundPing {
    fn start(ns: &str, count: u32) -> Result<Self, String> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.1", "-W", "2", HOST_B])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("ping: {e}"))?;
        Ok(BackgroundPing(Some(child)))
    }

    /// Waits for the ping to end: (sent, received).
    fn finish(mut self, lab: &Lab) -> Result<(u64, u64), String> {
        let mut child = self.0.take().ok_or("ping: already finished")?;
        let end = Instant::now() + Duration::from_secs(30);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > end || lab.interrupted().is_err() {
                terminate(&mut child);
                lab.interrupted()?;
                return Err("the background ping did not finish".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().map_err(|e| format!("ping: {e}"))?;
        ping_summary(&text(&out)).ok_or_else(|| format!("ping: {}", text(&out)))
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// strongSwan's SAs (`swanctl --list-sas`): (IKE SAs, of them ESTABLISHED, CHILD SAs INSTALLED).
fn strongswan_sas(cdir: &Path) -> Result<(usize, usize, usize), String> {
    let o = swanctl(cdir, &["--list-sas"])?;
    if !o.status.success() {
        return Err(format!("swanctl --list-sas: {}", text(&o)));
    }
    Ok(count_sas(&String::from_utf8_lossy(&o.stdout)))
}

/// Counts `swanctl --list-sas` output: IKE SAs are the unindented `name: #n, STATE, ...` lines,
/// CHILD SAs the indented ones.
fn count_sas(out: &str) -> (usize, usize, usize) {
    let sa = |l: &&str| l.split_once(": #").is_some_and(|(name, _)| !name.trim().contains(' '));
    let ike: Vec<&str> = out.lines().filter(sa).filter(|l| !l.starts_with(char::is_whitespace)).collect();
    let established = ike.iter().filter(|l| l.contains(", ESTABLISHED, ")).count();
    let children =
        out.lines().filter(sa).filter(|l| l.starts_with(char::is_whitespace) && l.contains(", INSTALLED, ")).count();
    (ike.len(), established, children)
}

fn ping_summary(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    Some((*nums.first()?, *nums.get(1)?))
}

/// Runs the lab; see the module documentation. `stop` is set by SIGINT/SIGTERM.
///
/// # Errors
/// A missing dependency, a step that failed or timed out, no ping crossing the tunnel, or an
/// interruption. Everything is torn down before this returns.
pub fn run(o: &LabOptions, stop: Arc<AtomicBool>) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let bin_dir = me.parent().ok_or("own executable has no directory")?.to_path_buf();
    preflight(o, &bin_dir)?;
    remove_stale();
    let pid = std::process::id();
    let prefix = format!("lab{pid}");
    let dir = std::env::temp_dir().join(format!("ipsec-{prefix}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut lab = Lab { prefix, dir, namespaces: Vec::new(), procs: Vec::new(), stop, api: String::new() };

    topology(&mut lab, o.gateway)?;
    step(
        1,
        &format!(
            "topology: namespaces {p}-a (host-a {HOST_A}) | {p}-gw (our gateway 192.0.2.1, {GW_OUTSIDE}) | \
             {p}-cgw (strongSwan {CGW_OUTSIDE}, 198.51.100.1) | {p}-b (host-b {HOST_B})",
            p = lab.prefix
        ),
    );

    let token = start_gateway(&mut lab, o.gateway, &bin_dir)?;
    let api_url = lab.api.clone();
    step(
        2,
        &format!(
            "our gateway ({} mode): ipsec-control serve in {}, management API {api_url}",
            o.gateway.name(),
            lab.ns("gw")
        ),
    );

    let api = Api { endpoint: &api_url, token: &token };
    let gw = api.id("CreateVpnGateway", &[("PublicIp", GW_OUTSIDE), ("Name", "lab-gateway")], "VpnGatewayId")?;
    let cgw =
        api.id("CreateCustomerGateway", &[("IpAddress", CGW_OUTSIDE), ("Name", "lab-customer")], "CustomerGatewayId")?;
    let psk = generate_psk()?;
    let started = Instant::now();
    let ike = format!(
        r#"{{"IkeVersion":"ikev2","Psk":"{psk}","IkeEncAlg":"aes256","IkeAuthAlg":"sha256","IkePfs":"group14","IkeLifetime":3600}}"#
    );
    let id = api.id(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw),
            ("Name", "lab-connection"),
            ("LocalSubnet", LOCAL_SUBNET),
            ("RemoteSubnet", REMOTE_SUBNET),
            ("EffectImmediately", "true"),
            ("IkeConfig", &ike),
            (
                "IpsecConfig",
                r#"{"IpsecEncAlg":"aes256","IpsecAuthAlg":"sha256","IpsecPfs":"group14","IpsecLifetime":1800}"#,
            ),
        ],
        "VpnConnectionId",
    )?;
    drop(ike);
    drop(psk);
    let conf = api.call("DownloadVpnConnectionConfig", &[("VpnConnectionId", &id), ("Format", "swanctl")])?
        ["SwanctlConf"]
        .as_str()
        .ok_or("DownloadVpnConnectionConfig: no SwanctlConf")?
        .to_string();
    let cdir = lab.dir.join("charon");
    let charon = charon_command(&lab.ns("cgw"), &cdir, &conf)?;
    drop(conf);
    lab.spawn("charon", charon)?;
    lab.wait_for(10, "charon's VICI socket", || {
        if cdir.join("charon.vici").exists() {
            Ok(())
        } else {
            Err("not there yet".into())
        }
    })?;
    let o_load = swanctl(&cdir, &["--load-all", "--noprompt"])?;
    if !o_load.status.success() {
        return Err(format!("swanctl --load-all of the downloaded swanctl.conf failed: {}", text(&o_load)));
    }
    step(
        3,
        &format!(
            "API: CreateVpnGateway {gw}, CreateCustomerGateway {cgw}, CreateVpnConnection {id} (IKEv2, generated PSK); \
             DownloadVpnConnectionConfig loaded into strongSwan"
        ),
    );

    let describe = |api: &Api| api.call("DescribeVpnConnection", &[("VpnConnectionId", &id)]);
    let r = lab.wait_for(o.tunnel_timeout.as_secs(), "the IPsec SA", || {
        let d = describe(&api)?;
        if d["Status"] == "ipsec_sa_established" {
            Ok(())
        } else {
            Err(format!("Status {}", d["Status"]))
        }
    });
    if let Err(e) = r {
        return Err(format!(
            "{e}\n--- our gateway's log (tail) ---\n{}\n--- charon's log (tail) ---\n{}",
            lab.tail_of(SERVE, 25),
            tail(&cdir.join("charon.log"), 25)
        ));
    }
    step(
        4,
        &format!(
            "tunnel established {:.1} s after CreateVpnConnection (IKE SA and IPsec SA)",
            started.elapsed().as_secs_f64()
        ),
    );

    // Both ends initiate (EffectImmediately here, `start_action = start` in charon), so two IKE
    // SAs may have come up; they converge on one within the duplicate grace period. A ping runs
    // across that, to show the data plane moves to the surviving Child SA without a gap.
    let across = BackgroundPing::start(&lab.ns("a"), BACKGROUND_PINGS)?;
    let up_at = Instant::now();

    let count = o.pings.max(1).to_string();
    let ping = Command::new("ip")
        .args(["netns", "exec", &lab.ns("a"), "ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "2", HOST_B])
        .output()
        .map_err(|e| format!("ping: {e}"))?;
    lab.interrupted()?;
    let (sent, received) = ping_summary(&text(&ping)).ok_or_else(|| format!("ping: {}", text(&ping)))?;
    let loss = (sent.saturating_sub(received) * 100).checked_div(sent).unwrap_or(100);
    step(5, &format!("ping host-a {HOST_A} -> host-b {HOST_B}: {sent} sent, {received} received, {loss}% loss"));

    let mut most = 0;
    let r = lab.wait_for(20, "strongSwan to keep exactly one IKE SA", || {
        let (ike, established, children) = strongswan_sas(&cdir)?;
        most = most.max(ike);
        if ike == 1 && established == 1 && children == 1 {
            Ok(())
        } else {
            Err(format!("{ike} IKE SAs ({established} ESTABLISHED), {children} CHILD SAs INSTALLED"))
        }
    });
    if let Err(e) = r {
        return Err(format!("{e}\n--- our gateway's log (tail) ---\n{}", lab.tail_of(SERVE, 25)));
    }
    let serve_log = lab.procs.iter().find(|p| p.name == SERVE).map(|p| p.log.clone());
    let serve_log = serve_log.and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
    for l in serve_log.lines().filter(|l| l.contains("duplicate IKE_SA")) {
        println!("lab: our gateway: {}", l.trim());
    }
    println!(
        "lab: strongSwan: 1 IKE SA established, 1 CHILD SA installed ({} s after the tunnel came up; {most} IKE SA(s) seen at most)",
        up_at.elapsed().as_secs()
    );
    let (sent, received) = across.finish(&lab)?;
    println!("lab: ping across the duplicates' resolution: {sent} sent, {received} received");

    // The counters catch up with the data plane within a status period (2 s). They sum the Child
    // SAs of every IKE SA of the connection (both sides may have initiated at once).
    let _ = lab.wait_for(4, "the traffic counters", || {
        let d = describe(&api)?;
        if d["PacketsOut"].as_u64().unwrap_or(0) >= received && d["PacketsIn"].as_u64().unwrap_or(0) >= received {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    let mut d = describe(&api)?;
    strip_psk(&mut d);
    step(6, "DescribeVpnConnection:");
    println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    println!(
        "lab: traffic counters (DescribeVpnConnection): out {} packets / {} bytes, in {} packets / {} bytes",
        n("PacketsOut"),
        n("BytesOut"),
        n("PacketsIn"),
        n("BytesIn")
    );

    if o.gateway == GatewayMode::Engine {
        // The engine prints its counters every second; the latest block is after the ping.
        lab.sleep(Duration::from_millis(1200))?;
        let log = lab.procs.iter().find(|p| p.name == ENGINE).map(|p| p.log.clone());
        let log = log.and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
        match last_stats_block(&log) {
            Some(b) => println!("lab: engine counters (ipsec-engine --stats-interval):\n{b}"),
            None => println!("lab: the engine printed no counters yet"),
        }
    }

    if o.keep {
        println!(
            "lab: --keep: the lab stays up until Ctrl-C. Try:\n  \
             ip netns exec {a} ping {HOST_B}\n  \
             VPNCTL_ENDPOINT={api_url} VPNCTL_TOKEN_FILE={tok} {vpnctl} DescribeVpnConnections\n  \
             VPNCTL_ENDPOINT={api_url} VPNCTL_TOKEN_FILE={tok} {vpnctl} DescribeVpnConnectionLogs --VpnConnectionId {id}\n  \
             (vpnctl: `cargo build --release -p ipsec-mgmt`)\n  \
             logs: {dir}",
            vpnctl = bin_dir.join("vpnctl").display(),
            a = lab.ns("a"),
            tok = lab.dir.join("state/api-token").display(),
            dir = lab.dir.display(),
        );
        while !lab.stop.load(Ordering::Relaxed) {
            if let Err(e) = lab.check_procs() {
                println!("lab: {e}");
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(lab);
    if received == 0 {
        return Err("no ping crossed the tunnel".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mgmt_links_are_distinct_30s_in_198_19() {
        assert_eq!(mgmt_net(0), ("198.19.0.1".into(), "198.19.0.2".into()));
        assert_eq!(mgmt_net(65), ("198.19.1.5".into(), "198.19.1.6".into()));
        assert_eq!(mgmt_net(16383), ("198.19.255.253".into(), "198.19.255.254".into()));
        assert_eq!(mgmt_net(16384), mgmt_net(0));
    }

    #[test]
    fn swanctl_list_sas_is_counted() {
        let out = "lab-connection: #1, ESTABLISHED, IKEv2, 1a2b3c4d5e6f7081_i 8172635445362718_r*\n  \
                   local  '198.18.0.2' @ 198.18.0.2[4500]\n  \
                   lab-child: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-256/HMAC_SHA2_256_128/MODP_2048\n    \
                   installed 3s ago, rekeying in 1599s, expires in 1977s\n\
                   lab-connection: #2, DELETING, IKEv2, 99aa_i* 77bb_r\n";
        assert_eq!(count_sas(out), (2, 1, 1));
        assert_eq!(count_sas(""), (0, 0, 0));
    }

    #[test]
    fn ping_summary_parses_iputils() {
        let out = "PING 198.51.100.10 (198.51.100.10) 56(84) bytes of data.\n\n--- 198.51.100.10 ping statistics ---\n\
                   5 packets transmitted, 4 received, 20% packet loss, time 810ms\n";
        assert_eq!(ping_summary(out), Some((5, 4)));
        assert_eq!(ping_summary("connect: Network is unreachable"), None);
    }

    #[test]
    fn last_stats_block_is_found() {
        let log = "ipsec-engine: running (1 workers)\nstats:\n  worker 0 rx 1\n  sa a\nINFO x\nstats:\n  worker 0 rx 9\nINFO y\n";
        assert_eq!(last_stats_block(log).as_deref(), Some("  worker 0 rx 9"));
        assert_eq!(last_stats_block("nothing"), None);
    }

    #[test]
    fn psk_is_stripped_everywhere() {
        let mut v = serde_json::json!({"IkeConfig": {"Psk": "x", "IkeVersion": "ikev2"}, "L": [{"Psk": "y"}]});
        strip_psk(&mut v);
        assert!(!v.to_string().contains("Psk"), "{v}");
    }

    #[test]
    fn generated_psks_differ() {
        let (a, b) = (generate_psk().unwrap(), generate_psk().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
