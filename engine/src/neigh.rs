//! Next hops for the engine's transmissions, from the kernel's routing and neighbour tables, over
//! rtnetlink.
//!
//! The engine does not run ARP/ND itself: the kernel does, on the same interfaces (ARP and ND are
//! not steered by the XDP program, so they reach the kernel). A [`Resolver`] thread keeps a copy
//! of the kernel's links (MAC, MTU), interface addresses, main-table routes (with their `mtu`
//! metric) and neighbours, and publishes it as an immutable [`Snapshot`]; workers pick a new
//! snapshot up between bursts (one atomic load when nothing changed).
//!
//! How the copy is kept:
//! - a netlink socket subscribed to the link, neighbour, IPv4/IPv6 address and IPv4/IPv6 route
//!   groups is opened first, then every table is dumped once over a second socket (so no change
//!   between the dump and the subscription is lost);
//! - neighbour events (RTM_NEWNEIGH / RTM_DELNEIGH) are applied as they come: a MAC change or a
//!   deleted entry reaches the workers within milliseconds;
//! - link, address and route events trigger a full re-dump (after 20 ms, coalescing bursts of
//!   events: they are rare and a dump of a gateway's tables takes a millisecond);
//! - a full re-dump also runs every `interval` (default 30 s) as a safety net, and right away
//!   when the kernel reports that the event socket overflowed (ENOBUFS).
//!
//! A packet whose next hop has no usable neighbour entry is dropped and counted by the worker,
//! which asks the resolver (a bounded, non-blocking channel) to nudge the kernel: an RTM_NEWNEIGH
//! with the `NTF_USE` flag for the address (what `ip neigh replace ADDR dev DEV use` sends) makes
//! the kernel start resolution (ARP or ND) without sending any IP packet; the resulting
//! neighbour event updates the snapshot. Nudges per address are rate-limited (200 ms).
//!
//! Why `netlink-packet-route` + `netlink-sys` (the rust-netlink project, on which `rtnetlink`
//! is built): typed, maintained rtnetlink messages and a plain blocking socket, no async runtime
//! (`rtnetlink` itself needs tokio; `neli` would do too, but its rtnetlink types are thinner and
//! the rust-netlink crates are the ones most Rust networking tools share). Both build with the
//! workspace's MSRV and need no `unsafe` here. Blocking reads happen on a listener thread of
//! their own that forwards events to the resolver thread over a channel, so the resolver can also
//! wait for nudges and timers without `poll(2)`.
//!
//! Known limit: the kernel does not see the engine's traffic, so it never re-confirms a neighbour
//! the engine uses; an entry goes STALE and is still used (the kernel keeps stale entries while
//! its table is small). A MAC change of a next hop is noticed when the kernel re-learns it (e.g.
//! from the neighbour's gratuitous ARP or unsolicited NA) or an operator changes the entry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub dev: String,
    /// The route's `mtu` metric, if set (`ip route add ... mtu 1400`).
    pub mtu: Option<u32>,
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

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    mac: [u8; 6],
    mtu: u32,
    /// Addresses with their prefix length, in the kernel's order.
    addrs: Vec<IpNet>,
}

