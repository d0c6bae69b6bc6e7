//! IPsec control plane (IKE, store, management API).
//!
//! Not built yet: see the IKEv2 and management issues. This crate exists so that the workspace has
//! its final shape from the start.
#![forbid(unsafe_code)]
