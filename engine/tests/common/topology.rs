//! The five-namespace topology of the engine's end-to-end tests (`e2e_static.rs`,
//! `e2e_afpacket.rs`), deleted on drop:
//!
//! ```text
//!  ha: a0 192.0.2.2 ── g1i 192.0.2.1 [gw-1] g1o 198.18.0.1 ── w1 [bridge in w] w2 ── g2o 198.18.0.2 [gw-2] g2i 198.51.100.1 ── b0 198.51.100.2 :hb
//! ```
//!
//! Namespaces and devices are named `<prefix><pid><suffix>`. IPv6 is off everywhere (a test turns
//! it on where it needs it). The underlay goes through a bridge in `w` so it can be watched.

use std::path::PathBuf;
use std::process::Command;

use super::run;

/// The namespaces and their links, plus a per-run directory for files.
pub struct Topology {
    /// `<prefix><pid>`: the start of every namespace and device name.
    pub p: String,
    created: Vec<String>,
    /// Per-run files (configurations, logs), removed on drop.
    pub dir: PathBuf,
}

impl Topology {
    /// The namespace with suffix `s`.
    pub fn ns(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    /// The device with suffix `s`.
    pub fn dev(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    /// Builds the topology with `queues` rx/tx queues on every veth.
    pub fn bridged(prefix: &str, queues: u32) -> Topology {
        let p = format!("{prefix}{}", std::process::id());
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
        let q = queues.to_string();
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
        // Room for ESP overhead on the underlay: the tunnels' inner MTU (1600 minus the SA's
        // overhead) stays above the hosts' 1500, so full-size packets (1472-byte datagrams, TCP
        // with the hosts' MSS of 1460) cross without fragmentation or ICMP frag needed; the
        // engine's MTU handling has its own test (e2e_mtu.rs).
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
