//! The portable packet I/O of one worker: AF_PACKET sockets with a TPACKET_V3 receive ring, for
//! machines where AF_XDP cannot be used (old kernel, no CAP_BPF, a driver or hypervisor without
//! XDP). The same worker loop runs on it through [`FrameIo`].
//!
//! Contract:
//! - One socket per port (an (interface, queue) pair the worker serves). With several workers per
//!   interface, the sockets of one interface join one `PACKET_FANOUT_HASH` group (flows are spread
//!   by the kernel's flow hash; `queue` only names the worker's share).
//! - Steering without XDP: a classic BPF socket filter ([`steering_filter`]) lets a socket see only
//!   what the XDP program would steer: outside, ESP / UDP 4500 / UDP 500 to the gateway's
//!   addresses; inside, IP packets to the protected remote subnets. A packet socket never reads
//!   what it (or its fanout group) sent; `PACKET_IGNORE_OUTGOING` (Linux ≥ 4.20) also keeps out
//!   what the kernel and other programs transmit on the interface.
//! - With the control channel, the inside sockets' filters follow the tunnels it installs
//!   ([`PacketProtected`], the channel's steering hook): a new filter is attached to every inside
//!   socket (`SO_ATTACH_FILTER` replaces the old one atomically) whenever a protected subnet comes
//!   or goes. Beyond what one classic BPF program holds ([`MAX_FILTER_INSNS`]) the inside filter
//!   passes every IP packet and the worker drops what no tunnel claims.
//! - AF_PACKET gets a *copy*: the kernel still sees every packet. The operator must stop it from
//!   forwarding or answering what the engine handles (forwarding off, ESP / UDP 4500 input dropped
//!   by a firewall rule; see `engine/README.md`). [`kernel_forwarding`] reports the forwarding
//!   sysctls so the engine can say what to change.
//! - Receive: the kernel fills blocks of the mmap'ed ring (a block is retired to userspace when
//!   full or after [`RETIRE_MS`]); [`AfPacketIo::recv`] walks the packets of retired blocks, copies
//!   each into one of the worker's own frames (one copy per packet: the ESP core needs headroom
//!   in front, which the ring cannot give), and hands a block back as soon as its last packet is
//!   copied. A burst may stop in the middle of a block; the next one resumes there.
//! - Transmit: `sendmmsg` of the burst's packets per port, non-blocking, one syscall per burst and
//!   port. Chosen over a TPACKET TX ring because the kernel copies the data into an skb either
//!   way, the frame is free again as soon as the call returns (no completion tracking, no second
//!   shared ring whose status words the worker would have to police), and one syscall per burst
//!   is what the TX ring needs too (`send` to kick it). What the socket refuses (send buffer
//!   full) is counted as `tx_ring_full`.
//! - No allocation per packet: frames are boxed once at open time and move between the free pool
//!   and bursts by pointer.
//!
//! This module and [`crate::afxdp`] are the only ones with `unsafe` code: socket options, the
//! ring's `mmap`, reading packets the kernel wrote into the ring, and `sendmmsg` / `poll`. Every
//! block carries a `SAFETY:` comment. No crate covers TPACKET_V3 receive + fanout + socket filters
//! without pulling in an async runtime or an unmaintained stack, and the syscalls are few.

#![allow(unsafe_code)]

use std::fmt;
use std::mem::{offset_of, size_of};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use arrayvec::ArrayVec;

use crate::io::{Disposition, FrameIo, IoCounters, BURST};
use crate::xdp::{Prefix, Role, SteeringConfig};

/// Size of a worker frame (as in the AF_XDP backend: a 1500-byte MTU frame plus ESP growth).
pub const FRAME_SIZE: usize = 4096;
/// Size of one ring block (a multiple of the page size).
pub const BLOCK_SIZE: u32 = 1 << 17;
/// A block that has packets is retired to userspace after this many milliseconds even when not
/// full (the latency bound at low rates; the kernel rounds it to jiffies).
pub const RETIRE_MS: u32 = 1;
/// Frame size declared to the kernel (TPACKET_V3 packs packets of any size into blocks; this
/// only sets the nominal frame count).
const RING_FRAME: u32 = 2048;

/// How the sockets are opened.
#[derive(Debug, Clone, Copy)]
pub struct AfPacketOptions {
    /// Frames in the worker's pool (at least `2 * BURST`).
    pub frames: u32,
    /// Blocks in each receive ring ([`BLOCK_SIZE`] bytes each).
    pub ring_blocks: u32,
}

impl AfPacketOptions {
    /// Ring blocks worth about `ring_size` full-size packets (the AF_XDP ring size option), and a
    /// pool of `frames` frames (bounded: a burst's frames go back to the pool right after it).
    pub fn sized(frames: u32, ring_size: u32) -> Self {
        let blocks = (ring_size as u64 * RING_FRAME as u64 / BLOCK_SIZE as u64).max(4) as u32;
        AfPacketOptions { frames: frames.clamp(2 * BURST as u32, 1024), ring_blocks: blocks }
    }
}

