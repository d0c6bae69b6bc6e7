//! `ipsec_steer`: the gateway's XDP program. It classifies every received frame by the interface's
//! role (from the `CONFIG` map) and either redirects it to the AF_XDP socket of its rx queue
//! (`XSKS`), passes it to the kernel, or (NAT keepalives only) drops it.
//!
//! Contract (see `ebpf/README.md` for the full table):
//! - role outside: IP protocol 50, UDP 4500 (ESP-in-UDP or IKE behind the non-ESP marker) and
//!   UDP 500 to an address in `LOCAL_ADDRS_V4`/`V6` are steered; fragments of ESP/UDP datagrams to
//!   a local address are steered (unless `FLAG_FRAGS_TO_KERNEL`); NAT keepalives are dropped
//!   (unless `FLAG_PASS_KEEPALIVES`).
//! - role inside: IPv4/IPv6 whose destination matches `PROTECTED_V4`/`V6` (LPM) is steered.
//! - everything else is passed. Up to two VLAN tags and up to four IPv6 extension headers are
//!   skipped. Truncated or inconsistent headers are passed (and counted as `malformed`): a parser
//!   error must never cost the kernel a packet it would have had without this program.
//! - the redirect uses `bpf_redirect_map(XSKS, rx_queue_index, XDP_PASS)`: a queue without a
//!   socket falls back to the kernel (counted as `pass_no_xsk` in addition to the verdict).
//! - one per-CPU counter per [`Verdict`] in `COUNTERS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, XskMap},
    programs::XdpContext,
};
use ipsec_ebpf_common::{
    AddrV4, AddrV6, Config, LocalAddr, Protected, Verdict, FLAG_FRAGS_TO_KERNEL, FLAG_PASS_KEEPALIVES, IKE_PORT,
    MAX_IPV6_EXT_HEADERS, MAX_LOCAL_ADDRS, MAX_PROTECTED_PREFIXES, MAX_QUEUES, MAX_VLAN_TAGS, NAT_T_PORT, ROLE_INSIDE,
    ROLE_OUTSIDE, VERDICT_COUNT,
};

#[map]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static LOCAL_ADDRS_V4: HashMap<AddrV4, LocalAddr> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
#[map]
static LOCAL_ADDRS_V6: HashMap<AddrV6, LocalAddr> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
#[map]
static PROTECTED_V4: LpmTrie<AddrV4, Protected> = LpmTrie::with_max_entries(MAX_PROTECTED_PREFIXES, 0);
#[map]
static PROTECTED_V6: LpmTrie<AddrV6, Protected> = LpmTrie::with_max_entries(MAX_PROTECTED_PREFIXES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VERDICT_COUNT, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;

/// What to do with a classified packet.
#[derive(Clone, Copy)]
enum Action {
    /// Redirect to the rx queue's XSK (falling back to the kernel).
    Steer(Verdict),
    /// Give it to the kernel.
    Pass(Verdict),
    /// Drop it here.
    Drop(Verdict),
}

/// A header could not be read within the frame, or was inconsistent.
struct Malformed;

#[xdp]
pub fn ipsec_steer(ctx: XdpContext) -> u32 {
    // Errors become XDP_PASS, not XDP_ABORTED: the kernel then sees exactly what it would have
    // seen without this program (ARP, SSH and management keep working whatever our parser thinks).
    match try_ipsec_steer(&ctx) {
        Ok(action) => action,
        Err(action) => action,
    }
}

#[inline(always)]
fn try_ipsec_steer(ctx: &XdpContext) -> Result<u32, u32> {
    let action = match classify(ctx) {
        Ok(action) => action,
        Err(Malformed) => {
            count(Verdict::Malformed);
            return Err(xdp_action::XDP_PASS);
        }
    };
    match action {
        Action::Steer(verdict) => {
            count(verdict);
            match XSKS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_PASS)) {
                Ok(act) => Ok(act),
                Err(fallback) => {
                    count(Verdict::PassNoXsk);
                    Ok(fallback)
                }
            }
        }
        Action::Pass(verdict) => {
            count(verdict);
            Ok(xdp_action::XDP_PASS)
        }
        Action::Drop(verdict) => {
            count(verdict);
            Ok(xdp_action::XDP_DROP)
        }
    }
}