/// The kernel's tables at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Longest prefix first.
    routes: Vec<Route>,
    neigh: HashMap<(String, IpAddr), [u8; 6]>,
    links: HashMap<String, Link>,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Snapshot {
    /// Reads the kernel's tables once (in the calling process's network namespace).
    pub fn read() -> Result<Snapshot, String> {
        let mut nl = Netlink::open()?;
        let mut state = KernelTables::default();
        state.dump(&mut nl)?;
        Ok(state.snapshot())
    }

    /// The MAC address of interface `dev`.
    pub fn link_mac(&self, dev: &str) -> Option<[u8; 6]> {
        self.links.get(dev).map(|l| l.mac)
    }

    /// The MTU of interface `dev`.
    pub fn link_mtu(&self, dev: &str) -> Option<u32> {
        self.links.get(dev).map(|l| l.mtu)
    }

    /// The addresses of interface `dev` (with prefix lengths).
    pub fn addrs(&self, dev: &str) -> &[IpNet] {
        self.links.get(dev).map_or(&[], |l| &l.addrs)
    }

    /// The address of `dev` to send from towards `to`: one whose subnet contains `to`, else the
    /// first of the same family (for IPv6 the first that is not link-local, if any).
    pub fn source_for(&self, dev: &str, to: IpAddr) -> Option<IpAddr> {
        let addrs = self.addrs(dev);
        let same = || addrs.iter().filter(|a| a.addr().is_ipv4() == to.is_ipv4());
        if let Some(a) = same().find(|a| a.contains(&to)) {
            return Some(a.addr());
        }
        let link_local = |a: &&IpNet| matches!(a.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        same().find(|a| !link_local(a)).or_else(|| same().next()).map(|a| a.addr())
    }

    /// The next hop for `dst`, which must leave by `dev`. Its MTU is the link's, or the route's
    /// `mtu` metric when smaller.
    pub fn next_hop(&self, dst: IpAddr, dev: &str) -> Result<NextHop, Miss> {
        let route = self.routes.iter().find(|r| r.dst.contains(&dst)).ok_or(Miss::NoRoute)?;
        if route.dev != dev {
            return Err(Miss::WrongInterface);
        }
        let hop = route.gateway.unwrap_or(dst);
        let link = self.links.get(dev).ok_or(Miss::WrongInterface)?;
        let mtu = route.mtu.map_or(link.mtu, |m| m.min(link.mtu));
        match self.neigh.get(&(dev.to_string(), hop)) {
            Some(mac) => Ok(NextHop { dst_mac: *mac, src_mac: link.mac, mtu }),
            None => Err(Miss::Unresolved(hop)),
        }
    }
}

// ---- the resolver's working copy -------------------------------------------------------------

/// The resolver thread's copy of the kernel's tables, by interface index.
#[derive(Default)]
struct KernelTables {
    /// ifindex → (name, MAC, MTU).
    links: HashMap<u32, (String, Option<[u8; 6]>, u32)>,
    /// ifindex → addresses.
    addrs: HashMap<u32, Vec<IpNet>>,
    /// (dst, gateway, oif, mtu).
    routes: Vec<(IpNet, Option<IpAddr>, u32, Option<u32>)>,
    /// (ifindex, address) → MAC.
    neigh: HashMap<NeighbourKey, [u8; 6]>,
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

impl KernelTables {
    /// Replaces every table with a fresh dump.
    fn dump(&mut self, nl: &mut Netlink) -> Result<(), String> {
        let mut fresh = KernelTables::default();
        for m in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
            fresh.apply(m);
        }
        for m in nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
            fresh.apply(m);
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            for m in nl.dump(RouteNetlinkMessage::GetRoute(req))? {
                fresh.apply(m);
            }
        }
        for m in nl.dump(RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()))? {
            fresh.apply(m);
        }
        *self = fresh;
        Ok(())
    }

    /// Applies one message (dump answer or event). Returns true if the tables changed.
    fn apply(&mut self, msg: RouteNetlinkMessage) -> bool {
        match msg {
            RouteNetlinkMessage::NewLink(l) => {
                let mut name = None;
                let mut mac = None;
                let mut mtu = 1500;
                for a in &l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::Address(b) => mac = mac_of(b),
                        LinkAttribute::Mtu(m) => mtu = *m,
                        _ => {}
                    }
                }
                let Some(name) = name else { return false };
                let new = (name, mac, mtu);
                self.links.insert(l.header.index, new.clone()) != Some(new)
            }
            RouteNetlinkMessage::DelLink(l) => {
                self.addrs.remove(&l.header.index);
                self.links.remove(&l.header.index).is_some()
            }
            RouteNetlinkMessage::NewAddress(a) => match address_of(&a) {
                Some(net) => {
                    let list = self.addrs.entry(a.header.index).or_default();
                    if list.contains(&net) {
                        false
                    } else {
                        list.push(net);
                        true
                    }
                }
                None => false,
            },
            RouteNetlinkMessage::DelAddress(a) => match address_of(&a) {
                Some(net) => {
                    let list = self.addrs.entry(a.header.index).or_default();
                    let before = list.len();
                    list.retain(|x| *x != net);
                    list.len() != before
                }
                None => false,
            },
            RouteNetlinkMessage::NewRoute(r) => match route_of(&r) {
                Some(route) => {
                    self.routes.retain(|x| (x.0, x.2) != (route.0, route.2));
                    self.routes.push(route);
                    self.routes.sort_by_key(|r| std::cmp::Reverse(r.0.prefix_len()));
                    true
                }
                None => false,
            },
            RouteNetlinkMessage::DelRoute(r) => match route_of(&r) {
                Some(route) => {
                    let before = self.routes.len();
                    self.routes.retain(|x| (x.0, x.2) != (route.0, route.2));
                    self.routes.len() != before
                }
                None => false,
            },
            RouteNetlinkMessage::NewNeighbour(n) => match neighbour_of(&n) {
                Some((key, Some(mac))) => self.neigh.insert(key, mac) != Some(mac),
                Some((key, None)) => self.neigh.remove(&key).is_some(),
                None => false,
            },
            RouteNetlinkMessage::DelNeighbour(n) => match neighbour_of(&n) {
                Some((key, _)) => self.neigh.remove(&key).is_some(),
                None => false,
            },
            _ => false,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let name = |i: &u32| self.links.get(i).map(|l| l.0.clone());
        let routes = self
            .routes
            .iter()
            .filter_map(|(dst, gateway, oif, mtu)| {
                Some(Route { dst: *dst, gateway: *gateway, dev: name(oif)?, mtu: *mtu })
            })
            .collect();
        let neigh = self.neigh.iter().filter_map(|((i, a), mac)| Some(((name(i)?, *a), *mac))).collect();
        let links = self
            .links
            .iter()
            .filter_map(|(i, (n, mac, mtu))| {
                let addrs = self.addrs.get(i).cloned().unwrap_or_default();
                Some((n.clone(), Link { mac: (*mac)?, mtu: *mtu, addrs }))
            })
            .collect();
        Snapshot { routes, neigh, links }
    }
}

