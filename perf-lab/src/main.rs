//! The perf lab: measurements that back the project's speed claims, printed as a table and, with
//! `--json`, as one JSON object per line (the table then goes to stderr).
//!
//! - `perf-lab esp`: the ESP core on one core, in memory (issue: ESP data-plane core).
//! - `perf-lab xdp`: the AF_XDP engine between namespaces (AES-128-GCM, no-crypto baseline) and
//!   strongSwan in the same topology; needs root and `cargo build --release -p ipsec-engine`.
//!
//! Run with `--release`: `cargo run --release -p perf-lab -- esp --json`.

mod esp;
mod xdp;

use clap::{Parser, Subcommand};
use ipsec_esp::{Cipher, Integrity};

#[derive(Parser)]
#[command(about = "Measurements behind the gateway's speed claims")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// ESP encap/decap throughput per transform and size, against the raw crypto of the same backend.
    Esp {
        /// One JSON object per line on stdout (the table goes to stderr).
        #[arg(long)]
        json: bool,
        /// Seconds of measurement per case and direction.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        /// Transforms (strongSwan-style names); default: the benchmark set.
        #[arg(long, value_delimiter = ',')]
        transforms: Vec<String>,
        /// Sizes: IP packet bytes, or `imix` (7:4:1 of 64/594/1518).
        #[arg(long, value_delimiter = ',', default_value = "64,512,1420,imix")]
        sizes: Vec<String>,
        /// Number of SAs for the table scale case (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        scale_sas: usize,
    },
    /// Line rate through two gateways in namespaces: engine with AES-128-GCM, engine without
    /// crypto, strongSwan (root; engine binary next to this one or `--engine`).
    Xdp {
        /// One JSON object per line on stdout (the table goes to stderr).
        #[arg(long)]
        json: bool,
        /// Seconds per run (max rate, half rate; lossless search runs take half of it, ≥ 0.5 s).
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Sizes: IP packet bytes, or `imix` (7:4:1 of 64/594/1518).
        #[arg(long, value_delimiter = ',', default_value = "64,512,1420,imix")]
        sizes: Vec<String>,
        /// Cases: engine-aes128gcm, engine-null, strongswan.
        #[arg(long, value_delimiter = ',', default_value = "engine-aes128gcm,engine-null,strongswan")]
        cases: Vec<String>,
        /// Bisection steps of the lossless-rate search (0 skips it).
        #[arg(long, default_value_t = 5)]
        search_steps: u32,
        /// Max-rate runs per case and size; the best counts (noise from other load).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// The `ipsec-engine` binary (default: next to this binary).
        #[arg(long)]
        engine: Option<std::path::PathBuf>,
        /// Where xdp.md and xdp.svg go.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/reports"))]
        report_dir: std::path::PathBuf,
    },
}

fn parse_transform(name: &str) -> Option<(Cipher, Integrity)> {
    ipsec_benches::TRANSFORMS.iter().copied().find(|&(c, i)| ipsec_benches::transform_name(c, i) == name).or_else(
        || {
            let (c, i) = name.split_once('-').unwrap_or((name, "none"));
            let c = Cipher::ALL.into_iter().find(|x| x.name() == c)?;
            let i = Integrity::ALL.into_iter().find(|x| x.name() == i)?;
            Some((c, i))
        },
    )
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Esp { json, seconds, transforms, sizes, scale_sas } => {
            let transforms = if transforms.is_empty() {
                ipsec_benches::TRANSFORMS.to_vec()
            } else {
                transforms
                    .iter()
                    .map(|t| parse_transform(t).unwrap_or_else(|| panic!("unknown transform {t}")))
                    .collect()
            };
            esp::run(&esp::EspArgs { json, seconds, transforms, sizes, scale_sas });
        }
        Cmd::Xdp { json, seconds, sizes, cases, search_steps, repeat, engine, report_dir } => {
            let report_dir = Some(report_dir);
            let args = xdp::XdpArgs { json, seconds, sizes, cases, search_steps, repeat, engine, report_dir };
            if let Err(e) = xdp::run(&args) {
                eprintln!("perf-lab xdp: {e}");
                std::process::exit(1);
            }
        }
    }
}
