//! Store: migrations (from empty, from version 1), rollback on error, file modes, and durability of
//! every acknowledged commit across SIGKILL of the writing process.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipsec_mgmt::store::{Page, Store, MIGRATIONS, SCHEMA_VERSION};
use ipsec_mgmt::validate::{self, Params};
use ipsec_mgmt::ApiError;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ipsec-mgmt-store-{tag}-{}", ipsec_mgmt::model::new_id("")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gateway(n: u64) -> ipsec_mgmt::model::VpnGateway {
    validate::new_vpn_gateway(&Params::new().with("PublicIp", "198.51.100.1").with("Name", format!("gw{n}")), n)
        .unwrap()
}

const ALL: Page = Page { number: 1, size: 1000 };

#[test]
fn migrates_from_empty() {
    let d = tmpdir("empty");
    let db = d.join("state.db");
    let s = Store::open(&db).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
    drop(s);
    // Reopening is a no-op.
    let s = Store::open(&db).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(journal_mode(&db), "wal");
    for f in std::fs::read_dir(&d).unwrap() {
        let f = f.unwrap();
        let m = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{} has mode {m:o}", f.path().display());
    }
}

/// journal_mode=WAL is persistent and recorded in the file header.
fn journal_mode(db: &Path) -> String {
    let bytes = std::fs::read(db).unwrap();
    // SQLite header bytes 18/19 are 2 (WAL) once the database is in WAL mode.
    if bytes.len() > 19 && bytes[18] == 2 && bytes[19] == 2 {
        "wal".into()
    } else {
        format!("legacy ({:?})", bytes.get(18..20))
    }
}

#[test]
fn migrates_from_version_1_keeping_data() {
    let d = tmpdir("v1");
    let db = d.join("state.db");
    let g = gateway(1);
    {
        let mut s = Store::open_at_version(&db, 1).unwrap();
        assert_eq!(s.schema_version().unwrap(), 1);
        s.write(|tx| tx.put_vpn_gateway(&g)).unwrap();
        // The logs table does not exist at version 1.
        assert!(s.write(|tx| tx.append_log("vco-x", 1, "m")).is_err());
    }
    let mut s = Store::open(&db).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(s.read().vpn_gateway(&g.vpn_gateway_id).unwrap(), Some(g));
    s.write(|tx| tx.append_log("vco-x", 5, "hello")).unwrap();
    let (lines, total) = s.read().logs("vco-x", 0, 10, ALL).unwrap();
    assert_eq!((lines.len(), total), (1, 1));
}

#[test]
fn failed_write_stores_nothing() {
    let d = tmpdir("rollback");
    let mut s = Store::open(&d.join("state.db")).unwrap();
    let g = gateway(1);
    let r: Result<(), ApiError> = s.write(|tx| {
        tx.put_vpn_gateway(&g)?;
        Err(ApiError::invalid("X", "late failure"))
    });
    assert!(r.is_err());
    assert_eq!(s.read().vpn_gateways(None, ALL).unwrap().1, 0);
}

#[test]
fn paging_and_log_pruning() {
    let d = tmpdir("paging");
    let mut s = Store::open(&d.join("state.db")).unwrap();
    for n in 0..5 {
        s.write(|tx| tx.put_vpn_gateway(&gateway(n))).unwrap();
    }
    let (page2, total) = s.read().vpn_gateways(None, Page { number: 2, size: 2 }).unwrap();
    assert_eq!(total, 5);
    assert_eq!(page2.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["gw2", "gw3"]);
    let (far, _) = s.read().vpn_gateways(None, Page { number: u64::MAX, size: 50 }).unwrap();
    assert!(far.is_empty());
    s.write(|tx| {
        for t in [10, 20, 30] {
            tx.append_log("vco-a", t, &format!("line {t}"))?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(s.write(|tx| tx.prune_logs(20)).unwrap(), 1);
    let (lines, total) = s.read().logs("vco-a", 0, 100, ALL).unwrap();
    assert_eq!(total, 2);
    assert_eq!(lines[0].message, "line 20");
}

/// The child half of `acknowledged_writes_survive_sigkill`: writes gateways forever, printing each
/// id after its commit returned.
#[test]
fn child_writer() {
    let Ok(db) = std::env::var("IPSEC_MGMT_CHILD_DB") else { return };
    let mut s = Store::open(Path::new(&db)).unwrap();
    for n in 0.. {
        let g = gateway(n);
        s.write(|tx| tx.put_vpn_gateway(&g)).unwrap();
        println!("ACK {}", g.vpn_gateway_id);
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let d = tmpdir("kill");
    let db = d.join("state.db");
    let mut acked = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("IPSEC_MGMT_CHILD_DB", &db)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let want = 20 * (round + 1);
        while acked.len() < want {
            let line = lines.next().expect("child ended early").unwrap();
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.push(id.to_string());
            }
        }
        // SIGKILL in the middle of the stream of writes.
        child.kill().unwrap();
        child.wait().unwrap();
        // Anything the child acknowledged after we stopped reading is in the pipe; read it too.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.push(id.to_string());
            }
        }
        let s = Store::open(&db).unwrap();
        for id in &acked {
            assert!(s.read().vpn_gateway(id).unwrap().is_some(), "acknowledged {id} lost after kill -9");
        }
    }
}
