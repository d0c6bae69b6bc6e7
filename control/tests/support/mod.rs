//! Shared by the root tests that run strongSwan next to our daemon (`interop_strongswan`,
//! `keys_strongswan`): installing strongSwan, a site-to-site PSK connection for charon, and one
//! charon per namespace (`ipsec_control::lab::charon_command_logging`: own `/run`, VICI socket
//! and log), killed when dropped.
//!
//! The convention of these tests: charon is 198.18.0.2 (IKE ID the same), we are 198.18.0.1.

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CHARON: &str = ipsec_control::lab::CHARON;

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Installs strongSwan (and the tools the tests use) with apt when charon, swanctl or nft is
/// missing.
pub fn ensure_strongswan() {
    if Path::new(CHARON).exists() && Path::new("/usr/sbin/swanctl").exists() && Path::new("/usr/sbin/nft").exists() {
        return;
    }
    let o = Command::new("apt-get").arg("update").output().expect("apt-get update");
    assert!(o.status.success(), "apt-get update: {}", text(&o));
    let o = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "install",
            "-y",
            "strongswan-charon",
            "libcharon-extra-plugins",
            "strongswan-swanctl",
            "iputils-ping",
            "tcpdump",
            "nftables",
            "ethtool",
        ])
        .output()
        .expect("apt-get");
    assert!(o.status.success(), "apt-get install: {}", text(&o));
}

/// charon's swanctl.conf for connection `t` (IKE SA and Child SA): charon 198.18.0.2 ↔ us
/// 198.18.0.1, IKEv2, PSK `psk`, charon's selectors `local_ts` ↔ ours `remote_ts`, no rekeying
/// and no initiation of its own (`swanctl --initiate` does that).
pub fn psk_connection(ike: &str, esp: &str, local_ts: &[&str], remote_ts: &[&str], psk: &str) -> String {
    format!(
        "connections {{
  t {{
    version = 2
    local_addrs = 198.18.0.2
    remote_addrs = 198.18.0.1
    proposals = {ike}
    rekey_time = 0
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
        local_ts = {local}
        remote_ts = {remote}
        esp_proposals = {esp}
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
    secret = \"{psk}\"
  }}
}}
",
        local = local_ts.join(","),
        remote = remote_ts.join(","),
    )
}

/// One charon in a namespace, its files in `dir`; SIGKILLed on drop if still running.
pub struct Charon {
    pub dir: PathBuf,
    child: Child,
}

impl Charon {
    /// Starts charon in `ns` with `swanctl_conf` and `log_levels` (strongswan.conf `filelog`
    /// lines), waits for its VICI socket and loads the configuration.
    pub fn start(ns: &str, dir: PathBuf, swanctl_conf: &str, log_levels: &str) -> Charon {
        Charon::start_with(ns, dir, swanctl_conf, log_levels, "")
    }

