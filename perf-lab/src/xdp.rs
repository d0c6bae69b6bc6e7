//! `perf-lab xdp`: the gateway on real sockets — the AF_XDP engine with AES-128-GCM, the same
//! engine without crypto (cipher `null`), and strongSwan (charon + kernel-libipsec), each as two
//! gateways between a traffic generator and a sink (topology in [`netns`]).
//!
//! Per case and size (IP packet bytes, or `imix`):
//! 1. **max rate**: the generator sends as fast as it can for `--seconds` (best of `--repeat`
//!    runs); reported: delivered Mpps and Gbit/s (IP bytes at the sink ÷ sending time) and loss
//!    (1 − received ÷ sent);
//! 2. **latency**: a paced run at half of the delivered max rate; reported: p50 / p99 one-way
//!    latency (generator → sink through both gateways, sender's timestamp in the payload);
//! 3. **light load**: p50 / p99 at 1000 packets/s (the path's latency without queueing);
//! 4. **lossless rate**: the highest paced rate with loss < 0.1 % found by a bisection of
//!    `--search-steps` runs between 0 and the delivered max rate.
//!
//! Cases interleave: for each size, each case's gateways are started, warmed up, measured and
//! stopped in turn (strongSwan negotiates a fresh IKE SA each time).
//!
//! Everything shares the machine: on a 2-core box the generator, the sink, both gateways and the
//! kernels' veth and UDP work compete for the same two cores, so a "max rate" is the rate of the
//! whole chain, not of one gateway. The reports say so.
//!
//! Engine gateways are `ipsec-engine run` processes found next to this binary (or `--engine`):
//! build them with the same profile first (`cargo build --release -p ipsec-engine`). strongSwan
//! needs `/usr/lib/ipsec/charon` with kernel-libipsec and `swanctl`; without them the case is
//! skipped with its reason in the report.

#[path = "xdp/netns.rs"]
mod netns;
#[path = "xdp/report.rs"]
mod report;
#[path = "xdp/traffic.rs"]
mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use netns::{Gateway, Topology};
pub use report::Row;
use traffic::Trial;

pub struct XdpArgs {
    pub json: bool,
    pub seconds: f64,
    pub sizes: Vec<String>,
    pub cases: Vec<String>,
    pub search_steps: u32,
    pub repeat: u32,
    pub engine: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
}

/// The cases `perf-lab xdp` knows, in their default order.
pub const CASES: [&str; 3] = ["engine-aes128gcm", "engine-null", "strongswan"];
const LOSSLESS: f64 = 0.001;
/// The paced rate of the light-load latency run (packets/s).
const LIGHT_PPS: f64 = 1000.0;
/// Nice value of the measurement (generator, sink, gateways).
const NICE: i32 = -10;
const CHARON: &str = "/usr/lib/ipsec/charon";

