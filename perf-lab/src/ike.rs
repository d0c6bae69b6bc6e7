//! `perf-lab ike`: IKE_SA + Child SA setup cost of a responder, our `ipsec-control` daemon against
//! strongSwan's charon, driven in one run by the same load generator.
//!
//! # Topology (root; removed on exit, also on panic)
//!
//! ```text
//!  netns <p>g: this process's generator sockets        netns <p>r: the responder (taskset -c 1)
//!  <p>vg 198.18.0.10 .. 198.18.0.(10+lanes-1) /24 ---- veth ---- <p>vr 198.18.0.2/24
//! ```
//!
//! # Load generator
//!
//! perf-lab's own IKEv2 initiator: the sans-IO core of `ipsec-ike` ([`IkeSa::initiate`]) driven
//! from one thread (pinned to `--generator-cpu`) over one `mio` poll. Each *lane* is one source
//! address with a socket on port 500 and one on 4500 (charon's kernel-libipsec fakes a NAT, so the
//! initiator floats to 4500 for IKE_AUTH); setups are spread round-robin over the lanes so that no
//! socket queues more than `inflight / lanes` answers. `--inflight` setups are kept in flight;
//! each setup is timed from its IKE_SA_INIT to the installed Child SA (IKE_AUTH answered) into an
//! `hdrhistogram`, then **deleted** (INFORMATIONAL with DELETE, answered before the slot is
//! forgotten), so the responder's tables stay at about `2 × inflight` entries and its CPU figure
//! includes tearing each SA down again, as a real gateway would. A new setup starts as soon as one
//! completes, until `--setups` have been started or `--seconds` have passed.
//!
//! # What is measured, per responder and DH group
//!
//! * `setups_per_s`: completed setups ÷ time from the first IKE_SA_INIT to the last Child SA;
//! * `cpu_us_per_sa`: the responder's CPU time (user + system of all its threads, the sum of
//!   `/proc/PID/task/*/schedstat` run times, in ns) across the measured setups including their
//!   deletion, ÷ completed setups;
//! * `p50_ms`, `p99_ms`: setup latency.
//!
//! A warm-up of `--warmup` setups precedes every measurement. The generator does as much DH work as
//! the responder, so on two cores `setups_per_s` may be bounded by the generator (it is reported as
//! measured; `gen_cpu_us_per_sa` tells). The CPU per SA is the figure to compare.
//!
//! # Responders
//!
//! * `ipsec-control run --config` with one `remote_addr = "%any"` connection: every IKE_SA_INIT
//!   from any address creates a new responder IKE SA in that connection's endpoint (cookies only
//!   beyond `cookie_threshold` half-open SAs, 64 by default, more than the default in-flight
//!   count). Logging goes to a file in the run's directory, SA events only (`log_messages =
//!   false`, like charon's level 0, which logs no message either).
//! * charon (`/usr/lib/ipsec/charon`, strongSwan 5.9) with `dos_protection = no`,
//!   `ikesa_table_size = 4096`, 16 threads, logging off, kernel-libipsec (its Child SAs are
//!   installed in userspace; no kernel ESP needed) and `install_routes = no`; skipped with a
//!   message when not installed.
//!
//! Both get PSK authentication, IKE proposal `aes128-sha256-<group>`, ESP `aes128-sha256`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ipsec_ike::config::Config;
use ipsec_ike::crypto::dh::DhGroup;
use ipsec_ike::ike_sa::{Event, IkeSa, Transmit};
use ipsec_ike::message::{AddressRange, Header, ProtocolId, TrafficSelector};
use ipsec_ike::nat::{self, Received};
use ipsec_ike::transforms::{EncrAlg, Esn, IntegAlg, PrfAlg, ProposalSpec};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;

/// Only for this lab's throwaway namespaces; never a real secret.
const PSK: &str = "perf-lab-ike-psk-5d2c91";
const CHARON: &str = "/usr/lib/ipsec/charon";
const FIRST_LANE: u8 = 10;

