use nix::errno::Errno;

/// A failed verb: which one, the errno it returned and what it was asked to do.
#[derive(Debug, thiserror::Error)]
#[error("{verb} failed: {errno} ({desc}){}", if .detail.is_empty() { String::new() } else { format!(" [{}]", .detail) }, desc = .errno.desc())]
pub struct VerbsError {
    /// The libibverbs function that failed, e.g. `ibv_reg_mr`.
    pub verb: &'static str,
    /// The errno it reported.
    pub errno: Errno,
    /// What was asked (device name, address range, access flags...), may be empty.
    pub detail: String,
}

/// Result of a verbs call.
pub type VerbsResult<T> = Result<T, VerbsError>;

impl VerbsError {
    pub(crate) fn new(verb: &'static str, errno: Errno, detail: impl Into<String>) -> Self {
        Self { verb, errno, detail: detail.into() }
    }

    /// Error from the thread's `errno` after a verb returned NULL or -1.
    pub(crate) fn last(verb: &'static str, detail: impl Into<String>) -> Self {
        let errno = Errno::last();
        // A provider that fails without setting errno still failed.
        let errno = if errno == Errno::UnknownErrno { Errno::EIO } else { errno };
        Self::new(verb, errno, detail)
    }

    /// Error from a verb that returns the errno value directly (0 on success).
    pub(crate) fn from_ret(verb: &'static str, ret: i32, detail: impl Into<String>) -> Self {
        let code = if ret < 0 { -ret } else { ret };
        Self::new(verb, Errno::from_raw(code), detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_verb_errno_and_detail() {
        let e = VerbsError::new("ibv_reg_mr", Errno::EOPNOTSUPP, "addr 0x1000 len 4096");
        let s = e.to_string();
        assert!(s.starts_with("ibv_reg_mr failed: EOPNOTSUPP"), "{s}");
        assert!(s.ends_with("[addr 0x1000 len 4096]"), "{s}");
        assert_eq!(VerbsError::from_ret("ibv_modify_qp", -22, "").errno, Errno::EINVAL);
        assert_eq!(VerbsError::from_ret("ibv_post_send", 12, "").errno, Errno::ENOMEM);
        assert!(!VerbsError::new("ibv_alloc_pd", Errno::ENOMEM, "").to_string().contains('['));
    }
}