#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(counter) = COUNTERS.get_ptr_mut(verdict.index()) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array: it points at this
        // CPU's u64 slot, valid for the whole program run, and nothing else on this CPU runs
        // concurrently with us (XDP runs with preemption disabled).
        unsafe { *counter += 1 };
    }
}

/// A bounds-checked pointer to a `T` at `offset` bytes into the frame.
///
/// Every header type read through this has alignment 1 (byte arrays only), so the pointer needs
/// no alignment beyond what the frame gives.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

/// Reads a `T` (a byte-array header) at `offset`.
#[inline(always)]
fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Malformed> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `ptr` lie within [data, data_end);
    // `T` is made of byte arrays (alignment 1, every bit pattern valid).
    Ok(unsafe { core::ptr::read_unaligned(ptr) })
}

#[derive(Clone, Copy)]
#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    ethertype: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv6Hdr {
    version_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The first two bytes of every IPv6 extension header this program skips (hop-by-hop, routing,
/// destination options, mobility), and the first four of the fragment header.
#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
    frag_off: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct UdpHdr {
    source: [u8; 2],
    dest: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// The transport part of a packet, after the IP header(s).
struct L4 {
    protocol: u8,
    /// Offset of the transport header in the frame.
    offset: usize,
    /// Bytes of transport header + payload according to the IP header(s).
    len: usize,
    /// Any fragment (first or not).
    fragment: bool,
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<Action, Malformed> {
    let config = match CONFIG.get(0) {
        Some(config) => *config,
        None => return Ok(Action::Pass(Verdict::PassOther)),
    };
    if config.role != ROLE_OUTSIDE && config.role != ROLE_INSIDE {
        return Ok(Action::Pass(Verdict::PassOther));
    }

    let eth: EthHdr = read_at(ctx, 0)?;
    let mut ethertype = be16(eth.ethertype);
    let mut offset = ETH_HLEN;
    // 802.1ad outer + 802.1Q inner (QinQ), or a single tag of either kind.
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let vlan: VlanHdr = read_at(ctx, offset)?;
        ethertype = be16(vlan.ethertype);
        offset += VLAN_HLEN;
    }

    match ethertype {
        ETH_P_IP => classify_v4(ctx, &config, offset),
        ETH_P_IPV6 => classify_v6(ctx, &config, offset),
        _ => Ok(Action::Pass(Verdict::PassOther)),
    }
}

#[inline(always)]
fn classify_v4(ctx: &XdpContext, config: &Config, offset: usize) -> Result<Action, Malformed> {
    let ip: Ipv4Hdr = read_at(ctx, offset)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    let total_len = usize::from(be16(ip.total_len));
    if ihl < IPV4_HLEN || total_len < ihl {
        return Err(Malformed);
    }

    if config.role == ROLE_INSIDE {
        let key = Key::new(32, AddrV4 { octets: ip.dst });
        return Ok(if PROTECTED_V4.get(&key).is_some() {
            Action::Steer(Verdict::InsideProtected)
        } else {
            Action::Pass(Verdict::PassOther)
        });
    }

    let local = LOCAL_ADDRS_V4.get_ptr(AddrV4 { octets: ip.dst }).is_some();
    if !local {
        return Ok(Action::Pass(Verdict::PassOther));
    }
    let frag = be16(ip.frag_off);
    let l4 = L4 {
        protocol: ip.protocol,
        offset: offset + ihl,
        len: total_len - ihl,
        // MF set or a non-zero offset.
        fragment: frag & 0x3fff != 0,
    };
    classify_outside_l4(ctx, config, &l4)
}

#[inline(always)]
fn classify_v6(ctx: &XdpContext, config: &Config, offset: usize) -> Result<Action, Malformed> {
    let ip: Ipv6Hdr = read_at(ctx, offset)?;
    if ip.version_tc_flow[0] >> 4 != 6 {
        return Err(Malformed);
    }

    if config.role == ROLE_INSIDE {
        let key = Key::new(128, AddrV6 { octets: ip.dst });
        return Ok(if PROTECTED_V6.get(&key).is_some() {
            Action::Steer(Verdict::InsideProtected)
        } else {
            Action::Pass(Verdict::PassOther)
        });
    }

    let local = LOCAL_ADDRS_V6.get_ptr(AddrV6 { octets: ip.dst }).is_some();
    if !local {
        return Ok(Action::Pass(Verdict::PassOther));
    }

    let mut next = ip.next_header;
    let mut off = offset + IPV6_HLEN;
    // Bytes after the fixed header, per the header (payload length 0 = jumbogram: not handled).
    let mut remaining = usize::from(be16(ip.payload_len));
    let mut fragment = false;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let hdr_len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let ext: Ipv6ExtHdr = read_at(ctx, off)?;
                next = ext.next_header;
                (usize::from(ext.len) + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let ext: Ipv6ExtHdr = read_at(ctx, off)?;
                next = ext.next_header;
                // Offset (13 bits) << 3 | res (2 bits) | M (1 bit): any non-zero offset or M.
                if be16(ext.frag_off) & 0xfff9 != 0 {
                    fragment = true;
                }
                8
            }
            _ => {
                done = true;
                break;
            }
        };
        if hdr_len > remaining {
            return Err(Malformed);
        }
        remaining -= hdr_len;
        off += hdr_len;
    }
    if !done {
        // More extension headers than we skip: leave it to the kernel.
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_FRAGMENT => {
                return Ok(Action::Pass(Verdict::PassOther));
            }
            _ => {}
        }
    }
    let l4 = L4 { protocol: next, offset: off, len: remaining, fragment };
    classify_outside_l4(ctx, config, &l4)
}

