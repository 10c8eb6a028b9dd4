//! filemr: expose byte ranges of files as RDMA memory regions, kept safe by Linux file
//! leases.
//!
//! Unsafe code is confined to two modules: [`verbs`] (the libibverbs FFI) and `sys`
//! (raw system calls nix does not wrap). Everything else is safe Rust.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod grant;
pub mod layout;
pub mod lease;
pub mod metrics;
pub mod probe;
pub mod region;
#[allow(unsafe_code)]
pub mod sys;
#[allow(unsafe_code)]
pub mod verbs;
