//! A Linux TUN device (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`): whole IP packets in and out, no
//! packet-information prefix. The one `unsafe` block of the crate is the `TUNSETIFF` ioctl.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `struct ifreq` as far as TUNSETIFF uses it: the name, then the `short` flags at the start of
/// the 24-octet union (Linux: `IFNAMSIZ` = 16, `sizeof(struct ifreq)` = 40).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open, non-blocking TUN device; it disappears when dropped.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name` (at most 15 octets).
    ///
    /// # Errors
    /// No `/dev/net/tun`, no `CAP_NET_ADMIN`, or a bad name.
    pub fn open(name: &str) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        #[allow(unsafe_code)]
        // SAFETY: the descriptor is open (owned by `file`, alive for the call); TUNSETIFF reads and
        // writes a `struct ifreq`, and `req` is a properly aligned, fully initialised value of the
        // same size (40 octets) and layout (name, then the flags at the start of the union), with a
        // NUL-terminated name (checked above: shorter than IFNAMSIZ).
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, std::ptr::addr_of_mut!(req)) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let got: Vec<u8> = req.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        Ok(Tun { file, name: String::from_utf8_lossy(&got).into_owned() })
    }

    /// The interface name the kernel gave.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet (`WouldBlock` when there is none).
    ///
    /// # Errors
    /// I/O errors, `WouldBlock`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    ///
    /// # Errors
    /// I/O errors.
    pub fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        (&self.file).write(pkt)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == 40);
