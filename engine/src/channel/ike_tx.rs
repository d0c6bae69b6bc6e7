//! `SendIke`: IKE datagrams from the control process leave through kernel UDP sockets.
//!
//! Why the kernel and not a worker's AF_XDP tx ring: IKE is a few datagrams per tunnel per rekey,
//! and the kernel path is robust where a worker path would need work for nothing: it resolves the
//! next hop (ARP/ND, including the first packet to a peer nobody talked to yet), picks the route,
//! fills IP and UDP checksums, and never competes with ESP for tx ring slots. XDP only hooks
//! *ingress*, so the kernel's egress is not intercepted. The engine binds one socket per (local
//! address, port) the control side sends from, on first use; the source port must be the one IKE
//! uses (500, 4500, or a NAT-T port) because the peer answers to it. Inbound IKE never reaches
//! these sockets (the XDP program steers it to the workers, which punt it); whatever the kernel
//! does deliver to them is read and discarded so their queues never fill.
//!
//! Consequence for deployment: no other process in the engine's network namespace may bind the
//! gateway addresses' IKE ports (the control process sends through the channel instead).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use ipsec_channel::IkeDatagram;

/// The engine's IKE sending sockets.
#[derive(Debug)]
pub struct IkeTx {
    local_addrs: Vec<IpAddr>,
    socks: HashMap<SocketAddr, UdpSocket>,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams refused or failed.
    pub errors: u64,
    /// Datagrams the kernel delivered to the sockets, discarded.
    pub discarded: u64,
}

impl IkeTx {
    /// Sending is allowed from `local_addrs` only (the gateway's addresses).
    pub fn new(local_addrs: Vec<IpAddr>) -> Self {
        IkeTx { local_addrs, socks: HashMap::new(), sent: 0, errors: 0, discarded: 0 }
    }

    /// Sends `d.payload` from `d.local` to `d.remote`. Errors name the field at fault.
    pub fn send(&mut self, d: &IkeDatagram) -> Result<(), String> {
        let r = self.try_send(d);
        match &r {
            Ok(()) => self.sent += 1,
            Err(_) => self.errors += 1,
        }
        r
    }

    fn try_send(&mut self, d: &IkeDatagram) -> Result<(), String> {
        if !self.local_addrs.contains(&d.local.ip()) {
            return Err(format!("local: {} is not an address this engine serves", d.local.ip()));
        }
        if d.local.port() == 0 {
            return Err("local: port 0".into());
        }
        if d.remote.is_ipv4() != d.local.is_ipv4() || d.remote.port() == 0 || d.remote.ip().is_unspecified() {
            return Err(format!("remote: {} cannot be reached from {}", d.remote, d.local));
        }
        if d.payload.is_empty() || d.payload.len() > 65_000 {
            return Err(format!("payload: {} bytes", d.payload.len()));
        }
        let sock = match self.socks.entry(d.local) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let s = UdpSocket::bind(d.local).map_err(|e| format!("local: binding {}: {e}", d.local))?;
                s.set_nonblocking(true).map_err(|e| format!("local: {e}"))?;
                tracing::info!(local = %d.local, "IKE sending socket bound");
                v.insert(s)
            }
        };
        match sock.send_to(&d.payload, d.remote) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("remote: sending to {}: {e}", d.remote)),
        }
    }

    /// Reads and discards what the kernel queued on the sockets.
    pub fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        for s in self.socks.values() {
            loop {
                match s.recv_from(&mut buf) {
                    Ok(_) => self.discarded += 1,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_from_served_addresses_only() {
        let mut tx = IkeTx::new(vec!["127.0.0.1".parse().unwrap()]);
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let d = IkeDatagram {
            local: "127.0.0.1:0".parse().unwrap(),
            remote: rx.local_addr().unwrap(),
            payload: b"ike".to_vec(),
        };
        assert!(tx.send(&d).unwrap_err().starts_with("local: "));
        // An ephemeral "IKE port" of our own, so the test needs no privileges.
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = IkeDatagram { local: SocketAddr::new("127.0.0.1".parse().unwrap(), port), ..d };
        tx.send(&d).unwrap();
        tx.send(&d).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"ike"[..], d.local));
        let other = IkeDatagram { local: "127.0.0.2:500".parse().unwrap(), ..d.clone() };
        assert!(tx.send(&other).unwrap_err().starts_with("local: "));
        assert_eq!((tx.sent, tx.errors), (2, 2));
        // What the kernel delivers to the sending socket is discarded.
        rx.send_to(b"x", d.local).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        tx.drain();
        assert_eq!(tx.discarded, 1);
    }
}
