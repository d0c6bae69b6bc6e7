//! A userspace ESP forwarder, **for interop tests only**: real traffic through the Child SAs the
//! daemon negotiates, before the AF_XDP engine's control channel exists (which will replace it).
//!
//! * Outbound: inner IP packets read from a TUN device whose destination lies in a Child SA's
//!   remote selectors are encapsulated by the ESP core ([`EspWorker::encap_burst`] with a resolver
//!   over the installed SAs; the newest matching SA wins, so a rekey's new SA takes over at once)
//!   and the ESP part is sent as ESP-in-UDP from the daemon's NAT-T socket to the peer.
//! * Inbound: ESP-in-UDP received on the NAT-T socket (non-zero marker) is put behind a synthetic
//!   outer IPv4/IPv6 + UDP header (the addresses and ports it really had), decapsulated by
//!   [`EspWorker::decap_burst`] (anti-replay, ICV, selectors) and written to the TUN.
//!
//! Outbound SA choice on rekeys: the newest matching SA the peer is known to have. An SA we
//! created as *responder* (the peer's rekey or new Child SA) is not used for sending until ESP
//! arrives on it or it is the only one left: the peer installs it only when our response arrives,
//! so sending on it at once loses packets for a round trip (or much longer if the response is
//! lost). strongSwan defers the responder's outbound SA in the same way.
//!
//! A Child SA of a redundant IKE SA (both ends initiated at once; [`SaSink::retire`]) is not sent
//! on while another SA matches; it still accepts ESP until it is deleted.
//!
//! Only UDP-encapsulated SAs can be served (we have no raw ESP socket); the strongSwan
//! kernel-libipsec peer of the tests always encapsulates. Routes for every connection's remote
//! subnets point at the TUN (`ip route replace`), and the device goes when the daemon exits.
//! Selectors are used as address prefixes (protocol and ports ignored).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;
use std::time::Instant;

use ipnet::IpNet;
use ipsec_esp::{
    default_provider, DropReason, EspWorker, EventQueue, InboundSa, OutboundSa, PacketBuf, HEADROOM, TAILROOM,
};
use ipsec_ike::ike_sa::{ChildSa, UdpEncap};
use ipsec_wire::{ipv4, ipv6, udp, IpProtocol};

use crate::config::selector_prefixes;
// The IKE → ESP core mapping lives in `esp_map` (shared with the engine channel); re-exported here
// for existing users.
pub use crate::esp_map::{cipher, integrity, sa_configs};
use crate::log::Logger;
use crate::logln;
use crate::sink::SaSink;
use crate::tun::Tun;

/// Largest inner packet read from the TUN.
const MAX_INNER: usize = 2048;

struct Outbound {
    conn: String,
    spi_in: u32,
    spi_out: u32,
    remote_nets: Vec<IpNet>,
    peer: SocketAddr,
    sa: OutboundSa,
    /// Whether the peer is known to have this SA: we initiated its exchange (so the peer installed
    /// it before answering), or ESP arrived on its inbound half.
    confirmed: bool,
    /// Its IKE SA is a redundant duplicate about to be deleted ([`SaSink::retire`]): not used for
    /// sending while another SA matches.
    retired: bool,
}

/// The forwarder; see the module documentation.
pub struct EspForwarder {
    tun: Tun,
    sock: UdpSocket,
    worker: EspWorker,
    out: Vec<Outbound>,
    inb: HashMap<u32, InboundSa>,
    log: Logger,
    frame: Vec<u8>,
    /// Prefixes routed to the TUN.
    routed: Vec<IpNet>,
    /// (inbound, outbound) SPIs retired before they were installed.
    pre_retired: Vec<(u32, u32)>,
}

impl std::fmt::Debug for EspForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspForwarder").field("tun", &self.tun.name()).field("sas", &self.out.len()).finish()
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let st = Command::new("ip").args(args).status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ip {} failed: {st}", args.join(" "))))
    }
}

