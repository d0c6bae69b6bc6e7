#![forbid(unsafe_code)]
pub mod crypto;
pub mod message;
pub mod transforms;

#[cfg(test)]
mod test_util;
