//! Traffic generator and sink of `perf-lab xdp`: plain UDP sockets in the generator and sink
//! namespaces, driven in bursts with `sendmmsg` / `recvmmsg`.
//!
//! Every datagram carries, from the first byte of its UDP payload: a magic word and the trial's
//! id (`u32` each, packets of earlier trials are ignored), its sequence number (`u64`) and the
//! sender's `CLOCK_MONOTONIC` time in nanoseconds (`u64`), little-endian. Generator and sink run
//! on the same host, so `now − timestamp` at the sink is the one-way latency through both
//! gateways (and both kernels' UDP paths), recorded into an HdrHistogram. The sink keeps a bitmap
//! of sequence numbers: loss is 1 − distinct received ÷ sent, duplicates are counted apart.
//!
//! Rates: `None` sends as fast as `sendmmsg` accepts (bursts of 64); `Some(pps)` paces with a
//! token bucket (bursts of at most 16, sleeping with a 1 ns timer slack between them).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::netns;

const MAGIC: u32 = 0x7078_6470; // "pxdp"
const HEADER: usize = 24;
const IP_UDP: usize = 28;
pub const PORT: u16 = 9000;
const MAX_BURST: usize = 64;
const PACED_BURST: usize = 16;

/// What one trial measured.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Seconds the generator sent for.
    pub seconds: f64,
    pub sent: u64,
    /// Distinct sequence numbers received.
    pub received: u64,
    pub duplicates: u64,
    /// IP bytes (UDP payload + 28) of the packets received.
    pub bytes: u64,
    /// The sink kernel's UDP receive-buffer drops during the trial (part of `sent − received`).
    pub sink_drops: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Trial {
    pub fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
    pub fn delivered_pps(&self) -> f64 {
        self.received as f64 / self.seconds
    }
    pub fn delivered_gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - (self.received as f64 / self.sent as f64).min(1.0)
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: `value` is a live c_int and the length passed is its size.
    unsafe {
        libc::setsockopt(fd, level, name, (&value as *const i32).cast(), std::mem::size_of::<i32>() as libc::socklen_t)
    };
}

/// UDP receive-buffer errors of the calling thread's namespace (`/proc/thread-self/net/snmp`).
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// One trial: a sink in `sink_ns`, a generator in `gen_ns` sending `pattern` (IP packet sizes,
/// cycled) at `rate` packets/s (`None`: as fast as possible) for `seconds`.
pub fn trial(
    gen_ns: &str,
    sink_ns: &str,
    pattern: &[usize],
    rate: Option<f64>,
    seconds: f64,
    id: u32,
) -> Result<Trial, String> {
    if let Some(&s) = pattern.iter().find(|&&s| !(IP_UDP + HEADER..=1600).contains(&s)) {
        return Err(format!("packet size {s} outside {}..=1600", IP_UDP + HEADER));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let sink = {
        let (ns, stop) = (sink_ns.to_string(), stop.clone());
        std::thread::spawn(move || sink(&ns, id, stop, ready_tx))
    };
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = sink.join();
            return Err(e);
        }
        Err(_) => return Err("sink did not start".into()),
    }
    let (ns, pat) = (gen_ns.to_string(), pattern.to_vec());
    let gen = std::thread::spawn(move || generate(&ns, &pat, rate, seconds, id));
    let sent = gen.join().map_err(|_| "generator panicked".to_string())?;
    stop.store(true, Ordering::Release);
    let rx = sink.join().map_err(|_| "sink panicked".to_string())?;
    let (sent, secs) = sent?;
    let rx = rx?;
    let q = |p: f64| rx.hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(Trial {
        seconds: secs,
        sent,
        received: rx.received,
        duplicates: rx.duplicates,
        bytes: rx.bytes,
        sink_drops: rx.sink_drops,
        p50_us: if rx.received > 0 { q(0.5) } else { f64::NAN },
        p99_us: if rx.received > 0 { q(0.99) } else { f64::NAN },
    })
}