impl EspForwarder {
    /// Creates the TUN device `tun_name`, brings it up (MTU 1400) and routes `routes` to it;
    /// sends ESP in UDP from `sock` (a clone of the daemon's NAT-T socket).
    ///
    /// # Errors
    /// TUN creation, `ip` commands, or the crypto provider.
    pub fn new(tun_name: &str, routes: &[IpNet], sock: UdpSocket, log: Logger) -> io::Result<Self> {
        let tun = Tun::open(tun_name)?;
        ip(&["link", "set", "dev", tun.name(), "mtu", "1400", "up"])?;
        for r in routes {
            ip(&["route", "replace", &r.to_string(), "dev", tun.name()])?;
        }
        sock.set_nonblocking(true)?;
        let worker = EspWorker::new(default_provider(), std::sync::Arc::new(EventQueue::default()))
            .map_err(|e| io::Error::other(format!("ESP worker: {e}")))?;
        logln!(
            log,
            "forwarder: TUN {} up, routes {:?}",
            tun.name(),
            routes.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        Ok(EspForwarder {
            tun,
            sock,
            worker,
            out: Vec::new(),
            inb: HashMap::new(),
            log,
            frame: vec![0; HEADROOM + MAX_INNER + TAILROOM],
            routed: routes.to_vec(),
            pre_retired: Vec::new(),
        })
    }

    fn forward_one(&mut self, now: Instant, len: usize) {
        let Self { worker, out, frame, sock, log, .. } = self;
        let mut pkts = [PacketBuf::new(&mut frame[..], HEADROOM, len)];
        let mut v = [Ok(())];
        let mut peer = None;
        worker.encap_burst(now, &mut pkts, &mut v, |_src, dst: IpAddr| {
            // The newest SA the peer is known to have, else the newest (see the module doc); a
            // retired SA only when nothing else matches.
            let matching = || out.iter().rev().filter(|e| e.remote_nets.iter().any(|n| n.contains(&dst)));
            let e = matching()
                .find(|e| e.confirmed && !e.retired)
                .or_else(|| matching().find(|e| !e.retired))
                .or_else(|| matching().next())
                .ok_or(DropReason::NoRoute)?;
            peer = Some(e.peer);
            Ok(&e.sa)
        });
        match (v[0], peer) {
            (Ok(()), Some(peer)) => {
                let d = pkts[0].data();
                let hdr = if d.first().is_some_and(|b| b >> 4 == 6) { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN };
                if let Some(esp) = d.get(hdr + udp::HEADER_LEN..) {
                    if let Err(e) = sock.send_to(esp, peer) {
                        logln!(log, "forwarder: send to {peer}: {e}");
                    }
                }
            }
            // Not ours (e.g. the kernel's IPv6 router solicitations on the TUN): dropped silently.
            (Err(DropReason::NoRoute), _) => {}
            (Err(r), _) => logln!(log, "forwarder: outbound packet dropped: {r}"),
            _ => {}
        }
    }
}

impl SaSink for EspForwarder {
    fn install(&mut self, conn: &str, sa: ChildSa) {
        let Some(encap) = sa.encap else {
            logln!(self.log, "forwarder: conn {conn}: SA {:08x} is not UDP-encapsulated; not served", sa.inbound_spi());
            return;
        };
        let now = Instant::now();
        let built = sa_configs(&sa, encap).and_then(|(o, i)| {
            let o = OutboundSa::new(&o, default_provider(), now).map_err(|e| e.to_string())?;
            let i = InboundSa::new(&i, default_provider(), now).map_err(|e| e.to_string())?;
            Ok((o, i))
        });
        match built {
            Ok((o, i)) => {
                // Connections added at run time (`ipsec-control serve`): route their subnets too.
                for n in sa.remote_ts().iter().flat_map(selector_prefixes) {
                    if !self.routed.contains(&n) {
                        match ip(&["route", "replace", &n.to_string(), "dev", self.tun.name()]) {
                            Ok(()) => {
                                self.routed.push(n);
                            }
                            Err(e) => logln!(self.log, "forwarder: route {n}: {e}"),
                        }
                    }
                }
                self.out.push(Outbound {
                    conn: conn.to_string(),
                    spi_in: sa.inbound_spi(),
                    spi_out: sa.outbound_spi(),
                    remote_nets: sa.remote_ts().iter().flat_map(selector_prefixes).collect(),
                    peer: SocketAddr::new(sa.remote.ip(), encap.remote_port),
                    sa: o,
                    confirmed: sa.initiator,
                    retired: self.pre_retired.contains(&(sa.inbound_spi(), sa.outbound_spi())),
                });
                self.pre_retired.retain(|x| *x != (sa.inbound_spi(), sa.outbound_spi()));
                self.inb.insert(sa.inbound_spi(), i);
                logln!(
                    self.log,
                    "forwarder: installed spi_in={:08x} spi_out={:08x}",
                    sa.inbound_spi(),
                    sa.outbound_spi()
                );
            }
            Err(e) => logln!(self.log, "forwarder: conn {conn}: cannot install: {e}"),
        }
    }

    fn counters(&self, _conn: &str, spi_in: u32, spi_out: u32) -> Option<crate::sink::SaCounters> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut c = crate::sink::SaCounters::default();
        let mut found = false;
        if let Some(i) = self.inb.get(&spi_in) {
            c.bytes_in = i.counters().bytes.load(Relaxed);
            c.packets_in = i.counters().packets.load(Relaxed);
            found = true;
        }
        if let Some(o) = self.out.iter().find(|o| o.spi_in == spi_in && o.spi_out == spi_out) {
            c.bytes_out = o.sa.counters().bytes.load(Relaxed);
            c.packets_out = o.sa.counters().packets.load(Relaxed);
            found = true;
        }
        found.then_some(c)
    }

