//! IPsec control plane: the `ipsec-control` daemon around the sans-IO IKEv2 and IKEv1 cores
//! ([`ipsec_ike`], [`ipsec_ike::v1`]).
//!
//! # Contract
//!
//! * **One thread, one owner.** [`daemon::Daemon`] owns the IKE transport, one
//!   [`ipsec_ike::endpoint::Endpoint`] per configured connection, the RNG and the clock; it is the
//!   only code here that reads the time for the IKE core (the sinks read it for their own
//!   bookkeeping: back-off, SA installation time). Timers are the endpoints' `poll_timeout` and the
//!   sink's. The transport ([`daemon::IkeTransport`]) is either our own UDP sockets (IKE 500 and
//!   NAT-T 4500 on the configured local address) or, with `--engine`, the engine's channel: the
//!   engine owns the interface and punts IKE to us. Either way the non-ESP marker is added and
//!   stripped here ([`ipsec_ike::nat::classify`], `Transmit::to_datagram`); NAT keepalives are the
//!   IKE core's transmits like any other.
//! * **Child SAs leave through [`sink::SaSink`]**, in event order: a rekey installs the new SA
//!   before it deletes the old one (make-before-break); DELETE, expiry and DPD failure delete.
//!   Implementations: [`sink::RecordingSink`] (tests), [`engine_link::EngineSink`] (the AF_XDP
//!   engine over [`ipsec_channel`]: tunnels and SAs with make-before-break outbound switching, the
//!   full desired set restated on every (re)connection, engine events — acquire, soft and hard
//!   limits — back to the daemon as [`sink::DataplaneEvent`]s) and [`forwarder::EspForwarder`] (a
//!   TUN + ESP-in-UDP userspace forwarder over the engine's ESP core, **for interop tests
//!   only**). The IKE → ESP core mapping (algorithm names, key halves) is [`esp_map`].
//! * **Engine loss** does not touch IKE: SA changes keep updating the desired set, IKE transmits
//!   are dropped (retransmits cover a short outage), the link reconnects with back-off and restates
//!   everything; the engine keeps forwarding meanwhile. A killed control process leaves the
//!   engine's SAs in place until their hard lifetime; a *restarted* one keeps them through a
//!   takeover grace (10 s) while its own IKE SAs come up, then its restatement removes them.
//!   SIGTERM deletes every SA (IKE DELETE), as without the engine.
//!   Implementations: [`sink::RecordingSink`] (tests) and [`forwarder::EspForwarder`] (a TUN +
//!   ESP-in-UDP userspace forwarder over the engine's ESP core, **for interop tests only**; the
//!   AF_XDP engine's control channel will replace it).
//! * **Configuration**: a TOML file ([`config`]) for `run`, or the management store and API for
//!   `serve` ([`serve`]: one process with the `ipsec-mgmt` store, HTTP API and the IKE daemon on its
//!   own thread; connections are added, re-negotiated and removed at run time as the API commits
//!   changes, and replayed at start). IKEv1 connections (`ike_version = 1` with `ike.mode`, or
//!   `IkeVersion` ikev1 with `IkeMode`) are negotiated by the IKEv1 core: the versions split at
//!   datagram classification (ISAKMP version octet), and the daemon's IKEv1 SAs live in
//!   `daemon/v1.rs`, publishing to the same sink.
//! * **Run-time connections** ([`daemon::Daemon::add_connection`], `replace_connection`,
//!   `remove_connection`, `acquire`, `connection_status`): see the `daemon::runtime` module; after
//!   DPD declares a peer dead (or an initiation fails) a connection with a remote address
//!   re-initiates with back-off (1 s doubling to 60 s). A [`daemon::ConnObserver`] receives one log
//!   line per negotiation step and each connection's [`daemon::ConnStatus`] (`serve` stores them
//!   as the connection's logs and DescribeVpnConnection's live fields).
//! * **Secrets stay secret.** PSKs are read into the IKE core's zeroizing `SecretBytes` and never
//!   formatted: config errors do not echo source lines, `Debug` of every config type redacts the
//!   PSK, the log ([`log`]) carries SPIs, algorithms and addresses only. The control socket and
//!   the state file are created mode 0600.
//! * **Control**: a Unix socket (0600) taking one command per connection: `initiate NAME`,
//!   `rekey-child NAME`, `rekey-ike NAME`, `terminate NAME`, `status`
//!   ([`daemon::control_request`] is the client side).
//! * **The lab** ([`lab`], `ipsec-control lab`): the one-command demonstration — namespaces, our
//!   gateway (`serve` and its data plane), a strongSwan customer gateway, a connection made through
//!   the API, a ping across, everything removed afterwards (also on Ctrl-C).
//! * `unsafe` is denied except in [`tun`] (the `TUNSETIFF` ioctl, with its SAFETY argument).
//!
//! # Running
//!
//! ```text
//! ipsec-control check-config /etc/ipsec-control.toml
//! ipsec-control run --config /etc/ipsec-control.toml [--log FILE] [--engine SOCKET | --forwarder TUN]
//! ipsec-control serve --ike-listen 198.18.0.1 [--engine SOCKET | --forwarder TUN] [--log FILE] [--listen 127.0.0.1:8470]
//!                     [--state-dir /var/lib/ipsec-mgmt] [ipsec-mgmtd options]
//! ipsec-control initiate NAME | rekey-child NAME | rekey-ike NAME | terminate NAME | status
//! ```
//!
//! The config format is documented in [`config`]. `run --engine SOCKET` (the engine's default is
//! `/run/ipsec-engine/control.sock`) attaches to the AF_XDP engine: SAs go to it and IKE goes
//! through it, no UDP socket is bound (`serve` does not take `--engine` yet). `--forwarder` (root,
//! interop tests only) serves the Child SAs in userspace through a TUN device; with neither the SAs
//! are only logged. `serve` takes `ipsec-mgmtd`'s options (API address, state
//! directory with `mgmt.db`, `api-token` and the IKE state file `ike-state`, all 0600) plus the IKE
//! address (`--ike-listen`: the VPN gateways' PublicIp; connections of other gateways are logged as
//! not served). Tests: `cargo test -p ipsec-control` (the loopback tests `loopback.rs` and
//! `mgmt_ike.rs` and `engine_channel.rs` — two daemons over two fake engines relaying IKE to each
//! other — run unprivileged; `tests/e2e_engine_ike.rs` needs root and the `ipsec-engine` binary;
//! `tests/interop_strongswan.rs` and `tests/mgmt_strongswan.rs`
//! need root and strongSwan, see their documentation;
//! `INTEROP_ONLY=<case substring>|rekey` runs a subset, `INTEROP_KEEP=1` keeps the logs).
#![deny(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod engine_link;
pub mod esp_map;
pub mod forwarder;
pub mod lab;
pub mod log;
pub mod serve;
pub mod sink;
pub mod tun;

pub use daemon::Daemon;
pub use sink::{RecordingSink, SaSink};
