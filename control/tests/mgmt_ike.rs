//! The management API drives the IKE daemon (`ipsec-control serve`'s IKE side, in process, over
//! loopback UDP on unprivileged ports; no root needed):
//!
//! * CreateVpnConnection (EffectImmediately) → the IKE thread initiates to a plain `Daemon` peer →
//!   DescribeVpnConnection shows `ipsec_sa_established`, the SA states and established times;
//! * the connection's log holds the negotiation steps (IKE_SA_INIT with the proposals offered and
//!   chosen, AUTH, the Child SA with SPIs and algorithms) and never the PSK;
//! * ModifyVpnConnectionAttribute of a negotiated parameter re-negotiates (the peer ends up with one
//!   Child SA, with the new cipher);
//! * the peer vanishes → DPD declares it dead → the connection re-initiates with back-off and comes
//!   back once the peer is there again;
//! * a restart of the IKE side replays the stored connections and re-establishes them;
//! * IKEv1 connections (IkeVersion ikev1) are negotiated too: `api_drives_ikev1` brings one up in aggressive mode against a plain
//!   `Daemon` peer configured for IKEv1, then deletes it; EffectImmediately = false connections
//!   wait;
//! * DeleteVpnConnection sends DELETE: the peer removes its SAs.

use std::io::Write;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipsec_control::config::DaemonConfig;
use ipsec_control::log::Logger;
use ipsec_control::serve::{spawn_ike, IkeOptions, SinkFactory};
use ipsec_control::sink::{SaSink, SinkRecord};
use ipsec_control::{Daemon, RecordingSink};
use ipsec_ike::transforms::EncrAlg;
use ipsec_mgmt::api::{Role, Service};
use ipsec_mgmt::effects::{ChannelEffects, StatusBoard};
use ipsec_mgmt::store::Store;
use ipsec_mgmt::validate::Params;
use serde_json::Value;

const PSK: &str = "mgmt-ike-psk-3b9d51c0e7";

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

/// A port p such that p and p + 1 are free on 127.0.0.1 and 127.0.0.2 right now.
fn free_ports() -> u16 {
    for _ in 0..200 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p >= 65000 {
            continue;
        }
        let others = [("127.0.0.1", p + 1), ("127.0.0.2", p), ("127.0.0.2", p + 1)];
        let held: Vec<_> = others.iter().filter_map(|a| UdpSocket::bind(a).ok()).collect();
        if held.len() == others.len() {
            return p;
        }
    }
    panic!("no free port pair");
}

fn peer_config(port: u16) -> DaemonConfig {
    peer_config_with(port, "", "")
}

/// The peer's configuration with `conn` added to its connection and `ike` to its `[connection.ike]`.
fn peer_config_with(port: u16, conn: &str, ike: &str) -> DaemonConfig {
    let doc = format!(
        r#"
[daemon]
ike_port = {port}
natt_port = {natt}
[[connection]]
name = "peer"
local_addr = "127.0.0.2"
remote_addr = "127.0.0.1"
remote_port = {port}
local_subnets = ["198.51.100.0/24"]
remote_subnets = ["192.0.2.0/24"]
psk = "{PSK}"
effect_immediately = false
enable_dpd = false
{conn}
[connection.ike]
proposals = ["aes256-sha256-modp2048"]
{ike}
[connection.ipsec]
proposals = ["aes256-sha256-modp2048", "aes128-sha256-modp2048"]
"#,
        natt = port + 1
    );
    DaemonConfig::parse(&doc, None).unwrap()
}

struct Peer {
    daemon: Daemon,
    sink: RecordingSink,
    log: Buf,
}

fn peer(port: u16) -> Peer {
    peer_with(peer_config(port))
}

fn peer_with(cfg: DaemonConfig) -> Peer {
    let sink = RecordingSink::default();
    let log = Buf::default();
    let mut daemon = Daemon::new(cfg, Box::new(sink.clone()), Logger::new(Box::new(log.clone()))).unwrap();
    daemon.start();
    Peer { daemon, sink, log }
}

struct Side {
    svc: Arc<Service>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    sink: RecordingSink,
    log: Buf,
}

