//! Two in-process daemons, each attached to its own *fake engine* (an `ipsec_channel::listen`
//! socket served by a thread that applies the channel's requests to a table, like the engine's
//! reconciliation does). The fake engines relay each other's `SendIke` as `IkeReceived` (a virtual
//! wire), so IKE runs purely over the channel. Checked: trap tunnels before any SA; `Acquire`
//! initiates a connection with `effect_immediately = false`; both engines get tunnels and SAs whose
//! keys match crosswise; a Child SA rekey adds the new inbound SA before the outbound switch and
//! before the old SA goes (on both sides); `RekeyRequested` rekeys; a reconnect to the same engine
//! restates everything and the engine keeps it; a restarted engine (new `boot_id`, empty) gets the
//! same SAs back; `Expired` deletes the Child SA on both sides; `Acquire` on an IKE SA without a
//! Child SA creates one; connections added and removed at run time publish and remove their trap
//! tunnels; the engine's SA counters show in the connection status; no error replies; neither PSK nor key bytes in the logs.
//! Both daemons initiating at once end with one Child SA each way in both engines, without an
//! engine ever being switched back to an outbound SA it had left.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipsec_channel::{
    listen, Conn, ControlMsg, Direction, EngineMsg, Event, IkeDatagram, Limit, Request, Response, SaSpec, TunnelSpec,
    PROTOCOL_VERSION,
};
use ipsec_control::config::DaemonConfig;
use ipsec_control::engine_link::{attach, EngineSink};
use ipsec_control::log::Logger;
use ipsec_control::Daemon;

const PSK: &str = "channel-test-psk-8d7c6b5a4f3e";

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

// ---------------------------------------------------------------------------------------------
// The fake engine

type SaKey = (String, bool, u32); // (tunnel, outbound?, spi)

#[derive(Default)]
struct State {
    boot_id: u64,
    /// Announced protocol version override (to test a mismatch).
    version: Option<u16>,
    sessions: u32,
    tunnels: BTreeMap<String, TunnelSpec>,
    sas: BTreeMap<SaKey, SaSpec>,
    /// Every request since the last restart, in order.
    requests: Vec<Request>,
    /// Error replies sent.
    errors: Vec<String>,
    /// (added, replaced, kept, removed) of the last EndSync.
    last_sync: Option<(u32, u32, u32, u32)>,
    /// Datagrams relayed out, with their local port and first bytes (marker check).
    sent_ike: Vec<(u16, Vec<u8>)>,
    sync: Option<SyncMark>,
}

#[derive(Default)]
struct SyncMark {
    generation: u64,
    tunnels: Vec<String>,
    sas: Vec<SaKey>,
    added: u32,
    replaced: u32,
    kept: u32,
}

enum Cmd {
    Deliver(IkeDatagram),
    Event(Event),
    /// Close the session, keep state (the control side reconnects to the same engine).
    DropSession,
    /// Lose everything and come back with a new boot_id.
    Restart,
}

struct FakeEngine {
    state: Arc<Mutex<State>>,
    tx: Sender<Cmd>,
    peer: Arc<Mutex<Option<Sender<Cmd>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeEngine {
    fn start(path: PathBuf, boot_id: u64) -> Self {
        let state = Arc::new(Mutex::new(State { boot_id, ..State::default() }));
        let (tx, rx) = channel();
        let peer: Arc<Mutex<Option<Sender<Cmd>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, p, st) = (Arc::clone(&state), Arc::clone(&peer), Arc::clone(&stop));
        let thread = std::thread::spawn(move || serve(&path, &s, &rx, &p, &st));
        FakeEngine { state, tx, peer, stop, thread: Some(thread) }
    }

    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    fn send(&self, c: Cmd) {
        self.tx.send(c).unwrap();
    }

    fn sas(&self, out: bool) -> Vec<SaSpec> {
        self.with(|s| s.sas.iter().filter(|(k, _)| k.0 == "lo" && k.1 == out).map(|(_, v)| v.clone()).collect())
    }

