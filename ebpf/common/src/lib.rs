//! Types shared by the XDP program and the engine (placeholder until the fast-path issue).
#![no_std]
