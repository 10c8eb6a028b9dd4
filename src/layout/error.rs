//! The layout protocol's error type.

use std::net::SocketAddr;

use nix::errno::Errno;

use super::wire::{LostCode, WireError};
use crate::region::RegionError;
use crate::verbs::{VerbsError, WcStatus};

/// What went wrong in the layout protocol, on either side.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A verb or RDMA CM call failed.
    #[error("{peer}: {source}")]
    Verbs {
        /// The server or peer address (or the listen address).
        peer: String,
        /// The failed call.
        #[source]
        source: VerbsError,
    },
    /// The connection could not be set up.
    #[error("connecting to {server}: {what} (status {status})")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// The step that failed, e.g. "address resolution" or "rejected".
        what: &'static str,
        /// The CM event's status.
        status: i32,
    },
    /// The server refused a request (its errno: ENOENT unknown export or file, EXDEV path
    /// escapes the export, EROFS write layout on a read-only export, EBUSY file busy,
    /// EINVAL bad range...).
    #[error("{server}: {op} refused: {errno} ({desc})", desc = .errno.desc())]
    Refused {
        /// The server.
        server: SocketAddr,
        /// The request, e.g. "LAYOUT_GET".
        op: &'static str,
        /// The server's errno.
        errno: Errno,
    },
    /// A frame could not be encoded or decoded.
    #[error("{peer}: {source}")]
    Wire {
        /// Who sent it (or whom it was for).
        peer: String,
        /// What is wrong with it.
        #[source]
        source: WireError,
    },
    /// The peer did not answer in time.
    #[error("{peer}: no answer to {what} in {timeout:?}")]
    Timeout {
        /// The server or peer.
        peer: String,
        /// What was awaited.
        what: &'static str,
        /// How long.
        timeout: std::time::Duration,
    },
    /// The connection is gone (disconnected, or its queue pair failed).
    #[error("{peer}: connection closed ({why})")]
    Closed {
        /// The server or peer.
        peer: String,
        /// Why.
        why: String,
    },
    /// An RDMA READ or WRITE through a layout failed.
    #[error("layout {layout}: RDMA {op} at +{offset} failed: {status:?}")]
    Transfer {
        /// The layout.
        layout: u64,
        /// "READ" or "WRITE".
        op: &'static str,
        /// Offset in the layout.
        offset: u64,
        /// The completion status (a fenced key gives `RemoteAccess`).
        status: WcStatus,
    },
    /// The server gave the layout up for good.
    #[error("layout {layout} lost: {reason:?}")]
    Lost {
        /// The layout.
        layout: u64,
        /// Why.
        reason: LostCode,
    },
    /// A range outside the layout.
    #[error("layout {layout}: {offset}+{len} is outside its {size} bytes")]
    OutOfRange {
        /// The layout.
        layout: u64,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The layout's length.
        size: u64,
    },
    /// A transfer that breaks the client's alignment promise.
    #[error("layout {layout}: {offset}+{len} breaks the promised {alignment}-byte alignment")]
    Unaligned {
        /// The layout.
        layout: u64,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The promised alignment.
        alignment: u64,
    },
    /// A bad server or client configuration.
    #[error("layout config: {0}")]
    Config(String),
    /// The region layer failed (server side).
    #[error(transparent)]
    Region(#[from] RegionError),
}

impl LayoutError {
    /// The errno closest to the failure.
    pub fn errno(&self) -> Errno {
        match self {
            LayoutError::Verbs { source, .. } => source.errno,
            LayoutError::Connect { .. } => Errno::ECONNREFUSED,
            LayoutError::Refused { errno, .. } => *errno,
            LayoutError::Wire { .. } => Errno::EPROTO,
            LayoutError::Timeout { .. } => Errno::ETIMEDOUT,
            LayoutError::Closed { .. } => Errno::ENOTCONN,
            LayoutError::Transfer { .. } => Errno::EREMOTEIO,
            LayoutError::Lost { .. } => Errno::ESTALE,
            LayoutError::OutOfRange { .. }
            | LayoutError::Unaligned { .. }
            | LayoutError::Config(_) => Errno::EINVAL,
            LayoutError::Region(e) => e.errno(),
        }
    }
}
