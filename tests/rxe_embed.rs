//! filemr inside a server that owns its verbs objects (`docs/embedding.md`): a manager
//! over the application's context and protection domain (opened with raw libibverbs
//! calls, `examples/embed/app_verbs.rs`), grants on the application's queue pairs, a peer
//! on the other end of the veth link reading and writing through them across a recall
//! and rebuild, with the application polling its completion queue either way
//! (`CqPolling`); and misuse refused with a clear error that leaves the queue pair as it
//! was.

#[path = "../examples/embed/app_verbs.rs"]
mod app_verbs;
#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "../examples/embed/remote_peer.rs"]
mod remote_peer;

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use app_verbs::{AppVerbs, PollLoop};
use filemr::grant::GrantState;
use filemr::region::{Access, Manager, ManagerConfig, Region, RegionError, RegionEventKind};
use filemr::verbs::{
    CompletionQueue, Context, CqPolling, ProtectionDomain, QueuePair, WcStatus, ffi,
};
use guest::{GuestEnv, pattern};
use nix::errno::Errno;
use prometheus_client::registry::Registry;
use region_support::{
    RT, WAIT, is_rebuilt, is_revoked, make_file, register_with, truncate_writer, wait_child,
    wait_event,
};
use remote_peer::RemotePeer;

const LEN: usize = 1 << 20;

/// The application's objects on the server's device and filemr's manager over them.
struct Embedded {
    app: Arc<AppVerbs>,
    ctx: Arc<Context>,
    pd: Arc<ProtectionDomain>,
    mgr: Manager,
    registry: Mutex<Registry>,
}

static EMBEDDED: LazyLock<Embedded> = LazyLock::new(|| {
    region_support::init_logging();
    let env = GuestEnv::get();
    let app = Arc::new(AppVerbs::open(&env.server.device).expect("the application's verbs"));
    // SAFETY: `app` lives in this static for the rest of the process, like the manager.
    let (ctx, pd) = unsafe {
        let ctx = Arc::new(Context::from_raw(app.ctx).unwrap());
        let pd = ProtectionDomain::from_raw(&ctx, app.pd).unwrap();
        (ctx, pd)
    };
    assert!(!ctx.is_owned() && !pd.is_owned());
    assert_eq!(ctx.name(), env.server.device);
    let mut registry = Registry::default();
    let _enter = RT.enter();
    let mgr =
        Manager::with_protection_domain(ManagerConfig::new("ignored"), pd.clone(), &mut registry)
            .expect("manager over the application's PD");
    assert_eq!(
        mgr.protection_domain().unwrap().as_raw(),
        app.pd,
        "regions go into the application's PD"
    );
    Embedded { app, ctx, pd, mgr, registry: Mutex::new(registry) }
});

impl Embedded {
    /// Adopts the application's completion queue `raw`.
    fn cq(&self, raw: *mut ffi::ibv_cq, polling: CqPolling) -> Arc<CompletionQueue> {
        // SAFETY: the application's queues live as long as `app` (the whole process).
        unsafe { CompletionQueue::from_raw(&self.ctx, raw, polling) }.unwrap()
    }

    /// A queue pair of the application in `pd` on `cq`, connected to a new peer with
    /// `rights`; the peer.
    fn connected_qp(
        &self,
        pd: *mut ffi::ibv_pd,
        cq: *mut ffi::ibv_cq,
        rights: u32,
    ) -> (*mut ffi::ibv_qp, RemotePeer) {
        let env = GuestEnv::get();
        let peer = RemotePeer::open(&env.peer.device, LEN).unwrap();
        let raw = self.app.create_qp(pd, cq).unwrap();
        // SAFETY: a live QP of the application's; only its number is read.
        let qpn = unsafe { (*raw).qp_num };
        let (index, gid) = self.ctx.pick_gid(1).unwrap();
        let mtu = self.ctx.port(1).unwrap().active_mtu;
        self.app.connect_with(raw, index, mtu, peer.qp.qp_num(), peer.gid, rights).unwrap();
        peer.connect(qpn, gid).unwrap();
        (raw, peer)
    }

