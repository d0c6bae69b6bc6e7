//! Finding a Python with scapy for the tests that cross-check packets with it, the same way as
//! `engine/esp/tests/scapy_xcheck.rs`: `$IPSEC_TEST_PYTHON` (else `python3`); `.ci/test` builds
//! `target/pyenv` from `engine/esp/tests/requirements.txt` and sets `IPSEC_REQUIRE_SCAPY=1`.

use std::io::Write;
use std::process::Command;

/// The interpreter to use if it can import scapy's IPsec layer and `cryptography`. Without one:
/// panics if `IPSEC_REQUIRE_SCAPY=1`, else prints a loud SKIPPED line and returns `None`.
pub fn python() -> Option<String> {
    let py = std::env::var("IPSEC_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&py).args(["-c", "import scapy.layers.ipsec, cryptography"]).output();
    let problem = match probe {
        Ok(o) if o.status.success() => return Some(py),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("").to_owned(),
        Err(e) => format!("cannot run it: {e}"),
    };
    if std::env::var("IPSEC_REQUIRE_SCAPY").as_deref() == Ok("1") {
        panic!("IPSEC_REQUIRE_SCAPY=1 but `{py}` cannot import scapy: {problem} (bash .ci/test builds target/pyenv)");
    }
    // Straight to the process's stderr, past the test harness' output capture.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED (scapy part): scapy not installed, run bash .ci/test (or set IPSEC_TEST_PYTHON to a python \
         with engine/esp/tests/requirements.txt): `{py}`: {problem} ***\n"
    );
    None
}
