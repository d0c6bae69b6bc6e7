//! End to end over the portable AF_PACKET backend: host-A — gw-1 (engine) — wire — gw-2 (engine)
//! — host-B in network namespaces made for this run (`afp<pid>{ha,g1,w,g2,hb}`, removed on exit,
//! also on failure), the topology of `e2e_static.rs`:
//!
//! ```text
//!  ha: a0 192.0.2.2 ── g1i 192.0.2.1 [gw-1] g1o 198.18.0.1 ── w1 [bridge in w] w2 ── g2o 198.18.0.2 [gw-2] g2i 198.51.100.1 ── b0 198.51.100.2 :hb
//! ```
//!
//! The gateways' kernels are set up as `engine/README.md` tells operators of the AF_PACKET
//! backend: forwarding off, an nftables rule dropping ESP and UDP 4500 arriving on the outside
//! interface, GRO off on the engine's interfaces. Two queues per interface: two workers per engine
//! in a hash fanout group.
//!
//! Cases:
//! - `--io afpacket` on both gateways, AES-128-GCM, route-based: no XDP program is attached; pings
//!   both ways; 2000 UDP datagrams host-A → host-B arrive intact; the underlay capture holds only
//!   ARP and ESP between the gateways, every ESP packet decrypts with the test's keys into a packet
//!   between the protected subnets, and all the datagrams are among them.
//! - `--io auto` with CAP_BPF and CAP_SYS_ADMIN dropped (`setpriv`, as for an engine without BPF
//!   privileges), AES-128-CBC + HMAC-SHA1-96 in ESP-in-UDP, policy-based: the XDP program cannot
//!   be loaded, each engine logs one warning with the AF_XDP error and falls back to AF_PACKET;
//!   the same checks (the underlay holds only UDP 4500 between the gateways).
//! - With `net.ipv4.ip_forward=1` in gw-1's namespace, the engine warns that the kernel forwards.
//!
//! Needs root. Without root it prints "SKIPPED: ..." and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

mod common;
use common::engine::EngineProcess as Engine;
use common::netns::start_capture;
use common::run;
use common::topology::Topology;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipsec_esp::table::{Domain, Spi, SpiTable};
use ipsec_esp::{default_provider, Cipher, EspWorker, EventQueue, InboundSa, Integrity, PacketBuf, SaConfig, UdpEncap};

const GW1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GW2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const UDP_PORT: u16 = 5001;
const DATAGRAMS: usize = 2000;
const QUEUES: u32 = 2;

/// The shared five-namespace topology (`common::topology`), with the gateways' kernels set up
/// as engine/README.md asks of an AF_PACKET gateway.
fn topology() -> Topology {
    let t = Topology::bridged("afp", QUEUES);
    // What engine/README.md asks of an AF_PACKET gateway's kernel.
    for (g, outside, inside) in [("g1", "g1o", "g1i"), ("g2", "g2o", "g2i")] {
        let (ns, outside, inside) = (t.ns(g), t.dev(outside), t.dev(inside));
        run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
        let rules = format!(
            "table inet ipsec_engine {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
             iifname \"{outside}\" meta l4proto esp drop\n    iifname \"{outside}\" udp dport 4500 drop\n  }}\n}}\n"
        );
        let file = t.dir.join(format!("{g}.nft"));
        std::fs::write(&file, rules).unwrap();
        run(&["ip", "netns", "exec", &ns, "nft", "-f", file.to_str().unwrap()]);
        for dev in [&outside, &inside] {
            run(&["ip", "netns", "exec", &ns, "ethtool", "-K", dev, "gro", "off"]);
        }
    }
    t
}

