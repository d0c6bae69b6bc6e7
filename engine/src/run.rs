//! `ipsec-engine run`: the forwarding engine on a static configuration plus the tunnels and SAs
//! the control process installs over the control channel ([`crate::channel`]), over AF_XDP or
//! the portable AF_PACKET fallback ([`IoChoice`]).
//!
//! Start-up: load the configuration and build the SA tables; open the packet I/O:
//! - AF_XDP ([`crate::afxdp`]): load the XDP steering program on the outside interface (role
//!   outside: ESP / ESP-in-UDP / IKE to the gateway's addresses) and on the inside interface (role
//!   inside: destinations in the tunnels' remote subnets), native mode with a fallback to generic;
//!   per queue `q` one UMEM and two AF_XDP sockets, (outside, q) and (inside, q), inserted into the
//!   programs' XSKS maps at index `q`;
//! - AF_PACKET ([`crate::afpacket`]): per queue `q` two TPACKET_V3 sockets whose classic BPF
//!   filters steer the same traffic, in a hash fanout group per interface when `queues > 1`;
//! - `auto` tries AF_XDP and, when any of its steps fails, undoes it and opens AF_PACKET with one
//!   warning carrying the AF_XDP error;
//!
//! then read the kernel's routes and neighbours ([`crate::neigh`]) and start one worker thread per
//! queue (pinned to a core unless `--no-pin`), generic over the backend ([`FrameIo`]).
//!
//! Worker loop, per burst of up to 64 frames and per socket:
//! - **outside**: Ethernet (VLAN tags skipped) → IP → ESP (protocol 50) or ESP-in-UDP (port 4500,
//!   non-zero first word) go to `decap_with_table`; IKE and NAT keepalives are punted to the
//!   control channel ([`crate::channel::punt`]: copied, rate-limited, counted as drops when no
//!   control session is up); the inner packet goes out of the inside interface to the kernel's
//!   next hop for its destination.
//! - **inside**: IP packets go to `encap_routed` (route or flow lookup, SA, crypto); the ESP packet
//!   goes out of the outside interface to the next hop for the peer gateway.
//! - router duties ([`crate::forward`]): inner TTL checked and decremented on both sides; an
//!   inside packet too big for its tunnel is fragmented before encryption (IPv4 without DF; the
//!   fragments go through the same path in frames taken from the free pool after the burst) or
//!   answered with an ICMP fragmentation needed / packet too big sent back out of the inside
//!   interface.
//! - L2: a new untagged Ethernet header with the interface's MAC and the neighbour's MAC; an
//!   unresolved neighbour is counted (`no_neighbour`) and the kernel nudged to resolve it.
//!
//! Control channel (unless `--no-control-socket`): the socket is created before anything is
//! attached (a second engine on the same path fails early); all workers share one event queue;
//! after the workers start, [`crate::channel::serve`] runs the channel thread, which edits the same
//! tables the workers read. The static configuration may hold no tunnels at all. The workers do
//! not depend on the session: losing the control process changes nothing in the data path.
//!
//! Stops on SIGINT / SIGTERM: workers finish their burst, counters are printed, the XDP programs
//! (if any) are detached.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipsec_esp::packet::PacketBuf;
use ipsec_esp::{default_provider, EspWorker, EventQueue, Verdict, HEADROOM, MAX_BURST};
use ipsec_wire::ethernet::{self, EtherType};
use ipsec_wire::{esp, parse_ip, IpProtocol, IpVersion};

use crate::afpacket::{AfPacketIo, AfPacketOptions, FanoutGroups, PortSpec};
use crate::afxdp::{XskIo, XskOptions};
use crate::channel::{ChannelParts, ControlState, Punt, PuntShared, XdpProtected};
use crate::config::{EngineConfig, Tables};
use crate::forward::{Forwarder, Inside, MtuContext, Queue};
use crate::io::{Disposition, FrameIo};
use crate::neigh::{Miss, Resolver, ResolverHandle};
use crate::stats::{EngineDrop, StatsSources, WorkerStats};
use crate::xdp::{AttachMode, Prefix, Role, SteeringConfig, XdpSteering};

