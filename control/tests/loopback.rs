//! Two in-process daemons over loopback UDP (127.0.0.1 ↔ 127.0.0.2, unprivileged ports), each
//! with a recording sink: IKE SA and Child SA come up with matching SPIs on both ends, a Child SA
//! rekey is make-before-break in the sink, a control-socket `terminate` deletes everything, and the
//! PSK never appears in either log.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipsec_control::config::DaemonConfig;
use ipsec_control::daemon::control_request;
use ipsec_control::log::Logger;
use ipsec_control::sink::SinkRecord;
use ipsec_control::{Daemon, RecordingSink};

const PSK: &str = "loopback-psk-5f1e2d3c4b5a";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(me: &str, peer: &str, port: u16, ours: &str, theirs: &str, initiate: bool, sock: &str) -> DaemonConfig {
    let doc = format!(
        r#"
[daemon]
ike_port = {port}
natt_port = {natt}
control_socket = "{sock}"
state_file = "{sock}.state"
[[connection]]
name = "lo"
local_addr = "{me}"
remote_addr = "{peer}"
remote_port = {port}
local_subnets = ["{ours}"]
remote_subnets = ["{theirs}"]
psk = "{PSK}"
effect_immediately = {initiate}
force_encap = true
[connection.ike]
proposals = ["aes128gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"]
[connection.ipsec]
proposals = ["aes256-sha512-modp2048"]
"#,
        natt = port + 1
    );
    DaemonConfig::parse(&doc, None).unwrap()
}

fn step_both(a: &mut Daemon, b: &mut Daemon, until: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !until() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        a.step(Duration::from_millis(5)).unwrap();
        b.step(Duration::from_millis(5)).unwrap();
    }
}

