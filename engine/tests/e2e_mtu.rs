//! End to end, MTU and neighbours: host-A — gw-1 (engine) — gw-2 (engine) — host-B in network
//! namespaces made for this run (`mtu<pid>{ha,g1,g2,hb}`, removed on exit, also on failure).
//!
//! ```text
//!  ha: a0 192.0.2.2 2001:db8:a::2 ── g1i 192.0.2.1 2001:db8:a::1 [gw-1] g1o 198.18.0.1
//!      ── g2o 198.18.0.2 [gw-2] g2i 198.51.100.1 2001:db8:b::1 ── b0 198.51.100.2 2001:db8:b::2 :hb
//! ```
//!
//! Every link has MTU 1500, so with AES-128-GCM over IPv4 without UDP the tunnel's inner MTU is
//! 1500 − 20 − 8 − 8 − 16 − 2 = 1446. Checked:
//! - (b) IPv4 without DF, too big: `ping -M dont -s 1472` (1500-byte packets, fragmented by the
//!   engines before encryption) and `-s 1600` (already fragmented by the host, the 1500-byte
//!   first fragment fragmented again) are answered; the engines count fragments;
//! - (a) IPv4 with DF, too big: `ping -M do -s 1472` gets an ICMP fragmentation needed from
//!   192.0.2.1 and host-A's route cache holds `mtu 1446`; pings of 1446 bytes then pass;
//! - (c) IPv6, too big: `ping -6 -s 1452` gets an ICMPv6 packet too big; host-A's route cache
//!   holds `mtu 1446` and the next pings (fragmented by host-A) pass;
//! - TTL: a ping with TTL 1 is answered by gw-1 with time exceeded (`ping -t 1`);
//! - (d) neighbours, with the engines' periodic re-dump at 10 minutes (so only netlink events can
//!   explain a change): a wrong MAC for host-A on gw-1 stops the replies at once, the right one
//!   brings them back; a deleted entry is resolved again (counted as `no_neighbour`);
//! - (e) the far side's inside link narrower than the tunnel (gw-2's `g2i` and host-B's `b0` set
//!   to MTU 1300 at run time): 1400-byte pings without DF are fragmented by gw-2 after
//!   decapsulation and answered; with DF, host-A gets "fragmentation needed, mtu 1300" from
//!   198.51.100.1 (gw-2's inside address) back through the tunnel and caches `mtu 1300`; IPv6
//!   likewise gets a packet too big from 2001:db8:b::1 through the tunnel, then passes.
//!
//! Addresses: underlay 198.18.0.0/15, inner 192.0.2.0/24, 198.51.100.0/24 and the documentation
//! prefix 2001:db8::/32. Nothing leaves the namespaces.
//!
//! Needs root. Without root it prints "SKIPPED: ..." and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

mod common;
use common::engine::EngineProcess as Engine;
use common::netns::enter_netns;
use common::run;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const PROM_PORT: u16 = 9465;
const INNER_MTU: u32 = 1446;

