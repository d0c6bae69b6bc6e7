//! AF_XDP I/O of one worker, on `xsk-rs` (libxdp): one UMEM shared by the worker's sockets (one
//! per (interface, queue) it serves), its frame pool, and burst receive / transmit.
//!
//! This is the only module of the engine with `unsafe` code: xsk-rs's ring and frame accessors are
//! `unsafe fn`s whose contract is about frame ownership (a frame must be in exactly one place: the
//! kernel's fill or tx ring, the worker's hands, or the free pool; and a descriptor must belong to
//! the UMEM it is used with). [`XskIo`] upholds it by construction: descriptors never leave this
//! module; the worker sees frames only as `&mut [u8]` for the duration of a closure, and hands
//! them back with a per-packet [`Disposition`].
//!
//! Contract:
//! - One UMEM per worker, shared by all its sockets (XDP_SHARED_UMEM between devices: each
//!   (interface, queue) gets its own fill and completion ring). A frame received on one socket is
//!   transmitted on another without a copy between UMEMs.
//! - Every frame starts at the data segment xsk-rs gives (the kernel's rx address). xsk-rs does not
//!   let a descriptor's address move, so a packet that grows or shrinks at the front (ESP encap /
//!   decap) is moved back to the segment's start with one `copy_within` before transmission (see
//!   the engine's README: a patched descriptor API or own rings would remove it).
//! - No allocation per packet; rings are driven in bursts of up to [`BURST`]; the kernel is woken
//!   (sendto / poll) only when the ring's need_wakeup flag asks for it, at most once per burst.
//! - Zero-copy is requested only when asked for; a refusal is an error naming the interface.

#![allow(unsafe_code)]

use std::fmt;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::io::FrameIo;
pub use crate::io::{Disposition, IoCounters, BURST};

/// Frame size of the UMEM (one page: room for a 1500-byte MTU frame plus ESP growth).
pub const FRAME_SIZE: u32 = 4096;

/// How the sockets are bound.
#[derive(Debug, Clone, Copy, Default)]
pub struct XskOptions {
    /// Ask for zero-copy (fails where the driver refuses, e.g. veth); default: copy mode.
    pub zero_copy: bool,
    /// Set SO_PREFER_BUSY_POLL / SO_BUSY_POLL on the sockets.
    pub busy_poll: bool,
    /// Frames in the worker's UMEM.
    pub frames: u32,
    /// Ring sizes (fill, completion, rx, tx); a power of two.
    pub ring_size: u32,
}

/// Errors opening the sockets.
#[derive(Debug)]
pub struct XskError(pub String);

impl fmt::Display for XskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XskError {}

struct Port {
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames handed to the tx ring and not yet completed.
    tx_outstanding: u32,
}

/// A worker's AF_XDP sockets and frames.
pub struct XskIo {
    umem: Umem,
    ports: Vec<Port>,
    names: Vec<String>,
    /// Frames owned by userspace and not in use.
    free: Vec<FrameDesc>,
    /// Scratch for ring transfers (no allocation per burst).
    scratch: Vec<FrameDesc>,
    tx_batch: Vec<Vec<FrameDesc>>,
    /// Capacity of a frame's data segment.
    capacity: usize,
    ring_size: u32,
    pub counters: IoCounters,
}

/// A received burst: frames in userspace's hands until [`XskIo::dispatch`].
pub struct RxBurst {
    descs: [FrameDesc; BURST],
    n: usize,
    port: usize,
}

impl Default for RxBurst {
    fn default() -> Self {
        RxBurst { descs: [FrameDesc::default(); BURST], n: 0, port: 0 }
    }
}

impl RxBurst {
    /// Frames in the burst.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The port the burst came from.
    pub fn port(&self) -> usize {
        self.port
    }
}

fn queue_size(n: u32) -> Result<QueueSize, XskError> {
    QueueSize::new(n).map_err(|e| XskError(format!("ring size {n}: {e}")))
}

