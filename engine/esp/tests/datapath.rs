//! The fast path with its table lookups: destination routing and protected flows, acquire on a
//! tunnel without SA, and make-before-break rekey (outbound switches at once, inbound accepts the
//! old and the new SPI during the overlap).

mod common;

use common::*;
use ipsec_esp::table::{Domain, OutboundTables, Spi, SpiTable, TunnelId};
use ipsec_esp::{
    default_provider, Cipher, DropReason, EspWorker, EventQueue, InboundSa, Integrity, OutboundSa, PacketBuf, SaEvent,
    Verdict, HEADROOM,
};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

struct Gw {
    out: OutboundTables<OutboundSa>,
    inb: SpiTable<InboundSa>,
    worker: EspWorker,
    events: Arc<EventQueue>,
}

impl Gw {
    fn new(domain: &Domain) -> Gw {
        let events = Arc::new(EventQueue::new(64));
        Gw {
            out: OutboundTables::new(domain),
            inb: SpiTable::new(domain),
            worker: EspWorker::new(default_provider(), events.clone()).unwrap(),
            events,
        }
    }

    fn encap(&mut self, frame: &mut [u8], len: usize) -> Result<(usize, usize), DropReason> {
        let guard = self.out.pin();
        let mut pkts = [PacketBuf::new(frame, HEADROOM, len)];
        let mut v: [Verdict; 1] = [Ok(())];
        self.worker.encap_routed(Instant::now(), &self.out, &guard, &mut pkts, &mut v);
        v[0].map(|()| (pkts[0].start, pkts[0].len))
    }

    fn decap(&mut self, frame: &mut [u8], s: usize, l: usize) -> Result<(usize, usize), DropReason> {
        let guard = self.inb.pin();
        let mut pkts = [PacketBuf::new(frame, s, l)];
        let mut v: [Verdict; 1] = [Ok(())];
        self.worker.decap_with_table(Instant::now(), &self.inb, &guard, &mut pkts, &mut v);
        v[0].map(|()| (pkts[0].start, pkts[0].len))
    }
}

fn sa_pair(spi: u32) -> (Arc<OutboundSa>, Arc<InboundSa>, IpAddr) {
    let mut cfg = config(Cipher::AesGcm256, Integrity::None, false);
    cfg.spi = spi;
    cfg.enc_key = zeroize::Zeroizing::new(keymat(cfg.cipher.keymat_len(), spi as u8));
    let inb = inbound_twin(&cfg);
    let p = default_provider();
    (
        Arc::new(OutboundSa::new(&cfg, p, Instant::now()).unwrap()),
        Arc::new(InboundSa::new(&inb, p, Instant::now()).unwrap()),
        inb.local,
    )
}

#[test]
fn route_miss_no_sa_acquire_then_traffic_flows() {
    let domain = Domain::new();
    let mut a = Gw::new(&domain);
    let mut b = Gw::new(&domain);
    let inner = inner_packet(false, 40, 0);

    let mut f = frame_with(&inner);
    assert_eq!(a.encap(&mut f, inner.len()), Err(DropReason::NoRoute));

    a.out.routes.add_route("198.51.100.0/24".parse().unwrap(), TunnelId(5));
    let mut f = frame_with(&inner);
    assert_eq!(a.encap(&mut f, inner.len()), Err(DropReason::NoSa));
    assert_eq!(a.events.pop(), Some(SaEvent::Acquire { tunnel: 5 }));
    let mut f = frame_with(&inner);
    assert_eq!(a.encap(&mut f, inner.len()), Err(DropReason::NoSa));
    assert!(a.events.is_empty(), "acquire is rate limited per tunnel");

    let (out, inb, b_addr) = sa_pair(0x3000);
    a.out.tunnels.set_sa(TunnelId(5), out);
    b.inb.insert(Spi(0x3000), b_addr, inb).unwrap();
    let mut f = frame_with(&inner);
    let (s, l) = a.encap(&mut f, inner.len()).unwrap();
    let (s, l) = b.decap(&mut f, s, l).unwrap();
    assert_eq!(&f[s..s + l], &inner[..]);
    assert_eq!(a.worker.counters().drops(DropReason::NoRoute), 1);
    assert_eq!(a.worker.counters().drops(DropReason::NoSa), 2);
}

#[test]
fn protected_flow_wins_over_route() {
    let domain = Domain::new();
    let mut a = Gw::new(&domain);
    let (out1, _, _) = sa_pair(0x4001);
    let (out2, _, _) = sa_pair(0x4002);
    a.out.routes.add_route("198.51.100.0/24".parse().unwrap(), TunnelId(1));
    a.out.flows.add_flow("192.0.2.0/24".parse().unwrap(), "198.51.100.16/28".parse().unwrap(), TunnelId(2)).unwrap();
    a.out.tunnels.set_sa(TunnelId(1), out1);
    a.out.tunnels.set_sa(TunnelId(2), out2);
    let inner = inner_packet(false, 10, 0); // 192.0.2.10 -> 198.51.100.20
    let mut f = frame_with(&inner);
    let (s, _) = a.encap(&mut f, inner.len()).unwrap();
    assert_eq!(&f[s + 20..s + 24], &0x4002u32.to_be_bytes(), "flow (src x dst) chose tunnel 2");
}

#[test]
fn rekey_is_make_before_break() {
    let domain = Domain::new();
    let mut a = Gw::new(&domain);
    let mut b = Gw::new(&domain);
    a.out.routes.add_route("198.51.100.0/24".parse().unwrap(), TunnelId(9));
    let (old_out, old_in, b_addr) = sa_pair(0x5001);
    a.out.tunnels.set_sa(TunnelId(9), old_out);
    b.inb.insert(Spi(0x5001), b_addr, old_in).unwrap();
    let inner = inner_packet(false, 64, 1);

    // A packet in flight under the old SA.
    let mut in_flight = frame_with(&inner);
    let (fs, fl) = a.encap(&mut in_flight, inner.len()).unwrap();

    // Rekey: the responder installs the new inbound SA first, then the initiator switches.
    let (new_out, new_in, _) = sa_pair(0x5002);
    b.inb.insert(Spi(0x5002), b_addr, new_in).unwrap();
    a.out.tunnels.set_sa(TunnelId(9), new_out);
    let mut f = frame_with(&inner);
    let (s, l) = a.encap(&mut f, inner.len()).unwrap();
    assert_eq!(&f[s + 20..s + 24], &0x5002u32.to_be_bytes(), "outbound switched at once");
    assert!(b.decap(&mut f, s, l).is_ok(), "new SPI accepted");
    assert!(b.decap(&mut in_flight, fs, fl).is_ok(), "old SPI still accepted during the overlap");

    // Overlap over: the old inbound SA goes away.
    let (old_out2, _, _) = sa_pair(0x5001);
    let mut late = frame_with(&inner);
    let mut w = EspWorker::new(default_provider(), Arc::new(EventQueue::default())).unwrap();
    let mut pk = [PacketBuf::new(&mut late, HEADROOM, inner.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    w.encap_burst(Instant::now(), &mut pk, &mut v, |_, _| Ok(&*old_out2));
    let (ls, ll) = (pk[0].start, pk[0].len);
    assert!(b.inb.remove(Spi(0x5001), b_addr).is_some());
    assert_eq!(b.decap(&mut late, ls, ll), Err(DropReason::UnknownSpi));
}
