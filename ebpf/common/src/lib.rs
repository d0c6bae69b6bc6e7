//! Types shared by the XDP program `ipsec_steer` (crate `ipsec-xdp`, kernel side) and the engine's
//! loader (`ipsec_engine::xdp`, userspace).
//!
//! Contract:
//! - Every type stored in a BPF map is `#[repr(C)]`, has no implicit padding (any gap is an
//!   explicit `_pad` field, zeroed) and the same size and layout on both sides: the kernel side is
//!   `bpfel-unknown-none` (little-endian, 64-bit), userspace is x86_64/aarch64 (little-endian,
//!   64-bit). Sizes are pinned by compile-time assertions below.
//! - Addresses in map keys are in network byte order (octets as on the wire), so the program can
//!   copy them straight out of the packet.
//! - [`Verdict`] indices are stable: the counters map is indexed by them, and userspace reads it
//!   by the same indices. Append new verdicts at the end; never renumber.
//! - Map names (the `*_MAP` constants) are the symbol names in the object file; the loader looks
//!   the maps up by these names.
//! - `no_std`, no dependencies by default. The `user` feature adds `unsafe impl aya::Pod` so the
//!   userspace loader (aya `=0.14.0`) can put these types in maps.
#![no_std]

/// The name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "ipsec_steer";

/// `XskMap`: rx queue index -> AF_XDP socket.
pub const XSKS_MAP: &str = "XSKS";
/// `Array<Config>` with one entry (index 0).
pub const CONFIG_MAP: &str = "CONFIG";
/// `HashMap<AddrV4, LocalAddr>`: the gateway's own IPv4 addresses on the outside interface.
pub const LOCAL_ADDRS_V4_MAP: &str = "LOCAL_ADDRS_V4";
/// `HashMap<AddrV6, LocalAddr>`: the gateway's own IPv6 addresses on the outside interface.
pub const LOCAL_ADDRS_V6_MAP: &str = "LOCAL_ADDRS_V6";
/// `LpmTrie<AddrV4, Protected>`: protected remote IPv4 subnets (inside role).
pub const PROTECTED_V4_MAP: &str = "PROTECTED_V4";
/// `LpmTrie<AddrV6, Protected>`: protected remote IPv6 subnets (inside role).
pub const PROTECTED_V6_MAP: &str = "PROTECTED_V6";
/// `PerCpuArray<u64>` indexed by [`Verdict`].
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Capacity of the `XSKS` map (rx queues).
pub const MAX_QUEUES: u32 = 64;
/// Capacity of each `LOCAL_ADDRS_*` map.
pub const MAX_LOCAL_ADDRS: u32 = 64;
/// Capacity of each `PROTECTED_*` map.
pub const MAX_PROTECTED_PREFIXES: u32 = 4096;
/// How many IPv6 extension headers the program skips before giving up (counted as `pass_other`).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// How many VLAN tags (802.1Q / 802.1ad) the program skips.
pub const MAX_VLAN_TAGS: usize = 2;

/// `Config::role`: not configured; every packet is passed to the kernel (`pass_other`).
pub const ROLE_NONE: u32 = 0;
/// `Config::role`: underlay interface: ESP, ESP-in-UDP and IKE to a local address are steered.
pub const ROLE_OUTSIDE: u32 = 1;
/// `Config::role`: protected-side interface: packets to a protected remote subnet are steered.
pub const ROLE_INSIDE: u32 = 2;

/// `Config::flags`: pass fragments (outside role) to the kernel instead of steering them.
///
/// Default (flag clear): every IPv4/IPv6 fragment, first or not, of an ESP or UDP datagram to a
/// local address goes to the XSK so that all fragments of one datagram take the same path and the
/// engine reassembles. With the flag set they are passed and the kernel reassembles them (then UDP
/// 500/4500 reach a kernel socket, if any, and ESP the kernel's own stack).
pub const FLAG_FRAGS_TO_KERNEL: u32 = 1 << 0;
/// `Config::flags`: pass NAT keepalives (UDP 4500, one byte 0xff) to the kernel instead of
/// dropping them in XDP.
pub const FLAG_PASS_KEEPALIVES: u32 = 1 << 1;

/// The UDP port of IKE (RFC 7296).
pub const IKE_PORT: u16 = 500;
/// The UDP port of NAT-traversal IKE and ESP-in-UDP (RFC 3948).
pub const NAT_T_PORT: u16 = 4500;

/// Value of the `CONFIG` map (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of `ROLE_*`.
    pub role: u32,
    /// A set of `FLAG_*`.
    pub flags: u32,
}

/// An IPv4 address in network byte order: key of `LOCAL_ADDRS_V4`, data of `PROTECTED_V4` keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrV4 {
    pub octets: [u8; 4],
}

/// An IPv6 address in network byte order: key of `LOCAL_ADDRS_V6`, data of `PROTECTED_V6` keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrV6 {
    pub octets: [u8; 16],
}

/// Value of the `LOCAL_ADDRS_*` maps (presence is what matters; `flags` is reserved, zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalAddr {
    pub flags: u32,
}

