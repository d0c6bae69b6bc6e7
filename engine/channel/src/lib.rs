//! The engine ↔ control channel: how the control process (IKE, management) tells the data-plane
//! engine which tunnels and SAs to serve, and how the engine hands back IKE datagrams, data-plane
//! events and counters.
//!
//! # Contract
//!
//! * **Transport**: one Unix stream socket, created by the engine with mode 0600 in a 0700
//!   directory ([`listen`]; default [`DEFAULT_SOCKET`]). One control session at a time: a new
//!   connection replaces the previous one (a restarted control process must not wait for the
//!   engine to notice the old one is gone).
//! * **Framing** ([`codec`]): a 4-byte big-endian length, then one message encoded with postcard.
//!   Frames above [`MAX_FRAME`] are a protocol error. Decoders wipe consumed bytes, because
//!   [`SaSpec`] frames carry keys.
//! * **Versioning**: each side sends [`ControlMsg::Hello`] / [`EngineMsg::Hello`] first with
//!   [`PROTOCOL_VERSION`]; on a mismatch the receiver answers nothing more and closes. Changing a
//!   message's shape means a new version number; adding a variant at the end of an enum is
//!   compatible only for the side that does not receive it, so it also bumps the version.
//! * **Requests and replies**: [`ControlMsg::Request`] carries an id; the engine answers every
//!   request with exactly one [`EngineMsg::Reply`] with the same id, in order. IKE datagrams
//!   ([`ControlMsg::SendIke`], [`EngineMsg::IkeReceived`]) and [`EngineMsg::Event`]s are not
//!   requests and are never answered.
//! * **State and ownership**: tunnels and SAs installed over the channel belong to the control
//!   side; tunnels and SAs from the engine's static configuration file are never touched by it.
//!   A tunnel has at most one outbound SA: [`Request::AddSa`] with [`Direction::Out`] makes the new
//!   SA the one the tunnel sends on (the control side sends it when the peer is known to have the
//!   matching inbound SA: "send on the newest SA the peer has"), and drops the previous outbound SA.
//!   Inbound SAs accumulate until deleted (rekey overlap: make-before-break).
//! * **Reconciliation**: after (re)connecting, the control side states its complete desired set:
//!   [`Request::BeginSync`], then every tunnel and SA, then [`Request::EndSync`]. The engine keeps
//!   every restated SA whose key material is unchanged *with its state* (sequence numbers, replay
//!   window, counters), replaces changed ones, adds new ones, and at `EndSync` removes the
//!   control-owned tunnels and SAs that were not restated. Established traffic is never
//!   interrupted by a reconnect.
//! * **Control loss**: when the socket closes, the engine keeps forwarding with what it has;
//!   lifetimes still expire SAs (hard limits are enforced in the data plane); events raised while
//!   no control process is connected are kept in the engine's bounded event queue.
//! * **Secrets**: key material travels only inside [`Secret`], whose `Debug` is redacted and whose
//!   memory is wiped on drop.
//!
//! The crate is sans-IO at its core ([`codec`]); [`Conn`] and [`listen`] are small blocking
//! helpers over `std::os::unix::net` for the engine's channel thread, tools and tests.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
mod conn;
mod msg;

pub use codec::{encode, Decoder, Error, MAX_FRAME};
pub use conn::{listen, Conn};
pub use msg::*;

/// The protocol version both sides must agree on.
pub const PROTOCOL_VERSION: u16 = 1;

/// Where the engine listens by default.
pub const DEFAULT_SOCKET: &str = "/run/ipsec-engine/control.sock";
