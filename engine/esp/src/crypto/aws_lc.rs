//! aws-lc-rs backend (to be written).
