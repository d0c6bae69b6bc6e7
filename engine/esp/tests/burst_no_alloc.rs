//! The fast path allocates nothing per packet: routed encap and table-driven decap of whole bursts,
//! for every transform, run with zero heap allocations once the SAs and tables exist.
//!
//! Own test binary with a single test because it installs a counting global allocator
//! (`stats_alloc`); its counters are process-wide, so the measured loop is repeated and one
//! allocation-free pass is required (libtest's start-up allocations land in at most one pass).

mod common;

use common::*;
use ipsec_esp::table::{Domain, OutboundTables, Spi, SpiTable, TunnelId};
use ipsec_esp::{default_provider, EspWorker, EventQueue, InboundSa, OutboundSa, PacketBuf, Verdict, MAX_BURST};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

#[test]
fn bursts_do_not_allocate() {
    let p = default_provider();
    let domain = Domain::new();
    let out: OutboundTables<OutboundSa> = OutboundTables::new(&domain);
    let inb: SpiTable<InboundSa> = SpiTable::new(&domain);
    let now = Instant::now();
    let mut spi = 0x7000;
    let transforms = transforms();
    for (k, (c, i)) in transforms.iter().enumerate() {
        let mut cfg = config(*c, *i, k % 2 == 1);
        spi += 1;
        cfg.spi = spi;
        out.tunnels.set_sa(TunnelId(k as u32), Arc::new(OutboundSa::new(&cfg, p, now).unwrap()));
        let twin = inbound_twin(&cfg);
        inb.insert(Spi(spi), twin.local, Arc::new(InboundSa::new(&twin, p, now).unwrap())).unwrap();
    }
    let mut worker = EspWorker::new(p, Arc::new(EventQueue::default())).unwrap();
    let inners: Vec<Vec<u8>> = (0..MAX_BURST).map(|k| inner_packet(k % 3 == 0, 20 + k * 21, k as u8)).collect();
    let mut frames: Vec<Vec<u8>> = inners.iter().map(|i| frame_with(i)).collect();
    let mut verdicts: [Verdict; MAX_BURST] = [Ok(()); MAX_BURST];
    let mut starts = [0usize; MAX_BURST];
    let mut lens = [0usize; MAX_BURST];

    let mut clean_passes = 0;
    for _pass in 0..4 {
        for (k, _) in transforms.iter().enumerate() {
            // Route every destination to tunnel k (control-side work, outside the measured region).
            out.routes.add_route("198.51.100.0/24".parse().unwrap(), TunnelId(k as u32));
            out.routes.add_route("2001:db8:b::/48".parse().unwrap(), TunnelId(k as u32));
            let region = Region::new(GLOBAL);
            let guard = out.pin();
            let mut pkts: arrayvec::ArrayVec<PacketBuf<'_>, MAX_BURST> = frames
                .iter_mut()
                .zip(&inners)
                .map(|(f, i)| PacketBuf { buf: f, start: ipsec_esp::HEADROOM, len: i.len() })
                .collect();
            worker.encap_routed(now, &out, &guard, &mut pkts, &mut verdicts);
            drop(guard);
            assert!(verdicts.iter().all(|v| v.is_ok()), "{verdicts:?}");
            let guard = inb.pin();
            worker.decap_with_table(now, &inb, &guard, &mut pkts, &mut verdicts);
            drop(guard);
            assert!(verdicts.iter().all(|v| v.is_ok()), "{verdicts:?}");
            for (j, p) in pkts.iter().enumerate() {
                starts[j] = p.start;
                lens[j] = p.len;
            }
            drop(pkts);
            let stats = region.change();
            if stats.allocations == 0 && stats.reallocations == 0 {
                clean_passes += 1;
            }
            for (j, i) in inners.iter().enumerate() {
                assert_eq!(&frames[j][starts[j]..starts[j] + lens[j]], &i[..]);
            }
        }
    }
    assert!(clean_passes >= 4 * transforms.len() - 1, "only {clean_passes} allocation-free bursts");
}
