//! `perf-lab ike --json` in a tiny configuration: our responder (and charon when installed) in
//! namespaces, a few setups each; checks the documented fields are there and that setups actually
//! completed. Root only: without root or iproute2 it prints SKIPPED and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1`. The report checks the fields, not the speed. Needs the
//! `ipsec-control` binary of the same profile (built by `cargo test --workspace`; alone:
//! `cargo build -p ipsec-control && cargo test -p perf-lab --test ike_report`).

use std::path::Path;
use std::process::{Command, Stdio};

fn can_run() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    let why = match (root, ip) {
        (false, _) => "needs root",
        (_, false) => "needs iproute2 (ip)",
        _ => return true,
    };
    if std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("ike_report cannot run ({why}) and IPSEC_REQUIRE_ROOT_TESTS=1 is set");
    }
    println!("SKIPPED: {why}");
    false
}

#[test]
fn ike_json_lines_have_the_documented_fields() {
    if !can_run() {
        return;
    }
    let charon = Path::new("/usr/lib/ipsec/charon").exists();
    let responders = if charon { "ipsec-control,charon" } else { "ipsec-control" };
    // The responder binary of the same build: `cargo test --workspace` builds it for the control
    // crate's tests; alone, build it first (`cargo build -p ipsec-control`).
    let exe = Path::new(env!("CARGO_BIN_EXE_perf-lab"));
    let control = exe.with_file_name("ipsec-control");
    assert!(control.exists(), "{} missing: run cargo build -p ipsec-control first", control.display());
    let mut cmd = Command::new(exe);
    cmd.args(["ike", "--json", "--setups", "12", "--inflight", "4", "--warmup", "2", "--rounds", "2"])
        .args(["--seconds", "10", "--lanes", "2", "--responders", responders])
        .arg("--control-bin")
        .arg(&control);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run perf-lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("perf-lab output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let cases: Vec<_> = lines.iter().filter(|v| v.get("responder").is_some()).collect();
    let want = if charon { 4 } else { 2 };
    assert_eq!(cases.len(), want, "responders x (ecp256, modp2048): {stdout}");
    for v in &cases {
        for f in ["responder", "group", "setups_per_s", "cpu_us_per_sa", "p99_ms", "p50_ms", "setups", "failures"] {
            assert!(v.get(f).is_some(), "missing {f} in {v}");
        }
        assert!(["ipsec-control", "charon"].contains(&v["responder"].as_str().unwrap()), "{v}");
        assert!(["ecp256", "modp2048"].contains(&v["group"].as_str().unwrap()), "{v}");
        assert!(v["setups"].as_u64().unwrap() > 0, "no setup completed: {v}\n{stderr}");
        assert!(v["setups_per_s"].as_f64().unwrap() > 0.0, "{v}");
        // Every setup costs the responder at least a DH key generation and a shared secret.
        assert!(v["cpu_us_per_sa"].as_f64().unwrap() > 1.0, "{v}");
        assert!(v["p99_ms"].as_f64().unwrap() >= v["p50_ms"].as_f64().unwrap(), "{v}");
        assert!(v["p50_ms"].as_f64().unwrap() > 0.0, "{v}");
    }
    if charon {
        assert!(cases.iter().any(|v| v.get("cpu_vs_charon").is_some()), "ratio against charon: {stdout}");
    }
    let dh: Vec<_> = lines.iter().filter(|v| v.get("dh_group").is_some()).collect();
    assert_eq!(dh.len(), 2, "{stdout}");
    assert!(stderr.contains("CPU us/SA"), "table on stderr");
    // Nothing left behind.
    for suffix in ["g", "r0", "r1"] {
        assert!(!Path::new(&format!("/var/run/netns/pli{pid}{suffix}")).exists(), "namespace {suffix} removed");
    }
}
