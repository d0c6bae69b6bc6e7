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
//! - 2000 UDP datagrams host-A → host-B, then 2000 host-B → host-A, arrive complete and intact
//!   (sizes 64 to 1472 bytes, a pattern per sequence number);
//! - 2 MiB over TCP host-A → host-B, then 2 MiB host-B → host-A (std `TcpStream` on threads
//!   inside the hosts' namespaces; the connecting side sends, the listener checks every byte
//!   against a pattern and the total; accept, each read / write and the whole transfer have
//!   timeouts). No MSS clamping: the underlay links have MTU 1600, so the tunnels' inner MTU
//!   stays above the hosts' 1500 and the hosts' MSS of 1460 fits (fragmentation and ICMP frag
//!   needed are `e2e_mtu.rs`'s subject). The hosts' veths have `tx off` (checksums in software,
//!   see engine/README.md), which both directions need;
//! - the capture on the underlay holds only ESP (or ESP-in-UDP) between the gateways (and ARP,
//!   IPv6 neighbour discovery / MLD),
//!   and every ESP packet decrypts offline with the ESP core and the test's keys into an inner
//!   packet between the two protected subnets, in the direction of its SA; all datagrams of both
//!   directions are there intact, and at least 2 MiB of TCP payload each way;
//! - the same capture decrypts with an independent implementation: the frames (hex, one per
//!   line) and both SAs (SPI, algorithm, test keys, outer addresses, NAT-T ports) are written to
//!   the run's directory and `tests/e2e_scapy_decrypt.py` decrypts every ESP packet with scapy's
//!   `SecurityAssociation`, checks the outer headers, the inner addresses and the datagrams'
//!   content, and prints counts as JSON, which must equal the offline decryption's (ESP packets
//!   per direction, inner ICMP, TCP bytes per direction) and the datagram numbers. The Python is
//!   `$IPSEC_TEST_PYTHON` (else `python3`); without scapy this part prints a loud SKIPPED line,
//!   unless `IPSEC_REQUIRE_SCAPY=1` (as `.ci/test` sets), where the test fails;
//! - a captured ESP frame re-sent towards gw-2 is dropped as a replay and counted (gw-2's
//!   Prometheus endpoint), and the per-SA counters match.
//!
//! Addresses: underlay 198.18.0.0/15 and 2001:db8:18::/64, inner 192.0.2.0/24 and 198.51.100.0/24.
//! IPv6 is disabled everywhere except on the gateways' underlay interfaces. Nothing leaves the namespaces.
//!
//! Needs root. Without root it prints "SKIPPED: ..." and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

mod common;
use common::engine::EngineProcess as Engine;
use common::netns::{enter_netns, in_netns, packet_socket, start_capture};
use common::run;
use common::topology::Topology;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
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
/// UDP receivers: host-B's (datagrams host-A → host-B) and host-A's (host-B → host-A).
const UDP_PORT_B: u16 = 5001;
const UDP_PORT_A: u16 = 5002;
/// TCP listeners: host-B's (bytes host-A → host-B) and host-A's (host-B → host-A). The connecting
/// side sends, the listening side receives and checks.
const TCP_PORT_B: u16 = 5003;
const TCP_PORT_A: u16 = 5004;
const DATAGRAMS: usize = 2000;
/// Bytes of each TCP transfer.
const TCP_BYTES: usize = 2 << 20;
/// The UDP datagram sizes, by sequence number modulo their count (the scapy script gets them too).
const DATAGRAM_LENS: [usize; 6] = [64, 512, 1200, 1472, 100, 800];
const SCAPY_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e_scapy_decrypt.py");
/// Queues of every veth, and so workers per engine (worker q serves outside q and inside q).
const QUEUES: u32 = 2;

/// The shared five-namespace topology (`common::topology`), plus IPv6 on the gateways' underlay
/// interfaces (for the IPv6-outer case), without DAD.
fn topology() -> Topology {
    let t = Topology::bridged("e2e", QUEUES);
    for (ns, dev, addr) in [("g1", "g1o", "2001:db8:18::1/64"), ("g2", "g2o", "2001:db8:18::2/64")] {
        let (ns, dev) = (t.ns(ns), t.dev(dev));
        run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")]);
        run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=0")]);
        run(&["ip", "-n", &ns, "addr", "add", addr, "dev", &dev, "nodad"]);
    }
    t
}

