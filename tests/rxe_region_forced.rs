//! The forced revocation path, in its own process: it lowers the system-wide
//! `lease-break-time`, which would shorten every other test's deadline. The peer is on
//! the other end of the veth link (the manager on the link's server device).

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "../examples/embed/remote_peer.rs"]
mod remote_peer;

use std::time::{Duration, Instant};

use filemr::region::{Access, RegionEventKind, RevokeReason};
use guest::{BreakTime, GuestEnv};
use region_support::*;
use remote_peer::RemotePeer;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn guard_held_forever_is_forced_and_no_mr_remains() {
    CONFIGURE.get_or_init(|| |c| c.device = guest::var("FILEMR_SERVER_DEVICE"));
    let env = GuestEnv::get();
    let _bt = BreakTime::set(2);
    for dir in [&env.pagecache_dir, &env.dax_dir] {
        let path = make_file(dir, "forced", 65536, 4);
        let region = register(&path, 0, 65536, Access::ReadWrite).unwrap();
        let info = region.info();
        assert_eq!(
            mr_lines_with_lkey(info.lkey).len(),
            1,
            "the region's MR is listed by rdma resource show mr"
        );
        let mut events = region.events();
        // A peer with a grant that never answers the recall.
        let (qp, peer) = RemotePeer::connected_to(manager(), &env.peer.device, 64);
        let g = region.grant(&qp).unwrap();
        assert_eq!(peer.write(&g.info(), 0, &[1; 64]).unwrap(), filemr::verbs::WcStatus::Success);
        let held = region.guard().unwrap();
        let stamp = guest::unique_path(&std::env::temp_dir(), "forced-stamp");
        let start = Instant::now();
        let child = breaker("open-write", &path, &[stamp.to_str().unwrap()]);
        wait_recall(&mut events, &g);
        let gid = g.id();
        wait_event(&mut events, Duration::from_secs(10), "Fenced", |e| {
            e.kind == RegionEventKind::Fenced { grant: gid }
        });
        let ev = wait_event(&mut events, Duration::from_secs(10), "Revoked", is_revoked);
        let RegionEventKind::Revoked { reason, forced, .. } = ev.kind else { unreachable!() };
        assert_eq!(reason, RevokeReason::LeaseBroken);
        assert!(forced, "a guard was held past the deadline: must be forced");
        assert!(start.elapsed() < Duration::from_secs(4));
        assert!(
            mr_lines_with_lkey(info.lkey).is_empty(),
            "an MR of the revoked region remains: {:?}",
            mr_lines_with_lkey(info.lkey)
        );
        // The fenced grant's key fails.
        assert_eq!(
            peer.write(&g.info(), 0, &[2; 64]).unwrap(),
            filemr::verbs::WcStatus::RemoteAccess
        );
        assert_eq!(g.state(), filemr::grant::GrantState::Fenced);
        // The breaker proceeds.
        wait_child(child, Duration::from_secs(10));
        assert!(stamp.exists());
        let ev = wait_event(&mut events, WAIT, "Rebuilt", is_rebuilt);
        let RegionEventKind::Rebuilt { addr, generation, .. } = ev.kind else { unreachable!() };
        assert_eq!((addr, generation), (info.addr, 2), "rebuilt at the same address");
        // A fenced grant stays fenced after the rebuild.
        assert_eq!(g.state(), filemr::grant::GrantState::Fenced);
        // The stale guard does not hold the new generation.
        drop(held);
        assert_eq!(region.guards_held(), 0);
        drop(region.guard().unwrap());
        drop(region);
        let m = metrics_text();
        let forced = "filemr_region_revocations_total{reason=\"lease_broken\",forced=\"true\"}";
        assert!(metric_sum(forced) >= 1.0, "{m}");
        assert!(metric_sum("filemr_grant_fenced_total") >= 1.0, "{m}");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(stamp);
    }
}
