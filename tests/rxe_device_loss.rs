//! What filemr does when its device is removed (`docs/failure-modes.md`), on a device of
//! this test's own (`rxe_lost` on veth `fmr-lost`; its peer is `rxe_lostp` on the other
//! end): the manager notices within its `device_poll`, loses every region (peers'
//! writes committed, grants fenced), refuses new registrations; once the application
//! drops it the deletion finishes; and a manager started while the device is missing
//! waits for it (`device_wait`).

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "../examples/embed/remote_peer.rs"]
mod remote_peer;

use std::process::Command;
use std::time::{Duration, Instant};

use filemr::grant::GrantState;
use filemr::region::{Access, LostReason, Manager, ManagerConfig, RegionError, RegionEventKind};
use filemr::verbs::WcStatus;
use guest::{DevicePair, GuestEnv, pattern, succeeds_within};
use prometheus_client::registry::Registry;
use region_support::{RT, make_file, note, wait_event};
use remote_peer::RemotePeer;

const DEV: &str = "rxe_lost";
const NETDEV: &str = "fmr-lost";
/// The peer's device, on the link's other end.
const PEER_DEV: &str = "rxe_lostp";
const PEER_NETDEV: &str = "fmr-lost-p";
const LEN: usize = 1 << 20;

fn config() -> ManagerConfig {
    let mut cfg = ManagerConfig::new(DEV);
    cfg.device_poll = Duration::from_millis(100);
    cfg
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn a_removed_device_loses_its_regions_and_a_new_manager_waits_for_it() {
    let env = GuestEnv::get();
    let link = DevicePair::add((DEV, NETDEV), (PEER_DEV, PEER_NETDEV), "10.79.0");
    let _enter = RT.enter();
    let mut registry = Registry::default();
    let mgr = Manager::new(config(), &mut registry).unwrap();
    let path = make_file(&env.pagecache_dir, "device-loss", LEN, 0);
    let region = mgr.register(&path, 0, LEN, Access::ReadWrite).unwrap();
    let mut events = region.events();

    // A peer on the other end of the link, writing through its grant.
    let (qp, peer) = RemotePeer::connected_to(&mgr, PEER_DEV, 8192);
    let g = region.grant(&qp).unwrap();
    let key = g.info();
    let write = |off: u64, data: &[u8]| peer.write(&key, off, data).ok();
    let a = pattern(4096, 1);
    assert_eq!(write(0, &a), Some(WcStatus::Success));

    // The device is deleted: the manager notices and gives every region up.
    let mut delete = Command::new("rdma").args(["link", "delete", DEV]).spawn().unwrap();
    let t = Instant::now();
    let lost = wait_event(&mut events, Duration::from_secs(10), "Lost(DeviceGone)", |e| {
        matches!(&e.kind, RegionEventKind::Lost { reason: LostReason::DeviceGone { .. } })
    });
    note(&format!("device loss: Lost(DeviceGone) {:?} after the delete started", t.elapsed()));
    let RegionEventKind::Lost { reason: LostReason::DeviceGone { device } } = lost.kind else {
        unreachable!()
    };
    assert_eq!(device, DEV);
    assert!(mgr.device_lost());
    assert_eq!(g.state(), GrantState::Lost);
    match mgr.register(&path, 0, 4096, Access::Read) {
        Err(e @ RegionError::Device { .. }) => {
            assert_eq!(e.errno(), nix::errno::Errno::ENODEV, "{e}");
        }
        other => panic!("a registration after the device was removed: {other:?}"),
    }
    assert_ne!(write(4096, &pattern(4096, 2)), Some(WcStatus::Success), "the key is gone");
    assert!(delete.try_wait().unwrap().is_none(), "the delete waits for the manager");

    // The application drops everything on the device: the deletion finishes.
    let t = Instant::now();
    drop((g, region, qp));
    drop(mgr);
    let done = succeeds_within(&mut delete, Duration::from_secs(10));
    note(&format!(
        "device loss: the delete finished {done:?} after the drop (drop took {:?})",
        t.elapsed()
    ));
    assert!(done.is_some(), "dropping the manager lets the deletion finish");
    let file = std::fs::read(&path).unwrap();
    assert!(file[..4096] == a[..], "the peer's write was committed when the region was lost");

    // The device comes back while a new manager waits for it.
    let waiter = std::thread::spawn(|| {
        let _enter = RT.enter();
        let mut cfg = config();
        cfg.device_wait = Duration::from_secs(30);
        let started = Instant::now();
        (Manager::new(cfg, &mut Registry::default()), started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(1));
    link.add_server_device();
    let (mgr, waited) = waiter.join().unwrap();
    let mgr = mgr.expect("the waiting manager starts when the device is back");
    assert!(waited >= Duration::from_millis(900), "it waited: {waited:?}");
    let again = mgr.register(&path, 0, 4096, Access::Read).unwrap();
    drop(again);
    drop(mgr);
    let mut none = ManagerConfig::new("rxe_never");
    none.device_wait = Duration::from_millis(300);
    match Manager::new(none, &mut Registry::default()) {
        Err(e @ RegionError::Device { .. }) => assert_eq!(e.errno(), nix::errno::Errno::ENODEV),
        other => panic!("a device that never comes: {other:?}"),
    }
    drop(peer);
}