/// Options of `ipsec-engine run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub attach: AttachMode,
    pub pin: bool,
    pub zero_copy: bool,
    pub busy_poll: bool,
    pub stats_interval: Option<Duration>,
    pub prometheus: Option<SocketAddr>,
    pub neigh_interval: Duration,
    pub frames: u32,
    pub ring_size: u32,
    /// Where to serve the control channel; `None`: no channel (static configuration only).
    pub control_socket: Option<PathBuf>,
    pub io: IoChoice,
}

/// Which packet I/O backend the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoChoice {
    /// AF_XDP, falling back to AF_PACKET (with a warning saying why) when the XDP program cannot
    /// be loaded or attached or an AF_XDP socket cannot be bound; no fallback with `--zero-copy`
    /// (an explicit AF_XDP request).
    #[default]
    Auto,
    /// AF_XDP only: XDP steering + AF_XDP sockets ([`crate::afxdp`]).
    AfXdp,
    /// AF_PACKET only: TPACKET_V3 rings with socket filters ([`crate::afpacket`]).
    AfPacket,
}

const OUTSIDE: usize = 0;
const INSIDE: usize = 1;
const ETH_LEN: usize = 14;
/// Where an inner packet is placed before encapsulation: room for the largest outer headers and
/// the new Ethernet header in front.
const ENCAP_AT: usize = ETH_LEN + HEADROOM;

struct Worker<Io> {
    io: Io,
    esp: EspWorker,
    tables: Arc<Tables>,
    resolver: ResolverHandle,
    stats: Arc<WorkerStats>,
    devs: [String; 2],
    busy_poll: bool,
    fwd: Forwarder,
    punt: Punt,
    /// The backend's `rx_oversize` already counted as `too_big` drops.
    rx_oversize: u64,
}

/// What the first pass found in a frame.
#[derive(Clone, Copy)]
enum Slot {
    /// Goes to the ESP core: IP header at `l3`, `len` bytes.
    Esp {
        l3: usize,
        len: usize,
    },
    /// IKE or a NAT keepalive for the control channel; counted as `reason` if refused.
    Punt {
        l3: usize,
        reason: EngineDrop,
    },
    /// Handed to the punt path (nothing more to do here).
    Punted,
    Drop(EngineDrop),
    /// Handled by the forwarder: an ICMP error to send back (`Some((start, len))`, Ethernet
    /// header included) or queued for fragmentation (`None`).
    Forwarded(Option<(usize, usize)>),
}

impl<Io: FrameIo> Worker<Io> {
    fn run(mut self, stop: &AtomicBool) {
        let mut burst = Io::Burst::default();
        let mut disp = [Disposition::Drop; MAX_BURST];
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            self.io.reclaim();
            self.resolver.refresh();
            let mut got = 0;
            for port in [OUTSIDE, INSIDE] {
                let n = self.io.recv(port, &mut burst);
                if n == 0 {
                    continue;
                }
                got += n;
                self.stats.rx[port].add(n as u64);
                self.process_burst(port, &mut burst, &mut disp, n);
                if self.fwd.has_pending() {
                    self.send_fragments(&mut burst, &mut disp);
                }
            }
            self.stats.wakeups.add(self.io.counters().wakeups.saturating_sub(self.stats.wakeups.get()));
            let oversize = self.io.counters().rx_oversize;
            if oversize > self.rx_oversize {
                self.stats.count_drop(EngineDrop::TooBig, oversize - self.rx_oversize);
                self.rx_oversize = oversize;
            }
            if got == 0 {
                idle = idle.saturating_add(1);
                if !self.busy_poll && idle > 64 {
                    self.io.wait(10);
                }
            } else {
                idle = 0;
            }
        }
    }
}

impl<Io: FrameIo> Worker<Io> {
    /// Runs `process` on the `n` frames of `burst` and hands them to the rings.
    fn process_burst(&mut self, port: usize, burst: &mut Io::Burst, disp: &mut [Disposition; MAX_BURST], n: usize) {
        let io = &mut self.io;
        let (esp, tables, resolver, stats, devs, fwd, punt) =
            (&mut self.esp, &self.tables, &mut self.resolver, &self.stats, &self.devs, &mut self.fwd, &mut self.punt);
        io.with_frames(burst, |frames| {
            process(port, &mut frames[..n], &mut disp[..n], esp, tables, resolver, stats, devs, fwd, punt);
        });
        let before = io.counters().tx_ring_full;
        io.dispatch(burst, &disp[..n]);
        let full = io.counters().tx_ring_full - before;
        if full > 0 {
            stats.count_drop(EngineDrop::TxRingFull, full);
        }
        for d in &disp[..n] {
            if let Disposition::Send { port, .. } = d {
                stats.tx[*port].add(1);
            }
        }
    }