/// Runs the measurement; `Err` when it cannot run at all (not root, no engine binary, a gateway
/// that does not come up).
pub fn run(args: &XdpArgs) -> Result<(), String> {
    if let Some(c) = args.cases.iter().find(|c| !CASES.contains(&c.as_str())) {
        return Err(format!("unknown case {c} (known: {})", CASES.join(", ")));
    }
    let mut patterns = Vec::new();
    for s in &args.sizes {
        let p = ipsec_benches::size_pattern(s).ok_or_else(|| format!("bad size {s}"))?;
        patterns.push((s.clone(), p));
    }
    if let Some(why) = netns::cannot_run() {
        return Err(why);
    }
    let engine = match &args.engine {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("ipsec-engine"),
    };
    if args.cases.iter().any(|c| c.starts_with("engine")) && !engine.is_file() {
        return Err(format!(
            "no engine binary at {} (build it with the same profile: cargo build --release -p ipsec-engine, or pass --engine)",
            engine.display()
        ));
    }
    // Priority over the machine's other work (builds of a shared box): set on the main thread
    // before any thread or gateway exists, so the generator, the sink and the gateways inherit it
    // and compete with each other as on a dedicated machine.
    // SAFETY: setpriority on this thread only; failure leaves the priority as it was.
    let reniced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } == 0;
    netns::remove_stale();
    let t = Topology::new()?;
    eprintln!(
        "perf-lab xdp: {} s per run, sizes {}, cases {}; namespaces {}",
        args.seconds,
        args.sizes.join(","),
        args.cases.join(","),
        t.ns("{gen,g1,g2,snk}")
    );
    let mut rows = Vec::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut notes = vec![format!(
        "Load average when the run started: {} (other work on the machine competes for the same cores); \
         generator, sink and gateways ran {}.",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        if reniced {
            format!("at nice {NICE}, ahead of that other work")
        } else {
            "at normal priority (renice failed)".into()
        }
    )];
    let mut trial_id = 1u32;
    // Cases interleave per size (gateways restarted for each), so a change of the machine's load
    // during the run hits all cases alike.
    let mut skipped = Vec::new();
    for (size, pattern) in &patterns {
        for case in &args.cases {
            if skipped.contains(case) {
                continue;
            }
            let gateways = match case.as_str() {
                "engine-aes128gcm" => start_engines(&t, &engine, "aes128gcm16"),
                "engine-null" => start_engines(&t, &engine, "null"),
                _ => match strongswan_missing() {
                    Some(why) => {
                        eprintln!("case strongswan skipped: {why}");
                        notes.push(format!("`strongswan` skipped: {why}."));
                        skipped.push(case.clone());
                        continue;
                    }
                    None => start_charons(&t, size),
                },
            };
            let mut gateways = gateways?;
            warm_up(&t, &mut trial_id).map_err(|e| {
                let logs: Vec<String> = gateways.iter().map(Gateway::logs).collect();
                format!("case {case}: {e}\n{}", logs.join("\n"))
            })?;
            let row = measure(&t, case, size, pattern, args, &mut trial_id)?;
            if args.json {
                println!("{}", row.json());
            }
            eprintln!("  {}", row.line());
            rows.push(row);
            for g in &mut gateways {
                let out = g.stop();
                // The engine's final counters: where the packets that did not arrive were dropped.
                if let Some(stats) = out.split("final stats").nth(1) {
                    for l in stats.lines().map(str::trim).filter(|l| l.starts_with("worker ") || l.starts_with("xdp "))
                    {
                        eprintln!("    {}: {l}", g.name);
                    }
                    if let Some(summary) = engine_counters(stats) {
                        notes.push(format!("`{case}` {size}, {} over all its runs: {summary}", g.name));
                    }
                }
            }
        }
    }
    let order = |r: &Row| {
        (
            args.cases.iter().position(|c| *c == r.case).unwrap_or(0),
            args.sizes.iter().position(|s| *s == r.size).unwrap_or(0),
        )
    };
    rows.sort_by_key(order);
    drop(t);
    report::print_table(&rows);
    if let Some(dir) = &args.report_dir {
        report::write(dir, &rows, &notes, args)?;
        eprintln!("reports written to {}/xdp.md and xdp.svg", dir.display());
    }
    Ok(())
}

/// A sentence from an engine's final counters: packets steered to AF_XDP by the XDP program, how
/// many of them the worker received (the rest were dropped at the socket's rx ring: the worker did
/// not keep up), how many it transmitted, and its drops.
fn engine_counters(stats: &str) -> Option<String> {
    let sum_after = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == key)
            .filter_map(|w| w[1].trim_end_matches(',').parse::<u64>().ok())
            .sum()
    };
    let mut steered = 0u64;
    let (mut rx, mut tx, mut drops) = (0u64, 0u64, String::new());
    for l in stats.lines().map(str::trim) {
        if l.starts_with("xdp ") {
            for kv in l.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    if matches!(k, "esp" | "esp_udp" | "inside_protected") {
                        steered += v.parse::<u64>().unwrap_or(0);
                    }
                }
            }
        } else if l.starts_with("worker ") {
            rx += sum_after(l, "rx");
            tx += sum_after(l, "tx");
            drops = l.rsplit_once("drops ").map(|(_, d)| d.to_string()).unwrap_or_default();
        }
    }
    if steered == 0 {
        return None;
    }
    Some(format!(
        "XDP steered {steered} packets to the AF_XDP socket, the worker received {rx} ({:.1} % dropped at the socket's rx ring, i.e. the worker did not keep up) and transmitted {tx}; worker drops: {drops}",
        100.0 * steered.saturating_sub(rx) as f64 / steered as f64
    ))
}

