//! Management plane of the VPN gateway: the resource model, validation, durable store and the
//! RPC-style HTTP API after the Alibaba Cloud VPN Gateway API (`CreateVpnConnection` and related),
//! its OpenAPI document, the `ipsec-mgmtd` daemon and the `vpnctl` CLI.
//!
//! Contract:
//! - [`model`]: VPN gateways (`vpn-…`), customer gateways (`cgw-…`) and VPN connections (`vco-…`),
//!   ids of 20 random lowercase alphanumerics, with the seed's defaults (IKEv1, main mode,
//!   aes/sha1/group2, lifetimes 86400 s, DPD and NAT-T on, local ASN 45104, health-check
//!   interval/retry 3, policy `revoke_route`, a random 16-character PSK from the OS CSPRNG).
//! - [`validate`]: every rule the seed documents; each failure is an [`error::ApiError`] whose code
//!   is listed in [`error::CODES`] and whose message names the field (and never echoes a PSK).
//!   Nothing is stored when an action fails.
//! - [`store`]: SQLite via rusqlite (`bundled`), WAL + `synchronous=FULL`, versioned migrations; an
//!   action is acknowledged only after its transaction committed, so it survives `kill -9`.
//!   Why SQLite rather than redb: the state is small and relational (connections reference two
//!   gateways, listings filter and page, logs are range-queried by time and pruned), which SQL
//!   indexes express directly; the `schema_version` table plus ordered SQL migrations is the
//!   simplest durable-evolution story; and the file can be inspected with the `sqlite3` shell.
//!   The cost is one C build of SQLite (no system library needed).
//! - [`api`]: the actions, transport-independent; ClientToken idempotency for Create*; quota of
//!   VPN connections per VPN gateway; PSKs shown only with `ShowPsk=true` (and in the peer's
//!   DownloadVpnConnectionConfig), never logged.
//! - [`effects`]: the seam to the IKE side (changes out, live status and logs in), with in-memory
//!   and channel implementations.
//! - [`http`]: hyper on tokio (HTTP/1.1 only, no TLS: bound to 127.0.0.1 by default), bearer-token
//!   auth with a constant-time compare, token file created 0600. Why hyper rather than axum: one
//!   RPC endpoint needs no router, and hyper is what axum would pull in anyway.
//! - [`openapi`]: the OpenAPI 3 document (served at `/openapi.json`, checked in as `openapi.json`).
//! - [`render`]: DownloadVpnConnectionConfig's peer view (JSON) and strongSwan `swanctl.conf`.
//! - [`client`]: a minimal blocking HTTP/1.1 client (for `vpnctl` and the tests).
//! - [`daemon`]: the `ipsec-mgmtd` entry point.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod daemon;
pub mod effects;
pub mod error;
pub mod http;
pub mod model;
pub mod openapi;
pub mod render;
pub mod store;
pub mod validate;

pub use error::ApiError;
pub use validate::Params;
