//! Operator view: per-worker and per-SA counters, rendered as text (`--stats-interval`, and at
//! exit) or in the Prometheus text exposition format (`--prometheus 127.0.0.1:PORT`).
//!
//! Counters are written by their owning worker only (single-writer relaxed atomics, see
//! `ipsec_esp::counters::LocalCounter`) and read here at any time; a reader may see one burst's
//! worth of skew between counters, never a torn value.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipsec_esp::counters::LocalCounter;
use ipsec_esp::{InboundSa, OutboundSa, SaCounters, WorkerCounters};

use crate::channel::SaLists;
use crate::xdp::XdpSteering;

macro_rules! engine_drops {
    ($($name:ident => $label:literal, $doc:literal;)*) => {
        /// Why the engine (outside the ESP core) dropped a packet.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum EngineDrop {
            $(#[doc = $doc] $name,)*
        }

        impl EngineDrop {
            pub const ALL: &'static [EngineDrop] = &[$(EngineDrop::$name,)*];
            pub const COUNT: usize = Self::ALL.len();

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EngineDrop::$name => $label,)*
                }
            }
        }
    };
}

engine_drops! {
    NotIp => "not_ip", "Not IPv4/IPv6 (or a malformed IP header) on a steered queue.";
    Ike => "ike", "IKE (UDP 500, or 4500 with the non-ESP marker) not punted: no control session, over the worker's punt rate, or punt queue full.";
    NatKeepalive => "nat_keepalive", "A NAT keepalive not punted (same reasons as `ike`).";
    NotEsp => "not_esp", "Something else than ESP or IKE on the outside.";
    TooBig => "too_big", "Larger than the output interface's MTU after encapsulation, or no room in the frame.";
    NoRouteOut => "no_route_out", "No kernel route for the destination via the expected interface.";
    NoNeighbour => "no_neighbour", "The next hop is not resolved yet (the kernel was asked to).";
    TxRingFull => "tx_ring_full", "The tx ring was full.";
    TtlExpired => "ttl_expired", "Inner TTL / hop limit expired (an ICMP time exceeded goes back on the inside).";
    FragNeeded => "frag_needed", "Too big for the tunnel (or, decapsulated, for the inside link) with DF set, or IPv6: an ICMP error goes back to the sender (counted in icmp_sent / icmp_suppressed).";
    FragNoFrames => "frag_no_frames", "Too big for the tunnel and no free frame (or backlog slot) for its fragments.";
}

/// Router events of one worker that are not drops: fragmentation and ICMP errors.
#[derive(Default)]
pub struct ForwardStats {
    /// Inner IPv4 packets fragmented before encryption.
    pub fragmented: LocalCounter,
    /// Fragments made of them.
    pub fragments: LocalCounter,
    /// ICMP errors sent (fragmentation needed / packet too big / time exceeded).
    pub icmp_sent: LocalCounter,
    /// ICMP errors not sent: rate limit, no source address, or not allowed (about an ICMP error,
    /// a non-first fragment, a multicast address).
    pub icmp_suppressed: LocalCounter,
}

/// Counters of one worker.
pub struct WorkerStats {
    pub id: usize,
    /// Port names (`interface/queue`), index = port.
    pub ports: Vec<String>,
    pub rx: Vec<LocalCounter>,
    pub tx: Vec<LocalCounter>,
    drops: [LocalCounter; EngineDrop::COUNT],
    pub wakeups: LocalCounter,
    pub esp: Arc<WorkerCounters>,
    pub fwd: ForwardStats,
}

impl WorkerStats {
    pub fn new(id: usize, ports: Vec<String>, esp: Arc<WorkerCounters>) -> Self {
        let n = ports.len();
        WorkerStats {
            id,
            ports,
            rx: (0..n).map(|_| LocalCounter::default()).collect(),
            tx: (0..n).map(|_| LocalCounter::default()).collect(),
            drops: Default::default(),
            wakeups: LocalCounter::default(),
            esp,
            fwd: ForwardStats::default(),
        }
    }

    #[inline]
    pub fn count_drop(&self, reason: EngineDrop, n: u64) {
        self.drops[reason as usize].add(n);
    }

    pub fn drops(&self, reason: EngineDrop) -> u64 {
        self.drops[reason as usize].get()
    }
}

