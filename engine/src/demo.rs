//! `ipsec-engine demo`: the gateway's data path on an embedded default configuration, in memory.
//!
//! Two gateways, gw-1 (198.18.0.1) and gw-2 (198.18.0.2), each with its lock-free SA tables and a
//! worker, connected by a wire that is a `Vec` of frames. Three tunnels as an operator would
//! configure them from the seed's connection model:
//!
//! | tunnel | gw-1 side      | gw-2 side        | transform                      |
//! |--------|----------------|------------------|--------------------------------|
//! | 1      | 192.0.2.0/24   | 198.51.100.0/24  | AES-128-GCM (IKEv2 default)    |
//! | 2      | 192.0.2.0/24   | 203.0.113.0/24   | AES-256-CBC + HMAC-SHA-256, ESP in UDP 4500 (NAT-T) |
//! | 3      | 2001:db8:a::/48 | 2001:db8:b::/48 | 3DES + HMAC-SHA1 (the seed's legacy offer), IPv6 inside |
//!
//! Sample traffic (IMIX of UDP packets) goes gw-1 → gw-2 through the burst APIs; every packet is
//! checked to come out byte for byte. Then the things a gateway must refuse are shown: a replayed
//! packet, a tampered one, one for a destination without a route, one for a tunnel without an SA
//! (raising an acquire), and a soft lifetime raising a rekey request. Per-SA and per-worker
//! counters are printed at the end.

use ipsec_esp::table::{Domain, OutboundTables, Spi, SpiTable, TunnelId};
use ipsec_esp::{
    default_provider, Cipher, DropReason, EspWorker, EventQueue, InboundSa, Integrity, Lifetime, Limits, OutboundSa,
    PacketBuf, SaConfig, UdpEncap, Verdict, WorkerCounters, HEADROOM, MAX_BURST, TAILROOM,
};
use ipsec_wire::{ipv4, ipv6, udp, IpProtocol};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

const GW1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GW2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

struct Tunnel {
    id: u32,
    name: &'static str,
    cipher: Cipher,
    integrity: Integrity,
    encap: Option<UdpEncap>,
    local: &'static str,
    remote: &'static str,
    spi_out: u32,
}

const TUNNELS: [Tunnel; 3] = [
    Tunnel {
        id: 1,
        name: "vco-demo-gcm",
        cipher: Cipher::AesGcm128,
        integrity: Integrity::None,
        encap: None,
        local: "192.0.2.0/24",
        remote: "198.51.100.0/24",
        spi_out: 0xc1a0_0001,
    },
    Tunnel {
        id: 2,
        name: "vco-demo-natt",
        cipher: Cipher::AesCbc256,
        integrity: Integrity::HmacSha256_128,
        encap: Some(UdpEncap::STANDARD),
        local: "192.0.2.0/24",
        remote: "203.0.113.0/24",
        spi_out: 0xc1a0_0002,
    },
    Tunnel {
        id: 3,
        name: "vco-demo-legacy",
        cipher: Cipher::TripleDesCbc,
        integrity: Integrity::HmacSha1_96,
        encap: None,
        local: "2001:db8:a::/48",
        remote: "2001:db8:b::/48",
        spi_out: 0xc1a0_0003,
    },
];

/// One gateway: tables and a worker.
struct Gateway {
    name: &'static str,
    outbound: OutboundTables<OutboundSa>,
    inbound: SpiTable<InboundSa>,
    worker: EspWorker,
    events: Arc<EventQueue>,
}

impl Gateway {
    fn new(name: &'static str, domain: &Domain) -> Gateway {
        let events = Arc::new(EventQueue::default());
        Gateway {
            name,
            outbound: OutboundTables::new(domain),
            inbound: SpiTable::new(domain),
            worker: EspWorker::new(default_provider(), events.clone()).expect("worker"),
            events,
        }
    }
}

fn keymat(len: usize, seed: u32) -> Vec<u8> {
    // A demo needs fixed keys; real SAs get theirs from IKE.
    (0..len).map(|k| (k as u32).wrapping_mul(2_654_435_761).wrapping_add(seed).to_be_bytes()[0]).collect()
}

