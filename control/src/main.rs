//! `ipsec-control`: the IKEv2/IKEv1 daemon (`run`) and its local control client (`initiate`, ...).
//! See the library documentation of `ipsec_control` for the contract.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ipsec_control::config::DaemonConfig;
use ipsec_control::daemon::{control_request, Daemon};
use ipsec_control::forwarder::EspForwarder;
use ipsec_control::log::Logger;
use ipsec_control::sink::SaSink;
use ipsec_control::{logln, RecordingSink};

const DEFAULT_SOCKET: &str = "/run/ipsec-control/ctl.sock";

const USAGE: &str = "usage:
  ipsec-control run --config FILE [--engine SOCKET | --forwarder TUN] [--log FILE]
      run the daemon (SIGTERM/SIGINT: delete every SA, then exit); --engine publishes the Child SAs to the AF_XDP engine over its channel
      socket (the engine's default: /run/ipsec-engine/control.sock) and speaks IKE through it; --forwarder serves them with the userspace ESP forwarder
      on TUN (interop tests only); logs go to stderr or FILE
  ipsec-control serve --ike-listen IP [--engine SOCKET | --forwarder TUN] [--log FILE] [--ike-port N] [--natt-port N] [--peer-ike-port N]
                      [--listen ADDR:PORT] [--state-dir DIR] [--quota N] [--token-file PATH] [--readonly-token-file PATH]
      one process: the management store and API (options as ipsec-mgmtd) and the IKE daemon on IP (the VPN gateway's
      PublicIp); connections come from the API; --engine / --forwarder as for run, otherwise SAs are only logged
  ipsec-control lab [--gateway engine|forwarder (default engine)] [--keep] [--timeout SECONDS]
      the one-command demo (root): namespaces, our gateway, a strongSwan customer gateway, a VPN connection made through
      the API, a ping across the tunnel, DescribeVpnConnection and counters; everything is removed at the end or on
      Ctrl-C (--keep: after Ctrl-C). Needs `bash .ci/lab-deps.sh` and ipsec-engine built next to ipsec-control
  ipsec-control check-config FILE
  ipsec-control initiate|rekey-child|rekey-ike|terminate NAME [--socket PATH]
  ipsec-control status [--socket PATH]
      talk to a running daemon over its control socket (default /run/ipsec-control/ctl.sock)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("lab") => lab(&args[1..]),
        Some("check-config") => match args.get(1) {
            Some(f) => DaemonConfig::load(f.as_ref())
                .map(|c| println!("ok: {} connection(s)", c.connections.len()))
                .map_err(|e| e.to_string()),
            None => Err(USAGE.into()),
        },
        Some(cmd @ ("initiate" | "rekey-child" | "rekey-ike" | "terminate" | "status")) => client(cmd, &args[1..]),
        _ => Err(USAGE.into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipsec-control: {e}");
            ExitCode::FAILURE
        }
    }
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn client(cmd: &str, args: &[String]) -> Result<(), String> {
    let socket = PathBuf::from(opt(args, "--socket").unwrap_or_else(|| DEFAULT_SOCKET.into()));
    let line = match cmd {
        "status" => "status".to_string(),
        _ => {
            let name = args.first().filter(|a| !a.starts_with("--")).ok_or(USAGE)?;
            format!("{cmd} {name}")
        }
    };
    let out = control_request(&socket, &line)?;
    println!("{out}");
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    let path = opt(args, "--config").ok_or(USAGE)?;
    let log = match opt(args, "--log") {
        Some(f) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&f)
                .map_err(|e| format!("{f}: {e}"))?;
            Logger::new(Box::new(file))
        }
        None => Logger::stderr(),
    };
    let mut cfg = DaemonConfig::load(path.as_ref()).map_err(|e| e.to_string())?;
    if cfg.daemon.control_socket.is_none() {
        cfg.daemon.control_socket = Some(DEFAULT_SOCKET.into());
    }
    let routes: Vec<ipnet::IpNet> = cfg.connections.iter().flat_map(|c| c.remote_subnets.clone()).collect();
    let engine = opt(args, "--engine");
    if engine.is_none() && args.iter().any(|a| a == "--engine") {
        return Err(format!(
            "--engine needs the socket path (the engine's default is {})",
            ipsec_channel::DEFAULT_SOCKET
        ));
    }
    let mut d = if let Some(socket) = &engine {
        if args.iter().any(|a| a == "--forwarder") {
            return Err("--engine and --forwarder exclude each other".into());
        }
        let (sink, ike) = ipsec_control::engine_link::attach(socket.as_ref(), &cfg, log.clone())
            .map_err(|e| format!("engine channel: {e}"))?;
        Daemon::with_transport(cfg, Box::new(sink), Box::new(ike), log.clone()).map_err(|e| e.to_string())?
    } else {
        Daemon::new(cfg, Box::new(RecordingSink::default()), log.clone()).map_err(|e| e.to_string())?
    };
    if engine.is_some() {
        // The engine link is the sink already.
    } else if let Some(tun) = opt(args, "--forwarder") {
        let sock = d.natt_socket().map_err(|e| e.to_string())?;
        let f = EspForwarder::new(&tun, &routes, sock, log.clone()).map_err(|e| format!("forwarder: {e}"))?;
        d.set_sink(Box::new(f) as Box<dyn SaSink>).map_err(|e| e.to_string())?;
    } else {
        d.set_sink(Box::new(LogSink(log.clone()))).map_err(|e| e.to_string())?;
    }
    d.start();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("signal handler: {e}"))?;
    }
    let r = d.run(&stop).and_then(|()| d.shutdown(std::time::Duration::from_secs(3))).map_err(|e| e.to_string());
    logln!(log, "exiting: {r:?}");
    r
}