/// Sends; returns (packets accepted by the kernel, seconds spent sending).
fn generate(ns: &str, pattern: &[usize], rate: Option<f64>, seconds: f64, id: u32) -> Result<(u64, f64), String> {
    netns::enter(ns)?;
    // Precise sleeps for pacing (the default timer slack is 50 µs).
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let sock = UdpSocket::bind((netns::GEN_ADDR, 0)).map_err(|e| format!("generator bind: {e}"))?;
    sock.connect(SocketAddrV4::new(netns::SINK_ADDR, PORT)).map_err(|e| format!("generator connect: {e}"))?;
    let fd = sock.as_raw_fd();
    // DF off: a path with a smaller MTU (strongSwan's TUN device: 1400) fragments instead of
    // refusing.
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);

    // One buffer per packet of the burst, cycling through the pattern.
    let mut bufs: Vec<Vec<u8>> = (0..MAX_BURST).map(|_| vec![0u8; 1600]).collect();
    let mut iov: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 0 }).collect();
    // SAFETY: mmsghdr is plain data; all-zero is valid (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..MAX_BURST).map(|_| unsafe { std::mem::zeroed() }).collect();
    for b in &mut bufs {
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&id.to_le_bytes());
        for (k, x) in b[HEADER..].iter_mut().enumerate() {
            *x = k as u8;
        }
    }
    let mut seq: u64 = 0;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let max_burst = if rate.is_some() { PACED_BURST } else { MAX_BURST };
    loop {
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break;
        }
        let n = match rate {
            None => max_burst,
            Some(pps) => {
                let due = (pps * elapsed.as_secs_f64()) as u64;
                if due <= seq {
                    // Sleep until the next packet is due (at most 1 ms).
                    let wait = ((seq + 1) as f64 / pps - elapsed.as_secs_f64()).clamp(0.0, 0.001);
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    continue;
                }
                ((due - seq) as usize).min(max_burst)
            }
        };
        for k in 0..n {
            let s = seq + k as u64;
            let len = pattern[(s % pattern.len() as u64) as usize] - IP_UDP;
            let b = &mut bufs[k];
            b[8..16].copy_from_slice(&s.to_le_bytes());
            b[16..24].copy_from_slice(&monotonic_ns().to_le_bytes());
            iov[k].iov_len = len;
            msgs[k].msg_hdr.msg_iov = &mut iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at live iovecs over live buffers; the socket is connected.
        let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        if rc > 0 {
            seq += rc as u64;
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => std::thread::yield_now(),
                _ => return Err(format!("sendmmsg: {e}")),
            }
        }
    }
    Ok((seq, start.elapsed().as_secs_f64()))
}

struct Received {
    received: u64,
    duplicates: u64,
    bytes: u64,
    sink_drops: u64,
    hist: Histogram<u64>,
}

/// Receives until `stop` is set and then 200 ms pass without a packet of this trial (at most 2 s).
fn sink(ns: &str, id: u32, stop: Arc<AtomicBool>, ready: mpsc::Sender<Result<(), String>>) -> Result<Received, String> {
    let setup = || -> Result<UdpSocket, String> {
        netns::enter(ns)?;
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).map_err(|e| format!("sink bind: {e}"))?;
        setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
        Ok(sock)
    };
    let sock = match setup() {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let drops_before = udp_rcvbuf_errors();
    let _ = ready.send(Ok(()));
    let fd = sock.as_raw_fd();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut seen: Vec<u64> = Vec::new();
    let (mut received, mut duplicates, mut bytes) = (0u64, 0u64, 0u64);
    let mut bufs: Vec<Vec<u8>> = (0..MAX_BURST).map(|_| vec![0u8; 2048]).collect();
    let mut iov: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: mmsghdr is plain data; all-zero is valid.
    let mut msgs: Vec<libc::mmsghdr> = (0..MAX_BURST).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut quiet_since: Option<Instant> = None;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && stop.load(Ordering::Acquire) {
            stopped_at = Some(Instant::now());
        }
        if let Some(t) = stopped_at {
            let quiet = quiet_since.map(|q| q.elapsed() > Duration::from_millis(200)).unwrap_or(false);
            if quiet || t.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        // MSG_WAITFORONE: return what is there once one datagram arrived (without it recvmmsg
        // waits for the whole batch, which would be counted as latency).
        // SAFETY: `msgs` point at live iovecs over live buffers of their stated lengths.
        let rc = unsafe {
            libc::recvmmsg(fd, msgs.as_mut_ptr(), MAX_BURST as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if rc <= 0 {
            quiet_since.get_or_insert_with(Instant::now);
            continue;
        }
        let now = monotonic_ns();
        let mut ours = false;
        for m in &msgs[..rc as usize] {
            let len = m.msg_len as usize;
            // SAFETY: the kernel wrote `len` bytes into the iovec's buffer.
            let b = unsafe { std::slice::from_raw_parts((*m.msg_hdr.msg_iov).iov_base as *const u8, len) };
            if len < HEADER
                || u32::from_le_bytes(b[0..4].try_into().unwrap()) != MAGIC
                || u32::from_le_bytes(b[4..8].try_into().unwrap()) != id
            {
                continue;
            }
            ours = true;
            let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
            let ts = u64::from_le_bytes(b[16..24].try_into().unwrap());
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if word >= seen.len() {
                if word > 1 << 28 {
                    continue; // not a sequence number this generator can have sent
                }
                seen.resize((word + 1).next_power_of_two(), 0);
            }
            if seen[word] & (1 << bit) != 0 {
                duplicates += 1;
                continue;
            }
            seen[word] |= 1 << bit;
            received += 1;
            bytes += (len + IP_UDP) as u64;
            hist.saturating_record(now.saturating_sub(ts).max(1));
        }
        quiet_since = if ours { None } else { quiet_since.or_else(|| Some(Instant::now())) };
    }
    let sink_drops = udp_rcvbuf_errors().saturating_sub(drops_before);
    Ok(Received { received, duplicates, bytes, sink_drops, hist })
}
