//! Anti-replay window and ESN inference (to be written).
