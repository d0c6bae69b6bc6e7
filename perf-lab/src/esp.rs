//! `perf-lab esp`: ESP core throughput on one core, in memory, against the raw crypto of the same
//! backend measured in the same run.
//!
//! For each transform and size: `encap_mpps` / `decap_mpps` (bursts of 64 through the worker's
//! burst API, timed separately: the other half of each round trip restores the burst untimed),
//! `raw_seal_gbps` (the backend's bare AEAD seal, or CBC encrypt + HMAC, over the same number of
//! bytes per packet, one packet per call), and `encap_vs_raw` = encap packets/s ÷ raw seal
//! operations/s. Then the SA-table scale case: routed encap (route lookup, tunnel lookup, SA) with
//! 1 SA and with N SAs (default 1M), packets spread uniformly at random over all SAs, and the
//! resident memory per SA (outbound SA with its expanded key, tunnel entry and /32 route).

use ipsec_benches::{ipv4_udp_packet, mean_size, sa_config, size_pattern, transform_name, EspWorkload};
use ipsec_esp::crypto::{Cipher, Integrity, AEAD_TAG_LEN};
use ipsec_esp::table::{Domain, OutboundTables, TunnelId};
use ipsec_esp::{
    default_provider, EspWorker, EventQueue, OutboundSa, PacketBuf, Verdict, HEADROOM, MAX_BURST, TAILROOM,
};
use serde_json::json;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct EspArgs {
    pub json: bool,
    pub seconds: f64,
    pub transforms: Vec<(Cipher, Integrity)>,
    pub sizes: Vec<String>,
    pub scale_sas: usize,
}

pub fn run(args: &EspArgs) {
    let p = default_provider();
    eprintln!(
        "perf-lab esp: provider {} (aes-gcm via {}, aes-cbc via {}, hmac-sha1 via {}), {:.1} s per case",
        p.name,
        p.cipher_backend(Cipher::AesGcm128).unwrap_or("?"),
        p.cipher_backend(Cipher::AesCbc128).unwrap_or("?"),
        p.integrity_backend(Integrity::HmacSha1_96).unwrap_or("?"),
        args.seconds
    );
    let mut table =
        vec![["transform", "size", "encap Mpps", "decap Mpps", "encap Gbit/s", "raw seal Gbit/s", "encap/raw"]
            .map(String::from)];
    for &(c, i) in &args.transforms {
        for size in &args.sizes {
            let pattern = size_pattern(size).unwrap_or_else(|| panic!("bad size {size}"));
            let r = measure(c, i, &pattern, args.seconds);
            let name = transform_name(c, i);
            let line = json!({
                "transform": name,
                "size": size,
                "encap_mpps": round3(r.encap_pps / 1e6),
                "decap_mpps": round3(r.decap_pps / 1e6),
                "encap_gbps": round3(r.encap_pps * r.mean_bytes * 8.0 / 1e9),
                "raw_seal_gbps": round3(r.raw_pps * r.mean_bytes * 8.0 / 1e9),
                "encap_vs_raw": round3(r.encap_pps / r.raw_pps),
            });
            if args.json {
                println!("{line}");
            }
            table.push([
                name,
                size.clone(),
                format!("{:.2}", r.encap_pps / 1e6),
                format!("{:.2}", r.decap_pps / 1e6),
                format!("{:.2}", r.encap_pps * r.mean_bytes * 8.0 / 1e9),
                format!("{:.2}", r.raw_pps * r.mean_bytes * 8.0 / 1e9),
                format!("{:.2}", r.encap_pps / r.raw_pps),
            ]);
        }
    }
    print_table(&table, args.json);

    if args.scale_sas > 0 {
        let mut t2 = vec![["case", "SAs", "size", "encap Mpps", "vs 1 SA", "RSS B/SA"].map(String::from)];
        // Memory is measured on the first build of the big table (later builds reuse freed pages).
        let mut mem_per_sa = None;
        for size in [64usize, 1420] {
            let (one, _) = routed(1, size, args.seconds);
            let (many, many_mem) = routed(args.scale_sas, size, args.seconds);
            let mem = *mem_per_sa.get_or_insert(many_mem);
            for (n, pps) in [(1, one), (args.scale_sas, many)] {
                let line = json!({
                    "case": "routed_encap_aes128gcm16",
                    "sas": n,
                    "size": size,
                    "encap_mpps": round3(pps / 1e6),
                    "vs_1_sa": round3(pps / one),
                    "rss_bytes_per_sa": if n > 1 { mem.round() } else { 0.0 },
                });
                if args.json {
                    println!("{line}");
                }
                t2.push([
                    "routed encap aes128gcm16".into(),
                    n.to_string(),
                    size.to_string(),
                    format!("{:.2}", pps / 1e6),
                    format!("{:.2}", pps / one),
                    if n > 1 { format!("{mem:.0}") } else { "-".into() },
                ]);
            }
        }
        print_table(&t2, args.json);
    }
}

struct Rates {
    encap_pps: f64,
    decap_pps: f64,
    raw_pps: f64,
    mean_bytes: f64,
}