fn lab(args: &[String]) -> Result<(), String> {
    use ipsec_control::lab::LabOptions;
    let mut o = LabOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--gateway" => o.gateway = it.next().ok_or(USAGE)?.parse()?,
            "--keep" => o.keep = true,
            "--timeout" => {
                let s: u64 = it.next().ok_or(USAGE)?.parse().map_err(|e| format!("--timeout: {e}"))?;
                o.tunnel_timeout = std::time::Duration::from_secs(s);
            }
            _ => return Err(format!("lab: unknown option {a}\n{USAGE}")),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("signal handler: {e}"))?;
    }
    ipsec_control::lab::run(&o, stop)
}

fn open_log(args: &[String]) -> Result<Logger, String> {
    Ok(match opt(args, "--log") {
        Some(f) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&f)
                .map_err(|e| format!("{f}: {e}"))?;
            Logger::new(Box::new(file))
        }
        None => Logger::stderr(),
    })
}

fn serve(args: &[String]) -> Result<(), String> {
    use ipsec_control::serve::{IkeOptions, SinkFactory};
    // Our options; everything else goes to the management daemon's parser.
    const OURS: &[&str] =
        &["--ike-listen", "--forwarder", "--engine", "--log", "--ike-port", "--natt-port", "--peer-ike-port"];
    let mut mgmt_args = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if OURS.contains(&a.as_str()) {
            it.next();
        } else {
            mgmt_args.push(a.clone());
        }
    }
    let mgmt = ipsec_mgmt::daemon::Options::parse(&mgmt_args).map_err(|e| format!("{e}\n{USAGE}"))?;
    let listen = opt(args, "--ike-listen").ok_or(USAGE)?.parse().map_err(|e| format!("--ike-listen: {e}"))?;
    let port = |name: &str, default: u16| -> Result<u16, String> {
        opt(args, name).map_or(Ok(default), |v| v.parse().map_err(|e| format!("{name}: {e}")))
    };
    let mut o = IkeOptions::new(listen);
    o.ike_port = port("--ike-port", o.ike_port)?;
    o.natt_port = port("--natt-port", o.natt_port)?;
    o.peer_ike_port = port("--peer-ike-port", o.peer_ike_port)?;
    o.state_file = Some(mgmt.state_dir.join("ike-state"));
    o.engine = opt(args, "--engine").map(PathBuf::from);
    if o.engine.is_none() && args.iter().any(|a| a == "--engine") {
        return Err(format!(
            "--engine needs the socket path (the engine's default is {})",
            ipsec_channel::DEFAULT_SOCKET
        ));
    }
    if o.engine.is_some() && args.iter().any(|a| a == "--forwarder") {
        return Err("--engine and --forwarder exclude each other".into());
    }
    let log = open_log(args)?;
    let sink: SinkFactory = match opt(args, "--forwarder") {
        Some(tun) => {
            // The forwarder serves UDP-encapsulated SAs only.
            o.force_encap = true;
            let log = log.clone();
            Box::new(move |d: &Daemon| {
                let sock = d.natt_socket()?;
                let f = EspForwarder::new(&tun, &[], sock, log)?;
                Ok(Box::new(f) as Box<dyn SaSink>)
            })
        }
        None => {
            let log = log.clone();
            Box::new(move |_: &Daemon| Ok(Box::new(LogSink(log)) as Box<dyn SaSink>))
        }
    };
    logln!(log, "serve: IKE on {listen}, management API on {}", mgmt.listen);
    ipsec_control::serve::serve(mgmt, o, sink, log)
}

/// The default sink without a data plane: the daemon already logs every SA; this only says so.
struct LogSink(Logger);

impl SaSink for LogSink {
    fn install(&mut self, conn: &str, sa: ipsec_ike::ike_sa::ChildSa) {
        logln!(
            self.0,
            "sink: conn {conn}: install {:08x}/{:08x} (no data plane attached)",
            sa.inbound_spi(),
            sa.outbound_spi()
        );
    }

    fn delete(&mut self, conn: &str, spi_in: u32, spi_out: u32) {
        logln!(self.0, "sink: conn {conn}: delete {spi_in:08x}/{spi_out:08x}");
    }

    fn update_endpoints(
        &mut self,
        conn: &str,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        _encap: Option<ipsec_ike::ike_sa::UdpEncap>,
    ) {
        logln!(self.0, "sink: conn {conn}: endpoints {local} <-> {remote}");
    }
}
