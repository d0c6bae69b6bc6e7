//! NAT traversal helpers (RFC 7296 §2.23, RFC 3948): NAT detection hashes, datagram framing on
//! the NAT-T port, NAT keepalives.
//!
//! # Framing decision
//!
//! The IKE core ([`crate::ike_sa`], [`crate::endpoint`]) takes and emits bare IKE messages plus
//! the (local, remote) socket addresses. The 4-octet non-ESP marker is the daemon's business at
//! the socket: [`classify`] strips it from what arrives on the NAT-T socket (and tells ESP and
//! keepalives apart), [`crate::ike_sa::Transmit::to_datagram`] prepends it when
//! [`crate::ike_sa::Transmit::non_esp_marker`] says so (an IKE message sent from our NAT-T port).
//! Keepalives are the single octet 0xff, never with a marker.

use std::net::{IpAddr, SocketAddr};

use sha1::{Digest, Sha1};

/// The non-ESP marker that precedes IKE messages on the NAT-T port.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// The payload of a NAT keepalive (RFC 3948 §2.3).
pub const KEEPALIVE: [u8; 1] = [0xff];

/// What a datagram received on an IKE socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// An IKE message (marker stripped).
    Ike(&'a [u8]),
    /// UDP-encapsulated ESP (NAT-T socket only): hand to the data plane.
    Esp(&'a [u8]),
    /// A NAT keepalive: ignore.
    Keepalive,
    /// Too short to be anything: drop.
    Invalid,
}

/// Classifies a datagram received on the IKE port (`on_natt_port == false`: every datagram is an
/// IKE message) or on the NAT-T port (marker ⇒ IKE, 0xff ⇒ keepalive, otherwise ESP).
#[must_use]
pub fn classify(on_natt_port: bool, datagram: &[u8]) -> Received<'_> {
    if !on_natt_port {
        return if datagram.is_empty() { Received::Invalid } else { Received::Ike(datagram) };
    }
    match datagram {
        [0xff] => Received::Keepalive,
        [0, 0, 0, 0, rest @ ..] => Received::Ike(rest),
        d if d.len() >= 8 => Received::Esp(d),
        _ => Received::Invalid,
    }
}

/// `SHA-1(SPIi | SPIr | IP | Port)` for NAT_DETECTION_SOURCE_IP / DESTINATION_IP.
#[must_use]
pub fn detection_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(spi_i.to_be_bytes());
    h.update(spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(addr.port().to_be_bytes());
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_datagrams() {
        assert_eq!(classify(false, b"abc"), Received::Ike(b"abc"));
        assert_eq!(classify(false, b""), Received::Invalid);
        assert_eq!(classify(true, &[0xff]), Received::Keepalive);
        assert_eq!(classify(true, &[0, 0, 0, 0, 1, 2]), Received::Ike(&[1, 2]));
        assert_eq!(classify(true, &[1, 2, 3, 4, 0, 0, 0, 1]), Received::Esp(&[1, 2, 3, 4, 0, 0, 0, 1]));
        assert_eq!(classify(true, &[1, 2]), Received::Invalid);
    }

    #[test]
    fn detection_hash_covers_every_field() {
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let base = detection_hash(1, 2, a);
        assert_eq!(base.len(), 20);
        assert_ne!(base, detection_hash(1, 3, a));
        assert_ne!(base, detection_hash(2, 2, a));
        assert_ne!(base, detection_hash(1, 2, "192.0.2.1:4500".parse().unwrap()));
        assert_ne!(base, detection_hash(1, 2, "192.0.2.2:500".parse().unwrap()));
        // Independent computation.
        let mut v = Vec::new();
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&2u64.to_be_bytes());
        v.extend_from_slice(&[192, 0, 2, 1, 0x01, 0xf4]);
        assert_eq!(base, Sha1::digest(&v).to_vec());
    }
}