/// Everything the stats views read.
pub struct StatsSources {
    pub workers: Vec<Arc<WorkerStats>>,
    pub outbound_sas: Vec<(String, Arc<OutboundSa>)>,
    pub inbound_sas: Vec<(String, Arc<InboundSa>)>,
    /// The XDP programs, by interface name.
    pub steering: Arc<Mutex<Vec<(String, XdpSteering)>>>,
    /// SAs installed over the control channel (republished by the channel thread).
    pub control_sas: Option<Arc<Mutex<SaLists>>>,
}

fn sa_line(out: &mut String, tunnel: &str, dir: &str, spi: u32, c: &SaCounters) {
    let drops: Vec<String> = c.nonzero_drops().map(|(r, n)| format!("{r}={n}")).collect();
    let _ = writeln!(
        out,
        "  sa {tunnel:<16} {dir:<3} spi {spi:#010x} packets {:>10} bytes {:>12} drops {}",
        c.packets(),
        c.bytes(),
        if drops.is_empty() { "-".into() } else { drops.join(" ") }
    );
}

impl StatsSources {
    /// Static and control-owned SAs: (tunnel, SA) per direction.
    #[allow(clippy::type_complexity)]
    pub fn all_sas(&self) -> (Vec<(String, Arc<OutboundSa>)>, Vec<(String, Arc<InboundSa>)>) {
        let mut out = self.outbound_sas.clone();
        let mut ins = self.inbound_sas.clone();
        if let Some(Ok(c)) = self.control_sas.as_ref().map(|c| c.lock()) {
            out.extend(c.outbound.iter().cloned());
            ins.extend(c.inbound.iter().cloned());
        }
        (out, ins)
    }

