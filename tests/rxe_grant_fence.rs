//! Fence mode with a peer that never answers the recall, in its own process (it lowers
//! the system-wide lease-break-time), the peer on the other end of the veth link (the
//! manager on the link's server device): the peer's window is invalidated before the
//! commit, so every write the peer saw succeed is in the file, and the first that fails
//! is not.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "../examples/embed/remote_peer.rs"]
mod remote_peer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use filemr::grant::GrantState;
use filemr::region::{Access, RegionEventKind, Strategy};
use filemr::verbs::WcStatus;
use guest::{BreakTime, GuestEnv};
use region_support::*;
use remote_peer::RemotePeer;

const LEN: usize = 4 << 20;
const SLOT: usize = 8;

/// A peer streams numbered 8-byte WRITEs (slot i gets i+1) through its grant, with no
/// guard and no return, while another process truncates the file.
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn streaming_peer_is_fenced_before_the_commit_and_loses_no_acknowledged_write() {
    CONFIGURE.get_or_init(|| |c| c.device = guest::var("FILEMR_SERVER_DEVICE"));
    let env = GuestEnv::get();
    let _bt = BreakTime::set(3);
    for (dir, fs) in [(&env.dax_dir, "fs-dax"), (&env.pagecache_dir, "page cache")] {
        let path = make_file(dir, "stream", LEN, 0);
        let region = register(&path, 0, LEN, Access::ReadWrite).unwrap();
        let strategy = region.strategy();
        let mut events = region.events();
        let (qp, peer) = RemotePeer::connected_to(manager(), &env.peer.device, SLOT);
        let g = region.grant(&qp).unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let streamer = {
            let (info, started) = (g.info(), started.clone());
            std::thread::spawn(move || {
                let mut last_ok = 0usize;
                for i in 0..LEN / SLOT {
                    let data = ((i + 1) as u64).to_le_bytes();
                    let st = peer.write(&info, (i * SLOT) as u64, &data).unwrap();
                    started.store(true, Ordering::Relaxed);
                    if st != WcStatus::Success {
                        return (last_ok, Some((i, st)));
                    }
                    last_ok = i + 1;
                }
                (last_ok, None)
            })
        };
        while !started.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (child, [src, seen, stamp]) = truncate_writer(&path, b"after");
        wait_recall(&mut events, &g);
        let gid = g.id();
        let fenced = wait_event(&mut events, Duration::from_secs(10), "Fenced", |e| {
            e.kind == RegionEventKind::Fenced { grant: gid }
        });
        let revoked = wait_event(&mut events, Duration::from_secs(10), "Revoked", is_revoked);
        assert!(fenced.at <= revoked.at, "fenced after the revocation");
        wait_child(child, WAIT);
        let (acked, failed) = streamer.join().unwrap();
        let (fail_at, status) = failed.expect("the peer never saw its key fail");
        assert_eq!(
            status,
            WcStatus::RemoteAccess,
            "the fenced key fails with a remote access error"
        );
        assert_eq!(g.state(), GrantState::Fenced);
        // The file as the breaker found it: every acknowledged write, nothing after.
        let before = std::fs::read(&seen).unwrap();
        assert_eq!(before.len(), LEN);
        let slot =
            |i: usize| u64::from_le_bytes(before[i * SLOT..(i + 1) * SLOT].try_into().unwrap());
        let lost: Vec<usize> = (0..acked).filter(|&i| slot(i) != (i + 1) as u64).collect();
        assert!(
            lost.is_empty(),
            "{fs} ({strategy:?}): {} of {acked} acknowledged writes are not in the file, first slot {}",
            lost.len(),
            lost[0]
        );
        assert_ne!(slot(fail_at), (fail_at + 1) as u64, "the refused write reached the file");
        note(&format!(
            "{}: {fs} ({}): streaming peer fenced after {acked} acknowledged 8-byte writes, none lost",
            env.profile,
            strategy.label()
        ));
        if fs == "fs-dax" {
            assert_eq!(strategy, Strategy::Staging, "FS-DAX stages on these kernels");
        }
        drop(region);
        for p in [&path, &src, &seen, &stamp] {
            let _ = std::fs::remove_file(p);
        }
    }
    let m = metrics_text();
    assert!(m.contains("filemr_grant_fenced_total 2"), "{m}");
    assert!(m.contains("filemr_grant_recalled_total 2"), "{m}");
}