impl Side {
    fn start(db: &std::path::Path, port: u16) -> Side {
        let board = Arc::new(StatusBoard::default());
        let (effects, rx) = ChannelEffects::new(board.clone());
        let svc = Arc::new(Service::new(Store::open(db).unwrap(), effects, 10));
        let mut o = IkeOptions::new("127.0.0.1".parse().unwrap());
        o.ike_port = port;
        o.natt_port = port + 1;
        o.peer_ike_port = port;
        o.dpd = Some((Duration::from_secs(1), Duration::from_secs(2)));
        let sink = RecordingSink::default();
        let s2 = sink.clone();
        let factory: SinkFactory = Box::new(move |_: &Daemon| Ok(Box::new(s2) as Box<dyn SaSink>));
        let log = Buf::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread =
            spawn_ike(svc.clone(), rx, board, o, factory, Logger::new(Box::new(log.clone())), stop.clone()).unwrap();
        Side { svc, stop, thread: Some(thread), sink, log }
    }

    fn call(&self, action: &str, kv: &[(&str, &str)]) -> Result<Value, String> {
        let p = kv.iter().fold(Params::new(), |p, (k, v)| p.with(k, *v));
        self.svc.call(action, &p, Role::Admin).map_err(|e| format!("{} {}", e.code, e.message))
    }

    fn ok(&self, action: &str, kv: &[(&str, &str)]) -> Value {
        self.call(action, kv).unwrap_or_else(|e| panic!("{action}: {e}"))
    }

    fn describe(&self, id: &str) -> Value {
        self.ok("DescribeVpnConnection", &[("VpnConnectionId", id)])
    }

