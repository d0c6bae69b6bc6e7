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
        let mut cmd = ipsec_control::lab::charon_command_logging(ns, &dir, swanctl_conf, log_levels)
            .unwrap_or_else(|e| panic!("charon files: {e}"));
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
