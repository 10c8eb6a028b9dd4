//! Device removal, measured (the first step of handling it: what a process sees when
//! `rdma link delete` runs while it has objects on the device). A device of its own,
//! `rxe_gone` on a veth end `fmr-gone` (10.78.0.1), so no other test loses its device.
//! The facts are asserted as measured on both guest kernels and written to the notes
//! (`docs/failure-modes.md` explains what they mean for filemr).

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use filemr::sys::Mapping;
use filemr::verbs::{
    Access, AsyncEvents, CmChannel, CmEventKind, CmId, Context, MemoryRegion, MemoryWindow, MwType,
    ProtectionDomain, device_names,
};
use guest::{sh, succeeds_within};
use region_support::{RT, note};

const DEV: &str = "rxe_gone";
const NETDEV: &str = "fmr-gone";

/// Whether the RDMA netlink device list (`rdma dev show`) has the device.
fn netlink_lists() -> bool {
    let out = Command::new("rdma").args(["dev", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {DEV}:"))
}

/// What a verbs user holds: context, PD, a region with a window, the async event fd.
struct VerbsObjects {
    _mw: MemoryWindow,
    _mr: MemoryRegion,
    _pd: Arc<ProtectionDomain>,
    events: AsyncEvents,
    _ctx: Arc<Context>,
}

fn open() -> VerbsObjects {
    let ctx = Arc::new(Context::open(DEV).unwrap());
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let buf = Arc::new(Mapping::anonymous(1 << 20).unwrap());
    let mr = MemoryRegion::register(&pd, &buf, Access::LOCAL_WRITE | Access::MW_BIND).unwrap();
    let mw = MemoryWindow::alloc(&pd, MwType::Type2).unwrap();
    let events = AsyncEvents::new(&ctx).unwrap();
    VerbsObjects { _mw: mw, _mr: mr, _pd: pd, events, _ctx: ctx }
}

fn async_events(v: &VerbsObjects) -> Vec<u32> {
    let mut out = Vec::new();
    while let Ok(Some(ev)) = v.events.try_next() {
        out.push(ev.event_type);
    }
    out
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn what_a_process_sees_when_its_device_is_deleted() {
    let _ = Command::new("ip").args(["link", "del", NETDEV]).status();
    sh(&["ip", "link", "add", NETDEV, "type", "veth", "peer", "name", "fmr-gone-p"]);
    sh(&["ip", "addr", "add", "10.78.0.1/24", "dev", NETDEV]);
    sh(&["ip", "link", "set", NETDEV, "up"]);
    sh(&["ip", "link", "set", "fmr-gone-p", "up"]);
    let add = || sh(&["rdma", "link", "add", DEV, "type", "rxe", "netdev", NETDEV]);
    add();
    let _enter = RT.enter();

    // A. Verbs objects only.
    let v = open();
    let mut delete = Command::new("rdma").args(["link", "delete", DEV]).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let blocked = delete.try_wait().unwrap().is_none();
    let (listed, in_verbs_list) =
        (netlink_lists(), device_names().unwrap().iter().any(|d| d == DEV));
    let events = async_events(&v);
    note(&format!(
        "device removal, verbs only: delete blocked {blocked}; during it the device is in \
         `rdma dev show` {listed}, in ibv_get_device_list {in_verbs_list}; async events {events:?}"
    ));
    assert!(blocked, "the delete waits for the process's verbs objects");
    assert!(events.is_empty(), "rxe sends no async event (no DEVICE_FATAL)");
    let t = Instant::now();
    drop(v);
    let done = succeeds_within(&mut delete, Duration::from_secs(10));
    note(&format!(
        "device removal, verbs only: closing took {:?}; delete done {done:?}",
        t.elapsed()
    ));
    assert!(done.is_some(), "closing the verbs objects lets the delete finish");
    assert!(!device_names().unwrap().iter().any(|d| d == DEV), "the device is gone");
    add();
    assert!(device_names().unwrap().iter().any(|d| d == DEV), "the device is back");
    drop(Context::open(DEV).expect("the device opens again under its name"));

    // B. With an rdma_cm identifier on the device as well (a layout server's listener).
    let v = open();
    let channel = CmChannel::new().unwrap();
    let listener = CmId::listen(&channel, "10.78.0.1:7999".parse().unwrap(), 1).unwrap();
    assert_eq!(listener.device_name().as_deref(), Some(DEV));
    let mut delete = Command::new("rdma").args(["link", "delete", DEV]).spawn().unwrap();
    let mut cm = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if let Some(ev) = channel.next(Duration::from_millis(20)).unwrap() {
            cm.push(ev.kind);
        }
    }
    note(&format!("device removal, with a CM listener: CM events {cm:?}"));
    assert!(cm.contains(&CmEventKind::DeviceRemoval), "rdma_cm tells the listener: {cm:?}");
    drop(listener);
    drop(v);
    drop(channel);
    let done = succeeds_within(&mut delete, Duration::from_secs(5));
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.contains("infiniband"))
        .collect();
    note(&format!(
        "device removal, with a CM listener: after closing the listener, the channel and \
         every verbs object: delete done {done:?}; device files still open {fds:?}"
    ));
    assert_eq!(done, None, "librdmacm's own context for the device keeps it");
    assert!(fds.iter().any(|f| f.contains("uverbs")), "{fds:?}");
    // The delete completes when this process exits (its files close); nothing after
    // this in the process may need the network configuration lock the delete holds.
}