pub struct IkeArgs {
    pub json: bool,
    pub setups: usize,
    pub inflight: usize,
    pub seconds: f64,
    pub warmup: usize,
    pub lanes: usize,
    pub groups: Vec<String>,
    pub responders: Vec<String>,
    pub responder_cpu: usize,
    pub generator_cpu: usize,
    pub control_bin: Option<PathBuf>,
    pub dh_only: bool,
    pub rounds: usize,
}

/// This thread's CPU time (immune to other processes sharing the core, unlike wall time).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// Mean CPU microseconds of one key generation and one shared-secret computation of `group`.
fn dh_cost(group: DhGroup) -> (f64, f64) {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let (_, peer_pub) = group.generate(&mut rng);
    let mut n = 0u32;
    let t = thread_cpu();
    let mut keys = Vec::new();
    while n < 3 || (thread_cpu() - t < Duration::from_millis(200) && n < 2000) {
        keys.push(group.generate(&mut rng).0);
        n += 1;
    }
    let keygen = (thread_cpu() - t).as_secs_f64() * 1e6 / f64::from(n);
    let t = thread_cpu();
    for k in &keys {
        std::hint::black_box(group.compute_shared(k, &peer_pub).expect("valid peer value"));
    }
    let shared = (thread_cpu() - t).as_secs_f64() * 1e6 / f64::from(n);
    (keygen, shared)
}

/// One measured case (summed over its rounds).
struct Measured {
    setups: usize,
    failures: usize,
    elapsed: Duration,
    responder_cpu: Duration,
    generator_cpu: Duration,
    retransmits: u64,
    /// Setup latencies, microseconds.
    latency: Histogram<u64>,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            setups: 0,
            failures: 0,
            elapsed: Duration::ZERO,
            responder_cpu: Duration::ZERO,
            generator_cpu: Duration::ZERO,
            retransmits: 0,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
        }
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            self.latency.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

