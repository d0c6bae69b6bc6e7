//! The engine ↔ control channel end to end: two engines whose tunnels and SAs come only over the
//! channel, from this test acting as the control process (`ipsec_channel::Conn`).
//!
//! ```text
//!  ha: a0 192.0.2.2 ── g1i 192.0.2.1 [gw-1] g1o 198.18.0.1 ── g2o 198.18.0.2 [gw-2] g2i 198.51.100.1 ── b0 198.51.100.2, 203.0.113.2 :hb
//! ```
//!
//! Namespaces `chn<pid>{ha,g1,g2,hb}` (removed on exit, also on failure). Each engine runs with a
//! static configuration that has interfaces and gateway addresses but no tunnel, and serves its
//! channel on a socket in the test's directory. Checked, in order:
//! - the socket is mode 0600; `Hello` says version and 0 SAs;
//! - a tunnel with an inbound SA but no outbound SA: traffic raises an `Acquire` event naming it;
//! - with both SAs on both sides (tunnel `a`: 192.0.2.0/24 ↔ 198.51.100.0/24, route-based;
//!   tunnel `b`: 192.0.2.0/24 ↔ 203.0.113.0/24, flows on gw-2), pings pass both ways on both;
//!   counters read over the channel show packets and bytes;
//! - the test drops its sessions (control death): pings keep passing, and traffic for a tunnel
//!   without SA raises an `Acquire` that is delivered to the next session;
//! - it reconnects (`Hello` reports the SAs still held) and restates everything in a
//!   `BeginSync`/`EndSync`: `SyncDone` says every SA was kept, pings pass, and the outbound SA's
//!   packet counter continues from where it was (the same SA object, so its sequence numbers go on);
//! - IKE punt: a datagram to 198.18.0.1:500 from gw-2's namespace arrives as `IkeReceived`, byte
//!   for byte; `SendIke` on gw-1 reaches a plain UDP socket in gw-2's namespace; and an IKE
//!   message on 4500 (non-ESP marker) sent by gw-1's `SendIke` to gw-2:4500 arrives at gw-2's
//!   control session;
//! - a sync on gw-1 that omits tunnel `b` removes it (`removed: 2`) and traffic to 203.0.113.2
//!   stops, while tunnel `a` keeps passing.
//!
//! Needs root. Without root it prints "SKIPPED: ..." and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

mod common;
use common::engine::EngineProcess;
use common::run;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ipsec_channel::{
    Conn, ControlMsg, Direction, EngineMsg, Event, IkeDatagram, Lifetime, Request, Response, Routing, SaSpec, Secret,
    TunnelSpec, PROTOCOL_VERSION,
};

const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const HOST_B2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn can_run() -> bool {
    common::can_run("chn", "channel")
}

struct Topology {
    p: String,
    created: Vec<String>,
    dir: PathBuf,
}