    /// Writes the packets the forwarder queued into free frames: fragments of inside packets and
    /// ICMP errors for senders behind the peer go through the inside path (TTL, encapsulation,
    /// L2) like received packets; fragments of decapsulated packets go straight out of the
    /// inside interface.
    fn send_fragments(&mut self, burst: &mut Io::Burst, disp: &mut [Disposition; MAX_BURST]) {
        for q in [Queue::ToInside, Queue::ToTunnel] {
            self.send_queue(q, burst, disp);
        }
    }

    fn send_queue(&mut self, q: Queue, burst: &mut Io::Burst, disp: &mut [Disposition; MAX_BURST]) {
        // As if received on the side the packets come from (the frames' pool is shared).
        let from = if q == Queue::ToTunnel { INSIDE } else { OUTSIDE };
        while self.fwd.has_pending_in(q) {
            let want = self.fwd.frames_wanted(q, MAX_BURST);
            let got = self.io.alloc(from, want, burst);
            if got == 0 {
                let n = self.fwd.drop_pending(q);
                self.stats.count_drop(EngineDrop::FragNoFrames, n as u64);
                return;
            }
            let (fwd, stats) = (&mut self.fwd, &self.stats);
            let used = self.io.with_frames(burst, |frames| {
                let used = fwd.write_fragments(q, &mut frames[..got], stats);
                // Frames not filled go back to the pool with the burst (their disposition:
                // drop); decapsulated fragments are ready to go.
                for (d, (_, len)) in disp.iter_mut().zip(frames.iter()).take(got) {
                    *d = if q == Queue::ToInside && *len > 0 {
                        Disposition::Send { port: INSIDE, len: *len }
                    } else {
                        Disposition::Drop
                    };
                }
                for d in disp.iter_mut().skip(used) {
                    *d = Disposition::Drop;
                }
                used
            });
            if used == 0 {
                self.io.dispatch(burst, &disp[..got]);
                continue;
            }
            let io = &mut self.io;
            let (esp, tables, resolver, devs, fwd, punt) =
                (&mut self.esp, &self.tables, &mut self.resolver, &self.devs, &mut self.fwd, &mut self.punt);
            let stats = &self.stats;
            if q == Queue::ToTunnel {
                io.with_frames(burst, |frames| {
                    process(
                        INSIDE,
                        &mut frames[..used],
                        &mut disp[..used],
                        esp,
                        tables,
                        resolver,
                        stats,
                        devs,
                        fwd,
                        punt,
                    );
                });
            }
            let before = io.counters().tx_ring_full;
            io.dispatch(burst, &disp[..got]);
            let full = io.counters().tx_ring_full - before;
            if full > 0 {
                stats.count_drop(EngineDrop::TxRingFull, full);
            }
            for d in &disp[..used] {
                if let Disposition::Send { port, .. } = d {
                    stats.tx[*port].add(1);
                }
            }
        }
    }
}

fn classify_outside(frame: &[u8]) -> Slot {
    let Ok(l3) = ethernet::l3_info(frame) else { return Slot::Drop(EngineDrop::NotIp) };
    if l3.ethertype != EtherType::IPV4 && l3.ethertype != EtherType::IPV6 {
        return Slot::Drop(EngineDrop::NotIp);
    }
    let ip = &frame[l3.offset..];
    let Ok(sum) = parse_ip(ip) else { return Slot::Drop(EngineDrop::NotIp) };
    let len = sum.packet_end.min(ip.len());
    // Fragments are refused by the ESP core (counted there as outer_fragment).
    if sum.protocol == IpProtocol::ESP || sum.fragment.is_some() {
        return Slot::Esp { l3: l3.offset, len };
    }
    if sum.protocol == IpProtocol::UDP {
        match sum.ports(ip) {
            Some((_, 500)) => return Slot::Punt { l3: l3.offset, reason: EngineDrop::Ike },
            Some((_, 4500)) => {
                let payload = ip.get(sum.payload_offset + 8..len).unwrap_or(&[]);
                return match esp::classify_udp_encap(payload) {
                    esp::UdpEncap::Esp => Slot::Esp { l3: l3.offset, len },
                    esp::UdpEncap::Ike => Slot::Punt { l3: l3.offset, reason: EngineDrop::Ike },
                    esp::UdpEncap::NatKeepalive => Slot::Punt { l3: l3.offset, reason: EngineDrop::NatKeepalive },
                    esp::UdpEncap::Invalid => Slot::Drop(EngineDrop::NotEsp),
                };
            }
            _ => {}
        }
    }
    Slot::Drop(EngineDrop::NotEsp)
}

