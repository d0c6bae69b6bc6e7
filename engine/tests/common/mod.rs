//! Helpers shared by the engine's root tests: whether they can run here, running `ip`, and
//! removing namespaces left behind by earlier runs that died.
#![allow(dead_code)]

pub mod engine;
pub mod netns;
pub mod scapy;
pub mod topology;

use std::process::Command;

/// Whether a namespace test can run here: root, with iproute2 and the right to make namespaces.
/// When it cannot, it prints why and returns false, unless `IPSEC_REQUIRE_ROOT_TESTS=1`, where it
/// panics. `prefix` names the probe namespace, `test` the test in messages.
pub fn can_run(prefix: &str, test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let why = if euid != 0 {
        "needs root".to_string()
    } else if Command::new("ip").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
        "needs iproute2 (ip)".to_string()
    } else {
        let probe = format!("{prefix}{}p", std::process::id());
        match Command::new("ip").args(["netns", "add", &probe]).output() {
            Ok(out) if out.status.success() => {
                let _ = Command::new("ip").args(["netns", "del", &probe]).status();
                return true;
            }
            Ok(out) => format!("cannot make network namespaces: {}", String::from_utf8_lossy(&out.stderr).trim()),
            Err(e) => format!("cannot run ip: {e}"),
        }
    };
    if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test} cannot run ({why}) and IPSEC_REQUIRE_ROOT_TESTS=1 is set");
    }
    println!("SKIPPED: {why}");
    false
}

/// Runs a command and panics with its stderr if it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Removes namespaces named `<prefix><pid><suffix>` (one of `suffixes`) whose process is gone.
pub fn remove_stale_namespaces(prefix: &str, suffixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let suffix = &rest[pid.len()..];
        if pid.is_empty() || !suffixes.contains(&suffix) {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}
