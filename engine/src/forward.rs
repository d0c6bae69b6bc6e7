//! A worker's router duties around the ESP core: inner TTL, the tunnel MTU (fragmentation before
//! encryption, ICMP "fragmentation needed" / "packet too big"), and ICMP errors back to inside
//! senders.
//!
//! Called by the worker loop ([`crate::run`]) for every inner packet:
//! - **inside → tunnel** ([`Forwarder::inside`]), before encapsulation: a TTL / hop limit of 0 or
//!   1 expires (dropped, ICMP time exceeded); a packet larger than its tunnel's inner MTU
//!   ([`ipsec_esp::OutboundSa::inner_mtu`] of the outside next hop's MTU, i.e. the link MTU or
//!   the route's `mtu` metric, and of the tunnel's configured `mtu`) is handled as
//!   [`ipsec_esp::mtu_action`] says: IPv4 without DF is copied to a small per-worker backlog and
//!   fragmented ([`ipsec_wire::frag::Fragmenter`]) into free UMEM frames after the burst
//!   ([`Forwarder::write_fragments`]), each fragment then going through the same path as a
//!   received packet and so becoming its own ESP packet; IPv4 with DF and IPv6 get an ICMP error
//!   with the inner MTU, built in place in the packet's own frame and sent back out of the
//!   inside interface to the MAC it came from. Everything else has its TTL decremented
//!   (incremental checksum) and goes on to encapsulation.
//! - **tunnel → inside** ([`Forwarder::decapsulated`]): the decapsulated packet's TTL is checked
//!   and decremented the same way (an expired one is dropped and counted; no ICMP is sent back
//!   through the tunnel). A decapsulated packet larger than the inside next hop's MTU
//!   ([`Forwarder::decap_too_big`]) is fragmented to it if it is IPv4 without DF (the fragments
//!   go straight out of the inside interface), otherwise answered with ICMP fragmentation needed
//!   / packet too big carrying that MTU, addressed to its sender behind the peer: the error is
//!   re-injected into the inside path and so encapsulated like any inside packet. It passes the
//!   tunnel only if its source (the gateway's inside address, below) lies within the tunnel's
//!   local selectors; otherwise it is dropped there and counted as having no SA.
//!
//! ICMP errors: never about an ICMP error, a non-first fragment or a multicast / broadcast /
//! unspecified address (`ipsec_wire::icmp_error::may_answer`); source address: the first
//! configured `gateway.inside_addrs` entry of the sender's family, else the inside interface's
//! address on the sender's subnet (or its first address of that family); at most
//! [`ICMP_RATE`] per second and worker with bursts of [`ICMP_BURST`] (token bucket, as Linux's
//! `icmp_msgs_per_sec` / `icmp_msgs_burst`). Every error sent or suppressed is counted.
//!
//! The MTU lookup (outbound SA, next hop of the peer) is made only for packets longer than
//! [`Forwarder`]'s floor: the smallest inner MTU any SA could give on the current link (link MTU,
//! or the smallest configured tunnel `mtu`, minus the largest ESP overhead); once per run of
//! packets with the same (source, destination) in a burst. No allocation per packet: the
//! backlog is allocated once.

use std::net::IpAddr;
use std::time::Instant;

use arrayvec::ArrayVec;
use ipsec_esp::table::ReadGuard;
use ipsec_esp::{mtu_action, MtuAction, OutboundSa, HEADROOM, TAILROOM};
use ipsec_wire::frag::Fragmenter;
use ipsec_wire::icmp_error::{self, ErrorKind};
use ipsec_wire::{ipv4, ipv6, parse_ip, IpVersion};

use crate::neigh::Snapshot;
use crate::stats::{EngineDrop, WorkerStats};

/// ICMP errors per second and worker.
pub const ICMP_RATE: u32 = 1000;
/// Burst of ICMP errors a worker may send at once.
pub const ICMP_BURST: u32 = 50;
/// Packets waiting for fragmentation after a burst (per direction).
pub const BACKLOG_PACKETS: usize = 16;
/// Bytes of backlog (every packet is at most one frame).
const BACKLOG_BYTES: usize = BACKLOG_PACKETS * 4096;
/// TTL / hop limit of the ICMP errors sent.
const ICMP_TTL: u8 = 64;
/// Largest overhead an SA adds to an inner packet: outer IPv6 + UDP + ESP + IV (HEADROOM),
/// padding (≤ 15), trailer (2) and the largest ICV (32).
const MAX_OVERHEAD: usize = HEADROOM + 15 + 2 + 32;
const ETH_LEN: usize = 14;