/// The address of an RTM_NEWADDR / RTM_DELADDR (IFA_LOCAL, else IFA_ADDRESS) with its prefix.
fn address_of(a: &AddressMessage) -> Option<IpNet> {
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    IpNet::new(addr, a.header.prefix_len).ok()
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A unicast route of the main table: (destination, gateway, output interface, mtu metric).
fn route_of(r: &RouteMessage) -> Option<(IpNet, Option<IpAddr>, u32, Option<u32>)> {
    let mut table = u32::from(r.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut mtu = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(v) = m {
                        mtu = Some(*v).filter(|v| *v > 0);
                    }
                }
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = match (dst, r.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let net = IpNet::new(dst, r.header.destination_prefix_length).ok()?;
    Some((net, gateway, oif?, mtu))
}

/// (interface index, address) of a neighbour entry.
type NeighbourKey = (u32, IpAddr);

/// The key of a neighbour message and its MAC if the entry is usable (not FAILED or
/// INCOMPLETE, with a 6-byte link-layer address).
fn neighbour_of(n: &NeighbourMessage) -> Option<(NeighbourKey, Option<[u8; 6]>)> {
    if n.header.family != AddressFamily::Inet && n.header.family != AddressFamily::Inet6 {
        return None;
    }
    let mut dst = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => dst = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => dst = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
            _ => {}
        }
    }
    let usable = !matches!(n.header.state, NeighbourState::Failed | NeighbourState::Incomplete);
    Some(((n.header.ifindex, dst?), mac.filter(|_| usable)))
}

// ---- netlink I/O ---------------------------------------------------------------------------

/// A request socket: dumps and neighbour nudges, one at a time.
struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Multicast groups of the event socket (linux/rtnetlink.h RTNLGRP_*).
const GROUPS: [u32; 6] = [
    1,  // RTNLGRP_LINK
    3,  // RTNLGRP_NEIGH
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
];

