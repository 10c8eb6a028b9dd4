//! Unit tests of the pure decisions (the real-lease tests live in `tests/lease.rs`).

use std::path::Path;

use nix::errno::Errno;

use super::break_thread::break_pending;
use super::engine::classify_setlease;
use super::{LeaseError, LeaseKind};
use crate::sys::lease::RawLease;

#[test]
fn setlease_errors_are_typed() {
    let p = Path::new("/x");
    let c = |kind, errno, enabled| classify_setlease(p, kind, errno, enabled);
    assert!(matches!(
        c(LeaseKind::Write, Errno::EAGAIN, Some(true)),
        LeaseError::OtherOpenExists { .. }
    ));
    assert!(matches!(
        c(LeaseKind::Read, Errno::EAGAIN, Some(true)),
        LeaseError::WriterHasFileOpen { .. }
    ));
    assert!(matches!(
        c(LeaseKind::Read, Errno::EACCES, Some(true)),
        LeaseError::PermissionDenied { .. }
    ));
    assert!(matches!(
        c(LeaseKind::Read, Errno::EINVAL, Some(false)),
        LeaseError::LeasesDisabled { .. }
    ));
    assert!(matches!(
        c(LeaseKind::Read, Errno::EINVAL, Some(true)),
        LeaseError::Unsupported { .. }
    ));
    assert!(matches!(c(LeaseKind::Read, Errno::EINVAL, None), LeaseError::Unsupported { .. }));
    let e = c(LeaseKind::Write, Errno::EAGAIN, Some(true));
    assert_eq!(e.errno(), Some(Errno::EAGAIN));
    assert_eq!(e.path(), Some(p));
    assert!(e.to_string().contains("another open of the file exists"), "{e}");
}

#[test]
fn pending_break_as_f_getlease_reports_it() {
    assert!(!break_pending(LeaseKind::Read, RawLease::Read));
    assert!(break_pending(LeaseKind::Read, RawLease::Unlocked));
    assert!(!break_pending(LeaseKind::Write, RawLease::Write));
    assert!(break_pending(LeaseKind::Write, RawLease::Read));
    assert!(break_pending(LeaseKind::Write, RawLease::Unlocked));
}