fn classify_inside(frame: &[u8]) -> Slot {
    let Ok(l3) = ethernet::l3_info(frame) else { return Slot::Drop(EngineDrop::NotIp) };
    if l3.ethertype != EtherType::IPV4 && l3.ethertype != EtherType::IPV6 {
        return Slot::Drop(EngineDrop::NotIp);
    }
    let ip = &frame[l3.offset..];
    match parse_ip(ip) {
        Ok(sum) => Slot::Esp { l3: l3.offset, len: sum.packet_end.min(ip.len()) },
        Err(_) => Slot::Drop(EngineDrop::NotIp),
    }
}

#[allow(clippy::too_many_arguments)]
fn process(
    port: usize,
    frames: &mut [(&mut [u8], usize)],
    disp: &mut [Disposition],
    esp: &mut EspWorker,
    tables: &Tables,
    resolver: &mut ResolverHandle,
    stats: &WorkerStats,
    devs: &[String; 2],
    fwd: &mut Forwarder,
    punt: &mut Punt,
) {
    let now = Instant::now();
    let n = frames.len();
    let mut slots = [Slot::Drop(EngineDrop::NotIp); MAX_BURST];
    let out_guard = tables.outbound.pin();
    let mtu_ctx = MtuContext {
        outbound: &tables.outbound,
        guard: &out_guard,
        snapshot: resolver.snapshot(),
        outside_dev: &devs[OUTSIDE],
        inside_dev: &devs[INSIDE],
    };
    fwd.begin_burst(&mtu_ctx);
    for (i, (buf, len)) in frames.iter_mut().enumerate() {
        let rx = &buf[..(*len).min(buf.len())];
        slots[i] = if port == OUTSIDE { classify_outside(rx) } else { classify_inside(rx) };
        if let Slot::Punt { l3, reason } = slots[i] {
            if !punt.offer(&rx[l3..], now) {
                stats.count_drop(reason, 1);
            }
            slots[i] = Slot::Punted;
        }
        if port == INSIDE {
            // Make room in front for the outer headers: move the inner packet to ENCAP_AT.
            if let Slot::Esp { l3, len } = slots[i] {
                if ENCAP_AT + len + ipsec_esp::TAILROOM > buf.len() {
                    slots[i] = Slot::Drop(EngineDrop::TooBig);
                } else {
                    buf.copy_within(l3..l3 + len, ENCAP_AT);
                    slots[i] = match fwd.inside(buf, ENCAP_AT, len, &mtu_ctx, stats, now) {
                        Inside::Encapsulate => Slot::Esp { l3: ENCAP_AT, len },
                        Inside::Reply { start, len } => Slot::Forwarded(Some((start, len))),
                        Inside::Queued => Slot::Forwarded(None),
                        Inside::Drop(r) => Slot::Drop(r),
                    };
                }
            }
        }
    }
    // This burst's MTU lookups are done; the encap below pins again.
    drop(out_guard);
    // The ESP core, on the packets that go there.
    let mut idx = [0usize; MAX_BURST];
    let mut spans = [(0usize, 0usize); MAX_BURST];
    let mut verdicts: [Verdict; MAX_BURST] = [Ok(()); MAX_BURST];
    let mut m = 0;
    {
        let mut pkts: arrayvec::ArrayVec<PacketBuf<'_>, MAX_BURST> = arrayvec::ArrayVec::new();
        for (i, (buf, _)) in frames.iter_mut().enumerate() {
            if let Slot::Esp { l3, len } = slots[i] {
                pkts.push(PacketBuf::new(buf, l3, len));
                idx[m] = i;
                m += 1;
            }
        }
        if m > 0 {
            if port == OUTSIDE {
                let guard = tables.inbound.pin();
                esp.decap_with_table(now, &tables.inbound, &guard, &mut pkts, &mut verdicts[..m]);
            } else {
                let guard = tables.outbound.pin();
                esp.encap_routed(now, &tables.outbound, &guard, &mut pkts, &mut verdicts[..m]);
            }
        }
        for (k, p) in pkts.iter().enumerate() {
            spans[k] = (p.start, p.len);
        }
    }
    for d in disp.iter_mut().take(n) {
        *d = Disposition::Drop;
    }
    for (i, s) in slots.iter().enumerate().take(n) {
        match *s {
            Slot::Drop(r) => stats.count_drop(r, 1),
            // An ICMP error back out of the port the packet came from.
            Slot::Forwarded(Some((start, len))) => {
                frames[i].0.copy_within(start..start + len, 0);
                disp[i] = Disposition::Send { port, len };
            }
            _ => {}
        }
    }
    // Out to the other side: L2 header, move to the frame's start.
    let out_port = if port == OUTSIDE { INSIDE } else { OUTSIDE };
    let dev = &devs[out_port];
    for k in 0..m {
        if verdicts[k].is_err() {
            continue; // counted by the ESP core
        }
        let i = idx[k];
        let (start, len) = spans[k];
        let buf = &mut *frames[i].0;
        if port == OUTSIDE {
            if let Err(r) = fwd.decapsulated(&mut buf[start..start + len]) {
                stats.count_drop(r, 1);
                continue;
            }
        }
        let pkt = &buf[start..start + len];
        let Ok(sum) = parse_ip(pkt) else {
            stats.count_drop(EngineDrop::NotIp, 1);
            continue;
        };
        let hop = match resolver.snapshot().next_hop(sum.dst, dev) {
            Ok(h) => h,
            Err(Miss::Unresolved(addr)) => {
                stats.count_drop(EngineDrop::NoNeighbour, 1);
                resolver.nudge(addr, dev, now);
                continue;
            }
            Err(_) => {
                stats.count_drop(EngineDrop::NoRouteOut, 1);
                continue;
            }
        };
        if start < ETH_LEN || len > hop.mtu as usize {
            if port == OUTSIDE && start >= ETH_LEN {
                // Decapsulated, larger than the inside link: fragmented, or ICMP back through
                // the tunnel (see `Forwarder::decap_too_big`).
                let mut macs = [0u8; 12];
                macs[..6].copy_from_slice(&hop.dst_mac);
                macs[6..].copy_from_slice(&hop.src_mac);
                let (mtu, snapshot) = (hop.mtu as usize, resolver.snapshot());
                if let Err(r) = fwd.decap_too_big(buf, start, len, mtu, macs, dev, snapshot, stats, now) {
                    stats.count_drop(r, 1);
                }
            } else {
                // Inside → tunnel packets were fitted to the tunnel MTU before encapsulation
                // (this is a configured tunnel `mtu` above the link's).
                stats.count_drop(EngineDrop::TooBig, 1);
            }
            continue;
        }
        let ethertype = match sum.version {
            IpVersion::V4 => EtherType::IPV4,
            IpVersion::V6 => EtherType::IPV6,
        };
        let e = start - ETH_LEN;
        buf[e..e + 6].copy_from_slice(&hop.dst_mac);
        buf[e + 6..e + 12].copy_from_slice(&hop.src_mac);
        buf[e + 12..e + 14].copy_from_slice(&ethertype.0.to_be_bytes());
        if e != 0 {
            buf.copy_within(e..start + len, 0);
        }
        disp[i] = Disposition::Send { port: out_port, len: ETH_LEN + len };
    }
}