    fn spis(&self, out: bool) -> Vec<u32> {
        self.sas(out).iter().map(|s| s.spi).collect()
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(path: &Path, state: &Mutex<State>, rx: &Receiver<Cmd>, peer: &Mutex<Option<Sender<Cmd>>>, stop: &AtomicBool) {
    let mut listener = listen(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
                let mut c = Conn::new(s);
                let (boot_id, n, version) = {
                    let mut st = state.lock().unwrap();
                    st.sessions += 1;
                    (st.boot_id, st.sas.len() as u32, st.version.unwrap_or(PROTOCOL_VERSION))
                };
                let hello = EngineMsg::Hello { version, engine: "fake".into(), boot_id, control_sas: n };
                if c.send(&hello).is_ok() {
                    conn = Some(c); // a new session replaces the previous one
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(c) = conn.as_mut() {
            loop {
                match c.recv::<ControlMsg>() {
                    Ok(Some(m)) => {
                        let reply = handle(state, peer, m);
                        if let Some(r) = reply {
                            if c.send(&r).is_err() {
                                conn = None;
                                break;
                            }
                        }
                    }
                    Ok(None) => {
                        conn = None;
                        break;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                    Err(_) => {
                        conn = None;
                        break;
                    }
                }
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Deliver(d) => {
                    if let Some(c) = conn.as_mut() {
                        let _ = c.send(&EngineMsg::IkeReceived(d));
                    }
                }
                Cmd::Event(e) => {
                    if let Some(c) = conn.as_mut() {
                        let _ = c.send(&EngineMsg::Event(e));
                    }
                }
                Cmd::DropSession => conn = None,
                Cmd::Restart => {
                    conn = None;
                    drop(listener);
                    {
                        let mut st = state.lock().unwrap();
                        let (boot_id, version) = (st.boot_id + 1, st.version);
                        *st = State { boot_id, version, ..State::default() };
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    listener = listen(path).unwrap();
                    listener.set_nonblocking(true).unwrap();
                }
            }
        }
        if conn.is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn handle(state: &Mutex<State>, peer: &Mutex<Option<Sender<Cmd>>>, m: ControlMsg) -> Option<EngineMsg> {
    let mut st = state.lock().unwrap();
    match m {
        ControlMsg::Hello { version, .. } => {
            assert_eq!(version, PROTOCOL_VERSION);
            None
        }
        ControlMsg::SendIke(d) => {
            st.sent_ike.push((d.local.port(), d.payload.iter().take(4).copied().collect()));
            // The virtual wire: what leaves here arrives at the peer engine, addresses swapped.
            if let Some(p) = peer.lock().unwrap().as_ref() {
                let _ = p.send(Cmd::Deliver(IkeDatagram { local: d.remote, remote: d.local, payload: d.payload }));
            }
            None
        }
        ControlMsg::Request { id, req } => {
            st.requests.push(req.clone());
            let result = apply(&mut st, req);
            if let Err(e) = &result {
                st.errors.push(e.clone());
            }
            Some(EngineMsg::Reply { id, result })
        }
    }
}

/// The channel's semantics, as a table (see the `ipsec_channel` contract).
fn apply(st: &mut State, req: Request) -> Result<Response, String> {
    match req {
        Request::BeginSync { generation } => {
            st.sync = Some(SyncMark { generation, ..SyncMark::default() });
            Ok(Response::Done)
        }
        Request::EndSync { generation } => {
            let m = st.sync.take().ok_or("EndSync without BeginSync")?;
            if m.generation != generation {
                return Err(format!("generation {generation} != {}", m.generation));
            }
            let before = st.sas.len();
            st.tunnels.retain(|n, _| m.tunnels.contains(n));
            let tunnels = st.tunnels.clone();
            st.sas.retain(|k, _| m.sas.contains(k) && tunnels.contains_key(&k.0));
            let removed = (before - st.sas.len()) as u32;
            st.last_sync = Some((m.added, m.replaced, m.kept, removed));
            Ok(Response::SyncDone { generation, added: m.added, replaced: m.replaced, kept: m.kept, removed })
        }
        Request::UpsertTunnel(t) => {
            if let Some(m) = st.sync.as_mut() {
                m.tunnels.push(t.name.clone());
            }
            st.tunnels.insert(t.name.clone(), t);
            Ok(Response::Done)
        }
        Request::RemoveTunnel { name } => {
            st.tunnels.remove(&name).ok_or("no such tunnel")?;
            st.sas.retain(|k, _| k.0 != name);
            Ok(Response::Done)
        }
        Request::AddSa(sa) => {
            if !st.tunnels.contains_key(&sa.tunnel) {
                return Err(format!("tunnel {:?}: not installed", sa.tunnel));
            }
            let out = sa.direction == Direction::Out;
            let key = (sa.tunnel.clone(), out, sa.spi);
            if out {
                // One outbound SA per tunnel.
                st.sas.retain(|k, _| !(k.0 == sa.tunnel && k.1 && k.2 != sa.spi));
            }
            let old = st.sas.get(&key).cloned();
            if let Some(m) = st.sync.as_mut() {
                m.sas.push(key.clone());
                match &old {
                    None => m.added += 1,
                    Some(o) if *o == sa => m.kept += 1,
                    Some(_) => m.replaced += 1,
                }
            }
            st.sas.insert(key, sa);
            Ok(Response::Done)
        }
        Request::DeleteSa { tunnel, direction, spi } => {
            st.sas.remove(&(tunnel, direction == Direction::Out, spi)).ok_or("no such SA")?;
            Ok(Response::Done)
        }
        // Every SA reports 7 packets of 100 bytes.
        Request::Counters { .. } => Ok(Response::Counters(ipsec_channel::CountersReport {
            sas: st
                .sas
                .keys()
                .map(|(tunnel, out, spi)| ipsec_channel::SaCounters {
                    tunnel: tunnel.clone(),
                    direction: Some(if *out { Direction::Out } else { Direction::In }),
                    spi: *spi,
                    packets: 7,
                    bytes: 700,
                    drops: 0,
                    age_seconds: 1,
                })
                .collect(),
            workers: Vec::new(),
        })),
        Request::Ping => Ok(Response::Pong),
    }
}

// ---------------------------------------------------------------------------------------------
// The daemons

fn config(me: &str, peer: &str, ours: &str, theirs: &str) -> DaemonConfig {
    let doc = format!(
        r#"
[[connection]]
name = "lo"
local_addr = "{me}"
remote_addr = "{peer}"
local_subnets = ["{ours}"]
remote_subnets = ["{theirs}"]
psk = "{PSK}"
effect_immediately = false
force_encap = true
[connection.ike]
proposals = ["aes128gcm16-prfsha256-ecp256"]
[connection.ipsec]
proposals = ["aes256-sha256-modp2048", "aes128gcm16"]
"#
    );
    DaemonConfig::parse(&doc, None).unwrap()
}

struct World {
    a: Daemon,
    b: Daemon,
    ea: FakeEngine,
    eb: FakeEngine,
    sink_a: EngineSink,
}

impl World {
    fn step_until(&mut self, what: &str, until: impl Fn(&World) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !until(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.a.step(Duration::from_millis(3)).unwrap();
            self.b.step(Duration::from_millis(3)).unwrap();
        }
    }

    /// Both engines hold one SA each way for "lo", and A's inbound is B's outbound (same SPI,
    /// algorithms, keys) and vice versa.
    fn crosswise(&self) -> bool {
        let (ai, ao, bi, bo) = (self.ea.sas(false), self.ea.sas(true), self.eb.sas(false), self.eb.sas(true));
        let same = |x: &SaSpec, y: &SaSpec| {
            x.spi == y.spi
                && x.cipher == y.cipher
                && x.integrity == y.integrity
                && x.enc_key == y.enc_key
                && x.auth_key == y.auth_key
                && !x.enc_key.expose().is_empty()
        };
        ao.len() == 1 && bo.len() == 1 && ai.iter().any(|i| same(i, &bo[0])) && bi.iter().any(|i| same(i, &ao[0]))
    }

    fn settled(&self) -> bool {
        self.crosswise() && self.ea.sas(false).len() == 1 && self.eb.sas(false).len() == 1
    }
}

fn pos(reqs: &[Request], f: impl Fn(&Request) -> bool) -> usize {
    reqs.iter().position(f).unwrap_or_else(|| panic!("request not found in {reqs:?}"))
}

fn is_add(r: &Request, out: bool, spi: u32) -> bool {
    matches!(r, Request::AddSa(s) if s.spi == spi && (s.direction == Direction::Out) == out)
}

fn is_del_in(r: &Request, spi: u32) -> bool {
    matches!(r, Request::DeleteSa { direction: Direction::In, spi: s, .. } if *s == spi)
}

#[test]
fn ike_and_sas_over_the_engine_channel() {
    let dir = std::env::temp_dir().join(format!("ipsec-control-chan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (pa, pb) = (dir.join("ea/control.sock"), dir.join("eb/control.sock"));
    let ea = FakeEngine::start(pa.clone(), 100);
    let eb = FakeEngine::start(pb.clone(), 200);
    *ea.peer.lock().unwrap() = Some(eb.tx.clone());
    *eb.peer.lock().unwrap() = Some(ea.tx.clone());
    // Let the listeners exist before the daemons connect (they would retry anyway).
    std::thread::sleep(Duration::from_millis(50));

    let (la, lb) = (Buf::default(), Buf::default());
    let ca = config("198.18.0.1", "198.18.0.2", "192.0.2.0/24", "198.51.100.0/24");
    let cb = config("198.18.0.2", "198.18.0.1", "198.51.100.0/24", "192.0.2.0/24");
    let log_a = Logger::new(Box::new(la.clone()));
    let log_b = Logger::new(Box::new(lb.clone()));
    let (sink_a, ike_a) = attach(&pa, &ca, log_a.clone()).unwrap();
    let (sink_b, ike_b) = attach(&pb, &cb, log_b.clone()).unwrap();
    let a = Daemon::with_transport(ca, Box::new(sink_a.clone()), Box::new(ike_a), log_a).unwrap();
    let b = Daemon::with_transport(cb, Box::new(sink_b), Box::new(ike_b), log_b).unwrap();
    let mut w = World { a, b, ea, eb, sink_a };
    w.a.start();
    w.b.start();

    // 1. Trap tunnels from the configuration, no SA, nothing negotiated (effect_immediately = false).
    w.step_until("the trap tunnels", |w| {
        w.ea.with(|s| s.tunnels.contains_key("lo") && s.last_sync.is_some())
            && w.eb.with(|s| s.tunnels.contains_key("lo") && s.last_sync.is_some())
    });
    for _ in 0..20 {
        w.a.step(Duration::from_millis(3)).unwrap();
        w.b.step(Duration::from_millis(3)).unwrap();
    }
    assert!(w.ea.with(|s| s.sas.is_empty() && s.sent_ike.is_empty()), "nothing negotiated before the acquire");
    let t = w.ea.with(|s| s.tunnels["lo"].clone());
    assert_eq!(t.remote_subnets, vec!["198.51.100.0/24".parse().unwrap()]);
    assert_eq!(t.remote_addr, "198.18.0.2".parse::<std::net::IpAddr>().unwrap());

    // 2. Acquire: A initiates, IKE runs over the channel, both engines get the SAs.
    w.ea.send(Cmd::Event(Event::Acquire { tunnel: "lo".into() }));
    w.step_until("the first Child SA", World::settled);
    let t = w.ea.with(|s| s.tunnels["lo"].clone());
    assert_eq!(t.local_subnets, vec!["192.0.2.0/24".parse().unwrap()]);
    assert_eq!(t.remote_subnets, vec!["198.51.100.0/24".parse().unwrap()]);
    let encap = t.udp_encap.expect("force_encap: UDP encapsulation");
    assert_eq!((encap.local_port, encap.remote_port), (4500, 4500));
    // IKE moved to 4500 with the non-ESP marker, through the engine.
    assert!(w.ea.with(|s| s.sent_ike.iter().any(|(port, head)| *port == 4500 && head == &[0, 0, 0, 0])));
    assert!(la.text().contains("acquire"), "{}", la.text());
    let sa = &w.ea.sas(true)[0];
    assert_eq!((sa.cipher.as_str(), sa.integrity.as_str()), ("aes256", "sha256"));
    assert!(sa.lifetime.hard_seconds > 0);
    // The engine's SA counters reach the connection's status (DescribeVpnConnection in `serve`).
    w.step_until("the engine's counters in the status", |w| {
        w.a.connection_status("lo")
            .and_then(|s| s.counters)
            .is_some_and(|k| (k.packets_in, k.packets_out, k.bytes_in, k.bytes_out) == (7, 7, 700, 700))
    });

    // 3. Our Child SA rekey: make-before-break in both engines.
    let (a_in0, a_out0) = (w.ea.spis(false)[0], w.ea.spis(true)[0]);
    w.a.command("rekey-child lo", Instant::now()).unwrap();
    w.step_until("the rekey", |w| w.settled() && w.ea.spis(false)[0] != a_in0);
    let (a_in1, a_out1) = (w.ea.spis(false)[0], w.ea.spis(true)[0]);
    assert_ne!(a_out1, a_out0);
    let ra = w.ea.with(|s| s.requests.clone());
    let (add_in, add_out, del_old) = (
        pos(&ra, |r| is_add(r, false, a_in1)),
        pos(&ra, |r| is_add(r, true, a_out1)),
        pos(&ra, |r| is_del_in(r, a_in0)),
    );
    assert!(add_in < add_out && add_out < del_old, "A (rekey initiator): {ra:?}");
    // B answered the rekey: its new outbound SA waits until A retires the old SA.
    let rb = w.eb.with(|s| s.requests.clone());
    let (add_in, add_out, del_old) = (
        pos(&rb, |r| is_add(r, false, a_out1)),
        pos(&rb, |r| is_add(r, true, a_in1)),
        pos(&rb, |r| is_del_in(r, a_out0)),
    );
    assert!(add_in < del_old && del_old < add_out, "B (rekey responder): {rb:?}");

    // 4. The engine asks for a rekey (soft limit on B's inbound SA).
    w.eb.send(Cmd::Event(Event::RekeyRequested {
        tunnel: "lo".into(),
        direction: Direction::In,
        spi: a_out1,
        limit: Limit::Bytes,
    }));
    w.step_until("the engine-requested rekey", |w| w.settled() && w.eb.spis(false)[0] != a_out1);
    assert!(lb.text().contains("data plane asks to rekey"), "{}", lb.text());

    // 5. Reconnect to the same engine: full restatement, everything kept.
    let syncs = w.sink_a.syncs();
    let before = w.ea.with(|s| (s.tunnels.clone(), s.sas.clone()));
    w.ea.send(Cmd::DropSession);
    w.step_until("the resync", |w| w.sink_a.syncs() > syncs);
    let (added, replaced, kept, removed) = w.ea.with(|s| s.last_sync.unwrap());
    assert_eq!((added, replaced, removed), (0, 0, 0));
    assert_eq!(kept as usize, before.1.len());
    assert_eq!(w.ea.with(|s| (s.tunnels.clone(), s.sas.clone())), before);

    // 6. The engine restarts (empty, new boot_id): the same SAs come back.
    let syncs = w.sink_a.syncs();
    w.ea.send(Cmd::Restart);
    w.step_until("the restatement", |w| w.sink_a.syncs() > syncs);
    assert_eq!(w.sink_a.boot_id(), Some(101));
    let (added, _, kept, _) = w.ea.with(|s| s.last_sync.unwrap());
    assert_eq!((added as usize, kept), (before.1.len(), 0));
    assert_eq!(w.ea.with(|s| (s.tunnels.clone(), s.sas.clone())), before, "restated set");
    assert!(la.text().contains("engine restarted"), "{}", la.text());
    assert!(w.ea.with(|s| matches!(s.requests.first(), Some(Request::BeginSync { .. }))));
    // IKE still works over the new session.
    w.step_until("settled", World::settled);

    // 7. Expiry in A's data plane: the Child SA is deleted on both sides (IKE DELETE), the trap
    // tunnels stay.
    let a_out = w.ea.spis(true)[0];
    w.ea.send(Cmd::Event(Event::Expired {
        tunnel: "lo".into(),
        direction: Direction::Out,
        spi: a_out,
        limit: Limit::Time,
    }));
    w.step_until("the deletes", |w| w.ea.with(|s| s.sas.is_empty()) && w.eb.with(|s| s.sas.is_empty()));
    assert!(w.ea.with(|s| s.tunnels.contains_key("lo")) && w.eb.with(|s| s.tunnels.contains_key("lo")));

    // 8. Acquire with the IKE SA up but no Child SA: a new Child SA.
    w.ea.send(Cmd::Event(Event::Acquire { tunnel: "lo".into() }));
    w.step_until("the new Child SA", World::settled);
    assert!(la.text().contains("creating a CHILD_SA"), "{}", la.text());

    // 9. A connection added at run time gets its trap tunnel; removed, the tunnel goes.
    let extra = config("198.18.0.1", "198.18.0.3", "192.0.2.0/24", "203.0.113.0/24");
    let mut spec = extra.connections[0].clone();
    spec.name = "rt".into();
    w.a.add_connection(spec, Instant::now()).unwrap();
    w.step_until("the run-time tunnel", |w| w.ea.with(|s| s.tunnels.contains_key("rt")));
    assert_eq!(w.ea.with(|s| s.tunnels["rt"].remote_subnets.clone()), vec!["203.0.113.0/24".parse().unwrap()]);
    w.a.remove_connection("rt", Instant::now()).unwrap();
    w.step_until("the run-time tunnel's removal", |w| w.ea.with(|s| !s.tunnels.contains_key("rt")));
    assert!(w.ea.with(|s| s.tunnels.contains_key("lo")));

    // No request was refused, no secret was logged.
    assert_eq!(w.ea.with(|s| s.errors.clone()), Vec::<String>::new());
    assert_eq!(w.eb.with(|s| s.errors.clone()), Vec::<String>::new());
    let keys: Vec<String> = w
        .ea
        .with(|s| s.sas.values().map(|v| v.enc_key.expose().iter().map(|b| format!("{b:02x}")).collect()).collect());
    for (name, log) in [("a", la.text()), ("b", lb.text())] {
        assert!(!log.contains(PSK), "{name}'s log shows the PSK");
        for k in &keys {
            assert!(!log.contains(k.as_str()), "{name}'s log shows key material");
        }
    }
    drop(w);
    let _ = std::fs::remove_dir_all(dir);
}

/// A daemon started before its engine: connection attempts back off with bounded logging; the
/// engine holds SAs of a previous control process, which stay (no immediate restatement) until the
/// takeover grace ends; a protocol version mismatch is refused without any request.
#[test]
fn late_engine_takeover_and_version_mismatch() {
    let dir = std::env::temp_dir().join(format!("ipsec-control-chan2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("e/control.sock");
    let buf = Buf::default();
    let log = Logger::new(Box::new(buf.clone()));
    let cfg = config("198.18.0.1", "198.18.0.2", "192.0.2.0/24", "198.51.100.0/24");
    let (sink, ike) = attach(&path, &cfg, log.clone()).unwrap();
    sink.set_takeover_grace(Duration::from_millis(500));
    let mut d = Daemon::with_transport(cfg, Box::new(sink.clone()), Box::new(ike), log).unwrap();
    d.start();
    let steps = |d: &mut Daemon, n: usize| {
        for _ in 0..n {
            d.step(Duration::from_millis(10)).unwrap();
        }
    };
    let until = |d: &mut Daemon, what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            d.step(Duration::from_millis(10)).unwrap();
        }
    };
    // ~1.5 s without an engine: several attempts (100, 200, 400, 800 ms back-off), few log lines.
    steps(&mut d, 150);
    assert!(!sink.connected());
    let attempts = buf.text().matches("(attempt").count();
    assert!((1..=4).contains(&attempts), "{}", buf.text());

    // The engine appears, holding a tunnel and SAs of a previous control process.
    let e = FakeEngine::start(path.clone(), 7);
    {
        let mut st = e.state.lock().unwrap();
        let mut t = cfg_tunnel();
        t.remote_subnets = vec!["198.51.100.0/24".parse().unwrap()];
        st.tunnels.insert("lo".into(), t);
        for (out, spi) in [(false, 0x1111_1111), (true, 0x2222_2222)] {
            let sa = SaSpec {
                tunnel: "lo".into(),
                direction: if out { Direction::Out } else { Direction::In },
                spi,
                cipher: "aes128gcm16".into(),
                enc_key: ipsec_channel::Secret::new(vec![7; 20]),
                integrity: "none".into(),
                auth_key: ipsec_channel::Secret::default(),
                esn: false,
                replay_window: 64,
                lifetime: Default::default(),
            };
            st.sas.insert(("lo".into(), out, spi), sa);
        }
    }
    until(&mut d, "the session", &|| sink.connected());
    let t0 = Instant::now();
    until(&mut d, "the trap tunnel", &|| e.with(|s| s.requests.iter().any(|r| matches!(r, Request::UpsertTunnel(_)))));
    // Within the grace the old SAs stay and no sync has begun.
    assert!(e.with(|s| s.sas.len() == 2 && !s.requests.iter().any(|r| matches!(r, Request::BeginSync { .. }))));
    assert!(buf.text().contains("previous control process"), "{}", buf.text());
    until(&mut d, "the takeover restatement", &|| sink.syncs() == 1);
    assert!(t0.elapsed() >= Duration::from_millis(300), "restated too early");
    assert!(e.with(|s| s.sas.is_empty() && s.tunnels.contains_key("lo")), "old SAs removed, trap tunnel kept");
    assert_eq!(e.with(|s| s.last_sync), Some((0, 0, 0, 2)));

    // An engine speaking another protocol version gets no request.
    e.state.lock().unwrap().version = Some(PROTOCOL_VERSION + 1);
    e.send(Cmd::Restart);
    until(&mut d, "the mismatch", &|| buf.text().contains("protocol version"));
    steps(&mut d, 30);
    assert!(e.with(|s| s.requests.is_empty()), "requests sent to a mismatched engine");
    assert!(!sink.connected());
    let _ = std::fs::remove_dir_all(dir);
}

fn cfg_tunnel() -> TunnelSpec {
    TunnelSpec {
        name: "lo".into(),
        local_addr: "198.18.0.1".parse().unwrap(),
        remote_addr: "198.18.0.2".parse().unwrap(),
        local_subnets: vec!["192.0.2.0/24".parse().unwrap()],
        remote_subnets: vec![],
        routing: ipsec_channel::Routing::Destination,
        udp_encap: None,
        mtu: None,
    }
}

/// Both daemons initiate at once (effect_immediately on both) over their engines: two IKE SAs,
/// then exactly one Child SA each way in both engines, crosswise, and it stays so past the grace
/// period. No engine is ever switched back to an outbound SA it had left (re-adding an outbound
/// SA restarts its sequence numbers, which the peer's anti-replay check drops), and no request
/// is refused.
#[test]
fn both_daemons_initiating_over_the_engine_channel() {
    let dir = std::env::temp_dir().join(format!("ipsec-control-chan-dup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (pa, pb) = (dir.join("ea/control.sock"), dir.join("eb/control.sock"));
    let ea = FakeEngine::start(pa.clone(), 300);
    let eb = FakeEngine::start(pb.clone(), 400);
    *ea.peer.lock().unwrap() = Some(eb.tx.clone());
    *eb.peer.lock().unwrap() = Some(ea.tx.clone());
    std::thread::sleep(Duration::from_millis(50));

    let (la, lb) = (Buf::default(), Buf::default());
    let mut ca = config("198.18.0.1", "198.18.0.2", "192.0.2.0/24", "198.51.100.0/24");
    let mut cb = config("198.18.0.2", "198.18.0.1", "198.51.100.0/24", "192.0.2.0/24");
    ca.connections[0].effect_immediately = true;
    cb.connections[0].effect_immediately = true;
    let log_a = Logger::new(Box::new(la.clone()));
    let log_b = Logger::new(Box::new(lb.clone()));
    let (sink_a, ike_a) = attach(&pa, &ca, log_a.clone()).unwrap();
    let (sink_b, ike_b) = attach(&pb, &cb, log_b.clone()).unwrap();
    let a = Daemon::with_transport(ca, Box::new(sink_a.clone()), Box::new(ike_a), log_a).unwrap();
    let b = Daemon::with_transport(cb, Box::new(sink_b), Box::new(ike_b), log_b).unwrap();
    let mut w = World { a, b, ea, eb, sink_a };
    // Both sessions up first, so that both IKE_SA_INIT requests leave at once.
    w.step_until("the sessions", |w| w.ea.with(|s| s.last_sync.is_some()) && w.eb.with(|s| s.last_sync.is_some()));
    w.a.start();
    w.b.start();
    let inbound_adds = |e: &FakeEngine| {
        e.with(|s| s.requests.iter().filter(|r| matches!(r, Request::AddSa(x) if x.direction == Direction::In)).count())
    };
    w.step_until("two Child SAs on each end", |w| inbound_adds(&w.ea) >= 2 && inbound_adds(&w.eb) >= 2);
    w.step_until("one Child SA each way, crosswise", World::settled);
    let until = Instant::now() + ipsec_ike::endpoint::DUPLICATE_GRACE + Duration::from_secs(1);
    w.step_until("the grace period", |_| Instant::now() >= until);
    assert!(w.settled(), "still one Child SA each way");
    assert_eq!((inbound_adds(&w.ea), inbound_adds(&w.eb)), (2, 2), "no re-initiation");
    for (name, e, log) in [("a", &w.ea, &la), ("b", &w.eb, &lb)] {
        let outs: Vec<u32> = e.with(|s| {
            s.requests
                .iter()
                .filter_map(|r| match r {
                    Request::AddSa(x) if x.direction == Direction::Out => Some(x.spi),
                    _ => None,
                })
                .collect()
        });
        let mut switches = outs.clone();
        switches.dedup();
        let mut unique = switches.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(switches.len(), unique.len(), "{name}: switched back to an outbound SA: {outs:08x?}");
        assert_eq!(e.with(|s| s.errors.clone()), Vec::<String>::new());
        assert!(log.text().contains("duplicate IKE_SA spi_i="), "{name}: {}", log.text());
    }
    let deleting = |l: &Buf| l.text().contains("deleting it (we initiated it)");
    assert!(deleting(&la) ^ deleting(&lb), "exactly one end deleted the redundant SA");
    drop(w);
    let _ = std::fs::remove_dir_all(dir);
}
