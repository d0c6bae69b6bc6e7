//! `perf-lab xdp` on a tiny configuration (engine cases, one size, 1 s runs, one search step):
//! the JSON lines carry the documented fields, packets were delivered through both engines, the
//! reports are written, and the run's namespaces are gone afterwards. This checks the tool, not
//! the speed.
//!
//! Needs root and the `ipsec-engine` binary next to `perf-lab` (`cargo test --workspace` builds
//! it; alone: `cargo build -p ipsec-engine` first). Otherwise it prints `SKIPPED: ...` and passes,
//! unless `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("xdp_report cannot run ({why}) and IPSEC_REQUIRE_ROOT_TESTS=1 is set");
    }
    println!("SKIPPED: {why}");
}

#[test]
fn xdp_json_lines_and_reports_from_a_short_engine_run() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root");
    }
    if Command::new("ip").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
        return skip("needs iproute2 (ip)");
    }
    let perf_lab = PathBuf::from(env!("CARGO_BIN_EXE_perf-lab"));
    let engine = perf_lab.with_file_name("ipsec-engine");
    if !engine.is_file() {
        return skip(&format!("no {} (cargo build -p ipsec-engine)", engine.display()));
    }
    let dir = std::env::temp_dir().join(format!("perf-lab-xdp-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = RemoveOnDrop(dir.clone());

    let mut child = Command::new(&perf_lab)
        .args(["xdp", "--json", "--cases", "engine-aes128gcm,engine-null", "--sizes", "512"])
        .args(["--seconds", "1", "--search-steps", "1", "--report-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run perf-lab");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(55);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child. Its Drop guards do not run: the namespaces are
            // removed below, its gateways get SIGTERM from their parent-death signal.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(&format!("px{pid}"))).collect();
    for n in &ours {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(Instant::now() <= deadline, "perf-lab xdp took longer than 55 s:\n{stderr}");
    assert!(out.status.success(), "perf-lab xdp failed:\n{stderr}");
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");

    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2, "one line per case and size:\n{stdout}\n{stderr}");
    for (v, case) in lines.iter().zip(["engine-aes128gcm", "engine-null"]) {
        for f in ["case", "size", "mpps", "gbps", "loss", "p50_us", "p99_us", "lossless_mpps"] {
            assert!(v.get(f).is_some(), "missing {f} in {v}");
        }
        assert_eq!(v["case"], case);
        assert_eq!(v["size"], "512");
        let mpps = v["mpps"].as_f64().unwrap();
        let loss = v["loss"].as_f64().unwrap();
        assert!(mpps > 0.0, "nothing delivered through the engines: {v}\n{stderr}");
        assert!(loss < 1.0, "everything lost: {v}");
        assert!(v["gbps"].as_f64().unwrap() > 0.0);
        let (p50, p99) = (v["p50_us"].as_f64().unwrap(), v["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p99 >= p50, "latency percentiles {p50} / {p99}");
    }
    let md = read(&dir.join("xdp.md"));
    assert!(md.contains("| engine-aes128gcm | 512 |") && md.contains("| engine-null | 512 |"), "table rows:\n{md}");
    assert!(md.contains("## Targets") && md.contains("p99 **"), "targets section:\n{md}");
    let svg = read(&dir.join("xdp.svg"));
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.matches("<rect").count() >= 3);
    assert!(stderr.contains("max Mpps"), "table on stderr:\n{stderr}");
}

/// Removes the report directory when the test ends, also when it fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