    fn delete(&mut self, _conn: &str, spi_in: u32, spi_out: u32) {
        self.out.retain(|o| !(o.spi_out == spi_out && o.spi_in == spi_in));
        self.inb.remove(&spi_in);
        logln!(self.log, "forwarder: deleted spi_in={spi_in:08x} spi_out={spi_out:08x}");
    }

    fn retire(&mut self, _conn: &str, spi_in: u32, spi_out: u32) {
        let mut found = false;
        for o in self.out.iter_mut().filter(|o| o.spi_in == spi_in && o.spi_out == spi_out) {
            o.retired = true;
            found = true;
            logln!(self.log, "forwarder: retired spi_in={spi_in:08x} spi_out={spi_out:08x} (no longer sent on)");
        }
        if !found && !self.pre_retired.contains(&(spi_in, spi_out)) {
            self.pre_retired.push((spi_in, spi_out));
        }
    }

    fn confirmed(&mut self, _conn: &str, spi_in: u32, spi_out: u32) {
        for o in self.out.iter_mut().filter(|o| o.spi_in == spi_in && o.spi_out == spi_out) {
            o.confirmed = true;
        }
    }

    fn update_endpoints(&mut self, conn: &str, _local: SocketAddr, remote: SocketAddr, encap: Option<UdpEncap>) {
        let port = encap.map_or(remote.port(), |e| e.remote_port);
        for o in self.out.iter_mut().filter(|o| o.conn == conn) {
            o.peer = SocketAddr::new(remote.ip(), port);
        }
    }

    fn esp_received(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, datagram: &[u8]) -> Option<u32> {
        let spi = u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?);
        let mut frame = outer_frame(from, to, datagram)?;
        let len = frame.len();
        let mut pkts = [PacketBuf::new(&mut frame, 0, len)];
        let mut v = [Ok(())];
        let inb = &self.inb;
        self.worker.decap_burst(now, &mut pkts, &mut v, |spi, _dst| inb.get(&spi));
        match v[0] {
            Ok(()) => {
                if let Some(o) = self.out.iter_mut().find(|o| o.spi_in == spi && !o.confirmed) {
                    o.confirmed = true;
                }
                if let Err(e) = self.tun.send(pkts[0].data()) {
                    logln!(self.log, "forwarder: TUN write: {e}");
                }
                Some(spi)
            }
            Err(r) => {
                logln!(self.log, "forwarder: inbound ESP spi {spi:08x} from {from} dropped: {r}");
                None
            }
        }
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.tun.as_raw_fd())
    }

    fn on_readable(&mut self, now: Instant) {
        loop {
            let r = self.tun.recv(&mut self.frame[HEADROOM..HEADROOM + MAX_INNER]);
            match r {
                Ok(0) => break,
                Ok(n) => self.forward_one(now, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    logln!(self.log, "forwarder: TUN read: {e}");
                    break;
                }
            }
        }
    }
}

/// `datagram` (ESP) behind the outer IP + UDP headers it arrived with (UDP checksum 0 over IPv4,
/// RFC 3948; computed over IPv6).
fn outer_frame(from: SocketAddr, to: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
    let ulen = udp::HEADER_LEN + datagram.len();
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = ipv4::HEADER_LEN + ulen;
            let mut b = vec![0u8; total];
            {
                let mut p = ipv4::Packet::new_unchecked(&mut b[..]);
                p.set_version(4);
                p.set_header_len(ipv4::HEADER_LEN);
                p.set_total_len(u16::try_from(total).ok()?);
                p.set_ttl(64);
                p.set_next_header(IpProtocol::UDP);
                p.set_src_addr(s);
                p.set_dst_addr(d);
                p.fill_checksum();
            }
            let mut u = udp::Packet::new_unchecked(&mut b[ipv4::HEADER_LEN..]);
            u.set_src_port(from.port());
            u.set_dst_port(to.port());
            u.set_len(u16::try_from(ulen).ok()?);
            u.payload_mut().copy_from_slice(datagram);
            Some(b)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut b = vec![0u8; ipv6::HEADER_LEN + ulen];
            {
                let mut p = ipv6::Packet::new_unchecked(&mut b[..]);
                p.set_version(6);
                p.set_payload_len(u16::try_from(ulen).ok()?);
                p.set_next_header(IpProtocol::UDP);
                p.set_hop_limit(64);
                p.set_src_addr(s);
                p.set_dst_addr(d);
            }
            let mut u = udp::Packet::new_unchecked(&mut b[ipv6::HEADER_LEN..]);
            u.set_src_port(from.port());
            u.set_dst_port(to.port());
            u.set_len(u16::try_from(ulen).ok()?);
            u.payload_mut().copy_from_slice(datagram);
            u.fill_checksum(s, d);
            Some(b)
        }
        _ => None,
    }
}