fn measure(c: Cipher, i: Integrity, pattern: &[usize], seconds: f64) -> Rates {
    let mut w = EspWorkload::new(default_provider(), c, i, pattern, MAX_BURST);
    let budget = Duration::from_secs_f64(seconds);
    // Warm-up.
    for _ in 0..200 {
        w.encap(Instant::now());
        w.decap(Instant::now());
    }
    let (mut enc_t, mut dec_t, mut packets) = (Duration::ZERO, Duration::ZERO, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget * 2 {
        let t = Instant::now();
        let ok = w.encap(t);
        let t1 = Instant::now();
        let ok2 = w.decap(t1);
        let t2 = Instant::now();
        assert_eq!((ok, ok2), (MAX_BURST, MAX_BURST), "the workload must not drop");
        enc_t += t1 - t;
        dec_t += t2 - t1;
        packets += MAX_BURST as u64;
    }
    let mean = mean_size(pattern);
    Rates {
        encap_pps: packets as f64 / enc_t.as_secs_f64(),
        decap_pps: packets as f64 / dec_t.as_secs_f64(),
        raw_pps: raw_rate(c, i, pattern, budget),
        mean_bytes: mean,
    }
}

/// Bare backend operations per second over the same per-packet byte counts.
fn raw_rate(c: Cipher, i: Integrity, pattern: &[usize], budget: Duration) -> f64 {
    let p = default_provider();
    let key: Vec<u8> = (0..c.key_len()).map(|k| k as u8 ^ 0x3c).collect();
    let mut bufs: Vec<Vec<u8>> = pattern.iter().map(|&n| vec![0x5a; n.next_multiple_of(16) + AEAD_TAG_LEN]).collect();
    let mut ops = 0u64;
    let start = Instant::now();
    if c.is_aead() {
        let k = p.aead_key(c, &key).expect("aead key");
        let nonce = [7u8; 12];
        let aad = [1u8; 8];
        while start.elapsed() < budget {
            for (b, &n) in bufs.iter_mut().zip(pattern) {
                k.seal(&nonce, &aad, &mut b[..n + AEAD_TAG_LEN]).expect("seal");
                black_box(&b);
            }
            ops += pattern.len() as u64;
        }
    } else {
        let cipher = (c != Cipher::Null).then(|| p.cipher_key(c, &key).expect("cipher key"));
        let mac = p.mac_key(i, &vec![9u8; i.key_len()]).expect("mac key");
        let iv = [3u8; 16];
        let mut icv = [0u8; 32];
        while start.elapsed() < budget {
            for (b, &n) in bufs.iter_mut().zip(pattern) {
                let n = n.next_multiple_of(c.block_len());
                if let Some(k) = &cipher {
                    k.cbc_encrypt(&iv[..c.iv_len()], &mut b[..n]).expect("cbc");
                }
                mac.sign(&[&b[..n]], &mut icv[..i.icv_len()]);
                black_box(&icv);
            }
            ops += pattern.len() as u64;
        }
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Routed encap packets/s with `n` tunnels (one /32 route and one AES-128-GCM SA each), packets
/// spread uniformly at random over the tunnels.
fn routed(n: usize, size: usize, seconds: f64) -> (f64, f64) {
    let p = default_provider();
    let rss_before = rss_bytes();
    let domain = Domain::new();
    let tables: OutboundTables<OutboundSa> = OutboundTables::new(&domain);
    let now = Instant::now();
    // In-memory only (these packets never reach a socket): one /32 per tunnel in 100.64.0.0/10,
    // which has room for 4M of them.
    let dst = |k: usize| Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + k as u32);
    for k in 0..n {
        let cfg = sa_config(Cipher::AesGcm128, Integrity::None, 0x1000 + k as u32);
        tables.tunnels.set_sa(TunnelId(k as u32), Arc::new(OutboundSa::new(&cfg, p, now).expect("SA")));
        tables.routes.add_route(ipnet::IpNet::from(ipnet::Ipv4Net::new(dst(k), 32).unwrap()), TunnelId(k as u32));
    }
    let bytes_per_sa = (rss_bytes().saturating_sub(rss_before)) as f64 / n as f64;
    // Destinations: a long pseudo-random sequence over all tunnels, prepared once.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let inners: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ipv4_udp_packet(size, dst((x % n as u64) as usize))
        })
        .collect();
    let mut worker = EspWorker::new(p, Arc::new(EventQueue::default())).expect("worker");
    let mut frames: Vec<Vec<u8>> = (0..MAX_BURST).map(|_| vec![0u8; HEADROOM + size.max(28) + TAILROOM]).collect();
    let mut verdicts: [Verdict; MAX_BURST] = [Ok(()); MAX_BURST];
    let budget = Duration::from_secs_f64(seconds);
    let (mut busy, mut packets, mut cursor) = (Duration::ZERO, 0u64, 0usize);
    let start = Instant::now();
    while start.elapsed() < budget {
        // Refill the burst (untimed: in the engine the NIC writes these bytes).
        for f in frames.iter_mut() {
            let src = &inners[cursor % inners.len()];
            f[HEADROOM..HEADROOM + src.len()].copy_from_slice(src);
            cursor += 1;
        }
        let len = inners[0].len();
        let mut pkts: arrayvec::ArrayVec<PacketBuf<'_>, MAX_BURST> =
            frames.iter_mut().map(|f| PacketBuf { buf: f, start: HEADROOM, len }).collect();
        let t = Instant::now();
        let guard = tables.pin();
        worker.encap_routed(t, &tables, &guard, &mut pkts, &mut verdicts);
        drop(guard);
        busy += t.elapsed();
        packets += verdicts.iter().filter(|v| v.is_ok()).count() as u64;
    }
    (packets as f64 / busy.as_secs_f64(), bytes_per_sa)
}

/// Resident set size of this process (Linux `/proc/self/statm`), 0 if unknown.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints an aligned table (to stderr when JSON goes to stdout).
pub fn print_table<const N: usize>(rows: &[[String; N]], to_stderr: bool) {
    let widths: Vec<usize> = (0..N).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (k, r) in rows.iter().enumerate() {
        let line: Vec<String> = r.iter().zip(&widths).map(|(s, w)| format!("{s:>w$}")).collect();
        out += &format!("| {} |\n", line.join(" | "));
        if k == 0 {
            out += &format!("|{}|\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
        }
    }
    if to_stderr {
        eprint!("{out}");
    } else {
        print!("{out}");
    }
}
