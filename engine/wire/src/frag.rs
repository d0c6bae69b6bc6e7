//! IPv4 fragmentation (RFC 791 §2.3, §3.2; RFC 1812 §5.2.6) into caller-provided buffers.
//!
//! A [`Fragmenter`] walks one IPv4 packet and writes its fragments one at a time into buffers the
//! caller hands it ([`Fragmenter::write_next`]), so nothing is allocated: the engine writes each
//! fragment straight into a free frame and encrypts it as its own ESP packet.
//!
//! Rules applied:
//! - fragment data offsets are in 8-byte units, every fragment but the last carries a multiple of
//!   8 data bytes and has MF set;
//! - an already fragmented packet (MF set or offset ≠ 0) is fragmented further: offsets are
//!   relative to its own offset, and its last piece keeps the packet's MF flag;
//! - the first fragment carries every option; later ones only the options whose copied flag (bit
//!   0x80 of the type) is set, padded with End-of-Options to a 4-byte multiple;
//! - identification, DSCP/ECN, TTL and protocol are copied, DF is clear (a packet with DF is
//!   never fragmented: the caller sends an ICMP error instead), the header checksum is computed
//!   per fragment.

use crate::{ipv4, Error};

/// Fragments one IPv4 packet for a given MTU.
#[derive(Debug, Clone)]
pub struct Fragmenter<'a> {
    /// The whole original packet (header, options, payload), link padding excluded.
    packet: &'a [u8],
    header_len: usize,
    /// Options copied into non-first fragments, and their length padded to 4.
    copied: [u8; 40],
    copied_len: usize,
    mtu: usize,
    /// Next payload byte to send.
    next: usize,
    /// Original offset in bytes and MF flag.
    base_offset: usize,
    base_mf: bool,
}

impl<'a> Fragmenter<'a> {
    /// Prepares fragmenting `packet` (starting at its IPv4 header; bytes past its total length
    /// are ignored) into fragments of at most `mtu` bytes.
    ///
    /// Fails with [`Error::Truncated`] / [`Error::Malformed`] for a packet `ipv4::Packet::
    /// new_checked` refuses or with malformed options, and with [`Error::Malformed`] when `mtu`
    /// leaves fewer than 8 data bytes per fragment (RFC 791 requires links of at least 68 bytes)
    /// or the packet has DF set.
    pub fn new(packet: &'a [u8], mtu: usize) -> Result<Self, Error> {
        let ip = ipv4::Packet::new_checked(packet)?;
        if ip.dont_frag() {
            return Err(Error::Malformed);
        }
        let header_len = ip.header_len();
        let total = usize::from(ip.total_len());
        let mut copied = [0u8; 40];
        let mut copied_len = 0;
        let opts = &packet[ipv4::HEADER_LEN..header_len];
        let mut i = 0;
        while i < opts.len() {
            let kind = opts[i];
            let len = match kind {
                0 => break, // End of Option List
                1 => 1,     // No-Operation
                _ => match opts.get(i + 1) {
                    Some(&l) if l >= 2 && i + usize::from(l) <= opts.len() => usize::from(l),
                    _ => return Err(Error::Malformed),
                },
            };
            if kind & 0x80 != 0 {
                copied[copied_len..copied_len + len].copy_from_slice(&opts[i..i + len]);
                copied_len += len;
            }
            i += len;
        }
        // Pad with End-of-Options (zeros, already there) to a 4-byte multiple.
        copied_len = copied_len.div_ceil(4) * 4;
        let later_header = ipv4::HEADER_LEN + copied_len;
        if mtu < header_len.max(later_header) + 8 {
            return Err(Error::Malformed);
        }
        Ok(Fragmenter {
            packet: &packet[..total],
            header_len,
            copied,
            copied_len,
            mtu,
            next: 0,
            base_offset: usize::from(ip.frag_offset()),
            base_mf: ip.more_frags(),
        })
    }

    fn payload_len(&self) -> usize {
        self.packet.len() - self.header_len
    }

    /// Header length of the fragment starting at payload byte `at`.
    fn header_len_at(&self, at: usize) -> usize {
        if at == 0 {
            self.header_len
        } else {
            ipv4::HEADER_LEN + self.copied_len
        }
    }

    /// Payload bytes of the fragment starting at payload byte `at` (a multiple of 8 unless last).
    fn data_len_at(&self, at: usize) -> usize {
        let room = self.mtu - self.header_len_at(at);
        let rest = self.payload_len() - at;
        if rest <= room {
            rest
        } else {
            room / 8 * 8
        }
    }

    /// How many fragments the packet makes in all (1 if it already fits).
    pub fn count(&self) -> usize {
        let mut at = 0;
        let mut n = 0;
        loop {
            n += 1;
            at += self.data_len_at(at);
            if at >= self.payload_len() {
                return n;
            }
        }
    }

