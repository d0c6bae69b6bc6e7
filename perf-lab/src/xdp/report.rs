//! Results of `perf-lab xdp`: one [`Row`] per case and size, the table on stderr, and the reports
//! `xdp.md` (table, the issue's three targets with the measured ratios, notes) and `xdp.svg`
//! (delivered Mpps per size and case, bars; written by hand: a few rectangles and labels do not
//! need a plotting crate).

use std::fmt::Write as _;
use std::path::Path;

use super::traffic::Trial;
use super::XdpArgs;

/// One case at one size.
pub struct Row {
    pub case: String,
    pub size: String,
    /// Max-rate run: delivered Mpps and Gbit/s, loss.
    pub mpps: f64,
    pub gbps: f64,
    pub loss: f64,
    pub offered_mpps: f64,
    pub max_p99_us: f64,
    /// Paced run at half the delivered max rate: latency and loss.
    pub p50_us: f64,
    pub p99_us: f64,
    pub half_mpps: f64,
    pub half_loss: f64,
    /// Paced run at 1000 packets/s: latency without load.
    pub light_p50_us: f64,
    pub light_p99_us: f64,
    /// Highest paced rate with loss < 0.1 % (None: not searched, or none found).
    pub lossless_mpps: Option<f64>,
    pub lossless_gbps: Option<f64>,
    /// Datagrams received twice (all runs of this row; should be 0).
    pub duplicates: u64,
    /// Sink-side UDP receive-buffer drops, all runs of this row.
    pub sink_drops: u64,
}

impl Row {
    pub fn new(
        case: &str,
        size: &str,
        max: Trial,
        half: Option<Trial>,
        light: Trial,
        lossless: Option<Trial>,
        searched: bool,
    ) -> Row {
        let nan = f64::NAN;
        Row {
            case: case.into(),
            size: size.into(),
            mpps: max.delivered_pps() / 1e6,
            gbps: max.delivered_gbps(),
            loss: max.loss(),
            offered_mpps: max.offered_pps() / 1e6,
            max_p99_us: max.p99_us,
            p50_us: half.as_ref().map_or(nan, |h| h.p50_us),
            p99_us: half.as_ref().map_or(nan, |h| h.p99_us),
            half_mpps: half.as_ref().map_or(nan, |h| h.delivered_pps() / 1e6),
            half_loss: half.as_ref().map_or(nan, |h| h.loss()),
            light_p50_us: light.p50_us,
            light_p99_us: light.p99_us,
            lossless_mpps: lossless.as_ref().map(|l| l.delivered_pps() / 1e6).or(if searched {
                Some(0.0)
            } else {
                None
            }),
            lossless_gbps: lossless.as_ref().map(|l| l.delivered_gbps()).or(if searched { Some(0.0) } else { None }),
            duplicates: max.duplicates
                + half.as_ref().map_or(0, |h| h.duplicates)
                + lossless.as_ref().map_or(0, |l| l.duplicates),
            sink_drops: max.sink_drops
                + half.as_ref().map_or(0, |h| h.sink_drops)
                + lossless.as_ref().map_or(0, |l| l.sink_drops),
        }
    }

    /// A one-line summary (progress on stderr).
    pub fn line(&self) -> String {
        format!(
            "{} {}: {:.3} Mpps {:.2} Gbit/s loss {:.2}% | half rate p50 {:.1} µs p99 {:.1} µs | lossless {}",
            self.case,
            self.size,
            self.mpps,
            self.gbps,
            self.loss * 100.0,
            self.p50_us,
            self.p99_us,
            self.lossless_mpps.map_or("-".into(), |m| format!("{m:.3} Mpps"))
        )
    }

    fn cells(&self) -> Vec<String> {
        let f = |x: f64, d: usize| if x.is_finite() { format!("{x:.d$}") } else { "-".into() };
        vec![
            self.case.clone(),
            self.size.clone(),
            f(self.mpps, 3),
            f(self.gbps, 2),
            format!("{:.2} %", self.loss * 100.0),
            self.lossless_mpps.map_or("-".into(), |m| f(m, 3)),
            self.lossless_gbps.map_or("-".into(), |g| f(g, 2)),
            f(self.half_mpps, 3),
            f(self.p50_us, 1),
            f(self.p99_us, 1),
            f(self.max_p99_us, 0),
            f(self.light_p50_us, 1),
            f(self.light_p99_us, 1),
        ]
    }
}