impl Netlink {
    fn open() -> Result<Netlink, String> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| format!("netlink socket: {e}"))?;
        sock.bind_auto().map_err(|e| format!("netlink bind: {e}"))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(|e| format!("netlink connect: {e}"))?;
        Ok(Netlink { sock, seq: 0, buf: vec![0; 1 << 16] })
    }

    fn send(&mut self, flags: u16, msg: RouteNetlinkMessage) -> Result<u32, String> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        hdr.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0; req.header.length as usize];
        req.serialize(&mut out);
        self.sock.send(&out, 0).map_err(|e| format!("netlink send: {e}"))?;
        Ok(self.seq)
    }

    /// Reads answers to request `seq` until Done / an ACK, handing inner messages to `f`.
    fn read(&mut self, seq: u32, mut f: impl FnMut(RouteNetlinkMessage)) -> Result<(), String> {
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(|e| format!("netlink recv: {e}"))?;
            let mut off = 0;
            while off < n.min(self.buf.len()) {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buf[off..n]).map_err(|e| format!("netlink message: {e}"))?;
                let len = msg.header.length as usize;
                let mine = msg.header.sequence_number == seq;
                match msg.payload {
                    NetlinkPayload::Done(_) if mine => return Ok(()),
                    NetlinkPayload::Error(e) if mine => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => {
                                Err(format!("netlink error {}", std::io::Error::from_raw_os_error(-code.get())))
                            }
                        };
                    }
                    NetlinkPayload::InnerMessage(m) if mine => f(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, String> {
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, msg)?;
        let mut out = Vec::new();
        self.read(seq, |m| out.push(m))?;
        Ok(out)
    }

    /// RTM_NEWNEIGH with NTF_USE: the kernel starts resolving `addr` on interface `ifindex`.
    fn nudge(&mut self, ifindex: u32, addr: IpAddr) -> Result<(), String> {
        let mut m = NeighbourMessage::default();
        m.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::None;
        m.header.flags = NeighbourFlags::Use;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::from(addr)));
        let seq =
            self.send(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, RouteNetlinkMessage::NewNeighbour(m))?;
        self.read(seq, |_| {})
    }
}

/// What reaches the resolver thread.
enum Input {
    /// A worker asks for `addr` on `dev` to be resolved.
    Nudge(IpAddr, String),
    /// A neighbour event, applied as it is.
    Neighbour(RouteNetlinkMessage),
    /// A link, address or route changed, or events were lost: dump everything again.
    Resync,
}

/// Opens the event socket (subscribed before any dump) and starts its listener thread.
fn start_listener(tx: SyncSender<Input>) -> Result<(), String> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| format!("netlink socket: {e}"))?;
    sock.bind_auto().map_err(|e| format!("netlink bind: {e}"))?;
    for g in GROUPS {
        sock.add_membership(g).map_err(|e| format!("netlink group {g}: {e}"))?;
    }
    let _ = sock.set_rx_buf_sz(1 << 20);
    std::thread::Builder::new()
        .name("neigh-events".into())
        .spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match sock.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n.min(buf.len()),
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        if tx.send(Input::Resync).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("netlink events: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let mut off = 0;
                let mut resync = false;
                while off < n {
                    let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n]) else {
                        resync = true;
                        break;
                    };
                    let len = msg.header.length as usize;
                    let input = match msg.payload {
                        NetlinkPayload::InnerMessage(
                            m @ (RouteNetlinkMessage::NewNeighbour(_) | RouteNetlinkMessage::DelNeighbour(_)),
                        ) => Some(Input::Neighbour(m)),
                        NetlinkPayload::InnerMessage(_) => {
                            resync = true;
                            None
                        }
                        _ => None,
                    };
                    if let Some(i) = input {
                        if tx.send(i).is_err() {
                            return;
                        }
                    }
                    if len == 0 {
                        break;
                    }
                    off += len;
                }
                if resync && tx.send(Input::Resync).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("netlink listener thread: {e}"))?;
    Ok(())
}

// ---- the resolver ----------------------------------------------------------------------------

/// Publishes snapshots to workers.
pub struct Resolver {
    current: Mutex<Arc<Snapshot>>,
    generation: AtomicU64,
    inputs: SyncSender<Input>,
    /// Snapshots published (changes seen).
    pub refreshes: AtomicU64,
    /// Full dumps made.
    pub dumps: AtomicU64,
    pub nudges_sent: AtomicU64,
}