/// A token bucket in whole tokens, refilled from the caller's clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// `rate` tokens per second, at most `burst` stored; starts full.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket { rate, burst, tokens: f64::from(burst), last: None }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * f64::from(self.rate)).min(f64::from(self.burst));
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What becomes of an inner packet from the inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inside {
    /// On to encapsulation (TTL decremented).
    Encapsulate,
    /// An ICMP error was built in the frame: send `frame[start..start + len]` (Ethernet header
    /// included) back out of the inside interface.
    Reply { start: usize, len: usize },
    /// Copied to the fragmentation backlog; the frame is free.
    Queued,
    /// Dropped (and counted by the caller) for this reason.
    Drop(EngineDrop),
}

/// Where an inside packet's MTU comes from, for one burst.
pub struct MtuContext<'a, 'g> {
    pub outbound: &'g ipsec_esp::table::OutboundTables<OutboundSa>,
    pub guard: &'g ReadGuard<'a>,
    pub snapshot: &'a Snapshot,
    pub outside_dev: &'a str,
    pub inside_dev: &'a str,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Destination and source MAC for the fragments' frames: the received frame's (tunnel-bound
    /// packets) or the inside next hop's (decapsulated packets).
    macs: [u8; 12],
    off: usize,
    len: usize,
    /// Fragment to this MTU; `None`: send the packet as it is (an ICMP error re-injected).
    mtu: Option<u16>,
}

/// Where the packets of a backlog go once written into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Through the inside path (TTL, encapsulation): fragments of inside packets too big for the
    /// tunnel, and ICMP errors for senders behind the peer.
    ToTunnel,
    /// Straight out of the inside interface: fragments of decapsulated packets too big for it.
    ToInside,
}

/// Packets copied out of their frames, waiting for free frames after the burst.
struct Backlog {
    bytes: Vec<u8>,
    pending: ArrayVec<Pending, BACKLOG_PACKETS>,
}

impl Backlog {
    fn new() -> Self {
        Backlog { bytes: vec![0; BACKLOG_BYTES], pending: ArrayVec::new() }
    }

    /// Copies `pkt`; false when the backlog is full.
    fn push(&mut self, pkt: &[u8], macs: [u8; 12], mtu: Option<u16>) -> bool {
        let off = self.pending.last().map_or(0, |p| p.off + p.len);
        if self.pending.is_full() || off + pkt.len() > self.bytes.len() {
            return false;
        }
        self.bytes[off..off + pkt.len()].copy_from_slice(pkt);
        self.pending.push(Pending { macs, off, len: pkt.len(), mtu });
        true
    }

    fn count(&self, p: &Pending) -> usize {
        match p.mtu {
            Some(mtu) => Fragmenter::new(&self.bytes[p.off..p.off + p.len], usize::from(mtu)).map_or(0, |f| f.count()),
            None => 1,
        }
    }
}

/// One worker's router state.
pub struct Forwarder {
    icmp: TokenBucket,
    /// Configured ICMP source addresses (`gateway.inside_addrs`).
    inside_addrs: Vec<IpAddr>,
    /// The smallest configured tunnel `mtu`, if any.
    min_tunnel_mtu: Option<u16>,
    to_tunnel: Backlog,
    to_inside: Backlog,
    /// One-entry cache of the last MTU lookup in this burst: (src, dst) → inner MTU.
    cache: Option<((IpAddr, IpAddr), Option<usize>)>,
    /// This burst's outside link MTU, and the length up to which no lookup is needed.
    link_mtu: usize,
    floor: usize,
}

impl Forwarder {
    pub fn new(inside_addrs: Vec<IpAddr>, min_tunnel_mtu: Option<u16>) -> Self {
        Forwarder {
            icmp: TokenBucket::new(ICMP_RATE, ICMP_BURST),
            inside_addrs,
            min_tunnel_mtu,
            to_tunnel: Backlog::new(),
            to_inside: Backlog::new(),
            cache: None,
            link_mtu: 1500,
            floor: 0,
        }
    }