fn measure(
    t: &Topology,
    case: &str,
    size: &str,
    pattern: &[usize],
    args: &XdpArgs,
    id: &mut u32,
) -> Result<Row, String> {
    let mut next = || {
        *id += 1;
        *id
    };
    let (gen, snk) = (t.ns("gen"), t.ns("snk"));
    // Max rate: the best of `--repeat` runs.
    let mut max = traffic::trial(&gen, &snk, pattern, None, args.seconds, next())?;
    for _ in 1..args.repeat {
        let again = traffic::trial(&gen, &snk, pattern, None, args.seconds, next())?;
        if again.delivered_pps() > max.delivered_pps() {
            max = again;
        }
    }
    let half_rate = max.delivered_pps() / 2.0;
    let half = if half_rate >= 1.0 {
        Some(traffic::trial(&gen, &snk, pattern, Some(half_rate), args.seconds, next())?)
    } else {
        None
    };
    let search_secs = (args.seconds / 2.0).max(0.5);
    // The path's latency under light load (the gateways mostly idle between packets).
    let light = traffic::trial(&gen, &snk, pattern, Some(LIGHT_PPS), search_secs, next())?;
    // Bisection for the highest rate with loss < 0.1 %.
    let (mut lo, mut hi) = (0.0f64, max.delivered_pps());
    let mut lossless: Option<Trial> = None;
    let mut rate = hi;
    for _ in 0..args.search_steps {
        if rate < 1.0 {
            break;
        }
        let tr = traffic::trial(&gen, &snk, pattern, Some(rate), search_secs, next())?;
        if tr.received > 0 && tr.loss() < LOSSLESS {
            lo = rate;
            if lossless.as_ref().is_none_or(|b| tr.delivered_pps() > b.delivered_pps()) {
                lossless = Some(tr);
            }
        } else {
            hi = rate;
        }
        rate = (lo + hi) / 2.0;
    }
    Ok(Row::new(case, size, max, half, light, lossless, args.search_steps > 0))
}