/// The four namespaces and their links; deleted on drop.
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
        let p = format!("mtu{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{p}-files"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Topology { p, created: Vec::new(), dir };
        for s in ["ha", "g1", "g2", "hb"] {
            let ns = t.ns(s);
            run(&["ip", "netns", "add", &ns]);
            t.created.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            for knob in ["all", "default"] {
                run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv6.conf.{knob}.accept_dad=0")]);
            }
        }
        for (na, da, nb, db) in [("ha", "a0", "g1", "g1i"), ("g1", "g1o", "g2", "g2o"), ("g2", "g2i", "hb", "b0")] {
            #[rustfmt::skip]
            run(&["ip", "-n", &t.ns(na), "link", "add", &t.dev(da), "type", "veth", "peer", "name", &t.dev(db),
                  "netns", &t.ns(nb)]);
        }
        for (ns, dev, addrs) in [
            ("ha", "a0", &["192.0.2.2/24", "2001:db8:a::2/64"][..]),
            ("g1", "g1i", &["192.0.2.1/24", "2001:db8:a::1/64"][..]),
            ("g1", "g1o", &["198.18.0.1/24"][..]),
            ("g2", "g2o", &["198.18.0.2/24"][..]),
            ("g2", "g2i", &["198.51.100.1/24", "2001:db8:b::1/64"][..]),
            ("hb", "b0", &["198.51.100.2/24", "2001:db8:b::2/64"][..]),
        ] {
            for a in addrs {
                run(&["ip", "-n", &t.ns(ns), "addr", "add", a, "dev", &t.dev(dev), "nodad"]);
            }
            run(&["ip", "-n", &t.ns(ns), "link", "set", &t.dev(dev), "up"]);
        }
        run(&["ip", "-n", &t.ns("ha"), "route", "add", "default", "via", "192.0.2.1"]);
        run(&["ip", "-n", &t.ns("ha"), "-6", "route", "add", "default", "via", "2001:db8:a::1"]);
        run(&["ip", "-n", &t.ns("hb"), "route", "add", "default", "via", "198.51.100.1"]);
        run(&["ip", "-n", &t.ns("hb"), "-6", "route", "add", "default", "via", "2001:db8:b::1"]);
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

impl Engine {
    /// Starts `ipsec-engine run` on `config` in namespace `ns` and waits until it runs.
    fn start(t: &Topology, ns: &str, config: &str) -> Engine {
        let cfg = t.dir.join(format!("{ns}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let prom = format!("127.0.0.1:{PROM_PORT}");
        #[rustfmt::skip]
        let args = ["run", "--config", cfg.to_str().unwrap(), "--no-pin", "--no-control-socket", "--io", "afxdp",
            "--xdp-mode", "auto", "--prometheus", &prom,
            // The safety-net re-dump every 10 minutes: neighbour changes must come as events.
            "--frames", "1024", "--ring-size", "256", "--neigh-interval-ms", "600000"];
        Engine::spawn(env!("CARGO_BIN_EXE_ipsec-engine"), &t.dir, &t.ns(ns), ns, &[], &args)
    }
}

/// GETs the Prometheus text from the engine in namespace `ns`; returns `metric{labels}` → value.
fn scrape(ns: &str) -> HashMap<String, u64> {
    let path = format!("/var/run/netns/{ns}");
    let text = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&path);
            let mut s = TcpStream::connect(("127.0.0.1", PROM_PORT)).expect("connect to the metrics endpoint");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            body
        })
        .join()
        .unwrap()
    });
    let mut m = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("ipsec_")) {
        if let Some((k, v)) = line.rsplit_once(' ') {
            m.insert(k.to_string(), v.parse().unwrap_or(0));
        }
    }
    m
}

/// Sum of a metric over its workers (`name{worker="…",rest}`).
fn total(m: &HashMap<String, u64>, name: &str, rest: &str) -> u64 {
    m.iter().filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(rest)).map(|(_, v)| v).sum()
}

