//! Grants: the keys peers hold. A grant is a type-2 memory window bound over a region's
//! memory region on the queue pair that serves one peer; peers never see the region's
//! own key (its memory region has no remote rights at all).
//!
//! Because filemr owns the window it can take access back from a peer at any time:
//! - **recall**: ask the peer (through the application, or the layout protocol) to finish,
//!   commit and return; [`Grant::returned`] records the answer and invalidates the window;
//! - **fence**: invalidate the window; the peer's next access fails;
//! - **retarget**: rebind the window, same key and addresses, to scratch memory; the peer
//!   sees no error while its I/O stops touching the file;
//! - **rebind** after the region is rebuilt: the same key reaches the file again.
//!
//! The break flow that drives these steps is in `region/flow.rs`; `docs/grants.md` has
//! the state machine and what a peer sees in each mode.

mod handle;
pub(crate) mod scratch;
mod state;

pub(crate) use handle::{Binding, GrantCell, GrantShared};
pub use handle::{Grant, GrantInfo};
pub use state::GrantState;
