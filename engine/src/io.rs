//! The packet I/O seam of a worker: what the worker loop ([`crate::run`]) needs from a backend,
//! implemented by AF_XDP ([`crate::afxdp::XskIo`]) and by the portable AF_PACKET fallback
//! ([`crate::afpacket::PacketIo`]).
//!
//! Contract:
//! - A backend serves a fixed list of *ports* (one per (interface, queue) the worker handles, in
//!   the order given at open time) and owns a pool of frames.
//! - [`FrameIo::recv`] moves up to [`BURST`] received packets from one port into a burst;
//!   [`FrameIo::alloc`] takes free frames into a burst for packets the worker writes itself.
//!   Frames of a burst are lent to the worker only inside [`FrameIo::with_frames`] as
//!   `(whole frame, packet length)`, the packet starting at offset 0; the worker may write anywhere
//!   in the frame.
//! - [`FrameIo::dispatch`] hands every frame of the burst back with a [`Disposition`] (send the
//!   frame's first `len` bytes on a port, or recycle it); afterwards the burst is empty again.
//! - No allocation per packet or per burst; a backend counts ring-level events in
//!   [`IoCounters`].
//!
//! The worker is generic over this trait (one monomorphic worker loop per backend, no dynamic
//! dispatch on the packet path).

/// Largest burst moved at once (the ESP core's `MAX_BURST`).
pub const BURST: usize = ipsec_esp::MAX_BURST;

/// What happens to a frame of a burst after processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transmit `len` bytes from the start of the frame on port `port`.
    Send { port: usize, len: usize },
    /// Return the frame to the pool.
    Drop,
}

/// Ring-level counters of one worker's I/O (cumulative).
#[derive(Debug, Default, Clone, Copy)]
pub struct IoCounters {
    /// Packets not sent because a tx ring (or the socket's send queue) was full.
    pub tx_ring_full: u64,
    /// Refills / receptions that found the free pool empty.
    pub pool_empty: u64,
    /// Wakeup syscalls made (AF_XDP: tx sendto + fill poll; AF_PACKET: sendmmsg).
    pub wakeups: u64,
    /// Received packets larger than a frame (AF_PACKET: GRO/LRO aggregates, jumbo frames);
    /// dropped before the worker sees them.
    pub rx_oversize: u64,
}

/// A worker's packet I/O backend. See the module documentation for the contract.
pub trait FrameIo: Send {
    /// Frames in the worker's hands between `recv`/`alloc` and `dispatch`.
    type Burst: Default;

    /// Receives up to [`BURST`] packets from `port` into `burst` (which must be empty); returns
    /// how many.
    fn recv(&mut self, port: usize, burst: &mut Self::Burst) -> usize;

    /// Takes up to `n` (at most [`BURST`]) free frames into `burst` (which must be empty) as if
    /// received on `port`; their contents and lengths are unspecified until written through
    /// [`with_frames`](Self::with_frames). Returns how many frames were taken.
    fn alloc(&mut self, port: usize, n: usize, burst: &mut Self::Burst) -> usize;

    /// Calls `f` with the burst's frames: `(whole frame, packet length)` each, the packet at
    /// offset 0.
    fn with_frames<R>(&mut self, burst: &mut Self::Burst, f: impl FnOnce(&mut [(&mut [u8], usize)]) -> R) -> R;

    /// Sends or recycles every frame of the burst as `dispositions` says (one per frame).
    fn dispatch(&mut self, burst: &mut Self::Burst, dispositions: &[Disposition]);

    /// Waits up to `timeout_ms` for any port to have packets (idle back-off).
    fn wait(&self, timeout_ms: i32);

    /// Housekeeping once per loop round (AF_XDP: completed tx frames back to the pool, fill
    /// rings topped up).
    fn reclaim(&mut self);

    /// The counters so far.
    fn counters(&self) -> &IoCounters;

    /// `interface/queue` of `port`.
    fn name(&self, port: usize) -> &str;

    /// Frames in the free pool (for tests and stats).
    fn free_frames(&self) -> usize;
}
