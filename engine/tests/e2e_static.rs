//! End to end: host-A — gw-1 (engine) — wire — gw-2 (engine) — host-B, in network namespaces
//! made for this run (`e2e<pid>{ha,g1,w,g2,hb}`, removed on exit, also on failure).
//!
//! ```text
//!  ha: a0 192.0.2.2 ── g1i 192.0.2.1 [gw-1] g1o 198.18.0.1 ── w1 [bridge in w] w2 ── g2o 198.18.0.2 [gw-2] g2i 198.51.100.1 ── b0 198.51.100.2 :hb
//! ```
//!
//! Both gateways run `ipsec-engine run` as child processes (XDP native mode on veth, AF_XDP copy
//! mode, no pinning) on static configurations the test writes. Every veth has two queues, so each
//! engine runs two workers (the hosts' flow hashing decides which one a flow lands on). The underlay goes through a bridge
//! in namespace `w` so that it can be watched: AF_XDP transmissions and XDP-redirected receptions
//! bypass packet taps on the gateways' own interfaces, but not on the bridge's ports.
//!
//! For each case (AES-128-GCM route-based; AES-128-CBC + HMAC-SHA1-96 policy-based in ESP-in-UDP;
//! AES-256-GCM with IPv6 outer headers over 2001:db8:18::/64):
//! - ping host-A → host-B and host-B → host-A;
//! - 2000 UDP datagrams host-A → host-B arrive complete and intact;
//! - the capture on the underlay holds only ESP (or ESP-in-UDP) between the gateways (and ARP,
//!   IPv6 neighbour discovery / MLD),
//!   and every ESP packet decrypts offline with the ESP core and the test's keys into an inner
//!   packet between the two protected subnets; the datagrams are all there;
//! - a captured ESP frame re-sent towards gw-2 is dropped as a replay and counted (gw-2's
//!   Prometheus endpoint), and the per-SA counters match.
//!
//! Addresses: underlay 198.18.0.0/15 and 2001:db8:18::/64, inner 192.0.2.0/24 and 198.51.100.0/24.
//! IPv6 is disabled everywhere except on the gateways' underlay interfaces. Nothing leaves the namespaces.
//!
//! Needs root. Without root it prints "SKIPPED: ..." and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

mod common;
use common::run;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipsec_esp::table::{Domain, Spi, SpiTable};
use ipsec_esp::{default_provider, Cipher, EspWorker, EventQueue, InboundSa, Integrity, PacketBuf, SaConfig, UdpEncap};

const GW1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GW2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GW1_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);
const GW2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PROM_PORT: u16 = 9464;
const UDP_PORT: u16 = 5001;
const DATAGRAMS: usize = 2000;
/// Queues of every veth, and so workers per engine (worker q serves outside q and inside q).
const QUEUES: u32 = 2;

fn can_run() -> bool {
    common::can_run("e2e", "e2e_static")
}

fn remove_stale_namespaces() {
    common::remove_stale_namespaces("e2e", &["ha", "g1", "w", "g2", "hb", "p"]);
}

/// The five namespaces and their links; deleted on drop.
struct Topology {
    p: String,
    created: Vec<String>,
    dir: PathBuf,
}

