//! Shared helpers: a temporary state directory and the `ipsec-mgmtd` binary as a child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ipsec-mgmt-{tag}-{}", ipsec_mgmt::model::new_id("")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running `ipsec-mgmtd` on 127.0.0.1 (ephemeral port) with its own state directory.
pub struct Daemon {
    pub child: Child,
    pub endpoint: String,
    pub state_dir: PathBuf,
    pub token: String,
}

impl Daemon {
    pub fn start(state_dir: &Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipsec-mgmtd"))
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ipsec-mgmtd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected output {line:?}"));
        let token_file = extra
            .iter()
            .position(|a| *a == "--token-file")
            .map(|i| PathBuf::from(extra[i + 1]))
            .unwrap_or_else(|| state_dir.join("api-token"));
        let token = std::fs::read_to_string(token_file).unwrap().trim().to_string();
        Daemon { child, endpoint: format!("http://{addr}"), state_dir: state_dir.to_path_buf(), token }
    }

    /// POST form call; answers (status, JSON).
    pub fn call(&self, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        ipsec_mgmt::client::call(&self.endpoint, &self.token, action, params).unwrap()
    }

    /// Calls and expects success.
    pub fn ok(&self, action: &str, params: &[(&str, &str)]) -> Value {
        let (s, v) = self.call(action, params);
        assert_eq!(s, 200, "{action} {params:?}: {v}");
        v
    }

    /// SIGKILL.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
