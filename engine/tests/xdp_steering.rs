//! End-to-end test of the XDP steering program on a veth pair between two network namespaces made
//! for this run (`xdpt<pid>a`, `xdpt<pid>b`; removed on exit, also on failure).
//!
//! Namespace a sends hand-made Ethernet frames (AF_PACKET) to the veth end in namespace b, where
//! the program is attached: first as role outside (native mode), then detached and attached again
//! as role inside (generic mode). After each frame the test reads the per-verdict counters and
//! asserts the exact change: the expected classification, plus `pass_no_xsk` for steered packets
//! (no AF_XDP socket is bound, so the redirect falls back to the kernel), and nothing else. In the
//! outside phase it also binds a copy-mode AF_XDP socket to queue 0 (`insert_xsk`) and checks that
//! steered frames arrive in it byte for byte (and no `pass_no_xsk`), that a passed frame does not,
//! and that after `remove_xsk` the fallback is back. Dropping the loader must detach the program.
//!
//! Addresses: underlay 198.18.0.0/15, inner 203.0.113.0/24, 198.51.100.0/24, 192.0.2.0/24, and for
//! IPv6 the documentation prefix 2001:db8::/32. Frames never leave the two namespaces.
//!
//! Needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN for setns). Without root it prints
//! "SKIPPED: needs root" and passes, unless `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

mod common;
use common::run;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipsec_ebpf_common::Verdict;
use ipsec_engine::xdp::{
    AttachMode, AttachedMode, Counters, Prefix, Role, SteeringConfig, XdpSteering, FLAG_FRAGS_TO_KERNEL,
    FLAG_PASS_KEEPALIVES,
};

const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];
const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const NOT_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
const ADDR6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const ADDR6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// How long to wait for a frame to be counted.
const COUNT_TIMEOUT: Duration = Duration::from_secs(3);

fn can_run() -> bool {
    common::can_run("xdpt", "xdp_steering")
}

fn remove_stale_namespaces() {
    common::remove_stale_namespaces("xdpt", &["a", "b", "p"]);
}

/// Two namespaces joined by a veth pair; deleted (with the veth) on drop.
struct Topology {
    ns_a: String,
    ns_b: String,
    if_a: String,
    if_b: String,
    created: Vec<String>,
}

impl Topology {
    fn new() -> Topology {
        let pid = std::process::id();
        let mut t = Topology {
            ns_a: format!("xdpt{pid}a"),
            ns_b: format!("xdpt{pid}b"),
            if_a: format!("xdpt{pid}a0"),
            if_b: format!("xdpt{pid}b0"),
            created: Vec::new(),
        };
        for ns in [t.ns_a.clone(), t.ns_b.clone()] {
            run(&["ip", "netns", "add", &ns]);
            t.created.push(ns);
        }
        let mac_a = mac_string(MAC_A);
        let mac_b = mac_string(MAC_B);
        #[rustfmt::skip]
        run(&["ip", "-n", &t.ns_a, "link", "add", &t.if_a, "address", &mac_a, "type", "veth",
              "peer", "name", &t.if_b, "netns", &t.ns_b, "address", &mac_b]);
        // No IPv6 on the sending side: no DAD/MLD/RS frames to be counted on b.
        run(&["ip", "netns", "exec", &t.ns_a, "sysctl", "-qw", &format!("net.ipv6.conf.{}.disable_ipv6=1", t.if_a)]);
        run(&["ip", "-n", &t.ns_a, "addr", "add", &format!("{ADDR_A}/24"), "dev", &t.if_a]);
        run(&["ip", "-n", &t.ns_b, "addr", "add", &format!("{ADDR_B}/24"), "dev", &t.if_b]);
        // Static neighbours: replies from b (RST, ICMP errors) must not trigger ARP, whose replies
        // would be counted on b as unexpected `pass_other`.
        #[rustfmt::skip]
        run(&["ip", "-n", &t.ns_b, "neigh", "add", &ADDR_A.to_string(), "lladdr", &mac_a, "dev", &t.if_b,
              "nud", "permanent"]);
        #[rustfmt::skip]
        run(&["ip", "-n", &t.ns_a, "neigh", "add", &ADDR_B.to_string(), "lladdr", &mac_b, "dev", &t.if_a,
              "nud", "permanent"]);
        run(&["ip", "-n", &t.ns_a, "link", "set", &t.if_a, "up"]);
        run(&["ip", "-n", &t.ns_b, "link", "set", &t.if_b, "up"]);
        t
    }

