//! ESP data-plane core (placeholder crate doc; completed by the ESP work item).
#![forbid(unsafe_code)]

pub mod crypto;
pub mod replay;
pub mod table;