/// Runs the demo with `packets` sample packets; returns an error message if anything misbehaves.
pub fn run(packets: usize) -> Result<(), String> {
    let provider = default_provider();
    println!("ipsec-engine demo: in-memory ESP between gw-1 ({GW1}) and gw-2 ({GW2})");
    println!(
        "crypto provider: {} (AES-GCM: {}, AES-CBC: {}, 3DES: {}, HMAC-SHA-256: {})\n",
        provider.name,
        provider.cipher_backend(Cipher::AesGcm128).unwrap_or("-"),
        provider.cipher_backend(Cipher::AesCbc256).unwrap_or("-"),
        provider.cipher_backend(Cipher::TripleDesCbc).unwrap_or("-"),
        provider.integrity_backend(Integrity::HmacSha256_128).unwrap_or("-"),
    );
    let domain = Domain::new();
    let mut gw1 = Gateway::new("gw-1", &domain);
    let mut gw2 = Gateway::new("gw-2", &domain);
    let now = Instant::now();

    for t in &TUNNELS {
        let mut cfg = SaConfig::new(
            t.spi_out,
            t.cipher,
            &keymat(t.cipher.keymat_len(), t.spi_out),
            t.integrity,
            &keymat(t.integrity.key_len(), !t.spi_out),
            IpAddr::V4(GW1),
            IpAddr::V4(GW2),
        );
        cfg.encap = t.encap;
        cfg.local_ts = vec![t.local.parse().expect("literal")];
        cfg.remote_ts = vec![t.remote.parse().expect("literal")];
        if t.id == 1 {
            // Small soft limit so that the demo shows a rekey request.
            cfg.lifetime =
                Lifetime { soft: Limits { packets: Some(100), ..Limits::UNLIMITED }, hard: Limits::UNLIMITED };
        }
        let out = OutboundSa::new(&cfg, provider, now).map_err(|e| format!("{}: {e}", t.name))?;
        let mut inb = cfg.clone();
        inb.local = cfg.remote;
        inb.remote = cfg.local;
        inb.local_ts = cfg.remote_ts.clone();
        inb.remote_ts = cfg.local_ts.clone();
        let inb = InboundSa::new(&inb, provider, now).map_err(|e| format!("{}: {e}", t.name))?;
        gw1.outbound.routes.add_route(t.remote.parse().expect("literal"), TunnelId(t.id));
        gw1.outbound.tunnels.set_sa(TunnelId(t.id), Arc::new(out));
        gw2.inbound.insert(Spi(t.spi_out), IpAddr::V4(GW2), Arc::new(inb)).map_err(|e| e.to_string())?;
        println!(
            "tunnel {} {:<16} {:<16} <-> {:<16} {}{} spi {:#010x}",
            t.id,
            t.name,
            t.local,
            t.remote,
            t.cipher,
            if t.integrity == Integrity::None { String::new() } else { format!("-{}", t.integrity) },
            t.spi_out
        );
    }
    // A route whose tunnel has no SA yet (IKE would be asked to negotiate one).
    gw1.outbound.routes.add_route("198.51.100.128/25".parse().expect("literal"), TunnelId(4));

    // --- sample traffic ---------------------------------------------------------------------
    let sizes = [64usize, 594, 64, 594, 64, 1418, 64, 594, 64, 594, 64, 64];
    let mut originals = Vec::with_capacity(packets);
    for k in 0..packets {
        let t = &TUNNELS[k % 3];
        originals.push(sample_packet(t, k, sizes[k % sizes.len()]));
    }
    let started = Instant::now();
    let mut delivered = 0usize;
    let mut wire_bytes = 0usize;
    let mut last_on_wire: Option<Vec<u8>> = None;
    for chunk in originals.chunks(MAX_BURST) {
        let mut frames: Vec<Vec<u8>> = chunk.iter().map(|p| frame(p)).collect();
        let (starts, lens) = burst_through(&mut gw1, &mut gw2, &mut frames, chunk, &mut wire_bytes, &mut last_on_wire)?;
        for ((f, p), (s, l)) in frames.iter().zip(chunk).zip(starts.iter().zip(&lens)) {
            if f[*s..*s + *l] != p[..] {
                return Err("a packet came out of the tunnel changed".into());
            }
            delivered += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "\n{delivered} of {packets} packets delivered intact through 3 tunnels ({} KiB on the wire) in {:.1} ms",
        wire_bytes / 1024,
        elapsed.as_secs_f64() * 1e3
    );

    // --- what a gateway refuses ---------------------------------------------------------------
    println!("\nrefusals:");
    let replay = last_on_wire.ok_or("no packet was sent")?;
    show("replayed ESP packet", decap_one(&mut gw2, replay.clone()), DropReason::Replayed)?;
    // A fresh packet (its sequence number unseen at gw-2), one bit flipped on the way.
    let mut tampered = encap_keep(&mut gw1, &originals[0]).map_err(|e| format!("encap: {e}"))?;
    let n = tampered.len();
    tampered[n - 20] ^= 0x01;
    show("tampered ESP packet", decap_one(&mut gw2, tampered), DropReason::AuthFailed)?;
    let no_route = udp4(Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(192, 0, 2, 200), 100);
    show("no route to 192.0.2.200", encap_one(&mut gw1, &no_route), DropReason::NoRoute)?;
    let no_sa = udp4(Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(198, 51, 100, 200), 100);
    show("tunnel 4 has no SA yet", encap_one(&mut gw1, &no_sa), DropReason::NoSa)?;

    println!("\nevents for the control plane:");
    let mut saw_rekey = false;
    let mut saw_acquire = false;
    for gw in [&gw1, &gw2] {
        gw.events.drain(|e| {
            saw_rekey |= matches!(e, ipsec_esp::SaEvent::RekeyRequested { .. });
            saw_acquire |= matches!(e, ipsec_esp::SaEvent::Acquire { tunnel: 4 });
            println!("  {}: {e}", gw.name);
        });
    }
    if !(saw_rekey && saw_acquire) {
        return Err("expected a rekey request and an acquire event".into());
    }

    // --- counters ------------------------------------------------------------------------------
    println!("\nper-SA counters:");
    println!(
        "  {:<4} {:<16} {:<10} {:>12} {:>10} {:>10}  drops",
        "gw", "tunnel", "spi", "direction", "packets", "bytes"
    );
    let guard = gw1.outbound.pin();
    for t in &TUNNELS {
        if let Some(sa) = gw1.outbound.tunnels.get(TunnelId(t.id), &guard) {
            print_sa("gw-1", t.name, sa.spi(), "outbound", sa.counters());
        }
    }
    drop(guard);
    let guard = gw2.inbound.pin();
    for t in &TUNNELS {
        if let Some(sa) = gw2.inbound.get(Spi(t.spi_out), IpAddr::V4(GW2), &guard) {
            print_sa("gw-2", t.name, sa.spi(), "inbound", sa.counters());
        }
    }
    drop(guard);
    println!("\nper-worker counters:");
    print_worker("gw-1", gw1.worker.counters());
    print_worker("gw-2", gw2.worker.counters());
    Ok(())
}

fn show(what: &str, got: Result<(), DropReason>, want: DropReason) -> Result<(), String> {
    match got {
        Err(r) if r == want => {
            println!("  {what:<28} dropped: {r}");
            Ok(())
        }
        other => Err(format!("{what}: expected drop {want}, got {other:?}")),
    }
}

fn print_sa(gw: &str, name: &str, spi: u32, dir: &str, c: &ipsec_esp::SaCounters) {
    let drops: Vec<String> = c.nonzero_drops().map(|(r, n)| format!("{r}={n}")).collect();
    println!(
        "  {gw:<4} {name:<16} {spi:#010x} {dir:>12} {:>10} {:>10}  {}",
        c.packets(),
        c.bytes(),
        if drops.is_empty() { "-".into() } else { drops.join(" ") }
    );
}

fn print_worker(gw: &str, c: &WorkerCounters) {
    let drops: Vec<String> = c.nonzero_drops().map(|(r, n)| format!("{r}={n}")).collect();
    println!(
        "  {gw}: encap {} pkts / {} B, decap {} pkts / {} B, drops: {}",
        c.encap_packets.get(),
        c.encap_bytes.get(),
        c.decap_packets.get(),
        c.decap_bytes.get(),
        if drops.is_empty() { "-".into() } else { drops.join(" ") }
    );
}

type Spans = (Vec<usize>, Vec<usize>);

/// Sends one burst gw-1 → wire → gw-2; returns where each inner packet ended up.
fn burst_through(
    gw1: &mut Gateway,
    gw2: &mut Gateway,
    frames: &mut [Vec<u8>],
    originals: &[Vec<u8>],
    wire_bytes: &mut usize,
    last_on_wire: &mut Option<Vec<u8>>,
) -> Result<Spans, String> {
    let mut verdicts = [Ok(()); MAX_BURST];
    let n = frames.len();
    let mut pkts: Vec<PacketBuf<'_>> =
        frames.iter_mut().zip(originals).map(|(f, p)| PacketBuf::new(f, HEADROOM, p.len())).collect();
    {
        let guard = gw1.outbound.pin();
        gw1.worker.encap_routed(Instant::now(), &gw1.outbound, &guard, &mut pkts, &mut verdicts[..n]);
    }
    if let Some(e) = verdicts[..n].iter().find_map(|v| v.err()) {
        return Err(format!("gw-1 dropped a sample packet: {e}"));
    }
    for p in &pkts {
        *wire_bytes += p.len;
    }
    *last_on_wire = pkts.last().map(|p| p.data().to_vec());
    {
        let guard = gw2.inbound.pin();
        gw2.worker.decap_with_table(Instant::now(), &gw2.inbound, &guard, &mut pkts, &mut verdicts[..n]);
    }
    if let Some(e) = verdicts[..n].iter().find_map(|v| v.err()) {
        return Err(format!("gw-2 dropped a sample packet: {e}"));
    }
    Ok((pkts.iter().map(|p| p.start).collect(), pkts.iter().map(|p| p.len).collect()))
}

fn encap_one(gw: &mut Gateway, inner: &[u8]) -> Result<(), DropReason> {
    let mut f = frame(inner);
    let mut pkts = [PacketBuf::new(&mut f, HEADROOM, inner.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    let guard = gw.outbound.pin();
    gw.worker.encap_routed(Instant::now(), &gw.outbound, &guard, &mut pkts, &mut v);
    v[0]
}

fn encap_keep(gw: &mut Gateway, inner: &[u8]) -> Result<Vec<u8>, DropReason> {
    let mut f = frame(inner);
    let mut pkts = [PacketBuf::new(&mut f, HEADROOM, inner.len())];
    let mut v: [Verdict; 1] = [Ok(())];
    let guard = gw.outbound.pin();
    gw.worker.encap_routed(Instant::now(), &gw.outbound, &guard, &mut pkts, &mut v);
    v[0].map(|()| pkts[0].data().to_vec())
}

fn decap_one(gw: &mut Gateway, mut outer: Vec<u8>) -> Result<(), DropReason> {
    let len = outer.len();
    let mut pkts = [PacketBuf::new(&mut outer, 0, len)];
    let mut v: [Verdict; 1] = [Ok(())];
    let guard = gw.inbound.pin();
    gw.worker.decap_with_table(Instant::now(), &gw.inbound, &guard, &mut pkts, &mut v);
    v[0]
}

fn frame(p: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HEADROOM + p.len() + TAILROOM];
    f[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
    f
}

fn sample_packet(t: &Tunnel, k: usize, size: usize) -> Vec<u8> {
    if t.remote.contains(':') {
        let src = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1 + (k % 200) as u16);
        let dst = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1 + (k % 50) as u16);
        udp6(src, dst, size.saturating_sub(48))
    } else {
        let base: Ipv4Addr = t.remote.split('/').next().and_then(|a| a.parse().ok()).expect("literal");
        let dst = Ipv4Addr::from(u32::from(base) + 1 + (k % 100) as u32);
        udp4(Ipv4Addr::new(192, 0, 2, 1 + (k % 200) as u8), dst, size.saturating_sub(28))
    }
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let total = ipv4::HEADER_LEN + udp::HEADER_LEN + payload;
    let mut b = vec![0u8; total];
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut b[..]);
        ip.set_version(4);
        ip.set_header_len(ipv4::HEADER_LEN);
        ip.set_total_len(total as u16);
        ip.set_dont_frag(true);
        ip.set_ttl(64);
        ip.set_next_header(IpProtocol::UDP);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
    }
    let mut u = udp::Packet::new_unchecked(&mut b[ipv4::HEADER_LEN..]);
    u.set_src_port(33434);
    u.set_dst_port(9);
    u.set_len((udp::HEADER_LEN + payload) as u16);
    for (k, x) in u.payload_mut().iter_mut().enumerate() {
        *x = k as u8;
    }
    u.fill_checksum(src, dst);
    b
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
    let ulen = udp::HEADER_LEN + payload;
    let mut b = vec![0u8; ipv6::HEADER_LEN + ulen];
    {
        let mut ip = ipv6::Packet::new_unchecked(&mut b[..]);
        ip.set_version(6);
        ip.set_payload_len(ulen as u16);
        ip.set_next_header(IpProtocol::UDP);
        ip.set_hop_limit(64);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
    }
    let mut u = udp::Packet::new_unchecked(&mut b[ipv6::HEADER_LEN..]);
    u.set_src_port(33434);
    u.set_dst_port(9);
    u.set_len(ulen as u16);
    for (k, x) in u.payload_mut().iter_mut().enumerate() {
        *x = k as u8;
    }
    u.fill_checksum(src, dst);
    b
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_runs_clean() {
        super::run(2000).expect("demo");
    }
}
