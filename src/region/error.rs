//! The region layer's error type.

use std::path::PathBuf;

use nix::errno::Errno;

use crate::lease::LeaseError;
use crate::sys::SysError;
use crate::verbs::VerbsError;

/// Everything that can go wrong registering, committing or managing regions. Errors
/// about a file carry its path and, where it applies, the range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A region must cover at least one byte.
    #[error("{}: zero-length range at offset {offset}", path.display())]
    ZeroLength {
        /// The file.
        path: PathBuf,
        /// The requested offset.
        offset: u64,
    },
    /// The range ends after the end of the file.
    #[error("{}: range {offset}+{len} ends beyond the end of the file ({file_len} bytes)", path.display())]
    RangeBeyondEof {
        /// The file.
        path: PathBuf,
        /// The requested offset.
        offset: u64,
        /// The requested length.
        len: usize,
        /// The file's length.
        file_len: u64,
    },
    /// Only regular files can be registered (directories, devices... cannot).
    #[error("{}: not a regular file ({errno})", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// `EISDIR` for a directory, `EINVAL` otherwise.
        errno: Errno,
    },
    /// A system call on the file failed (stat, pread, pwrite, fdatasync).
    #[error("{}: {op} failed: {errno}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The call.
        op: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// Mapping memory failed.
    #[error("{}: range {offset}+{len}: {source}", path.display())]
    Map {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The length.
        len: usize,
        /// The failed call.
        source: SysError,
    },
    /// The device could not be opened or set up (missing device: `ENODEV`).
    #[error("device {device}: {source}")]
    Device {
        /// The device name.
        device: String,
        /// The failed verb.
        source: VerbsError,
    },
    /// `ibv_reg_mr` failed with `ENOMEM` while `RLIMIT_MEMLOCK` is finite.
    #[error("{}: range {offset}+{len}: registration failed with ENOMEM: RLIMIT_MEMLOCK is {limit} bytes (raise it with ulimit -l or CAP_IPC_LOCK) [{source}]", path.display())]
    MemlockLimit {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The length.
        len: usize,
        /// The soft `RLIMIT_MEMLOCK` in bytes.
        limit: u64,
        /// The failed verb.
        source: VerbsError,
    },
    /// The registration would lock more memory than [`ManagerConfig::memlock_budget`]
    /// allows (refused before anything was leased or registered).
    ///
    /// [`ManagerConfig::memlock_budget`]: super::ManagerConfig::memlock_budget
    #[error("{}: range {offset}+{len}: would lock {needed} bytes, and {used} of the manager's memlock budget of {budget} bytes are in use (ManagerConfig::memlock_budget)", path.display())]
    MemlockBudget {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The length.
        len: usize,
        /// Bytes the region would lock (whole pages).
        needed: u64,
        /// Bytes locked by the manager's regions now.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Registering the memory region failed.
    #[error("{}: range {offset}+{len}: {source}", path.display())]
    Register {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The length.
        len: usize,
        /// The failed verb.
        source: VerbsError,
    },
    /// The lease could not be taken (e.g. a write registration while another process
    /// holds the file open: `EAGAIN`, "another open of the file exists").
    #[error(transparent)]
    Lease(LeaseError),
    /// The lease engine is already running in this process (one manager per process).
    #[error(
        "a lease engine already runs in this process: only one region manager can exist at a time"
    )]
    EngineAlreadyRunning,
    /// No tokio runtime is current.
    #[error("the region manager needs a tokio runtime (with time and I/O enabled)")]
    NoRuntime,
    /// The file's lease is being broken right now: retry after the breaker is done.
    #[error("{}: the file's lease is being broken; retry later", path.display())]
    Busy {
        /// The file.
        path: PathBuf,
    },
    /// Binding or invalidating a grant's memory window failed.
    #[error("region {id}: grant on QP {qp}: {source}")]
    Grant {
        /// The region.
        id: u64,
        /// The server-side queue pair's number.
        qp: u32,
        /// The failed verb.
        source: VerbsError,
    },
    /// A grant was asked on a queue pair that cannot carry it.
    #[error("region {id}: cannot grant on QP {qp}: {why}")]
    GrantQp {
        /// The region.
        id: u64,
        /// The queue pair's number.
        qp: u32,
        /// Why (another protection domain, not ready to send).
        why: String,
    },
    /// The region is revoked or lost: there is nothing to commit through.
    #[error("region {id}: revoked or lost")]
    Revoked {
        /// The region.
        id: u64,
    },
    /// A commit range outside the region.
    #[error("region {id}: range {start}..{end} outside its {len} bytes")]
    OutOfRange {
        /// The region.
        id: u64,
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// The region's length.
        len: usize,
    },
}