    /// Human-readable counters.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for w in &self.workers {
            let ports: Vec<String> = w
                .ports
                .iter()
                .enumerate()
                .map(|(p, name)| format!("{name} rx {} tx {}", w.rx[p].get(), w.tx[p].get()))
                .collect();
            let mut drops: Vec<String> = EngineDrop::ALL
                .iter()
                .filter(|r| w.drops(**r) != 0)
                .map(|r| format!("{}={}", r.as_str(), w.drops(*r)))
                .collect();
            drops.extend(w.esp.nonzero_drops().map(|(r, n)| format!("esp.{r}={n}")));
            let _ = writeln!(
                out,
                "  worker {}: {} | encap {} decap {} | fragmented {} fragments {} icmp_sent {} icmp_suppressed {} | drops {}",
                w.id,
                ports.join(", "),
                w.esp.encap_packets.get(),
                w.esp.decap_packets.get(),
                w.fwd.fragmented.get(),
                w.fwd.fragments.get(),
                w.fwd.icmp_sent.get(),
                w.fwd.icmp_suppressed.get(),
                if drops.is_empty() { "-".into() } else { drops.join(" ") }
            );
        }
        let (outbound_sas, inbound_sas) = self.all_sas();
        for (t, sa) in &outbound_sas {
            sa_line(&mut out, t, "out", sa.spi(), sa.counters());
        }
        for (t, sa) in &inbound_sas {
            sa_line(&mut out, t, "in", sa.spi(), sa.counters());
        }
        if let Ok(st) = self.steering.lock() {
            for (ifname, s) in st.iter() {
                if let Ok(c) = s.counters() {
                    let nz: Vec<String> = c.nonzero().iter().map(|(v, n)| format!("{}={n}", v.name())).collect();
                    let _ = writeln!(out, "  xdp {ifname}: {}", if nz.is_empty() { "-".into() } else { nz.join(" ") });
                }
            }
        }
        out
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut o = String::new();
        let header = |o: &mut String, name: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        header(&mut o, "ipsec_worker_rx_packets_total", "Frames received on an AF_XDP socket.");
        for w in &self.workers {
            for (p, name) in w.ports.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "ipsec_worker_rx_packets_total{{worker=\"{}\",port=\"{name}\"}} {}",
                    w.id,
                    w.rx[p].get()
                );
            }
        }
        header(&mut o, "ipsec_worker_tx_packets_total", "Frames handed to an AF_XDP tx ring.");
        for w in &self.workers {
            for (p, name) in w.ports.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "ipsec_worker_tx_packets_total{{worker=\"{}\",port=\"{name}\"}} {}",
                    w.id,
                    w.tx[p].get()
                );
            }
        }
        header(&mut o, "ipsec_worker_drops_total", "Packets the engine dropped outside the ESP core, by reason.");
        for w in &self.workers {
            for r in EngineDrop::ALL {
                let _ = writeln!(
                    o,
                    "ipsec_worker_drops_total{{worker=\"{}\",reason=\"{}\"}} {}",
                    w.id,
                    r.as_str(),
                    w.drops(*r)
                );
            }
        }
        header(&mut o, "ipsec_worker_forward_events_total", "Fragmentation and ICMP errors, by event.");
        for w in &self.workers {
            for (event, c) in [
                ("fragmented", &w.fwd.fragmented),
                ("fragments", &w.fwd.fragments),
                ("icmp_sent", &w.fwd.icmp_sent),
                ("icmp_suppressed", &w.fwd.icmp_suppressed),
            ] {
                let _ = writeln!(
                    o,
                    "ipsec_worker_forward_events_total{{worker=\"{}\",event=\"{event}\"}} {}",
                    w.id,
                    c.get()
                );
            }
        }
        header(&mut o, "ipsec_esp_packets_total", "Packets through the ESP core, by direction.");
        for w in &self.workers {
            let _ = writeln!(
                o,
                "ipsec_esp_packets_total{{worker=\"{}\",direction=\"encap\"}} {}",
                w.id,
                w.esp.encap_packets.get()
            );
            let _ = writeln!(
                o,
                "ipsec_esp_packets_total{{worker=\"{}\",direction=\"decap\"}} {}",
                w.id,
                w.esp.decap_packets.get()
            );
        }
        header(&mut o, "ipsec_esp_drops_total", "Packets the ESP core dropped, by reason.");
        for w in &self.workers {
            for r in ipsec_esp::DropReason::ALL {
                let _ = writeln!(
                    o,
                    "ipsec_esp_drops_total{{worker=\"{}\",reason=\"{}\"}} {}",
                    w.id,
                    r.as_str(),
                    w.esp.drops(*r)
                );
            }
        }
        let (outbound_sas, inbound_sas) = self.all_sas();
        let sas = outbound_sas
            .iter()
            .map(|(t, sa)| (t, "out", sa.spi(), sa.counters()))
            .chain(inbound_sas.iter().map(|(t, sa)| (t, "in", sa.spi(), sa.counters())));
        let sas: Vec<_> = sas.collect();
        header(&mut o, "ipsec_sa_packets_total", "Packets processed by an SA.");
        for (t, d, spi, c) in &sas {
            let _ = writeln!(
                o,
                "ipsec_sa_packets_total{{tunnel=\"{t}\",direction=\"{d}\",spi=\"{spi:#010x}\"}} {}",
                c.packets()
            );
        }
        header(&mut o, "ipsec_sa_bytes_total", "Bytes processed by an SA.");
        for (t, d, spi, c) in &sas {
            let _ = writeln!(
                o,
                "ipsec_sa_bytes_total{{tunnel=\"{t}\",direction=\"{d}\",spi=\"{spi:#010x}\"}} {}",
                c.bytes()
            );
        }
        header(&mut o, "ipsec_sa_drops_total", "Packets an SA dropped, by reason (non-zero only).");
        for (t, d, spi, c) in &sas {
            for (r, n) in c.nonzero_drops() {
                let _ = writeln!(
                    o,
                    "ipsec_sa_drops_total{{tunnel=\"{t}\",direction=\"{d}\",spi=\"{spi:#010x}\",reason=\"{r}\"}} {n}"
                );
            }
        }
        header(&mut o, "ipsec_xdp_packets_total", "XDP steering verdicts per interface.");
        if let Ok(st) = self.steering.lock() {
            for (ifname, s) in st.iter() {
                if let Ok(c) = s.counters() {
                    for (v, n) in c.iter() {
                        let _ = writeln!(
                            o,
                            "ipsec_xdp_packets_total{{interface=\"{ifname}\",verdict=\"{}\"}} {n}",
                            v.name()
                        );
                    }
                }
            }
        }
        o
    }
}

/// Serves `GET /metrics` (any path, in fact) on `addr` until `stop`. Loopback addresses only: the
/// endpoint has no authentication.
pub fn serve_prometheus(addr: SocketAddr, sources: Arc<StatsSources>, stop: Arc<AtomicBool>) -> Result<(), String> {
    if !addr.ip().is_loopback() {
        return Err(format!("--prometheus {addr}: only loopback addresses are allowed"));
    }
    let listener = TcpListener::bind(addr).map_err(|e| format!("--prometheus {addr}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    tracing::info!("Prometheus metrics on http://{addr}/metrics");
    std::thread::Builder::new()
        .name("prometheus".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = [0u8; 1024];
                        let _ = s.read(&mut req);
                        let body = sources.render_prometheus();
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