/// Sends a trickle until the sink sees packets (neighbours resolved, SAs up); at most ~20 s.
fn warm_up(t: &Topology, id: &mut u32) -> Result<(), String> {
    for _ in 0..40 {
        *id += 1;
        let tr = traffic::trial(&t.ns("gen"), &t.ns("snk"), &[100], Some(200.0), 0.3, *id)?;
        if tr.received >= tr.sent / 2 && tr.received > 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("no traffic reaches the sink after 20 s of warm-up".into())
}

/// Two engines with static SAs of `cipher` (random keys), one worker each.
fn start_engines(t: &Topology, engine: &std::path::Path, cipher: &str) -> Result<Vec<Gateway>, String> {
    let keylen = if cipher == "null" { 0 } else { 20 };
    let (k12, k21) = (netns::random_bytes(keylen)?, netns::random_bytes(keylen)?);
    let (s12, s21) = (0x0000_1201u32, 0x0000_2101u32);
    let sa = |dir: &str, spi: u32, key: &[u8]| {
        let replay = if dir == "in" { "replay_window = 1024\n" } else { "" };
        format!(
            "[[sa]]\ntunnel = \"t\"\ndirection = \"{dir}\"\nspi = {spi}\ncipher = \"{cipher}\"\nenc_key = \"{}\"\n\
             integrity = \"none\"\nauth_key = \"\"\n{replay}\n",
            netns::hex(key)
        )
    };
    let mut gws = Vec::new();
    for (n, me, peer, local, remote) in [
        (1, netns::GW1_OUTER, netns::GW2_OUTER, netns::GEN_NET, netns::SINK_NET),
        (2, netns::GW2_OUTER, netns::GW1_OUTER, netns::SINK_NET, netns::GEN_NET),
    ] {
        let (outside, inside) = (t.dev(&format!("g{n}o")), t.dev(&format!("g{n}i")));
        let mut cfg = format!(
            "[gateway]\nlocal_addrs = [\"{me}\"]\n\n\
             [[interface]]\nname = \"{outside}\"\nrole = \"outside\"\nqueues = 1\n\n\
             [[interface]]\nname = \"{inside}\"\nrole = \"inside\"\nqueues = 1\n\n\
             [[tunnel]]\nname = \"t\"\nremote_addr = \"{peer}\"\nlocal_subnets = [\"{local}\"]\n\
             remote_subnets = [\"{remote}\"]\nrouting = \"destination\"\n\n"
        );
        if n == 1 {
            cfg += &sa("out", s12, &k12);
            cfg += &sa("in", s21, &k21);
        } else {
            cfg += &sa("out", s21, &k21);
            cfg += &sa("in", s12, &k12);
        }
        let name = format!("gw{n}-{cipher}");
        let path = t.write_private(&format!("{name}.toml"), &cfg)?;
        let exe = engine.to_string_lossy();
        let path = path.to_string_lossy();
        #[rustfmt::skip]
        let mut g = Gateway::spawn(t, &format!("g{n}"), &name, &[
            &exe, "run", "--config", &path, "--no-pin", "--xdp-mode", "auto", "--no-control-socket",
            "--neigh-interval-ms", "200", "--frames", "4096", "--ring-size", "1024",
        ])?;
        g.wait_until(Duration::from_secs(30), |g| g.stdout().contains("running"))?;
        gws.push(g);
    }
    Ok(gws)
}

/// Why the strongSwan case cannot run here, if it cannot.
fn strongswan_missing() -> Option<String> {
    for p in [CHARON, "/usr/sbin/swanctl", "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"] {
        if !std::path::Path::new(p).exists() {
            return Some(format!(
                "{p} missing (apt-get install strongswan-charon strongswan-swanctl libcharon-extra-plugins)"
            ));
        }
    }
    None
}

/// Two charons (kernel-libipsec) in the gateway namespaces, each with a private /run, VICI socket
/// and configuration; gw-1 initiates one IKEv2 SA (PSK, AES-128-GCM for IKE and ESP).
fn start_charons(t: &Topology, tag: &str) -> Result<Vec<Gateway>, String> {
    let psk = netns::hex(&netns::random_bytes(24)?);
    let mut gws = Vec::new();
    for (n, me, peer, local, remote) in [
        (1, netns::GW1_OUTER, netns::GW2_OUTER, netns::GEN_NET, netns::SINK_NET),
        (2, netns::GW2_OUTER, netns::GW1_OUTER, netns::SINK_NET, netns::GEN_NET),
    ] {
        t.sysctl(&format!("g{n}"), "net.ipv4.ip_forward=1")?;
        let sub = format!("charon{n}-{tag}");
        let dir = t.dir.join(&sub);
        std::fs::create_dir_all(dir.join("run")).map_err(|e| e.to_string())?;
        let d = dir.display();
        t.write_private(
            &format!("{sub}/strongswan.conf"),
            &format!(
                "charon {{
  load = random nonce openssl aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey gmp kdf kernel-libipsec kernel-netlink socket-default vici updown
  retransmit_timeout = 1
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
  }}
  filelog {{
    log {{
      path = {d}/charon.log
      default = 0
      ike = 1
      flush_line = yes
    }}
  }}
}}
swanctl {{
  socket = unix://{d}/charon.vici
}}
"
            ),
        )?;
        t.write_private(
            &format!("{sub}/swanctl/swanctl.conf"),
            &format!(
                "connections {{
  t {{
    version = 2
    local_addrs = {me}
    remote_addrs = {peer}
    proposals = aes128gcm16-prfsha256-ecp256
    rekey_time = 0
    local {{
      auth = psk
      id = {me}
    }}
    remote {{
      auth = psk
      id = {peer}
    }}
    children {{
      t {{
        local_ts = {local}
        remote_ts = {remote}
        esp_proposals = aes128gcm16
        rekey_time = 0
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-t {{
    id-a = {me}
    id-b = {peer}
    secret = \"{psk}\"
  }}
}}
"
            ),
        )?;
        let script =
            format!("mount --bind {d}/run /run && export STRONGSWAN_CONF={d}/strongswan.conf && exec {CHARON}");
        let name = format!("charon-gw{n}-{tag}");
        let mut g = Gateway::spawn(
            t,
            &format!("g{n}"),
            &name,
            &["unshare", "-m", "--propagation", "private", "sh", "-c", &script],
        )?;
        let vici = dir.join("charon.vici");
        g.wait_until(Duration::from_secs(15), |_| vici.exists())?;
        swanctl(&dir, &["--load-all", "--noprompt"])?;
        gws.push(g);
    }
    swanctl(&t.dir.join(format!("charon1-{tag}")), &["--initiate", "--child", "t", "--timeout", "20"])?;
    Ok(gws)
}

fn swanctl(dir: &std::path::Path, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("swanctl")
        .env("STRONGSWAN_CONF", dir.join("strongswan.conf"))
        .env("SWANCTL_DIR", dir.join("swanctl"))
        .args(args)
        .output()
        .map_err(|e| format!("swanctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "swanctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stdout).lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        ));
    }
    Ok(())
}