pub fn run(args: &IkeArgs) -> Result<(), String> {
    let groups: Vec<(DhGroup, &str)> = args
        .groups
        .iter()
        .map(|g| match g.as_str() {
            "ecp256" | "19" => Ok((DhGroup::Ecp256, "ecp256")),
            "modp2048" | "14" => Ok((DhGroup::Modp2048, "modp2048")),
            "curve25519" | "31" => Ok((DhGroup::Curve25519, "curve25519")),
            other => Err(format!("unknown group {other:?} (ecp256, modp2048, curve25519)")),
        })
        .collect::<Result<_, _>>()?;
    // The DH steps alone, in this process: what a responder cannot avoid per SA.
    for &(group, gname) in &groups {
        let (keygen, shared) = dh_cost(group);
        let line = json!({ "dh_group": gname, "keygen_us": round1(keygen), "shared_us": round1(shared) });
        if args.json {
            println!("{line}");
        }
        eprintln!("perf-lab ike: {gname}: DH key generation {keygen:.1} us, shared secret {shared:.1} us (ipsec-ike, one core)");
    }
    if args.dh_only {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("perf-lab ike needs root (network namespaces)".into());
    }
    let lanes = args.lanes.clamp(1, 200);
    let ncpu = std::thread::available_parallelism().map_or(1, usize::from);
    let (rcpu, gcpu) = (args.responder_cpu % ncpu, args.generator_cpu % ncpu);
    pin_self(gcpu);
    let mut names = Vec::new();
    for name in &args.responders {
        match name.as_str() {
            "ipsec-control" => names.push(name.clone()),
            "charon" if Path::new(CHARON).exists() => names.push(name.clone()),
            "charon" => eprintln!(
                "perf-lab ike: charon skipped: {CHARON} not installed (apt-get install strongswan-charon libcharon-extra-plugins)"
            ),
            other => return Err(format!("unknown responder {other:?} (ipsec-control, charon)")),
        }
    }
    let lab = Lab::new(lanes, names.len())?;
    let mut gen = Generator::new(&lab, lanes, names.len())?;
    let rounds = args.rounds.max(1);
    eprintln!(
        "perf-lab ike: {} setups or {:.1} s per case in {rounds} alternating round(s), {} in flight over {lanes} \
         source address(es), warm-up {}, responders on CPU {rcpu}, generator on CPU {gcpu}",
        args.setups, args.seconds, args.inflight, args.warmup
    );
    // Every responder runs (idle) for the whole run in its own namespace; the generator alternates
    // between them round by round, so load from elsewhere on the machine hits them alike.
    let mut responders = Vec::new();
    for (k, name) in names.iter().enumerate() {
        responders.push(match name.as_str() {
            "charon" => Responder::charon(&lab, k, rcpu)?,
            _ => Responder::ours(&lab, k, rcpu, args.control_bin.as_deref())?,
        });
    }
    let mut results: Vec<(String, &str, Measured)> = Vec::new();
    for &(group, gname) in &groups {
        let cfg = initiator_config(group);
        if args.warmup > 0 {
            for (k, name) in names.iter().enumerate() {
                let mut w = Measured::new();
                gen.drive(k, &cfg, args.warmup, args.inflight.min(args.warmup), 30.0, None, &mut w);
                if w.setups == 0 {
                    return Err(format!(
                        "{name} {gname}: no setup completed in the warm-up ({} failed); responder log:\n{}",
                        w.failures,
                        responders[k].log_tail()
                    ));
                }
            }
        }
        let mut acc: Vec<Measured> = names.iter().map(|_| Measured::new()).collect();
        let per_round = args.setups.div_ceil(rounds);
        for _ in 0..rounds {
            for (k, m) in acc.iter_mut().enumerate() {
                let count = per_round.min(args.setups.saturating_sub(m.setups + m.failures));
                if count > 0 {
                    gen.drive(k, &cfg, count, args.inflight, args.seconds / rounds as f64, Some(responders[k].pid), m);
                }
            }
        }
        for (name, m) in names.iter().zip(acc) {
            eprintln!(
                "  {name} {gname}: {} setups ({} failed) in {:.2} s",
                m.setups,
                m.failures,
                m.elapsed.as_secs_f64()
            );
            results.push((name.clone(), gname, m));
        }
    }
    for r in &mut responders {
        r.stop();
    }

    let mut table = vec![[
        "responder",
        "group",
        "setups",
        "setups/s",
        "CPU us/SA",
        "gen CPU us/SA",
        "p50 ms",
        "p99 ms",
        "vs charon",
    ]
    .map(String::from)];
    for (name, gname, m) in &results {
        let per_sa = |d: Duration| if m.setups == 0 { 0.0 } else { d.as_secs_f64() * 1e6 / m.setups as f64 };
        let rate = if m.elapsed.is_zero() { 0.0 } else { m.setups as f64 / m.elapsed.as_secs_f64() };
        let charon = results.iter().find(|(n, g, _)| n == "charon" && g == gname).map(|(_, _, c)| c);
        let ratio = charon
            .filter(|c| c.setups > 0 && name != "charon")
            .map(|c| per_sa(m.responder_cpu) / (c.responder_cpu.as_secs_f64() * 1e6 / c.setups as f64));
        let mut line = json!({
            "responder": name,
            "group": gname,
            "setups_per_s": round1(rate),
            "cpu_us_per_sa": round1(per_sa(m.responder_cpu)),
            "p99_ms": round3(m.quantile_ms(0.99)),
            "p50_ms": round3(m.quantile_ms(0.5)),
            "setups": m.setups,
            "failures": m.failures,
            "retransmits": m.retransmits,
            "inflight": args.inflight,
            "responder_cpu_s": round3(m.responder_cpu.as_secs_f64()),
            "gen_cpu_us_per_sa": round1(per_sa(m.generator_cpu)),
        });
        if let Some(r) = ratio {
            line["cpu_vs_charon"] = json!(round3(r));
        }
        if args.json {
            println!("{line}");
        }
        table.push([
            name.clone(),
            (*gname).to_string(),
            m.setups.to_string(),
            format!("{rate:.0}"),
            format!("{:.0}", per_sa(m.responder_cpu)),
            format!("{:.0}", per_sa(m.generator_cpu)),
            format!("{:.2}", m.quantile_ms(0.5)),
            format!("{:.2}", m.quantile_ms(0.99)),
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.3}")),
        ]);
    }
    print_table(&table, args.json);
    drop(gen);
    drop(lab);
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn print_table(rows: &[[String; 9]], json: bool) {
    let mut w = [0usize; 9];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut s = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i == 0 || i == 1 {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            } else {
                s.push_str(&format!("{c:>width$}  ", width = w[i]));
            }
        }
        s.push('\n');
    }
    if json {
        eprint!("{s}");
    } else {
        print!("{s}");
    }
}

