//! The lease layer's error type.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::FileId;

/// Result alias of the lease layer.
pub type LeaseResult<T> = Result<T, LeaseError>;

/// Everything that can go wrong in the lease layer. Errors about a file carry its path
/// and the `errno` the kernel returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Leases exist only for regular files.
    #[error("{}: not a regular file, cannot lease it ({errno})", path.display())]
    NotRegularFile {
        /// The file.
        path: PathBuf,
        /// `EINVAL`, what `F_SETLEASE` would return.
        errno: Errno,
    },
    /// `F_SETLEASE` returned `EACCES`: the caller neither owns the file nor has
    /// `CAP_LEASE`.
    #[error("{}: no permission to lease (not the file's owner and no CAP_LEASE) ({errno})", path.display())]
    PermissionDenied {
        /// The file.
        path: PathBuf,
        /// `EACCES`.
        errno: Errno,
    },
    /// `/proc/sys/fs/leases-enable` is 0: the kernel refuses every lease (`EINVAL`).
    #[error("{}: file leases are disabled on this system (/proc/sys/fs/leases-enable = 0) ({errno})", path.display())]
    LeasesDisabled {
        /// The file.
        path: PathBuf,
        /// `EINVAL`.
        errno: Errno,
    },
    /// A write lease needs the file to be open nowhere else (`EAGAIN`).
    #[error("{}: cannot take a write lease: another open of the file exists ({errno})", path.display())]
    OtherOpenExists {
        /// The file.
        path: PathBuf,
        /// `EAGAIN`.
        errno: Errno,
    },
    /// A read lease cannot be taken while any writer has the file open (`EAGAIN`).
    #[error("{}: cannot take a read lease: the file is open for writing ({errno})", path.display())]
    WriterHasFileOpen {
        /// The file.
        path: PathBuf,
        /// `EAGAIN`.
        errno: Errno,
    },
    /// The file system does not support leases (`EINVAL` with leases enabled, e.g. 9p,
    /// FUSE, NFS).
    #[error("{}: the file system does not support leases ({errno})", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// `EINVAL`.
        errno: Errno,
    },
    /// Opening the file (non-blocking) failed with `EAGAIN`: another process holds a
    /// conflicting lease on it. (The open has started a break of that lease.)
    #[error("{}: another process holds a conflicting lease on the file ({errno})", path.display())]
    LeasedElsewhere {
        /// The file.
        path: PathBuf,
        /// `EWOULDBLOCK`.
        errno: Errno,
    },
    /// The file is already leased for reading by this engine and a write lease was asked
    /// for. Upgrading a shared read lease is not supported: drop the read handles first.
    #[error("{}: already leased for reading; upgrading to a write lease is not supported", path.display())]
    UpgradeUnsupported {
        /// The file.
        path: PathBuf,
    },
    /// `release` was called for a lease with no break pending.
    #[error("{}: no break is pending on this lease", path.display())]
    NoBreakPending {
        /// The file.
        path: PathBuf,
    },
    /// `release` named a file this engine holds no lease on.
    #[error("file {file} is not leased by this engine")]
    UnknownFile {
        /// The file identity passed in.
        file: FileId,
    },
    /// Any other system call on the file failed (`open`, `fstat`, `fcntl`).
    #[error("{}: {op} failed ({errno})", path.display())]
    Sys {
        /// The file.
        path: PathBuf,
        /// The failing operation.
        op: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// Only one engine (one break thread) may run per process at a time.
    #[error("a lease engine is already running in this process")]
    AlreadyRunning,
    /// The engine needs a running tokio runtime (with I/O and time drivers).
    #[error("the lease engine needs a running tokio runtime")]
    NoRuntime,
    /// Setting up the engine (its signal, pipe, break thread or inotify) failed.
    #[error("lease listener setup: {op} failed ({errno})")]
    Setup {
        /// The failing operation.
        op: &'static str,
        /// Its errno.
        errno: Errno,
    },
}

impl LeaseError {
    /// The errno behind the error, when the kernel produced one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::NotRegularFile { errno, .. }
            | Self::PermissionDenied { errno, .. }
            | Self::LeasesDisabled { errno, .. }
            | Self::OtherOpenExists { errno, .. }
            | Self::WriterHasFileOpen { errno, .. }
            | Self::Unsupported { errno, .. }
            | Self::LeasedElsewhere { errno, .. }
            | Self::Sys { errno, .. }
            | Self::Setup { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The file the error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::NotRegularFile { path, .. }
            | Self::PermissionDenied { path, .. }
            | Self::LeasesDisabled { path, .. }
            | Self::OtherOpenExists { path, .. }
            | Self::WriterHasFileOpen { path, .. }
            | Self::Unsupported { path, .. }
            | Self::LeasedElsewhere { path, .. }
            | Self::UpgradeUnsupported { path }
            | Self::NoBreakPending { path }
            | Self::Sys { path, .. } => Some(path),
            _ => None,
        }
    }
}