/// Installs a tracing subscriber (RUST_LOG, default `info`) writing to stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn prefix_of(n: &ipnet::IpNet) -> Prefix {
    Prefix::new(n.network(), n.prefix_len())
}

/// Runs the engine until SIGINT / SIGTERM.
pub fn run(opts: RunOptions) -> Result<(), String> {
    let cfg = EngineConfig::load(&opts.config).map_err(|e| format!("{}: {e}", opts.config.display()))?;
    let tables = Arc::new(cfg.build(default_provider(), Instant::now()).map_err(|e| e.to_string())?);
    tracing::info!(
        tunnels = cfg.tunnels.len(),
        outbound_sas = tables.outbound_sas.len(),
        inbound_sas = tables.inbound_sas.len(),
        "configuration loaded from {}",
        opts.config.display()
    );
    let outside: Vec<_> = cfg.interfaces_of(Role::Outside).collect();
    let inside: Vec<_> = cfg.interfaces_of(Role::Inside).collect();
    let (Some(out_if), Some(in_if)) = (outside.first(), inside.first()) else {
        return Err("the configuration needs one outside and one inside interface".into());
    };
    if outside.len() > 1 || inside.len() > 1 {
        return Err("more than one outside or inside interface is not supported yet".into());
    }
    if out_if.queues != in_if.queues {
        return Err(format!(
            "interface {} has {} queues and {} has {}: paired queues are needed (one worker serves both)",
            out_if.name, out_if.queues, in_if.name, in_if.queues
        ));
    }
    let queues = out_if.queues;
    // The control socket first: a second engine on the same path fails before touching anything.
    let listener = match &opts.control_socket {
        Some(path) => Some(ipsec_channel::listen(path).map_err(|e| format!("control socket {}: {e}", path.display()))?),
        None => None,
    };
    // Removes the socket file on every way out of this function.
    let _socket_file = opts.control_socket.as_ref().map(|p| crate::channel::SocketFile(p.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal handler: {e}"))?;
    }

    let mut out_cfg = SteeringConfig::new(Role::Outside);
    out_cfg.local_addrs = cfg.local_addrs.clone();
    let mut in_cfg = SteeringConfig::new(Role::Inside);
    in_cfg.protected = cfg.protected_prefixes().iter().map(prefix_of).collect();
    let ifs = [(out_if.name.as_str(), &out_cfg), (in_if.name.as_str(), &in_cfg)];

    // AF_PACKET: the inside sockets start with the configured protected subnets; the control
    // channel's tunnels are added to their filters as they come (`afpacket::PacketProtected`).
    let open_packet = || -> Result<Vec<AfPacketIo>, String> { open_afpacket(&ifs, queues, &opts) };
    let backend = match opts.io {
        // --zero-copy asks for AF_XDP explicitly: its refusal is the answer, not a fallback.
        IoChoice::AfXdp => Backend::AfXdp(open_afxdp(&ifs, queues, &opts)?),
        IoChoice::Auto if opts.zero_copy => Backend::AfXdp(open_afxdp(&ifs, queues, &opts)?),
        IoChoice::AfPacket => Backend::AfPacket(open_packet()?),
        IoChoice::Auto => match open_afxdp(&ifs, queues, &opts) {
            Ok(b) => Backend::AfXdp(b),
            Err(e) => {
                tracing::warn!("AF_XDP cannot be used ({e}); falling back to AF_PACKET (TPACKET_V3)");
                Backend::AfPacket(open_packet()?)
            }
        },
    };

    let resolver = Resolver::start(opts.neigh_interval, stop.clone())?;
    let env = WorkerEnv {
        opts: &opts,
        cfg: &cfg,
        tables,
        resolver: &resolver,
        devs: [out_if.name.clone(), in_if.name.clone()],
        stop,
        listener,
    };
    match backend {
        Backend::AfXdp((steering, ios)) => serve(ios, steering, None, env),
        Backend::AfPacket(ios) => {
            let hook = crate::afpacket::PacketProtected::new(&ios, INSIDE, in_cfg.clone())?;
            serve(ios, Vec::new(), Some(Box::new(hook)), env)
        }
    }
}

/// The XDP programs, by interface name.
type Steering = Vec<(String, XdpSteering)>;

/// The opened packet I/O of all workers.
enum Backend {
    AfXdp((Steering, Vec<XskIo>)),
    AfPacket(Vec<AfPacketIo>),
}

/// XDP steering on both interfaces and, per queue, one UMEM with the worker's two AF_XDP
/// sockets inserted into the programs' socket maps. On error, what was attached is detached (the
/// steering objects are dropped).
fn open_afxdp(
    ifs: &[(&str, &SteeringConfig); 2],
    queues: u32,
    opts: &RunOptions,
) -> Result<(Steering, Vec<XskIo>), String> {
    let mut steering = Vec::new();
    for (name, sc) in ifs {
        let mut s = XdpSteering::load(sc).map_err(|e| format!("{name}: {}", with_causes(&e)))?;
        let mode = s.attach(name, opts.attach).map_err(|e| with_causes(&e))?;
        tracing::info!(interface = %name, role = ?sc.role, "XDP program attached ({mode:?} mode)");
        steering.push((name.to_string(), s));
    }
    let xsk_opts = XskOptions {
        zero_copy: opts.zero_copy,
        busy_poll: opts.busy_poll,
        frames: opts.frames,
        ring_size: opts.ring_size,
    };
    let mut ios = Vec::new();
    for q in 0..queues {
        let io = XskIo::open(&[(ifs[OUTSIDE].0.to_string(), q), (ifs[INSIDE].0.to_string(), q)], &xsk_opts)
            .map_err(|e| e.to_string())?;
        steering[OUTSIDE].1.insert_xsk(q, io.fd(OUTSIDE)).map_err(|e| with_causes(&e))?;
        steering[INSIDE].1.insert_xsk(q, io.fd(INSIDE)).map_err(|e| with_causes(&e))?;
        tracing::info!(
            worker = q,
            "AF_XDP sockets {} and {} on one UMEM ({} mode)",
            io.name(OUTSIDE),
            io.name(INSIDE),
            if opts.zero_copy { "zero-copy" } else { "copy" }
        );
        ios.push(io);
    }
    Ok((steering, ios))
}

/// `e` followed by its chain of causes (`: cause: cause …`), each once.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Per queue, one AF_PACKET socket on each interface, filtered like the XDP program steers, in a
/// fanout group per interface when there are several workers.
fn open_afpacket(
    ifs: &[(&str, &SteeringConfig); 2],
    queues: u32,
    opts: &RunOptions,
) -> Result<Vec<AfPacketIo>, String> {
    if opts.zero_copy {
        return Err("--zero-copy needs AF_XDP; AF_PACKET always copies".into());
    }
    let (v4, v6) = crate::afpacket::kernel_forwarding();
    if v4 == Some(true) || v6 == Some(true) {
        tracing::warn!(
            "the kernel forwards packets (net.ipv4.ip_forward={}, net.ipv6.conf.all.forwarding={}): with AF_PACKET \
             it also sees what the engine handles and would forward inside packets in clear; set both to 0 \
             (see engine/README.md, AF_PACKET fallback)",
            u8::from(v4 == Some(true)),
            u8::from(v6 == Some(true))
        );
    }
    let pk_opts = AfPacketOptions::sized(opts.frames, opts.ring_size);
    let mut groups = FanoutGroups::default();
    let mut ios = Vec::new();
    for q in 0..queues {
        let ports = ifs.map(|(interface, steering)| PortSpec { interface, queue: q, steering, fanout: queues > 1 });
        let io = AfPacketIo::open(&ports, &pk_opts, &mut groups).map_err(|e| e.to_string())?;
        tracing::info!(
            worker = q,
            "AF_PACKET sockets {} and {} (TPACKET_V3 rx ring of {} x {} KiB blocks, sendmmsg tx{})",
            io.name(OUTSIDE),
            io.name(INSIDE),
            pk_opts.ring_blocks,
            crate::afpacket::BLOCK_SIZE / 1024,
            if queues > 1 { ", hash fanout" } else { "" }
        );
        ios.push(io);
    }
    Ok(ios)
}

/// What every worker shares, whatever its backend.
struct WorkerEnv<'a> {
    opts: &'a RunOptions,
    cfg: &'a EngineConfig,
    tables: Arc<Tables>,
    resolver: &'a Arc<Resolver>,
    devs: [String; 2],
    stop: Arc<AtomicBool>,
    /// The control channel's listening socket, if it is served.
    listener: Option<std::os::unix::net::UnixListener>,
}

