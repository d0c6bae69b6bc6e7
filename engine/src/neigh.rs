//! Next hops for the engine's transmissions, from the kernel's routing and neighbour tables.
//!
//! The engine does not run ARP/ND itself: the kernel does, on the same interfaces (ARP and ND are
//! not steered by the XDP program, so they reach the kernel). A [`Resolver`] thread reads the
//! kernel's tables with `ip -j route show table main` / `ip -j neigh show` / `ip -j link show` at
//! start and then periodically (default every second), and publishes an immutable [`Snapshot`];
//! workers pick a new snapshot up between bursts (one atomic load when nothing changed).
//!
//! Why `ip -j` and not netlink: it needs no extra crate or unsafe code, parses with serde, and a
//! refresh every second (plus one right after a miss) is plenty while the neighbour set is a
//! handful of gateways and hosts. A netlink listener (`rtnetlink` / `neli`) subscribed to
//! RTNLGRP_NEIGH would make updates immediate; it is the next step once there are many neighbours.
//!
//! A packet whose next hop has no usable neighbour entry is dropped and counted by the worker,
//! which asks the resolver (a bounded, non-blocking channel) to nudge the kernel: the resolver
//! runs `ip neigh replace ADDR dev DEV use nud none` (the `NTF_USE` flag makes the kernel start
//! resolution, ARP or ND, without sending any IP packet), then refreshes its snapshot soon after.
//! Nudges per address are rate-limited (200 ms).
//!
//! Known limit: the kernel does not see the engine's traffic, so it never re-confirms a neighbour
//! the engine uses; an entry goes STALE and is still used (the kernel keeps stale entries while
//! its table is small). A MAC change of a next hop is noticed only when the kernel re-learns it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub dev: String,
}

/// Where to send a packet: to `dst_mac`, from `src_mac`, at most `mtu` bytes of IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub mtu: u32,
}

/// Why no next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route for the destination.
    NoRoute,
    /// The route leaves by another interface than the expected one.
    WrongInterface,
    /// The next hop is not (yet) resolved; the address to nudge.
    Unresolved(IpAddr),
}

/// The kernel's tables at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Longest prefix first.
    routes: Vec<Route>,
    neigh: HashMap<(String, IpAddr), [u8; 6]>,
    links: HashMap<String, ([u8; 6], u32)>,
}

