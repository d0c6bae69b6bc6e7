//! The AF_PACKET backend on its own (root): a veth pair `p0`–`p1` in a namespace made for this run
//! (`afio<pid>n`, removed on exit), an [`AfPacketIo`] on `p1` with the inside steering filter
//! (protected 198.51.100.0/24) and a small ring (4 blocks of 128 KiB), frames injected on `p0`
//! with a raw socket.
//!
//! Checks: 3000 frames of 60..1514 bytes, sent in rounds of 150, come out of `recv` in order and
//! byte for byte, across many block retirements and ring wrap-arounds, bursts never over
//! `BURST`; frames the filter rejects (other destinations, ARP) never show up; a 5000-byte frame
//! is counted as `rx_oversize` and not delivered; frames sent with `dispatch` arrive on `p0` in
//! order; frames leaving `p1` from another socket match the filter but are not received
//! (PACKET_IGNORE_OUTGOING); every frame returns to the pool.
//!
//! Needs root. Without root it prints "SKIPPED: ..." and passes, unless
//! `IPSEC_REQUIRE_ROOT_TESTS=1`, where it fails.

mod common;
use common::netns::{in_netns, packet_socket};
use common::run;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use ipsec_engine::afpacket::{AfPacketIo, AfPacketOptions, FanoutGroups, PortSpec};
use ipsec_engine::io::{Disposition, FrameIo, BURST};
use ipsec_engine::xdp::{Prefix, Role, SteeringConfig};

const P1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// An Ethernet + IPv4 frame of `len` bytes to `dst`, numbered `seq` (in the IPv4 ID and payload).
fn frame(seq: u32, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&P1_MAC);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    let total = (len - 14) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[192, 0, 2, 2]);
    ip[16..20].copy_from_slice(&dst.octets());
    for (k, b) in ip[20..].iter_mut().enumerate() {
        *b = (seq as usize * 7 + k) as u8;
    }
    if ip.len() >= 24 {
        ip[20..24].copy_from_slice(&seq.to_be_bytes());
    }
    f
}

fn size_of(seq: u32) -> usize {
    [60, 1514, 98, 700, 1400, 64, 1200, 333][seq as usize % 8]
}

