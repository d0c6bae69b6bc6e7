//! Key derivation checked against strongSwan's own keys. Needs root; without it prints SKIPPED and
//! passes, unless `IPSEC_REQUIRE_ROOT_TESTS=1` (then it fails). strongSwan is installed with apt if
//! `/usr/lib/ipsec/charon` is missing.
//!
//! For each suite and both roles, one IKE_SA + Child SA exchange runs between our daemon (in
//! process, with a recording sink, in netns `<p>a`) and charon (kernel-libipsec, netns `<p>b`)
//! logging with `ike = 4` and `chd = 4`: charon then dumps the shared DH secret, SKEYSEED, the
//! seven SK_* keys and the Child SA's encryption and integrity keys. Every one of them must equal
//! ours byte for byte (IKE SA keys through the daemon's test-only accessor, Child SA keys as the
//! sink received them). The two implementations derive independently, so this checks PRF, prf+,
//! the key split, the GCM salt placement and the DH shared secret on real exchanges.
//!
//! Our daemon runs inside the namespace by re-executing this test binary there with
//! `ip netns exec` (the `inner_daemon` test, a no-op unless `KEYS_INNER_CFG` is set); it writes
//! its keys as hex into the run's temporary directory, which is removed afterwards.
//!
//! Topology (per-run name prefix; removed afterwards, also on failure): `<p>va 198.18.0.1/24` in
//! `<p>a` ↔ `<p>vb 198.18.0.2/24` in `<p>b`; selectors 192.0.2.0/24 ↔ 198.51.100.0/24.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{text, Charon, PairLab};

use ipsec_control::config::DaemonConfig;
use ipsec_control::log::Logger;
use ipsec_control::sink::SinkRecord;
use ipsec_control::{Daemon, RecordingSink};

const PSK: &str = "keys-psk-4be1c09d3a";

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Suite {
    name: &'static str,
    swan_ike: &'static str,
    swan_esp: &'static str,
    our_ike: &'static str,
    our_esp: &'static str,
}

const SUITES: &[Suite] = &[
    Suite {
        name: "aes128-sha1-modp1024",
        swan_ike: "aes128-sha1-modp1024",
        swan_esp: "aes128-sha1",
        our_ike: "enc = \"aes\"\nauth = \"sha1\"\ndh_group = 2",
        our_esp: "enc = \"aes\"\nauth = \"sha1\"\npfs_group = \"disabled\"",
    },
    Suite {
        name: "aes256gcm16-prfsha384-ecp384",
        swan_ike: "aes256gcm16-prfsha384-ecp384",
        swan_esp: "aes256gcm16",
        our_ike: "proposals = [\"aes256gcm16-prfsha384-ecp384\"]",
        our_esp: "proposals = [\"aes256gcm16\"]",
    },
    Suite {
        name: "aes256-sha256-curve25519",
        swan_ike: "aes256-sha256-curve25519",
        swan_esp: "aes256-sha256",
        our_ike: "proposals = [\"aes256-sha256-curve25519\"]",
        our_esp: "proposals = [\"aes256-sha256\"]",
    },
];

/// charon in netns b logging its keys (`ike = 4`, `chd = 4`).
fn start_charon(lab: &PairLab, s: &Suite) -> Charon {
    let conf = support::psk_connection(s.swan_ike, s.swan_esp, &["198.51.100.0/24"], &["192.0.2.0/24"], PSK);
    Charon::start(&lab.b, lab.dir.join("charon"), &conf, "ike = 4\n      chd = 4\n      cfg = 2")
}

/// Our side, run inside netns a by [`inner_daemon`]: brings the connection up and writes its keys.
fn our_side(cfg: &Path, out: &Path, ready: &Path) {
    let cfg = DaemonConfig::load(cfg).unwrap();
    let log = std::fs::File::create(out.with_extension("log")).unwrap();
    let sink = RecordingSink::default();
    let mut d = Daemon::new(cfg, Box::new(sink.clone()), Logger::new(Box::new(log))).unwrap();
    d.start();
    std::fs::write(ready, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let child = loop {
        assert!(Instant::now() < deadline, "no Child SA within 20 s");
        d.step(Duration::from_millis(10)).unwrap();
        if let Some(sa) = sink.snapshot().into_iter().find_map(|r| match r {
            SinkRecord::Install { sa, .. } => Some(sa),
            _ => None,
        }) {
            break sa;
        }
    };
    let k = d.ike_sa_keys_for_tests("t").expect("IKE SA keys");
    let mut lines = String::new();
    for (name, v) in [
        ("Sk_d secret", &k.sk_d),
        ("Sk_ai secret", &k.sk_ai),
        ("Sk_ar secret", &k.sk_ar),
        ("Sk_ei secret", &k.sk_ei),
        ("Sk_er secret", &k.sk_er),
        ("Sk_pi secret", &k.sk_pi),
        ("Sk_pr secret", &k.sk_pr),
        ("encryption initiator key", &child.keys.encr_i),
        ("encryption responder key", &child.keys.encr_r),
        ("integrity initiator key", &child.keys.integ_i),
        ("integrity responder key", &child.keys.integ_r),
    ] {
        lines.push_str(&format!("{name}={}\n", hex(v.expose())));
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, lines).unwrap();
    std::fs::rename(&tmp, out).unwrap();
    // Let the last messages reach charon, then close the IKE SA.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        d.step(Duration::from_millis(10)).unwrap();
    }
    d.shutdown(Duration::from_secs(2)).unwrap();
}