#[derive(Deserialize)]
struct JsonRoute {
    dst: String,
    gateway: Option<String>,
    dev: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct JsonNeigh {
    dst: String,
    dev: Option<String>,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct JsonLink {
    ifname: String,
    address: Option<String>,
    mtu: Option<u32>,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn ip_json(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").arg("-j").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Snapshot {
    /// Reads the kernel's tables (in the calling process's network namespace).
    pub fn read() -> Result<Snapshot, String> {
        let mut routes = Vec::new();
        for fam in ["-4", "-6"] {
            let text = ip_json(&[fam, "route", "show", "table", "main"])?;
            let list: Vec<JsonRoute> = serde_json::from_str(text.trim()).unwrap_or_default();
            routes.extend(Self::routes_from(list, fam == "-6"));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.dst.prefix_len()));
        let mut neigh = HashMap::new();
        let list: Vec<JsonNeigh> = serde_json::from_str(ip_json(&["neigh", "show"])?.trim()).unwrap_or_default();
        for n in list {
            let usable = !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE");
            if let (Ok(ip), Some(dev), Some(mac)) =
                (n.dst.parse::<IpAddr>(), n.dev, n.lladdr.as_deref().and_then(parse_mac))
            {
                if usable {
                    neigh.insert((dev, ip), mac);
                }
            }
        }
        let mut links = HashMap::new();
        let list: Vec<JsonLink> = serde_json::from_str(ip_json(&["link", "show"])?.trim()).unwrap_or_default();
        for l in list {
            if let Some(mac) = l.address.as_deref().and_then(parse_mac) {
                links.insert(l.ifname, (mac, l.mtu.unwrap_or(1500)));
            }
        }
        Ok(Snapshot { routes, neigh, links })
    }

    fn routes_from(list: Vec<JsonRoute>, v6: bool) -> impl Iterator<Item = Route> {
        list.into_iter().filter_map(move |r| {
            if r.kind.as_deref().is_some_and(|k| k != "unicast") {
                return None;
            }
            let dst: IpNet = if r.dst == "default" {
                if v6 { "::/0" } else { "0.0.0.0/0" }.parse().ok()?
            } else if r.dst.contains('/') {
                r.dst.parse().ok()?
            } else {
                IpNet::from(r.dst.parse::<IpAddr>().ok()?)
            };
            Some(Route { dst, gateway: r.gateway.and_then(|g| g.parse().ok()), dev: r.dev? })
        })
    }

    /// The MAC address of interface `dev`.
    pub fn link_mac(&self, dev: &str) -> Option<[u8; 6]> {
        self.links.get(dev).map(|l| l.0)
    }

    /// The next hop for `dst`, which must leave by `dev`.
    pub fn next_hop(&self, dst: IpAddr, dev: &str) -> Result<NextHop, Miss> {
        let route = self.routes.iter().find(|r| r.dst.contains(&dst)).ok_or(Miss::NoRoute)?;
        if route.dev != dev {
            return Err(Miss::WrongInterface);
        }
        let hop = route.gateway.unwrap_or(dst);
        let (src_mac, mtu) = *self.links.get(dev).ok_or(Miss::WrongInterface)?;
        match self.neigh.get(&(dev.to_string(), hop)) {
            Some(mac) => Ok(NextHop { dst_mac: *mac, src_mac, mtu }),
            None => Err(Miss::Unresolved(hop)),
        }
    }
}

/// Publishes snapshots to workers.
pub struct Resolver {
    current: Mutex<Arc<Snapshot>>,
    generation: AtomicU64,
    nudges: SyncSender<(IpAddr, String)>,
    pub refreshes: AtomicU64,
    pub nudges_sent: AtomicU64,
}

/// A worker's view: the snapshot it uses and the generation it has.
pub struct ResolverHandle {
    resolver: Arc<Resolver>,
    snapshot: Arc<Snapshot>,
    generation: u64,
    last_nudge: HashMap<IpAddr, Instant>,
}

impl Resolver {
    /// Reads the tables once and starts the refresh thread (every `interval`, and after nudges).
    pub fn start(interval: Duration, stop: Arc<AtomicBool>) -> Result<Arc<Resolver>, String> {
        let first = Snapshot::read()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        let r = Arc::new(Resolver {
            current: Mutex::new(Arc::new(first)),
            generation: AtomicU64::new(1),
            nudges: tx,
            refreshes: AtomicU64::new(1),
            nudges_sent: AtomicU64::new(0),
        });
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("neigh".into())
            .spawn(move || r2.run(rx, interval, stop))
            .map_err(|e| format!("neighbour thread: {e}"))?;
        Ok(r)
    }

    fn run(&self, rx: Receiver<(IpAddr, String)>, interval: Duration, stop: Arc<AtomicBool>) {
        let mut next = Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            let wait = next.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            match rx.recv_timeout(wait) {
                Ok((addr, dev)) => {
                    nudge(addr, &dev);
                    self.nudges_sent.fetch_add(1, Ordering::Relaxed);
                    // Give the kernel a moment to resolve, then refresh soon.
                    next = next.min(Instant::now() + Duration::from_millis(50));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next {
                match Snapshot::read() {
                    Ok(s) => self.publish(s),
                    Err(e) => tracing::warn!("reading the kernel's tables: {e}"),
                }
                next = Instant::now() + interval;
            }
        }
    }

    fn publish(&self, s: Snapshot) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.routes != s.routes || cur.neigh != s.neigh || cur.links != s.links {
            *cur = Arc::new(s);
            self.generation.fetch_add(1, Ordering::Release);
        }
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A handle for one worker.
    pub fn handle(self: &Arc<Self>) -> ResolverHandle {
        ResolverHandle {
            resolver: self.clone(),
            snapshot: self.snapshot(),
            generation: self.generation.load(Ordering::Acquire),
            last_nudge: HashMap::new(),
        }
    }
}

/// Makes the kernel resolve `addr` on `dev` (NTF_USE: resolution starts, no IP packet is sent).
fn nudge(addr: IpAddr, dev: &str) {
    let addr = addr.to_string();
    let out = Command::new("ip").args(["neigh", "replace", &addr, "dev", dev, "use", "nud", "none"]).output();
    match out {
        Ok(o) if o.status.success() => tracing::debug!("asked the kernel to resolve {addr} on {dev}"),
        Ok(o) => tracing::warn!("ip neigh replace {addr} dev {dev} use: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => tracing::warn!("ip neigh: {e}"),
    }
}

impl ResolverHandle {
    /// Picks up a newer snapshot, if any (call once per burst).
    pub fn refresh(&mut self) {
        let g = self.resolver.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.snapshot = self.resolver.snapshot();
            self.generation = g;
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Asks for `addr` to be resolved on `dev` (at most every 200 ms per address; never blocks).
    pub fn nudge(&mut self, addr: IpAddr, dev: &str, now: Instant) {
        if self.last_nudge.get(&addr).is_some_and(|t| now.duration_since(*t) < Duration::from_millis(200)) {
            return;
        }
        if self.last_nudge.len() > 4096 {
            self.last_nudge.clear();
        }
        self.last_nudge.insert(addr, now);
        if let Err(TrySendError::Disconnected(_)) = self.resolver.nudges.try_send((addr, dev.to_string())) {
            tracing::warn!("neighbour thread is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json_and_picks_the_longest_prefix() {
        let routes: Vec<JsonRoute> = serde_json::from_str(
            r#"[{"dst":"default","gateway":"198.18.0.254","dev":"out0","flags":[]},
                {"dst":"198.18.0.0/24","dev":"out0","protocol":"kernel","scope":"link","prefsrc":"198.18.0.1","flags":[]},
                {"dst":"192.0.2.0/24","dev":"in0","protocol":"kernel","scope":"link","flags":[]},
                {"type":"blackhole","dst":"203.0.113.0/24","flags":[]}]"#,
        )
        .unwrap();
        let mut s = Snapshot { routes: Snapshot::routes_from(routes, false).collect(), ..Default::default() };
        s.routes.sort_by_key(|r| std::cmp::Reverse(r.dst.prefix_len()));
        assert_eq!(s.routes.len(), 3);
        s.links.insert("out0".into(), ([2, 0, 0, 0, 0, 1], 1500));
        s.links.insert("in0".into(), ([2, 0, 0, 0, 0, 2], 1500));
        s.neigh.insert(("out0".into(), "198.18.0.2".parse().unwrap()), [2, 0, 0, 0, 0, 3]);
        let hop = s.next_hop("198.18.0.2".parse().unwrap(), "out0").unwrap();
        assert_eq!(hop, NextHop { dst_mac: [2, 0, 0, 0, 0, 3], src_mac: [2, 0, 0, 0, 0, 1], mtu: 1500 });
        // Off-link: via the default gateway, not resolved yet.
        assert_eq!(
            s.next_hop("198.19.9.9".parse().unwrap(), "out0"),
            Err(Miss::Unresolved("198.18.0.254".parse().unwrap()))
        );
        assert_eq!(s.next_hop("192.0.2.7".parse().unwrap(), "out0"), Err(Miss::WrongInterface));
        assert_eq!(s.next_hop("2001:db8::1".parse().unwrap(), "out0"), Err(Miss::NoRoute));
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }

    #[test]
    fn parses_neighbours() {
        let list: Vec<JsonNeigh> = serde_json::from_str(
            r#"[{"dst":"198.18.0.2","dev":"out0","lladdr":"02:00:00:00:00:0b","state":["REACHABLE"]},
                {"dst":"198.18.0.3","dev":"out0","state":["FAILED"]}]"#,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].lladdr, None);
    }
}
