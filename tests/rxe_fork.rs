//! A server that forks while a peer on the other end of the veth link writes:
//! registrations are neither corrupted nor lost. Every write the peer saw succeed is in
//! the file after the commit, on page cache
//! (staging: anonymous memory, left out of children with `MADV_DONTFORK`) and FS-DAX (a
//! `MAP_SHARED` file mapping, which children share and nothing copies). What libibverbs
//! reports about fork safety is asserted as measured.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "../examples/embed/remote_peer.rs"]
mod remote_peer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use filemr::region::{Access, Strategy};
use filemr::verbs::{CompletionQueue, ForkStatus, QueuePair, WcStatus, fork_status};
use guest::GuestEnv;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use region_support::*;
use remote_peer::RemotePeer;

const LEN: usize = 1 << 20;
const SLOTS: usize = 4000;
const FORKS: usize = 20;

/// Forks a child that checks whether `addr` is mapped in it (`msync` of an unmapped
/// range fails with `ENOMEM`), stays alive a few milliseconds (so the parent runs with
/// its pages shared or copied), and exits 0 if it was mapped, 1 if not.
fn fork_probe(addr: u64) -> bool {
    // SAFETY: the child calls only async-signal-safe functions (msync, nanosleep,
    // _exit) before exiting: nothing of the parent's other threads' state is touched.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: async-signal-safe system calls on plain values.
            unsafe {
                let page = addr as usize & !4095;
                let mapped = libc::msync(page as *mut libc::c_void, 4096, libc::MS_ASYNC) == 0;
                let ts = libc::timespec { tv_sec: 0, tv_nsec: 5_000_000 };
                libc::nanosleep(&ts, std::ptr::null_mut());
                libc::_exit(if mapped { 0 } else { 1 });
            }
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => code == 0,
            other => panic!("fork probe child: {other:?}"),
        },
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn forking_while_a_peer_writes_loses_no_acknowledged_write() {
    // The server's manager on the link's server device; its peer on the other end.
    CONFIGURE.get_or_init(|| |c| c.device = guest::var("FILEMR_SERVER_DEVICE"));
    let env = GuestEnv::get();
    let status = fork_status();
    note(&format!("fork: ibv_is_fork_initialized = {status:?}"));
    assert_eq!(status, ForkStatus::Unneeded, "both guest kernels copy pinned pages on fork");
    for (dir, fs) in [(&env.pagecache_dir, "page cache"), (&env.dax_dir, "fs-dax")] {
        let path = make_file(dir, "fork", LEN, 0);
        let region = register(&path, 0, LEN, Access::ReadWrite).unwrap();
        let strategy = region.strategy();
        let addr = region.info().addr;
        // The peer on the other end of the veth link, on a QP of the server's own.
        let peer = Arc::new(RemotePeer::open(&env.peer.device, 64 * 1024).unwrap());
        let pd = manager().protection_domain().expect("the device is there");
        let cq = CompletionQueue::new(pd.context(), 64).unwrap();
        let qp = Arc::new(QueuePair::new_rc(&pd, &cq).unwrap());
        let (gid_index, gid) = pd.context().pick_gid(1).unwrap();
        qp.connect(1, gid_index, peer.qp.qp_num(), peer.gid).unwrap();
        peer.connect(qp.qp_num(), gid).unwrap();
        let g = region.grant(&qp).unwrap();
        let key = g.info();
        let started = Arc::new(AtomicBool::new(false));
        let streamer = {
            let (peer, started) = (peer.clone(), started.clone());
            std::thread::spawn(move || {
                for i in 0..SLOTS {
                    let st = peer.write(&key, (i * 8) as u64, &((i + 1) as u64).to_le_bytes());
                    let st = st.unwrap();
                    assert_eq!(st, WcStatus::Success, "write {i}");
                    started.store(true, Ordering::Relaxed);
                }
            })
        };
        while !started.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let mut mapped_in_child = Vec::new();
        for _ in 0..FORKS {
            mapped_in_child.push(fork_probe(addr));
        }
        streamer.join().unwrap();
        let shared = strategy != Strategy::Staging;
        assert!(
            mapped_in_child.iter().all(|m| *m == shared),
            "{fs} ({strategy:?}): region mapped in the children: {mapped_in_child:?}"
        );
        // Every slot through the key, then through the file after the commit.
        let (st, got) = peer.read(&key, 0, SLOTS * 8).unwrap();
        assert_eq!(st, WcStatus::Success);
        region.commit(0..SLOTS * 8).unwrap();
        drop(g);
        drop(region);
        let file = std::fs::read(&path).unwrap();
        for (what, bytes) in [("the region", &got[..]), ("the file", &file[..SLOTS * 8])] {
            for (i, slot) in bytes.chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes(slot.try_into().unwrap());
                assert_eq!(v, (i + 1) as u64, "{fs} ({strategy:?}): slot {i} of {what}");
            }
        }
        note(&format!("fork: {fs} ({strategy:?}): {FORKS} forks during {SLOTS} writes, none lost"));
    }
}