/// One port to open: an interface, the worker's queue number on it (names the fanout share) and
/// what its filter lets through.
#[derive(Debug, Clone, Copy)]
pub struct PortSpec<'a> {
    pub interface: &'a str,
    pub queue: u32,
    pub steering: &'a SteeringConfig,
    /// Join the interface's fanout group (more than one worker on it).
    pub fanout: bool,
}

/// Fanout group ids handed out by the kernel, per interface index: the first socket of an
/// interface asks for a unique id, the others join it. One per engine process.
#[derive(Debug, Default)]
pub struct FanoutGroups(Vec<(u32, u16)>);

/// Errors opening the sockets.
#[derive(Debug)]
pub struct AfPacketError(pub String);

impl fmt::Display for AfPacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AfPacketError {}

/// An mmap'ed TPACKET_V3 receive ring and where the worker is in it.
struct RxRing {
    base: NonNull<u8>,
    len: usize,
    block_size: usize,
    blocks: usize,
    /// The block the worker reads next (or is reading).
    cur: usize,
    /// Packets left in the current block (0: the block is not open).
    left: u32,
    /// Offset of the next packet in the current block.
    offset: usize,
}

// SAFETY: the ring is plain shared memory owned by this struct (unmapped on drop); the worker
// thread that owns the struct is the only userspace reader, whichever thread that is.
unsafe impl Send for RxRing {}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `open_port`, unmapped once here.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

impl RxRing {
    fn block(&self, b: usize) -> *mut u8 {
        // SAFETY: `b < blocks`, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(b * self.block_size) }
    }

    /// The block's status word, shared with the kernel.
    fn status(&self, b: usize) -> &AtomicU32 {
        let off = offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
        // SAFETY: the word lies inside block `b` of the live mapping, is 4-byte aligned (blocks
        // are page aligned, the offset is 8) and is only ever accessed atomically by userspace.
        unsafe { AtomicU32::from_ptr(self.block(b).add(off).cast()) }
    }

    /// Hands the current block back to the kernel and moves on.
    fn release(&mut self) {
        self.status(self.cur).store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.cur = (self.cur + 1) % self.blocks;
        self.left = 0;
    }
}

/// One socket and its ring (fields drop in order: the ring is unmapped before the socket closes).
struct Port {
    ring: RxRing,
    fd: OwnedFd,
}

/// A received burst: the worker's own frames, filled by [`AfPacketIo::recv`] or taken by
/// [`AfPacketIo::alloc`].
#[derive(Default)]
pub struct PacketBurst {
    frames: ArrayVec<Box<[u8]>, BURST>,
    lens: ArrayVec<usize, BURST>,
    port: usize,
}