const HEADERS: [&str; 13] = [
    "case",
    "size",
    "max Mpps",
    "max Gbit/s",
    "max-rate loss",
    "lossless Mpps",
    "lossless Gbit/s",
    "half-rate Mpps",
    "p50 µs",
    "p99 µs",
    "p99 µs at max",
    "p50 µs at 1 kpps",
    "p99 µs at 1 kpps",
];

pub fn print_table(rows: &[Row]) {
    let mut cells = vec![HEADERS.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    cells.extend(rows.iter().map(Row::cells));
    let widths: Vec<usize> =
        (0..HEADERS.len()).map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in &cells {
        let line: Vec<String> = r.iter().zip(&widths).map(|(s, w)| format!("{s:>w$}")).collect();
        eprintln!("{}", line.join("  "));
    }
}

fn find<'a>(rows: &'a [Row], case: &str, size: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.case == case && r.size == size)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// The three targets of the issue, each with what this run measured.
fn targets(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Targets (reported, not asserted)\n");
    // 1. AES-128-GCM vs null at 1420 B, one worker.
    let _ = write!(s, "1. **Engine with AES-128-GCM ≥ 0.9 × engine without crypto, 1420 B, one worker.** ");
    match (find(rows, "engine-aes128gcm", "1420"), find(rows, "engine-null", "1420")) {
        (Some(a), Some(n)) if n.mpps > 0.0 => {
            let r = a.mpps / n.mpps;
            let _ = writeln!(
                s,
                "Measured {:.3} vs {:.3} Mpps delivered at max rate: ratio **{r:.2}** ({}).",
                a.mpps,
                n.mpps,
                if r >= 0.9 { "met" } else { "missed" }
            );
            if let (Some(la), Some(ln)) = (a.lossless_mpps, n.lossless_mpps) {
                if ln > 0.0 {
                    let _ = writeln!(s, "   Lossless rates: {la:.3} vs {ln:.3} Mpps, ratio {:.2}.", la / ln);
                }
            }
        }
        _ => {
            let _ = writeln!(s, "Not measured in this run (needs both engine cases at 1420).");
        }
    }
    // 2. Engine vs strongSwan lossless.
    let _ = write!(s, "2. **Engine ≥ 10 × strongSwan's lossless UDP rate, same topology.** ");
    let mut any = false;
    for r in rows.iter().filter(|r| r.case == "strongswan") {
        let (Some(a), Some(sl)) = (find(rows, "engine-aes128gcm", &r.size), r.lossless_mpps) else { continue };
        if !any {
            let _ = writeln!(s, "Per size, engine (AES-128-GCM) ÷ strongSwan lossless rate:\n");
            any = true;
        }
        let ratio =
            |x: f64| if sl > 0.0 { format!("{:.1}×", x / sl) } else { "∞ (strongSwan lossless rate 0)".into() };
        let _ = writeln!(
            s,
            "   - {}: strongSwan lossless {:.4} Mpps ({:.3} Gbit/s); engine max {:.3} Mpps → **{}**; engine lossless {} → **{}**",
            r.size,
            sl,
            r.lossless_gbps.unwrap_or(0.0),
            a.mpps,
            ratio(a.mpps),
            a.lossless_mpps.map_or("-".into(), |l| format!("{l:.3} Mpps")),
            a.lossless_mpps.map_or("-".into(), ratio),
        );
    }
    if !any {
        let _ = writeln!(
            s,
            "Not measured in this run (needs the engine-aes128gcm and strongswan cases with the lossless search)."
        );
    }
    // 3. p99 at half rate.
    let _ = write!(s, "\n3. **p99 added latency ≤ 50 µs at half of the engine's maximum rate.** ");
    let engine: Vec<&Row> = rows.iter().filter(|r| r.case == "engine-aes128gcm").collect();
    if engine.is_empty() {
        let _ = writeln!(s, "Not measured in this run.");
    } else {
        let _ = writeln!(s, "Engine with AES-128-GCM, one-way generator → sink (includes both hosts' UDP stacks, so it bounds the added latency from above):\n");
        for r in engine {
            let verdict = if !r.p99_us.is_finite() {
                "not measured"
            } else if r.p99_us <= 50.0 {
                "met"
            } else {
                "missed"
            };
            let _ = writeln!(
                s,
                "   - {}: at {:.3} Mpps p50 {:.1} µs, p99 **{:.1} µs** ({verdict})",
                r.size, r.half_mpps, r.p50_us, r.p99_us
            );
        }
        let _ = writeln!(
            s,
            "\n   The same path at 1000 packets/s (no queueing; the floor of this machine and topology):\n"
        );
        for r in rows.iter().filter(|r| r.light_p99_us.is_finite()) {
            let _ =
                writeln!(s, "   - {} {}: p50 {:.1} µs, p99 {:.1} µs", r.case, r.size, r.light_p50_us, r.light_p99_us);
        }
        let _ = writeln!(
            s,
            "\n   When the p99 at 1000 packets/s is already far above 50 µs, for strongSwan as for the engine, the tail comes \
             from scheduling on the shared cores (a woken worker or sink waits for a CPU), not from the gateways' \
             per-packet work, and this target cannot be judged on this machine."
        );
    }
    s
}

