//! Acquisitions of the same file share one lease and one fd until the last one drops.

use std::os::fd::AsRawFd;

use filemr::lease::{LeaseEngine, LeaseKind, LeaseState};

use crate::common::{TempDir, open_write_nonblocking, run};

#[test]
fn same_file_shares_one_lease_until_the_last_handle() {
    run(|| async {
        let dir = TempDir::new("share");
        let path = dir.file("f", 64);
        let link = dir.0.join("link");
        std::fs::hard_link(&path, &link).unwrap();
        let engine = LeaseEngine::start().unwrap();
        let a = engine.acquire(&path, LeaseKind::Write).unwrap();
        let b = engine.acquire(&link, LeaseKind::Write).unwrap();
        let c = b.clone();
        assert_eq!(a.file_id(), b.file_id());
        assert_eq!(a.fd().as_raw_fd(), b.fd().as_raw_fd());
        assert_eq!(engine.stats().leases, 1);
        drop(a);
        drop(b);
        assert_eq!(c.state(), LeaseState::Held);
        assert_eq!(engine.stats().leases, 1);
        drop(c);
        assert_eq!(engine.stats().leases, 0);
        // Lease and fd are gone: an open for writing no longer conflicts.
        open_write_nonblocking(&path).expect("file still leased after the last handle dropped");
    });
}