    fn metric(&self, series: &str) -> f64 {
        region_support::metric_sum_in(&self.registry.lock().unwrap(), series)
    }
}

fn read_write() -> u32 {
    (ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
        .0
}

fn rts(e: &Embedded, qp: *mut ffi::ibv_qp) -> bool {
    e.app.qp_state(qp).unwrap() == ffi::ibv_qp_state::IBV_QPS_RTS
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn application_queue_pair_serves_a_peer_through_recall_and_rebuild() {
    let env = GuestEnv::get();
    let e = &*EMBEDDED;
    let runs = [
        (CqPolling::Application, &env.pagecache_dir, "page cache"),
        (CqPolling::Shared, &env.dax_dir, "fs-dax"),
        (CqPolling::Application, &env.dax_dir, "fs-dax"),
        (CqPolling::Shared, &env.pagecache_dir, "page cache"),
    ];
    for (n, (polling, dir, fs)) in runs.into_iter().enumerate() {
        let what = format!("{fs}, {polling:?} polling");
        let raw_cq = e.app.create_cq().unwrap();
        let cq = e.cq(raw_cq, polling);
        let (raw_qp, peer) = e.connected_qp(e.app.pd, raw_cq, read_write());
        // SAFETY: the application keeps the QP for the whole process.
        let qp = Arc::new(unsafe { QueuePair::from_raw(&e.pd, &cq, raw_qp) }.unwrap());
        e.app.post_recvs(raw_qp, 3).unwrap();
        let polling_loop = PollLoop::start(e.app.clone(), cq.clone());

        let path = make_file(dir, "embed", LEN, 0);
        let region: Region = register_with(&e.mgr, &path, 0, LEN, Access::ReadWrite).unwrap();
        let mut events = region.events();
        let g = region.grant(&qp).unwrap();
        let key = g.info();
        assert_eq!(key.qp_num, qp.qp_num(), "{what}: the grant is on the application's QP");

        // The application's own traffic and the peer's one-sided I/O side by side.
        assert_eq!(peer.send(b"first").unwrap(), WcStatus::Success, "{what}");
        let a = pattern(4096, 1);
        assert_eq!(peer.write(&key, 0, &a).unwrap(), WcStatus::Success, "{what}: write");
        assert_eq!(peer.read(&key, 0, 4096).unwrap(), (WcStatus::Success, a.clone()), "{what}");
        // (The file is checked through the breaker's eyes and after the region is gone:
        // any open of it, even this process's, even for reading, breaks the lease.)
        region.commit(0..4096).unwrap();
        // A writer opens the file: the application recalls, the peer returns.
        let b = pattern(LEN, 2);
        let (child, [_src, seen, _stamp]) = truncate_writer(&path, &b);
        let gid = g.id();
        wait_event(
            &mut events,
            WAIT,
            "Recall",
            |ev| matches!(ev.kind, RegionEventKind::Recall { grant, .. } if grant == gid),
        );
        assert_eq!(peer.send(b"returning").unwrap(), WcStatus::Success, "{what}");
        g.returned().unwrap();
        let revoked = wait_event(&mut events, WAIT, "Revoked", is_revoked);
        let RegionEventKind::Revoked { forced, commit_error, .. } = revoked.kind else {
            unreachable!()
        };
        assert!(!forced && commit_error.is_none(), "{what}: a clean revocation");
        wait_child(child, WAIT);
        assert_eq!(
            std::fs::read(&seen).unwrap()[..4096],
            a[..],
            "{what}: the writer saw the commit"
        );
        wait_event(&mut events, WAIT, "Rebuilt", is_rebuilt);
        wait_event(
            &mut events,
            WAIT,
            "Available",
            |ev| matches!(ev.kind, RegionEventKind::Available { grant, .. } if grant == gid),
        );
        let info = g.info();
        assert_eq!((info.state, info.rkey, info.generation), (GrantState::Active, key.rkey, 2));

        // The same key reaches the file as the writer left it, and writes into it.
        let (st, got) = peer.read(&info, 0, LEN).unwrap();
        assert_eq!(st, WcStatus::Success, "{what}");
        assert!(got == b, "{what}: the rebuilt region shows the writer's bytes");
        let c = pattern(8192, 3);
        assert_eq!(peer.write(&info, 8192, &c).unwrap(), WcStatus::Success, "{what}");
        assert_eq!(peer.send(b"done").unwrap(), WcStatus::Success, "{what}");
        region.commit(8192..16384).unwrap();

        // The application saw exactly its own completions; filemr's went to filemr.
        let (own_ids, delivered) = (polling_loop.own_ids.clone(), polling_loop.delivered.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while own_ids.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        polling_loop.stop().unwrap();
        assert_eq!(*own_ids.lock().unwrap(), [0, 1, 2], "{what}: the application's receives");
        // Bind, invalidate on return, rebind after the rebuild.
        let want = if polling == CqPolling::Application { 3 } else { 0 };
        assert_eq!(delivered.load(Ordering::Relaxed), want, "{what}: completions handed over");
        assert!(rts(e, raw_qp), "{what}: the application's QP is still ready to send");
        drop(g);
        drop(region);
        let file = std::fs::read(&path).unwrap();
        assert!(file[8192..16384] == c[..], "{what}: the write after the rebuild is in the file");
        assert!(file[..8192] == b[..8192], "{what}: the writer's bytes around it");
        let returned = e.metric(r#"filemr_grant_returned_total{when="in_time"}"#);
        assert_eq!(returned, (n + 1) as f64, "{what}: returns counted");
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn misuse_of_application_objects_is_refused_and_leaves_queue_pairs_as_they_were() {
    let env = GuestEnv::get();
    let e = &*EMBEDDED;
    let einval = |r: Result<(), filemr::verbs::VerbsError>, what: &str, says: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.errno, Errno::EINVAL, "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    };
    // SAFETY (every block below): NULL is refused before use, the other pointers are the
    // application's live objects, kept for the whole process.
    unsafe {
        einval(Context::from_raw(std::ptr::null_mut()).map(drop), "NULL context", "NULL");
        einval(
            ProtectionDomain::from_raw(&e.ctx, std::ptr::null_mut()).map(drop),
            "NULL PD",
            "NULL",
        );
        let null_cq = CompletionQueue::from_raw(&e.ctx, std::ptr::null_mut(), CqPolling::Shared);
        einval(null_cq.map(drop), "NULL CQ", "NULL");
    }
    let raw_cq = e.app.create_cq().unwrap();
    let cq = e.cq(raw_cq, CqPolling::Shared);
    // SAFETY: as above.
    einval(
        unsafe { QueuePair::from_raw(&e.pd, &cq, std::ptr::null_mut()) }.map(drop),
        "NULL QP",
        "NULL",
    );

    // Objects of another device's context.
    let other = AppVerbs::open(&env.peer.device).unwrap();
    // SAFETY: as above.
    unsafe {
        let pd = ProtectionDomain::from_raw(&e.ctx, other.pd);
        einval(pd.map(drop), "PD of another context", "another context");
        let cq = CompletionQueue::from_raw(&e.ctx, other.cq, CqPolling::Shared);
        einval(cq.map(drop), "CQ of another context", "another context");
    }

    let path = make_file(&env.pagecache_dir, "embed-misuse", LEN, 0);
    let region = register_with(&e.mgr, &path, 0, LEN, Access::ReadWrite).unwrap();
    let refused = |qp: &Arc<QueuePair>, what: &str, says: &str| match region.grant(qp) {
        Err(RegionError::GrantQp { why, .. }) => assert!(why.contains(says), "{what}: {why}"),
        other => panic!("{what}: {other:?}"),
    };

    // A connected QP in another PD of the application: adopting it as one of the
    // manager's PD is refused; adopted with its own PD, granting on it is refused.
    let other_pd = e.app.alloc_pd().unwrap();
    let (raw, _peer) = e.connected_qp(other_pd, raw_cq, read_write());
    // SAFETY: as above.
    let adopted = unsafe { QueuePair::from_raw(&e.pd, &cq, raw) };
    einval(adopted.map(drop), "QP of another PD", "another protection domain");
    // SAFETY: as above.
    let pd2 = unsafe { ProtectionDomain::from_raw(&e.ctx, other_pd) }.unwrap();
    // SAFETY: as above.
    let qp = Arc::new(unsafe { QueuePair::from_raw(&pd2, &cq, raw) }.unwrap());
    refused(&qp, "grant on a QP of another PD", "another protection domain");
    assert!(rts(e, raw), "a refused grant leaves the QP ready to send");

    // A QP whose send queue completes on another CQ than the one given.
    let raw_cq2 = e.app.create_cq().unwrap();
    let raw = e.app.create_qp(e.app.pd, raw_cq2).unwrap();
    // SAFETY: as above.
    einval(
        unsafe { QueuePair::from_raw(&e.pd, &cq, raw) }.map(drop),
        "another CQ",
        "another completion queue",
    );

    // A QP not connected yet (RESET).
    let raw = e.app.create_qp(e.app.pd, raw_cq).unwrap();
    // SAFETY: as above.
    let qp = Arc::new(unsafe { QueuePair::from_raw(&e.pd, &cq, raw) }.unwrap());
    refused(&qp, "grant on a QP in RESET", "not ready to send");
    assert_eq!(e.app.qp_state(raw).unwrap(), ffi::ibv_qp_state::IBV_QPS_RESET);

    // A QP that lets peers only read, for a writable region.
    let read_only = ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
    let (raw, _peer2) = e.connected_qp(e.app.pd, raw_cq, read_only);
    // SAFETY: as above.
    let qp = Arc::new(unsafe { QueuePair::from_raw(&e.pd, &cq, raw) }.unwrap());
    refused(&qp, "grant needing REMOTE_WRITE", "the grant needs");
    assert!(rts(e, raw), "a refused grant leaves the QP ready to send");

    // An application-polled CQ nobody polls: the bind's completion never reaches
    // filemr; the grant fails with a hint and the QP stays usable.
    let raw_cq3 = e.app.create_cq().unwrap();
    let cq3 = e.cq(raw_cq3, CqPolling::Application);
    let (raw, _peer3) = e.connected_qp(e.app.pd, raw_cq3, read_write());
    // SAFETY: as above.
    let qp = Arc::new(unsafe { QueuePair::from_raw(&e.pd, &cq3, raw) }.unwrap());
    match region.grant(&qp) {
        Err(RegionError::Grant { source, .. }) => {
            assert_eq!(source.errno, Errno::ETIMEDOUT, "{source}");
            assert!(source.to_string().contains("CompletionQueue::deliver"), "{source}");
        }
        other => panic!("grant with nobody polling: {other:?}"),
    }
    assert!(rts(e, raw), "the timed-out grant leaves the QP ready to send");
    drop(region);
    drop(other);
}

/// The `embed` example (built by `cargo xtask test` next to this test's executable).
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples/embed");
    assert!(bin.exists(), "{} is missing: cargo build --example embed", bin.display());
    bin
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn embed_example_runs_its_break_and_leaves_the_peers_bytes_in_the_file() {
    let env = GuestEnv::get();
    for dir in [&env.dax_dir, &env.pagecache_dir] {
        let path = make_file(dir, "embed-example", 1 << 16, b'.');
        let out = std::process::Command::new(example_binary())
            .args([&env.server.device, &env.peer.device, path.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "event: Recall",
            "event: Returned",
            "event: Revoked",
            "event: Rebuilt",
            "event: Available",
            "peer reads \"written by the peer before the break\"",
            "handed filemr 3 completions (and saw 0 of its own)",
        ] {
            assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
        }
        let file = std::fs::read(&path).unwrap();
        assert!(file.starts_with(b"written by the peer before the break"), "{stdout}");
        assert!(file[..4096].ends_with(b"and after the rebuild, same key"), "{stdout}");
    }
}