pub fn write(dir: &Path, rows: &[Row], notes: &[String], args: &XdpArgs) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut md = String::new();
    let _ = writeln!(md, "# perf-lab xdp: the engine vs no crypto vs strongSwan\n");
    let _ = writeln!(
        md,
        "Command: `cargo build --release -p ipsec-engine && cargo run --release -p perf-lab -- xdp --json --seconds {} --sizes {} --search-steps {} --repeat {}`  \nMachine: {}.\n",
        args.seconds,
        args.sizes.join(","),
        args.search_steps,
        args.repeat,
        machine()
    );
    let _ = writeln!(
        md,
        "Topology: generator ns → gw-1 → gw-2 → sink ns over veth pairs (MTU 1600, one queue each). \
         Engine cases: two `ipsec-engine run` processes, one worker each, XDP native on veth + AF_XDP copy mode, \
         static SAs (`aes128gcm16`, or `null` cipher without integrity for the baseline), no pinning, no busy polling. \
         strongSwan case: two charon 5.9 with kernel-libipsec (userspace ESP through a TUN device, always ESP-in-UDP 4500), \
         one IKEv2 SA negotiated with a PSK, ESP `aes128gcm16`, kernel IP forwarding. \
         Traffic: UDP from our own generator (`sendmmsg` bursts) to our own sink (`recvmmsg`), \
         sequence number and CLOCK_MONOTONIC timestamp in each payload; sizes are IP packet bytes, \
         `imix` is 7:4:1 of 64/594/1518.\n"
    );
    let _ = writeln!(
        md,
        "Cases interleave: for each size, each case's gateways are started, warmed up, measured and stopped in turn. \
         Columns: *max* = generator as fast as it can for {} s (best of {} runs), delivered rate at the sink and loss = 1 − received ÷ sent; \
         *lossless* = highest paced rate with < 0.1 % loss found by {} bisection steps between 0 and the delivered max \
         (0 = none found); *half-rate* = paced at half the delivered max, with the one-way latency percentiles \
         (HdrHistogram) of that run; *p99 at max* = latency under overload (queues full); \
         *at 1 kpps* = latency of a paced run at 1000 packets/s (the path without queueing).\n",
        args.seconds, args.repeat, args.search_steps
    );
    let _ = writeln!(md, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(HEADERS.len()));
    for r in rows {
        let _ = writeln!(md, "| {} |", r.cells().join(" | "));
    }
    let _ = writeln!(md);
    md += &targets(rows);
    let _ = writeln!(md, "\n## How to read these numbers\n");
    let _ = writeln!(
        md,
        "- **Everything shares the machine.** The generator, the sink, both gateways (engine workers or charons) \
         and the kernels' veth, XDP and UDP work all run on the same {} cores. \
         A \"max rate\" is therefore the rate of the whole chain on this box, not of one gateway on its own cores; \
         a dedicated core per worker and a real NIC (zero-copy AF_XDP) are what the engine is built for.",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "- veth offers AF_XDP in copy mode only: every packet is copied into and out of the UMEM by the kernel, \
         and transmission costs a `sendto` per burst. These copies cost the same with and without crypto, \
         so they dilute the AES-GCM ÷ null ratio (push it towards 1) compared with zero-copy on a NIC."
    );
    let _ = writeln!(
        md,
        "- Latency is generator → sink one-way, both ends reading CLOCK_MONOTONIC on the same host; it includes \
         both hosts' UDP stacks and the scheduling of all processes on 2 cores, so it bounds the gateways' added latency from above."
    );
    let _ = writeln!(
        md,
        "- strongSwan's TUN device has MTU 1400: the generator sends with DF clear, so its 1420-byte and IMIX 1518-byte \
         packets are fragmented by gw-1's kernel before encryption (two ESP packets each); the sink counts reassembled datagrams."
    );
    let total_drops: u64 = rows.iter().map(|r| r.sink_drops).sum();
    let _ = writeln!(
        md,
        "- The sink's own UDP receive-buffer drops over all runs: {total_drops} (counted as loss; a share of the loss \
         may be the sink's, not the gateways')."
    );
    for n in notes {
        let _ = writeln!(md, "- {n}");
    }
    let md_path = dir.join("xdp.md");
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let svg_path = dir.join("xdp.svg");
    std::fs::write(&svg_path, svg(rows)).map_err(|e| format!("{}: {e}", svg_path.display()))?;
    Ok(())
}