    /// Sets up per-burst state (call before each burst: the tables may have changed).
    pub fn begin_burst(&mut self, ctx: &MtuContext<'_, '_>) {
        self.cache = None;
        self.link_mtu = ctx.snapshot.link_mtu(ctx.outside_dev).unwrap_or(1500) as usize;
        self.floor = match self.min_tunnel_mtu {
            Some(m) => self.link_mtu.min(usize::from(m)),
            None => self.link_mtu,
        }
        .saturating_sub(MAX_OVERHEAD);
    }

    /// Handles an inner packet at `frame[l3..l3 + len]`, received from the inside in a frame
    /// whose Ethernet header is still at `frame[0..14]` (and whose packet sits at least 48 bytes
    /// behind it, room for an ICMP error's headers).
    pub fn inside(
        &mut self,
        frame: &mut [u8],
        l3: usize,
        len: usize,
        ctx: &MtuContext<'_, '_>,
        stats: &WorkerStats,
        now: Instant,
    ) -> Inside {
        let Ok(sum) = parse_ip(&frame[l3..l3 + len]) else {
            return Inside::Encapsulate; // the ESP core counts it
        };
        let ttl = match sum.version {
            IpVersion::V4 => frame[l3 + 8],
            IpVersion::V6 => frame[l3 + 7],
        };
        if ttl <= 1 {
            return self.icmp_error(frame, l3, len, ErrorKind::TimeExceeded, EngineDrop::TtlExpired, ctx, stats, now);
        }
        let link_mtu = self.link_mtu;
        if len > self.floor {
            let key = (sum.src, sum.dst);
            let inner_mtu = match self.cache {
                Some((k, m)) if k == key => m,
                _ => {
                    let m = ctx.outbound.resolve(sum.src, sum.dst, ctx.guard).map(|(_, sa)| {
                        let outer =
                            ctx.snapshot.next_hop(sa.remote(), ctx.outside_dev).map_or(link_mtu, |h| h.mtu as usize);
                        sa.inner_mtu(outer)
                    });
                    self.cache = Some((key, m));
                    m
                }
            };
            // No SA: the ESP core drops and counts it (and asks for one).
            if let Some(inner_mtu) = inner_mtu {
                let df = sum.version == IpVersion::V4 && ipv4::Packet::new_unchecked(&frame[l3..]).dont_frag();
                match mtu_action(&sum, len, df, inner_mtu) {
                    MtuAction::Fits => {}
                    MtuAction::TooBig { mtu } => {
                        let kind = ErrorKind::TooBig { mtu };
                        return self.icmp_error(frame, l3, len, kind, EngineDrop::FragNeeded, ctx, stats, now);
                    }
                    MtuAction::Fragment { mtu } => return self.queue(frame, l3, len, mtu),
                    MtuAction::Drop => return Inside::Drop(EngineDrop::TooBig),
                }
            }
        }
        decrement_ttl(&mut frame[l3..l3 + len], sum.version);
        Inside::Encapsulate
    }