/// Outside role, destination is a local address.
#[inline(always)]
fn classify_outside_l4(ctx: &XdpContext, config: &Config, l4: &L4) -> Result<Action, Malformed> {
    if l4.protocol != IPPROTO_ESP && l4.protocol != IPPROTO_UDP {
        return Ok(Action::Pass(Verdict::PassOther));
    }
    if l4.fragment {
        // A non-first fragment has no ports; steer every fragment of an ESP/UDP datagram to a local
        // address the same way so that one side (engine or kernel) gets them all to reassemble.
        return Ok(if config.flags & FLAG_FRAGS_TO_KERNEL != 0 {
            Action::Pass(Verdict::Fragment)
        } else {
            Action::Steer(Verdict::Fragment)
        });
    }
    if l4.protocol == IPPROTO_ESP {
        return Ok(Action::Steer(Verdict::Esp));
    }

    let udp: UdpHdr = read_at(ctx, l4.offset)?;
    let dport = be16(udp.dest);
    if dport == IKE_PORT {
        return Ok(Action::Steer(Verdict::Ike));
    }
    if dport != NAT_T_PORT {
        return Ok(Action::Pass(Verdict::PassOther));
    }
    let udp_len = usize::from(be16(udp.len));
    if udp_len < UDP_HLEN || udp_len > l4.len {
        return Err(Malformed);
    }
    let payload_len = udp_len - UDP_HLEN;
    let payload = l4.offset + UDP_HLEN;
    if payload_len == 1 {
        // Read the UDP header again with the byte: a 1-byte bounds check compiles to
        // `ptr >= data_end`, which the verifier cannot use for a variable-offset pointer.
        let with_byte: [u8; UDP_HLEN + 1] = read_at(ctx, l4.offset)?;
        if with_byte[UDP_HLEN] == 0xff {
            return Ok(if config.flags & FLAG_PASS_KEEPALIVES != 0 {
                Action::Pass(Verdict::NatKeepalive)
            } else {
                Action::Drop(Verdict::NatKeepalive)
            });
        }
        return Err(Malformed);
    }
    if payload_len < 4 {
        return Err(Malformed);
    }
    let marker: [u8; 4] = read_at(ctx, payload)?;
    Ok(if u32::from_ne_bytes(marker) == 0 { Action::Steer(Verdict::Ike4500) } else { Action::Steer(Verdict::EspUdp) })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