    /// Every stored log line of the connection in the last 10 minutes, all pages.
    fn logs(&self, id: &str) -> Vec<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let (from, to) = ((now - 590).to_string(), (now + 5).to_string());
        let mut out = Vec::new();
        for page in 1.. {
            let pn = page.to_string();
            let a = self.ok(
                "DescribeVpnConnectionLogs",
                &[("VpnConnectionId", id), ("From", &from), ("To", &to), ("PageNumber", &pn), ("PageSize", "50")],
            );
            out.extend(a["Data"]["Logs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
            if a["IsCompleted"] == Value::Bool(true) {
                break;
            }
        }
        out
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Steps the peer (if any) until `cond` holds (at most `secs`).
fn wait(peer: &mut Option<Peer>, secs: u64, what: &str, mut cond: impl FnMut(&mut Option<Peer>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond(peer) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        match peer.as_mut() {
            Some(p) => p.daemon.step(Duration::from_millis(10)).unwrap(),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Waits (stepping the peer) until the connection's stored log has every one of `steps` (the IKE
/// side stores log lines from a writer thread, a moment after they happen).
fn wait_logs(peer: &mut Option<Peer>, side: &Side, id: &str, steps: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = side.logs(id);
        let missing: Vec<&&str> = steps.iter().filter(|s| !has(&logs, s)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "log lacks {missing:?}: {logs:#?}");
        match peer.as_mut() {
            Some(p) => p.daemon.step(Duration::from_millis(10)).unwrap(),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn installed_encr(p: &Peer) -> Vec<EncrAlg> {
    let live = p.sink.installed();
    p.sink
        .snapshot()
        .into_iter()
        .filter_map(|r| match r {
            SinkRecord::Install { sa, .. } if live.contains(&(sa.inbound_spi(), sa.outbound_spi())) => Some(sa.encr),
            _ => None,
        })
        .collect()
}

#[test]
fn api_drives_ike() {
    let dir = std::env::temp_dir().join(format!("ipsec-control-mgmt-ike-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("mgmt.db");
    let port = free_ports();
    let mut side = Side::start(&db, port);
    let mut peer_slot = Some(peer(port));

    let gw = side.ok("CreateVpnGateway", &[("PublicIp", "127.0.0.1"), ("Name", "gw")])["VpnGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let cgw = side.ok("CreateCustomerGateway", &[("IpAddress", "127.0.0.2")])["CustomerGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let ike = format!(
        r#"{{"IkeVersion":"ikev2","Psk":"{PSK}","IkeEncAlg":"aes256","IkeAuthAlg":"sha256","IkePfs":"group14"}}"#
    );
    let id = side.ok(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw),
            ("LocalSubnet", "192.0.2.0/24"),
            ("RemoteSubnet", "198.51.100.0/24"),
            ("EffectImmediately", "true"),
            ("IkeConfig", &ike),
            ("IpsecConfig", r#"{"IpsecEncAlg":"aes256","IpsecAuthAlg":"sha256","IpsecPfs":"group14"}"#),
        ],
    )["VpnConnectionId"]
        .as_str()
        .unwrap()
        .to_string();

    // Create → initiated at once → established; Describe shows it with times.
    wait(&mut peer_slot, 30, "the connection to come up", |_| side.describe(&id)["Status"] == "ipsec_sa_established");
    let p = peer_slot.as_ref().unwrap();
    assert_eq!(p.sink.installed().len(), 1, "the peer has the Child SA");
    assert_eq!(side.sink.installed(), vec![(p.sink.installed()[0].1, p.sink.installed()[0].0)]);
    let d = side.describe(&id);
    assert_eq!(d["IkeSaState"], "established", "{d}");
    assert_eq!(d["IpsecSaState"], "established", "{d}");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    for f in ["IkeSaEstablishedTime", "IpsecSaEstablishedTime"] {
        let t = d[f].as_u64().unwrap();
        assert!(t > now_ms - 60_000 && t <= now_ms, "{f} = {t}, now {now_ms}");
    }
    assert!(d.get("BytesIn").is_none(), "a recording sink counts nothing: no counters shown: {d}");
    wait_logs(
        &mut peer_slot,
        &side,
        &id,
        &[
            "IKE_SA_INIT request sent to 127.0.0.2",
            "offering: aes256-sha256-prfsha256-modp2048",
            "IKE_SA_INIT response received from 127.0.0.2",
            "proposal chosen: aes256-sha256-prfsha256-modp2048",
            "IKE_AUTH request sent",
            "AUTH ok: IKE SA established",
            "Child SA installed: spi_in=",
            " aes256-sha256 local 192.0.2.0/24 remote 198.51.100.0/24",
        ],
    );

    // Modify without a negotiated change (the name): nothing is re-negotiated.
    let before = peer_slot.as_ref().unwrap().sink.installed();
    side.ok("ModifyVpnConnectionAttribute", &[("VpnConnectionId", &id), ("Name", "renamed")]);
    wait_logs(&mut peer_slot, &side, &id, &["configuration changed; nothing negotiated changed"]);
    for _ in 0..30 {
        peer_slot.as_mut().unwrap().daemon.step(Duration::from_millis(10)).unwrap();
    }
    assert_eq!(peer_slot.as_ref().unwrap().sink.installed(), before, "same SA at the peer");
    let p = peer_slot.as_ref().unwrap();

    // Modify a negotiated parameter → re-negotiated: the peer ends with one Child SA, AES-128.
    let old = p.sink.installed()[0];
    side.ok("ModifyVpnConnectionAttribute", &[("VpnConnectionId", &id), ("IpsecConfig", r#"{"IpsecEncAlg":"aes"}"#)]);
    wait(&mut peer_slot, 30, "the re-negotiation", |p| {
        let p = p.as_ref().unwrap();
        let inst = p.sink.installed();
        inst.len() == 1 && inst[0] != old && installed_encr(p) == vec![EncrAlg::AES128_CBC]
    });
    wait(&mut peer_slot, 10, "the new status", |_| side.describe(&id)["Status"] == "ipsec_sa_established");
    wait_logs(&mut peer_slot, &side, &id, &["configuration changed: re-negotiating", "DELETE of the IKE SA sent"]);

    // The peer vanishes (no DELETE) → DPD → peer dead → re-initiation with back-off → back up once
    // the peer is there again.
    drop(peer_slot.take());
    wait(&mut peer_slot, 30, "DPD to declare the peer dead", |_| has(&side.logs(&id), "DPD: peer dead"));
    // (The status is published right after the log line.)
    wait(&mut peer_slot, 3, "the status to follow", |_| side.describe(&id)["Status"] != "ipsec_sa_established");
    let d = side.describe(&id);
    assert_eq!(d["IpsecSaEstablishedTime"], 0, "{d}");
    assert_eq!(d["IpsecSaState"], "down", "{d}");
    wait(&mut peer_slot, 10, "the first re-initiation", |_| has(&side.logs(&id), "re-initiating (after 1 s back-off)"));
    peer_slot = Some(peer(port));
    wait(&mut peer_slot, 40, "the connection to come back", |_| side.describe(&id)["Status"] == "ipsec_sa_established");
    wait_logs(&mut peer_slot, &side, &id, &["DPD: liveness check sent", "peer dead: re-initiating in 1 s"]);

    // EffectImmediately = false waits, IKEv1 included (no "not supported" any more).
    let cgw3 = side.ok("CreateCustomerGateway", &[("IpAddress", "127.0.0.3")])["CustomerGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let v1 = side.ok(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw3),
            ("LocalSubnet", "192.0.2.0/24"),
            ("RemoteSubnet", "203.0.113.0/24"),
            ("IkeConfig", &format!(r#"{{"IkeVersion":"ikev1","Psk":"{PSK}"}}"#)),
        ],
    )["VpnConnectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let cgw4 = side.ok("CreateCustomerGateway", &[("IpAddress", "127.0.0.4")])["CustomerGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let lazy = side.ok(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw4),
            ("LocalSubnet", "192.0.2.0/24"),
            ("RemoteSubnet", "203.0.113.0/24"),
            ("EffectImmediately", "false"),
            ("IkeConfig", &format!(r#"{{"IkeVersion":"ikev2","Psk":"{PSK}"}}"#)),
        ],
    )["VpnConnectionId"]
        .as_str()
        .unwrap()
        .to_string();
    wait(&mut peer_slot, 10, "the IKEv1 connection's log", |_| has(&side.logs(&v1), "waiting for traffic"));
    assert!(!has(&side.logs(&v1), "not supported"), "{:?}", side.logs(&v1));
    wait(&mut peer_slot, 10, "the lazy connection's log", |_| has(&side.logs(&lazy), "waiting for traffic"));
    assert_eq!(side.describe(&lazy)["IkeSaState"], "down");
    assert!(!has(&side.logs(&lazy), "IKE_SA_INIT request sent"));
    // Modified to EffectImmediately = true: initiates now (nobody answers at 127.0.0.4).
    side.ok("ModifyVpnConnectionAttribute", &[("VpnConnectionId", &lazy), ("EffectImmediately", "true")]);
    wait(&mut peer_slot, 10, "the lazy connection to initiate", |_| {
        has(&side.logs(&lazy), "IKE_SA_INIT request sent to 127.0.0.4")
    });
    wait(&mut peer_slot, 3, "the status to follow", |_| side.describe(&lazy)["IkeSaState"] == "connecting");
    side.ok("DeleteVpnConnection", &[("VpnConnectionId", &lazy)]);

    // Restart of the IKE side: the stored connections are replayed and come up again. (The
    // shutdown deletes the SAs at the peer first.)
    side.stop();
    wait(&mut peer_slot, 10, "the peer to see the shutdown's DELETE", |p| {
        p.as_ref().unwrap().sink.installed().is_empty()
    });
    let first_log = side.log.text();
    drop(side);
    let side = Side::start(&db, port);
    wait(&mut peer_slot, 30, "the replayed connection to come up", |_| {
        side.describe(&id)["Status"] == "ipsec_sa_established"
    });
    assert!(side.log.text().contains("replaying 2 stored VPN connection(s)"), "{}", side.log.text());

    assert!(!side.logs(&id).iter().any(|l| l.contains(PSK)), "a stored log line shows the PSK");

    // Delete → DELETE to the peer, which removes its SAs; the connection and its status are gone.
    side.ok("DeleteVpnConnection", &[("VpnConnectionId", &id)]);
    wait(&mut peer_slot, 15, "the peer to remove its SAs", |p| p.as_ref().unwrap().sink.installed().is_empty());
    wait(&mut peer_slot, 15, "our SAs to go", |_| side.sink.installed().is_empty());
    assert!(side.call("DescribeVpnConnection", &[("VpnConnectionId", &id)]).is_err());
    let peer_log = peer_slot.as_ref().unwrap().log.text();
    assert!(peer_log.contains("IKE_SA closed"), "{peer_log}");

    // No PSK anywhere: stored logs of every connection, both daemons' logs.
    assert!(!side.logs(&v1).iter().any(|l| l.contains(PSK)));
    for (name, text) in [("first", first_log), ("second", side.log.text()), ("peer", peer_log)] {
        assert!(!text.contains(PSK), "{name} daemon log shows the PSK");
    }
    drop(side);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn api_drives_ikev1() {
    let dir = std::env::temp_dir().join(format!("ipsec-control-mgmt-ikev1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_ports();
    let side = Side::start(&dir.join("mgmt.db"), port);
    let peer_cfg = peer_config_with(port, "ike_version = 1", "mode = \"aggressive\"");
    let mut peer_slot = Some(peer_with(peer_cfg));
    let gw = side.ok("CreateVpnGateway", &[("PublicIp", "127.0.0.1"), ("Name", "gw")])["VpnGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let cgw = side.ok("CreateCustomerGateway", &[("IpAddress", "127.0.0.2")])["CustomerGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    let ike = format!(
        r#"{{"IkeVersion":"ikev1","IkeMode":"aggressive","Psk":"{PSK}","IkeEncAlg":"aes256","IkeAuthAlg":"sha256","IkePfs":"group14"}}"#
    );
    let id = side.ok(
        "CreateVpnConnection",
        &[
            ("VpnGatewayId", &gw),
            ("CustomerGatewayId", &cgw),
            ("LocalSubnet", "192.0.2.0/24"),
            ("RemoteSubnet", "198.51.100.0/24"),
            ("EffectImmediately", "true"),
            ("IkeConfig", &ike),
            ("IpsecConfig", r#"{"IpsecEncAlg":"aes256","IpsecAuthAlg":"sha256","IpsecPfs":"group14"}"#),
        ],
    )["VpnConnectionId"]
        .as_str()
        .unwrap()
        .to_string();
    wait(&mut peer_slot, 30, "the IKEv1 connection to come up", |_| {
        side.describe(&id)["Status"] == "ipsec_sa_established"
    });
    // The quick-mode responder installs at message 3, after the initiator.
    wait(&mut peer_slot, 5, "the peer's IPsec SA", |p| p.as_ref().unwrap().sink.installed().len() == 1);
    let p = peer_slot.as_ref().unwrap();
    assert_eq!(side.sink.installed(), vec![(p.sink.installed()[0].1, p.sink.installed()[0].0)]);
    assert!(p.log.text().contains("IKEv1 Aggressive mode from 127.0.0.1:"), "{}", p.log.text());
    let d = side.describe(&id);
    assert_eq!(d["IkeSaState"], "established", "{d}");
    assert_eq!(d["IpsecSaState"], "established", "{d}");
    assert!(d["IpsecSaEstablishedTime"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(installed_encr(p), vec![EncrAlg::AES256_CBC]);
    wait_logs(
        &mut peer_slot,
        &side,
        &id,
        &[
            "initiating IKEv1 Aggressive mode",
            "IKEv1 Aggressive Mode message sent to 127.0.0.2",
            "IKEv1 Quick Mode message received from 127.0.0.2",
            "IKEv1 ISAKMP SA established",
            "CHILD_SA installed spi_in=",
        ],
    );
    assert!(!side.logs(&id).iter().any(|l| l.contains(PSK)), "a stored log line shows the PSK");
    side.ok("DeleteVpnConnection", &[("VpnConnectionId", &id)]);
    wait(&mut peer_slot, 15, "the peer to remove its SAs", |p| p.as_ref().unwrap().sink.installed().is_empty());
    wait(&mut peer_slot, 15, "our SAs to go", |_| side.sink.installed().is_empty());
    // The ISAKMP SA's DELETE is its own informational exchange, after the IPsec SA's.
    wait(&mut peer_slot, 5, "the peer to close the ISAKMP SA", |p| {
        p.as_ref().unwrap().log.text().contains("IKEv1 ISAKMP SA closed")
    });
    let peer_log = peer_slot.as_ref().unwrap().log.text();
    for (name, text) in [("ours", side.log.text()), ("peer", peer_log)] {
        assert!(!text.contains(PSK), "{name} daemon log shows the PSK");
    }
    drop(side);
    let _ = std::fs::remove_dir_all(dir);
}