impl Engine {
    /// Starts `ipsec-engine run` in namespace `ns` with `args`, behind `wrapper` (a command and
    /// its arguments, e.g. `setpriv ...`), and waits until it runs.
    fn start(t: &Topology, ns: &str, name: &str, config: &str, wrapper: &[&str], args: &[&str]) -> Engine {
        let cfg = t.dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        #[rustfmt::skip]
        let mut all = vec!["run", "--config", cfg.to_str().unwrap(), "--no-pin", "--frames", "512", "--ring-size",
            "512", "--neigh-interval-ms", "200", "--no-control-socket"];
        all.extend_from_slice(args);
        Engine::spawn(env!("CARGO_BIN_EXE_ipsec-engine"), &t.dir, &t.ns(ns), name, wrapper, &all)
    }
}

fn ping(t: &Topology, from: &str, to: Ipv4Addr, count: u32) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(from), "ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
        .arg(to.to_string())
        .output()
        .expect("ping");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("{count} received"))
}

fn warm_up(t: &Topology, from: &str, to: Ipv4Addr, tries: u32) -> bool {
    (0..tries).any(|_| ping(t, from, to, 1))
}

fn datagram_len(seq: usize) -> usize {
    [64, 512, 1200, 1472, 100, 800][seq % 6]
}

fn pattern(seq: usize, k: usize) -> u8 {
    (seq.wrapping_mul(31) + k) as u8
}

