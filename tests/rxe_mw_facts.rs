//! The memory-window facts grants rely on, asserted on each guest kernel so that a kernel
//! that behaves differently fails loudly (docs/grants.md).

#[path = "guest/mod.rs"]
mod guest;

use std::sync::Arc;
use std::time::Duration;

use filemr::sys::{Mapping, page_size};
use filemr::verbs::{
    Access, CompletionQueue, MemoryRegion, MemoryWindow, MwType, ProtectionDomain, QpState,
    QueuePair, RemoteBuf, WcStatus,
};
use guest::GuestEnv;
use nix::errno::Errno;

const WAIT: Duration = Duration::from_secs(20);
const RW: Access = Access::REMOTE_WRITE.union(Access::REMOTE_READ);

struct Ends {
    pd: Arc<ProtectionDomain>,
    cq: Arc<CompletionQueue>,
    peer: QueuePair,
    server: QueuePair,
    local: MemoryRegion,
    local_buf: Arc<Mapping>,
}

fn ends(env: &GuestEnv) -> Ends {
    let (_ctx, pd, cq) = env.open();
    let (peer, server) = QueuePair::loopback_pair(&pd, &cq, 1).unwrap();
    let local_buf = Arc::new(Mapping::anonymous(65536).unwrap());
    let local = MemoryRegion::register(&pd, &local_buf, Access::LOCAL_WRITE).unwrap();
    Ends { pd, cq, peer, server, local, local_buf }
}

impl Ends {
    fn write(&self, data: &[u8], addr: u64, rkey: u32) -> WcStatus {
        self.local_buf.write_at(0, data).unwrap();
        self.peer.post_write(1, &self.local, 0, data.len(), RemoteBuf { addr, rkey }).unwrap();
        self.cq.wait_one(WAIT).unwrap().status
    }
}

