//! `ipsec-engine`: the gateway's packet engine.
//!
//! Today it runs the in-memory demo of the ESP data path (`ipsec-engine demo`); the AF_XDP engine
//! process (XDP steering, pinned poll-mode workers, control channel) is being built on the same
//! ESP core.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "IPsec gateway packet engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// In-memory ESP demo: two gateways, three tunnels, sample traffic, refusals, counters.
    Demo {
        /// Sample packets to send through the tunnels.
        #[arg(long, default_value_t = 30_000)]
        packets: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd.unwrap_or(Cmd::Demo { packets: 30_000 }) {
        Cmd::Demo { packets } => ipsec_engine::demo::run(packets),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipsec-engine: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