impl RegionError {
    /// The errno that best describes the error.
    pub fn errno(&self) -> Errno {
        match self {
            RegionError::ZeroLength { .. } | RegionError::RangeBeyondEof { .. } => Errno::EINVAL,
            RegionError::MemlockBudget { .. } => Errno::ENOMEM,
            RegionError::NotRegularFile { errno, .. } | RegionError::Io { errno, .. } => *errno,
            RegionError::Map { source, .. } => source.errno,
            RegionError::Device { source, .. }
            | RegionError::MemlockLimit { source, .. }
            | RegionError::Register { source, .. }
            | RegionError::Grant { source, .. } => source.errno,
            RegionError::GrantQp { .. } => Errno::EINVAL,
            RegionError::Lease(e) => lease_errno(e),
            RegionError::EngineAlreadyRunning => Errno::EBUSY,
            RegionError::NoRuntime => Errno::EINVAL,
            RegionError::Busy { .. } => Errno::EAGAIN,
            RegionError::Revoked { .. } => Errno::ENXIO,
            RegionError::OutOfRange { .. } => Errno::ERANGE,
        }
    }
}

fn lease_errno(e: &LeaseError) -> Errno {
    match e {
        LeaseError::UpgradeUnsupported { .. } => Errno::EBUSY,
        LeaseError::Setup { .. } => Errno::EIO,
        e => e.errno().unwrap_or(Errno::EIO),
    }
}

/// Turns a failed `ibv_reg_mr` into the typed error: `ENOMEM` under a finite
/// `RLIMIT_MEMLOCK` (`memlock_limit`, bytes) names the limit.
pub(crate) fn registration_error(
    source: VerbsError,
    path: PathBuf,
    offset: u64,
    len: usize,
    memlock_limit: Option<u64>,
) -> RegionError {
    match memlock_limit {
        Some(limit) if source.errno == Errno::ENOMEM => {
            RegionError::MemlockLimit { path, offset, len, limit, source }
        }
        _ => RegionError::Register { path, offset, len, source },
    }
}

/// The soft `RLIMIT_MEMLOCK` in bytes, `None` when unlimited (or unknown).
pub(crate) fn memlock_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft != libc::RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enomem() -> VerbsError {
        VerbsError { verb: "ibv_reg_mr", errno: Errno::ENOMEM, detail: String::new() }
    }

    #[test]
    fn enomem_under_a_finite_memlock_limit_names_the_limit() {
        let e = registration_error(enomem(), "/f".into(), 0, 1 << 20, Some(8 << 20));
        assert!(matches!(e, RegionError::MemlockLimit { limit: 8388608, .. }));
        assert_eq!(e.errno(), Errno::ENOMEM);
        let msg = e.to_string();
        assert!(msg.contains("RLIMIT_MEMLOCK is 8388608 bytes"), "{msg}");
        assert!(msg.contains("/f: range 0+1048576"), "{msg}");
    }

    #[test]
    fn enomem_without_a_limit_and_other_errnos_are_plain_registration_errors() {
        let e = registration_error(enomem(), "/f".into(), 0, 1, None);
        assert!(matches!(e, RegionError::Register { .. }));
        let mut ef = enomem();
        ef.errno = Errno::EFAULT;
        let e = registration_error(ef, "/f".into(), 0, 1, Some(1));
        assert!(matches!(e, RegionError::Register { .. }));
        assert_eq!(e.errno(), Errno::EFAULT);
    }

    #[test]
    fn this_process_memlock_limit_is_read() {
        // Whatever it is, reading it must not fail or panic.
        let _ = memlock_limit();
    }
}
