//! Lock-free SA tables (to be written).
