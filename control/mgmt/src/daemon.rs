//! The daemon: state directory (0700), database, token file (0600), the HTTP server, hourly log
//! pruning. Used by the `ipsec-mgmtd` binary; `ipsec-control` can call [`serve_with`] with its own
//! [`Effects`] to plug the IKE side in.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::Service;
use crate::effects::{ChannelEffects, ConnectionChange, Effects, StatusBoard};
use crate::http::{self, Auth};
use crate::store::Store;

pub const USAGE: &str =
    "usage: ipsec-mgmtd [--listen ADDR:PORT (default 127.0.0.1:8470)] [--state-dir DIR (default /var/lib/ipsec-mgmt)]
                   [--quota N (VPN connections per VPN gateway, default 10)] [--token-file PATH (default DIR/api-token)]
                   [--readonly-token-file PATH (optional; Describe*/Download* only)]";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ipsec-mgmt";
pub const DEFAULT_QUOTA: u64 = 10;

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub quota: u64,
    pub token_file: Option<PathBuf>,
    pub readonly_token_file: Option<PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            listen: DEFAULT_LISTEN.parse().expect("constant"),
            state_dir: DEFAULT_STATE_DIR.into(),
            quota: DEFAULT_QUOTA,
            token_file: None,
            readonly_token_file: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            if flag == "-h" || flag == "--help" {
                return Err("help".into());
            }
            let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
            match flag {
                "--listen" => o.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
                "--state-dir" => o.state_dir = value()?.into(),
                "--quota" => o.quota = value()?.parse().map_err(|e| format!("--quota: {e}"))?,
                "--token-file" => o.token_file = Some(value()?.into()),
                "--readonly-token-file" => o.readonly_token_file = Some(value()?.into()),
                _ => return Err(format!("unknown argument {a:?}")),
            }
        }
        Ok(o)
    }

    pub fn token_path(&self) -> PathBuf {
        self.token_file.clone().unwrap_or_else(|| self.state_dir.join("api-token"))
    }
}

/// Runs the daemon with a placeholder IKE side that logs each change (no PSK) to stderr.
pub fn run(opts: Options) -> Result<(), String> {
    let statuses = Arc::new(StatusBoard::default());
    let (effects, rx) = ChannelEffects::new(statuses);
    std::thread::spawn(move || {
        for change in rx {
            match change {
                ConnectionChange::Created(c) => {
                    eprintln!("effect: created {} (IKE side not attached)", c.vpn_connection_id)
                }
                ConnectionChange::Modified(c) => {
                    eprintln!("effect: modified {} (IKE side not attached)", c.vpn_connection_id)
                }
                ConnectionChange::Deleted { vpn_connection_id, .. } => {
                    eprintln!("effect: deleted {vpn_connection_id} (IKE side not attached)")
                }
            }
        }
    });
    serve_with(opts, effects)
}

/// Opens the state, then serves until SIGINT/SIGTERM.
pub fn serve_with(opts: Options, effects: Arc<dyn Effects>) -> Result<(), String> {
    serve_with_hook(opts, effects, |_| Ok(()))
}

/// [`serve_with`], calling `hook` with the service once the state is open and before the API
/// serves (`ipsec-control serve` starts its IKE thread there, which replays every connection with
/// [`Service::vpn_connections`] and appends logs with [`Service::record_log`]).
pub fn serve_with_hook(
    opts: Options,
    effects: Arc<dyn Effects>,
    hook: impl FnOnce(Arc<Service>) -> Result<(), String>,
) -> Result<(), String> {
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| format!("{}: {e}", opts.state_dir.display()))?;
    std::fs::set_permissions(&opts.state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", opts.state_dir.display()))?;
    let store = Store::open(&opts.state_dir.join("mgmt.db")).map_err(|e| e.message)?;
    let token_path = opts.token_path();
    let admin = http::load_or_create_token(&token_path).map_err(|e| format!("{}: {e}", token_path.display()))?;
    let read_only = opts
        .readonly_token_file
        .as_ref()
        .map(|p| http::load_or_create_token(p).map_err(|e| format!("{}: {e}", p.display())))
        .transpose()?;
    let service = Arc::new(Service::new(store, effects, opts.quota));
    service.prune_logs().map_err(|e| e.message)?;
    hook(service.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen).await.map_err(|e| format!("{}: {e}", opts.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on {addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let pruner = service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let s = pruner.clone();
                let _ = tokio::task::spawn_blocking(move || s.prune_logs()).await;
            }
        });
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        http::serve(listener, service, Auth { admin, read_only }, shutdown).await.map_err(|e| e.to_string())
    })
}