fn can_run() -> bool {
    common::can_run("e2e", "e2e_static")
}

fn remove_stale_namespaces() {
    common::remove_stale_namespaces("e2e", &["ha", "g1", "w", "g2", "hb", "p"]);
}

impl Engine {
    /// Starts `ipsec-engine run` on `config` in namespace `ns` and waits until it runs.
    fn start(t: &Topology, ns: &str, name: &str, config: &str) -> Engine {
        let cfg = t.dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let prom = format!("127.0.0.1:{PROM_PORT}");
        #[rustfmt::skip]
        let args = ["run", "--config", cfg.to_str().unwrap(), "--no-pin", "--no-control-socket", "--io", "afxdp",
            "--xdp-mode", "auto", "--prometheus", &prom, "--frames", "2048", "--ring-size", "512",
            "--neigh-interval-ms", "200", "--stats-interval", "1"];
        Engine::spawn(env!("CARGO_BIN_EXE_ipsec-engine"), &t.dir, &t.ns(ns), name, &[], &args)
    }
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

/// Sends `DATAGRAMS` UDP datagrams from `from` (namespace suffix, address) to port `port` of `to`;
/// returns how many arrived intact.
fn udp_transfer(t: &Topology, from: (&str, Ipv4Addr), to: (&str, Ipv4Addr), port: u16) -> usize {
    let ready = Arc::new(AtomicBool::new(false));
    let (rx_ns, tx_ns) = (t.ns(to.0), t.ns(from.0));
    let (src, dst) = (from.1, to.1);
    std::thread::scope(|s| {
        let ready2 = ready.clone();
        let rx = s.spawn(move || {
            enter_netns(&format!("/var/run/netns/{rx_ns}"));
            let sock = UdpSocket::bind((dst, port)).expect("bind receiver");
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
            enter_netns(&format!("/var/run/netns/{tx_ns}"));
            let sock = UdpSocket::bind((src, 0)).unwrap();
            let mut buf = vec![0u8; 2048];
            for seq in 0..DATAGRAMS {
                let n = datagram_len(seq);
                buf[..4].copy_from_slice(&(seq as u32).to_be_bytes());
                for k in 0..n - 4 {
                    buf[4 + k] = pattern(seq, k);
                }
                sock.send_to(&buf[..n], (dst, port)).expect("send");
                if seq % 16 == 15 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        rx.join().unwrap()
    })
}

fn datagram_len(seq: usize) -> usize {
    DATAGRAM_LENS[seq % DATAGRAM_LENS.len()]
}

fn pattern(seq: usize, k: usize) -> u8 {
    (seq.wrapping_mul(31) + k) as u8
}

/// Byte `i` of a TCP transfer: not periodic with any segment or buffer size used here.
fn tcp_pattern(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 11) ^ (i >> 19)) as u8
}

/// Sends `TCP_BYTES` over one TCP connection from `from` (namespace suffix, address) to port
/// `port` of `to`, which listens, reads to the end and checks every byte. Every step is bounded
/// (accept 10 s, each read / write 10 s, the whole transfer 60 s). Returns the bytes the receiver
/// read intact, or what went wrong.
fn tcp_transfer(t: &Topology, from: (&str, Ipv4Addr), to: (&str, Ipv4Addr), port: u16) -> Result<usize, String> {
    let (rx_ns, tx_ns) = (t.ns(to.0), t.ns(from.0));
    let (src, dst) = (from.1, to.1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let rx = s.spawn(move || -> Result<usize, String> {
            enter_netns(&format!("/var/run/netns/{rx_ns}"));
            let listener = TcpListener::bind((dst, port)).map_err(|e| format!("bind {dst}:{port}: {e}"))?;
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let (mut conn, peer) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return Err(format!("accept on {dst}:{port}: {e}")),
                }
            };
            if peer.ip() != IpAddr::V4(src) {
                return Err(format!("connection from {peer}, expected {src}"));
            }
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0usize;
            loop {
                if Instant::now() > deadline {
                    return Err(format!("receiver: only {got} bytes after 60 s"));
                }
                let n = conn.read(&mut buf).map_err(|e| format!("receiver: read after {got} bytes: {e}"))?;
                if n == 0 {
                    break;
                }
                if let Some(k) = (0..n).find(|&k| buf[k] != tcp_pattern(got + k)) {
                    return Err(format!(
                        "receiver: byte {} is {:#04x}, expected {:#04x}",
                        got + k,
                        buf[k],
                        tcp_pattern(got + k)
                    ));
                }
                got += n;
                if got > TCP_BYTES {
                    return Err(format!("receiver: {got} bytes, more than the {TCP_BYTES} sent"));
                }
            }
            Ok(got)
        });
        if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            return rx.join().unwrap().and(Err("the receiver did not start".into()));
        }
        let tx = s.spawn(move || -> Result<(), String> {
            enter_netns(&format!("/var/run/netns/{tx_ns}"));
            let mut conn = TcpStream::connect_timeout(&(dst, port).into(), Duration::from_secs(10))
                .map_err(|e| format!("connect {src} -> {dst}:{port}: {e}"))?;
            conn.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let data: Vec<u8> = (0..TCP_BYTES).map(tcp_pattern).collect();
            // Several writes of odd sizes, so segments do not line up with anything.
            for chunk in data.chunks(50_000 + 7) {
                conn.write_all(chunk).map_err(|e| format!("sender: {e}"))?;
            }
            conn.shutdown(std::net::Shutdown::Write).map_err(|e| format!("sender: shutdown: {e}"))?;
            // Wait for the receiver to close, so that no data is lost to a reset.
            conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut rest = [0u8; 16];
            let _ = conn.read(&mut rest);
            Ok(())
        });
        let got = rx.join().expect("TCP receiver panicked");
        let sent = tx.join().expect("TCP sender panicked");
        sent?;
        got
    })
}

