//! The thin unsafe layer over raw system calls: memory mappings and the `fcntl` and
//! signal calls `nix` does not wrap. Its public API is safe; every unsafe block inside
//! carries a `// SAFETY:` line.

mod error;
mod mapping;

pub use error::{SysError, SysResult, io_errno};
pub use mapping::{AddressReservation, Mapping, Protection, page_offset, page_size};
pub(crate) mod lease;
#[doc(hidden)]
pub mod lease_baseline;
pub(crate) mod membarrier;
pub(crate) mod reactor;
pub(crate) mod signal;
