//! The engine's end of the engine ↔ control channel (protocol and contract: the `ipsec-channel`
//! crate): a thread serving the control process over the 0600 Unix socket.
//!
//! Pieces:
//! - [`state`]: the sans-IO core. [`ControlState`] applies requests to the ESP core's lock-free
//!   tables (the ones the workers read, changed while they run), keeps the registry of
//!   control-owned tunnels and SAs, reconciles `BeginSync`/`EndSync`, maps data-plane events to
//!   tunnel names, and reads counters. Unit-tested without sockets or AF_XDP.
//! - [`punt`]: IKE and NAT keepalives from the outside workers to this thread (copied, bounded
//!   lock-free queue, per-worker token bucket, dropped and counted while no control is
//!   connected).
//! - [`ike_tx`]: `SendIke` through kernel UDP sockets bound to (gateway address, IKE port).
//! - [`serve`]: the thread. An acceptor thread takes connections; each session has a reader
//!   thread that forwards decoded messages here, so this thread alone owns the state and writes
//!   to the socket (with a write timeout: a stuck control process cannot stall it for long). Per
//!   connection the engine sends `Hello` at once; the control side's `Hello` must come first and
//!   carry the same version, or the connection is closed. A new connection replaces the current
//!   session as soon as its `Hello` is valid (not before: a connection that never speaks, such as
//!   a second engine's liveness probe of the socket path, leaves the live session alone). Then
//!   every request gets exactly one reply, in order. While a session is up, queued
//!   events and punted IKE are sent (the loop wakes at least every [`TICK`]). Once a second the
//!   time limits of every SA are checked so idle SAs raise their events too.
//! - **Control loss**: nothing in the workers depends on a session. When it closes, IKE punting
//!   stops (counted as drops), events stay in the ESP core's bounded queue (the core defers,
//!   never loses, when it is full), and the next session starts with a fresh `Hello` that tells
//!   the control side how many SAs the engine still holds.

pub mod ike_tx;
pub mod punt;
pub mod state;

use std::io;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ipsec_channel::{Conn, ControlMsg, EngineMsg, PROTOCOL_VERSION};
use ipsec_esp::EventQueue;

pub use punt::{Punt, PuntShared};
pub use state::{ControlState, NoSteering, SaLists, Steering};

use crate::stats::WorkerStats;
use crate::xdp::{Prefix, XdpSteering};

/// Longest time between two looks at the event and punt queues.
pub const TICK: Duration = Duration::from_millis(5);
/// How long a write to the control process may block before the session is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Events and punted datagrams sent per loop iteration at most (requests are not starved).
const BATCH: usize = 1024;

/// The inside XDP program, as the [`Steering`] hook of [`ControlState`].
pub struct XdpProtected {
    steering: Arc<Mutex<Vec<(String, XdpSteering)>>>,
    index: usize,
}

impl XdpProtected {
    /// The program at `index` in `steering` (the engine keeps outside at 0, inside at 1).
    pub fn new(steering: Arc<Mutex<Vec<(String, XdpSteering)>>>, index: usize) -> Self {
        XdpProtected { steering, index }
    }

    fn with(&self, f: impl FnOnce(&mut XdpSteering) -> Result<(), String>) -> Result<(), String> {
        let mut g = self.steering.lock().map_err(|_| "steering lock poisoned".to_string())?;
        if g.is_empty() {
            // No XDP program (the AF_PACKET backend has its own hook, `afpacket::PacketProtected`).
            return Ok(());
        }
        let (_, s) = g.get_mut(self.index).ok_or("no inside XDP program")?;
        f(s)
    }
}

impl Steering for XdpProtected {
    fn add_protected(&mut self, net: IpNet) -> Result<(), String> {
        self.with(|s| s.add_protected(Prefix::new(net.network(), net.prefix_len()), 0).map_err(|e| e.to_string()))
    }
    fn remove_protected(&mut self, net: IpNet) -> Result<(), String> {
        self.with(|s| s.remove_protected(Prefix::new(net.network(), net.prefix_len())).map_err(|e| e.to_string()))
    }
}