    /// [`Charon::start`] with `extra` appended to strongswan.conf (sections merge, so
    /// `charon { i_dont_care_about_security_and_use_aggressive_mode_psk = yes }` adds a setting).
    pub fn start_with(ns: &str, dir: PathBuf, swanctl_conf: &str, log_levels: &str, extra: &str) -> Charon {
        let mut cmd = ipsec_control::lab::charon_command_logging(ns, &dir, swanctl_conf, log_levels)
            .unwrap_or_else(|e| panic!("charon files: {e}"));
        if !extra.is_empty() {
            let path = dir.join("strongswan.conf");
            let mut conf = std::fs::read_to_string(&path).expect("strongswan.conf");
            conf.push_str(extra);
            std::fs::write(&path, conf).expect("strongswan.conf");
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("charon");
        let c = Charon { dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.dir.join("charon.vici").exists() {
            assert!(Instant::now() < deadline, "charon did not open its VICI socket: {}", c.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = c.swanctl(&["--load-all", "--noprompt"]);
        assert!(o.status.success(), "swanctl --load-all: {}", text(&o));
        c
    }

    /// `swanctl ARGS` against this charon, as a command (to spawn it).
    pub fn swanctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("swanctl");
        c.env("STRONGSWAN_CONF", self.dir.join("strongswan.conf"))
            .env("SWANCTL_DIR", self.dir.join("swanctl"))
            .args(args);
        c
    }

    pub fn swanctl(&self, args: &[&str]) -> Output {
        self.swanctl_command(args).output().expect("swanctl")
    }

    pub fn list_sas(&self) -> String {
        text(&self.swanctl(&["--list-sas"]))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    /// Sends `signal` (`-TERM`, `-KILL`) to charon.
    pub fn kill(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).output();
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// charon's `label => N bytes @ ...` hex dumps (log levels `ike = 4`, `chd = 4`) for each label
/// found in `log`: the first dump of each label.
pub fn charon_dumps(log: &str, labels: &[&str]) -> std::collections::HashMap<String, Vec<u8>> {
    charon_dumps_all(log, labels)
        .into_iter()
        .filter_map(|(k, mut v)| (!v.is_empty()).then(|| (k, v.remove(0))))
        .collect()
}

/// Every dump of each label, in log order.
pub fn charon_dumps_all(log: &str, labels: &[&str]) -> std::collections::HashMap<String, Vec<Vec<u8>>> {
    let body = |line: &str| -> String {
        // "12:00:00 09[IKE] <t|1> rest": drop the time, thread/group and connection name.
        let rest = line.split_once("] ").map_or(line, |(_, r)| r);
        let rest = if rest.starts_with('<') { rest.split_once("> ").map_or(rest, |(_, r)| r) } else { rest };
        rest.to_string()
    };
    let mut out: std::collections::HashMap<String, Vec<Vec<u8>>> = std::collections::HashMap::new();
    let lines: Vec<&str> = log.lines().collect();
    for label in labels {
        let head = format!("{label} => ");
        for (pos, l) in lines.iter().enumerate() {
            let b = body(l);
            if !b.starts_with(&head) {
                continue;
            }
            let Some(n) = b[head.len()..].split_whitespace().next().and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            let mut bytes = Vec::new();
            for l in &lines[pos + 1..] {
                if bytes.len() >= n {
                    break;
                }
                let b = body(l);
                let Some((off, rest)) = b.trim_start().split_once(": ") else {
                    break;
                };
                if off.parse::<usize>() != Ok(bytes.len()) {
                    break;
                }
                let hexpart = rest.split("  ").next().unwrap_or("");
                for t in hexpart.split_whitespace() {
                    bytes.push(u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("bad hex {t:?} in {l:?}")));
                }
            }
            assert_eq!(bytes.len(), n, "{label}: dump of {n} bytes not parsed");
            out.entry((*label).to_string()).or_default().push(bytes);
        }
    }
    out
}

fn ok(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {}: {}", args.join(" "), text(&o));
}

/// Two namespaces joined by a veth pair: `<p>a` (us, `<p>va` 198.18.0.1/24, 192.0.2.1 on lo) and
/// `<p>b` (charon, `<p>vb` 198.18.0.2/24, 198.51.100.1 on lo), with `<p>` = `prefix` + pid +
/// `tag`, and a temporary directory. Dropping it kills `children`, deletes the namespaces and
/// the directory — which may hold key dumps, so it is kept only when a test panics and
/// `keep_env` is set.
pub struct PairLab {
    pub a: String,
    pub b: String,
    pub dir: PathBuf,
    pub children: Vec<Child>,
    keep_env: &'static str,
}

impl PairLab {
    pub fn new(prefix: &str, tag: &str, keep_env: &'static str) -> PairLab {
        let p = format!("{prefix}{}{tag}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("{p}-files"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = PairLab { a: format!("{p}a"), b: format!("{p}b"), dir, children: Vec::new(), keep_env };
        let (va, vb) = (format!("{p}va"), format!("{p}vb"));
        ok("ip", &["netns", "add", &lab.a]);
        ok("ip", &["netns", "add", &lab.b]);
        ok("ip", &["link", "add", &va, "netns", &lab.a, "type", "veth", "peer", "name", &vb, "netns", &lab.b]);
        for (ns, dev, addr, inner) in
            [(&lab.a, &va, "198.18.0.1/24", "192.0.2.1/32"), (&lab.b, &vb, "198.18.0.2/24", "198.51.100.1/32")]
        {
            lab.ns_ok(ns, &["ip", "link", "set", "lo", "up"]);
            lab.ns_ok(ns, &["ip", "addr", "add", addr, "dev", dev]);
            lab.ns_ok(ns, &["ip", "link", "set", dev, "up"]);
            // charon installs a route to the remote subnet from a local inner address.
            lab.ns_ok(ns, &["ip", "addr", "add", inner, "dev", "lo"]);
        }
        lab
    }

    pub fn ns_ok(&self, ns: &str, args: &[&str]) {
        let mut v = vec!["netns", "exec", ns];
        v.extend_from_slice(args);
        ok("ip", &v);
    }
}

impl Drop for PairLab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if std::thread::panicking() && std::env::var_os(self.keep_env).is_some() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
