//! Internet checksum (RFC 1071), pseudo-header sums and incremental update (RFC 1624).
//!
//! Sums returned by [`data`], [`combine`] and the pseudo-header functions are *folded,
//! uncomplemented* 16-bit one's-complement sums. A checksum field holds the complement:
//! `!combine(&[pseudo_header_v4(..), data(bytes)])`. A received header is valid when the
//! sum over it (checksum field included) is `0xffff`.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::IpProtocol;

/// Fold a 64-bit accumulator to a 16-bit one's-complement sum.
#[inline]
pub const fn fold(mut sum: u64) -> u16 {
    // Each step preserves the value modulo 0xffff; four are enough for any u64 input.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's-complement sum of `bytes`, read as big-endian 16-bit words; an odd final byte is
/// padded with a zero byte, as RFC 1071 specifies.
///
/// When summing a message in several pieces with [`combine`], every piece but the last must
/// have even length.
///
/// The loop adds 64-bit big-endian words with end-around carry (one's-complement addition
/// is associative over any word size, RFC 1071 §2(C)), 32 bytes per iteration.
#[inline]
pub fn data(bytes: &[u8]) -> u16 {
    #[inline(always)]
    fn add(acc: u64, v: u64) -> u64 {
        let (s, carry) = acc.overflowing_add(v);
        s + carry as u64
    }
    #[inline(always)]
    fn word(chunk: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&chunk[..8]);
        u64::from_be_bytes(w)
    }

    let mut acc: u64 = 0;
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        // Two independent accumulators shorten the carry dependency chain.
        let s1 = add(word(&b[0..8]), word(&b[8..16]));
        let s2 = add(word(&b[16..24]), word(&b[24..32]));
        acc = add(acc, add(s1, s2));
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        acc = add(acc, word(w));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    acc = add(acc, u64::from_be_bytes(tail));
    fold(acc)
}

/// One's-complement sum of several partial sums.
#[inline]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the IPv4 pseudo-header (RFC 768 / RFC 793): source, destination, zero, protocol,
/// upper-layer length.
#[inline]
pub fn pseudo_header_v4(src: &Ipv4Addr, dst: &Ipv4Addr, protocol: IpProtocol, length: u16) -> u16 {
    let s = u64::from(u32::from_be_bytes(src.octets()));
    let d = u64::from(u32::from_be_bytes(dst.octets()));
    fold(s + d + u64::from(protocol.0) + u64::from(length))
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1): source, destination, 32-bit upper-layer
/// length, three zero bytes, next header.
#[inline]
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: IpProtocol, length: u32) -> u16 {
    let (s, d) = (src.octets(), dst.octets());
    let mut acc = u64::from(length) + u64::from(next_header.0);
    for i in (0..16).step_by(4) {
        acc += u64::from(u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]));
        acc += u64::from(u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]));
    }
    fold(acc)
}

/// Address types that define an upper-layer pseudo-header (implemented for [`Ipv4Addr`] and
/// [`Ipv6Addr`]), so UDP and ICMPv6 checksum helpers are generic over the IP version.
pub trait PseudoHeader: Copy {
    /// Whether a transmitted UDP checksum of zero means "no checksum" (true for IPv4 only).
    const UDP_CHECKSUM_OPTIONAL: bool;

    /// Folded sum of the pseudo-header for an upper-layer message of `length` bytes.
    fn pseudo_header_sum(src: &Self, dst: &Self, protocol: IpProtocol, length: u32) -> u16;
}

impl PseudoHeader for Ipv4Addr {
    const UDP_CHECKSUM_OPTIONAL: bool = true;

    #[inline]
    fn pseudo_header_sum(src: &Self, dst: &Self, protocol: IpProtocol, length: u32) -> u16 {
        // Callers only pass lengths bounded by a 16-bit field; folding keeps the sum exact
        // modulo 0xffff even if they did not.
        pseudo_header_v4(src, dst, protocol, fold(u64::from(length)))
    }
}

impl PseudoHeader for Ipv6Addr {
    const UDP_CHECKSUM_OPTIONAL: bool = false;

    #[inline]
    fn pseudo_header_sum(src: &Self, dst: &Self, protocol: IpProtocol, length: u32) -> u16 {
        pseudo_header_v6(src, dst, protocol, length)
    }
}