/// Re-executed inside netns a by [`keys_equal_strongswans`]; does nothing in a normal run.
#[test]
#[ignore = "run by keys_equal_strongswans inside its namespace"]
fn inner_daemon() {
    let (Some(cfg), Some(out), Some(ready)) =
        (std::env::var_os("KEYS_INNER_CFG"), std::env::var_os("KEYS_INNER_OUT"), std::env::var_os("KEYS_INNER_READY"))
    else {
        return;
    };
    our_side(Path::new(&cfg), Path::new(&out), Path::new(&ready));
}

fn one_run(s: &Suite, we_initiate: bool, tag: &str) {
    let mut lab = PairLab::new("ipk", tag, "KEYS_KEEP");
    let charon = start_charon(&lab, s);
    let cfg = lab.dir.join("ours.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[connection]]
name = \"t\"
local_addr = \"198.18.0.1\"
remote_addr = \"198.18.0.2\"
local_subnets = [\"192.0.2.0/24\"]
remote_subnets = [\"198.51.100.0/24\"]
psk = \"{PSK}\"
effect_immediately = {we_initiate}

[connection.ike]
{}

[connection.ipsec]
{}
",
            s.our_ike, s.our_esp
        ),
    )
    .unwrap();
    let out = lab.dir.join("ours.keys");
    let ready = lab.dir.join("ours.ready");
    let exe = std::env::current_exe().unwrap();
    let inner = Command::new("ip")
        .args(["netns", "exec", &lab.a])
        .arg(&exe)
        .args(["--exact", "inner_daemon", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("KEYS_INNER_CFG", &cfg)
        .env("KEYS_INNER_OUT", &out)
        .env("KEYS_INNER_READY", &ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("inner daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "our daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    if !we_initiate {
        let c = charon
            .swanctl_command(&["--initiate", "--child", "t", "--timeout", "15"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swanctl --initiate");
        lab.children.push(c);
    }
    let o = inner.wait_with_output().unwrap();
    let charon_log = charon.log();
    let ours_log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}: our side failed: {}\nour log:\n{ours_log}\ncharon:\n{charon_log}",
        s.name,
        text(&o)
    );
    let ours: HashMap<String, String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let labels: Vec<&str> =
        ours.keys().map(String::as_str).chain(["SKEYSEED", "shared Diffie Hellman secret"]).collect();
    let theirs = support::charon_dumps(&charon_log, &labels);
    assert!(theirs.contains_key("SKEYSEED") && theirs.contains_key("shared Diffie Hellman secret"), "{charon_log}");
    let role = if we_initiate { "we initiate" } else { "charon initiates" };
    let mut compared = 0;
    for (label, want) in &ours {
        match theirs.get(label) {
            Some(t) => {
                assert_eq!(&hex(t), want, "{} ({role}): {label} differs from strongSwan's", s.name);
                compared += 1;
            }
            // strongSwan dumps no empty chunks' lines for AEAD integrity keys.
            None => assert!(want.is_empty(), "{} ({role}): strongSwan logged no {label:?}\n{charon_log}", s.name),
        }
    }
    // SK_d, SK_e*, SK_p* and both ESP encryption keys always; SK_a* and ESP integrity keys too
    // unless the suite is AEAD.
    assert!(compared >= 7, "{} ({role}): only {compared} keys compared", s.name);
    eprintln!("{} ({role}): {compared} keys equal strongSwan's", s.name);
}

#[test]
fn keys_equal_strongswans() {
    if std::env::var_os("KEYS_INNER_CFG").is_some() {
        return;
    }
    if !run("id", &["-u"]).stdout.starts_with(b"0\n") {
        assert!(
            std::env::var("IPSEC_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
            "IPSEC_REQUIRE_ROOT_TESTS=1 but not root"
        );
        eprintln!("SKIPPED keys_equal_strongswans: needs root (network namespaces, charon)");
        return;
    }
    support::ensure_strongswan();
    for (i, s) in SUITES.iter().enumerate() {
        for (j, we_initiate) in [true, false].into_iter().enumerate() {
            one_run(s, we_initiate, &format!("{}", i * 2 + j));
        }
    }
}
