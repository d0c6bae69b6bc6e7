//! `perf-lab esp --json` prints one well-formed JSON object per line with the documented fields
//! (a tiny run: this checks the report, not the speed).

use std::process::Command;

#[test]
fn esp_json_lines_have_the_documented_fields() {
    let out = Command::new(env!("CARGO_BIN_EXE_perf-lab"))
        .args(["esp", "--json", "--seconds", "0.01", "--transforms", "aes128gcm16,aes256-sha512", "--sizes", "64,imix"])
        .args(["--scale-sas", "100"])
        .output()
        .expect("run perf-lab");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let esp: Vec<_> = lines.iter().filter(|v| v.get("transform").is_some()).collect();
    assert_eq!(esp.len(), 4, "2 transforms x 2 sizes: {stdout}");
    for v in &esp {
        for f in ["transform", "size", "encap_mpps", "decap_mpps", "encap_gbps", "raw_seal_gbps", "encap_vs_raw"] {
            assert!(v.get(f).is_some(), "missing {f} in {v}");
        }
        assert!(v["encap_mpps"].as_f64().unwrap() > 0.0);
        assert!(v["encap_vs_raw"].as_f64().unwrap() > 0.0);
    }
    let scale: Vec<_> = lines.iter().filter(|v| v.get("sas").is_some()).collect();
    assert_eq!(scale.len(), 4, "1 and N SAs x 2 sizes: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("encap/raw"), "table on stderr");
}
