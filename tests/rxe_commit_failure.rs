//! A commit that fails is an error, never "logged and released anyway": on a full file
//! system, a staging region over a sparse file cannot write back what a peer wrote. The
//! explicit commit fails with ENOSPC; at revocation the failed commit is reported in
//! `Revoked`, the region is lost with `CommitFailed`, and both are counted. Its own
//! process: its manager never registers in place (staging everywhere), so that the
//! write-back needs new blocks.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use filemr::region::{Access, LostReason, RegionEventKind, RegionState, Strategy};
use filemr::verbs::WcStatus;
use guest::{GuestEnv, pattern};
use region_support::*;

const LEN: usize = 1 << 20;

/// A small tmpfs, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = guest::unique_path(&std::env::temp_dir(), "smallfs");
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn a_commit_that_fails_is_an_error_and_loses_the_region_at_revocation() {
    CONFIGURE.get_or_init(|| |c| c.in_place = false);
    let _env = GuestEnv::get();
    let fs = SmallFs::mount("2m");
    let path = fs.0.join("sparse");
    std::fs::File::create(&path).unwrap().set_len(LEN as u64).unwrap();
    let region = register(&path, 0, LEN, Access::ReadWrite).unwrap();
    assert_eq!(region.strategy(), Strategy::Staging, "in_place = false stages");
    // Fill the file system: the sparse file's blocks can no longer be allocated.
    let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
    let chunk = vec![0x11u8; 65536];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);

    let peer = Peer::new(LEN);
    let g = peer.grant(&region);
    let data = pattern(LEN, 4);
    assert_eq!(peer.write_to(&g, 0, &data), WcStatus::Success);
    // The explicit commit (LAYOUT_COMMIT's durability point) says it failed.
    let err = region.commit(0..LEN).unwrap_err();
    assert_eq!(err.errno(), nix::errno::Errno::ENOSPC, "{err}");

    // At revocation the failed commit is reported and the region is lost.
    let failures_before = metric_sum("filemr_region_commit_failures_total");
    let lost_before = metric_sum("filemr_region_lost_total{reason=\"commit_failed\"}");
    let mut events = region.events();
    let stamp = guest::unique_path(&std::env::temp_dir(), "stamp");
    let child = breaker("open-write", &path, &[stamp.to_str().unwrap()]);
    wait_recall(&mut events, &g);
    g.returned().unwrap();
    let revoked = wait_event(&mut events, WAIT, "Revoked", is_revoked);
    let RegionEventKind::Revoked { commit_error, .. } = revoked.kind else { unreachable!() };
    let why = commit_error.expect("the failed commit is in the Revoked event");
    assert!(why.contains("ENOSPC"), "{why}");
    let lost =
        wait_event(&mut events, WAIT, "Lost", |e| matches!(e.kind, RegionEventKind::Lost { .. }));
    let RegionEventKind::Lost { reason } = lost.kind else { unreachable!() };
    assert!(matches!(reason, LostReason::CommitFailed(_)), "{reason:?}");
    assert_eq!(region.info().state, RegionState::Lost);
    wait_child(child, WAIT);
    assert_eq!(metric_sum("filemr_region_commit_failures_total"), failures_before + 1.0);
    assert_eq!(metric_sum("filemr_region_lost_total{reason=\"commit_failed\"}"), lost_before + 1.0);
    note(&format!("commit failure: {why}"));
}
