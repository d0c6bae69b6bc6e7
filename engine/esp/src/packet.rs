//! Packet buffers as the ESP core sees them.
//!
//! A [`PacketBuf`] borrows one frame (a UMEM frame in the engine, a `Vec` in tests) and marks where
//! the packet lies inside it. Encapsulation grows the packet in place towards the front (outer
//! headers) and the back (trailer, ICV), so frames must leave [`HEADROOM`] bytes before and
//! [`TAILROOM`] bytes after the packet; decapsulation only shrinks it.

/// Headroom encapsulation needs in front of an inner IP packet: outer IPv6 (40) + UDP (8) +
/// ESP header (8) + the largest IV (16).
pub const HEADROOM: usize = 72;

/// Tailroom encapsulation needs behind an inner IP packet: padding to a 16-byte block (≤ 15),
/// pad length and next header (2), and the largest ICV (32), rounded up.
pub const TAILROOM: usize = 64;

/// One packet inside a frame: `buf[start..start + len]`.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    pub buf: &'a mut [u8],
    pub start: usize,
    pub len: usize,
}

impl<'a> PacketBuf<'a> {
    /// A packet occupying `buf[start..start + len]`. Panics if that range is outside `buf`
    /// (a programming error, never caused by packet contents).
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Self {
        assert!(start.checked_add(len).is_some_and(|end| end <= buf.len()), "packet outside its frame");
        PacketBuf { buf, start, len }
    }

    /// The packet's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The packet's bytes, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Free bytes in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Free bytes behind the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.start - self.len
    }
}

/// Result of processing one packet of a burst.
pub type Verdict = Result<(), crate::DropReason>;

/// Largest burst the batch functions accept in one call (they keep per-packet state on the stack).
pub const MAX_BURST: usize = 64;

/// A run of packets of one burst (indices `start..end`, dropped ones skipped) that share one SA:
/// the unit of sequence-number reservation, batched crypto and counter updates.
pub(crate) struct Run<'s, S> {
    pub start: usize,
    pub end: usize,
    pub sa: &'s S,
}

/// Groups consecutive packets with the same SA (by address) into runs; `None` entries (dropped
/// packets) neither start nor break a run.
pub(crate) fn group_runs<'s, S>(sas: &[Option<&'s S>]) -> arrayvec::ArrayVec<Run<'s, S>, MAX_BURST> {
    let mut runs: arrayvec::ArrayVec<Run<'s, S>, MAX_BURST> = arrayvec::ArrayVec::new();
    for (i, sa) in sas.iter().enumerate() {
        let Some(sa) = *sa else { continue };
        match runs.last_mut() {
            Some(r) if core::ptr::eq(r.sa, sa) => r.end = i + 1,
            _ => runs.push(Run { start: i, end: i + 1, sa }),
        }
    }
    runs
}
