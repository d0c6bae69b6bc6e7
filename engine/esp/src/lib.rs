//! ESP data-plane core (RFC 4303 tunnel mode, RFC 3948 UDP encapsulation).
//!
//! This crate is everything the gateway does to a packet between "an inner IP packet arrived on
//! the protected side" and "an outer ESP packet leaves on the underlay", and back, working on
//! buffers in memory with no I/O: the engine's AF_XDP workers, the benches and the perf lab all
//! drive the same code.
//!
//! Contract, by module:
//! - [`crypto`]: rustls-style providers; keys are expanded once per SA, per-packet calls never
//!   allocate. The default provider takes the fastest measured backend per algorithm.
//! - [`sa`]: SA configuration and the runtime SAs built from it (keys expanded, counters, replay
//!   window, sequence counter, lifetime state).
//! - [`replay`]: lock-free anti-replay window with ESN inference; pre-check before decryption,
//!   update only after the ICV verified.
//! - [`table`]: lock-free SA tables (inbound by SPI, outbound by route or protected flow); the
//!   control side adds, replaces and deletes atomically while workers read.
//! - [`EspWorker::encap_routed`] / [`EspWorker::decap_with_table`]: the fast path with its table
//!   lookups; [`EspWorker::encap_burst`] / [`EspWorker::decap_burst`] underneath take any lookup:
//!   the fast path, a burst of up to
//!   [`MAX_BURST`] packets per call in prepare / crypto / finish passes, no heap allocation per
//!   packet, every drop counted under a [`DropReason`].
//! - [`mtu`]: the tunnel's inner MTU per SA ([`OutboundSa::inner_mtu`]) and what to do with an
//!   inner packet that exceeds it (fragment before encryption, or ICMP too big to the sender).
//! - [`lifetime`] and [`events`]: soft/hard limits in time, bytes and packets; rekey and expiry
//!   events leave through a bounded lock-free queue and never block a worker.
//!
//! Nothing in here panics on packet contents; the fuzz targets in `engine/fuzz` hold it to that.
#![forbid(unsafe_code)]

pub mod counters;
pub mod crypto;
mod datapath;
mod decap;
mod encap;
pub mod events;
pub mod lifetime;
pub mod mtu;
pub mod packet;
pub mod replay;
pub mod sa;
pub mod table;
mod worker;

pub use counters::{DropReason, SaCounters, WorkerCounters};
pub use crypto::{default_provider, Cipher, CryptoProvider, Integrity};
pub use datapath::ACQUIRE_INTERVAL;
pub use decap::ecn_decap;
pub use encap::{SEQ_SOFT_MARGIN_32, SEQ_SOFT_MARGIN_64};
pub use events::{Direction, EventQueue, LimitKind, SaEvent};
pub use lifetime::{Lifetime, Limits};
pub use mtu::{mtu_action, MtuAction};
pub use packet::{PacketBuf, Verdict, HEADROOM, MAX_BURST, TAILROOM};
pub use sa::{DfPolicy, DscpPolicy, InboundSa, OutboundSa, SaConfig, SaError, UdpEncap};
pub use worker::EspWorker;