    /// Checks and decrements the TTL of a decapsulated packet at `pkt` (its IP header first).
    pub fn decapsulated(&mut self, pkt: &mut [u8]) -> Result<(), EngineDrop> {
        let Some(version) = pkt.first().and_then(|b| ipsec_wire::ip_version(*b)) else { return Ok(()) };
        let ttl = match version {
            IpVersion::V4 => pkt.get(8),
            IpVersion::V6 => pkt.get(7),
        };
        match ttl {
            Some(t) if *t <= 1 => Err(EngineDrop::TtlExpired),
            Some(_) => {
                decrement_ttl(pkt, version);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Handles a decapsulated packet at `frame[l3..l3 + len]` that is larger than `mtu`, the
    /// inside next hop's MTU (`macs`: that hop's destination and source MAC). IPv4 without DF
    /// is queued for fragmentation out of the inside interface ([`Queue::ToInside`]); anything
    /// else gets an ICMP error with `mtu` built in its frame (at least 48 bytes must precede the
    /// packet, which they do after decapsulation) and queued for the tunnel
    /// ([`Queue::ToTunnel`]), subject to the same rules and rate as every ICMP error. `Ok`: the
    /// packet was handled (and counted); `Err`: drop it and count the reason.
    #[allow(clippy::too_many_arguments)]
    pub fn decap_too_big(
        &mut self,
        frame: &mut [u8],
        l3: usize,
        len: usize,
        mtu: usize,
        macs: [u8; 12],
        inside_dev: &str,
        snapshot: &Snapshot,
        stats: &WorkerStats,
        now: Instant,
    ) -> Result<(), EngineDrop> {
        let Some(pkt) = frame.get(l3..l3 + len) else { return Err(EngineDrop::TooBig) };
        let Ok(sum) = parse_ip(pkt) else { return Err(EngineDrop::TooBig) };
        let df = sum.version == IpVersion::V4 && ipv4::Packet::new_unchecked(pkt).dont_frag();
        match mtu_action(&sum, len, df, mtu) {
            MtuAction::Fits => Err(EngineDrop::TooBig), // not called for these
            MtuAction::Drop => Err(EngineDrop::TooBig),
            MtuAction::Fragment { mtu } => {
                if self.to_inside.push(pkt, macs, Some(mtu)) {
                    Ok(())
                } else {
                    Err(EngineDrop::FragNoFrames)
                }
            }
            MtuAction::TooBig { mtu } => {
                let reason = EngineDrop::FragNeeded;
                if !icmp_error::may_answer(pkt) {
                    stats.fwd.icmp_suppressed.add(1);
                    return Err(reason);
                }
                let src = self
                    .inside_addrs
                    .iter()
                    .copied()
                    .find(|a| a.is_ipv4() == sum.src.is_ipv4())
                    .or_else(|| snapshot.source_for(inside_dev, sum.src));
                let Some(src) = src else {
                    stats.fwd.icmp_suppressed.add(1);
                    return Err(reason);
                };
                if !self.icmp.take(now) {
                    stats.fwd.icmp_suppressed.add(1);
                    return Err(reason);
                }
                let kind = ErrorKind::TooBig { mtu };
                let Ok(r) = icmp_error::emit_in_place(frame, l3, len, src, kind, ICMP_TTL) else {
                    stats.fwd.icmp_suppressed.add(1);
                    return Err(reason);
                };
                if !self.to_tunnel.push(&frame[r], [0; 12], None) {
                    return Err(EngineDrop::FragNoFrames);
                }
                stats.count_drop(reason, 1);
                stats.fwd.icmp_sent.add(1);
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &mut self,
        frame: &mut [u8],
        l3: usize,
        len: usize,
        kind: ErrorKind,
        reason: EngineDrop,
        ctx: &MtuContext<'_, '_>,
        stats: &WorkerStats,
        now: Instant,
    ) -> Inside {
        let pkt = &frame[l3..l3 + len];
        if !icmp_error::may_answer(pkt) {
            stats.fwd.icmp_suppressed.add(1);
            return Inside::Drop(reason);
        }
        let Ok(sum) = parse_ip(pkt) else { return Inside::Drop(reason) };
        let src = self
            .inside_addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == sum.src.is_ipv4())
            .or_else(|| ctx.snapshot.source_for(ctx.inside_dev, sum.src));
        let Some(src) = src else {
            stats.fwd.icmp_suppressed.add(1);
            return Inside::Drop(reason);
        };
        if !self.icmp.take(now) {
            stats.fwd.icmp_suppressed.add(1);
            return Inside::Drop(reason);
        }
        let mut macs = [0u8; 12];
        macs.copy_from_slice(&frame[..12]);
        let Ok(r) = icmp_error::emit_in_place(frame, l3, len, src, kind, ICMP_TTL) else {
            stats.fwd.icmp_suppressed.add(1);
            return Inside::Drop(reason);
        };
        let Some(start) = r.start.checked_sub(ETH_LEN) else { return Inside::Drop(reason) };
        // Back to where it came from: destination = the sender's MAC, source = ours.
        frame[start..start + 6].copy_from_slice(&macs[6..12]);
        frame[start + 6..start + 12].copy_from_slice(&macs[..6]);
        let ethertype: u16 = if src.is_ipv4() { 0x0800 } else { 0x86dd };
        frame[start + 12..start + 14].copy_from_slice(&ethertype.to_be_bytes());
        stats.count_drop(reason, 1);
        stats.fwd.icmp_sent.add(1);
        Inside::Reply { start, len: ETH_LEN + r.len() }
    }

    fn queue(&mut self, frame: &[u8], l3: usize, len: usize, mtu: u16) -> Inside {
        let mut macs = [0u8; 12];
        macs.copy_from_slice(&frame[..12]);
        if self.to_tunnel.push(&frame[l3..l3 + len], macs, Some(mtu)) {
            Inside::Queued
        } else {
            Inside::Drop(EngineDrop::FragNoFrames)
        }
    }

    fn backlog(&self, q: Queue) -> &Backlog {
        match q {
            Queue::ToTunnel => &self.to_tunnel,
            Queue::ToInside => &self.to_inside,
        }
    }

    /// Whether packets wait in either queue.
    pub fn has_pending(&self) -> bool {
        !self.to_tunnel.pending.is_empty() || !self.to_inside.pending.is_empty()
    }

    /// Whether packets wait in queue `q`.
    pub fn has_pending_in(&self, q: Queue) -> bool {
        !self.backlog(q).pending.is_empty()
    }

    /// Frames the packets waiting in `q` need in all, capped at `max`: whole packets only (at
    /// least the first packet's count, which may exceed `max` and is then dropped by
    /// `write_fragments`).
    pub fn frames_wanted(&self, q: Queue, max: usize) -> usize {
        let b = self.backlog(q);
        let mut n = 0;
        for p in &b.pending {
            let c = b.count(p);
            if n > 0 && n + c > max {
                break;
            }
            n += c;
        }
        n.min(max)
    }

    /// Writes the packets waiting in `q` into `frames` (free frames: each gets an Ethernet
    /// header with the packet's MACs and one fragment — or the whole packet when it is not to be
    /// fragmented — and its length set), whole packets only and in order; returns how many
    /// frames were filled. Packets that cannot be fragmented, or need more frames than a burst
    /// has, are dropped and counted; the rest wait for the next call when `frames` ran out.
    pub fn write_fragments(&mut self, q: Queue, frames: &mut [(&mut [u8], usize)], stats: &WorkerStats) -> usize {
        let b = match q {
            Queue::ToTunnel => &mut self.to_tunnel,
            Queue::ToInside => &mut self.to_inside,
        };
        let mut used = 0;
        let mut done = 0;
        for p in b.pending.iter() {
            let pkt = &b.bytes[p.off..p.off + p.len];
            let Some(mtu) = p.mtu else {
                // Sent as it is (an ICMP error): one frame.
                if used == frames.len() {
                    break;
                }
                let (buf, len) = &mut frames[used];
                if ETH_LEN + pkt.len() <= buf.len() {
                    buf[..12].copy_from_slice(&p.macs);
                    let ethertype: u16 = if pkt[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
                    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
                    buf[ETH_LEN..ETH_LEN + pkt.len()].copy_from_slice(pkt);
                    *len = ETH_LEN + pkt.len();
                } else {
                    *len = 0;
                    stats.count_drop(EngineDrop::FragNoFrames, 1);
                }
                used += 1;
                done += 1;
                continue;
            };
            let Ok(mut f) = Fragmenter::new(pkt, usize::from(mtu)) else {
                stats.count_drop(EngineDrop::TooBig, 1);
                done += 1;
                continue;
            };
            let count = f.count();
            if used + count > frames.len() {
                if used == 0 {
                    // Would never fit a burst.
                    stats.count_drop(EngineDrop::FragNoFrames, 1);
                    done += 1;
                    continue;
                }
                break;
            }
            let mut ok = true;
            for (buf, len) in frames[used..used + count].iter_mut() {
                let room = (buf.len() as isize - (ETH_LEN + HEADROOM + TAILROOM) as isize).max(0) as usize;
                match f.write_next(&mut buf[ETH_LEN..ETH_LEN + room]) {
                    Some(Ok(n)) => {
                        buf[..12].copy_from_slice(&p.macs);
                        buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                        *len = ETH_LEN + n;
                    }
                    _ => {
                        ok = false;
                        *len = 0;
                    }
                }
            }
            if ok {
                stats.fwd.fragmented.add(1);
                stats.fwd.fragments.add(count as u64);
            } else {
                stats.count_drop(EngineDrop::FragNoFrames, 1);
            }
            used += count;
            done += 1;
        }
        b.pending.drain(..done);
        // Compact the backlog: move the rest to the front.
        if let Some(first) = b.pending.first().map(|p| p.off) {
            let end = b.pending.last().map_or(first, |p| p.off + p.len);
            b.bytes.copy_within(first..end, 0);
            for p in b.pending.iter_mut() {
                p.off -= first;
            }
        }
        used
    }

    /// Drops everything waiting in `q` (no frames available); returns how many packets.
    pub fn drop_pending(&mut self, q: Queue) -> usize {
        let b = match q {
            Queue::ToTunnel => &mut self.to_tunnel,
            Queue::ToInside => &mut self.to_inside,
        };
        let n = b.pending.len();
        b.pending.clear();
        n
    }
}

/// Decrements the TTL / hop limit of a packet whose TTL is known to be ≥ 1.
fn decrement_ttl(pkt: &mut [u8], version: IpVersion) {
    match version {
        IpVersion::V4 => {
            let _ = ipv4::Packet::new_unchecked(pkt).decrement_ttl();
        }
        IpVersion::V6 => {
            let mut ip = ipv6::Packet::new_unchecked(pkt);
            let h = ip.hop_limit();
            ip.set_hop_limit(h.saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_limits_rate_and_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(150)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    fn stats() -> WorkerStats {
        WorkerStats::new(0, vec!["out/0".into(), "in/0".into()], Default::default())
    }

    /// A received frame: Ethernet header, then an IPv4 UDP packet of `len` bytes without DF.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; 4096];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[8, 0]);
        let p = &mut f[ETH_LEN..ETH_LEN + len];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(seed);
        }
        let mut ip = ipv4::Packet::new_unchecked(p);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(len as u16);
        ip.set_ident(u16::from(seed));
        ip.clear_flags();
        ip.set_ttl(64);
        ip.set_next_header(ipsec_wire::IpProtocol::UDP);
        ip.set_src_addr([192, 0, 2, 2].into());
        ip.set_dst_addr([198, 51, 100, 2].into());
        ip.fill_checksum();
        f
    }

    #[test]
    fn queued_packets_are_written_as_fragments_into_frames() {
        let mut f = Forwarder::new(Vec::new(), None);
        let st = stats();
        let a = frame(1500, 3);
        let b = frame(3000, 5);
        assert_eq!(f.queue(&a, ETH_LEN, 1500, 1446), Inside::Queued);
        assert_eq!(f.queue(&b, ETH_LEN, 3000, 1446), Inside::Queued);
        assert_eq!(f.frames_wanted(Queue::ToTunnel, 64), 2 + 3);
        // Only 4 frames: the first packet's 2 go, the second waits.
        let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![0xa5u8; 4096]).collect();
        let mut frames: Vec<(&mut [u8], usize)> = bufs.iter_mut().map(|b| (&mut b[..], 0)).collect();
        assert_eq!(f.write_fragments(Queue::ToTunnel, &mut frames, &st), 2);
        let mut payload = Vec::new();
        for (buf, len) in &frames[..2] {
            assert_eq!(&buf[..14], &a[..14]);
            let ip = ipv4::Packet::new_checked(&buf[ETH_LEN..*len]).unwrap();
            assert!(ip.verify_checksum() && ip.total_len() as usize <= 1446);
            payload.extend_from_slice(ip.payload());
        }
        assert_eq!(payload, &a[ETH_LEN + 20..ETH_LEN + 1500]);
        assert!(f.has_pending());
        assert_eq!(f.frames_wanted(Queue::ToTunnel, 64), 3);
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0xa5u8; 4096]).collect();
        let mut frames: Vec<(&mut [u8], usize)> = bufs.iter_mut().map(|b| (&mut b[..], 0)).collect();
        assert_eq!(f.write_fragments(Queue::ToTunnel, &mut frames, &st), 3);
        let mut payload = Vec::new();
        for (buf, len) in &frames[..3] {
            payload.extend_from_slice(ipv4::Packet::new_checked(&buf[ETH_LEN..*len]).unwrap().payload());
        }
        assert_eq!(payload, &b[ETH_LEN + 20..ETH_LEN + 3000], "the backlog was compacted correctly");
        assert!(!f.has_pending());
        assert_eq!((st.fwd.fragmented.get(), st.fwd.fragments.get()), (2, 5));
    }

    #[test]
    fn the_backlog_is_bounded() {
        let mut f = Forwarder::new(Vec::new(), None);
        let a = frame(1500, 3);
        for _ in 0..BACKLOG_PACKETS {
            assert_eq!(f.queue(&a, ETH_LEN, 1500, 1446), Inside::Queued);
        }
        assert_eq!(f.queue(&a, ETH_LEN, 1500, 1446), Inside::Drop(EngineDrop::FragNoFrames));
        assert_eq!(f.drop_pending(Queue::ToTunnel), BACKLOG_PACKETS);
    }

    #[test]
    fn decapsulated_ttl_is_checked_and_decremented() {
        let mut f = Forwarder::new(Vec::new(), None);
        let mut p = [0u8; 40];
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(40);
            ip.set_ttl(2);
            ip.set_next_header(ipsec_wire::IpProtocol::UDP);
            ip.fill_checksum();
        }
        assert_eq!(f.decapsulated(&mut p), Ok(()));
        let ip = ipv4::Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.ttl(), 1);
        assert!(ip.verify_checksum());
        assert_eq!(f.decapsulated(&mut p), Err(EngineDrop::TtlExpired));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[7] = 64;
        assert_eq!(f.decapsulated(&mut v6), Ok(()));
        assert_eq!(v6[7], 63);
        v6[7] = 1;
        assert_eq!(f.decapsulated(&mut v6), Err(EngineDrop::TtlExpired));
    }

    /// A decapsulated packet in its frame: outer headers' room (50 bytes) in front.
    const DECAP_AT: usize = 50;
    const HOP_MACS: [u8; 12] = [2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa];

    fn decapsulated_v4(len: usize, df: bool) -> Vec<u8> {
        let f = frame(len, 7);
        let mut buf = vec![0u8; 4096];
        buf[DECAP_AT..DECAP_AT + len].copy_from_slice(&f[ETH_LEN..ETH_LEN + len]);
        let mut ip = ipv4::Packet::new_unchecked(&mut buf[DECAP_AT..DECAP_AT + len]);
        ip.set_dont_frag(df);
        ip.fill_checksum();
        buf
    }

    fn one_frame_of(f: &mut Forwarder, q: Queue, st: &WorkerStats) -> Vec<Vec<u8>> {
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0xa5u8; 4096]).collect();
        let mut frames: Vec<(&mut [u8], usize)> = bufs.iter_mut().map(|b| (&mut b[..], 0)).collect();
        let n = f.write_fragments(q, &mut frames, st);
        frames[..n].iter().map(|(b, l)| b[..*l].to_vec()).collect()
    }

    #[test]
    fn decapsulated_ipv4_without_df_is_fragmented_out_of_the_inside() {
        let mut f = Forwarder::new(Vec::new(), None);
        let st = stats();
        let mut buf = decapsulated_v4(1400, false);
        let orig = buf[DECAP_AT..DECAP_AT + 1400].to_vec();
        let snap = Snapshot::default();
        let r = f.decap_too_big(&mut buf, DECAP_AT, 1400, 1300, HOP_MACS, "in", &snap, &st, Instant::now());
        assert_eq!(r, Ok(()));
        assert!(f.has_pending_in(Queue::ToInside) && !f.has_pending_in(Queue::ToTunnel));
        assert_eq!(f.frames_wanted(Queue::ToInside, 64), 2);
        let out = one_frame_of(&mut f, Queue::ToInside, &st);
        assert_eq!(out.len(), 2);
        let mut payload = Vec::new();
        for fr in &out {
            assert_eq!(&fr[..12], &HOP_MACS, "to the inside next hop");
            assert_eq!(&fr[12..14], &[8, 0]);
            let ip = ipv4::Packet::new_checked(&fr[ETH_LEN..]).unwrap();
            assert!(ip.verify_checksum() && ip.total_len() <= 1300);
            payload.extend_from_slice(ip.payload());
        }
        assert_eq!(payload, &orig[20..]);
        assert_eq!(st.fwd.fragmented.get(), 1);
    }

    #[test]
    fn decapsulated_ipv4_with_df_gets_frag_needed_back_through_the_tunnel() {
        let mut f = Forwarder::new(vec!["198.51.100.1".parse().unwrap()], None);
        let st = stats();
        let mut buf = decapsulated_v4(1400, true);
        let snap = Snapshot::default();
        let r = f.decap_too_big(&mut buf, DECAP_AT, 1400, 1300, HOP_MACS, "in", &snap, &st, Instant::now());
        assert_eq!(r, Ok(()));
        assert!(f.has_pending_in(Queue::ToTunnel) && !f.has_pending_in(Queue::ToInside));
        assert_eq!(f.frames_wanted(Queue::ToTunnel, 64), 1);
        let out = one_frame_of(&mut f, Queue::ToTunnel, &st);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][12..14], &[8, 0], "an IPv4 frame for the inside path");
        let ip = ipv4::Packet::new_checked(&out[0][ETH_LEN..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), std::net::Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(ip.dst_addr(), std::net::Ipv4Addr::new(192, 0, 2, 2), "to the sender behind the peer");
        assert_eq!(ip.next_header(), ipsec_wire::IpProtocol::ICMP);
        let icmp = ip.payload();
        assert_eq!((icmp[0], icmp[1]), (3, 4), "destination unreachable, fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1300);
        assert_eq!((st.fwd.icmp_sent.get(), st.drops(EngineDrop::FragNeeded)), (1, 1));
        // Nothing is answered about an ICMP error: the error itself (with DF), decapsulated too big.
        let mut again = vec![0u8; 4096];
        let icmp_len = out[0].len() - ETH_LEN;
        again[DECAP_AT..DECAP_AT + icmp_len].copy_from_slice(&out[0][ETH_LEN..]);
        let mut ip = ipv4::Packet::new_unchecked(&mut again[DECAP_AT..DECAP_AT + icmp_len]);
        ip.set_dont_frag(true);
        ip.fill_checksum();
        let r = f.decap_too_big(&mut again, DECAP_AT, icmp_len, 500, HOP_MACS, "in", &snap, &st, Instant::now());
        assert_eq!(r, Err(EngineDrop::FragNeeded));
        assert_eq!(st.fwd.icmp_suppressed.get(), 1);
        assert!(!f.has_pending());
    }

    #[test]
    fn decapsulated_ipv6_gets_packet_too_big_and_without_a_source_nothing() {
        let st = stats();
        let len = 1400;
        let mk = || {
            let mut buf = vec![0u8; 4096];
            let p = &mut buf[DECAP_AT..DECAP_AT + len];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            p[6] = 17;
            p[7] = 64;
            p[8..24].copy_from_slice(&"2001:db8:a::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            p[24..40].copy_from_slice(&"2001:db8:b::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            buf
        };
        let snap = Snapshot::default();
        // No inside address of the family and none on the (unknown) interface: not answered.
        let mut f = Forwarder::new(vec!["198.51.100.1".parse().unwrap()], None);
        let r = f.decap_too_big(&mut mk(), DECAP_AT, len, 1300, HOP_MACS, "in", &snap, &st, Instant::now());
        assert_eq!(r, Err(EngineDrop::FragNeeded));
        assert!(!f.has_pending());
        let mut f = Forwarder::new(vec!["2001:db8:b::1".parse().unwrap()], None);
        let r = f.decap_too_big(&mut mk(), DECAP_AT, len, 1300, HOP_MACS, "in", &snap, &st, Instant::now());
        assert_eq!(r, Ok(()));
        let out = one_frame_of(&mut f, Queue::ToTunnel, &st);
        assert_eq!(&out[0][12..14], &[0x86, 0xdd]);
        let ip6 = &out[0][ETH_LEN..];
        assert_eq!(ip6[6], 58, "ICMPv6");
        assert_eq!(&ip6[24..40], &"2001:db8:a::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!((ip6[40], ip6[41]), (2, 0), "packet too big");
        assert_eq!(u32::from_be_bytes([ip6[44], ip6[45], ip6[46], ip6[47]]), 1300);
    }
}
