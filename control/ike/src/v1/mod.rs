//! IKEv1 (RFC 2409) with pre-shared keys: main mode and aggressive mode, quick mode, NAT-T
//! (RFC 3947). Sans-IO like the IKEv2 core: bytes in, bytes out, `now` passed in.
//!
//! * [`message`]: the ISAKMP codec (RFC 2408, IPsec DOI, NAT-D/NAT-OA).
//! * [`keys`]: SKEYID*, IVs, HASH_I/R, quick-mode hashes, KEYMAT, CBC message encryption.

pub mod keys;
pub mod message;
pub mod sa;

#[cfg(test)]
mod tests;