impl Topology {
    fn ns(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    fn new() -> Topology {
        let p = format!("chn{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{p}-files"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Topology { p, created: Vec::new(), dir };
        for s in ["ha", "g1", "g2", "hb"] {
            let ns = t.ns(s);
            run(&["ip", "netns", "add", &ns]);
            t.created.push(ns.clone());
            for knob in ["all", "default"] {
                run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv6.conf.{knob}.disable_ipv6=1")]);
            }
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        for (na, da, nb, db) in [("ha", "a0", "g1", "g1i"), ("g1", "g1o", "g2", "g2o"), ("g2", "g2i", "hb", "b0")] {
            #[rustfmt::skip]
            run(&["ip", "-n", &t.ns(na), "link", "add", &t.ns(da), "type", "veth", "peer", "name", &t.ns(db),
                  "netns", &t.ns(nb)]);
        }
        for (ns, dev) in [("g1", "g1o"), ("g2", "g2o")] {
            run(&["ip", "-n", &t.ns(ns), "link", "set", &t.ns(dev), "mtu", "1600"]);
        }
        for (ns, dev, addr) in [
            ("ha", "a0", "192.0.2.2/24"),
            ("g1", "g1i", "192.0.2.1/24"),
            ("g1", "g1o", "198.18.0.1/24"),
            ("g2", "g2o", "198.18.0.2/24"),
            ("g2", "g2i", "198.51.100.1/24"),
            ("hb", "b0", "198.51.100.2/24"),
            ("hb", "b0", "203.0.113.2/24"),
        ] {
            run(&["ip", "-n", &t.ns(ns), "addr", "add", addr, "dev", &t.ns(dev)]);
            run(&["ip", "-n", &t.ns(ns), "link", "set", &t.ns(dev), "up"]);
        }
        run(&["ip", "-n", &t.ns("ha"), "route", "add", "default", "via", "192.0.2.1"]);
        run(&["ip", "-n", &t.ns("hb"), "route", "add", "default", "via", "198.51.100.1"]);
        run(&["ip", "-n", &t.ns("g2"), "route", "add", "203.0.113.0/24", "via", "198.51.100.2"]);
        for (ns, dev) in [("ha", "a0"), ("hb", "b0")] {
            run(&["ip", "netns", "exec", &t.ns(ns), "ethtool", "-K", &t.ns(dev), "tx", "off"]);
        }
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running engine with its control socket; stopped (SIGTERM, then SIGKILL) on drop.
struct Engine {
    process: EngineProcess,
    socket: PathBuf,
}

impl Engine {
    fn start(t: &Topology, n: u8) -> Engine {
        let name = format!("gw{n}");
        let cfg = t.dir.join(format!("{name}.toml"));
        let config = format!(
            "[gateway]\nlocal_addrs = [\"198.18.0.{n}\"]\n\n[[interface]]\nname = \"{}\"\nrole = \"outside\"\n\n[[interface]]\nname = \"{}\"\nrole = \"inside\"\n",
            t.ns(&format!("g{n}o")),
            t.ns(&format!("g{n}i"))
        );
        std::fs::write(&cfg, config).unwrap();
        let socket = t.dir.join(format!("{name}/control.sock"));
        #[rustfmt::skip]
        let args = ["run", "--config", cfg.to_str().unwrap(), "--no-pin", "--xdp-mode", "auto", "--frames", "2048",
            "--ring-size", "512", "--neigh-interval-ms", "200", "--control-socket", socket.to_str().unwrap()];
        let ns = t.ns(&format!("g{n}"));
        let process = EngineProcess::spawn(env!("CARGO_BIN_EXE_ipsec-engine"), &t.dir, &ns, &name, &[], &args);
        Engine { process, socket }
    }

    fn logs(&self) -> String {
        self.process.logs()
    }

    fn stop(&mut self) -> String {
        self.process.stop()
    }
}

/// The test's control session with one engine.
struct Ctl {
    conn: Conn,
    next: u64,
    inbox: VecDeque<EngineMsg>,
    /// `control_sas` of the engine's Hello.
    held: u32,
    boot_id: u64,
}

impl Ctl {
    fn connect(path: &Path) -> Ctl {
        let mut conn = Conn::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        conn.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = conn.recv::<EngineMsg>().unwrap().expect("engine hello");
        let EngineMsg::Hello { version, control_sas, boot_id, .. } = hello else { panic!("not a hello: {hello:?}") };
        assert_eq!(version, PROTOCOL_VERSION);
        conn.send(&ControlMsg::Hello { version: PROTOCOL_VERSION, client: "channel test".into() }).unwrap();
        Ctl { conn, next: 1, inbox: VecDeque::new(), held: control_sas, boot_id }
    }

    fn request(&mut self, req: Request) -> Result<Response, String> {
        let id = self.next;
        self.next += 1;
        self.conn.send(&ControlMsg::Request { id, req }).unwrap();
        self.conn.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        loop {
            match self.conn.recv::<EngineMsg>().expect("read").expect("engine closed the session") {
                EngineMsg::Reply { id: got, result } => {
                    assert_eq!(got, id, "replies come in order");
                    return result;
                }
                other => self.inbox.push_back(other),
            }
        }
    }

    fn ok(&mut self, req: Request) -> Response {
        let what = format!("{req:?}");
        self.request(req).unwrap_or_else(|e| panic!("{what} refused: {e}"))
    }

    /// The first message (queued or arriving within `timeout`) for which `f` is true.
    fn wait(&mut self, timeout: Duration, f: impl Fn(&EngineMsg) -> bool) -> Option<EngineMsg> {
        if let Some(k) = self.inbox.iter().position(&f) {
            return self.inbox.remove(k);
        }
        let deadline = Instant::now() + timeout;
        self.conn.stream().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        while Instant::now() < deadline {
            match self.conn.recv::<EngineMsg>() {
                Ok(Some(m)) if f(&m) => return Some(m),
                Ok(Some(m)) => self.inbox.push_back(m),
                Ok(None) => panic!("engine closed the session"),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        None
    }

    /// (packets, bytes) of one SA, read over the channel.
    fn sa_counters(&mut self, tunnel: &str, direction: Direction, spi: u32) -> (u64, u64) {
        let Response::Counters(r) = self.ok(Request::Counters { tunnel: Some(tunnel.into()) }) else { panic!() };
        let sa = r
            .sas
            .iter()
            .find(|s| s.direction == Some(direction) && s.spi == spi)
            .unwrap_or_else(|| panic!("no SA {spi:#x} in {r:?}"));
        (sa.packets, sa.bytes)
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn tunnel(name: &str, n: u8, local: &str, remote: &str, routing: Routing) -> TunnelSpec {
    TunnelSpec {
        name: name.into(),
        local_addr: format!("198.18.0.{n}").parse().unwrap(),
        remote_addr: format!("198.18.0.{}", 3 - n).parse().unwrap(),
        local_subnets: vec![net(local)],
        remote_subnets: vec![net(remote)],
        routing,
        udp_encap: None,
        mtu: None,
    }
}

fn sa(tunnel: &str, direction: Direction, spi: u32) -> SaSpec {
    let key: Vec<u8> = (0..36u32).map(|k| (k.wrapping_mul(2_654_435_761) ^ spi.wrapping_mul(40503)) as u8).collect();
    SaSpec {
        tunnel: tunnel.into(),
        direction,
        spi,
        cipher: "aes256gcm16".into(),
        enc_key: Secret::new(key),
        integrity: "none".into(),
        auth_key: Secret::default(),
        esn: false,
        replay_window: if direction == Direction::In { 1024 } else { 0 },
        lifetime: Lifetime::default(),
    }
}

/// What gw-`n` is told: tunnels `a` (and `b` unless `only_a`), each with an SA each way. SPIs:
/// 0x0a12_000t for gw-1 → gw-2 of tunnel t, 0x0a21_000t the other way.
fn desired(n: u8, only_a: bool) -> Vec<Request> {
    let mut v = Vec::new();
    let tunnels: &[(&str, u32, &str, &str, Routing)] = if n == 1 {
        &[
            ("a", 1, "192.0.2.0/24", "198.51.100.0/24", Routing::Destination),
            ("b", 2, "192.0.2.0/24", "203.0.113.0/24", Routing::Destination),
        ]
    } else {
        &[
            ("a", 1, "198.51.100.0/24", "192.0.2.0/24", Routing::Destination),
            ("b", 2, "203.0.113.0/24", "192.0.2.0/24", Routing::Flows),
        ]
    };
    for &(name, t, local, remote, routing) in tunnels.iter().take(if only_a { 1 } else { 2 }) {
        let (out_spi, in_spi) =
            if n == 1 { (0x0a12_0000 + t, 0x0a21_0000 + t) } else { (0x0a21_0000 + t, 0x0a12_0000 + t) };
        v.push(Request::UpsertTunnel(tunnel(name, n, local, remote, routing)));
        v.push(Request::AddSa(sa(name, Direction::In, in_spi)));
        v.push(Request::AddSa(sa(name, Direction::Out, out_spi)));
    }
    v
}

fn ping(t: &Topology, from: &str, to: Ipv4Addr, count: u32) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(from), "ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
        .arg(to.to_string())
        .output()
        .expect("ping");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("{count} received"))
}

fn warm_up(t: &Topology, from: &str, to: Ipv4Addr) -> bool {
    (0..15).any(|_| ping(t, from, to, 1))
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `file` is an open namespace file; setns changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

fn is_ike(m: &EngineMsg, payload: &[u8]) -> bool {
    matches!(m, EngineMsg::IkeReceived(d) if d.payload == payload)
}

#[test]
fn channel_installs_reconciles_survives_control_loss_and_punts_ike() {
    if !can_run() {
        return;
    }
    common::remove_stale_namespaces("chn", &["ha", "g1", "g2", "hb", "p"]);
    let t = Topology::new();
    let mut gw1 = Engine::start(&t, 1);
    let mut gw2 = Engine::start(&t, 2);
    let mode = std::fs::metadata(&gw1.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    let mut c1 = Ctl::connect(&gw1.socket);
    let mut c2 = Ctl::connect(&gw2.socket);
    assert_eq!((c1.held, c2.held), (0, 0));
    assert_eq!(c1.ok(Request::Ping), Response::Pong);

    // Acquire: tunnel a on gw-1 with only its inbound SA; traffic for it asks for an SA.
    let d1 = desired(1, false);
    c1.ok(d1[0].clone());
    c1.ok(d1[1].clone());
    let _ = ping(&t, "ha", HOST_B, 1);
    let acq = c1.wait(Duration::from_secs(5), |m| matches!(m, EngineMsg::Event(Event::Acquire { .. })));
    assert_eq!(acq, Some(EngineMsg::Event(Event::Acquire { tunnel: "a".into() })), "{}", gw1.logs());

    // Everything else.
    for r in d1.into_iter().skip(2) {
        c1.ok(r);
    }
    for r in desired(2, false) {
        c2.ok(r);
    }
    // Refusals name the field.
    let e = c1.request(Request::AddSa(sa("nope", Direction::Out, 0x777))).unwrap_err();
    assert!(e.starts_with("sa.tunnel: "), "{e}");

    let pings = |what: &str| {
        for (from, to) in [("ha", HOST_B), ("hb", HOST_A), ("ha", HOST_B2)] {
            assert!(warm_up(&t, from, to), "{what}: {from} -> {to} never answered\n{}\n{}", gw1.logs(), gw2.logs());
            assert!(ping(&t, from, to, 5), "{what}: {from} -> {to} lost pings\n{}\n{}", gw1.logs(), gw2.logs());
        }
    };
    pings("installed over the channel");
    let (p1, b1) = c1.sa_counters("a", Direction::Out, 0x0a12_0001);
    assert!(p1 >= 6 && b1 >= p1 * 84, "out SA counters: {p1} packets {b1} bytes");
    let (pin, _) = c2.sa_counters("a", Direction::In, 0x0a12_0001);
    assert!(pin >= 6, "gw-2 inbound SA: {pin} packets");
    let Response::Counters(all) = c1.ok(Request::Counters { tunnel: None }) else { panic!() };
    assert_eq!(all.sas.len(), 4);
    assert!(!all.workers.is_empty() && all.workers.iter().map(|w| w.tx).sum::<u64>() > 0, "{all:?}");

    // Tunnel c on gw-1 (198.51.100.128/25, no SA yet): its acquire will be raised while no
    // control process is connected.
    c1.ok(Request::UpsertTunnel(tunnel("c", 1, "192.0.2.0/24", "198.51.100.128/25", Routing::Destination)));

    // Control death: the sessions go away, traffic does not stop.
    let boot1 = c1.boot_id;
    drop(c1);
    drop(c2);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!ping(&t, "ha", Ipv4Addr::new(198, 51, 100, 200), 1), "tunnel c has no SA");
    pings("after control loss");
    assert!(gw1.process.stderr().contains("control session closed"), "{}", gw1.logs());

    // Reconnect and restate: everything is kept, with its state.
    let mut c1 = Ctl::connect(&gw1.socket);
    let mut c2 = Ctl::connect(&gw2.socket);
    assert_eq!((c1.held, c2.held, c1.boot_id), (4, 4, boot1), "Hello after reconnect");
    // The event raised while control was away was kept for it.
    let acq = c1.wait(Duration::from_secs(5), |m| matches!(m, EngineMsg::Event(Event::Acquire { .. })));
    assert_eq!(acq, Some(EngineMsg::Event(Event::Acquire { tunnel: "c".into() })), "{}", gw1.logs());
    // A connection that never says Hello, and one with another version, leave the session alone.
    let silent = Conn::connect(&gw1.socket).unwrap();
    let mut wrong = Conn::connect(&gw1.socket).unwrap();
    wrong.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(wrong.recv::<EngineMsg>().unwrap(), Some(EngineMsg::Hello { .. })));
    wrong.send(&ControlMsg::Hello { version: PROTOCOL_VERSION + 1, client: "future".into() }).unwrap();
    assert!(!matches!(wrong.recv::<EngineMsg>(), Ok(Some(_))), "a version mismatch closes the connection");
    assert_eq!(c1.ok(Request::Ping), Response::Pong);
    drop(silent);
    // A new session replaces the current one.
    let mut c1 = {
        let mut replacement = Ctl::connect(&gw1.socket);
        assert_eq!(replacement.ok(Request::Ping), Response::Pong);
        c1.conn.stream().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(!matches!(c1.conn.recv::<EngineMsg>(), Ok(Some(_))), "the old session is closed");
        replacement
    };
    let (p2, _) = c1.sa_counters("a", Direction::Out, 0x0a12_0001);
    assert!(p2 > p1, "counters went on while control was away: {p1} -> {p2}");
    for (c, n) in [(&mut c1, 1u8), (&mut c2, 2u8)] {
        c.ok(Request::BeginSync { generation: 1 });
        for r in desired(n, false) {
            c.ok(r);
        }
        let done = c.ok(Request::EndSync { generation: 1 });
        assert_eq!(done, Response::SyncDone { generation: 1, added: 0, replaced: 0, kept: 4, removed: 0 });
    }
    let (p3, _) = c1.sa_counters("a", Direction::Out, 0x0a12_0001);
    assert!(p3 >= p2, "the SA was kept, not rebuilt: {p2} -> {p3}");
    pings("after the reconciling sync");
    let (p4, _) = c1.sa_counters("a", Direction::Out, 0x0a12_0001);
    assert!(p4 >= p3 + 10, "outbound numbering continues on the same SA: {p3} -> {p4}");

    // IKE punt, inbound: a datagram to gw-1's IKE port from gw-2's namespace.
    let sa_init = b"\x11\x22\x33\x44\x55\x66\x77\x88\0\0\0\0\0\0\0\0\x21\x20\x22\x08\0\0\0\0\0\0\0\x1c".to_vec();
    let from = in_netns(&t.ns("g2"), || {
        let s = UdpSocket::bind("198.18.0.2:0").unwrap();
        for _ in 0..3 {
            s.send_to(&sa_init, "198.18.0.1:500").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        s.local_addr().unwrap()
    });
    let got = c1.wait(Duration::from_secs(5), |m| is_ike(m, &sa_init)).unwrap_or_else(|| panic!("{}", gw1.logs()));
    assert_eq!(
        got,
        EngineMsg::IkeReceived(IkeDatagram {
            local: "198.18.0.1:500".parse().unwrap(),
            remote: from,
            payload: sa_init.clone()
        })
    );

    // IKE out: SendIke from gw-1 reaches a socket in gw-2's namespace.
    let sock = in_netns(&t.ns("g2"), || UdpSocket::bind("198.18.0.2:40500").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let reply = b"ike response".to_vec();
    let mut received = None;
    for _ in 0..5 {
        c1.conn
            .send(&ControlMsg::SendIke(IkeDatagram {
                local: "198.18.0.1:500".parse().unwrap(),
                remote: "198.18.0.2:40500".parse().unwrap(),
                payload: reply.clone(),
            }))
            .unwrap();
        let mut buf = [0u8; 256];
        if let Ok((n, src)) = sock.recv_from(&mut buf) {
            received = Some((buf[..n].to_vec(), src));
            break;
        }
    }
    let expected_src: SocketAddr = "198.18.0.1:500".parse().unwrap();
    assert_eq!(received, Some((reply, expected_src)), "{}", gw1.logs());

    // Both ways between the engines, on 4500 with the non-ESP marker.
    let mut natt = vec![0u8; 4];
    natt.extend_from_slice(&sa_init);
    let mut got = None;
    for _ in 0..5 {
        c1.conn
            .send(&ControlMsg::SendIke(IkeDatagram {
                local: "198.18.0.1:4500".parse().unwrap(),
                remote: "198.18.0.2:4500".parse().unwrap(),
                payload: natt.clone(),
            }))
            .unwrap();
        got = c2.wait(Duration::from_secs(1), |m| is_ike(m, &natt));
        if got.is_some() {
            break;
        }
    }
    assert_eq!(
        got,
        Some(EngineMsg::IkeReceived(IkeDatagram {
            local: "198.18.0.2:4500".parse().unwrap(),
            remote: "198.18.0.1:4500".parse().unwrap(),
            payload: natt
        })),
        "{}\n{}",
        gw1.logs(),
        gw2.logs()
    );

    // A sync on gw-1 that omits tunnel b removes it; a keeps passing.
    c1.ok(Request::BeginSync { generation: 2 });
    for r in desired(1, true) {
        c1.ok(r);
    }
    let done = c1.ok(Request::EndSync { generation: 2 });
    assert_eq!(done, Response::SyncDone { generation: 2, added: 0, replaced: 0, kept: 2, removed: 2 });
    assert!(!ping(&t, "ha", HOST_B2, 3), "tunnel b was removed, its traffic must stop");
    assert!(ping(&t, "ha", HOST_B, 5), "tunnel a keeps passing\n{}", gw1.logs());
    let e = c1.request(Request::Counters { tunnel: Some("b".into()) }).unwrap_err();
    assert!(e.starts_with("tunnel: "), "{e}");

    drop(c1);
    drop(c2);
    let logs1 = gw1.stop();
    let logs2 = gw2.stop();
    assert!(!gw1.socket.exists(), "socket removed at exit");
    println!("{logs1}\n{logs2}");
}