/// Grouped bars: delivered Mpps at max rate per size (groups) and case (colours).
pub fn svg(rows: &[Row]) -> String {
    let mut sizes: Vec<&str> = Vec::new();
    let mut cases: Vec<&str> = Vec::new();
    for r in rows {
        if !sizes.contains(&r.size.as_str()) {
            sizes.push(&r.size);
        }
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let (w, h, left, top, bottom) = (760.0, 420.0, 70.0, 40.0, 70.0);
    let plot_h = h - top - bottom;
    let max = rows.iter().map(|r| r.mpps).fold(0.0f64, f64::max);
    let step = nice_step(max / 5.0);
    let ymax = ((max / step).ceil() * step).max(step);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">perf-lab xdp: delivered Mpps at max rate (generator → gw-1 → gw-2 → sink)</text>"#,
        w / 2.0
    );
    let mut tick = 0.0;
    while tick <= ymax + 1e-9 {
        let y = top + plot_h - tick / ymax * plot_h;
        let _ = writeln!(s, r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, w - 20.0);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{tick:.2}</text>"#, left - 6.0, y + 4.0);
        tick += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">Mpps</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let group_w = (w - left - 20.0) / sizes.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / cases.len().max(1) as f64;
    for (g, size) in sizes.iter().enumerate() {
        let gx = left + g as f64 * group_w + group_w * 0.1;
        for (c, case) in cases.iter().enumerate() {
            let Some(r) = find(rows, case, size) else { continue };
            let bh = r.mpps / ymax * plot_h;
            let x = gx + c as f64 * bar_w;
            let y = top + plot_h - bh;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{case} {size}: {:.3} Mpps, {:.2} Gbit/s</title></rect>"#,
                bar_w - 2.0,
                colours[c % colours.len()],
                r.mpps,
                r.gbps
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.3}</text>"#,
                x + bar_w / 2.0 - 1.0,
                y - 3.0,
                r.mpps
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{size}</text>"#,
            gx + group_w * 0.4,
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h,
        w - 20.0,
        top + plot_h
    );
    for (c, case) in cases.iter().enumerate() {
        let x = left + c as f64 * 190.0;
        let y = h - 22.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#,
            y - 10.0,
            colours[c % colours.len()]
        );
        let _ = writeln!(s, r#"<text x="{}" y="{y}">{case}</text>"#, x + 16.0);
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 0.1;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let m = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

#[cfg(test)]
mod tests {
    use super::nice_step;

    #[test]
    fn axis_steps_are_1_2_5_decades() {
        assert_eq!(nice_step(0.03), 0.05);
        assert_eq!(nice_step(0.1), 0.1);
        assert_eq!(nice_step(0.15), 0.2);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.0), 0.1);
    }
}
