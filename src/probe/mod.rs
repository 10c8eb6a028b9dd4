//! Registration probing: try to register a kind of memory and record the errno.
//!
//! What a kernel allows (pinning FS-DAX pages, writable pins of shared file mappings, ODP)
//! differs between kernels and devices, so filemr never decides by version numbers: it
//! tries, reads the errno, and decides. The same cases form the registration matrix that
//! the demo prints and the tests assert.

mod matrix;

pub use matrix::{Backing, MatrixCase, MrKind, Outcome, matrix_cases, run_case};
