//! A removed device that comes back, with `ManagerConfig::resume_on_device_return`
//! (`docs/failure-modes.md`), on a device of this test's own (`rxe_ret` on veth
//! `fmr-ret`; its peer is `rxe_retp` on the other end): the manager suspends its regions
//! (peers' writes committed, grants fenced, the protection domain let go) so the deletion
//! finishes once the application dropped its queue pairs; the leases stay held (a lease
//! break meanwhile is answered, and does not rebuild); when the device is added again
//! the same region handles are rebuilt at their old addresses, and new grants on new
//! queue pairs reach the files.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "../examples/embed/remote_peer.rs"]
mod remote_peer;

use std::process::Command;
use std::time::{Duration, Instant};

use filemr::grant::GrantState;
use filemr::region::{Access, Manager, ManagerConfig, Region, RegionError, RegionEventKind};
use filemr::verbs::WcStatus;
use guest::{DevicePair, GuestEnv, pattern, succeeds_within};
use prometheus_client::registry::Registry;
use region_support::{RT, make_file, note, wait_event};
use remote_peer::RemotePeer;

const DEV: &str = "rxe_ret";
const NETDEV: &str = "fmr-ret";
const PEER_DEV: &str = "rxe_retp";
const PEER_NETDEV: &str = "fmr-ret-p";
const LEN: usize = 1 << 20;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn a_returned_device_gets_the_same_regions_back() {
    let env = GuestEnv::get();
    let link = DevicePair::add((DEV, NETDEV), (PEER_DEV, PEER_NETDEV), "10.81.0");
    let _enter = RT.enter();
    let mut cfg = ManagerConfig::new(DEV);
    cfg.device_poll = Duration::from_millis(100);
    cfg.resume_on_device_return = true;
    let mgr = Manager::new(cfg, &mut Registry::default()).unwrap();
    let mut events = mgr.events();
    let paths = [
        make_file(&env.pagecache_dir, "device-return", LEN, 0),
        make_file(&env.dax_dir, "device-return", LEN, 0),
    ];
    let regions: Vec<Region> =
        paths.iter().map(|p| mgr.register(p, 0, LEN, Access::ReadWrite).unwrap()).collect();
    let addrs: Vec<u64> = regions.iter().map(|r| r.info().addr).collect();
    // (The listing sees them: the check at the end is not vacuous.)
    assert!(ours_on_device("mr").len() >= 2, "{:?}", ours_on_device("mr"));
    let (qp, peer) = RemotePeer::connected_to(&mgr, PEER_DEV, 8192);
    let grants: Vec<_> = regions.iter().map(|r| r.grant(&qp).unwrap()).collect();
    let a = pattern(4096, 1);
    for g in &grants {
        assert_eq!(peer.write(&g.info(), 0, &a).unwrap(), WcStatus::Success);
    }

    // Deleted: both regions suspended, the grants fenced, registrations refused.
    let mut delete = Command::new("rdma").args(["link", "delete", DEV]).spawn().unwrap();
    let t = Instant::now();
    wait_all(
        &mut events,
        &regions,
        "Suspended",
        |k| matches!(k, RegionEventKind::Suspended { device } if device == DEV),
    );
    note(&format!(
        "device return: both regions Suspended {:?} after the delete started",
        t.elapsed()
    ));
    assert!(grants.iter().all(|g| g.state() == GrantState::Fenced));
    assert!(mgr.protection_domain().is_none(), "the manager let go of its protection domain");
    match mgr.register(&paths[0], 0, 4096, Access::Read) {
        Err(e @ RegionError::Device { .. }) => assert_eq!(e.errno(), nix::errno::Errno::ENODEV),
        other => panic!("a registration while the device is gone: {other:?}"),
    }
    assert!(regions[0].guard().is_err(), "guards are refused while suspended");
    // The application drops its objects on the device (not the regions): the deletion
    // finishes.
    drop((grants, qp, peer));
    let done = succeeds_within(&mut delete, Duration::from_secs(10));
    assert!(done.is_some(), "with the regions suspended, the deletion finishes");
    note(&format!("device return: the delete finished {done:?} after the drop"));
    // The peers' writes were committed; reading the files breaks the (still held)
    // leases, which the manager answers without rebuilding anything.
    for p in &paths {
        assert!(std::fs::read(p).unwrap()[..4096] == a[..], "{}: committed", p.display());
    }

    // Back: the same handles are rebuilt at their addresses; new grants work.
    link.add_server_device();
    let t = Instant::now();
    wait_all(&mut events, &regions, "Rebuilt", |k| matches!(k, RegionEventKind::Rebuilt { .. }));
    note(&format!("device return: both regions Rebuilt {:?} after rdma link add", t.elapsed()));
    assert_eq!(regions.iter().map(|r| r.info().addr).collect::<Vec<_>>(), addrs, "same addresses");
    let (qp, peer) = RemotePeer::connected_to(&mgr, PEER_DEV, 8192);
    let b = pattern(4096, 2);
    for r in &regions {
        let g = r.grant(&qp).unwrap();
        let (st, got) = peer.read(&g.info(), 0, 4096).unwrap();
        assert_eq!(st, WcStatus::Success);
        assert!(got == a, "region {}: the rebuilt region reads the file", r.id());
        assert_eq!(peer.write(&g.info(), 4096, &b).unwrap(), WcStatus::Success);
        r.commit(4096..8192).unwrap();
        let _guard = r.guard().expect("guards are taken again");
    }
    drop((qp, peer));
    drop(regions);
    for p in &paths {
        let file = std::fs::read(p).unwrap();
        assert!(file[4096..8192] == b[..], "{}: the new grant's write", p.display());
        let _ = std::fs::remove_file(p);
    }
    drop(mgr);
    // Nothing of the process is left on the device: no memory region, no PD.
    for kind in ["mr", "pd"] {
        let left = ours_on_device(kind);
        assert!(left.is_empty(), "{kind} left on {DEV}: {left:?}");
    }
}

/// `rdma resource show <kind>` lines of user objects on `DEV`, which only this test uses.
fn ours_on_device(kind: &str) -> Vec<String> {
    guest::user_resources(kind, DEV)
}

/// Waits for an event of each region that `want` accepts, in any order.
fn wait_all(
    events: &mut filemr::region::RegionEvents,
    regions: &[Region],
    what: &str,
    want: impl Fn(&RegionEventKind) -> bool,
) {
    let mut left: Vec<u64> = regions.iter().map(|r| r.id()).collect();
    while !left.is_empty() {
        let e = wait_event(events, Duration::from_secs(20), what, |e| {
            left.contains(&e.region) && want(&e.kind)
        });
        left.retain(|id| *id != e.region);
    }
}