/// Pins the calling thread (the generator: this process is single-threaded) to `cpu`.
fn pin_self(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn v4_subnet(a: u8, b: u8, c: u8) -> TrafficSelector {
    TrafficSelector {
        range: AddressRange::V4 { start: Ipv4Addr::new(a, b, c, 0), end: Ipv4Addr::new(a, b, c, 255) },
        ..TrafficSelector::any_v4()
    }
}

/// The generator's configuration: `aes128-sha256-<group>`, ESP `aes128-sha256`, our subnet
/// 192.0.2.0/24 to 198.51.100.0/24, no DPD, NAT-T on (charon's libipsec needs it).
fn initiator_config(group: DhGroup) -> Config {
    let mut c = Config::new(PSK.as_bytes());
    c.ike_proposals = vec![ProposalSpec {
        protocol: ProtocolId::IKE,
        encr: vec![EncrAlg::AES128_CBC],
        prf: vec![PrfAlg::HmacSha256],
        integ: vec![IntegAlg::HmacSha256_128],
        dh: vec![group],
        esn: vec![],
    }];
    c.esp_proposals = vec![ProposalSpec {
        protocol: ProtocolId::ESP,
        encr: vec![EncrAlg::AES128_CBC],
        prf: vec![],
        integ: vec![IntegAlg::HmacSha256_128],
        dh: vec![],
        esn: vec![Esn::No],
    }];
    c.local_ts = vec![v4_subnet(192, 0, 2)];
    c.remote_ts = vec![v4_subnet(198, 51, 100)];
    c.dpd_interval = None;
    // Queueing at a saturated responder delays answers by up to inflight / rate (a second or more
    // with MODP): retransmitting sooner would only add load.
    c.retransmit_initial = Duration::from_secs(3);
    c.retransmit_max = 3;
    c
}

// ---------------------------------------------------------------------------------------------
// Namespaces

fn sh(cmd: &str, args: &[&str]) -> Result<Output, String> {
    Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> Result<(), String> {
    let o = sh(cmd, args)?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

/// The two namespaces, the veth pair and a scratch directory; removed on drop.
pub struct Lab {
    gen_ns: String,
    /// One namespace per responder; responder `k` is 198.18.k.2.
    resp_ns: Vec<String>,
    dir: PathBuf,
}

impl Lab {
    fn new(lanes: usize, responders: usize) -> Result<Lab, String> {
        remove_stale();
        let p = format!("pli{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{p}-ike"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lab = Lab { gen_ns: format!("{p}g"), resp_ns: (0..responders).map(|k| format!("{p}r{k}")).collect(), dir };
        ok("ip", &["netns", "add", &lab.gen_ns])?;
        lab.ns_ok(&lab.gen_ns, &["ip", "link", "set", "lo", "up"])?;
        for (k, ns) in lab.resp_ns.iter().enumerate() {
            let (vg, vr) = (format!("{p}g{k}"), format!("{p}r{k}"));
            ok("ip", &["netns", "add", ns])?;
            ok("ip", &["link", "add", &vg, "type", "veth", "peer", "name", &vr])?;
            ok("ip", &["link", "set", &vg, "netns", &lab.gen_ns])?;
            ok("ip", &["link", "set", &vr, "netns", ns])?;
            for i in 0..lanes {
                lab.ns_ok(&lab.gen_ns, &["ip", "addr", "add", &format!("{}/24", lane_ip(k, i)), "dev", &vg])?;
            }
            lab.ns_ok(&lab.gen_ns, &["ip", "link", "set", &vg, "up"])?;
            lab.ns_ok(ns, &["ip", "link", "set", "lo", "up"])?;
            lab.ns_ok(ns, &["ip", "addr", "add", &format!("{}/24", responder_ip(k)), "dev", &vr])?;
            lab.ns_ok(ns, &["ip", "link", "set", &vr, "up"])?;
            // charon's libipsec routes each Child SA's remote subnet via a local address inside
            // its local subnet; without one it refuses the Child SA.
            lab.ns_ok(ns, &["ip", "addr", "add", "198.51.100.1/32", "dev", "lo"])?;
        }
        Ok(lab)
    }

    fn ns_ok(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["netns", "exec", ns];
        v.extend_from_slice(args);
        ok("ip", &v)
    }

    /// Runs `f` on a thread that has joined the generator's namespace: sockets made there stay in
    /// it.
    fn in_gen_ns<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> Result<T, String> {
        let path = format!("/var/run/netns/{}", self.gen_ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {path}: {e}"))?;
                f().map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "namespace thread panicked".to_string())?
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.gen_ns]);
        for ns in &self.resp_ns {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        if std::env::var_os("PERF_LAB_KEEP").is_some() {
            eprintln!("perf-lab ike: PERF_LAB_KEEP: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes namespaces of earlier runs whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pli") else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || !matches!(&rest[pid.len()..], "g" | "r0" | "r1") {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh("ip", &["netns", "del", &name]);
        }
    }
}

/// Source address `i` of the generator towards responder `k`.
fn lane_ip(k: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, u8::try_from(k).unwrap_or(0), FIRST_LANE + u8::try_from(i).unwrap_or(0))
}

/// Responder `k`'s address.
fn responder_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, u8::try_from(k).unwrap_or(0), 2)
}

// ---------------------------------------------------------------------------------------------
// Responders

struct Responder {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Responder {
    fn ours(lab: &Lab, k: usize, cpu: usize, bin: Option<&Path>) -> Result<Responder, String> {
        let ip = responder_ip(k);
        let bin = match bin {
            Some(b) => b.to_path_buf(),
            None => control_bin()?,
        };
        let dir = lab.dir.join("ours");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cfg = format!(
            "[daemon]
listen = \"{ip}\"
log_messages = false
control_socket = \"{d}/ctl.sock\"

[[connection]]
name = \"lab\"
local_addr = \"{ip}\"
remote_addr = \"%any\"
local_subnets = [\"198.51.100.0/24\"]
remote_subnets = [\"192.0.2.0/24\"]
psk = \"{PSK}\"
effect_immediately = false
enable_dpd = false

[connection.ike]
proposals = [\"aes128-sha256-ecp256-modp2048-curve25519\"]
lifetime = 86400

[connection.ipsec]
proposals = [\"aes128-sha256\"]
",
            d = dir.display()
        );
        let path = dir.join("ipsec-control.toml");
        std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
        let log = dir.join("daemon.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.resp_ns[k], "taskset", "-c", &cpu.to_string()])
            .arg(&bin)
            .args(["run", "--config"])
            .arg(&path)
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let r = Responder { pid: child.id(), child, log };
        r.wait_for(|| std::fs::read_to_string(&r.log).is_ok_and(|l| l.contains("listening on")), "ipsec-control")?;
        Ok(r)
    }

    fn charon(lab: &Lab, k: usize, cpu: usize) -> Result<Responder, String> {
        let ip = responder_ip(k);
        let dir = lab.dir.join("charon");
        std::fs::create_dir_all(dir.join("run")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.join("swanctl")).map_err(|e| e.to_string())?;
        let d = dir.display();
        let conf = format!(
            "charon {{
  load = random nonce openssl aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey gmp kdf kernel-libipsec kernel-netlink socket-default vici
  port = 500
  port_nat_t = 4500
  dos_protection = no
  ikesa_table_size = 4096
  ikesa_table_segments = 16
  threads = 16
  install_routes = no
  retransmit_timeout = 1
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
  }}
  filelog {{
    log {{
      path = {d}/charon.log
      default = {level}
      flush_line = yes
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
}}
swanctl {{
  socket = unix://{d}/charon.vici
}}
",
            level = if std::env::var_os("PERF_LAB_KEEP").is_some() { 2 } else { 0 }
        );
        std::fs::write(dir.join("strongswan.conf"), conf).map_err(|e| e.to_string())?;
        let swanctl = format!(
            "connections {{
  lab {{
    version = 2
    local_addrs = {ip}
    remote_addrs = %any
    proposals = aes128-sha256-ecp256-modp2048-curve25519
    rekey_time = 0
    dpd_delay = 0
    local {{
      auth = psk
      id = {ip}
    }}
    remote {{
      auth = psk
      id = %any
    }}
    children {{
      lab {{
        local_ts = 198.51.100.0/24
        remote_ts = 192.0.2.0/24
        esp_proposals = aes128-sha256
        rekey_time = 0
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-lab {{
    id = %any
    secret = \"{PSK}\"
  }}
}}
"
        );
        std::fs::write(dir.join("swanctl/swanctl.conf"), swanctl).map_err(|e| e.to_string())?;
        let script = format!(
            "mount --bind {d}/run /run && export STRONGSWAN_CONF={d}/strongswan.conf && exec taskset -c {cpu} {CHARON}"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.resp_ns[k], "unshare", "-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("charon: {e}"))?;
        let r = Responder { pid: child.id(), child, log: dir.join("charon.log") };
        let vici = dir.join("charon.vici");
        r.wait_for(|| vici.exists(), "charon")?;
        let o = Command::new("swanctl")
            .env("STRONGSWAN_CONF", dir.join("strongswan.conf"))
            .env("SWANCTL_DIR", dir.join("swanctl"))
            .args(["--load-all", "--noprompt"])
            .output()
            .map_err(|e| format!("swanctl: {e}"))?;
        if !o.status.success() {
            return Err(format!("swanctl --load-all: {}", String::from_utf8_lossy(&o.stdout)));
        }
        Ok(r)
    }

    fn wait_for(&self, ready: impl Fn() -> bool, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
            if Instant::now() > deadline {
                return Err(format!("{what} did not start: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let l = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `ipsec-control` binary next to ours (same profile); built with cargo if missing.
fn control_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent().ok_or("no exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("ipsec-control");
    if bin.exists() {
        return Ok(bin);
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("perf-lab ike: building ipsec-control ({})", if release { "release" } else { "debug" });
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "ipsec-control", "--bin", "ipsec-control"]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().map_err(|e| format!("cargo build -p ipsec-control: {e}"))?;
    if !st.success() || !bin.exists() {
        return Err(format!(
            "{} missing: build it with cargo build -p ipsec-control, or pass --control-bin",
            bin.display()
        ));
    }
    Ok(bin)
}

/// CPU time of every thread of `pid` so far (the sum of the tasks' `schedstat` run times, ns
/// resolution; the responders' threads live as long as they do).
fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn self_cpu() -> Duration {
    process_cpu(std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Generator

struct Lane {
    /// The responder this lane talks to.
    k: usize,
    ike: UdpSocket,
    natt: UdpSocket,
    ip: Ipv4Addr,
}

struct Setup {
    sa: IkeSa,
    started: Instant,
    done: bool,
    measured: bool,
}

pub struct Generator {
    lanes: Vec<Lane>,
    poll: Poll,
    events: Events,
    rng: ChaCha20Rng,
    buf: Vec<u8>,
    next_lane: usize,
}

impl Generator {
    fn new(lab: &Lab, n: usize, responders: usize) -> Result<Generator, String> {
        let socks = lab.in_gen_ns(|| {
            let mut v = Vec::new();
            for (k, i) in (0..responders).flat_map(|k| (0..n).map(move |i| (k, i))) {
                let ip = lane_ip(k, i);
                let mk = |port: u16| -> io::Result<std::net::UdpSocket> {
                    let s = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), port))?;
                    s.set_nonblocking(true)?;
                    // Room for every answer in flight (the kernel caps it at rmem_max).
                    let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
                    Ok(s)
                };
                v.push((k, ip, mk(500)?, mk(4500)?));
            }
            Ok(v)
        })?;
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let mut lanes = Vec::new();
        for (i, (k, ip, a, b)) in socks.into_iter().enumerate() {
            let mut ike = UdpSocket::from_std(a);
            let mut natt = UdpSocket::from_std(b);
            poll.registry().register(&mut ike, Token(2 * i), Interest::READABLE).map_err(|e| e.to_string())?;
            poll.registry().register(&mut natt, Token(2 * i + 1), Interest::READABLE).map_err(|e| e.to_string())?;
            lanes.push(Lane { k, ike, natt, ip });
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        Ok(Generator {
            lanes,
            poll,
            events: Events::with_capacity(256),
            rng: ChaCha20Rng::from_seed(seed),
            buf: vec![0u8; 65536],
            next_lane: 0,
        })
    }

    fn send(&self, t: &Transmit) -> bool {
        let Some(lane) = self.lanes.iter().find(|l| IpAddr::V4(l.ip) == t.local.ip()) else {
            return false;
        };
        let sock = if t.local.port() == 500 { &lane.ike } else { &lane.natt };
        sock.send_to(&t.to_datagram(), t.remote).is_ok()
    }

    /// Runs up to `count` setups against responder `k` (at most `inflight` at once, starting none
    /// after `seconds`), each deleted once up; adds them to `acc`, with `responder`'s CPU time
    /// across them when given.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        &mut self,
        k: usize,
        cfg: &Config,
        count: usize,
        inflight: usize,
        seconds: f64,
        responder: Option<u32>,
        acc: &mut Measured,
    ) {
        let inflight = inflight.max(1);
        let lanes: Vec<usize> = (0..self.lanes.len()).filter(|&i| self.lanes[i].k == k).collect();
        let mut sas: HashMap<u64, Setup> = HashMap::new();
        let hist = &mut acc.latency;
        let (mut started, mut completed, mut failures, mut retransmits) = (0usize, 0usize, 0usize, 0u64);
        let mut sent_of: HashMap<u64, u32> = HashMap::new();
        let cpu0 = responder.map(process_cpu);
        let gen0 = self_cpu();
        let t0 = Instant::now();
        let stop_starting = t0 + Duration::from_secs_f64(seconds);
        let mut last_done = t0;
        let mut next_scan = t0;
        let mut pending_out: VecDeque<u64> = VecDeque::new();
        let remote = SocketAddr::new(IpAddr::V4(responder_ip(k)), 500);
        loop {
            let now = Instant::now();
            // Keep `inflight` setups running.
            let setting_up = sas.values().filter(|s| !s.done).count();
            let mut room = inflight.saturating_sub(setting_up);
            while room > 0 && started < count && now < stop_starting {
                let lane = &self.lanes[lanes[self.next_lane % lanes.len()]];
                self.next_lane += 1;
                let local = SocketAddr::new(IpAddr::V4(lane.ip), 500);
                let sa = IkeSa::initiate(cfg.clone(), local, remote, now, &mut self.rng);
                let spi = sa.spis().0;
                sas.insert(spi, Setup { sa, started: now, done: false, measured: false });
                pending_out.push_back(spi);
                started += 1;
                room -= 1;
            }
            // Flush what the touched SAs want to send and react to their events.
            while let Some(spi) = pending_out.pop_front() {
                let Some(s) = sas.get_mut(&spi) else { continue };
                while let Some(t) = s.sa.poll_transmit(now) {
                    let n = sent_of.entry(spi).or_insert(0);
                    *n += 1;
                    self.send(&t);
                }
                let mut close = false;
                let mut gone = false;
                while let Some(ev) = s.sa.poll_event() {
                    match ev {
                        Event::ChildSaInstalled(_) if !s.done => {
                            s.done = true;
                            s.measured = true;
                            let us = u64::try_from(now.duration_since(s.started).as_micros()).unwrap_or(u64::MAX);
                            let _ = hist.record(us.max(1));
                            completed += 1;
                            last_done = now;
                            close = true;
                        }
                        Event::Closed => gone = true,
                        Event::Failed(_) | Event::PeerDead => {
                            if !s.done {
                                failures += 1;
                                s.done = true;
                            }
                            gone = true;
                        }
                        Event::ChildSaFailed(_) if !s.done => {
                            failures += 1;
                            s.done = true;
                            close = true;
                        }
                        _ => {}
                    }
                }
                if gone || s.sa.is_finished() {
                    // Requests beyond the 3 a setup and its deletion need (IKE_SA_INIT, IKE_AUTH, DELETE)
                    // are retransmissions (or COOKIE / INVALID_KE retries).
                    if let Some(n) = sent_of.remove(&spi) {
                        retransmits += u64::from(n.saturating_sub(if s.measured { 3 } else { 0 }));
                    }
                    sas.remove(&spi);
                } else if close {
                    s.sa.close(now, &mut self.rng);
                    pending_out.push_back(spi);
                }
            }
            let finished_starting = started >= count || now >= stop_starting;
            if finished_starting && sas.is_empty() {
                break;
            }
            if finished_starting && now > stop_starting.max(last_done) + Duration::from_secs(15) {
                // Give up on stragglers.
                failures += sas.values().filter(|s| !s.done).count();
                break;
            }
            // Timers (retransmissions, half-open expiry) every few milliseconds.
            if now >= next_scan {
                for (spi, s) in &mut sas {
                    if s.sa.poll_timeout().is_some_and(|t| t <= now) {
                        s.sa.handle_timeout(now, &mut self.rng);
                        pending_out.push_back(*spi);
                    }
                }
                next_scan = now + Duration::from_millis(5);
                if !pending_out.is_empty() {
                    continue;
                }
            }
            if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::from_millis(5))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("poll: {e}");
                    break;
                }
            }
            let now = Instant::now();
            let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for tok in tokens {
                let (lane, on_natt) = (tok / 2, tok % 2 == 1);
                let local = SocketAddr::new(IpAddr::V4(self.lanes[lane].ip), if on_natt { 4500 } else { 500 });
                loop {
                    let l = &self.lanes[lane];
                    let sock = if on_natt { &l.natt } else { &l.ike };
                    let (n, from) = match sock.recv_from(&mut self.buf) {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let Received::Ike(msg) = nat::classify(on_natt, &self.buf[..n]) else { continue };
                    let Ok(p) = Header::peek(msg) else { continue };
                    let ours = if p.header.flags.initiator { p.header.spi_r } else { p.header.spi_i };
                    if let Some(s) = sas.get_mut(&ours) {
                        s.sa.handle(now, local, from, msg, &mut self.rng);
                        pending_out.push_back(ours);
                    }
                }
            }
        }
        let elapsed = last_done.saturating_duration_since(t0);
        // Let the responder finish its share of the last deletions before reading its CPU time.
        std::thread::sleep(Duration::from_millis(50));
        let responder_cpu = match (responder, cpu0) {
            (Some(pid), Some(c0)) => process_cpu(pid).saturating_sub(c0),
            _ => Duration::ZERO,
        };
        acc.setups += completed;
        acc.failures += failures;
        acc.elapsed += elapsed;
        acc.responder_cpu += responder_cpu;
        acc.generator_cpu += self_cpu().saturating_sub(gen0);
        acc.retransmits += retransmits;
    }
}