impl Topology {
    fn ns(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    fn dev(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    fn new() -> Topology {
        let p = format!("e2e{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{p}-files"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Topology { p, created: Vec::new(), dir };
        for s in ["ha", "g1", "w", "g2", "hb"] {
            let ns = t.ns(s);
            run(&["ip", "netns", "add", &ns]);
            t.created.push(ns.clone());
            for knob in ["all", "default"] {
                run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv6.conf.{knob}.disable_ipv6=1")]);
            }
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        // (namespace, device) pairs joined by a veth.
        let links =
            [("ha", "a0", "g1", "g1i"), ("g1", "g1o", "w", "w1"), ("w", "w2", "g2", "g2o"), ("g2", "g2i", "hb", "b0")];
        let q = QUEUES.to_string();
        for (na, da, nb, db) in links {
            #[rustfmt::skip]
            run(&["ip", "-n", &t.ns(na), "link", "add", &t.dev(da), "numtxqueues", &q, "numrxqueues", &q,
                  "type", "veth", "peer", "name", &t.dev(db), "numtxqueues", &q, "numrxqueues", &q,
                  "netns", &t.ns(nb)]);
        }
        let w = t.ns("w");
        // The underlay carries only what the gateways send: no IGMP reports from the bridge or
        // the gateways' underlay interfaces (multicast off), no multicast snooping queries.
        run(&["ip", "-n", &w, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        for (ns, dev) in [("w", "w1"), ("w", "w2"), ("g1", "g1o"), ("g2", "g2o")] {
            run(&["ip", "-n", &t.ns(ns), "link", "set", &t.dev(dev), "multicast", "off"]);
        }
        run(&["ip", "-n", &w, "link", "set", "br0", "multicast", "off"]);
        // Room for ESP overhead on the underlay: full 1500-byte inner packets fit (no MTU
        // handling in the engine yet).
        for (ns, dev) in [("w", "w1"), ("w", "w2"), ("g1", "g1o"), ("g2", "g2o")] {
            run(&["ip", "-n", &t.ns(ns), "link", "set", &t.dev(dev), "mtu", "1600"]);
        }
        for d in ["w1", "w2"] {
            run(&["ip", "-n", &w, "link", "set", &t.dev(d), "master", "br0"]);
            run(&["ip", "-n", &w, "link", "set", &t.dev(d), "up"]);
        }
        run(&["ip", "-n", &w, "link", "set", "br0", "up"]);
        for (ns, dev, addr) in [
            ("ha", "a0", "192.0.2.2/24"),
            ("g1", "g1i", "192.0.2.1/24"),
            ("g1", "g1o", "198.18.0.1/24"),
            ("g2", "g2o", "198.18.0.2/24"),
            ("g2", "g2i", "198.51.100.1/24"),
            ("hb", "b0", "198.51.100.2/24"),
        ] {
            run(&["ip", "-n", &t.ns(ns), "addr", "add", addr, "dev", &t.dev(dev)]);
            run(&["ip", "-n", &t.ns(ns), "link", "set", &t.dev(dev), "up"]);
        }
        // IPv6 on the underlay only (for the IPv6-outer case), without DAD.
        for (ns, dev, addr) in [("g1", "g1o", "2001:db8:18::1/64"), ("g2", "g2o", "2001:db8:18::2/64")] {
            let (ns, dev) = (t.ns(ns), t.dev(dev));
            run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")]);
            run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=0")]);
            run(&["ip", "-n", &ns, "addr", "add", addr, "dev", &dev, "nodad"]);
        }
        run(&["ip", "-n", &t.ns("ha"), "route", "add", "default", "via", "192.0.2.1"]);
        run(&["ip", "-n", &t.ns("hb"), "route", "add", "default", "via", "198.51.100.1"]);
        // veth leaves UDP/TCP checksums to "hardware" (CHECKSUM_PARTIAL); the engine forwards
        // frames as they are, so the hosts must fill their checksums in software.
        for (ns, dev) in [("ha", "a0"), ("hb", "b0")] {
            run(&["ip", "netns", "exec", &t.ns(ns), "ethtool", "-K", &t.dev(dev), "tx", "off"]);
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

/// A running engine; stopped (SIGTERM, then SIGKILL) on drop.
struct Engine {
    name: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Engine {
    fn start(t: &Topology, ns: &str, name: &str, config: &str) -> Engine {
        let cfg = t.dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let out = t.dir.join(format!("{name}.out"));
        let err = t.dir.join(format!("{name}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", &t.ns(ns), env!("CARGO_BIN_EXE_ipsec-engine"), "run", "--config"])
            .arg(&cfg)
            .args([
                "--no-pin",
                "--no-control-socket",
                "--io",
                "afxdp",
                "--xdp-mode",
                "auto",
                "--prometheus",
                &format!("127.0.0.1:{PROM_PORT}"),
            ])
            .args(["--frames", "2048", "--ring-size", "512", "--neigh-interval-ms", "200", "--stats-interval", "1"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn ipsec-engine");
        let mut e = Engine { name: name.into(), child: Some(child), out, err };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::fs::read_to_string(&e.out).unwrap_or_default().contains("running") {
                break;
            }
            if let Some(status) = e.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited at start ({status}):\n{}", e.name, e.logs());
            }
            assert!(Instant::now() < deadline, "{} did not start:\n{}", e.name, e.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn logs(&self) -> String {
        format!(
            "--- {} stdout\n{}\n--- {} stderr\n{}",
            self.name,
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            self.name,
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Stops the engine and returns its logs (final stats included).
    fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.logs()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

fn enter_netns(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: `file` is an open namespace file; setns changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// An AF_PACKET socket bound to `ifname` in the calling thread's namespace, receiving everything.
fn packet_socket(ifname: &str) -> OwnedFd {
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `cname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(ifindex, 0, "no interface {ifname}");
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto as i32) };
    assert!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind(AF_PACKET {ifname}): {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: `tv` is a live timeval and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let big: libc::c_int = 8 << 20;
    // SAFETY: as above, for a c_int.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    fd
}

/// Captures frames on `ifname` in namespace `ns` until `stop` is set.
fn start_capture(ns: String, ifname: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        enter_netns(&format!("/var/run/netns/{ns}"));
        let fd = packet_socket(&ifname);
        ready_tx.send(()).unwrap();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("capture ready");
    h
}

fn send_frame(ns: &str, ifname: &str, frame: &[u8]) {
    in_netns(ns, || {
        let fd = packet_socket(ifname);
        // SAFETY: `frame` is a valid buffer of `frame.len()` bytes for the call.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
    });
}

/// GETs the Prometheus text from the engine in namespace `ns`; returns `metric{labels}` → value.
fn scrape(ns: &str) -> HashMap<String, u64> {
    let text = in_netns(ns, || {
        let mut s = TcpStream::connect(("127.0.0.1", PROM_PORT)).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    });
    assert!(text.starts_with("HTTP/1.1 200"), "metrics response: {text}");
    let mut m = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("ipsec_")) {
        if let Some((k, v)) = line.rsplit_once(' ') {
            m.insert(k.to_string(), v.parse().unwrap_or(0));
        }
    }
    m
}

fn ping(t: &Topology, from: &str, to: Ipv4Addr, count: u32) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(from), "ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
        .arg(to.to_string())
        .output()
        .expect("ping");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("{count} received"))
}

/// Pings until one answer comes (neighbours get resolved on the way), at most `tries` times.
fn warm_up(t: &Topology, from: &str, to: Ipv4Addr, tries: u32) -> bool {
    (0..tries).any(|_| ping(t, from, to, 1))
}

/// One configuration under test.
struct Case {
    name: &'static str,
    cipher: Cipher,
    integrity: Integrity,
    routing: &'static str,
    encap: Option<UdpEncap>,
    spi_12: u32,
    spi_21: u32,
    /// IPv6 outer headers (underlay 2001:db8:18::/64) instead of IPv4.
    outer_v6: bool,
}

impl Case {
    /// The outer address of gw-`n`.
    fn gw(&self, n: u8) -> IpAddr {
        match (self.outer_v6, n) {
            (false, 1) => IpAddr::V4(GW1),
            (false, _) => IpAddr::V4(GW2),
            (true, 1) => IpAddr::V6(GW1_V6),
            (true, _) => IpAddr::V6(GW2_V6),
        }
    }

    fn keys(&self, spi: u32) -> (Vec<u8>, Vec<u8>) {
        let gen = |len: usize, salt: u32| -> Vec<u8> {
            (0..len).map(|k| ((k as u32).wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40503)) as u8).collect()
        };
        (gen(self.cipher.keymat_len(), spi), gen(self.integrity.key_len(), !spi))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sa_toml(&self, tunnel: &str, dir: &str, spi: u32) -> String {
        let (ek, ak) = self.keys(spi);
        format!(
            "[[sa]]\ntunnel = \"{tunnel}\"\ndirection = \"{dir}\"\nspi = {spi}\ncipher = \"{}\"\nenc_key = \"{}\"\nintegrity = \"{}\"\nauth_key = \"{}\"\n\n",
            self.cipher.name(),
            Self::hex(&ek),
            self.integrity.name(),
            Self::hex(&ak)
        )
    }

    /// The configuration of gw-`n` (1 or 2).
    fn config(&self, t: &Topology, n: u8) -> String {
        let (me, peer, outside, inside, local_net, remote_net, spi_out, spi_in) = if n == 1 {
            (
                self.gw(1),
                self.gw(2),
                t.dev("g1o"),
                t.dev("g1i"),
                "192.0.2.0/24",
                "198.51.100.0/24",
                self.spi_12,
                self.spi_21,
            )
        } else {
            (
                self.gw(2),
                self.gw(1),
                t.dev("g2o"),
                t.dev("g2i"),
                "198.51.100.0/24",
                "192.0.2.0/24",
                self.spi_21,
                self.spi_12,
            )
        };
        let encap = match self.encap {
            Some(e) => format!("udp_encap = {{ local_port = {}, remote_port = {} }}\n", e.local_port, e.remote_port),
            None => String::new(),
        };
        let mut s = format!(
            "[gateway]\nlocal_addrs = [\"{me}\"]\n\n\
             [[interface]]\nname = \"{outside}\"\nrole = \"outside\"\nqueues = {QUEUES}\n\n\
             [[interface]]\nname = \"{inside}\"\nrole = \"inside\"\nqueues = {QUEUES}\n\n\
             [[tunnel]]\nname = \"to-peer\"\nremote_addr = \"{peer}\"\nlocal_subnets = [\"{local_net}\"]\n\
             remote_subnets = [\"{remote_net}\"]\nrouting = \"{}\"\n{encap}\n",
            self.routing
        );
        s += &self.sa_toml("to-peer", "out", spi_out);
        s += &self.sa_toml("to-peer", "in", spi_in);
        s
    }

    /// An offline inbound SA for the direction `src` → `dst` gateway with SPI `spi`.
    fn offline_sa(&self, spi: u32, src: IpAddr, dst: IpAddr) -> InboundSa {
        let (ek, ak) = self.keys(spi);
        let mut cfg = SaConfig::new(spi, self.cipher, &ek, self.integrity, &ak, dst, src);
        cfg.encap = self.encap.map(|e| UdpEncap { local_port: e.remote_port, remote_port: e.local_port });
        cfg.replay_window = 0;
        InboundSa::new(&cfg, default_provider(), Instant::now()).expect("offline SA")
    }
}

/// Sends `DATAGRAMS` UDP datagrams host-A → host-B; returns how many arrived intact.
fn udp_transfer(t: &Topology) -> usize {
    let ready = Arc::new(AtomicBool::new(false));
    let hb = t.ns("hb");
    let ha = t.ns("ha");
    std::thread::scope(|s| {
        let ready2 = ready.clone();
        let rx = s.spawn(move || {
            enter_netns(&format!("/var/run/netns/{hb}"));
            let sock = UdpSocket::bind((HOST_B, UDP_PORT)).expect("bind receiver");
            // A loaded CI machine may deschedule this thread for a while: let the socket hold
            // the whole transfer so only the data path can lose datagrams.
            let big: libc::c_int = 8 << 20;
            // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&big as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_RCVBUFFORCE");
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            ready2.store(true, Ordering::Release);
            let mut seen = HashSet::new();
            let mut buf = [0u8; 2048];
            while seen.len() < DATAGRAMS {
                let Ok(n) = sock.recv(&mut buf) else { break };
                if n < 4 {
                    continue;
                }
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                let intact = n == datagram_len(seq) && buf[4..n].iter().enumerate().all(|(k, b)| *b == pattern(seq, k));
                if intact {
                    seen.insert(seq);
                }
            }
            seen.len()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        s.spawn(move || {
            enter_netns(&format!("/var/run/netns/{ha}"));
            let sock = UdpSocket::bind((HOST_A, 0)).unwrap();
            let mut buf = vec![0u8; 2048];
            for seq in 0..DATAGRAMS {
                let n = datagram_len(seq);
                buf[..4].copy_from_slice(&(seq as u32).to_be_bytes());
                for k in 0..n - 4 {
                    buf[4 + k] = pattern(seq, k);
                }
                sock.send_to(&buf[..n], (HOST_B, UDP_PORT)).expect("send");
                if seq % 16 == 15 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        rx.join().unwrap()
    })
}

fn datagram_len(seq: usize) -> usize {
    [64, 512, 1200, 1472, 100, 800][seq % 6]
}

fn pattern(seq: usize, k: usize) -> u8 {
    (seq.wrapping_mul(31) + k) as u8
}

struct Decrypted {
    esp_12: Vec<Vec<u8>>,
    /// Inner UDP datagrams to host-B's port, by sequence number.
    udp_seqs: HashSet<usize>,
    inner_icmp: usize,
    packets_12: usize,
    packets_21: usize,
}

/// Checks the underlay capture: only ARP and ESP between the gateways; decrypts every ESP packet.
fn check_capture(case: &Case, frames: &[Vec<u8>]) -> Decrypted {
    let domain = Domain::new();
    let table: SpiTable<InboundSa> = SpiTable::new(&domain);
    let (gw1, gw2) = (case.gw(1), case.gw(2));
    table.insert(Spi(case.spi_12), gw2, Arc::new(case.offline_sa(case.spi_12, gw1, gw2))).unwrap();
    table.insert(Spi(case.spi_21), gw1, Arc::new(case.offline_sa(case.spi_21, gw2, gw1))).unwrap();
    let mut worker = EspWorker::new(default_provider(), Arc::new(EventQueue::default())).unwrap();
    let mut out =
        Decrypted { esp_12: Vec::new(), udp_seqs: HashSet::new(), inner_icmp: 0, packets_12: 0, packets_21: 0 };
    for f in frames {
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        match ethertype {
            0x0806 => continue, // ARP
            0x0800 | 0x86dd => {}
            other => panic!("unexpected ethertype {other:#06x} on the underlay"),
        }
        let ip = &f[14..];
        let sum = ipsec_wire::parse_ip(ip).expect("IP on the underlay");
        let (src, dst) = (sum.src, sum.dst);
        // Neighbour discovery, router solicitations and MLD: the kernels' IPv6 link control.
        if sum.protocol == ipsec_wire::IpProtocol::ICMPV6 && matches!(ip.get(sum.payload_offset), Some(130..=143)) {
            continue;
        }
        let pair = (src, dst);
        assert!(
            pair == (gw1, gw2) || pair == (gw2, gw1),
            "IP packet between other addresses on the underlay: {src} -> {dst}"
        );
        match case.encap {
            None => assert_eq!(sum.protocol, ipsec_wire::IpProtocol::ESP, "non-ESP packet {src} -> {dst}"),
            Some(e) => {
                assert_eq!(sum.protocol, ipsec_wire::IpProtocol::UDP, "non-UDP packet {src} -> {dst}");
                let ports = sum.ports(ip).unwrap();
                assert!(
                    ports == (e.local_port, e.remote_port) || ports == (e.remote_port, e.local_port),
                    "ports {ports:?}"
                );
            }
        }
        let len = sum.packet_end;
        let mut copy = ip[..len].to_vec();
        let mut pkts = [PacketBuf::new(&mut copy, 0, len)];
        let mut v = [Ok(())];
        let guard = table.pin();
        worker.decap_with_table(Instant::now(), &table, &guard, &mut pkts, &mut v);
        drop(guard);
        assert_eq!(v[0], Ok(()), "a captured ESP packet {src} -> {dst} does not decrypt with the test's keys");
        let inner = pkts[0].data().to_vec();
        let isum = ipsec_wire::parse_ip(&inner).expect("inner IP");
        let nets_ok = |a: IpAddr, b: IpAddr| {
            let in_a = |x: IpAddr| matches!(x, IpAddr::V4(v) if v.octets()[..3] == [192, 0, 2]);
            let in_b = |x: IpAddr| matches!(x, IpAddr::V4(v) if v.octets()[..3] == [198, 51, 100]);
            (in_a(a) && in_b(b)) || (in_b(a) && in_a(b))
        };
        assert!(nets_ok(isum.src, isum.dst), "inner packet {} -> {}", isum.src, isum.dst);
        if dst == gw2 {
            out.packets_12 += 1;
            out.esp_12.push(f.clone());
        } else {
            out.packets_21 += 1;
        }
        match isum.protocol {
            ipsec_wire::IpProtocol::ICMP => out.inner_icmp += 1,
            ipsec_wire::IpProtocol::UDP if isum.ports(&inner).map(|p| p.1) == Some(UDP_PORT) => {
                let payload = &inner[isum.payload_offset + 8..isum.packet_end];
                let seq = u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize;
                assert_eq!(payload.len(), datagram_len(seq), "datagram {seq} length");
                out.udp_seqs.insert(seq);
            }
            _ => {}
        }
    }
    out
}

fn run_case(t: &Topology, case: &Case) {
    println!("== case {}", case.name);
    let mut gw1 = Engine::start(t, "g1", &format!("gw1-{}", case.name), &case.config(t, 1));
    let mut gw2 = Engine::start(t, "g2", &format!("gw2-{}", case.name), &case.config(t, 2));
    let logs = |a: &Engine, b: &Engine| format!("{}\n{}", a.logs(), b.logs());

    let stop = Arc::new(AtomicBool::new(false));
    let capture = start_capture(t.ns("w"), t.dev("w1"), stop.clone());

    assert!(warm_up(t, "ha", HOST_B, 15), "host-A cannot reach host-B:\n{}", logs(&gw1, &gw2));
    assert!(ping(t, "ha", HOST_B, 5), "ping host-A -> host-B lost packets:\n{}", logs(&gw1, &gw2));
    assert!(warm_up(t, "hb", HOST_A, 5), "host-B cannot reach host-A:\n{}", logs(&gw1, &gw2));
    assert!(ping(t, "hb", HOST_A, 5), "ping host-B -> host-A lost packets:\n{}", logs(&gw1, &gw2));

    let got = udp_transfer(t);
    assert_eq!(got, DATAGRAMS, "UDP transfer incomplete:\n{}", logs(&gw1, &gw2));

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let frames = capture.join().expect("capture thread");
    let d = check_capture(case, &frames);
    println!(
        "case {}: {} frames captured, {} ESP gw-1->gw-2, {} ESP gw-2->gw-1, {} inner ICMP, {} datagrams",
        case.name,
        frames.len(),
        d.packets_12,
        d.packets_21,
        d.inner_icmp,
        d.udp_seqs.len()
    );
    assert_eq!(d.udp_seqs.len(), DATAGRAMS, "every datagram crossed the underlay encrypted");
    assert!(d.inner_icmp >= 20, "echo requests and replies both ways: {}", d.inner_icmp);
    assert!(d.packets_21 >= 10);

    // Replay: re-send the last gw-1 -> gw-2 ESP frame towards gw-2.
    let spi_label = format!("spi=\"{:#010x}\"", case.spi_12);
    let sa_drops = |m: &HashMap<String, u64>, reason: &str| -> u64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("ipsec_sa_drops_total") && k.contains(&spi_label) && k.contains(reason))
            .map(|(_, v)| *v)
            .sum()
    };
    let esp_replayed = |m: &HashMap<String, u64>| -> u64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("ipsec_esp_drops_total") && k.contains("\"replayed\""))
            .map(|(_, v)| *v)
            .sum()
    };
    let before = scrape(&t.ns("g2"));
    for w in 0..QUEUES {
        assert!(
            before
                .keys()
                .any(|k| k.starts_with("ipsec_worker_rx_packets_total") && k.contains(&format!("worker=\"{w}\""))),
            "worker {w} missing from the metrics"
        );
    }
    let replay = d.esp_12.last().expect("an ESP frame to replay").clone();
    send_frame(&t.ns("w"), &t.dev("w2"), &replay);
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let m = scrape(&t.ns("g2"));
        if esp_replayed(&m) > esp_replayed(&before) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        esp_replayed(&after),
        esp_replayed(&before) + 1,
        "the replayed frame was not counted:\n{}",
        logs(&gw1, &gw2)
    );
    assert_eq!(sa_drops(&after, "replayed"), sa_drops(&before, "replayed") + 1, "per-SA replay counter");
    let sa_packets = |m: &HashMap<String, u64>| -> u64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("ipsec_sa_packets_total") && k.contains(&spi_label))
            .map(|(_, v)| *v)
            .sum()
    };
    assert_eq!(sa_packets(&after), sa_packets(&before), "a replayed packet must not be accepted");
    assert!(sa_packets(&after) >= d.packets_12 as u64, "gw-2 accepted every packet gw-1 sent");

    let l1 = gw1.stop();
    let l2 = gw2.stop();
    assert!(l1.contains("final stats") && l2.contains("final stats"), "engines stopped cleanly:\n{l1}\n{l2}");
    assert!(l2.contains("stats:\n  worker 0:"), "periodic stats (--stats-interval 1) missing:\n{l2}");
    println!("{l2}");
}

#[test]
fn e2e_static_sas_through_two_engines() {
    if !can_run() {
        return;
    }
    remove_stale_namespaces();
    let t = Topology::new();
    let cases = [
        Case {
            name: "aes128gcm16",
            cipher: Cipher::AesGcm128,
            integrity: Integrity::None,
            routing: "destination",
            encap: None,
            spi_12: 0x0000_1201,
            spi_21: 0x0000_2101,
            outer_v6: false,
        },
        Case {
            name: "aes128-sha1-natt",
            cipher: Cipher::AesCbc128,
            integrity: Integrity::HmacSha1_96,
            routing: "flows",
            encap: Some(UdpEncap::STANDARD),
            spi_12: 0x0000_1202,
            spi_21: 0x0000_2102,
            outer_v6: false,
        },
        Case {
            name: "aes256gcm16-ipv6-outer",
            cipher: Cipher::AesGcm256,
            integrity: Integrity::None,
            routing: "destination",
            encap: None,
            spi_12: 0x0000_1203,
            spi_21: 0x0000_2103,
            outer_v6: true,
        },
    ];
    zero_copy_is_refused_clearly(&t, &cases[0]);
    for case in &cases {
        run_case(&t, case);
    }
}

/// veth has no zero-copy AF_XDP: `--zero-copy` must fail at start with a message saying so (and
/// leave nothing attached: the cases after this one attach again).
fn zero_copy_is_refused_clearly(t: &Topology, case: &Case) {
    let cfg = t.dir.join("zc.toml");
    std::fs::write(&cfg, case.config(t, 1)).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns("g1"), env!("CARGO_BIN_EXE_ipsec-engine"), "run", "--config"])
        .arg(&cfg)
        .args(["--no-pin", "--no-control-socket", "--zero-copy"])
        .stdin(Stdio::null())
        .output()
        .expect("run ipsec-engine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--zero-copy on veth should fail:\n{err}");
    assert!(err.contains("zero-copy") && err.contains("run without --zero-copy"), "unclear refusal:\n{err}");
    println!("--zero-copy on veth: {}", err.lines().last().unwrap_or_default());
}
