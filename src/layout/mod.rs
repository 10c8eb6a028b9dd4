//! The layout protocol: peers get, commit and return layouts (memory-window keys over a
//! file range) over RDMA CM; the server recalls them when the file's lease breaks, and
//! tells the peers when they are available again or lost. See `docs/protocol.md`.
//!
//! - [`wire`]: the frames, a fixed little-endian header and one body per message;
//! - [`LayoutServer`]: serves [`Export`]ed directories through a region [`Manager`](crate::region::Manager);
//! - [`LayoutClient`]: a peer's side, which by default answers recalls itself (drains,
//!   commits, returns, waits for the layout to come back).

mod client;
mod error;
mod export;
mod link;
mod server;
mod sleep;
pub mod wire;

pub use client::{ClientConfig, Layout, LayoutClient, LayoutEvent, RecallPolicy};
pub use error::LayoutError;
pub use export::Export;
pub use server::{LayoutServer, ServerConfig};
