//! The gateway's packet engine, built on the ESP core (`ipsec-esp`) and the packet views
//! (`ipsec-wire`).
//!
//! Contract so far: [`demo`] runs the complete ESP data path (routed encap, table-driven decap,
//! counters, events) between two in-memory gateways; [`xdp`] loads the XDP steering program from
//! `ebpf/`, fills its maps and attaches it; [`run`] is the AF_XDP forwarding engine on a static
//! configuration ([`config`]): per-queue workers over a packet I/O backend ([`io`]: AF_XDP in
//! [`afxdp`], or the portable AF_PACKET fallback in [`afpacket`]) with next hops from the kernel's
//! tables ([`neigh`]), router duties (TTL, MTU, ICMP errors: [`forward`]) and counters
//! ([`stats`]); [`channel`] serves the control process over the engine ↔ control channel
//! (tunnels and SAs installed at run time, reconciliation after a reconnect, events, counters,
//! IKE punted both ways), and the engine keeps forwarding when the control process goes away.
//!
//! `unsafe` is forbidden everywhere but in [`afxdp`], which wraps xsk-rs's `unsafe fn` ring and
//! frame accessors behind an ownership-tracking API (see its module documentation), and in
//! [`afpacket`] (socket options, the TPACKET_V3 ring's mmap, `sendmmsg`).
#![deny(unsafe_code)]

pub mod afpacket;
pub mod afxdp;
pub mod channel;
pub mod config;
pub mod demo;
pub mod forward;
pub mod io;
pub mod neigh;
pub mod run;
pub mod stats;
pub mod xdp;