impl XskIo {
    /// Opens one socket per `(interface, queue)` in `ports`, all on one new UMEM.
    pub fn open(ports: &[(String, u32)], opts: &XskOptions) -> Result<XskIo, XskError> {
        let frames = NonZeroU32::new(opts.frames.max(2 * opts.ring_size * ports.len() as u32 + 2 * BURST as u32))
            .ok_or_else(|| XskError("no frames".into()))?;
        let ring = queue_size(opts.ring_size)?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| XskError(format!("frame size: {e}")))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| XskError(format!("UMEM config: {e}")))?;
        let capacity = umem_config.mtu() as usize;
        let (umem, descs) = Umem::new(umem_config, frames, false).map_err(|e| XskError(format!("UMEM: {e}")))?;
        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        bind |= if opts.zero_copy { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
        let socket_config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            // The engine's own XDP program (ebpf/) steers to the sockets; libxdp must not load its
            // default one.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        let mut out = Vec::new();
        let mut names = Vec::new();
        for (ifname, queue) in ports {
            let iface: Interface =
                ifname.parse().map_err(|_| XskError(format!("interface name {ifname:?} is not valid")))?;
            // SAFETY: each (interface, queue) pair is bound once per UMEM (the caller's list has
            // distinct pairs, checked below), and INHIBIT_PROG_LOAD is set, as xsk-rs requires for
            // shared UMEMs.
            let created = unsafe { Socket::new(socket_config, &umem, &iface, *queue) };
            let (tx, rx, fq_cq) = created.map_err(|e| {
                let mode = if opts.zero_copy { "zero-copy" } else { "copy mode" };
                let hint = if opts.zero_copy {
                    " (the driver refuses zero-copy AF_XDP: veth and most virtual NICs do; run without --zero-copy)"
                } else {
                    ""
                };
                let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
                XskError(format!("AF_XDP socket on {ifname} queue {queue} ({mode}): {e}{cause}{hint}"))
            })?;
            let (fill, comp) = fq_cq.ok_or_else(|| XskError(format!("{ifname} queue {queue} is listed twice")))?;
            if opts.busy_poll {
                set_busy_poll(rx.fd().as_raw_fd(), ifname);
            }
            out.push(Port { tx, rx, fill, comp, tx_outstanding: 0 });
            names.push(format!("{ifname}/{queue}"));
        }
        let n_ports = out.len();
        let mut io = XskIo {
            umem,
            ports: out,
            names,
            free: descs,
            scratch: vec![FrameDesc::default(); opts.ring_size as usize],
            tx_batch: (0..n_ports).map(|_| Vec::with_capacity(BURST)).collect(),
            capacity,
            ring_size: opts.ring_size,
            counters: IoCounters::default(),
        };
        for p in 0..n_ports {
            io.refill(p);
        }
        Ok(io)
    }

    /// The socket file descriptor of `port` (for the XDP program's XSKS map).
    pub fn fd(&self, port: usize) -> RawFd {
        self.ports[port].rx.fd().as_raw_fd()
    }

    /// `interface/queue` of `port`.
    pub fn name(&self, port: usize) -> &str {
        &self.names[port]
    }

    /// Bytes a frame's data segment holds.
    pub fn frame_capacity(&self) -> usize {
        self.capacity
    }

    /// Returns completed tx frames to the pool and tops the fill rings up.
    pub fn reclaim(&mut self) {
        for p in 0..self.ports.len() {
            let port = &mut self.ports[p];
            if port.tx_outstanding > 0 {
                // SAFETY: descriptors read from the completion ring are frames of this UMEM that
                // the kernel finished transmitting; they go to the pool and nowhere else.
                let n = unsafe { port.comp.consume(&mut self.scratch) };
                port.tx_outstanding -= n as u32;
                self.free.extend_from_slice(&self.scratch[..n]);
                // Copy mode transmits only on a syscall; if the kernel still holds frames and the
                // ring asks for it, kick it again.
                if port.tx_outstanding > 0 && port.tx.needs_wakeup() {
                    let _ = port.tx.wakeup();
                    self.counters.wakeups += 1;
                }
            }
            self.refill(p);
        }
    }

    fn refill(&mut self, p: usize) {
        let port = &mut self.ports[p];
        let want = port.fill.nb_free(self.ring_size) as usize;
        let n = want.min(self.free.len());
        if n == 0 {
            if want > 0 {
                self.counters.pool_empty += 1;
            }
            return;
        }
        let start = self.free.len() - n;
        // SAFETY: the frames come from the pool (owned by userspace, in no ring) and belong to
        // this UMEM; `n` is at most the ring's free space, so all of them are handed over.
        let done = unsafe { port.fill.produce(&self.free[start..]) };
        if done == n {
            self.free.truncate(start);
        }
    }

    /// Receives up to [`BURST`] frames from `port` into `burst` (which must be empty).
    pub fn recv(&mut self, port: usize, burst: &mut RxBurst) -> usize {
        debug_assert!(burst.is_empty(), "burst not dispatched");
        let p = &mut self.ports[port];
        // SAFETY: descriptors read from the rx ring are frames of this UMEM now owned by
        // userspace; they stay in `burst` until `dispatch`.
        let n = unsafe { p.rx.consume(&mut burst.descs) };
        burst.n = n;
        burst.port = port;
        if n == 0 && p.fill.needs_wakeup() {
            // Let the driver know the fill ring has frames (needed after it ran dry).
            let _ = p.fill.wakeup(p.rx.fd_mut(), 0);
            self.counters.wakeups += 1;
        }
        n
    }

    /// Takes up to `n` (at most [`BURST`]) frames from the free pool into `burst` (which must be
    /// empty), as if received on `port`: for packets the worker makes itself (fragments). Their
    /// contents and lengths are unspecified until the worker writes them (through
    /// [`with_frames`](Self::with_frames), setting each frame's length); [`dispatch`](Self::dispatch)
    /// sends or recycles them like received frames. Returns how many frames were taken.
    pub fn alloc(&mut self, port: usize, n: usize, burst: &mut RxBurst) -> usize {
        debug_assert!(burst.is_empty(), "burst not dispatched");
        let n = n.min(BURST).min(self.free.len());
        let start = self.free.len() - n;
        // Frames from the pool are owned by userspace and in no ring: moving them into the burst
        // keeps each frame in exactly one place.
        burst.descs[..n].copy_from_slice(&self.free[start..]);
        self.free.truncate(start);
        burst.n = n;
        burst.port = port;
        n
    }

    /// Calls `f` with the burst's frames: `(full data segment, received length)` each. The packet
    /// starts at offset 0; `f` returns what to do with each frame through `out`.
    pub fn with_frames<R>(&mut self, burst: &mut RxBurst, f: impl FnOnce(&mut [(&mut [u8], usize)]) -> R) -> R {
        let umem = &self.umem;
        let mut datas: arrayvec::ArrayVec<_, BURST> = arrayvec::ArrayVec::new();
        for d in burst.descs[..burst.n].iter_mut() {
            let len = d.lengths().data();
            // SAFETY: `d` came from this UMEM's rx ring and is owned by userspace until dispatch;
            // each descriptor is a distinct frame, so the 64 mutable views do not overlap, and
            // the kernel does not touch a frame that is in no ring.
            let mut data = unsafe { umem.data_mut(d) };
            let cap = data.cursor().buf_len();
            data.cursor().set_pos(cap);
            datas.push((data, len));
        }
        let mut frames: arrayvec::ArrayVec<(&mut [u8], usize), BURST> = arrayvec::ArrayVec::new();
        for (data, len) in datas.iter_mut() {
            frames.push((data.contents_mut(), *len));
        }
        f(&mut frames)
    }

    /// Sends or recycles every frame of the burst as `dispositions` says (one per frame), then
    /// wakes the tx side of each port that got frames, if it asks for it.
    pub fn dispatch(&mut self, burst: &mut RxBurst, dispositions: &[Disposition]) {
        debug_assert_eq!(dispositions.len(), burst.n);
        for b in &mut self.tx_batch {
            b.clear();
        }
        for (d, disp) in burst.descs[..burst.n].iter_mut().zip(dispositions) {
            match *disp {
                Disposition::Send { port, len } if port < self.ports.len() && len <= self.capacity => {
                    // SAFETY: as in `with_frames`: `d` is a frame of this UMEM in userspace's hands.
                    let mut data = unsafe { self.umem.data_mut(d) };
                    data.cursor().set_pos(len);
                    self.tx_batch[port].push(*d);
                }
                _ => self.free.push(*d),
            }
        }
        burst.n = 0;
        for p in 0..self.ports.len() {
            let batch = &self.tx_batch[p];
            if batch.is_empty() {
                continue;
            }
            let port = &mut self.ports[p];
            let room = port.tx.nb_free(batch.len() as u32) as usize;
            let n = room.min(batch.len());
            // SAFETY: the frames are this UMEM's, in userspace's hands (from the burst), and each
            // appears once; `n` fits the ring, so all `n` are handed over.
            let sent = if n > 0 { unsafe { port.tx.produce(&batch[..n]) } } else { 0 };
            port.tx_outstanding += sent as u32;
            self.counters.tx_ring_full += (batch.len() - sent) as u64;
            self.free.extend_from_slice(&batch[sent..]);
            if sent > 0 && port.tx.needs_wakeup() {
                let _ = port.tx.wakeup();
                self.counters.wakeups += 1;
            }
        }
    }

    /// Waits up to `timeout_ms` for any rx ring to have packets (idle back-off).
    pub fn wait(&self, timeout_ms: i32) {
        let mut fds: arrayvec::ArrayVec<libc::pollfd, 8> = arrayvec::ArrayVec::new();
        for p in self.ports.iter().take(8) {
            fds.push(libc::pollfd { fd: p.rx.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call's duration.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
        }
    }

    /// Frames in the free pool (for tests and stats).
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }
}