#[test]
fn two_daemons_over_loopback() {
    let port = 20000 + (std::process::id() % 20000) as u16 * 2;
    let dir = std::env::temp_dir().join(format!("ipsec-control-lo-{}", std::process::id()));
    let sock_a = dir.join("a.sock");
    let sock_b = dir.join("b.sock");
    let (la, lb) = (Buf::default(), Buf::default());
    let (ra, rb) = (RecordingSink::default(), RecordingSink::default());
    let ca = config("127.0.0.1", "127.0.0.2", port, "192.0.2.0/24", "198.51.100.0/24", false, sock_a.to_str().unwrap());
    let cb = config("127.0.0.2", "127.0.0.1", port, "198.51.100.0/24", "192.0.2.0/24", false, sock_b.to_str().unwrap());
    let mut a = Daemon::new(ca, Box::new(ra.clone()), Logger::new(Box::new(la.clone()))).unwrap();
    let mut b = Daemon::new(cb, Box::new(rb.clone()), Logger::new(Box::new(lb.clone()))).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sock_a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "control socket mode");
    }
    a.start();
    b.start();
    // effect_immediately = false on both: nothing happens until `initiate` on the control socket.
    step_both(&mut a, &mut b, || true, "nothing");
    assert!(ra.snapshot().is_empty());
    let s = sock_a.clone();
    let client = std::thread::spawn(move || control_request(&s, "initiate lo"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    assert!(client.join().unwrap().unwrap().contains("initiating"));
    step_both(&mut a, &mut b, || !ra.installed().is_empty() && !rb.installed().is_empty(), "the Child SA");
    let (a_in, a_out) = ra.installed()[0];
    {
        use std::os::unix::fs::PermissionsExt;
        let state = std::path::PathBuf::from(format!("{}.state", sock_a.display()));
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600, "state file mode");
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(text.contains(&format!("spi_in={a_in:08x}")) && !text.contains(PSK), "{text}");
    }
    assert_eq!(rb.installed(), vec![(a_out, a_in)], "both ends installed the same SA");

    // Our own Child SA rekey through the control socket (the client runs on a thread; the daemon
    // answers from its loop).
    let s = sock_a.clone();
    let client = std::thread::spawn(move || control_request(&s, "rekey-child lo"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    assert!(client.join().unwrap().unwrap().contains("rekey-child started"));
    step_both(&mut a, &mut b, || ra.installed().len() == 1 && ra.installed()[0] != (a_in, a_out), "the rekey");
    step_both(&mut a, &mut b, || rb.installed().len() == 1 && rb.installed()[0].0 != a_out, "the peer's rekey");
    // Make-before-break: the new SA was installed before the old one was deleted.
    let recs = ra.snapshot();
    let del = recs.iter().position(|r| matches!(r, SinkRecord::Delete { spi_in, .. } if *spi_in == a_in)).unwrap();
    let new_inst = recs.iter().position(|r| matches!(r, SinkRecord::Install { sa, .. } if sa.inbound_spi() != a_in));
    assert!(new_inst.unwrap() < del, "{recs:?}");

    let s = sock_b.clone();
    let client = std::thread::spawn(move || control_request(&s, "terminate lo"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    client.join().unwrap().unwrap();
    step_both(&mut a, &mut b, || ra.installed().is_empty() && rb.installed().is_empty(), "the deletes");
    drop((a, b));

    for (name, log) in [("a", la.text()), ("b", lb.text())] {
        assert!(log.contains("CHILD_SA installed"), "{name}: {log}");
        assert!(!log.contains(PSK), "{name}'s log shows the PSK");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A port p such that p and p + 1 are free on 127.0.0.1 and 127.0.0.2 right now.
fn free_ports() -> u16 {
    for _ in 0..200 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p >= 65000 {
            continue;
        }
        let others = [("127.0.0.1", p + 1), ("127.0.0.2", p), ("127.0.0.2", p + 1)];
        let held: Vec<_> = others.iter().filter_map(|a| std::net::UdpSocket::bind(a).ok()).collect();
        if held.len() == others.len() {
            return p;
        }
    }
    panic!("no free port pair");
}

/// Both daemons initiate at once (effect_immediately on both): two IKE SAs come up, and the
/// duplicate rule leaves exactly one IKE SA and one Child SA on each end, the same on both. The
/// end that deletes the redundant SA stops sending on its Child SA before the DELETE; the
/// connection stays up (no re-initiation) and works (a Child SA rekey on the survivor).
#[test]
fn both_daemons_initiating_at_once_converge_on_one_sa() {
    use ipsec_control::daemon::IkeState;

    let port = free_ports();
    let dir = std::env::temp_dir().join(format!("ipsec-control-lo-dup-{}", std::process::id()));
    let sock_a = dir.join("a.sock");
    let sock_b = dir.join("b.sock");
    let (la, lb) = (Buf::default(), Buf::default());
    let (ra, rb) = (RecordingSink::default(), RecordingSink::default());
    let ca = config("127.0.0.1", "127.0.0.2", port, "192.0.2.0/24", "198.51.100.0/24", true, sock_a.to_str().unwrap());
    let cb = config("127.0.0.2", "127.0.0.1", port, "198.51.100.0/24", "192.0.2.0/24", true, sock_b.to_str().unwrap());
    let mut a = Daemon::new(ca, Box::new(ra.clone()), Logger::new(Box::new(la.clone()))).unwrap();
    let mut b = Daemon::new(cb, Box::new(rb.clone()), Logger::new(Box::new(lb.clone()))).unwrap();
    let t0 = Instant::now();
    a.start();
    b.start();
    let installs = |s: &RecordingSink| s.snapshot().iter().filter(|r| matches!(r, SinkRecord::Install { .. })).count();
    step_both(&mut a, &mut b, || installs(&ra) >= 2 && installs(&rb) >= 2, "two Child SAs (both ends initiated)");
    let one = |s: &RecordingSink| s.installed().len() == 1;
    step_both(&mut a, &mut b, || one(&ra) && one(&rb), "one Child SA on each end");
    let converged = t0.elapsed();
    // Stays so past the grace period (nothing else deleted, nothing re-initiated).
    let until = Instant::now() + ipsec_ike::endpoint::DUPLICATE_GRACE + Duration::from_secs(1);
    step_both(&mut a, &mut b, || Instant::now() >= until, "the grace period");
    let (a_in, a_out) = ra.installed()[0];
    assert_eq!(ra.installed(), vec![(a_in, a_out)]);
    assert_eq!(rb.installed(), vec![(a_out, a_in)], "both ends kept the same Child SA");
    assert_eq!(installs(&ra), 2, "no re-initiation");
    assert_eq!(ra.sending_on(), Some((a_in, a_out)));
    assert_eq!(rb.sending_on(), Some((a_out, a_in)));
    for (d, sink, log) in [(&a, &ra, &la), (&b, &rb, &lb)] {
        let st = d.connection_status("lo").unwrap();
        assert_eq!(st.ike, IkeState::Established);
        assert_eq!(st.children.len(), 1, "{st:?}");
        assert_eq!(st.children[0].spi_in, sink.installed()[0].0);
        assert!(!st.retry_scheduled);
        let text = log.text();
        assert_eq!(text.matches("IKE_SA established").count(), 2, "{text}");
        assert!(text.contains("duplicate IKE_SA spi_i="), "{text}");
    }
    // Exactly one end deleted the redundant SA (its initiator) and retired its Child SA first.
    let (deleter, sink) = if la.text().contains("deleting it (we initiated it)") { (&la, &ra) } else { (&lb, &rb) };
    assert!(deleter.text().contains("deleting it (we initiated it)"));
    assert!(!la.text().contains("did not delete it") && !lb.text().contains("did not delete it"));
    let recs = sink.snapshot();
    let retired = recs.iter().position(|r| matches!(r, SinkRecord::Retire { .. })).expect("a Retire");
    let SinkRecord::Retire { spi_in: r_in, .. } = recs[retired].clone() else { unreachable!() };
    let deleted = recs.iter().position(|r| matches!(r, SinkRecord::Delete { spi_in, .. } if *spi_in == r_in)).unwrap();
    assert!(retired < deleted, "retired before deleted: {recs:?}");
    assert_ne!(sink.installed()[0].0, r_in);
    // The surviving IKE SA is the connection's: a Child SA rekey on it works.
    let s = sock_a.clone();
    let client = std::thread::spawn(move || control_request(&s, "rekey-child lo"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    assert!(client.join().unwrap().unwrap().contains("rekey-child started"));
    step_both(&mut a, &mut b, || one(&ra) && ra.installed()[0] != (a_in, a_out), "the rekey");
    step_both(&mut a, &mut b, || one(&rb) && rb.installed()[0].0 != a_out, "the peer's rekey");
    assert_eq!(rb.installed(), vec![(ra.installed()[0].1, ra.installed()[0].0)]);
    drop((a, b));
    eprintln!("converged after {converged:?}");
    for log in [la.text(), lb.text()] {
        assert!(!log.contains(PSK));
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn config_v1(me: &str, peer: &str, port: u16, ours: &[&str], theirs: &[&str], sock: &str) -> DaemonConfig {
    let list = |v: &[&str]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let doc = format!(
        r#"
[daemon]
ike_port = {port}
natt_port = {natt}
control_socket = "{sock}"
[[connection]]
name = "v1"
local_addr = "{me}"
remote_addr = "{peer}"
remote_port = {port}
local_subnets = [{ours}]
remote_subnets = [{theirs}]
psk = "{PSK}"
ike_version = 1
effect_immediately = false
[connection.ike]
mode = "main"
proposals = ["aes128-sha256-modp2048", "aes256-sha1-ecp256"]
lifetime = 10
[connection.ipsec]
proposals = ["aes128gcm16-ecp256", "aes256-sha512"]
"#,
        natt = port + 1,
        ours = list(ours),
        theirs = list(theirs),
    );
    DaemonConfig::parse(&doc, None).unwrap()
}

/// Two daemons negotiate IKEv1 (main mode, two subnet pairs: two quick modes), then the ISAKMP
/// SA's 10 s lifetime makes the initiator reauthenticate: a new ISAKMP SA with new IPsec SAs,
/// then the old one is deleted (make before break in the sink); an unusable message 1 leaves no
/// state; `status`, `rekey-child`, `rekey-ike` (a reauthentication, here started by the
/// responder) and `terminate` work through the control socket.
#[test]
fn two_daemons_ikev1_main_mode_and_reauthentication() {
    let port = free_ports();
    let dir = std::env::temp_dir().join(format!("ipsec-control-lo-v1-{}", std::process::id()));
    let (sock_a, sock_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let (la, lb) = (Buf::default(), Buf::default());
    let (ra, rb) = (RecordingSink::default(), RecordingSink::default());
    let ours = ["192.0.2.0/24"];
    let theirs = ["198.51.100.0/25", "198.51.100.128/25"];
    let ca = config_v1("127.0.0.1", "127.0.0.2", port, &ours, &theirs, sock_a.to_str().unwrap());
    let cb = config_v1("127.0.0.2", "127.0.0.1", port, &theirs, &ours, sock_b.to_str().unwrap());
    let mut a = Daemon::new(ca, Box::new(ra.clone()), Logger::new(Box::new(la.clone()))).unwrap();
    let mut b = Daemon::new(cb, Box::new(rb.clone()), Logger::new(Box::new(lb.clone()))).unwrap();
    a.start();
    b.start();
    // An unusable main-mode message 1 (header only) leaves no responder state behind.
    let bogus = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut hdr = [0u8; 28];
    hdr[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    (hdr[17], hdr[18], hdr[27]) = (0x10, 2, 28);
    bogus.send_to(&hdr, ("127.0.0.2", port)).unwrap();
    step_both(&mut a, &mut b, || lb.text().contains("unusable: dropped"), "the bogus message 1");
    let st = b.command("status", Instant::now()).unwrap();
    assert_eq!(st, "conn v1: down\n", "{}", lb.text());
    let s = sock_a.clone();
    let client = std::thread::spawn(move || control_request(&s, "initiate v1"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    assert!(client.join().unwrap().unwrap().contains("initiating"));
    let two = |s: &RecordingSink| s.installed().len() == 2;
    step_both(&mut a, &mut b, || two(&ra) && two(&rb), "two IPsec SAs on each end");
    let first = ra.installed();
    let mut mirrored: Vec<(u32, u32)> = rb.installed().iter().map(|&(i, o)| (o, i)).collect();
    mirrored.sort_unstable();
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, mirrored, "both ends installed the same SAs");
    let s = sock_b.clone();
    let client = std::thread::spawn(move || control_request(&s, "status"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    let st = client.join().unwrap().unwrap();
    assert!(st.contains("IKEv1 ESTABLISHED") && st.contains(&format!("spi_out={:08x}", first[0].0)), "{st}");

    // Reauthentication at 90 % of the 10 s lifetime: new SAs, then the old ones go.
    let t0 = Instant::now();
    let fresh = |s: &RecordingSink, old: &[(u32, u32)]| two(s) && s.installed().iter().all(|x| !old.contains(x));
    let b_first = rb.installed();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(fresh(&ra, &first) && fresh(&rb, &b_first)) {
        assert!(Instant::now() < deadline, "no reauthentication: {}", la.text());
        a.step(Duration::from_millis(20)).unwrap();
        b.step(Duration::from_millis(20)).unwrap();
    }
    assert!(t0.elapsed() > Duration::from_secs(5), "reauthenticated too early");
    let text = la.text();
    assert!(text.contains("(reauthentication)") && text.contains("IKEv1 reauthenticated: closing the old"), "{text}");
    // Make before break: both new SAs were installed before the first old one was deleted.
    let recs = ra.snapshot();
    let first_delete = recs.iter().position(|r| matches!(r, SinkRecord::Delete { .. })).unwrap();
    let installs_before = recs[..first_delete].iter().filter(|r| matches!(r, SinkRecord::Install { .. })).count();
    assert_eq!(installs_before, 4, "{recs:?}");
    step_both(&mut a, &mut b, || lb.text().contains("IKEv1 ISAKMP SA closed"), "the old ISAKMP SA's DELETE");

    // rekey-child from the responder's side: new quick modes, then the old IPsec SAs go.
    let second = ra.installed();
    let s = sock_b.clone();
    let client = std::thread::spawn(move || control_request(&s, "rekey-child v1"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    assert!(client.join().unwrap().unwrap().contains("rekey-child started (2 IPsec SA(s))"));
    step_both(&mut a, &mut b, || fresh(&ra, &second), "the IPsec SA rekeys");
    // rekey-ike from the responder's side: a reauthentication it initiates.
    let (third, third_b) = (ra.installed(), rb.installed());
    let s = sock_b.clone();
    let client = std::thread::spawn(move || control_request(&s, "rekey-ike v1"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    assert!(client.join().unwrap().unwrap().contains("reauthentication"));
    step_both(&mut a, &mut b, || fresh(&ra, &third) && fresh(&rb, &third_b), "the reauthentication");
    step_both(&mut a, &mut b, || lb.text().matches("IKEv1 reauthenticated").count() == 1, "b's reauthentication");

    let s = sock_b.clone();
    let client = std::thread::spawn(move || control_request(&s, "terminate v1"));
    step_both(&mut a, &mut b, || client.is_finished(), "the control reply");
    client.join().unwrap().unwrap();
    step_both(&mut a, &mut b, || ra.installed().is_empty() && rb.installed().is_empty(), "the deletes");
    drop((a, b));
    for (name, log) in [("a", la.text()), ("b", lb.text())] {
        assert!(log.contains("IKEv1 ISAKMP SA established"), "{name}: {log}");
        assert!(!log.contains(PSK), "{name}'s log shows the PSK");
    }
    let _ = std::fs::remove_dir_all(dir);
}