#[derive(Default)]
struct Decrypted {
    esp_12: Vec<Vec<u8>>,
    /// Inner UDP datagrams host-A → host-B and host-B → host-A, by sequence number.
    udp_seqs_ab: HashSet<usize>,
    udp_seqs_ba: HashSet<usize>,
    /// Inner TCP payload bytes of the two transfers (retransmissions included).
    tcp_bytes_ab: usize,
    tcp_bytes_ba: usize,
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
    let mut out = Decrypted::default();
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
        let in_a = |x: IpAddr| matches!(x, IpAddr::V4(v) if v.octets()[..3] == [192, 0, 2]);
        let in_b = |x: IpAddr| matches!(x, IpAddr::V4(v) if v.octets()[..3] == [198, 51, 100]);
        let (from_a, from_b) = (in_a(isum.src) && in_b(isum.dst), in_b(isum.src) && in_a(isum.dst));
        assert!(from_a || from_b, "inner packet {} -> {}", isum.src, isum.dst);
        // Each direction has its own SA: host-A's packets only in gw-1 → gw-2 ESP.
        assert_eq!(from_a, dst == gw2, "inner packet {} -> {} inside ESP {src} -> {dst}", isum.src, isum.dst);
        if dst == gw2 {
            out.packets_12 += 1;
            out.esp_12.push(f.clone());
        } else {
            out.packets_21 += 1;
        }
        let ports = isum.ports(&inner).map(|p| p.1);
        match isum.protocol {
            ipsec_wire::IpProtocol::ICMP => out.inner_icmp += 1,
            ipsec_wire::IpProtocol::UDP if ports == Some(UDP_PORT_B) || ports == Some(UDP_PORT_A) => {
                let payload = &inner[isum.payload_offset + 8..isum.packet_end];
                let seq = u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize;
                assert_eq!(payload.len(), datagram_len(seq), "datagram {seq} length");
                assert!(payload[4..].iter().enumerate().all(|(k, b)| *b == pattern(seq, k)), "datagram {seq} content");
                assert_eq!(from_a, ports == Some(UDP_PORT_B), "datagram {seq} to port {ports:?} from {}", isum.src);
                if from_a {
                    out.udp_seqs_ab.insert(seq);
                } else {
                    out.udp_seqs_ba.insert(seq);
                }
            }
            ipsec_wire::IpProtocol::TCP => {
                let tcp = &inner[isum.payload_offset..isum.packet_end];
                let data = tcp.len() - usize::from(tcp[12] >> 4) * 4;
                // Data flows to the listener: host-B's port from host-A, host-A's from host-B.
                match (ports, from_a) {
                    (Some(TCP_PORT_B), true) => out.tcp_bytes_ab += data,
                    (Some(TCP_PORT_A), false) => out.tcp_bytes_ba += data,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

/// scapy's `CRYPT_ALGOS` / `AUTH_ALGOS` names of a case's transform.
fn scapy_names(case: &Case) -> (&'static str, &'static str) {
    let cipher = match case.cipher {
        Cipher::AesGcm128 | Cipher::AesGcm192 | Cipher::AesGcm256 => "AES-GCM",
        Cipher::AesCbc128 | Cipher::AesCbc192 | Cipher::AesCbc256 => "AES-CBC",
        other => panic!("no scapy name for {other:?} in this test"),
    };
    let integ = match case.integrity {
        Integrity::None => "NULL",
        Integrity::HmacSha1_96 => "HMAC-SHA1-96",
        Integrity::HmacSha256_128 => "SHA2-256-128",
        other => panic!("no scapy name for {other:?} in this test"),
    };
    (cipher, integ)
}

/// Independent decryption: writes the captured underlay frames (hex, one per line) and the two
/// SAs (SPI, scapy algorithm names, test keys, outer addresses, NAT-T ports) into the run's
/// directory, has `tests/e2e_scapy_decrypt.py` decrypt every ESP packet with scapy's
/// `SecurityAssociation`, and compares its counts with the offline decryption above. Skipped
/// loudly without scapy (fails instead with `IPSEC_REQUIRE_SCAPY=1`).
fn scapy_check(t: &Topology, case: &Case, frames: &[Vec<u8>], d: &Decrypted) {
    let Some(py) = common::scapy::python() else { return };
    let frames_path = t.dir.join(format!("{}-underlay.hex", case.name));
    let sas_path = t.dir.join(format!("{}-sas.json", case.name));
    let mut text = String::with_capacity(frames.iter().map(|f| 2 * f.len() + 1).sum());
    for f in frames {
        text += &Case::hex(f);
        text.push('\n');
    }
    std::fs::write(&frames_path, text).unwrap();
    let (cipher, integ) = scapy_names(case);
    let sa = |spi: u32, src: IpAddr, dst: IpAddr| {
        let (ek, ak) = case.keys(spi);
        serde_json::json!({
            "spi": spi, "cipher": cipher, "enc_key": Case::hex(&ek), "integ": integ, "auth_key": Case::hex(&ak),
            "src": src.to_string(), "dst": dst.to_string(),
        })
    };
    let (gw1, gw2) = (case.gw(1), case.gw(2));
    let doc = serde_json::json!({
        "sas": [sa(case.spi_12, gw1, gw2), sa(case.spi_21, gw2, gw1)],
        "udp": case.encap.map(|e| [e.local_port, e.remote_port]),
        "net_a": "192.0.2.0/24",
        "net_b": "198.51.100.0/24",
        "udp_port_b": UDP_PORT_B,
        "udp_port_a": UDP_PORT_A,
        "tcp_port_b": TCP_PORT_B,
        "tcp_port_a": TCP_PORT_A,
        "datagram_lens": DATAGRAM_LENS,
    });
    std::fs::write(&sas_path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let started = Instant::now();
    let out = Command::new(&py)
        .arg(SCAPY_SCRIPT)
        .arg(&sas_path)
        .arg(&frames_path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {py} {SCAPY_SCRIPT}: {e}"));
    assert!(out.status.success(), "{SCAPY_SCRIPT} failed ({}); its stderr is above", out.status);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{SCAPY_SCRIPT} printed bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    println!("case {}: scapy ({:?}): {r}", case.name, started.elapsed());
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} missing from {r}")) as usize;
    assert_eq!(n("error_count"), 0, "scapy found problems, the first ones: {:#}", r["errors"]);
    assert_eq!(n("frames"), frames.len(), "frames read by scapy");
    assert_eq!(n("esp_12"), d.packets_12, "ESP gw-1 -> gw-2 decrypted by scapy");
    assert_eq!(n("esp_21"), d.packets_21, "ESP gw-2 -> gw-1 decrypted by scapy");
    assert_eq!(n("inner_icmp"), d.inner_icmp, "inner ICMP seen by scapy");
    assert_eq!(n("udp_ab"), DATAGRAMS, "datagrams host-A -> host-B decrypted intact by scapy");
    assert_eq!(n("udp_ba"), DATAGRAMS, "datagrams host-B -> host-A decrypted intact by scapy");
    assert_eq!(n("tcp_bytes_ab"), d.tcp_bytes_ab, "TCP bytes host-A -> host-B seen by scapy");
    assert_eq!(n("tcp_bytes_ba"), d.tcp_bytes_ba, "TCP bytes host-B -> host-A seen by scapy");
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

    let a = ("ha", HOST_A);
    let b = ("hb", HOST_B);
    let got = udp_transfer(t, a, b, UDP_PORT_B);
    assert_eq!(got, DATAGRAMS, "UDP transfer host-A -> host-B incomplete:\n{}", logs(&gw1, &gw2));
    let got = udp_transfer(t, b, a, UDP_PORT_A);
    assert_eq!(got, DATAGRAMS, "UDP transfer host-B -> host-A incomplete:\n{}", logs(&gw1, &gw2));
    let started = Instant::now();
    let got = tcp_transfer(t, a, b, TCP_PORT_B);
    assert_eq!(got, Ok(TCP_BYTES), "TCP transfer host-A -> host-B:\n{}", logs(&gw1, &gw2));
    let ab_time = started.elapsed();
    let started = Instant::now();
    let got = tcp_transfer(t, b, a, TCP_PORT_A);
    assert_eq!(got, Ok(TCP_BYTES), "TCP transfer host-B -> host-A:\n{}", logs(&gw1, &gw2));
    println!(
        "case {}: TCP {} KiB host-A -> host-B in {:?}, host-B -> host-A in {:?}",
        case.name,
        TCP_BYTES >> 10,
        ab_time,
        started.elapsed()
    );

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let frames = capture.join().expect("capture thread");
    let d = check_capture(case, &frames);
    println!(
        "case {}: {} frames captured, {} ESP gw-1->gw-2, {} ESP gw-2->gw-1, {} inner ICMP, datagrams {} A->B {} B->A, \
         TCP payload bytes {} A->B {} B->A",
        case.name,
        frames.len(),
        d.packets_12,
        d.packets_21,
        d.inner_icmp,
        d.udp_seqs_ab.len(),
        d.udp_seqs_ba.len(),
        d.tcp_bytes_ab,
        d.tcp_bytes_ba,
    );
    assert_eq!(d.udp_seqs_ab.len(), DATAGRAMS, "every datagram host-A -> host-B crossed the underlay encrypted");
    assert_eq!(d.udp_seqs_ba.len(), DATAGRAMS, "every datagram host-B -> host-A crossed the underlay encrypted");
    assert!(d.tcp_bytes_ab >= TCP_BYTES, "TCP host-A -> host-B on the underlay: {} bytes", d.tcp_bytes_ab);
    assert!(d.tcp_bytes_ba >= TCP_BYTES, "TCP host-B -> host-A on the underlay: {} bytes", d.tcp_bytes_ba);
    assert!(d.inner_icmp >= 20, "echo requests and replies both ways: {}", d.inner_icmp);
    assert!(d.packets_21 >= 10);
    scapy_check(t, case, &frames, &d);

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
    let t = topology();
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