/// Sends `DATAGRAMS` UDP datagrams host-A → host-B; returns how many distinct ones arrived intact.
fn udp_transfer(t: &Topology) -> usize {
    let ready = Arc::new(AtomicBool::new(false));
    let (ha, hb) = (t.ns("ha"), t.ns("hb"));
    std::thread::scope(|s| {
        let ready2 = ready.clone();
        let rx = s.spawn(move || {
            common::netns::enter_netns(&format!("/var/run/netns/{hb}"));
            let sock = UdpSocket::bind((HOST_B, UDP_PORT)).expect("bind receiver");
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
                if n == datagram_len(seq) && buf[4..n].iter().enumerate().all(|(k, b)| *b == pattern(seq, k)) {
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
            common::netns::enter_netns(&format!("/var/run/netns/{ha}"));
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

struct Case {
    name: &'static str,
    cipher: Cipher,
    integrity: Integrity,
    routing: &'static str,
    encap: Option<UdpEncap>,
    spi_12: u32,
    spi_21: u32,
}

impl Case {
    fn keys(&self, spi: u32) -> (Vec<u8>, Vec<u8>) {
        let gen = |len: usize, salt: u32| -> Vec<u8> {
            (0..len).map(|k| ((k as u32).wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40503)) as u8).collect()
        };
        (gen(self.cipher.keymat_len(), spi), gen(self.integrity.key_len(), !spi))
    }

    fn sa_toml(&self, dir: &str, spi: u32) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let (ek, ak) = self.keys(spi);
        format!(
            "[[sa]]\ntunnel = \"to-peer\"\ndirection = \"{dir}\"\nspi = {spi}\ncipher = \"{}\"\nenc_key = \"{}\"\nintegrity = \"{}\"\nauth_key = \"{}\"\n\n",
            self.cipher.name(),
            hex(&ek),
            self.integrity.name(),
            hex(&ak)
        )
    }

    fn config(&self, t: &Topology, n: u8) -> String {
        let (me, peer, outside, inside, local_net, remote_net, spi_out, spi_in) = if n == 1 {
            (GW1, GW2, t.dev("g1o"), t.dev("g1i"), "192.0.2.0/24", "198.51.100.0/24", self.spi_12, self.spi_21)
        } else {
            (GW2, GW1, t.dev("g2o"), t.dev("g2i"), "198.51.100.0/24", "192.0.2.0/24", self.spi_21, self.spi_12)
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
        s += &self.sa_toml("out", spi_out);
        s += &self.sa_toml("in", spi_in);
        s
    }

    fn offline_sa(&self, spi: u32, src: Ipv4Addr, dst: Ipv4Addr) -> InboundSa {
        let (ek, ak) = self.keys(spi);
        let mut cfg = SaConfig::new(spi, self.cipher, &ek, self.integrity, &ak, IpAddr::V4(dst), IpAddr::V4(src));
        cfg.encap = self.encap.map(|e| UdpEncap { local_port: e.remote_port, remote_port: e.local_port });
        cfg.replay_window = 0;
        InboundSa::new(&cfg, default_provider(), Instant::now()).expect("offline SA")
    }
}

/// Checks the underlay capture: only ARP and (UDP-encapsulated) ESP between the gateways, each
/// packet decrypting with the test's keys into a packet between the protected subnets. Returns
/// (ESP packets gw-1 → gw-2, gw-2 → gw-1, inner ICMP packets, datagram sequence numbers seen).
fn check_capture(case: &Case, frames: &[Vec<u8>]) -> (usize, usize, usize, HashSet<usize>) {
    let domain = Domain::new();
    let table: SpiTable<InboundSa> = SpiTable::new(&domain);
    table.insert(Spi(case.spi_12), IpAddr::V4(GW2), Arc::new(case.offline_sa(case.spi_12, GW1, GW2))).unwrap();
    table.insert(Spi(case.spi_21), IpAddr::V4(GW1), Arc::new(case.offline_sa(case.spi_21, GW2, GW1))).unwrap();
    let mut worker = EspWorker::new(default_provider(), Arc::new(EventQueue::default())).unwrap();
    let (mut n12, mut n21, mut icmp, mut seqs) = (0, 0, 0, HashSet::new());
    for f in frames {
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0806 => continue,
            0x0800 => {}
            other => panic!("unexpected ethertype {other:#06x} on the underlay"),
        }
        let ip = &f[14..];
        let sum = ipsec_wire::parse_ip(ip).expect("IP on the underlay");
        let (src, dst) = (sum.src, sum.dst);
        let pair = (src, dst);
        assert!(
            pair == (IpAddr::V4(GW1), IpAddr::V4(GW2)) || pair == (IpAddr::V4(GW2), IpAddr::V4(GW1)),
            "IP packet between other addresses on the underlay: {src} -> {dst} (protocol {:?})",
            sum.protocol
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
        assert_eq!(v[0], Ok(()), "a captured packet {src} -> {dst} does not decrypt with the test's keys");
        let inner = pkts[0].data().to_vec();
        let isum = ipsec_wire::parse_ip(&inner).expect("inner IP");
        let in_a = |x: IpAddr| matches!(x, IpAddr::V4(v) if v.octets()[..3] == [192, 0, 2]);
        let in_b = |x: IpAddr| matches!(x, IpAddr::V4(v) if v.octets()[..3] == [198, 51, 100]);
        assert!(
            (in_a(isum.src) && in_b(isum.dst)) || (in_b(isum.src) && in_a(isum.dst)),
            "inner packet {} -> {}",
            isum.src,
            isum.dst
        );
        if dst == IpAddr::V4(GW2) {
            n12 += 1;
        } else {
            n21 += 1;
        }
        match isum.protocol {
            ipsec_wire::IpProtocol::ICMP => icmp += 1,
            ipsec_wire::IpProtocol::UDP if isum.ports(&inner).map(|p| p.1) == Some(UDP_PORT) => {
                let payload = &inner[isum.payload_offset + 8..isum.packet_end];
                seqs.insert(u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize);
            }
            _ => {}
        }
    }
    (n12, n21, icmp, seqs)
}

/// Whether an XDP program is attached to `dev` in namespace `ns`.
fn xdp_attached(t: &Topology, ns: &str, dev: &str) -> bool {
    let out = Command::new("ip").args(["-n", &t.ns(ns), "link", "show", "dev", &t.dev(dev)]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// Runs both engines with `args` (behind `wrapper`), checks traffic and the underlay; returns
/// both engines' logs.
fn run_case(t: &Topology, case: &Case, wrapper: &[&str], args: &[&str]) -> (String, String) {
    println!("== case {}", case.name);
    let mut gw1 = Engine::start(t, "g1", &format!("gw1-{}", case.name), &case.config(t, 1), wrapper, args);
    let mut gw2 = Engine::start(t, "g2", &format!("gw2-{}", case.name), &case.config(t, 2), wrapper, args);
    let logs = |a: &Engine, b: &Engine| format!("{}\n{}", a.logs(), b.logs());
    for (ns, dev) in [("g1", "g1o"), ("g1", "g1i"), ("g2", "g2o"), ("g2", "g2i")] {
        assert!(!xdp_attached(t, ns, dev), "an XDP program is attached to {dev}:\n{}", logs(&gw1, &gw2));
    }

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
    let (n12, n21, icmp, seqs) = check_capture(case, &frames);
    println!(
        "case {}: {} frames captured, {n12} ESP gw-1->gw-2, {n21} ESP gw-2->gw-1, {icmp} inner ICMP, {} datagrams",
        case.name,
        frames.len(),
        seqs.len()
    );
    assert_eq!(seqs.len(), DATAGRAMS, "every datagram crossed the underlay encrypted");
    assert!(icmp >= 20, "echo requests and replies both ways: {icmp}");
    assert!(n21 >= 10);

    let l1 = gw1.stop();
    let l2 = gw2.stop();
    assert!(l1.contains("final stats") && l2.contains("final stats"), "engines stopped cleanly:\n{l1}\n{l2}");
    println!("{l2}");
    (l1, l2)
}

#[test]
fn e2e_afpacket_backend_and_fallback() {
    if !common::can_run("afp", "e2e_afpacket") {
        return;
    }
    common::remove_stale_namespaces("afp", &["ha", "g1", "w", "g2", "hb", "p"]);
    let t = topology();

    // 1. AF_PACKET by flag.
    let forced = Case {
        name: "afpacket-aes128gcm16",
        cipher: Cipher::AesGcm128,
        integrity: Integrity::None,
        routing: "destination",
        encap: None,
        spi_12: 0x0000_3201,
        spi_21: 0x0000_3101,
    };
    let (l1, l2) = run_case(&t, &forced, &[], &["--io", "afpacket"]);
    for l in [&l1, &l2] {
        assert!(l.contains("AF_PACKET sockets") && l.contains("hash fanout"), "AF_PACKET not used:\n{l}");
        assert!(!l.contains("XDP program attached") && !l.contains("falling back"), "unexpected XDP step:\n{l}");
        assert!(!l.contains("the kernel forwards packets"), "forwarding is off here:\n{l}");
    }

    // 2. Automatic fallback: no CAP_BPF / CAP_SYS_ADMIN, so the XDP program cannot be loaded.
    let fallback = Case {
        name: "auto-fallback-aes128-sha1-natt",
        cipher: Cipher::AesCbc128,
        integrity: Integrity::HmacSha1_96,
        routing: "flows",
        encap: Some(UdpEncap::STANDARD),
        spi_12: 0x0000_3202,
        spi_21: 0x0000_3102,
    };
    let no_bpf = ["setpriv", "--bounding-set", "-bpf,-sys_admin", "--inh-caps", "-bpf,-sys_admin", "--"];
    let (l1, l2) = run_case(&t, &fallback, &no_bpf, &["--io", "auto"]);
    for l in [&l1, &l2] {
        let warn: Vec<&str> = l.lines().filter(|x| x.contains("falling back to AF_PACKET")).collect();
        assert_eq!(warn.len(), 1, "one fallback warning expected:\n{l}");
        assert!(
            warn[0].contains("WARN") && warn[0].contains("AF_XDP cannot be used (") && warn[0].contains("XDP program"),
            "the warning names the AF_XDP error: {}",
            warn[0]
        );
        println!("fallback: {}", warn[0]);
        assert!(l.contains("AF_PACKET sockets"), "AF_PACKET not used:\n{l}");
    }

    // 3. The engine tells the operator when the kernel forwards.
    run(&["ip", "netns", "exec", &t.ns("g1"), "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let mut e = Engine::start(&t, "g1", "gw1-forwarding", &forced.config(&t, 1), &[], &["--io", "afpacket"]);
    let l = e.stop();
    assert!(l.contains("the kernel forwards packets (net.ipv4.ip_forward=1"), "no forwarding warning:\n{l}");
}
