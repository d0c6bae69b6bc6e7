//! RustCrypto backend (to be written).