impl Row {
    fn json(&self) -> serde_json::Value {
        json!({
            "case": self.case,
            "size": self.size,
            "mpps": r3(self.mpps),
            "gbps": r3(self.gbps),
            "loss": r4(self.loss),
            "p50_us": r1(self.p50_us),
            "p99_us": r1(self.p99_us),
            "offered_mpps": r3(self.offered_mpps),
            "max_rate_p99_us": r1(self.max_p99_us),
            "half_rate_mpps": r3(self.half_mpps),
            "half_rate_loss": r4(self.half_loss),
            "light_p50_us": r1(self.light_p50_us),
            "light_p99_us": r1(self.light_p99_us),
            "lossless_mpps": self.lossless_mpps.map(r3),
            "lossless_gbps": self.lossless_gbps.map(r3),
            "sink_drops": self.sink_drops,
            "duplicates": self.duplicates,
        })
    }
}

fn round(x: f64, d: i32) -> serde_json::Value {
    if x.is_finite() {
        let f = 10f64.powi(d);
        json!((x * f).round() / f)
    } else {
        serde_json::Value::Null
    }
}
fn r1(x: f64) -> serde_json::Value {
    round(x, 1)
}
fn r3(x: f64) -> serde_json::Value {
    round(x, 3)
}
fn r4(x: f64) -> serde_json::Value {
    round(x, 4)
}

#[cfg(test)]
mod tests {
    use super::engine_counters;

    #[test]
    fn engine_counters_attribute_the_loss_to_the_rx_ring() {
        let stats =
            "\n  worker 0: px1g1o/0 rx 0 tx 90, px1g1i/0 rx 95 tx 0 | encap 95 decap 0 | drops tx_ring_full=5\n  \
                     sa t out spi 0x00001201 packets 95 bytes 1 drops -\n  xdp px1g1o: pass_other=1\n  \
                     xdp px1g1i: inside_protected=100 pass_other=2\n";
        let s = engine_counters(stats).expect("a summary");
        assert!(s.contains("steered 100 packets"), "{s}");
        assert!(s.contains("received 95 (5.0 %"), "{s}");
        assert!(s.contains("transmitted 90"), "{s}");
        assert!(s.ends_with("worker drops: tx_ring_full=5"), "{s}");
        assert_eq!(engine_counters("  xdp px1g2i: -\n"), None);
    }
}