/// Value of the `PROTECTED_*` LPM tries. The key is the map library's LPM key
/// (`{ prefix_len: u32, data: AddrV4/AddrV6 }`, packed). `policy` is an opaque tag the control
/// plane may use (e.g. a policy index); the program only tests for presence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protected {
    pub policy: u32,
}

/// What the program decided for a packet: the index into `COUNTERS`.
///
/// Steered verdicts (`is_steered()`) are redirected to the XSK of the packet's rx queue; when that
/// queue has no socket the packet falls back to the kernel and `PassNoXsk` is counted as well, so
/// the classification counters count every packet classified, bound socket or not.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Outside: IP protocol 50 to a local address. Steered.
    Esp = 0,
    /// Outside: UDP to port 4500 (local address) whose first four payload bytes are non-zero. Steered.
    EspUdp = 1,
    /// Outside: UDP to port 500 (local address). Steered (workers rate-limit and punt to control).
    Ike = 2,
    /// Outside: UDP to port 4500 (local address) with the four-zero-byte non-ESP marker. Steered.
    Ike4500 = 3,
    /// Outside: NAT keepalive (UDP 4500, one payload byte 0xff). Dropped (or passed with
    /// `FLAG_PASS_KEEPALIVES`).
    NatKeepalive = 4,
    /// Outside: a fragment of an ESP or UDP datagram to a local address. Steered (or passed with
    /// `FLAG_FRAGS_TO_KERNEL`).
    Fragment = 5,
    /// Inside: destination in a protected remote subnet. Steered.
    InsideProtected = 6,
    /// Anything else (ARP, ND, management, SSH, unconfigured role ...). Passed.
    PassOther = 7,
    /// Counted in addition to a steered verdict when the rx queue had no XSK: passed to the kernel.
    PassNoXsk = 8,
    /// Truncated or inconsistent headers (e.g. UDP 4500 with 1..3 payload bytes that are no
    /// keepalive, IPv4 IHL < 5). Passed to the kernel, which sees what it would see without XDP.
    Malformed = 9,
}

/// Number of [`Verdict`]s: the size of the `COUNTERS` map.
pub const VERDICT_COUNT: u32 = 10;

impl Verdict {
    /// Every verdict, in index order.
    pub const ALL: [Verdict; VERDICT_COUNT as usize] = [
        Verdict::Esp,
        Verdict::EspUdp,
        Verdict::Ike,
        Verdict::Ike4500,
        Verdict::NatKeepalive,
        Verdict::Fragment,
        Verdict::InsideProtected,
        Verdict::PassOther,
        Verdict::PassNoXsk,
        Verdict::Malformed,
    ];

    /// The index of this verdict in `COUNTERS`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// A stable snake_case name (for metrics and logs).
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Esp => "esp",
            Verdict::EspUdp => "esp_udp",
            Verdict::Ike => "ike",
            Verdict::Ike4500 => "ike_4500",
            Verdict::NatKeepalive => "nat_keepalive",
            Verdict::Fragment => "fragment",
            Verdict::InsideProtected => "inside_protected",
            Verdict::PassOther => "pass_other",
            Verdict::PassNoXsk => "pass_no_xsk",
            Verdict::Malformed => "malformed",
        }
    }

    /// The verdict at `index`, if any.
    pub const fn from_index(index: u32) -> Option<Verdict> {
        if index < VERDICT_COUNT {
            Some(Verdict::ALL[index as usize])
        } else {
            None
        }
    }

    /// Whether packets of this verdict are redirected to an XSK (subject to the config flags
    /// for `Fragment` and to a socket being bound on the queue).
    pub const fn is_steered(self) -> bool {
        matches!(
            self,
            Verdict::Esp
                | Verdict::EspUdp
                | Verdict::Ike
                | Verdict::Ike4500
                | Verdict::Fragment
                | Verdict::InsideProtected
        )
    }
}

// Layout pins: both sides compile these, so a change that alters a map's key or value size fails
// the build instead of silently corrupting lookups.
const _: () = assert!(core::mem::size_of::<Config>() == 8);
const _: () = assert!(core::mem::size_of::<AddrV4>() == 4);
const _: () = assert!(core::mem::size_of::<AddrV6>() == 16);
const _: () = assert!(core::mem::size_of::<LocalAddr>() == 4);
const _: () = assert!(core::mem::size_of::<Protected>() == 4);
const _: () = assert!(Verdict::ALL.len() == VERDICT_COUNT as usize);

#[cfg(feature = "user")]
mod pod {
    use super::{AddrV4, AddrV6, Config, LocalAddr, Protected};

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers / integer arrays with no
    // padding (sizes asserted above), so every bit pattern is a valid value and every byte is
    // initialised.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Protected {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_indices_are_dense_and_stable() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.index() as usize, i);
            assert_eq!(Verdict::from_index(i as u32), Some(*v));
        }
        assert_eq!(Verdict::from_index(VERDICT_COUNT), None);
        // Pinned: userspace dashboards and the test rely on these.
        assert_eq!(Verdict::Esp.index(), 0);
        assert_eq!(Verdict::PassNoXsk.index(), 8);
        assert_eq!(Verdict::Malformed.name(), "malformed");
    }

    #[test]
    fn names_are_unique() {
        for a in Verdict::ALL {
            for b in Verdict::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