/// Runs ping in `ns` with `args`; returns (replies received, output).
fn ping(t: &Topology, ns: &str, args: &[&str]) -> (u32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(ns), "ping", "-n", "-W", "1"])
        .args(args)
        .output()
        .expect("ping");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let received = text
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received").and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0);
    (received, text)
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(t: &Topology, n: u8) -> String {
    let (me, peer, outside, inside, local, remote, spi_out, spi_in) = if n == 1 {
        (
            "198.18.0.1",
            "198.18.0.2",
            t.dev("g1o"),
            t.dev("g1i"),
            ["192.0.2.0/24", "2001:db8:a::/64"],
            ["198.51.100.0/24", "2001:db8:b::/64"],
            0x1301,
            0x3101,
        )
    } else {
        (
            "198.18.0.2",
            "198.18.0.1",
            t.dev("g2o"),
            t.dev("g2i"),
            ["198.51.100.0/24", "2001:db8:b::/64"],
            ["192.0.2.0/24", "2001:db8:a::/64"],
            0x3101,
            0x1301,
        )
    };
    let key = |spi: u32| -> String { (0..20u32).map(|k| format!("{:02x}", (k * 37 + spi) as u8)).collect() };
    format!(
        "[gateway]\nlocal_addrs = [\"{me}\"]\n\n\
         [[interface]]\nname = \"{outside}\"\nrole = \"outside\"\n\n\
         [[interface]]\nname = \"{inside}\"\nrole = \"inside\"\n\n\
         [[tunnel]]\nname = \"to-peer\"\nremote_addr = \"{peer}\"\nlocal_subnets = [\"{}\", \"{}\"]\n\
         remote_subnets = [\"{}\", \"{}\"]\n\n\
         [[sa]]\ntunnel = \"to-peer\"\ndirection = \"out\"\nspi = {spi_out}\ncipher = \"aes128gcm16\"\nenc_key = \"{}\"\n\n\
         [[sa]]\ntunnel = \"to-peer\"\ndirection = \"in\"\nspi = {spi_in}\ncipher = \"aes128gcm16\"\nenc_key = \"{}\"\n",
        local[0],
        local[1],
        remote[0],
        remote[1],
        key(spi_out),
        key(spi_in)
    )
}

fn mac_of(t: &Topology, ns: &str, dev: &str) -> String {
    let text = ip_out(&["-n", &t.ns(ns), "-br", "link", "show", &t.dev(dev)]);
    text.split_whitespace().nth(2).expect("MAC in ip -br link").to_string()
}

