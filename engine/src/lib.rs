//! The packet engine (placeholder), and its XDP steering loader ([`xdp`]).
#![forbid(unsafe_code)]

pub mod xdp;