/// RFC 1624 eqn. 3 incremental update: the new checksum after one 16-bit word of the
/// checksummed data changes from `old_word` to `new_word`.
///
/// `HC' = ~(~HC + ~m + m')`. Gives the same value as a full recomputation for any header whose
/// sum is not all-zero (true for every IP header, whose version nibble is non-zero).
#[inline]
pub const fn update_u16(old_checksum: u16, old_word: u16, new_word: u16) -> u16 {
    let sum = (!old_checksum) as u64 + (!old_word) as u64 + new_word as u64;
    !fold(sum)
}

/// [`update_u16`] for a 32-bit field (e.g. an IPv4 address) that changed as a whole.
#[inline]
pub const fn update_u32(old_checksum: u16, old_value: u32, new_value: u32) -> u16 {
    let sum = (!old_checksum) as u64
        + (!(old_value >> 16) & 0xffff) as u64
        + (!old_value & 0xffff) as u64
        + (new_value >> 16) as u64
        + (new_value & 0xffff) as u64;
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4;
    use crate::testdata::*;

    /// Straightforward RFC 1071 reference implementation.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i + 1 < bytes.len() {
            sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        if i < bytes.len() {
            sum += u32::from(bytes[i]) << 8;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// xorshift64*: deterministic, good enough to generate test inputs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn byte(&mut self) -> u8 {
            (self.next() >> 56) as u8
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
        assert_eq!(data(&[]), 0);
        assert_eq!(data(&[0xab]), 0xab00);
        assert_eq!(data(&[0xff, 0xff]), 0xffff);
    }

    #[test]
    fn data_matches_reference_for_all_lengths_and_alignments() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut buf = [0u8; 300];
        for b in buf.iter_mut() {
            *b = rng.byte();
        }
        for start in 0..9 {
            for end in start..buf.len() {
                let s = &buf[start..end];
                assert_eq!(data(s), reference(s), "{start}..{end}");
            }
        }
        // Saturated input exercises every carry path.
        let ones = [0xffu8; 257];
        for len in 0..ones.len() {
            assert_eq!(data(&ones[..len]), reference(&ones[..len]), "len {len}");
        }
    }

    #[test]
    fn combine_equals_whole() {
        let whole = &PING_FRAME[14..];
        for split in (0..whole.len()).step_by(2) {
            let (a, b) = whole.split_at(split);
            assert_eq!(combine(&[data(a), data(b)]), data(whole));
        }
        assert_eq!(combine(&[0xffff, 0x0001]), 0x0001);
        assert_eq!(combine(&[]), 0);
    }

    #[test]
    fn known_good_captures_verify() {
        // IPv4 header checksums of the captures.
        assert_eq!(data(&PING_FRAME[14..34]), 0xffff);
        assert_eq!(data(&IGMP_WITH_OPTIONS[..24]), 0xffff);
        // ICMP echo request checksum.
        assert_eq!(data(&PING_FRAME[34..]), 0xffff);
        // Breaking one bit breaks it.
        let mut hdr = [0u8; 20];
        hdr.copy_from_slice(&PING_FRAME[14..34]);
        hdr[8] ^= 1;
        assert_ne!(data(&hdr), 0xffff);
    }

    #[test]
    fn pseudo_headers_match_byte_layout() {
        let src = Ipv4Addr::new(192, 168, 1, 100);
        let dst = Ipv4Addr::new(192, 168, 1, 1);
        let mut ph = [0u8; 12];
        ph[..4].copy_from_slice(&src.octets());
        ph[4..8].copy_from_slice(&dst.octets());
        ph[9] = 17;
        ph[10..12].copy_from_slice(&36u16.to_be_bytes());
        assert_eq!(pseudo_header_v4(&src, &dst, IpProtocol::UDP, 36), data(&ph));

        let mut rng = Rng(42);
        for _ in 0..1000 {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.iter_mut().chain(d.iter_mut()).for_each(|b| *b = rng.byte());
            let len = rng.next() as u32;
            let nh = rng.byte();
            let mut ph = [0u8; 40];
            ph[..16].copy_from_slice(&s);
            ph[16..32].copy_from_slice(&d);
            ph[32..36].copy_from_slice(&len.to_be_bytes());
            ph[39] = nh;
            let got = pseudo_header_v6(&Ipv6Addr::from(s), &Ipv6Addr::from(d), IpProtocol(nh), len);
            assert_eq!(got, data(&ph));
        }
        let ones = Ipv6Addr::from([0xff; 16]);
        let got = pseudo_header_v6(&ones, &ones, IpProtocol(0xff), u32::MAX);
        let mut ph = [0xffu8; 40];
        ph[36..39].fill(0);
        assert_eq!(got, data(&ph));
    }

    #[test]
    fn update_u16_matches_recompute() {
        let mut rng = Rng(0xfeed_beef);
        for _ in 0..20_000 {
            let mut hdr = [0u8; 20];
            hdr.iter_mut().for_each(|b| *b = rng.byte());
            hdr[0] = 0x45;
            hdr[10] = 0;
            hdr[11] = 0;
            let c = !data(&hdr);
            hdr[10..12].copy_from_slice(&c.to_be_bytes());
            let w = (rng.next() % 10) as usize * 2;
            if w == 10 {
                continue;
            }
            let old = u16::from_be_bytes([hdr[w], hdr[w + 1]]);
            let new = if rng.next().is_multiple_of(8) { !old } else { rng.next() as u16 };
            let new = if w == 0 { 0x4500 | (new & 0xff) } else { new };
            hdr[w..w + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update_u16(c, old, new);
            hdr[10] = 0;
            hdr[11] = 0;
            assert_eq!(inc, !data(&hdr), "word {w} {old:04x}->{new:04x}");
        }
    }

    #[test]
    fn update_u32_matches_recompute() {
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let mut hdr = [0u8; 20];
            hdr.iter_mut().for_each(|b| *b = rng.byte());
            hdr[0] = 0x45;
            hdr[10..12].fill(0);
            let c = !data(&hdr);
            let at = if rng.next().is_multiple_of(2) { 12 } else { 16 };
            let old = u32::from_be_bytes([hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]]);
            let new = rng.next() as u32;
            hdr[at..at + 4].copy_from_slice(&new.to_be_bytes());
            assert_eq!(update_u32(c, old, new), !data(&hdr));
        }
    }

    #[test]
    fn ipv4_ttl_and_dscp_incremental_match_recompute() {
        let mut rng = Rng(0x0bad_cafe);
        for i in 0..20_000u32 {
            let mut buf = [0u8; 20];
            buf.iter_mut().for_each(|b| *b = rng.byte());
            buf[0] = 0x45;
            buf[2..4].copy_from_slice(&20u16.to_be_bytes());
            if i.is_multiple_of(16) {
                buf[8] = 1 + (i % 3) as u8; // low TTLs, including 1 -> 0
            }
            let mut p = ipv4::Packet::new_unchecked(&mut buf[..]);
            p.fill_checksum();
            let ttl = p.ttl();
            let dscp = rng.byte() & 0x3f;
            let ecn = rng.byte() & 0x3;

            match p.decrement_ttl() {
                Some(t) => assert_eq!(t, ttl - 1),
                None => assert_eq!(ttl, 0),
            }
            let inc = p.checksum();
            p.fill_checksum();
            assert_eq!(inc, p.checksum(), "ttl {ttl}");
            assert!(p.verify_checksum());

            p.rewrite_dscp_ecn(dscp, ecn);
            assert_eq!((p.dscp(), p.ecn()), (dscp, ecn));
            let inc = p.checksum();
            p.fill_checksum();
            assert_eq!(inc, p.checksum(), "dscp {dscp} ecn {ecn}");
        }
    }

    #[test]
    fn ttl_zero_is_left_alone() {
        let mut b = [0u8; 20];
        b.copy_from_slice(&PING_FRAME[14..34]);
        let mut p = ipv4::Packet::new_unchecked(&mut b[..]);
        p.set_ttl(0);
        p.fill_checksum();
        let before = b;
        let mut p = ipv4::Packet::new_unchecked(&mut b[..]);
        assert_eq!(p.decrement_ttl(), None);
        assert_eq!(b, before);
    }
}
