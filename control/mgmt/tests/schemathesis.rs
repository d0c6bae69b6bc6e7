//! schemathesis against the checked-in OpenAPI document and a live `ipsec-mgmtd` on 127.0.0.1 with
//! the bearer token: no 5xx answer, status codes / content types / bodies as documented.
//!
//! schemathesis is installed into `target/schemathesis-venv` (python3 -m venv + pip) on first use.
//! Without python3 or the package index the test prints a loud SKIPPED line, unless
//! `IPSEC_REQUIRE_SCHEMATHESIS=1`, where it fails. The run is bounded: `--max-examples 30` per
//! operation, 2 workers, and a wall-clock limit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tmpdir, Daemon};

const WALL_CLOCK_LIMIT: Duration = Duration::from_secs(240);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The `st` executable, installing it if needed; `Err` says why it is unavailable.
fn schemathesis() -> Result<PathBuf, String> {
    let venv = target_dir().join("schemathesis-venv");
    let st = venv.join("bin/st");
    let works = |st: &Path| Command::new(st).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if works(&st) {
        return Ok(st);
    }
    let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("python3 -m venv failed ({s})")),
        Err(e) => return Err(format!("python3 not available ({e})")),
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "schemathesis"])
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !pip.success() || !works(&st) {
        return Err(format!("pip install schemathesis failed ({pip})"));
    }
    Ok(st)
}

#[test]
fn schemathesis_finds_no_server_errors() {
    let st = match schemathesis() {
        Ok(st) => st,
        Err(why) => {
            if std::env::var("IPSEC_REQUIRE_SCHEMATHESIS").as_deref() == Ok("1") {
                panic!("schemathesis is required (IPSEC_REQUIRE_SCHEMATHESIS=1) but unavailable: {why}");
            }
            eprintln!("\n======== SKIPPED: schemathesis unavailable ({why}); the API was NOT fuzzed ========\n");
            return;
        }
    };
    let dir = tmpdir("schemathesis");
    let d = Daemon::start(&dir.join("state"), &["--quota", "1000"]);
    // Real resources, so that some generated calls hit existing ids.
    let gw = d.ok("CreateVpnGateway", &[("PublicIp", "198.51.100.1")]);
    let cgw = d.ok("CreateCustomerGateway", &[("IpAddress", "203.0.113.1")]);
    d.ok(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", gw["VpnGatewayId"].as_str().unwrap()),
            ("CustomerGatewayId", cgw["CustomerGatewayId"].as_str().unwrap()),
            ("LocalSubnet", "10.0.0.0/24"),
            ("RemoteSubnet", "10.9.0.0/24"),
        ],
    );
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let log = dir.join("schemathesis.log");
    let mut child = Command::new(&st)
        .arg("run")
        .arg(&spec)
        .args(["--url", &d.endpoint])
        .args(["-H", &format!("Authorization: Bearer {}", d.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "30", "--workers", "2", "--seed", "4", "--no-color", "--request-timeout", "10"])
        .env("SCHEMATHESIS_HOOKS", "")
        // schemathesis keeps an example database in ./.schemathesis: keep it out of the tree.
        .current_dir(&dir)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run schemathesis");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > WALL_CLOCK_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran past {WALL_CLOCK_LIMIT:?}; output in {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let summary: String =
        out.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    println!("{summary}");
    assert!(status.success(), "schemathesis found failures ({status}):\n{out}");
    assert!(out.contains("passed"), "no test case ran:\n{out}");
    // The daemon is still alive and healthy after the fuzzing.
    assert_eq!(d.call("DescribeVpnGateways", &[]).0, 200);
}