    /// Length of the next fragment, `None` when done.
    pub fn next_len(&self) -> Option<usize> {
        if self.finished() {
            return None;
        }
        Some(self.header_len_at(self.next) + self.data_len_at(self.next))
    }

    fn finished(&self) -> bool {
        // `next == usize::MAX` marks "the (possibly empty) last fragment was written".
        self.next == usize::MAX
    }

    /// Writes the next fragment to the start of `out` and returns its length; `None` once every
    /// fragment was written. Fails with [`Error::Truncated`] (writing nothing, the fragment still
    /// pending) if `out` is shorter than [`next_len`](Self::next_len).
    pub fn write_next(&mut self, out: &mut [u8]) -> Option<Result<usize, Error>> {
        if self.finished() {
            return None;
        }
        let at = self.next;
        let hl = self.header_len_at(at);
        let data = self.data_len_at(at);
        let len = hl + data;
        if out.len() < len {
            return Some(Err(Error::Truncated));
        }
        let out = &mut out[..len];
        out[..ipv4::HEADER_LEN].copy_from_slice(&self.packet[..ipv4::HEADER_LEN]);
        if at == 0 {
            out[ipv4::HEADER_LEN..hl].copy_from_slice(&self.packet[ipv4::HEADER_LEN..self.header_len]);
        } else {
            out[ipv4::HEADER_LEN..hl].copy_from_slice(&self.copied[..self.copied_len]);
        }
        let src = self.header_len + at;
        out[hl..].copy_from_slice(&self.packet[src..src + data]);
        let last = at + data >= self.payload_len();
        let mut ip = ipv4::Packet::new_unchecked(out);
        ip.set_header_len(hl);
        ip.set_total_len(len as u16);
        ip.clear_flags();
        ip.set_more_frags(!last || self.base_mf);
        ip.set_frag_offset((self.base_offset + at) as u16);
        ip.fill_checksum();
        self.next = if last { usize::MAX } else { at + data };
        Some(Ok(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{checksum, IpProtocol};
    use std::vec;
    use std::vec::Vec;

    /// An IPv4 packet with `options` (a multiple of 4 bytes) and `payload_len` patterned bytes.
    fn packet(options: &[u8], payload_len: usize, offset: u16, mf: bool) -> Vec<u8> {
        let hl = ipv4::HEADER_LEN + options.len();
        let mut p = vec![0u8; hl + payload_len];
        for (i, b) in p[hl..].iter_mut().enumerate() {
            *b = (i * 7 + i / 251) as u8;
        }
        p[ipv4::HEADER_LEN..hl].copy_from_slice(options);
        let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
        ip.set_version(4);
        ip.set_header_len(hl);
        ip.set_dscp(46);
        ip.set_total_len((hl + payload_len) as u16);
        ip.set_ident(0x4242);
        ip.clear_flags();
        ip.set_more_frags(mf);
        ip.set_frag_offset(offset);
        ip.set_ttl(17);
        ip.set_next_header(IpProtocol::UDP);
        ip.set_src_addr([192, 0, 2, 10].into());
        ip.set_dst_addr([198, 51, 100, 20].into());
        ip.fill_checksum();
        p
    }

    fn fragment(p: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let mut f = Fragmenter::new(p, mtu).unwrap();
        let expected = f.count();
        let mut out = Vec::new();
        loop {
            let want = f.next_len();
            let mut buf = vec![0xa5u8; 2048];
            match f.write_next(&mut buf) {
                None => break,
                Some(r) => {
                    let len = r.unwrap();
                    assert_eq!(Some(len), want);
                    buf.truncate(len);
                    out.push(buf);
                }
            }
        }
        assert_eq!(out.len(), expected);
        assert!(f.next_len().is_none());
        out
    }

    /// A small reassembler (RFC 815 style, without holes bookkeeping: a byte map), checking
    /// every fragment's header on the way. Returns (offset, MF of the last piece, header of the
    /// first fragment, payload).
    fn reassemble(frags: &[Vec<u8>]) -> (usize, bool, Vec<u8>, Vec<u8>) {
        let mut payload = vec![0u8; 65536];
        let mut have = vec![false; 65536];
        let mut first_header = Vec::new();
        let mut min_off = usize::MAX;
        let mut end = 0;
        let mut end_mf = true;
        for f in frags {
            let ip = ipv4::Packet::new_checked(&f[..]).unwrap();
            assert!(ip.verify_checksum(), "header checksum");
            assert_eq!(ip.ident(), 0x4242);
            assert!(!ip.dont_frag());
            assert_eq!(ip.ttl(), 17);
            assert_eq!(ip.dscp(), 46);
            let off = usize::from(ip.frag_offset());
            assert_eq!(off % 8, 0);
            let data = ip.payload();
            if ip.more_frags() {
                assert_eq!(data.len() % 8, 0, "non-last fragment with {} bytes", data.len());
            }
            if off < min_off {
                min_off = off;
                first_header = f[..ip.header_len()].to_vec();
            }
            for (i, b) in data.iter().enumerate() {
                assert!(!have[off + i], "overlap at {}", off + i);
                have[off + i] = true;
                payload[off + i] = *b;
            }
            if off + data.len() >= end {
                end = off + data.len();
                end_mf = ip.more_frags();
            }
        }
        assert!(have[min_off..end].iter().all(|h| *h), "hole");
        (min_off, end_mf, first_header, payload[min_off..end].to_vec())
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        for (len, mtu) in [(1600, 1400), (3000, 576), (1401, 1400), (100, 68), (1000, 1500), (9000, 1280)] {
            let p = packet(&[], len, 0, false);
            let frags = fragment(&p, mtu);
            for f in &frags {
                assert!(f.len() <= mtu);
            }
            let (off, mf, hdr, payload) = reassemble(&frags);
            assert_eq!((off, mf), (0, false));
            assert_eq!(payload, &p[20..]);
            assert_eq!(hdr.len(), 20);
            assert_eq!(frags.len(), if len + 20 <= mtu { 1 } else { len.div_ceil((mtu - 20) / 8 * 8) });
        }
    }

    #[test]
    fn exact_offsets_flags_and_checksums() {
        let p = packet(&[], 1580, 0, false); // 1600 bytes
        let frags = fragment(&p, 1400);
        assert_eq!(frags.len(), 2);
        let a = ipv4::Packet::new_checked(&frags[0][..]).unwrap();
        let b = ipv4::Packet::new_checked(&frags[1][..]).unwrap();
        assert_eq!((a.total_len(), a.frag_offset(), a.more_frags()), (1396, 0, true));
        assert_eq!((b.total_len(), b.frag_offset(), b.more_frags()), (20 + 1580 - 1376, 1376, false));
        assert_eq!(checksum::data(&frags[0][..20]), 0xffff);
        assert_eq!(checksum::data(&frags[1][..20]), 0xffff);
    }

    #[test]
    fn already_fragmented_packets_keep_their_offset_and_mf() {
        // A middle fragment (offset 2960, MF) and a last one (offset 5920, no MF).
        for (offset, mf) in [(2960u16, true), (5920, false)] {
            let p = packet(&[], 2928, offset, mf); // 3 × 976 data bytes
            let frags = fragment(&p, 1000);
            assert_eq!(frags.len(), 3);
            let (off, end_mf, _, payload) = reassemble(&frags);
            assert_eq!(off, usize::from(offset));
            assert_eq!(end_mf, mf);
            assert_eq!(payload, &p[20..]);
            for f in &frags[..2] {
                assert!(ipv4::Packet::new_checked(&f[..]).unwrap().more_frags());
            }
        }
    }

    #[test]
    fn only_copied_options_go_into_later_fragments() {
        // Security (type 130, copied, 4 bytes here for the test), Record Route (type 7, not
        // copied, 7 bytes), NOP, End.
        let opts = [130, 4, 0xaa, 0xbb, 7, 7, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let p = packet(&opts, 2000, 0, false);
        let frags = fragment(&p, 900);
        let first = ipv4::Packet::new_checked(&frags[0][..]).unwrap();
        assert_eq!(first.options(), &opts);
        for f in &frags[1..] {
            let ip = ipv4::Packet::new_checked(&f[..]).unwrap();
            assert_eq!(ip.header_len(), 24);
            assert_eq!(ip.options(), &[130, 4, 0xaa, 0xbb]);
        }
        let (_, _, hdr, payload) = reassemble(&frags);
        assert_eq!(hdr.len(), 36);
        assert_eq!(payload, &p[36..]);
    }

    #[test]
    fn refuses_df_tiny_mtu_bad_options_and_short_buffers() {
        let mut p = packet(&[], 1000, 0, false);
        assert_eq!(Fragmenter::new(&p, 27).unwrap_err(), Error::Malformed);
        assert!(Fragmenter::new(&p, 28).is_ok());
        let mut f = Fragmenter::new(&p, 503).unwrap();
        let mut small = [0u8; 100];
        assert_eq!(f.write_next(&mut small), Some(Err(Error::Truncated)));
        assert_eq!(f.next_len(), Some(500)); // 480 data bytes, a multiple of 8
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
            ip.set_dont_frag(true);
            ip.fill_checksum();
        }
        assert_eq!(Fragmenter::new(&p, 500).unwrap_err(), Error::Malformed);
        let bad = packet(&[68, 9, 0, 0], 100, 0, false); // option length past the header
        assert_eq!(Fragmenter::new(&bad, 60).unwrap_err(), Error::Malformed);
    }
}
