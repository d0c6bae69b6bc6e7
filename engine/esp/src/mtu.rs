//! What to do with an inner packet that is too large for its tunnel (RFC 4301 §8, RFC 1191,
//! RFC 8201).
//!
//! The tunnel's inner MTU comes from [`OutboundSa::inner_mtu`](crate::OutboundSa::inner_mtu)
//! (outer link or configured path MTU minus this SA's overhead). [`mtu_action`] then decides, from
//! the inner header alone, between sending the packet as it is, fragmenting it before encryption
//! (IPv4 without DF: each fragment becomes its own ESP packet, so the peer never reassembles outer
//! fragments) and answering the sender with an ICMP error carrying the inner MTU (IPv4 with DF:
//! "fragmentation needed", type 3 code 4; IPv6: "packet too big", type 2), the sender then
//! lowering its path MTU. The I/O layer carries the action out (`ipsec_wire::frag`,
//! `ipsec_wire::icmpv4::emit_error`, `ipsec_wire::icmpv6::emit_error`).
//!
//! A pure function of a few header fields: no allocation, no state.

use ipsec_wire::{IpSummary, IpVersion};

/// Smallest MTU an IPv4 link may have (RFC 791): fragmentation below it is refused.
pub const IPV4_MIN_MTU: usize = 68;
/// Smallest MTU an IPv6 link may have (RFC 8200 §5).
pub const IPV6_MIN_MTU: usize = 1280;

/// The decision for one inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtuAction {
    /// Fits the tunnel: encapsulate as it is.
    Fits,
    /// IPv4 without DF: fragment to at most `mtu` bytes per fragment, then encapsulate each.
    Fragment { mtu: u16 },
    /// IPv4 with DF, or IPv6: drop and tell the sender the tunnel's inner MTU `mtu` (ICMPv4
    /// fragmentation needed / ICMPv6 packet too big).
    TooBig { mtu: u16 },
    /// Too big, and the MTU is below what the protocol allows to report or fragment to (IPv4
    /// below 68 bytes): drop.
    Drop,
}

/// Decides what happens to an inner packet of `len` bytes (its IP length, link padding excluded)
/// described by `summary`, for a tunnel whose inner MTU is `inner_mtu`.
///
/// `dont_fragment` is the IPv4 DF bit (ignored for IPv6, which routers never fragment).
pub fn mtu_action(summary: &IpSummary, len: usize, dont_fragment: bool, inner_mtu: usize) -> MtuAction {
    if len <= inner_mtu {
        return MtuAction::Fits;
    }
    let mtu = inner_mtu.min(usize::from(u16::MAX)) as u16;
    match summary.version {
        IpVersion::V4 if inner_mtu < IPV4_MIN_MTU => MtuAction::Drop,
        IpVersion::V4 if dont_fragment => MtuAction::TooBig { mtu },
        IpVersion::V4 => MtuAction::Fragment { mtu },
        // RFC 8201 §4: a "packet too big" reporting less than 1280 is ignored by hosts (they
        // keep 1280): report the real value anyway, so a capture shows what happened.
        IpVersion::V6 => MtuAction::TooBig { mtu },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipsec_wire::{parse_ip, IpProtocol};

    fn v4(len: usize, df: bool) -> std::vec::Vec<u8> {
        let mut p = std::vec![0u8; len];
        let mut ip = ipsec_wire::ipv4::Packet::new_unchecked(&mut p[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(len as u16);
        ip.clear_flags();
        ip.set_dont_frag(df);
        ip.set_ttl(64);
        ip.set_next_header(IpProtocol::UDP);
        ip.set_src_addr([192, 0, 2, 1].into());
        ip.set_dst_addr([198, 51, 100, 1].into());
        ip.fill_checksum();
        p
    }

    #[test]
    fn decides_by_size_df_and_version() {
        for (len, df, mtu, want) in [
            (1400, true, 1400, MtuAction::Fits),
            (1401, true, 1400, MtuAction::TooBig { mtu: 1400 }),
            (1401, false, 1400, MtuAction::Fragment { mtu: 1400 }),
            (100, false, 60, MtuAction::Drop),
        ] {
            let p = v4(len, df);
            let s = parse_ip(&p).unwrap();
            assert_eq!(mtu_action(&s, len, df, mtu), want, "len {len} df {df} mtu {mtu}");
        }
        let mut p = std::vec![0u8; 1500];
        let mut ip = ipsec_wire::ipv6::Packet::new_unchecked(&mut p[..]);
        ip.set_version(6);
        ip.set_payload_len(1460);
        ip.set_next_header(IpProtocol::UDP);
        ip.set_hop_limit(64);
        let s = parse_ip(&p).unwrap();
        assert_eq!(mtu_action(&s, 1500, false, 1500), MtuAction::Fits);
        assert_eq!(mtu_action(&s, 1500, false, 1418), MtuAction::TooBig { mtu: 1418 });
    }
}