/// A worker's view: the snapshot it uses and the generation it has.
pub struct ResolverHandle {
    resolver: Arc<Resolver>,
    snapshot: Arc<Snapshot>,
    generation: u64,
    last_nudge: HashMap<IpAddr, Instant>,
}

/// Delay between a link / address / route event and the re-dump it triggers.
const RESYNC_DELAY: Duration = Duration::from_millis(20);

impl Resolver {
    /// Subscribes to the kernel's events, dumps the tables once and starts the resolver thread,
    /// which re-dumps every `interval` as a safety net.
    pub fn start(interval: Duration, stop: Arc<AtomicBool>) -> Result<Arc<Resolver>, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        start_listener(tx.clone())?;
        let mut nl = Netlink::open()?;
        let mut tables = KernelTables::default();
        tables.dump(&mut nl)?;
        let r = Arc::new(Resolver {
            current: Mutex::new(Arc::new(tables.snapshot())),
            generation: AtomicU64::new(1),
            inputs: tx,
            refreshes: AtomicU64::new(1),
            dumps: AtomicU64::new(1),
            nudges_sent: AtomicU64::new(0),
        });
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("neigh".into())
            .spawn(move || r2.run(rx, nl, tables, interval, stop))
            .map_err(|e| format!("neighbour thread: {e}"))?;
        Ok(r)
    }

    fn run(
        &self,
        rx: Receiver<Input>,
        mut nl: Netlink,
        mut tables: KernelTables,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) {
        let mut next_dump = Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            let wait = next_dump.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            let mut changed = false;
            match rx.recv_timeout(wait) {
                Ok(Input::Nudge(addr, dev)) => {
                    let ifindex = tables.links.iter().find(|(_, l)| l.0 == dev).map(|(i, _)| *i);
                    match ifindex.map(|i| nl.nudge(i, addr)) {
                        Some(Ok(())) => tracing::debug!("asked the kernel to resolve {addr} on {dev}"),
                        Some(Err(e)) => tracing::warn!("resolving {addr} on {dev}: {e}"),
                        None => tracing::warn!("resolving {addr}: no interface {dev}"),
                    }
                    self.nudges_sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Input::Neighbour(m)) => changed = tables.apply(m),
                Ok(Input::Resync) => next_dump = next_dump.min(Instant::now() + RESYNC_DELAY),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_dump {
                match tables.dump(&mut nl) {
                    Ok(()) => changed = true,
                    Err(e) => tracing::warn!("reading the kernel's tables: {e}"),
                }
                self.dumps.fetch_add(1, Ordering::Relaxed);
                next_dump = Instant::now() + interval;
            }
            if changed {
                self.publish(tables.snapshot());
            }
        }
    }

    fn publish(&self, s: Snapshot) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if **cur != s {
            *cur = Arc::new(s);
            self.generation.fetch_add(1, Ordering::Release);
            self.refreshes.fetch_add(1, Ordering::Relaxed);
        }
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
        if let Err(TrySendError::Disconnected(_)) = self.resolver.inputs.try_send(Input::Nudge(addr, dev.to_string())) {
            tracing::warn!("neighbour thread is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::LinkMessage;

    fn link(index: u32, name: &str, mac: [u8; 6], mtu: u32) -> RouteNetlinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes =
            vec![LinkAttribute::IfName(name.into()), LinkAttribute::Address(mac.to_vec()), LinkAttribute::Mtu(mtu)];
        RouteNetlinkMessage::NewLink(l)
    }

    fn route(dst: &str, gw: Option<&str>, oif: u32, mtu: Option<u32>) -> RouteMessage {
        let net: IpNet = dst.parse().unwrap();
        let mut r = RouteMessage::default();
        r.header.address_family = if net.addr().is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        r.header.destination_prefix_length = net.prefix_len();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        if net.prefix_len() > 0 {
            r.attributes.push(RouteAttribute::Destination(RouteAddress::from(net.addr())));
        }
        if let Some(g) = gw {
            r.attributes.push(RouteAttribute::Gateway(RouteAddress::from(g.parse::<IpAddr>().unwrap())));
        }
        r.attributes.push(RouteAttribute::Oif(oif));
        if let Some(m) = mtu {
            r.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(m)]));
        }
        r
    }

    fn neigh(ifindex: u32, addr: &str, mac: Option<[u8; 6]>, state: NeighbourState) -> NeighbourMessage {
        let addr: IpAddr = addr.parse().unwrap();
        let mut n = NeighbourMessage::default();
        n.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        n.header.ifindex = ifindex;
        n.header.state = state;
        n.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::from(addr)));
        if let Some(m) = mac {
            n.attributes.push(NeighbourAttribute::LinkLayerAddress(m.to_vec()));
        }
        n
    }

    fn address(index: u32, net: &str) -> AddressMessage {
        let net: IpNet = net.parse().unwrap();
        let mut a = AddressMessage::default();
        a.header.family = if net.addr().is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        a.header.prefix_len = net.prefix_len();
        a.header.index = index;
        a.attributes.push(AddressAttribute::Address(net.addr()));
        a
    }

    fn tables() -> KernelTables {
        let mut t = KernelTables::default();
        t.apply(link(2, "out0", [2, 0, 0, 0, 0, 1], 1500));
        t.apply(link(3, "in0", [2, 0, 0, 0, 0, 2], 1500));
        for r in [
            route("0.0.0.0/0", Some("198.18.0.254"), 2, None),
            route("198.18.0.0/24", None, 2, None),
            route("198.18.1.0/24", None, 2, Some(1400)),
            route("192.0.2.0/24", None, 3, None),
        ] {
            t.apply(RouteNetlinkMessage::NewRoute(r));
        }
        let mut blackhole = route("203.0.113.0/24", None, 2, None);
        blackhole.header.kind = RouteType::BlackHole;
        t.apply(RouteNetlinkMessage::NewRoute(blackhole));
        let mut other_table = route("198.51.100.0/24", None, 2, None);
        other_table.attributes.push(RouteAttribute::Table(100));
        t.apply(RouteNetlinkMessage::NewRoute(other_table));
        t
    }

    #[test]
    fn routes_neighbours_and_the_longest_prefix() {
        let mut t = tables();
        assert!(t.apply(RouteNetlinkMessage::NewNeighbour(neigh(
            2,
            "198.18.0.2",
            Some([2, 0, 0, 0, 0, 3]),
            NeighbourState::Reachable
        ))));
        let s = t.snapshot();
        assert_eq!(s.routes.len(), 4, "blackhole and table 100 left out: {:?}", s.routes);
        let hop = s.next_hop("198.18.0.2".parse().unwrap(), "out0").unwrap();
        assert_eq!(hop, NextHop { dst_mac: [2, 0, 0, 0, 0, 3], src_mac: [2, 0, 0, 0, 0, 1], mtu: 1500 });
        // Off-link: via the default gateway, not resolved yet.
        assert_eq!(
            s.next_hop("198.19.9.9".parse().unwrap(), "out0"),
            Err(Miss::Unresolved("198.18.0.254".parse().unwrap()))
        );
        assert_eq!(s.next_hop("192.0.2.7".parse().unwrap(), "out0"), Err(Miss::WrongInterface));
        assert_eq!(s.next_hop("2001:db8::1".parse().unwrap(), "out0"), Err(Miss::NoRoute));
        assert_eq!(
            s.next_hop("203.0.113.1".parse().unwrap(), "out0"),
            Err(Miss::Unresolved("198.18.0.254".parse().unwrap()))
        );
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }

    #[test]
    fn route_mtu_metric_lowers_the_next_hop_mtu() {
        let mut t = tables();
        t.apply(RouteNetlinkMessage::NewNeighbour(neigh(
            2,
            "198.18.1.9",
            Some([2, 0, 0, 0, 0, 9]),
            NeighbourState::Stale,
        )));
        let s = t.snapshot();
        assert_eq!(s.next_hop("198.18.1.9".parse().unwrap(), "out0").unwrap().mtu, 1400);
        assert_eq!(s.link_mtu("out0"), Some(1500));
    }

    #[test]
    fn neighbour_events_change_delete_and_fail_entries() {
        let mut t = tables();
        let a = "198.18.0.2";
        t.apply(RouteNetlinkMessage::NewNeighbour(neigh(2, a, Some([2, 0, 0, 0, 0, 3]), NeighbourState::Reachable)));
        // Same entry again: no change to publish.
        assert!(!t.apply(RouteNetlinkMessage::NewNeighbour(neigh(
            2,
            a,
            Some([2, 0, 0, 0, 0, 3]),
            NeighbourState::Stale
        ))));
        // New MAC.
        assert!(t.apply(RouteNetlinkMessage::NewNeighbour(neigh(
            2,
            a,
            Some([2, 0, 0, 0, 0, 4]),
            NeighbourState::Reachable
        ))));
        assert_eq!(t.snapshot().next_hop(a.parse().unwrap(), "out0").unwrap().dst_mac, [2, 0, 0, 0, 0, 4]);
        // Failed: unusable.
        assert!(t.apply(RouteNetlinkMessage::NewNeighbour(neigh(2, a, None, NeighbourState::Failed))));
        assert_eq!(t.snapshot().next_hop(a.parse().unwrap(), "out0"), Err(Miss::Unresolved(a.parse().unwrap())));
        // Back, then deleted.
        t.apply(RouteNetlinkMessage::NewNeighbour(neigh(2, a, Some([2, 0, 0, 0, 0, 5]), NeighbourState::Reachable)));
        assert!(t.apply(RouteNetlinkMessage::DelNeighbour(neigh(
            2,
            a,
            Some([2, 0, 0, 0, 0, 5]),
            NeighbourState::Reachable
        ))));
        assert!(t.snapshot().next_hop(a.parse().unwrap(), "out0").is_err());
    }

    #[test]
    fn route_and_link_events() {
        let mut t = tables();
        assert!(t.apply(RouteNetlinkMessage::DelRoute(route("198.18.1.0/24", None, 2, None))));
        assert_eq!(t.snapshot().routes.len(), 3);
        t.apply(link(2, "out0", [2, 0, 0, 0, 0, 1], 9000));
        assert_eq!(t.snapshot().link_mtu("out0"), Some(9000));
        let mut gone = LinkMessage::default();
        gone.header.index = 2;
        assert!(t.apply(RouteNetlinkMessage::DelLink(gone)));
        let s = t.snapshot();
        assert_eq!(s.link_mtu("out0"), None);
        assert!(s.routes.iter().all(|r| r.dev != "out0"));
    }

    #[test]
    fn source_address_for_icmp_errors() {
        let mut t = tables();
        for a in ["192.0.2.1/24", "198.51.100.1/24", "fe80::1/64", "2001:db8:a::1/64"] {
            t.apply(RouteNetlinkMessage::NewAddress(address(3, a)));
        }
        let s = t.snapshot();
        assert_eq!(s.addrs("in0").len(), 4);
        assert_eq!(s.source_for("in0", "198.51.100.7".parse().unwrap()), Some("198.51.100.1".parse().unwrap()));
        assert_eq!(s.source_for("in0", "203.0.113.9".parse().unwrap()), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(s.source_for("in0", "2001:db8:b::9".parse().unwrap()), Some("2001:db8:a::1".parse().unwrap()));
        assert_eq!(s.source_for("out0", "192.0.2.9".parse().unwrap()), None);
        t.apply(RouteNetlinkMessage::DelAddress(address(3, "198.51.100.1/24")));
        assert_eq!(t.snapshot().addrs("in0").len(), 3);
    }

    /// Reads this namespace's tables over netlink (no root needed: dumps are unprivileged).
    #[test]
    fn reads_the_kernels_tables() {
        let s = Snapshot::read().expect("netlink dump");
        assert!(s.links.contains_key("lo"), "{:?}", s.links.keys().collect::<Vec<_>>());
        assert!(s.addrs("lo").iter().any(|a| a.addr() == IpAddr::from([127, 0, 0, 1])));
    }
}