/// Builds one worker per opened I/O, serves the statistics, runs the workers until stopped and
/// prints the final counters.
/// `packet_steering`: the control channel's steering hook when there is no XDP program (AF_PACKET).
fn serve<Io: FrameIo + 'static>(
    ios: Vec<Io>,
    steering: Steering,
    packet_steering: Option<Box<dyn crate::channel::Steering>>,
    env: WorkerEnv<'_>,
) -> Result<(), String> {
    let WorkerEnv { opts, cfg, tables, resolver, devs, stop, listener } = env;
    let cores = if opts.pin { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
    if opts.pin && cores.is_empty() {
        tracing::warn!("no core list available: workers are not pinned");
    }
    let mut workers = Vec::new();
    let mut worker_stats = Vec::new();
    // One event queue for all workers, drained by the channel thread.
    let events = Arc::new(EventQueue::default());
    let punt = Arc::new(PuntShared::default());
    for (q, io) in ios.into_iter().enumerate() {
        let esp = EspWorker::new(default_provider(), events.clone()).map_err(|e| e.to_string())?;
        let stats = Arc::new(WorkerStats::new(
            q,
            vec![io.name(OUTSIDE).into(), io.name(INSIDE).into()],
            esp.counters().clone(),
        ));
        worker_stats.push(stats.clone());
        workers.push(Worker {
            io,
            esp,
            tables: tables.clone(),
            resolver: resolver.handle(),
            stats,
            devs: devs.clone(),
            busy_poll: opts.busy_poll,
            fwd: Forwarder::new(cfg.inside_addrs.clone(), cfg.tunnels.iter().filter_map(|t| t.mtu).min()),
            punt: Punt::new(punt.clone()),
            rx_oversize: 0,
        });
    }

    let steering = Arc::new(Mutex::new(steering));
    let control = ControlState::new(
        tables.clone(),
        default_provider(),
        cfg,
        packet_steering.unwrap_or_else(|| Box::new(XdpProtected::new(steering.clone(), INSIDE))),
        Instant::now(),
    );
    let control_sas = control.published();

    let sources = Arc::new(StatsSources {
        workers: worker_stats,
        outbound_sas: tables.outbound_sas.clone(),
        inbound_sas: tables.inbound_sas.clone(),
        steering,
        control_sas: Some(control_sas),
    });
    if let Some(addr) = opts.prometheus {
        crate::stats::serve_prometheus(addr, sources.clone(), stop.clone())?;
    }

    let mut handles = Vec::new();
    for (q, w) in workers.into_iter().enumerate() {
        let stop = stop.clone();
        let core = (!cores.is_empty()).then(|| cores[q % cores.len()]);
        let h = std::thread::Builder::new()
            .name(format!("worker-{q}"))
            .spawn(move || {
                if let Some(c) = core {
                    if core_affinity::set_for_current(c) {
                        tracing::info!(worker = q, core = c.id, "pinned");
                    } else {
                        tracing::warn!(worker = q, core = c.id, "pinning failed");
                    }
                }
                w.run(&stop);
            })
            .map_err(|e| format!("worker thread: {e}"))?;
        handles.push(h);
    }
    let channel = match listener {
        Some(listener) => {
            let parts = ChannelParts {
                listener,
                state: control,
                events: events.clone(),
                punt: punt.clone(),
                ike_tx: crate::channel::ike_tx::IkeTx::new(cfg.local_addrs.clone()),
                workers: sources.workers.clone(),
                boot_id: crate::channel::boot_id(),
            };
            let h = crate::channel::serve(parts, stop.clone()).map_err(|e| format!("channel thread: {e}"))?;
            tracing::info!("control channel on {}", opts.control_socket.as_ref().expect("set").display());
            Some(h)
        }
        None => {
            drop(control);
            None
        }
    };
    tracing::info!(workers = handles.len(), "engine running");
    println!("ipsec-engine: running ({} workers)", handles.len());

    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(every) = opts.stats_interval {
            if last_stats.elapsed() >= every {
                last_stats = Instant::now();
                println!("stats:\n{}", sources.render_text());
            }
        }
        if !stop.load(Ordering::Relaxed) && handles.iter().any(|h| h.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            tracing::error!("a worker stopped unexpectedly");
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(h) = channel {
        let _ = h.join();
    }

    println!("final stats:\n{}", sources.render_text());
    if sources.steering.lock().map(|s| s.is_empty()).unwrap_or(true) {
        tracing::info!("stopped");
    } else {
        tracing::info!("stopped; detaching XDP programs");
    }
    Ok(())
}
