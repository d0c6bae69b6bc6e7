//! The packet engine (placeholder).
#![forbid(unsafe_code)]