fn target(pd: &Arc<ProtectionDomain>, len: usize) -> (Arc<Mapping>, MemoryRegion) {
    let map = Arc::new(Mapping::anonymous(len).unwrap());
    let mr = MemoryRegion::register(pd, &map, Access::LOCAL_WRITE | Access::MW_BIND).unwrap();
    (map, mr)
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn a_rebind_keeps_the_key_and_an_invalidated_key_fails() {
    let e = ends(&GuestEnv::get());
    let (map, mr) = target(&e.pd, 65536);
    let mw = MemoryWindow::alloc(&e.pd, MwType::Type2).unwrap();
    let key = e.server.bind_mw(&mw, &mr, mr.addr(), 65536, RW).unwrap();
    assert_eq!(key, mw.rkey());
    assert_ne!(key, mr.rkey(), "the window's key is not the region's");
    assert_eq!(e.write(b"first", mr.addr() + 10, key), WcStatus::Success);
    e.server.invalidate_mw(&mw).unwrap();
    // Same 8-bit key on the rebind: rxe accepts it, and the old key works again.
    e.server.bind_mw(&mw, &mr, mr.addr() + 4096, 8192, RW).unwrap();
    assert_eq!(e.write(b"again", mr.addr() + 4096, key), WcStatus::Success);
    let mut got = [0u8; 5];
    map.read_at(10, &mut got).unwrap();
    assert_eq!(&got, b"first");
    map.read_at(4096, &mut got).unwrap();
    assert_eq!(&got, b"again");
    // Measured: rxe checks a window's accesses against its memory region's range, not
    // the window's own (rxe_resp.c checks `mr_check_range(mw->mr, ...)`). So a grant must
    // cover its whole region: filemr gives each region its own memory region and grants
    // it whole. A kernel that starts enforcing window bounds fails here: revisit then.
    assert_eq!(e.write(b"x", mr.addr(), key), WcStatus::Success, "rxe enforces MW bounds now");
    // Outside the memory region: refused.
    assert_eq!(e.write(b"x", mr.addr() + 65536, key), WcStatus::RemoteAccess);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn after_an_invalidate_the_key_fails_with_a_remote_access_error() {
    let e = ends(&GuestEnv::get());
    let (_map, mr) = target(&e.pd, 8192);
    let mw = MemoryWindow::alloc(&e.pd, MwType::Type2).unwrap();
    let key = e.server.bind_mw(&mw, &mr, mr.addr(), 8192, RW).unwrap();
    e.server.invalidate_mw(&mw).unwrap();
    assert_eq!(e.write(b"late", mr.addr(), key), WcStatus::RemoteAccess);
    // RC: the requester's QP is in error after a remote access error.
    assert_eq!(e.peer.state().unwrap(), QpState::Error);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn binding_a_bound_window_fails_and_puts_the_qp_in_error() {
    let e = ends(&GuestEnv::get());
    let (_map, mr) = target(&e.pd, 8192);
    let mw = MemoryWindow::alloc(&e.pd, MwType::Type2).unwrap();
    e.server.bind_mw(&mw, &mr, mr.addr(), 8192, RW).unwrap();
    assert_eq!(e.server.state().unwrap(), QpState::ReadyToSend);
    let err = e.server.bind_mw(&mw, &mr, mr.addr(), 4096, RW).unwrap_err();
    assert_eq!(err.errno, Errno::EIO, "{err}");
    assert_eq!(e.server.state().unwrap(), QpState::Error);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn a_region_with_a_bound_window_cannot_be_deregistered() {
    let e = ends(&GuestEnv::get());
    let (_map, mr) = target(&e.pd, 8192);
    let mw = MemoryWindow::alloc(&e.pd, MwType::Type2).unwrap();
    e.server.bind_mw(&mw, &mr, mr.addr(), 8192, RW).unwrap();
    let (mr, err) = mr.deregister().unwrap_err();
    assert_eq!(err.errno, Errno::EINVAL, "{err}");
    e.server.invalidate_mw(&mw).unwrap();
    mr.deregister().map_err(|(_, e)| e).unwrap();
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn a_window_bound_on_one_qp_does_not_work_through_another() {
    let e = ends(&GuestEnv::get());
    let (_map, mr) = target(&e.pd, 8192);
    let mw = MemoryWindow::alloc(&e.pd, MwType::Type2).unwrap();
    let key = e.server.bind_mw(&mw, &mr, mr.addr(), 8192, RW).unwrap();
    // A second pair: its peer reaches its own server QP, not the one that bound.
    let (peer2, _server2) = QueuePair::loopback_pair(&e.pd, &e.cq, 1).unwrap();
    e.local_buf.write_at(0, b"other").unwrap();
    peer2.post_write(2, &e.local, 0, 5, RemoteBuf { addr: mr.addr(), rkey: key }).unwrap();
    assert_eq!(e.cq.wait_one(WAIT).unwrap().status, WcStatus::RemoteAccess);
}

/// Regions at a chosen address, and scratch memory costing one chunk standing in for a
/// region under a window at the same addresses (retarget mode's building blocks).
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn scratch_at_the_regions_addresses_takes_the_peers_writes() {
    let e = ends(&GuestEnv::get());
    let len = 4 << 20;
    let (map, mr) = target(&e.pd, len);
    let iova = mr.addr();
    let mw = MemoryWindow::alloc(&e.pd, MwType::Type2).unwrap();
    let key = e.server.bind_mw(&mw, &mr, iova, len, RW).unwrap();
    let chunk = 64 * 1024;
    let scratch_map = Arc::new(Mapping::scratch(0, len, chunk).unwrap());
    let scratch =
        MemoryRegion::register_at(&e.pd, &scratch_map, iova, Access::LOCAL_WRITE | Access::MW_BIND)
            .expect("a writable MR over one repeated shared-memory chunk");
    assert_eq!(scratch.addr(), iova);
    e.server.invalidate_mw(&mw).unwrap();
    e.server.bind_mw(&mw, &scratch, iova, len, RW).unwrap();
    let far = 3 * (1 << 20) + 100;
    assert_eq!(e.write(b"into scratch", iova + far as u64, key), WcStatus::Success);
    let mut got = [0u8; 12];
    scratch_map.read_at(far % chunk, &mut got).unwrap();
    assert_eq!(&got, b"into scratch", "the write landed in the one chunk");
    map.read_at(far, &mut got).unwrap();
    assert_eq!(got, [0; 12], "the region was not touched");
    // And back: a region registered at the same address (a rebuild) under the same key.
    e.server.invalidate_mw(&mw).unwrap();
    let again = Arc::new(Mapping::anonymous_at_offset(iova as usize % page_size(), len).unwrap());
    let rebuilt =
        MemoryRegion::register_at(&e.pd, &again, iova, Access::LOCAL_WRITE | Access::MW_BIND)
            .unwrap();
    e.server.bind_mw(&mw, &rebuilt, iova, len, RW).unwrap();
    assert_eq!(e.write(b"rebuilt", iova + 5, key), WcStatus::Success);
    let mut got = [0u8; 7];
    again.read_at(5, &mut got).unwrap();
    assert_eq!(&got, b"rebuilt");
}
