//! Sans-IO core of the IKE control plane: IKEv2 (RFC 7296) and IKEv1 with pre-shared keys
//! (RFC 2409, in [`v1`]).
//!
//! # Contract
//!
//! * **No I/O, no threads, no clock.** Nothing in this crate opens a socket, spawns a thread,
//!   sleeps or reads the time. Bytes come in as slices and go out as `Vec<u8>`; randomness is
//!   drawn only from a [`rand_core::CryptoRng`] the caller passes in (so tests are deterministic
//!   and the daemon chooses its entropy source) — with one measured exception: P-256/P-384
//!   ephemeral keys in the `aws-lc` provider come from aws-lc's own DRBG (see [`crypto::dh`]).
//!   The state machine ([`ike_sa`]) takes
//!   `now: Instant` in every entry point, quinn-proto style.
//! * **Untrusted input never panics.** [`message::Message::parse`] and everything under it are
//!   bounds-checked and return errors that map to the notification RFC 7296 prescribes
//!   ([`message::ParseError::notify`]). The `ike_message` cargo-fuzz target (in `fuzz/`) checks
//!   this and that parse → emit → parse is the identity.
//! * **Secrets are contained.** Keys, DH private values, shared secrets and PSKs live in
//!   [`crypto::SecretBytes`] or types that zeroize on drop; none of them prints its value with
//!   `Debug`. MAC/ICV comparisons are constant time.
//! * `#![forbid(unsafe_code)]`.
//!
//! # Layers
//!
//! * [`message`]: the wire codec (IKE header, generic payload chain with the critical-bit rule,
//!   every RFC 7296 payload) into owned `Repr`-style types and back.
//! * [`transforms`]: the IANA transform registry for the algorithms we implement, proposal
//!   construction, and proposal selection as responder.
//! * [`crypto`]: PRF/prf+, SKEYSEED and the SK_* keys, Child SA KEYMAT, PSK AUTH, SK payload
//!   encryption/integrity (CBC+HMAC and AES-GCM-16), and the DH groups.
//! * [`ike_sa`]: one IKE connection with one peer: IKE_SA_INIT + IKE_AUTH with a PSK (initiator
//!   and responder, COOKIE and INVALID_KE_PAYLOAD retries), CREATE_CHILD_SA (new Child SA, Child
//!   SA rekey, IKE SA rekey, with or without PFS, collisions per §2.8.1), INFORMATIONAL (DELETE,
//!   DPD), NAT traversal, lifetimes with jitter. Every entry point takes `now`; outputs are pulled
//!   (`poll_transmit`, `poll_timeout`, `poll_event`). A responder may be given alternative
//!   configurations ([`ike_sa::Alternative`]) and keeps, at IKE_AUTH, the one whose remote ID and
//!   PSK the initiator's IDi and AUTH match (several `%any` connections).
//! * [`endpoint`]: the dispatcher a daemon drives with every IKE datagram: routes by IKE SPI,
//!   creates responders, bounds half-open state with COOKIEs, aggregates outputs, and deletes
//!   the redundant IKE SA when both ends initiated the same connection at once.
//! * [`config`]: the connection configuration (the seed's IkeConfig/IpsecConfig).
//! * [`nat`]: NAT detection hashes and NAT-T datagram framing (non-ESP marker, keepalives).
//! * [`ts`]: traffic selector intersection and narrowing.
//! * [`v1`]: IKEv1 with pre-shared keys, in the same style: the ISAKMP codec ([`v1::message`],
//!   fuzzed by the `ikev1_message` target), RFC 2409 key material and CBC message protection
//!   ([`v1::keys`]), and one ISAKMP SA with its quick modes ([`v1::sa::Sa`]: main and aggressive
//!   mode, initiator and responder, RFC 3947 NAT-T, PFS, DELETE, DPD). It reuses [`crypto`]'s
//!   PRFs, DH groups and CBC ciphers and reports through the IKEv2 types ([`ike_sa::Event`],
//!   [`ike_sa::ChildSa`], [`ike_sa::Transmit`]), so the daemon publishes its Child SAs the same
//!   way. Not wired into [`endpoint`] yet.
//!
//! # What the daemon does
//!
//! Read datagrams from the IKE (500) and NAT-T (4500) sockets, pass them through
//! [`nat::classify`], give IKE messages to [`endpoint::Endpoint::handle`]; send every
//! [`ike_sa::Transmit`] of `poll_transmit` as [`ike_sa::Transmit::to_datagram`] from its `local`
//! address; sleep until `poll_timeout` and call `handle_timeout`; publish the Child SA events
//! ([`ike_sa::Event`]) to the data plane.
//!
//! # Dependencies and why
//!
//! No arithmetic or primitive is implemented here; each comes from a maintained, widely used crate:
//!
//! * `hmac` 0.13, `sha1` 0.11, `sha2` 0.11, `md-5` 0.11 (RustCrypto): the HMAC PRFs and integrity
//!   transforms. The same generation the ESP engine (`engine/esp`) uses, so one version of
//!   `digest` is built.
//! * `aes` 0.9, `cbc` 0.2, `des` 0.9 (RustCrypto): ENCR_AES_CBC, ENCR_3DES and ENCR_DES for the SK
//!   payload. DES/3DES exist only for interoperability with legacy peers.
//! * `aes-gcm` 0.11 (RustCrypto, audited): ENCR_AES_GCM_16 (RFC 5282).
//! * `crypto-bigint` 0.7 (RustCrypto, audited): constant-time Montgomery exponentiation for the
//!   MODP groups. Preferred over `num-bigint-dig` because its `pow` does not branch on the secret
//!   exponent, and it is already the backend of the curve crates below.
//! * `p256`, `p384`, `p521` 0.14 with `ecdh` (RustCrypto): the RFC 5903 ECP groups 19/20/21,
//!   including on-curve validation of peer points. 0.14 is the generation that resolves with
//!   `rand_core` 0.10 alongside `x25519-dalek` 3.
//! * `aws-lc-rs` 1.19 (feature `aws-lc`, default; safe API over AWS-LC, already the ESP engine's
//!   crypto backend): P-256 and P-384 ECDH. Its assembly field arithmetic makes an ECP256
//!   responder setup about 4x cheaper than the portable `p256`; `perf-lab ike` measures the
//!   responder against strongSwan's charon (`perf-lab/reports/ike.md`).
//! * `openssl` 0.10 (feature `openssl`, default; safe API over the system's libcrypto, the library
//!   strongSwan uses too): constant-time `BN_mod_exp` for the MODP groups, about 1.5x faster
//!   than crypto-bigint here. Our own public values use a fixed-base comb over crypto-bigint
//!   (`crypto::dh`), 3-4x fewer multiplications. Without the features (the fuzz crate builds so),
//!   everything is RustCrypto again.
//! * `x25519-dalek` 3 (dalek): Curve25519 (RFC 8031), with its contributory-behaviour check.
//! * `zeroize` 1.8: wiping secrets on drop. `subtle` 2.6: constant-time comparisons.
//! * `rand_core` 0.10: the RNG traits through which the caller supplies randomness.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod ike_sa;
pub mod message;
pub mod nat;
pub mod transforms;
pub mod ts;
pub mod v1;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod test_util;