    fn xdp_attached_on_b(&self) -> bool {
        let out = Command::new("ip").args(["-n", &self.ns_b, "link", "show", "dev", &self.if_b]).output().unwrap();
        // "prog/xdp id N" (native) or "prog/xdpgeneric id N" (generic); the interface name itself
        // contains "xdp", so look for the attachment line only.
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Runs `f` on a thread that has entered network namespace `ns`. Sockets and BPF objects made there
/// stay bound to that namespace after the thread ends.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `file` is an open namespace file; setns only changes this (scoped, about to
            // end) thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// An AF_PACKET socket bound to `ifname` (in the calling thread's namespace), for sending only.
fn packet_socket(ifname: &str) -> OwnedFd {
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `cname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(ifindex, 0, "no interface {ifname}");
    // SAFETY: plain socket(2) call; protocol 0 = receive nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind(AF_PACKET {ifname}): {}", std::io::Error::last_os_error());
    fd
}

fn send_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is a valid buffer of `frame.len()` bytes for the duration of the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
}

// ---- a minimal AF_XDP socket (copy mode, rx only) ----------------------------------------------

const XSK_FRAMES: u32 = 16;
const XSK_FRAME_SIZE: u32 = 4096;
/// Entries in each ring (a power of two).
const XSK_RING: u32 = 16;

/// An AF_XDP socket bound to queue 0 of an interface, with its UMEM, fill and rx rings. Enough to
/// see that a redirected frame arrives; the engine's real XSK code lives elsewhere.
struct Xsk {
    fd: OwnedFd,
    umem: *mut libc::c_void,
    umem_len: usize,
    fill: *mut libc::c_void,
    fill_len: usize,
    rx: *mut libc::c_void,
    rx_len: usize,
    offsets: libc::xdp_mmap_offsets,
}

// SAFETY: the mappings are process-wide and owned by this struct alone; moving it to another
// thread moves that ownership.
unsafe impl Send for Xsk {}

fn setsockopt_raw<T>(fd: &OwnedFd, name: libc::c_int, value: &T) {
    // SAFETY: `value` points at a live `T` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SOL_XDP, {name}): {}", std::io::Error::last_os_error());
}

fn mmap_ring(fd: &OwnedFd, len: usize, pgoff: i64) -> *mut libc::c_void {
    // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks `len` and `pgoff`.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            pgoff,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap ring {pgoff:#x}: {}", std::io::Error::last_os_error());
    p
}

impl Xsk {
    /// Binds to queue 0 of `ifname` in the calling thread's namespace.
    fn new(ifname: &str) -> Xsk {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket(AF_XDP): {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a new socket this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };

        let umem_len = (XSK_FRAMES * XSK_FRAME_SIZE) as usize;
        // SAFETY: a fresh private anonymous mapping.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(umem, libc::MAP_FAILED, "mmap umem: {}", std::io::Error::last_os_error());
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: umem_len as u64,
            chunk_size: XSK_FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt_raw(&fd, libc::XDP_UMEM_REG, &reg);
        setsockopt_raw(&fd, libc::XDP_UMEM_FILL_RING, &XSK_RING);
        setsockopt_raw(&fd, libc::XDP_UMEM_COMPLETION_RING, &XSK_RING);
        setsockopt_raw(&fd, libc::XDP_RX_RING, &XSK_RING);

        // SAFETY: all-zero is a valid xdp_mmap_offsets (plain integers).
        let mut offsets: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `offsets` is writable for `optlen` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut offsets as *mut libc::xdp_mmap_offsets).cast(),
                &mut optlen,
            )
        };
        assert_eq!(rc, 0, "getsockopt(XDP_MMAP_OFFSETS): {}", std::io::Error::last_os_error());

        let fill_len = offsets.fr.desc as usize + XSK_RING as usize * 8;
        let fill = mmap_ring(&fd, fill_len, libc::XDP_UMEM_PGOFF_FILL_RING as i64);
        let rx_len = offsets.rx.desc as usize + XSK_RING as usize * std::mem::size_of::<libc::xdp_desc>();
        let rx = mmap_ring(&fd, rx_len, libc::XDP_PGOFF_RX_RING);
        let xsk = Xsk { fd, umem, umem_len, fill, fill_len, rx, rx_len, offsets };

        // Hand every frame to the kernel through the fill ring.
        for i in 0..XSK_RING.min(XSK_FRAMES) {
            // SAFETY: the fill ring's descriptor array has XSK_RING u64 slots at `fr.desc`.
            unsafe {
                let desc = xsk.fill.cast::<u8>().add(xsk.offsets.fr.desc as usize).cast::<u64>();
                *desc.add(i as usize) = u64::from(i * XSK_FRAME_SIZE);
            }
        }
        xsk.ring_u32(xsk.fill, xsk.offsets.fr.producer).store(XSK_RING.min(XSK_FRAMES), Ordering::Release);

        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `cname` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {ifname}");
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: 0,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_xdp and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                xsk.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind(AF_XDP {ifname} queue 0): {}", std::io::Error::last_os_error());
        xsk
    }

    fn ring_u32(&self, ring: *mut libc::c_void, offset: u64) -> &AtomicU32 {
        // SAFETY: `offset` is a producer/consumer offset the kernel gave for this ring: an aligned
        // u32 inside the mapping, shared with the kernel, hence accessed atomically. The mapping
        // lives as long as `self`.
        unsafe { &*ring.cast::<u8>().add(offset as usize).cast::<AtomicU32>() }
    }

    /// The next received frame, if one arrives within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let producer = self.ring_u32(self.rx, self.offsets.rx.producer);
        let consumer = self.ring_u32(self.rx, self.offsets.rx.consumer);
        let deadline = Instant::now() + timeout;
        let cons = consumer.load(Ordering::Relaxed);
        while producer.load(Ordering::Acquire) == cons {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: slot `cons % XSK_RING` of the rx descriptor array was published by the kernel
        // (producer moved past it); the descriptor points inside the UMEM (the kernel only uses
        // addresses we gave it, and len <= frame size).
        let frame = unsafe {
            let descs = self.rx.cast::<u8>().add(self.offsets.rx.desc as usize).cast::<libc::xdp_desc>();
            let desc = std::ptr::read(descs.add((cons % XSK_RING) as usize));
            assert!(desc.addr as usize + desc.len as usize <= self.umem_len, "descriptor outside the UMEM");
            std::slice::from_raw_parts(self.umem.cast::<u8>().add(desc.addr as usize), desc.len as usize).to_vec()
        };
        consumer.store(cons.wrapping_add(1), Ordering::Release);
        Some(frame)
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: each pointer/length pair is a mapping made in `new` and unmapped only here.
        unsafe {
            libc::munmap(self.rx, self.rx_len);
            libc::munmap(self.fill, self.fill_len);
            libc::munmap(self.umem, self.umem_len);
        }
    }
}

// ---- frame construction ---------------------------------------------------------------------

const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;

fn eth(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header (+ `options`, a multiple of 4 bytes) + payload. `frag` is the flags/offset field.
fn ipv4_opts(dst: Ipv4Addr, proto: u8, frag: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + options.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | (hlen / 4) as u8;
    h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&ADDR_A.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv4(dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_opts(dst, proto, 0, &[], payload)
}

fn ipv6(dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&ADDR6_A.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An 8-byte IPv6 extension header (hop-by-hop / destination options with PadN) before `rest`.
fn ext8(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend_from_slice(rest);
    h
}

fn frag6(next: u8, offset_units: u16, more: bool, rest: &[u8]) -> Vec<u8> {
    let field = (offset_units << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&0xdeadbeefu32.to_be_bytes());
    h.extend_from_slice(rest);
    h
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&4500u16.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn esp_payload() -> Vec<u8> {
    // SPI 0x00001234, sequence 1, then 32 bytes of "ciphertext".
    let mut p = vec![0x00, 0x00, 0x12, 0x34, 0, 0, 0, 1];
    p.extend_from_slice(&[0xab; 32]);
    p
}

fn ike_payload() -> Vec<u8> {
    // A 28-byte IKE header (SPIi, SPIr = 0, next payload SA, version 2.0, IKE_SA_INIT, flags I).
    let mut p = vec![0x11; 8];
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&[33, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 28]);
    p
}

fn non_esp_marker(ike: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(ike);
    p
}

fn tcp_syn(dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02;
    h[14..16].copy_from_slice(&1024u16.to_be_bytes());
    h
}

fn icmp_echo() -> Vec<u8> {
    let mut h = vec![8, 0, 0, 0, 0, 1, 0, 1];
    h.extend_from_slice(b"xdp steering test");
    let c = checksum(&h);
    h[2..4].copy_from_slice(&c.to_be_bytes());
    h
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&MAC_A);
    a.extend_from_slice(&ADDR_A.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&a);
    f
}

const ETH_IP: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const P_TCP: u8 = 6;
const P_UDP: u8 = 17;
const P_ESP: u8 = 50;
const P_ICMP: u8 = 1;

// ---- expectations ---------------------------------------------------------------------------

/// The exact counter change expected for one frame.
fn expect(verdict: Verdict, fallback_to_kernel: bool) -> Vec<(Verdict, u64)> {
    let mut v = vec![(verdict, 1)];
    if fallback_to_kernel {
        v.push((Verdict::PassNoXsk, 1));
    }
    v.sort();
    v
}

/// Steered with no socket bound: the classification plus `pass_no_xsk`.
fn steered(verdict: Verdict) -> Vec<(Verdict, u64)> {
    assert!(verdict.is_steered());
    expect(verdict, true)
}

fn not_steered(verdict: Verdict) -> Vec<(Verdict, u64)> {
    expect(verdict, false)
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    want: Vec<(Verdict, u64)>,
}

fn case(name: &'static str, frame: Vec<u8>, want: Vec<(Verdict, u64)>) -> Case {
    Case { name, frame, want }
}

/// Sends each frame, waits until the counters moved as expected (or the timeout), and collects
/// every mismatch so one run reports them all.
fn run_cases(steering: &XdpSteering, sock: &OwnedFd, phase: &str, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let before = steering.counters().expect("read counters");
        send_frame(sock, &c.frame);
        let deadline = Instant::now() + COUNT_TIMEOUT;
        let mut got: Counters;
        loop {
            got = steering.counters().expect("read counters").since(&before);
            if got.nonzero() == c.want || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Anything else arriving late would show up here too.
        std::thread::sleep(Duration::from_millis(20));
        got = steering.counters().expect("read counters").since(&before);
        if got.nonzero() != c.want {
            failures.push(format!("[{phase}] {}: want {:?}, got {:?}", c.name, names(&c.want), names(&got.nonzero())));
        } else {
            println!("[{phase}] {}: {:?} ok", c.name, names(&c.want));
        }
    }
    failures
}

fn names(v: &[(Verdict, u64)]) -> Vec<String> {
    v.iter().map(|(verdict, n)| format!("{}={n}", verdict.name())).collect()
}

fn outside_cases() -> Vec<Case> {
    let esp = esp_payload();
    let ike = ike_payload();
    let local6 = ADDR6_B;
    vec![
        case("ESP (proto 50) to local", eth(&[], ETH_IP, &ipv4(ADDR_B, P_ESP, &esp)), steered(Verdict::Esp)),
        case("ESP to non-local", eth(&[], ETH_IP, &ipv4(NOT_LOCAL, P_ESP, &esp)), not_steered(Verdict::PassOther)),
        case(
            "ESP with IPv4 options",
            eth(&[], ETH_IP, &ipv4_opts(ADDR_B, P_ESP, 0, &[1, 1, 1, 0], &esp)),
            steered(Verdict::Esp),
        ),
        case(
            "UDP 4500 non-zero SPI",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(4500, &esp))),
            steered(Verdict::EspUdp),
        ),
        case(
            "UDP 4500 non-ESP marker (IKE)",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(4500, &non_esp_marker(&ike)))),
            steered(Verdict::Ike4500),
        ),
        case("UDP 500 (IKE)", eth(&[], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(500, &ike))), steered(Verdict::Ike)),
        case(
            "UDP 500 to non-local",
            eth(&[], ETH_IP, &ipv4(NOT_LOCAL, P_UDP, &udp(500, &ike))),
            not_steered(Verdict::PassOther),
        ),
        case(
            "NAT keepalive (UDP 4500, 0xff)",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(4500, &[0xff]))),
            not_steered(Verdict::NatKeepalive),
        ),
        case(
            "UDP 4500 with 2 payload bytes",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(4500, &[1, 2]))),
            not_steered(Verdict::Malformed),
        ),
        case("802.1Q tagged ESP", eth(&[(TPID_8021Q, 100)], ETH_IP, &ipv4(ADDR_B, P_ESP, &esp)), steered(Verdict::Esp)),
        case(
            "QinQ tagged UDP 4500 ESP",
            eth(&[(TPID_8021AD, 10), (TPID_8021Q, 100)], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(4500, &esp))),
            steered(Verdict::EspUdp),
        ),
        case(
            "three VLAN tags (beyond the bound)",
            eth(&[(TPID_8021AD, 10), (TPID_8021Q, 100), (TPID_8021Q, 200)], ETH_IP, &ipv4(ADDR_B, P_ESP, &esp)),
            not_steered(Verdict::PassOther),
        ),
        case("TCP/22", eth(&[], ETH_IP, &ipv4(ADDR_B, P_TCP, &tcp_syn(22))), not_steered(Verdict::PassOther)),
        case("ICMP echo", eth(&[], ETH_IP, &ipv4(ADDR_B, P_ICMP, &icmp_echo())), not_steered(Verdict::PassOther)),
        case("ARP request", arp_request(ADDR_B), not_steered(Verdict::PassOther)),
        case(
            "IPv4 non-first UDP fragment",
            eth(&[], ETH_IP, &ipv4_opts(ADDR_B, P_UDP, 185, &[], &[0x5a; 64])),
            steered(Verdict::Fragment),
        ),
        case(
            "IPv4 first UDP fragment (MF)",
            eth(&[], ETH_IP, &ipv4_opts(ADDR_B, P_UDP, 0x2000, &[], &udp(4500, &esp))),
            steered(Verdict::Fragment),
        ),
        case(
            "IPv4 TCP fragment",
            eth(&[], ETH_IP, &ipv4_opts(ADDR_B, P_TCP, 0x2000, &[], &tcp_syn(22))),
            not_steered(Verdict::PassOther),
        ),
        case(
            "IPv4 IHL < 5",
            eth(&[], ETH_IP, &{
                let mut p = ipv4(ADDR_B, P_ESP, &esp);
                p[0] = 0x44;
                p
            }),
            not_steered(Verdict::Malformed),
        ),
        case("IPv6 ESP to local", eth(&[], ETH_IPV6, &ipv6(local6, P_ESP, &esp)), steered(Verdict::Esp)),
        case(
            "IPv6 hop-by-hop + dest-opts + UDP 4500 ESP",
            eth(&[], ETH_IPV6, &ipv6(local6, 0, &ext8(60, &ext8(P_UDP, &udp(4500, &esp))))),
            steered(Verdict::EspUdp),
        ),
        case(
            "IPv6 UDP 500",
            eth(&[(TPID_8021Q, 7)], ETH_IPV6, &ipv6(local6, P_UDP, &udp(500, &ike))),
            steered(Verdict::Ike),
        ),
        case(
            "IPv6 non-first UDP fragment",
            eth(&[], ETH_IPV6, &ipv6(local6, 44, &frag6(P_UDP, 100, false, &[0x5a; 64]))),
            steered(Verdict::Fragment),
        ),
        case(
            "IPv6 five extension headers (beyond the bound)",
            eth(&[], ETH_IPV6, &ipv6(local6, 0, &ext8(60, &ext8(60, &ext8(60, &ext8(60, &ext8(P_ESP, &esp))))))),
            not_steered(Verdict::PassOther),
        ),
        case("IPv6 TCP/22", eth(&[], ETH_IPV6, &ipv6(local6, P_TCP, &tcp_syn(22))), not_steered(Verdict::PassOther)),
        case(
            "IPv6 ESP to non-local",
            eth(&[], ETH_IPV6, &ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 99), P_ESP, &esp)),
            not_steered(Verdict::PassOther),
        ),
        case(
            "truncated IPv4 header",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_ESP, &esp)[..10]),
            not_steered(Verdict::Malformed),
        ),
    ]
}

/// With `FLAG_PASS_KEEPALIVES | FLAG_FRAGS_TO_KERNEL`: both go to the kernel (no redirect attempt).
fn outside_flag_cases() -> Vec<Case> {
    vec![
        case(
            "NAT keepalive, pass flag",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(4500, &[0xff]))),
            not_steered(Verdict::NatKeepalive),
        ),
        case(
            "IPv4 UDP fragment, frags-to-kernel flag",
            eth(&[], ETH_IP, &ipv4_opts(ADDR_B, P_UDP, 185, &[], &[0x5a; 64])),
            not_steered(Verdict::Fragment),
        ),
        case("ESP still steered", eth(&[], ETH_IP, &ipv4(ADDR_B, P_ESP, &esp_payload())), steered(Verdict::Esp)),
    ]
}

fn inside_cases() -> Vec<Case> {
    let v4 = |a, b, c, d| Ipv4Addr::new(a, b, c, d);
    let payload = icmp_echo();
    vec![
        case(
            "to 203.0.113.7 (protected /24)",
            eth(&[], ETH_IP, &ipv4(v4(203, 0, 113, 7), P_ICMP, &payload)),
            steered(Verdict::InsideProtected),
        ),
        case(
            "to 192.0.2.200 (protected /25)",
            eth(&[], ETH_IP, &ipv4(v4(192, 0, 2, 200), P_TCP, &tcp_syn(443))),
            steered(Verdict::InsideProtected),
        ),
        case(
            "to 192.0.2.5 (outside the /25)",
            eth(&[], ETH_IP, &ipv4(v4(192, 0, 2, 5), P_TCP, &tcp_syn(443))),
            not_steered(Verdict::PassOther),
        ),
        case(
            "to 198.51.100.7 (unprotected)",
            eth(&[], ETH_IP, &ipv4(v4(198, 51, 100, 7), P_ICMP, &payload)),
            not_steered(Verdict::PassOther),
        ),
        case(
            "802.1Q tagged to 203.0.113.9",
            eth(&[(TPID_8021Q, 42)], ETH_IP, &ipv4(v4(203, 0, 113, 9), P_UDP, &udp(53, b"q"))),
            steered(Verdict::InsideProtected),
        ),
        case(
            "non-first fragment to 203.0.113.7",
            eth(&[], ETH_IP, &ipv4_opts(v4(203, 0, 113, 7), P_UDP, 185, &[], &[0x5a; 64])),
            steered(Verdict::InsideProtected),
        ),
        case(
            "to 2001:db8:100::7 (protected /48)",
            eth(&[], ETH_IPV6, &ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7), P_TCP, &tcp_syn(443))),
            steered(Verdict::InsideProtected),
        ),
        case(
            "to 2001:db8:200::7 (unprotected)",
            eth(&[], ETH_IPV6, &ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 7), P_TCP, &tcp_syn(443))),
            not_steered(Verdict::PassOther),
        ),
        case(
            "ESP to the gateway (not a protected subnet)",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_ESP, &esp_payload())),
            not_steered(Verdict::PassOther),
        ),
        case("ARP request", arp_request(ADDR_B), not_steered(Verdict::PassOther)),
        case(
            "TCP/22 to the gateway",
            eth(&[], ETH_IP, &ipv4(ADDR_B, P_TCP, &tcp_syn(22))),
            not_steered(Verdict::PassOther),
        ),
    ]
}

#[test]
fn xdp_steering_on_veth() {
    if !can_run() {
        return;
    }
    remove_stale_namespaces();
    let topo = Topology::new();
    let sock = in_netns(&topo.ns_a, || packet_socket(&topo.if_a));
    let mut failures = Vec::new();

    // Phase 1: role outside, attached with Auto (native on veth).
    let mut outside = SteeringConfig::new(Role::Outside);
    outside.local_addrs = vec![IpAddr::V4(ADDR_B), IpAddr::V6(ADDR6_B)];
    let mut steering = in_netns(&topo.ns_b, || {
        let mut s = XdpSteering::load(&outside).expect("load (outside)");
        let mode = s.attach(&topo.if_b, AttachMode::Auto).expect("attach (outside)");
        assert_eq!(mode, AttachedMode::Native, "veth supports native XDP");
        s
    });
    assert!(topo.xdp_attached_on_b(), "ip link shows no XDP program after attach");
    failures.extend(run_cases(&steering, &sock, "outside/native", &outside_cases()));

    // With an AF_XDP socket on queue 0: steered frames arrive in it (no pass_no_xsk), others don't.
    let xsk = in_netns(&topo.ns_b, || Xsk::new(&topo.if_b));
    steering.insert_xsk(0, xsk.fd.as_raw_fd()).expect("insert_xsk");
    let esp_frame = eth(&[], ETH_IP, &ipv4(ADDR_B, P_ESP, &esp_payload()));
    let ike_frame = eth(&[(TPID_8021Q, 100)], ETH_IP, &ipv4(ADDR_B, P_UDP, &udp(500, &ike_payload())));
    let ssh_frame = eth(&[], ETH_IP, &ipv4(ADDR_B, P_TCP, &tcp_syn(22)));
    let with_xsk = [
        (case("ESP into the XSK", esp_frame.clone(), not_steered(Verdict::Esp)), true),
        (case("tagged IKE into the XSK", ike_frame, not_steered(Verdict::Ike)), true),
        (case("TCP/22 not into the XSK", ssh_frame, not_steered(Verdict::PassOther)), false),
    ];
    for (c, arrives) in &with_xsk {
        failures.extend(run_cases(&steering, &sock, "outside/xsk", std::slice::from_ref(c)));
        let got = xsk.recv(if *arrives { COUNT_TIMEOUT } else { Duration::from_millis(200) });
        match (arrives, got) {
            (true, Some(frame)) if frame == c.frame => println!("[outside/xsk] {}: frame received intact", c.name),
            (true, Some(frame)) => {
                failures.push(format!("[outside/xsk] {}: XSK got a different frame {frame:02x?}", c.name))
            }
            (true, None) => failures.push(format!("[outside/xsk] {}: nothing arrived in the XSK", c.name)),
            (false, None) => {}
            (false, Some(_)) => failures.push(format!("[outside/xsk] {}: arrived in the XSK", c.name)),
        }
    }
    steering.remove_xsk(0).expect("remove_xsk");
    drop(xsk);
    failures.extend(run_cases(
        &steering,
        &sock,
        "outside/xsk-removed",
        &[case("ESP after remove_xsk", esp_frame, steered(Verdict::Esp))],
    ));

    steering.set_config(Role::Outside, FLAG_PASS_KEEPALIVES | FLAG_FRAGS_TO_KERNEL).expect("set flags");
    failures.extend(run_cases(&steering, &sock, "outside/flags", &outside_flag_cases()));
    println!("outside counters: {}", steering.counters().unwrap());

    drop(steering);
    assert!(!topo.xdp_attached_on_b(), "XDP program still attached after drop");

    // Phase 2: role inside, generic (SKB) mode.
    let mut inside = SteeringConfig::new(Role::Inside);
    inside.protected = vec![
        Prefix::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 0)), 24),
        Prefix::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 128)), 25),
        Prefix::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0)), 48),
    ];
    let steering = in_netns(&topo.ns_b, || {
        let mut s = XdpSteering::load(&inside).expect("load (inside)");
        let mode = s.attach(&topo.if_b, AttachMode::Generic).expect("attach (inside)");
        assert_eq!(mode, AttachedMode::Generic);
        s
    });
    assert!(topo.xdp_attached_on_b(), "ip link shows no XDP program after attach");
    failures.extend(run_cases(&steering, &sock, "inside/generic", &inside_cases()));
    println!("inside counters: {}", steering.counters().unwrap());
    drop(steering);
    assert!(!topo.xdp_attached_on_b(), "XDP program still attached after drop");

    assert!(failures.is_empty(), "{} misclassified:\n{}", failures.len(), failures.join("\n"));
}