impl FrameIo for XskIo {
    type Burst = RxBurst;

    fn recv(&mut self, port: usize, burst: &mut RxBurst) -> usize {
        XskIo::recv(self, port, burst)
    }

    fn alloc(&mut self, port: usize, n: usize, burst: &mut RxBurst) -> usize {
        XskIo::alloc(self, port, n, burst)
    }

    fn with_frames<R>(&mut self, burst: &mut RxBurst, f: impl FnOnce(&mut [(&mut [u8], usize)]) -> R) -> R {
        XskIo::with_frames(self, burst, f)
    }

    fn dispatch(&mut self, burst: &mut RxBurst, dispositions: &[Disposition]) {
        XskIo::dispatch(self, burst, dispositions)
    }

    fn wait(&self, timeout_ms: i32) {
        XskIo::wait(self, timeout_ms)
    }

    fn reclaim(&mut self) {
        XskIo::reclaim(self)
    }

    fn counters(&self) -> &IoCounters {
        &self.counters
    }

    fn name(&self, port: usize) -> &str {
        XskIo::name(self, port)
    }

    fn free_frames(&self) -> usize {
        XskIo::free_frames(self)
    }
}

/// Best-effort busy-poll socket options (kernel ≥ 5.11); failures are logged, not fatal.
fn set_busy_poll(fd: RawFd, ifname: &str) {
    const SO_PREFER_BUSY_POLL: libc::c_int = 69;
    const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
    for (opt, value, name) in [
        (SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
        (libc::SO_BUSY_POLL, 20, "SO_BUSY_POLL"),
        (SO_BUSY_POLL_BUDGET, BURST as libc::c_int, "SO_BUSY_POLL_BUDGET"),
    ] {
        // SAFETY: `value` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::warn!(interface = ifname, "{name}: {}", std::io::Error::last_os_error());
        }
    }
}
