use nix::errno::Errno;

/// A failed system call: which call, its errno and what it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {errno} ({desc}) [{detail}]", desc = .errno.desc())]
pub struct SysError {
    /// The system call, e.g. `mmap`.
    pub call: &'static str,
    /// The errno it returned.
    pub errno: Errno,
    /// What it was applied to (path, range, length).
    pub detail: String,
}

/// Result of a call in the system layer.
pub type SysResult<T> = Result<T, SysError>;

impl SysError {
    pub(crate) fn new(call: &'static str, errno: Errno, detail: impl Into<String>) -> Self {
        Self { call, errno, detail: detail.into() }
    }
}

/// The errno behind a `std::io::Error` (`EIO` when it carries none).
pub fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}
