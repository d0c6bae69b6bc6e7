//! IKEv1 (RFC 2409) with pre-shared keys: main mode and aggressive mode, quick mode, NAT-T
//! (RFC 3947), INFORMATIONAL (DELETE, DPD per RFC 3706). Sans-IO like the IKEv2 core: bytes in,
//! bytes out, `now` and the RNG passed in, outputs pulled.
//!
//! * [`message`]: the ISAKMP codec (RFC 2408 header and payload chain, IPsec DOI SA/proposal/
//!   transform with TV/TLV attributes, KE, ID incl. subnets, HASH, NONCE, N, D, VID, NAT-D,
//!   NAT-OA). Never panics on untrusted bytes (`ikev1_message` fuzz target).
//! * [`keys`]: SKEYID, SKEYID_d/a/e, the cipher key (with Appendix B expansion), the phase-1 and
//!   phase-2 IVs, HASH_I/HASH_R, quick-mode HASH(1)/(2)/(3), KEYMAT with and without PFS, and the
//!   CBC encryption of whole messages with IV chaining.
//! * [`sa`]: one ISAKMP SA and its quick modes ([`sa::Sa`]); its module documentation lists
//!   what is supported and what is not yet.
//!
//! # Contract with the daemon
//!
//! Exactly as for [`crate::ike_sa::IkeSa`]:
//!
//! * Datagrams from UDP 500 and 4500 go through [`crate::nat::classify`]; an IKE message whose
//!   ISAKMP header has version 0x10 is IKEv1. Route it by the initiator cookie (and responder
//!   cookie once known, [`sa::Sa::cookies`]) to its [`sa::Sa`]; an unknown cookie with responder
//!   cookie 0, message ID 0 and exchange type main (2) or aggressive (4) creates one with
//!   [`sa::Sa::respond`] (configuration chosen by the peer's address; its `mode` must equal the
//!   exchange type). Call [`sa::Sa::handle`] with the socket's local address and the sender.
//! * To connect: [`sa::Sa::initiate`]; quick modes for every local × remote subnet pair follow
//!   once phase 1 is up. [`sa::Sa::close`] sends the DELETEs.
//! * Send every [`crate::ike_sa::Transmit`] from `poll_transmit` as `to_datagram()` from the
//!   socket bound to its `local` port to its `remote`; call `handle_timeout` at `poll_timeout`;
//!   publish [`crate::ike_sa::Event`]s from `poll_event` as for IKEv2 (`ChildSaInstalled` carries
//!   SPIs, keys, selectors, endpoints and UDP encapsulation; `ChildSaDeleted`, `Failed`,
//!   `Closed`).

pub mod keys;
pub mod message;
pub mod sa;

#[cfg(test)]
mod tests;
