//! Management plane of the VPN gateway: the resource model, validation, durable store and the
//! RPC-style HTTP API (seed: Alibaba Cloud VPN Gateway `CreateVpnConnection` and related actions).
//!
//! Contract (this step):
//! - [`model`]: VPN gateways (`vpn-…`), customer gateways (`cgw-…`) and VPN connections (`vco-…`),
//!   with the seed's defaults (IKEv1, main mode, aes/sha1/group2, lifetimes 86400 s, DPD and NAT-T
//!   on, local ASN 45104, health-check interval/retry 3, policy `revoke_route`).
//! - [`validate`]: every rule the seed documents; each failure is an [`error::ApiError`] whose code
//!   is listed in [`error::CODES`] and whose message names the field (and never echoes a PSK).
//! - [`store`]: SQLite via rusqlite (`bundled`), WAL + `synchronous=FULL`, versioned migrations.
//!   Why SQLite rather than redb: the state is small and relational (connections reference two
//!   gateways, listings filter and page, logs are range-queried by time and pruned), which SQL
//!   indexes express directly; the `schema_version` table plus ordered SQL migrations is the
//!   simplest durable-evolution story; and the file can be inspected with the `sqlite3` shell.
//!   The cost is one C build of SQLite (no system library needed).
#![forbid(unsafe_code)]

pub mod error;
pub mod model;
pub mod store;
pub mod validate;

pub use error::ApiError;
pub use validate::Params;
