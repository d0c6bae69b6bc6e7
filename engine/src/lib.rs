//! The gateway's packet engine, built on the ESP core (`ipsec-esp`) and the packet views
//! (`ipsec-wire`).
//!
//! Contract so far: [`demo`] runs the complete ESP data path (routed encap, table-driven decap,
//! counters, events) between two in-memory gateways; [`xdp`] loads the XDP steering program from
//! `ebpf/`, fills its maps and attaches it; [`config`] parses the static configuration (manual SAs
//! and tunnels) into the ESP core's tables. The AF_XDP engine process (per-queue pinned workers,
//! neighbour resolution, control channel) will live here too.
#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
pub mod xdp;