impl PacketBurst {
    /// The port the burst came from.
    pub fn port(&self) -> usize {
        self.port
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// A worker's AF_PACKET sockets and frames.
pub struct AfPacketIo {
    ports: Vec<Port>,
    names: Vec<String>,
    free: Vec<Box<[u8]>>,
    counters: IoCounters,
}

fn os_err(what: impl fmt::Display) -> AfPacketError {
    AfPacketError(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` is a live `T` and the length passed is its size; the kernel only reads it.
    let rc = unsafe { libc::setsockopt(fd, level, opt, (value as *const T).cast(), size_of::<T>() as libc::socklen_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn ifindex(name: &str) -> Result<u32, AfPacketError> {
    let c = std::ffi::CString::new(name).map_err(|_| AfPacketError(format!("interface name {name:?} is not valid")))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(os_err(format_args!("interface {name}")));
    }
    Ok(idx)
}

fn open_port(spec: &PortSpec<'_>, opts: &AfPacketOptions, groups: &mut FanoutGroups) -> Result<Port, AfPacketError> {
    let name = spec.interface;
    let idx = ifindex(name)?;
    // Protocol 0: the socket receives nothing until bound, so no packet slips in before the
    // filter and the ring are in place.
    // SAFETY: plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os_err(format_args!("AF_PACKET socket for {name} (needs CAP_NET_RAW)")));
    }
    // SAFETY: `raw` is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let s = fd.as_raw_fd();
    let ctx = |what: &'static str| move |e: std::io::Error| AfPacketError(format!("{name}: {what}: {e}"));

    attach_filter(s, spec.steering).map_err(ctx("SO_ATTACH_FILTER"))?;
    let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
    setsockopt(s, libc::SOL_PACKET, libc::PACKET_VERSION, &version).map_err(ctx("TPACKET_V3"))?;
    let one: libc::c_int = 1;
    setsockopt(s, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
        .map_err(ctx("PACKET_IGNORE_OUTGOING (Linux >= 4.20)"))?;
    // Room for a burst's worth of large packets in the send queue (capped by net.core.wmem_max).
    let sndbuf: libc::c_int = 4 << 20;
    let _ = setsockopt(s, libc::SOL_SOCKET, libc::SO_SNDBUF, &sndbuf);

    let req = libc::tpacket_req3 {
        tp_block_size: BLOCK_SIZE,
        tp_block_nr: opts.ring_blocks,
        tp_frame_size: RING_FRAME,
        tp_frame_nr: BLOCK_SIZE / RING_FRAME * opts.ring_blocks,
        tp_retire_blk_tov: RETIRE_MS,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    setsockopt(s, libc::SOL_PACKET, libc::PACKET_RX_RING, &req).map_err(ctx("PACKET_RX_RING"))?;
    let len = BLOCK_SIZE as usize * opts.ring_blocks as usize;
    // SAFETY: maps the ring the kernel just allocated for this socket; the length is the ring's.
    let map =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, s, 0) };
    if map == libc::MAP_FAILED {
        return Err(os_err(format_args!("{name}: mmap of the receive ring")));
    }
    let ring = RxRing {
        base: NonNull::new(map.cast()).ok_or_else(|| AfPacketError("mmap returned null".into()))?,
        len,
        block_size: BLOCK_SIZE as usize,
        blocks: opts.ring_blocks as usize,
        cur: 0,
        left: 0,
        offset: 0,
    };

    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = idx as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(s, (&addr as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(os_err(format_args!("binding the AF_PACKET socket to {name}")));
    }

    if spec.fanout {
        let join = |id: u16, flags: libc::c_uint| -> std::io::Result<()> {
            let arg: libc::c_int = (id as u32 | ((libc::PACKET_FANOUT_HASH | flags) << 16)) as libc::c_int;
            setsockopt(s, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)
        };
        match groups.0.iter().find(|(i, _)| *i == idx) {
            Some(&(_, id)) => join(id, 0).map_err(ctx("joining the fanout group"))?,
            None => {
                join(0, libc::PACKET_FANOUT_FLAG_UNIQUEID).map_err(ctx("PACKET_FANOUT (unique id)"))?;
                let mut val: libc::c_int = 0;
                let mut vlen = size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: `val`/`vlen` are live and describe a c_int buffer.
                let rc = unsafe {
                    libc::getsockopt(
                        s,
                        libc::SOL_PACKET,
                        libc::PACKET_FANOUT,
                        (&mut val as *mut libc::c_int).cast(),
                        &mut vlen,
                    )
                };
                if rc != 0 {
                    return Err(os_err(format_args!("{name}: reading the fanout group id")));
                }
                groups.0.push((idx, (val as u32 & 0xffff) as u16));
            }
        }
    }
    Ok(Port { ring, fd })
}

impl AfPacketIo {
    /// Opens one socket per entry of `ports` (bound, filtered, with its ring) and the frame pool.
    /// Fails with the step and the kernel's error (no CAP_NET_RAW, unknown interface, kernel
    /// without TPACKET_V3 or PACKET_IGNORE_OUTGOING).
    pub fn open(
        ports: &[PortSpec<'_>],
        opts: &AfPacketOptions,
        groups: &mut FanoutGroups,
    ) -> Result<AfPacketIo, AfPacketError> {
        let mut out = Vec::with_capacity(ports.len());
        let mut names = Vec::with_capacity(ports.len());
        for spec in ports {
            out.push(open_port(spec, opts, groups)?);
            names.push(format!("{}/{}", spec.interface, spec.queue));
        }
        let frames = opts.frames.max(2 * BURST as u32) as usize;
        let free = (0..frames).map(|_| vec![0u8; FRAME_SIZE].into_boxed_slice()).collect();
        Ok(AfPacketIo { ports: out, names, free, counters: IoCounters::default() })
    }

    /// The socket of `port`.
    pub fn fd(&self, port: usize) -> RawFd {
        self.ports[port].fd.as_raw_fd()
    }
}

impl FrameIo for AfPacketIo {
    type Burst = PacketBurst;

    fn recv(&mut self, port: usize, burst: &mut PacketBurst) -> usize {
        debug_assert!(burst.is_empty(), "burst not dispatched");
        burst.port = port;
        let ring = &mut self.ports[port].ring;
        let hdr_len = size_of::<libc::tpacket3_hdr>();
        while !burst.frames.is_full() {
            if ring.left == 0 {
                if ring.status(ring.cur).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    break;
                }
                let hdr_off = offset_of!(libc::tpacket_block_desc, hdr);
                // SAFETY: the block is retired to userspace (status read with Acquire above), so
                // the kernel no longer writes it; the header lies at the block's start.
                let bh: libc::tpacket_hdr_v1 =
                    unsafe { std::ptr::read(ring.block(ring.cur).add(hdr_off).cast::<libc::tpacket_hdr_v1>()) };
                if bh.num_pkts == 0 || bh.offset_to_first_pkt as usize >= ring.block_size {
                    ring.release();
                    continue;
                }
                ring.left = bh.num_pkts;
                ring.offset = bh.offset_to_first_pkt as usize;
            }
            if ring.offset + hdr_len > ring.block_size {
                // Inconsistent block: give it back rather than read past it.
                ring.release();
                continue;
            }
            // SAFETY: the block is ours (see above) and the header is inside it (checked).
            let ph: libc::tpacket3_hdr =
                unsafe { std::ptr::read_unaligned(ring.block(ring.cur).add(ring.offset).cast::<libc::tpacket3_hdr>()) };
            let start = ring.offset + ph.tp_mac as usize;
            let snap = ph.tp_snaplen as usize;
            if start + snap > ring.block_size {
                ring.release();
                continue;
            }
            if snap > FRAME_SIZE || snap < ph.tp_len as usize {
                self.counters.rx_oversize += 1;
            } else if let Some(mut frame) = self.free.pop() {
                // SAFETY: `start..start + snap` lies inside the block (checked), which the kernel
                // does not touch until released; `frame` is a distinct heap buffer of at least
                // `snap` bytes.
                unsafe { std::ptr::copy_nonoverlapping(ring.block(ring.cur).add(start), frame.as_mut_ptr(), snap) };
                burst.frames.push(frame);
                burst.lens.push(snap);
            } else {
                // No frame: leave the packet in the ring for the next round.
                self.counters.pool_empty += 1;
                break;
            }
            ring.left -= 1;
            if ring.left == 0 || ph.tp_next_offset == 0 {
                ring.release();
            } else {
                ring.offset += ph.tp_next_offset as usize;
            }
        }
        burst.frames.len()
    }

    fn alloc(&mut self, port: usize, n: usize, burst: &mut PacketBurst) -> usize {
        debug_assert!(burst.is_empty(), "burst not dispatched");
        burst.port = port;
        let n = n.min(BURST).min(self.free.len());
        for _ in 0..n {
            // The pool has at least `n` frames (checked above).
            if let Some(f) = self.free.pop() {
                burst.frames.push(f);
                burst.lens.push(0);
            }
        }
        n
    }

    fn with_frames<R>(&mut self, burst: &mut PacketBurst, f: impl FnOnce(&mut [(&mut [u8], usize)]) -> R) -> R {
        let mut frames: ArrayVec<(&mut [u8], usize), BURST> = ArrayVec::new();
        for (frame, len) in burst.frames.iter_mut().zip(burst.lens.iter()) {
            frames.push((&mut frame[..], *len));
        }
        f(&mut frames)
    }

    fn dispatch(&mut self, burst: &mut PacketBurst, dispositions: &[Disposition]) {
        debug_assert_eq!(dispositions.len(), burst.frames.len());
        for (p, port) in self.ports.iter().enumerate() {
            let mut iov: [libc::iovec; BURST] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BURST];
            let mut n = 0;
            for (frame, d) in burst.frames.iter_mut().zip(dispositions) {
                if let Disposition::Send { port: to, len } = *d {
                    if to == p && len <= frame.len() {
                        iov[n] = libc::iovec { iov_base: frame.as_mut_ptr().cast(), iov_len: len };
                        n += 1;
                    }
                }
            }
            if n == 0 {
                continue;
            }
            // SAFETY: mmsghdr is plain data; all-zero (no name, no control) is valid.
            let mut msgs: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
            for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
            }
            let mut sent = 0;
            while sent < n {
                // SAFETY: `msgs[sent..n]` are initialised headers whose iovecs point into frames
                // of this burst, alive and unaliased for the call; the socket is bound, so no
                // destination address is needed.
                let rc = unsafe {
                    libc::sendmmsg(
                        port.fd.as_raw_fd(),
                        msgs[sent..].as_mut_ptr(),
                        (n - sent) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                self.counters.wakeups += 1;
                if rc > 0 {
                    sent += rc as usize;
                } else if rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                } else {
                    break; // EAGAIN / ENOBUFS / link down: the rest is dropped
                }
            }
            self.counters.tx_ring_full += (n - sent) as u64;
        }
        self.free.extend(burst.frames.drain(..));
        burst.lens.clear();
    }

    fn wait(&self, timeout_ms: i32) {
        let mut fds: ArrayVec<libc::pollfd, 8> = ArrayVec::new();
        for p in self.ports.iter().take(8) {
            fds.push(libc::pollfd { fd: p.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call's duration.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
        }
    }

    fn reclaim(&mut self) {}

    fn counters(&self) -> &IoCounters {
        &self.counters
    }

    fn name(&self, port: usize) -> &str {
        &self.names[port]
    }

    fn free_frames(&self) -> usize {
        self.free.len()
    }
}

/// The kernel's forwarding switches in the calling thread's network namespace:
/// `(net.ipv4.ip_forward, net.ipv6.conf.all.forwarding)`, `None` where unreadable. With AF_PACKET
/// both must be 0, or the kernel forwards the inside packets the engine encrypts.
pub fn kernel_forwarding() -> (Option<bool>, Option<bool>) {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim() != "0");
    (read("/proc/sys/net/ipv4/ip_forward"), read("/proc/sys/net/ipv6/conf/all/forwarding"))
}

// --- classic BPF steering filter -------------------------------------------------------------

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_LD_H_ABS: u16 = 0x28;
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_LD_H_IND: u16 = 0x48;
const BPF_LDX_B_MSH: u16 = 0xb1;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
/// Bytes of an accepted packet to keep (all of it).
const ACCEPT: u32 = 0x0004_0000;

/// A tiny assembler: conditional jumps use short literal offsets, `ja` to labels.
struct Asm {
    code: Vec<libc::sock_filter>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn new() -> Self {
        Asm { code: Vec::new(), labels: Vec::new(), fixups: Vec::new() }
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push(libc::sock_filter { code, jt: 0, jf: 0, k });
    }
    fn jump(&mut self, code: u16, k: u32, jt: u8, jf: u8) {
        self.code.push(libc::sock_filter { code, jt, jf, k });
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn ja(&mut self, l: usize) {
        self.fixups.push((self.code.len(), l));
        self.stmt(BPF_JMP_JA, 0);
    }
    fn finish(mut self) -> Vec<libc::sock_filter> {
        for (at, l) in self.fixups {
            let target = self.labels[l].expect("unbound label");
            self.code[at].k = (target - at - 1) as u32;
        }
        self.code
    }
}

const ETH_TYPE: u32 = 12;
const IP4: u32 = 14;
const IP6: u32 = 14;

fn v6_words(a: std::net::Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    [0, 1, 2, 3].map(|i| u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

fn mask_words(len: u8) -> [u32; 4] {
    [0u32, 1, 2, 3].map(|i| {
        let bits = (len as i32 - 32 * i as i32).clamp(0, 32) as u32;
        if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        }
    })
}

/// The largest classic BPF program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_FILTER_INSNS: usize = 4096;

/// Attaches `cfg`'s steering filter to socket `fd`, replacing its current one.
fn attach_filter(fd: RawFd, cfg: &SteeringConfig) -> std::io::Result<()> {
    let mut filter = steering_filter(cfg);
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

/// The inside sockets' filters as the control channel's steering hook
/// ([`crate::channel::Steering`]): the configured protected subnets plus those the channel adds
/// (it reference-counts them and calls this once per prefix that comes or goes).
pub struct PacketProtected {
    /// Duplicates of every worker's inside socket (so a socket outlives its worker here).
    socks: Vec<OwnedFd>,
    base: SteeringConfig,
    added: Vec<Prefix>,
    /// Whether the last filter had to pass every IP packet (too many prefixes).
    all_ip: bool,
}

impl PacketProtected {
    /// The hook for `ios`' inside sockets, whose filters were built from `base` (inside role).
    pub fn new(ios: &[AfPacketIo], inside: usize, base: SteeringConfig) -> Result<Self, String> {
        let mut socks = Vec::new();
        for io in ios {
            // SAFETY: dup(2) of a descriptor the worker's socket owns; the copy is owned here.
            let raw = unsafe { libc::dup(io.fd(inside)) };
            if raw < 0 {
                return Err(format!("dup of an inside AF_PACKET socket: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `raw` is a new descriptor owned by nobody else.
            socks.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        Ok(PacketProtected { socks, base, added: Vec::new(), all_ip: false })
    }

    /// A hook without sockets (unit tests).
    #[cfg(test)]
    fn detached(base: SteeringConfig) -> Self {
        PacketProtected { socks: Vec::new(), base, added: Vec::new(), all_ip: false }
    }

    /// The inside configuration the filters are built from now (for tests and logs).
    pub fn config(&self) -> SteeringConfig {
        let mut cfg = self.base.clone();
        cfg.protected.extend(self.added.iter().copied());
        if steering_filter(&cfg).len() > MAX_FILTER_INSNS {
            cfg.protected = vec![Prefix::new(IpAddr::V4(0.into()), 0), Prefix::new(IpAddr::V6(0.into()), 0)];
        }
        cfg
    }

    fn apply(&mut self) -> Result<(), String> {
        let cfg = self.config();
        let all_ip = cfg.protected.iter().any(|p| p.len == 0);
        if all_ip && !self.all_ip {
            tracing::warn!(
                prefixes = self.base.protected.len() + self.added.len(),
                "too many protected subnets for an AF_PACKET socket filter: the inside sockets now see every IP packet"
            );
        }
        self.all_ip = all_ip;
        for s in &self.socks {
            attach_filter(s.as_raw_fd(), &cfg).map_err(|e| format!("inside AF_PACKET filter: {e}"))?;
        }
        Ok(())
    }
}

impl crate::channel::Steering for PacketProtected {
    fn add_protected(&mut self, net: ipnet::IpNet) -> Result<(), String> {
        let p = Prefix::new(net.network(), net.prefix_len());
        if !self.added.contains(&p) {
            self.added.push(p);
        }
        self.apply()
    }

    fn remove_protected(&mut self, net: ipnet::IpNet) -> Result<(), String> {
        let p = Prefix::new(net.network(), net.prefix_len());
        self.added.retain(|x| *x != p);
        self.apply()
    }
}

/// The classic BPF program (offsets from the Ethernet header; untagged frames, as the kernel
/// delivers them with VLAN offload) that passes what the XDP program would steer for `cfg`:
/// - outside: IPv4/IPv6 to one of `local_addrs`, protocol ESP, or UDP to port 4500 or 500 (IPv4:
///   unfragmented or first fragments; IPv6: UDP or ESP right after the fixed header);
/// - inside: IPv4/IPv6 to one of the `protected` prefixes.
///
/// Everything else stays with the kernel.
pub fn steering_filter(cfg: &SteeringConfig) -> Vec<libc::sock_filter> {
    let mut a = Asm::new();
    let (v4, v6) = (a.label(), a.label());
    a.stmt(BPF_LD_H_ABS, ETH_TYPE);
    a.jump(BPF_JMP_JEQ_K, 0x0800, 0, 1);
    a.ja(v4);
    a.jump(BPF_JMP_JEQ_K, 0x86dd, 0, 1);
    a.ja(v6);
    a.stmt(BPF_RET_K, 0);
    match cfg.role {
        Role::Outside => {
            let (ok4, ok6) = (a.label(), a.label());
            a.bind(v4);
            for addr in cfg.local_addrs.iter().filter_map(|x| match x {
                IpAddr::V4(v) => Some(u32::from(*v)),
                _ => None,
            }) {
                a.stmt(BPF_LD_W_ABS, IP4 + 16);
                a.jump(BPF_JMP_JEQ_K, addr, 0, 1);
                a.ja(ok4);
            }
            a.stmt(BPF_RET_K, 0);
            a.bind(ok4);
            a.stmt(BPF_LD_B_ABS, IP4 + 9);
            a.jump(BPF_JMP_JEQ_K, 50, 0, 1);
            a.stmt(BPF_RET_K, ACCEPT);
            a.jump(BPF_JMP_JEQ_K, 17, 1, 0);
            a.stmt(BPF_RET_K, 0);
            a.stmt(BPF_LD_H_ABS, IP4 + 6);
            a.jump(BPF_JMP_JSET_K, 0x1fff, 0, 1);
            a.stmt(BPF_RET_K, 0);
            a.stmt(BPF_LDX_B_MSH, IP4);
            a.stmt(BPF_LD_H_IND, IP4 + 2);
            udp_ports(&mut a);

            a.bind(v6);
            for addr in cfg.local_addrs.iter().filter_map(|x| match x {
                IpAddr::V6(v) => Some(v6_words(*v)),
                _ => None,
            }) {
                for (i, w) in addr.iter().enumerate() {
                    a.stmt(BPF_LD_W_ABS, IP6 + 24 + 4 * i as u32);
                    a.jump(BPF_JMP_JEQ_K, *w, 0, (7 - 2 * i) as u8);
                }
                a.ja(ok6);
            }
            a.stmt(BPF_RET_K, 0);
            a.bind(ok6);
            a.stmt(BPF_LD_B_ABS, IP6 + 6);
            a.jump(BPF_JMP_JEQ_K, 50, 0, 1);
            a.stmt(BPF_RET_K, ACCEPT);
            a.jump(BPF_JMP_JEQ_K, 17, 1, 0);
            a.stmt(BPF_RET_K, 0);
            a.stmt(BPF_LD_H_ABS, IP6 + 40 + 2);
            udp_ports(&mut a);
        }
        Role::Inside => {
            a.bind(v4);
            for p in &cfg.protected {
                let Prefix { addr: IpAddr::V4(net), len } = *p else { continue };
                let mask = mask_words(len)[0];
                a.stmt(BPF_LD_W_ABS, IP4 + 16);
                a.stmt(BPF_ALU_AND_K, mask);
                a.jump(BPF_JMP_JEQ_K, u32::from(net) & mask, 0, 1);
                a.stmt(BPF_RET_K, ACCEPT);
            }
            a.stmt(BPF_RET_K, 0);
            a.bind(v6);
            for p in &cfg.protected {
                let Prefix { addr: IpAddr::V6(net), len } = *p else { continue };
                let masks = mask_words(len);
                let words = v6_words(net);
                let m = masks.iter().filter(|x| **x != 0).count();
                for j in 0..m {
                    a.stmt(BPF_LD_W_ABS, IP6 + 24 + 4 * j as u32);
                    a.stmt(BPF_ALU_AND_K, masks[j]);
                    a.jump(BPF_JMP_JEQ_K, words[j] & masks[j], 0, (3 * (m - j) - 2) as u8);
                }
                a.stmt(BPF_RET_K, ACCEPT);
            }
            a.stmt(BPF_RET_K, 0);
        }
    }
    a.finish()
}

/// Accumulator holds the UDP destination port: accept 4500 and 500, reject the rest.
fn udp_ports(a: &mut Asm) {
    a.jump(BPF_JMP_JEQ_K, 4500, 0, 1);
    a.stmt(BPF_RET_K, ACCEPT);
    a.jump(BPF_JMP_JEQ_K, 500, 0, 1);
    a.stmt(BPF_RET_K, ACCEPT);
    a.stmt(BPF_RET_K, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A classic BPF interpreter for the instructions [`steering_filter`] emits; returns the
    /// program's verdict (0: drop), or panics on a malformed program (jump out of range, load
    /// past the packet counts as drop like the kernel does).
    fn run_filter(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut acc, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |off: usize, n: usize| -> Option<u32> {
            pkt.get(off..off + n).map(|b| b.iter().fold(0u32, |v, byte| (v << 8) | *byte as u32))
        };
        loop {
            let ins = prog.get(pc).unwrap_or_else(|| panic!("fell off the program at {pc}"));
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS | BPF_LD_H_ABS | BPF_LD_B_ABS => {
                    let n = match ins.code {
                        BPF_LD_W_ABS => 4,
                        BPF_LD_H_ABS => 2,
                        _ => 1,
                    };
                    match load(ins.k as usize, n) {
                        Some(v) => acc = v,
                        None => return 0,
                    }
                }
                BPF_LD_H_IND => match load(x as usize + ins.k as usize, 2) {
                    Some(v) => acc = v,
                    None => return 0,
                },
                BPF_LDX_B_MSH => match load(ins.k as usize, 1) {
                    Some(v) => x = 4 * (v & 0xf),
                    None => return 0,
                },
                BPF_ALU_AND_K => acc &= ins.k,
                BPF_JMP_JA => pc += ins.k as usize,
                BPF_JMP_JEQ_K => pc += if acc == ins.k { ins.jt } else { ins.jf } as usize,
                BPF_JMP_JSET_K => pc += if acc & ins.k != 0 { ins.jt } else { ins.jf } as usize,
                BPF_RET_K => return ins.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn v4(proto: u8, dst: Ipv4Addr, frag: u16, dport: u16, ihl: u8) -> Vec<u8> {
        let hl = 4 * ihl as usize;
        let mut p = vec![0u8; hl + 8];
        p[0] = 0x40 | ihl;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = proto;
        p[12..16].copy_from_slice(&[198, 18, 0, 9]);
        p[16..20].copy_from_slice(&dst.octets());
        p[hl + 2..hl + 4].copy_from_slice(&dport.to_be_bytes());
        eth(0x0800, &p)
    }

    fn v6(next: u8, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[6] = next;
        p[24..40].copy_from_slice(&dst.octets());
        p[42..44].copy_from_slice(&dport.to_be_bytes());
        eth(0x86dd, &p)
    }

    fn outside() -> SteeringConfig {
        let mut c = SteeringConfig::new(Role::Outside);
        c.local_addrs = vec![
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 5)),
            IpAddr::V6("2001:db8:18::1".parse().unwrap()),
        ];
        c
    }

    #[test]
    fn outside_filter_passes_esp_and_ike_to_the_gateway_only() {
        let prog = steering_filter(&outside());
        let gw = Ipv4Addr::new(198, 18, 0, 1);
        let gw_b = Ipv4Addr::new(198, 18, 0, 5);
        let other = Ipv4Addr::new(198, 18, 0, 2);
        let pass = |p: &[u8]| run_filter(&prog, p) != 0;
        assert!(pass(&v4(50, gw, 0, 0, 5)));
        assert!(pass(&v4(50, gw_b, 0, 0, 5)));
        assert!(pass(&v4(17, gw, 0, 4500, 5)));
        assert!(pass(&v4(17, gw_b, 0, 500, 5)));
        assert!(pass(&v4(17, gw, 0, 4500, 7)), "IPv4 options shift the UDP header");
        assert!(pass(&v4(17, gw, 0x2000, 4500, 5)), "first fragment");
        assert!(!pass(&v4(17, gw, 0x0010, 4500, 5)), "non-first fragment has no UDP header");
        assert!(!pass(&v4(50, other, 0, 0, 5)));
        assert!(!pass(&v4(17, gw, 0, 4501, 5)));
        assert!(!pass(&v4(17, gw, 0, 53, 5)));
        assert!(!pass(&v4(6, gw, 0, 4500, 5)));
        assert!(!pass(&v4(1, gw, 0, 0, 5)));
        let gw6: Ipv6Addr = "2001:db8:18::1".parse().unwrap();
        assert!(pass(&v6(50, gw6, 0)));
        assert!(pass(&v6(17, gw6, 4500)));
        assert!(pass(&v6(17, gw6, 500)));
        assert!(!pass(&v6(17, gw6, 53)));
        assert!(!pass(&v6(58, gw6, 0)));
        for near in ["2001:db8:18::2", "2001:db8:19::1", "2001:db9:18::1", "3001:db8:18::1"] {
            assert!(!pass(&v6(50, near.parse().unwrap(), 0)), "{near}");
        }
        assert!(!pass(&eth(0x0806, &[0u8; 28])), "ARP stays with the kernel");
        assert!(!pass(&[0u8; 10]), "runt");
    }

    #[test]
    fn inside_filter_passes_protected_destinations_only() {
        let mut c = SteeringConfig::new(Role::Inside);
        c.protected = vec![
            Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)), 24),
            Prefix::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 128)), 25),
            Prefix::new(IpAddr::V6("2001:db8:100::".parse().unwrap()), 48),
            Prefix::new(IpAddr::V6("2001:db8:200:8000::".parse().unwrap()), 49),
        ];
        let prog = steering_filter(&c);
        let pass = |p: &[u8]| run_filter(&prog, p) != 0;
        assert!(pass(&v4(17, Ipv4Addr::new(198, 51, 100, 2), 0, 9, 5)));
        assert!(pass(&v4(1, Ipv4Addr::new(198, 51, 100, 255), 0, 0, 5)));
        assert!(pass(&v4(6, Ipv4Addr::new(203, 0, 113, 200), 0, 0, 5)));
        assert!(!pass(&v4(6, Ipv4Addr::new(203, 0, 113, 100), 0, 0, 5)));
        assert!(!pass(&v4(17, Ipv4Addr::new(198, 51, 101, 2), 0, 9, 5)));
        assert!(!pass(&v4(17, Ipv4Addr::new(192, 0, 2, 1), 0, 9, 5)), "the gateway itself");
        assert!(pass(&v6(17, "2001:db8:100:ffff::1".parse().unwrap(), 9)));
        assert!(pass(&v6(17, "2001:db8:200:8001::1".parse().unwrap(), 9)));
        assert!(!pass(&v6(17, "2001:db8:200:7fff::1".parse().unwrap(), 9)));
        assert!(!pass(&v6(17, "2001:db8:101::1".parse().unwrap(), 9)));
        assert!(!pass(&eth(0x0806, &[0u8; 28])));
    }

    #[test]
    fn everything_and_nothing() {
        let mut c = SteeringConfig::new(Role::Inside);
        c.protected = vec![Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)];
        let prog = steering_filter(&c);
        assert_ne!(run_filter(&prog, &v4(17, Ipv4Addr::new(1, 2, 3, 4), 0, 9, 5)), 0);
        assert_eq!(run_filter(&prog, &v6(17, "2001:db8::1".parse().unwrap(), 9)), 0);
        let none = steering_filter(&SteeringConfig::new(Role::Outside));
        assert_eq!(run_filter(&none, &v4(50, Ipv4Addr::new(198, 18, 0, 1), 0, 0, 5)), 0);
    }

    #[test]
    fn options_are_bounded() {
        let o = AfPacketOptions::sized(4096, 1024);
        assert_eq!(o.frames, 1024);
        assert_eq!(o.ring_blocks, 16);
        let o = AfPacketOptions::sized(8, 16);
        assert_eq!(o.frames, 2 * BURST as u32);
        assert_eq!(o.ring_blocks, 4);
    }

    #[test]
    fn the_inside_filter_follows_the_channel_and_passes_every_ip_packet_beyond_its_size() {
        use crate::channel::Steering;
        let mut base = SteeringConfig::new(Role::Inside);
        base.protected = vec![Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)), 24)];
        let mut h = PacketProtected::detached(base);
        let to = |a: [u8; 4]| v4(17, Ipv4Addr::from(a), 0, 5001, 5);
        let passes = |h: &PacketProtected, pkt: &[u8]| run_filter(&steering_filter(&h.config()), pkt) != 0;
        assert!(passes(&h, &to([198, 51, 100, 7])) && !passes(&h, &to([203, 0, 113, 7])));
        h.add_protected("203.0.113.0/24".parse().unwrap()).unwrap();
        h.add_protected("203.0.113.0/24".parse().unwrap()).unwrap();
        assert!(passes(&h, &to([203, 0, 113, 7])) && !passes(&h, &to([192, 0, 2, 7])));
        assert_eq!(h.config().protected.len(), 2);
        h.remove_protected("203.0.113.0/24".parse().unwrap()).unwrap();
        assert!(!passes(&h, &to([203, 0, 113, 7])) && passes(&h, &to([198, 51, 100, 7])));
        // More prefixes than one program holds: every IP packet.
        for k in 0..1100u32 {
            let net = ipnet::IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (k << 8))), 24).unwrap();
            h.add_protected(net).unwrap();
        }
        let mut exact = h.config();
        exact.protected = h.base.protected.iter().chain(h.added.iter()).copied().collect();
        assert!(steering_filter(&exact).len() > MAX_FILTER_INSNS);
        assert!(passes(&h, &to([192, 0, 2, 7])), "too many prefixes: every IP packet passes");
        assert!(steering_filter(&h.config()).len() <= MAX_FILTER_INSNS);
    }
}