#[test]
fn afpacket_ring_filter_and_tx() {
    if !common::can_run("afio", "afpacket_io") {
        return;
    }
    common::remove_stale_namespaces("afio", &["n", "p"]);
    let ns = Ns(format!("afio{}n", std::process::id()));
    run(&["ip", "netns", "add", &ns.0]);
    run(&["ip", "-n", &ns.0, "link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    run(&["ip", "-n", &ns.0, "link", "set", "p1", "address", "02:00:00:00:00:01"]);
    for d in ["p0", "p1"] {
        run(&["ip", "-n", &ns.0, "link", "set", d, "mtu", "9000"]);
        run(&["ip", "-n", &ns.0, "link", "set", d, "up"]);
    }

    in_netns(&ns.0, || {
        let mut steering = SteeringConfig::new(Role::Inside);
        steering.protected = vec![Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)), 24)];
        let opts = AfPacketOptions::sized(256, 16);
        assert_eq!(opts.ring_blocks, 4);
        let spec = PortSpec { interface: "p1", queue: 0, steering: &steering, fanout: false };
        let mut io = AfPacketIo::open(&[spec], &opts, &mut FanoutGroups::default()).expect("open AF_PACKET on p1");
        let pool = io.free_frames();
        let inject = packet_socket("p0");
        let send = |f: &[u8]| {
            // SAFETY: `f` is a valid buffer of `f.len()` bytes for the call.
            let n = unsafe { libc::send(inject.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(n, f.len() as isize, "inject: {}", std::io::Error::last_os_error());
        };
        let protected = Ipv4Addr::new(198, 51, 100, 7);
        let mut burst = <AfPacketIo as FrameIo>::Burst::default();
        let drops = [Disposition::Drop; BURST];

        // Receive: 3000 frames in rounds, with rejected frames mixed in.
        let (total, round) = (3000u32, 150u32);
        let mut next = 0u32;
        let mut max_burst = 0;
        for r in 0..total / round {
            for seq in r * round..(r + 1) * round {
                send(&frame(seq, protected, size_of(seq)));
                if seq % 50 == 0 {
                    send(&frame(seq, Ipv4Addr::new(203, 0, 113, 9), 200)); // not protected
                    let mut arp = vec![0xffu8; 42];
                    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                    send(&arp);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while next < (r + 1) * round {
                assert!(Instant::now() < deadline, "round {r}: only {next} frames received");
                let n = io.recv(0, &mut burst);
                if n == 0 {
                    io.wait(5);
                    continue;
                }
                max_burst = max_burst.max(n);
                io.with_frames(&mut burst, |frames| {
                    for (buf, len) in frames.iter() {
                        let want = frame(next, protected, size_of(next));
                        assert_eq!(*len, want.len(), "frame {next}: length");
                        assert!(buf[..*len] == want[..], "frame {next}: contents differ");
                        next += 1;
                    }
                });
                io.dispatch(&mut burst, &drops[..n]);
            }
        }
        assert_eq!(next, total);
        assert!(max_burst <= BURST && max_burst > 1, "bursts of at most {BURST}: {max_burst}");
        assert_eq!(io.counters().rx_oversize, 0);

        // Oversize: a 5000-byte frame (MTU 9000) does not fit a 4 KiB frame.
        send(&frame(total, protected, 5000));
        send(&frame(total + 1, protected, 100));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.is_empty() && Instant::now() < deadline {
            let n = io.recv(0, &mut burst);
            if n == 0 {
                io.wait(5);
                continue;
            }
            io.with_frames(&mut burst, |frames| got.extend(frames.iter().map(|(_, l)| *l)));
            io.dispatch(&mut burst, &drops[..n]);
        }
        assert_eq!(got, vec![100], "only the small frame is delivered");
        assert_eq!(io.counters().rx_oversize, 1);

        // Transmit: 40 frames out of p1 arrive on p0, and are not read back on p1.
        let cap = packet_socket("p0");
        let n = io.alloc(0, 40, &mut burst);
        assert_eq!(n, 40);
        let mut disp = [Disposition::Drop; BURST];
        io.with_frames(&mut burst, |frames| {
            for (k, (buf, _)) in frames.iter_mut().enumerate() {
                let f = frame(10_000 + k as u32, protected, size_of(k as u32));
                buf[..f.len()].copy_from_slice(&f);
                disp[k] = Disposition::Send { port: 0, len: f.len() };
            }
        });
        disp[39] = Disposition::Drop;
        io.dispatch(&mut burst, &disp[..n]);
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(3);
        while seen.len() < 39 && Instant::now() < deadline {
            // SAFETY: `buf` is writable for its length.
            let r = unsafe { libc::recv(cap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r > 0 && buf[12..14] == [0x08, 0x00] && buf[..6] == P1_MAC {
                seen.push(u32::from_be_bytes(buf[34..38].try_into().unwrap()));
            }
        }
        assert_eq!(seen, (10_000..10_039).collect::<Vec<_>>(), "transmitted frames on p0, in order");
        assert_eq!(io.counters().tx_ring_full, 0);
        // Outgoing frames of others on p1 (the kernel's, another program's) match the filter but
        // are not received (PACKET_IGNORE_OUTGOING); the socket's own never are.
        let other = packet_socket("p1");
        for k in 0..5 {
            let f = frame(20_000 + k, protected, 300);
            // SAFETY: `f` is a valid buffer of `f.len()` bytes for the call.
            let r = unsafe { libc::send(other.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(r, f.len() as isize);
        }
        std::thread::sleep(Duration::from_millis(50));
        io.wait(20);
        assert_eq!(io.recv(0, &mut burst), 0, "outgoing frames on p1 are not received");
        assert_eq!(io.free_frames(), pool, "every frame is back in the pool");
    });
}