/// Removes the socket file when dropped (the engine's exit, also on a start-up error).
pub struct SocketFile(pub std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the channel thread works with.
pub struct ChannelParts {
    pub listener: UnixListener,
    pub state: ControlState,
    pub events: Arc<EventQueue>,
    pub punt: Arc<PuntShared>,
    pub ike_tx: ike_tx::IkeTx,
    pub workers: Vec<Arc<WorkerStats>>,
    /// Random per engine start (see `EngineMsg::Hello::boot_id`).
    pub boot_id: u64,
}

/// A per-start random number (no RNG crate: the standard library's randomly keyed hasher, the
/// time and the pid are plenty for "did the engine restart").
pub fn boot_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

enum Input {
    Session(u64, Conn),
    Msg(u64, ControlMsg),
    Closed(u64, Option<String>),
}

struct Session {
    id: u64,
    conn: Conn,
    hello: bool,
}

/// Starts the acceptor and the channel thread; both end when `stop` is set.
pub fn serve(parts: ChannelParts, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<Input>();
    parts.listener.set_nonblocking(true)?;
    let listener = parts.listener.try_clone()?;
    let stop_a = stop.clone();
    std::thread::Builder::new().name("channel-accept".into()).spawn(move || accept_loop(listener, tx, stop_a))?;
    std::thread::Builder::new().name("channel".into()).spawn(move || channel_loop(parts, rx, stop))
}

fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Input>, stop: Arc<AtomicBool>) {
    let mut next = 1u64;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = next;
                next += 1;
                if stream.set_nonblocking(false).is_err() || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
                    continue;
                }
                let mut reader = Conn::new(stream);
                let Ok(writer) = reader.try_clone() else { continue };
                if tx.send(Input::Session(id, writer)).is_err() {
                    return;
                }
                let tx = tx.clone();
                let _ = std::thread::Builder::new().name(format!("channel-rx-{id}")).spawn(move || loop {
                    match reader.recv::<ControlMsg>() {
                        Ok(Some(m)) => {
                            if tx.send(Input::Msg(id, m)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = tx.send(Input::Closed(id, None));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Input::Closed(id, Some(e.to_string())));
                            return;
                        }
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn close(session: &mut Option<Session>, punt: &PuntShared, state: &mut ControlState, why: &str) {
    if let Some(s) = session.take() {
        let _ = s.conn.stream().shutdown(std::net::Shutdown::Both);
        punt.set_connected(false);
        if state.abandon_sync() {
            tracing::info!(session = s.id, "unfinished sync abandoned: nothing removed");
        }
        tracing::info!(
            session = s.id,
            control_sas = state.control_sas(),
            "control session closed ({why}); forwarding continues with the installed SAs"
        );
    }
}

/// Connections that have not said `Hello` yet, at most this many (the oldest is closed).
const MAX_PENDING: usize = 8;

fn channel_loop(mut p: ChannelParts, rx: mpsc::Receiver<Input>, stop: Arc<AtomicBool>) {
    let mut session: Option<Session> = None;
    // A new connection replaces the session only once its Hello is valid: a connection that
    // says nothing (e.g. `ipsec_channel::listen`'s liveness probe from a second engine started
    // on the same path) must not cut the live control process off.
    let mut pending: Vec<Session> = Vec::new();
    let mut last_poll = Instant::now();
    let mut last_publish = Instant::now();
    let mut stale_events = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let first = match rx.recv_timeout(TICK) {
            Ok(i) => Some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut inputs: Vec<Input> = first.into_iter().collect();
        while inputs.len() < BATCH {
            match rx.try_recv() {
                Ok(i) => inputs.push(i),
                Err(_) => break,
            }
        }
        for input in inputs {
            match input {
                Input::Session(id, conn) => {
                    let mut s = Session { id, conn, hello: false };
                    let hello = EngineMsg::Hello {
                        version: PROTOCOL_VERSION,
                        engine: format!("ipsec-engine {}", env!("CARGO_PKG_VERSION")),
                        boot_id: p.boot_id,
                        control_sas: p.state.control_sas(),
                    };
                    if s.conn.send(&hello).is_ok() {
                        if pending.len() >= MAX_PENDING {
                            let old = pending.remove(0);
                            let _ = old.conn.stream().shutdown(std::net::Shutdown::Both);
                        }
                        pending.push(s);
                    }
                }
                Input::Closed(id, why) => {
                    pending.retain(|s| s.id != id);
                    if session.as_ref().is_some_and(|s| s.id == id) {
                        close(
                            &mut session,
                            &p.punt,
                            &mut p.state,
                            why.as_deref().unwrap_or("closed by the control process"),
                        );
                    }
                }
                Input::Msg(id, m) => {
                    if let Some(k) = pending.iter().position(|s| s.id == id) {
                        let mut s = pending.remove(k);
                        match handle(&mut s, m, &mut p) {
                            Ok(()) => {
                                close(&mut session, &p.punt, &mut p.state, "replaced by a new connection");
                                p.punt.set_connected(true);
                                session = Some(s);
                            }
                            Err(why) => {
                                tracing::info!(session = s.id, "control connection refused: {why}");
                                let _ = s.conn.stream().shutdown(std::net::Shutdown::Both);
                            }
                        }
                        continue;
                    }
                    let Some(s) = session.as_mut().filter(|s| s.id == id) else { continue };
                    if let Err(why) = handle(s, m, &mut p) {
                        close(&mut session, &p.punt, &mut p.state, &why);
                    }
                }
            }
        }
        let now = Instant::now();
        if let Some(s) = session.as_mut().filter(|s| s.hello) {
            let mut failed = None;
            for _ in 0..BATCH {
                let Some(e) = p.events.pop() else { break };
                match p.state.event(e) {
                    Some(ev) => {
                        tracing::info!("event: {ev:?}");
                        if let Err(err) = s.conn.send(&EngineMsg::Event(ev)) {
                            // Back in the queue for the next session (there is room: it
                            // was just taken from there, unless workers filled it meanwhile).
                            p.events.try_push(e);
                            failed = Some(format!("write: {err}"));
                            break;
                        }
                    }
                    None => stale_events += 1,
                }
            }
            if failed.is_none() {
                for _ in 0..BATCH {
                    let Some(d) = p.punt.pop() else { break };
                    if let Err(err) = s.conn.send(&EngineMsg::IkeReceived(d)) {
                        failed = Some(format!("write: {err}"));
                        break;
                    }
                }
            }
            if let Some(why) = failed {
                close(&mut session, &p.punt, &mut p.state, &why);
            }
        }
        if now.duration_since(last_poll) >= Duration::from_secs(1) {
            last_poll = now;
            p.state.poll_lifetimes(&p.events, now);
            p.ike_tx.drain();
            if stale_events > 0 {
                tracing::debug!(stale_events, "events about SAs that are gone were dropped");
            }
        }
        if now.duration_since(last_publish) >= Duration::from_millis(250) {
            last_publish = now;
            p.state.publish();
        }
    }
    close(&mut session, &p.punt, &mut p.state, "engine stopping");
    for s in pending {
        let _ = s.conn.stream().shutdown(std::net::Shutdown::Both);
    }
}

/// One message of the current session; `Err` closes it.
fn handle(s: &mut Session, m: ControlMsg, p: &mut ChannelParts) -> Result<(), String> {
    match m {
        ControlMsg::Hello { version, client } => {
            if s.hello {
                return Err("second Hello".into());
            }
            if version != PROTOCOL_VERSION {
                return Err(format!("control speaks version {version}, the engine {PROTOCOL_VERSION}"));
            }
            s.hello = true;
            tracing::info!(session = s.id, %client, "control session up");
            Ok(())
        }
        _ if !s.hello => Err("first message is not Hello".into()),
        ControlMsg::Request { id, req } => {
            let what = request_name(&req);
            let result = p.state.apply(req, Instant::now(), &p.workers);
            match &result {
                Ok(_) => tracing::debug!(id, "{what}: done"),
                Err(e) => tracing::info!(id, "{what}: refused: {e}"),
            }
            s.conn.send(&EngineMsg::Reply { id, result }).map_err(|e| format!("write: {e}"))
        }
        ControlMsg::SendIke(d) => {
            if let Err(e) = p.ike_tx.send(&d) {
                tracing::info!("SendIke refused: {e}");
            }
            Ok(())
        }
    }
}

fn request_name(r: &ipsec_channel::Request) -> &'static str {
    use ipsec_channel::Request::*;
    match r {
        BeginSync { .. } => "BeginSync",
        EndSync { .. } => "EndSync",
        UpsertTunnel(_) => "UpsertTunnel",
        RemoveTunnel { .. } => "RemoveTunnel",
        AddSa(_) => "AddSa",
        DeleteSa { .. } => "DeleteSa",
        Counters { .. } => "Counters",
        Ping => "Ping",
    }
}
