//! The namespace topology of `perf-lab xdp` and the gateway processes that run in it.
//!
//! ```text
//!  gen: a0 192.0.2.2 ── g1i 192.0.2.1 [gw-1] g1o 198.18.0.1 ── g2o 198.18.0.2 [gw-2] g2i 198.51.100.1 ── b0 198.51.100.2 :snk
//! ```
//!
//! Four namespaces `px<pid>{gen,g1,g2,snk}` joined by single-queue veth pairs (so one worker per
//! engine), MTU 1600 everywhere (IMIX's 1518-byte packets and ESP overhead fit), IPv6 off. Every
//! name carries the process id, so parallel runs cannot collide; [`Topology`] deletes its
//! namespaces on drop (also on panic), and [`remove_stale`] deletes those of runs that died.
//! Gateways are child processes ([`Gateway`]): `ipsec-engine run` or strongSwan's charon, stopped
//! on drop.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const SINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const GW1_OUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GW2_OUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const GEN_NET: &str = "192.0.2.0/24";
pub const SINK_NET: &str = "198.51.100.0/24";
const PREFIX: &str = "px";
const NAMESPACES: [&str; 4] = ["gen", "g1", "g2", "snk"];

/// Runs a command; `Err` carries its stderr.
pub fn run(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("running {args:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why this machine cannot run the topology (not root, no `ip`, no namespaces), if it cannot.
pub fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, XDP, AF_XDP)".into());
    }
    if run(&["ip", "-V"]).is_err() {
        return Some("needs iproute2 (ip)".into());
    }
    if run(&["ethtool", "--version"]).is_err() {
        return Some("needs ethtool".into());
    }
    let probe = format!("{PREFIX}{}p", std::process::id());
    match run(&["ip", "netns", "add", &probe]) {
        Ok(_) => {
            let _ = run(&["ip", "netns", "del", &probe]);
            None
        }
        Err(e) => Some(format!("cannot make network namespaces: {e}")),
    }
}

/// Deletes namespaces `px<pid><suffix>` and directories `$TMPDIR/perf-lab-px<pid>` (they hold
/// keys) whose process is gone (runs that were killed).
pub fn remove_stale() {
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("perf-lab-px") else { continue };
            if !pid.is_empty()
                && pid.chars().all(|c| c.is_ascii_digit())
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || !NAMESPACES.contains(&&rest[pid.len()..]) {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", &name]);
        }
    }
}

/// The four namespaces, their links and a private directory for configurations and logs.
pub struct Topology {
    p: String,
    created: Vec<String>,
    pub dir: PathBuf,
}

impl Topology {
    /// The namespace `gen`, `g1`, `g2` or `snk` of this run.
    pub fn ns(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    /// A device name of this run (`a0`, `g1i`, `g1o`, `g2o`, `g2i`, `b0`).
    pub fn dev(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    pub fn new() -> Result<Topology, String> {
        let p = format!("{PREFIX}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("perf-lab-{p}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut t = Topology { p, created: Vec::new(), dir };
        for s in NAMESPACES {
            let ns = t.ns(s);
            run(&["ip", "netns", "add", &ns])?;
            t.created.push(ns.clone());
            for knob in ["all", "default"] {
                t.sysctl(s, &format!("net.ipv6.conf.{knob}.disable_ipv6=1"))?;
            }
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        for (na, da, nb, db) in [("gen", "a0", "g1", "g1i"), ("g1", "g1o", "g2", "g2o"), ("g2", "g2i", "snk", "b0")] {
            #[rustfmt::skip]
            run(&["ip", "-n", &t.ns(na), "link", "add", &t.dev(da), "mtu", "1600", "type", "veth",
                  "peer", "name", &t.dev(db), "mtu", "1600", "netns", &t.ns(nb)])?;
        }
        for (ns, dev, addr) in [
            ("gen", "a0", "192.0.2.2/24"),
            ("g1", "g1i", "192.0.2.1/24"),
            ("g1", "g1o", "198.18.0.1/24"),
            ("g2", "g2o", "198.18.0.2/24"),
            ("g2", "g2i", "198.51.100.1/24"),
            ("snk", "b0", "198.51.100.2/24"),
        ] {
            run(&["ip", "-n", &t.ns(ns), "addr", "add", addr, "dev", &t.dev(dev)])?;
            run(&["ip", "-n", &t.ns(ns), "link", "set", &t.dev(dev), "up"])?;
        }
        run(&["ip", "-n", &t.ns("gen"), "route", "add", "default", "via", "192.0.2.1"])?;
        run(&["ip", "-n", &t.ns("snk"), "route", "add", "default", "via", "198.51.100.1"])?;
        // veth leaves UDP checksums to "hardware" (CHECKSUM_PARTIAL) and the engine forwards
        // frames as they are: the generator fills its checksums in software.
        for (ns, dev) in [("gen", "a0"), ("snk", "b0")] {
            run(&["ip", "netns", "exec", &t.ns(ns), "ethtool", "-K", &t.dev(dev), "tx", "off"])?;
        }
        Ok(t)
    }

    pub fn sysctl(&self, ns: &str, setting: &str) -> Result<(), String> {
        run(&["ip", "netns", "exec", &self.ns(ns), "sysctl", "-qw", setting]).map(|_| ())
    }

    /// Writes a file only the owner can read (configurations hold keys).
    pub fn write_private(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = run(&["ip", "netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Moves the calling thread into network namespace `ns` (by name).
pub fn enter(ns: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: `file` is an open namespace file; setns changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A gateway process (engine or charon), stopped with SIGTERM (then SIGKILL) on drop.
pub struct Gateway {
    pub name: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Gateway {
    /// Starts `args` in namespace `ns` with stdout and stderr going to files in the topology's
    /// directory.
    pub fn spawn(t: &Topology, ns: &str, name: &str, args: &[&str]) -> Result<Gateway, String> {
        let out = t.dir.join(format!("{name}.out"));
        let err = t.dir.join(format!("{name}.err"));
        let file = |p: &Path| File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &t.ns(ns)]).args(args);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
        // async-signal-safe. The gateway gets SIGTERM when perf-lab dies (killed, Ctrl-C), so it
        // stops and detaches its XDP programs; the signal setting survives the execs of `ip`,
        // `unshare` and `sh`.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file(&out)?)
            .stderr(file(&err)?)
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        Ok(Gateway { name: name.into(), child: Some(child), out, err })
    }

    /// Waits until `ready()` holds, failing when the process exits first or after `limit`.
    pub fn wait_until(&mut self, limit: Duration, mut ready: impl FnMut(&Gateway) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("{} exited at start ({status}):\n{}", self.name, self.logs()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not start within {limit:?}:\n{}", self.name, self.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout\n{}\n--- {} stderr\n{}",
            self.name,
            self.stdout(),
            self.name,
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Stops the process (SIGTERM, SIGKILL after 10 s) and returns its stdout.
    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid (`ip netns exec`, `unshare` and `sh -c exec`
            // all exec, so the pid is the gateway's own).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
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
        self.stdout()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` random bytes from the kernel (keys and PSKs of this run; never printed).
pub fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    let mut f = File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    std::io::Read::read_exact(&mut f, &mut buf).map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
