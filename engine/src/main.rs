//! `ipsec-engine`: the gateway's packet engine.
//!
//! `ipsec-engine run --config FILE [--control-socket PATH | --no-control-socket]` runs the AF_XDP
//! forwarding engine on a static configuration plus what the control process installs over the
//! channel (see `engine/README.md`); `ipsec-engine demo` runs the in-memory demo of the ESP data path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ipsec_engine::run::{IoChoice, RunOptions};
use ipsec_engine::xdp::AttachMode;

#[derive(Parser)]
#[command(version, about = "IPsec gateway packet engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Native (driver) mode, falling back to generic.
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum Io {
    /// AF_XDP, falling back to AF_PACKET (with a warning saying why) when AF_XDP cannot be used.
    Auto,
    /// AF_XDP only (XDP steering + AF_XDP sockets).
    Afxdp,
    /// AF_PACKET only (TPACKET_V3 rings, classic BPF socket filters): old kernels, no CAP_BPF.
    Afpacket,
}

#[derive(Subcommand)]
enum Cmd {
    /// In-memory ESP demo: two gateways, three tunnels, sample traffic, refusals, counters.
    Demo {
        /// Sample packets to send through the tunnels.
        #[arg(long, default_value_t = 30_000)]
        packets: usize,
    },
    /// The forwarding engine: XDP steering + AF_XDP workers (or the AF_PACKET fallback) on a static
    /// SA configuration.
    Run {
        /// The static configuration (TOML): interfaces, tunnels, SAs.
        #[arg(long)]
        config: PathBuf,
        /// Packet I/O backend.
        #[arg(long, value_enum, default_value_t = Io::Auto)]
        io: Io,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        xdp_mode: Mode,
        /// Do not pin worker threads to cores (tests, shared machines).
        #[arg(long)]
        no_pin: bool,
        /// Bind the AF_XDP sockets in zero-copy mode (fails where the driver refuses, e.g. veth).
        #[arg(long)]
        zero_copy: bool,
        /// Never sleep when idle, and set the busy-poll socket options.
        #[arg(long)]
        busy_poll: bool,
        /// Print counters every N seconds.
        #[arg(long, value_name = "SECONDS")]
        stats_interval: Option<f64>,
        /// Serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR:PORT")]
        prometheus: Option<SocketAddr>,
        /// Full re-read of the kernel's links, addresses, routes and neighbours every N
        /// milliseconds (a safety net: changes arrive as netlink events right away).
        #[arg(long, default_value_t = 30000)]
        neigh_interval_ms: u64,
        /// Frames per worker UMEM (4 KiB each; AF_PACKET: the worker's pool, at most 1024).
        #[arg(long, default_value_t = 4096)]
        frames: u32,
        /// Size of each AF_XDP ring (power of two; AF_PACKET: receive ring of about as many
        /// full-size packets, in 128 KiB blocks).
        #[arg(long, default_value_t = 1024)]
        ring_size: u32,
        /// The engine <-> control channel's Unix socket (mode 0600, in a 0700 directory).
        #[arg(long, value_name = "PATH", default_value = ipsec_channel::DEFAULT_SOCKET)]
        control_socket: PathBuf,
        /// Serve no control channel: the static configuration only.
        #[arg(long, conflicts_with = "control_socket")]
        no_control_socket: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd.unwrap_or(Cmd::Demo { packets: 30_000 }) {
        Cmd::Demo { packets } => ipsec_engine::demo::run(packets),
        Cmd::Run {
            config,
            io,
            xdp_mode,
            no_pin,
            zero_copy,
            busy_poll,
            stats_interval,
            prometheus,
            neigh_interval_ms,
            frames,
            ring_size,
            control_socket,
            no_control_socket,
        } => {
            ipsec_engine::run::init_logging();
            ipsec_engine::run::run(RunOptions {
                config,
                attach: match xdp_mode {
                    Mode::Auto => AttachMode::Auto,
                    Mode::Native => AttachMode::Native,
                    Mode::Generic => AttachMode::Generic,
                },
                pin: !no_pin,
                zero_copy,
                busy_poll,
                stats_interval: stats_interval.filter(|s| *s > 0.0).map(Duration::from_secs_f64),
                prometheus,
                neigh_interval: Duration::from_millis(neigh_interval_ms.max(10)),
                frames,
                ring_size,
                control_socket: (!no_control_socket).then_some(control_socket),
                io: match io {
                    Io::Auto => IoChoice::Auto,
                    Io::Afxdp => IoChoice::AfXdp,
                    Io::Afpacket => IoChoice::AfPacket,
                },
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipsec-engine: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
