//! IKE punt from the workers to the channel thread.
//!
//! The outside workers see IKE (UDP 500, UDP 4500 with the zero non-ESP marker) and NAT keepalives
//! among the ESP frames the XDP program steers to them. IKE is a slow path: a handful of datagrams
//! per tunnel per rekey, so each punted datagram is *copied* out of the UMEM frame into a small
//! heap buffer ([`IkeDatagram`]) and the frame is recycled at once; the copy keeps the UMEM
//! ownership rules of [`crate::afxdp`] simple and costs nothing measurable at IKE rates.
//!
//! Contract:
//! - a worker never blocks on the punt: the queue is a bounded lock-free MPMC queue
//!   (`crossbeam_queue::ArrayQueue`, the same crate as the ESP core's event queue) and a full
//!   queue refuses;
//! - each worker has its own token bucket ([`TokenBucket`], [`PUNT_RATE`] datagrams per second,
//!   [`PUNT_BURST`] burst), so an IKE flood costs one bucket check per datagram and cannot fill
//!   the channel thread's queue faster than it drains;
//! - with no control session connected nothing is queued (the datagram would be stale by the
//!   time a control process arrives; IKE retransmits);
//! - every refusal is counted by reason here and as the worker's `ike` / `nat_keepalive` drop.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use ipsec_channel::IkeDatagram;
use ipsec_wire::{parse_ip, IpProtocol};

/// Punted datagrams per second each worker may queue.
pub const PUNT_RATE: u32 = 2_000;
/// Burst a worker may queue at once above the rate.
pub const PUNT_BURST: u32 = 256;
/// Datagrams waiting for the channel thread, all workers together.
pub const PUNT_QUEUE: usize = 1024;

/// Shared between the workers and the channel thread.
#[derive(Debug)]
pub struct PuntShared {
    queue: ArrayQueue<IkeDatagram>,
    connected: AtomicBool,
    /// Datagrams queued.
    pub punted: AtomicU64,
    /// Refused: no control session.
    pub no_control: AtomicU64,
    /// Refused: over the worker's rate.
    pub rate_limited: AtomicU64,
    /// Refused: the queue was full.
    pub queue_full: AtomicU64,
    /// Not a well-formed UDP datagram to one of our addresses (should not happen: the worker
    /// classified it as IKE).
    pub malformed: AtomicU64,
}

impl Default for PuntShared {
    fn default() -> Self {
        Self::new(PUNT_QUEUE)
    }
}

impl PuntShared {
    /// A queue of `capacity` datagrams; starts disconnected.
    pub fn new(capacity: usize) -> Self {
        PuntShared {
            queue: ArrayQueue::new(capacity.max(1)),
            connected: AtomicBool::new(false),
            punted: AtomicU64::new(0),
            no_control: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    /// Whether a control session is connected (set by the channel thread).
    pub fn set_connected(&self, on: bool) {
        self.connected.store(on, Ordering::Relaxed);
        if !on {
            // What is queued belongs to the session that went away.
            while self.queue.pop().is_some() {}
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Takes the oldest datagram (channel thread).
    pub fn pop(&self) -> Option<IkeDatagram> {
        self.queue.pop()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket { rate: rate as f64, burst: burst.max(1) as f64, tokens: burst.max(1) as f64, last: None }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
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

/// One worker's end of the punt path.
#[derive(Debug)]
pub struct Punt {
    shared: Arc<PuntShared>,
    bucket: TokenBucket,
}

impl Punt {
    pub fn new(shared: Arc<PuntShared>) -> Self {
        Punt { shared, bucket: TokenBucket::new(PUNT_RATE, PUNT_BURST) }
    }

    /// Offers the IP packet `ip` (an IKE datagram or NAT keepalive, as classified by the worker)
    /// to the channel thread. `false`: refused (counted here; the caller counts its drop).
    pub fn offer(&mut self, ip: &[u8], now: Instant) -> bool {
        let s = &*self.shared;
        if !s.is_connected() {
            s.no_control.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.bucket.take(now) {
            s.rate_limited.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Some(d) = datagram(ip) else {
            s.malformed.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if s.queue.push(d).is_err() {
            s.queue_full.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        s.punted.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The UDP datagram in IP packet `ip`: local = destination, remote = source, payload as on the
/// wire (bounded by the UDP length).
pub fn datagram(ip: &[u8]) -> Option<IkeDatagram> {
    let sum = parse_ip(ip).ok()?;
    if sum.protocol != IpProtocol::UDP || sum.fragment.is_some() {
        return None;
    }
    let end = sum.packet_end.min(ip.len());
    let udp = ip.get(sum.payload_offset..end)?;
    if udp.len() < 8 {
        return None;
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if ulen < 8 || ulen > udp.len() {
        return None;
    }
    let sock = |a: IpAddr, p: u16| SocketAddr::new(a, p);
    Some(IkeDatagram { local: sock(sum.dst, dport), remote: sock(sum.src, sport), payload: udp[8..ulen].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let c = !ipsec_wire::checksum::data(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn datagram_is_exact_and_addresses_are_ours_and_theirs() {
        let mut p = udp4([198, 18, 0, 2], [198, 18, 0, 1], 4500, 4500, &[0, 0, 0, 0, 1, 2, 3]);
        p.extend_from_slice(&[0xee; 6]); // link-layer padding is not payload
        let d = datagram(&p).unwrap();
        assert_eq!(d.local, "198.18.0.1:4500".parse().unwrap());
        assert_eq!(d.remote, "198.18.0.2:4500".parse().unwrap());
        assert_eq!(d.payload, vec![0, 0, 0, 0, 1, 2, 3]);
        assert!(datagram(&p[..25]).is_none());
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(10, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(160)));
        assert!(!b.take(t0 + Duration::from_millis(160)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn offer_refuses_without_control_when_full_and_over_rate() {
        let shared = Arc::new(PuntShared::new(2));
        let mut w = Punt::new(shared.clone());
        let p = udp4([198, 18, 0, 2], [198, 18, 0, 1], 500, 500, b"ike");
        let now = Instant::now();
        assert!(!w.offer(&p, now));
        assert_eq!(shared.no_control.load(Ordering::Relaxed), 1);
        shared.set_connected(true);
        assert!(w.offer(&p, now));
        assert!(w.offer(&p, now));
        assert!(!w.offer(&p, now));
        assert_eq!(shared.queue_full.load(Ordering::Relaxed), 1);
        assert_eq!(shared.pop().unwrap().payload, b"ike");
        // The bucket: PUNT_BURST tokens, 3 used so far.
        let mut ok = 0;
        for _ in 0..PUNT_BURST {
            if w.offer(&p, now) {
                ok += 1;
                shared.pop();
            }
        }
        assert_eq!(ok, PUNT_BURST - 3);
        assert!(shared.rate_limited.load(Ordering::Relaxed) >= 3);
        // Disconnecting empties the queue.
        shared.set_connected(true);
        assert!(shared.is_empty() || shared.len() <= 2);
        shared.set_connected(false);
        assert!(shared.is_empty());
    }
}