#[test]
fn e2e_mtu_fragmentation_icmp_and_neighbours() {
    if !common::can_run("mtu", "e2e_mtu") {
        return;
    }
    common::remove_stale_namespaces("mtu", &["ha", "g1", "g2", "hb", "p"]);
    let t = Topology::new();
    let gw1 = Engine::start(&t, "g1", &config(&t, 1));
    let gw2 = Engine::start(&t, "g2", &config(&t, 2));
    let logs = || format!("{}\n{}", gw1.logs(), gw2.logs());

    // Warm up (neighbours on both sides).
    let warm = (0..10).any(|_| ping(&t, "ha", &["-c", "1", "198.51.100.2"]).0 == 1);
    assert!(warm, "no ping through the tunnel:\n{}", logs());

    // (b) IPv4 without DF: fragmented before encryption, both ways.
    let (got, out) = ping(&t, "ha", &["-c", "3", "-i", "0.2", "-M", "dont", "-s", "1472", "198.51.100.2"]);
    assert_eq!(got, 3, "1500-byte pings without DF:\n{out}\n{}", logs());
    let (got, out) = ping(&t, "ha", &["-c", "3", "-i", "0.2", "-M", "dont", "-s", "1600", "198.51.100.2"]);
    assert_eq!(got, 3, "1628-byte pings (fragmented by the host, then by the engine):\n{out}\n{}", logs());
    let m1 = scrape(&t.ns("g1"));
    let m2 = scrape(&t.ns("g2"));
    let ev = "ipsec_worker_forward_events_total";
    assert!(total(&m1, ev, "event=\"fragmented\"") >= 6, "gw-1 fragments: {m1:?}");
    assert!(total(&m1, ev, "event=\"fragments\"") >= 12);
    assert!(total(&m2, ev, "event=\"fragmented\"") >= 6, "gw-2 fragments the replies: {m2:?}");

    // (a) IPv4 with DF: ICMP fragmentation needed with the tunnel's inner MTU.
    let (got, out) = ping(&t, "ha", &["-c", "2", "-i", "0.3", "-M", "do", "-s", "1472", "198.51.100.2"]);
    assert_eq!(got, 0, "{out}");
    assert!(
        out.contains(&format!("mtu = {INNER_MTU}")) || out.contains(&format!("mtu={INNER_MTU}")),
        "ping should report the frag needed from 192.0.2.1:\n{out}\n{}",
        logs()
    );
    let route = ip_out(&["-n", &t.ns("ha"), "route", "get", "198.51.100.2"]);
    assert!(route.contains(&format!("mtu {INNER_MTU}")), "route cache after frag needed: {route}");
    let m1 = scrape(&t.ns("g1"));
    assert!(total(&m1, "ipsec_worker_drops_total", "reason=\"frag_needed\"") >= 1);
    assert!(total(&m1, ev, "event=\"icmp_sent\"") >= 1);
    let (got, out) =
        ping(&t, "ha", &["-c", "2", "-i", "0.2", "-M", "do", "-s", &(INNER_MTU - 28).to_string(), "198.51.100.2"]);
    assert_eq!(got, 2, "pings of exactly the inner MTU pass:\n{out}");

    // (c) IPv6: packet too big (then also back from gw-2 to host-B for the replies).
    let warm6 = (0..10).any(|_| ping(&t, "ha", &["-6", "-c", "1", "2001:db8:b::2"]).0 == 1);
    assert!(warm6, "no IPv6 ping through the tunnel:\n{}", logs());
    let (_, out) = ping(&t, "ha", &["-6", "-c", "1", "-s", "1452", "2001:db8:b::2"]);
    let route6 = ip_out(&["-n", &t.ns("ha"), "-6", "route", "get", "2001:db8:b::2"]);
    assert!(route6.contains(&format!("mtu {INNER_MTU}")), "IPv6 route cache after packet too big: {route6}\n{out}");
    // The first fragmented request reaches host-B, whose 1500-byte reply gets a packet too big
    // from gw-2 (lost, as with any IPv6 PMTU discovery); then both hosts fragment to fit.
    let _ = ping(&t, "ha", &["-6", "-c", "1", "-s", "1452", "2001:db8:b::2"]);
    let route6 = ip_out(&["-n", &t.ns("hb"), "-6", "route", "get", "2001:db8:a::2"]);
    assert!(route6.contains(&format!("mtu {INNER_MTU}")), "host-B learnt the PMTU from gw-2: {route6}");
    let (got, out) = ping(&t, "ha", &["-6", "-c", "3", "-i", "0.2", "-s", "1452", "2001:db8:b::2"]);
    assert_eq!(got, 3, "IPv6 pings fragmented by the hosts after the packet too big:\n{out}");

    // TTL: expires at gw-1, time exceeded from 192.0.2.1.
    let (got, out) = ping(&t, "ha", &["-c", "1", "-t", "1", "198.51.100.2"]);
    assert_eq!(got, 0);
    assert!(out.contains("192.0.2.1") && out.contains("Time to live exceeded"), "TTL 1:\n{out}");
    let m1 = scrape(&t.ns("g1"));
    assert!(total(&m1, "ipsec_worker_drops_total", "reason=\"ttl_expired\"") >= 1);

    // (d) Neighbours: a wrong MAC for host-A on gw-1 is used at once (no poll: 10 min re-dump).
    let real = mac_of(&t, "ha", "a0");
    let (g1, g1i) = (t.ns("g1"), t.dev("g1i"));
    run(&[
        "ip",
        "-n",
        &g1,
        "neigh",
        "replace",
        "192.0.2.2",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        &g1i,
        "nud",
        "permanent",
    ]);
    std::thread::sleep(Duration::from_millis(100));
    let (got, _) = ping(&t, "ha", &["-c", "2", "-i", "0.2", "198.51.100.2"]);
    assert_eq!(got, 0, "replies must go to the wrong MAC now");
    run(&["ip", "-n", &g1, "neigh", "replace", "192.0.2.2", "lladdr", &real, "dev", &g1i, "nud", "reachable"]);
    std::thread::sleep(Duration::from_millis(100));
    let (got, out) = ping(&t, "ha", &["-c", "2", "-i", "0.2", "198.51.100.2"]);
    assert_eq!(got, 2, "right MAC back:\n{out}");
    // Deleted: the engine asks the kernel to resolve it again.
    let before = total(&scrape(&g1), "ipsec_worker_drops_total", "reason=\"no_neighbour\"");
    run(&["ip", "-n", &g1, "neigh", "del", "192.0.2.2", "dev", &g1i]);
    std::thread::sleep(Duration::from_millis(100));
    let (got, out) = ping(&t, "ha", &["-c", "5", "-i", "0.2", "198.51.100.2"]);
    assert!(got >= 3, "resolved again after the delete:\n{out}");
    let after = total(&scrape(&g1), "ipsec_worker_drops_total", "reason=\"no_neighbour\"");
    assert!(after > before, "the miss is counted ({before} → {after})");
    let neigh = ip_out(&["-n", &g1, "neigh", "show", "192.0.2.2", "dev", &g1i]);
    assert!(neigh.contains(&real), "the kernel resolved host-A again: {neigh}");

    // (e) gw-2's inside link narrower than the tunnel: fragmentation and ICMP after decapsulation.
    let (g2, hb) = (t.ns("g2"), t.ns("hb"));
    run(&["ip", "-n", &g2, "link", "set", &t.dev("g2i"), "mtu", "1300"]);
    run(&["ip", "-n", &hb, "link", "set", &t.dev("b0"), "mtu", "1300"]);
    std::thread::sleep(Duration::from_millis(200));
    let before = scrape(&g2);
    let (got, out) = ping(&t, "ha", &["-c", "3", "-i", "0.2", "-M", "dont", "-s", "1372", "198.51.100.2"]);
    assert_eq!(got, 3, "1400-byte pings without DF over a 1300-byte far link:\n{out}\n{}", logs());
    let m2 = scrape(&g2);
    let frag = |m: &HashMap<String, u64>| total(m, ev, "event=\"fragmented\"");
    assert!(frag(&m2) >= frag(&before) + 3, "gw-2 fragments after decapsulation: {m2:?}");
    let (got, out) = ping(&t, "ha", &["-c", "2", "-i", "0.3", "-M", "do", "-s", "1372", "198.51.100.2"]);
    assert_eq!(got, 0, "{out}");
    assert!(
        out.contains("198.51.100.1") && (out.contains("mtu = 1300") || out.contains("mtu=1300")),
        "frag needed from gw-2 through the tunnel:\n{out}\n{}",
        logs()
    );
    let route = ip_out(&["-n", &t.ns("ha"), "route", "get", "198.51.100.2"]);
    assert!(route.contains("mtu 1300"), "route cache after gw-2's frag needed: {route}");
    let icmp = |m: &HashMap<String, u64>| total(m, ev, "event=\"icmp_sent\"");
    let m2b = scrape(&g2);
    assert!(icmp(&m2b) > icmp(&m2), "gw-2 sent the error: {m2b:?}");
    let (got, out) = ping(&t, "ha", &["-c", "2", "-i", "0.2", "-M", "do", "-s", "1272", "198.51.100.2"]);
    assert_eq!(got, 2, "pings of 1300 bytes pass:\n{out}");
    // IPv6: packet too big from gw-2 through the tunnel, then host-A fragments to 1300.
    let (_, out) = ping(&t, "ha", &["-6", "-c", "1", "-s", "1352", "2001:db8:b::2"]);
    let route6 = ip_out(&["-n", &t.ns("ha"), "-6", "route", "get", "2001:db8:b::2"]);
    assert!(route6.contains("mtu 1300"), "IPv6 route cache after gw-2's packet too big: {route6}\n{out}\n{}", logs());
    let (got, out) = ping(&t, "ha", &["-6", "-c", "3", "-i", "0.2", "-s", "1352", "2001:db8:b::2"]);
    assert_eq!(got, 3, "IPv6 pings after the packet too big:\n{out}");
}
