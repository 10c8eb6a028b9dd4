//! The region manager inside the SoftRoCE guests: no byte lost on revocation and
//! rebuild, strategies as probed, shrink, many regions, bad input.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use filemr::grant::GrantState;
use filemr::region::{
    Access, LostReason, Manager, ManagerConfig, RegionError, RegionEventKind, RegionState,
    RevokeReason, Strategy,
};
use filemr::verbs::WcStatus;
use guest::{GuestEnv, pattern};
use nix::errno::Errno;
use region_support::*;

const OFF: u64 = 8192;
const LEN: usize = 256 * 1024;

fn no_byte_lost(dir: &Path, fs: &str) {
    let path = make_file(dir, "nolost", OFF as usize + LEN, 0);
    let region = register(&path, OFF, LEN, Access::ReadWrite).expect("register");
    let before = region.info();
    note(&format!(
        "{fs}: no-byte-lost region strategy {:?} ({})",
        before.decision.strategy, before.decision.reason
    ));
    let mut events = region.events();

    // The peer writes pattern A through its grant; the server commits.
    let a = pattern(LEN, 1);
    let peer = Peer::new(LEN);
    let g = peer.grant(&region);
    let gi = g.info();
    assert_eq!((gi.addr, gi.len, gi.generation), (before.addr, LEN, 1));
    assert_eq!(gi.state, GrantState::Active);
    {
        let _g = region.guard().expect("guard");
        assert_eq!(peer.write_to(&g, 0, &a), WcStatus::Success);
    }
    region.commit(0..LEN).expect("commit");

    // A separate process truncates the file to 0 and writes pattern B.
    let b = pattern(OFF as usize + LEN, 2);
    let (child, [src, seen, stamp]) = truncate_writer(&path, &b);
    wait_event(&mut events, WAIT, "Revoking", |e| e.kind == RegionEventKind::Revoking);
    // The peer answers the recall: its last write, then commit, then return.
    wait_recall(&mut events, &g);
    assert_eq!(g.state(), GrantState::Recalled);
    assert_eq!(peer.write_to(&g, 0, &a[..4096]), WcStatus::Success, "recalled keys still work");
    region.commit(0..4096).expect("commit during the recall");
    g.returned().expect("return");
    assert_eq!(g.state(), GrantState::Returned);
    let revoked = wait_event(&mut events, WAIT, "Revoked", is_revoked);
    let RegionEventKind::Revoked { reason, forced, commit_error, .. } = revoked.kind else {
        unreachable!()
    };
    assert_eq!((reason, forced, commit_error), (RevokeReason::LeaseBroken, false, None));
    assert_eq!(region.guard().unwrap_err(), filemr::region::GuardError::Revoked);
    let rebuilt = wait_event(&mut events, WAIT, "Rebuilt", is_rebuilt);
    let gid = g.id();
    let avail = wait_event(
        &mut events,
        WAIT,
        "Available",
        |e| matches!(e.kind, RegionEventKind::Available { grant, .. } if grant == gid),
    );
    wait_child(child, WAIT);

    // The breaker saw A (committed) and truncated only after the revocation finished.
    let mut expect_before = vec![0u8; OFF as usize];
    expect_before.extend_from_slice(&a);
    assert!(
        std::fs::read(&seen).unwrap() == expect_before,
        "the breaker did not find pattern A in the file"
    );
    let truncated: u128 = std::fs::read_to_string(&stamp).unwrap().parse().unwrap();
    assert!(
        nanos(revoked.at) <= truncated,
        "Revoked at {} ns, after the truncate returned at {truncated} ns",
        nanos(revoked.at)
    );

    // Rebuilt with a new generation at the same address, over the file's new content B;
    // the grant is rebound with the same key.
    let RegionEventKind::Rebuilt { addr, len, generation, .. } = rebuilt.kind else {
        unreachable!()
    };
    assert_eq!(generation, before.generation + 1);
    assert_eq!((addr, len), (before.addr, LEN));
    assert_eq!(avail.kind, RegionEventKind::Available { grant: gid, generation, len: LEN });
    let now = region.info();
    assert_eq!((now.addr, now.state), (addr, RegionState::Registered));
    let gi2 = g.info();
    assert_eq!(
        (gi2.rkey, gi2.addr, gi2.generation, gi2.state),
        (gi.rkey, gi.addr, 2, GrantState::Active)
    );
    let (st, got) = peer.read_from(&g, 0, LEN);
    assert_eq!(st, WcStatus::Success);
    assert!(got == b[OFF as usize..], "rebuilt region does not show pattern B");

    // The same key lands in the file.
    let c = pattern(4096, 3);
    {
        let _g = region.guard().expect("guard after rebuild");
        assert_eq!(peer.write_to(&g, 1000, &c), WcStatus::Success);
    }
    region.commit(1000..1000 + 4096).unwrap();
    drop(region);
    let mut want = b.clone();
    want[OFF as usize + 1000..OFF as usize + 1000 + 4096].copy_from_slice(&c);
    assert!(std::fs::read(&path).unwrap() == want, "file is not pattern B with the new write");
    let m = metrics_text();
    for series in [
        "filemr_region_revocations_total{reason=\"lease_broken\",forced=\"false\"}",
        "filemr_region_rebuilds_total",
        "filemr_grant_returned_total{when=\"in_time\"}",
        "filemr_grant_rebound_total",
    ] {
        assert!(metric_sum(series) >= 1.0, "{series}: {m}");
    }
    for p in [&path, &src, &seen, &stamp] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn no_byte_lost_none_misplaced_on_page_cache() {
    let env = GuestEnv::get();
    no_byte_lost(&env.pagecache_dir, "page cache");
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn no_byte_lost_none_misplaced_on_fs_dax() {
    let env = GuestEnv::get();
    no_byte_lost(&env.dax_dir, "fs-dax");
}

/// The probe's decisions, as measured: see docs/region.md.
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn strategy_matches_the_probe_and_the_matrix() {
    let env = GuestEnv::get();
    let mgr = manager();
    for (dir, fs) in [(&env.pagecache_dir, "page cache"), (&env.dax_dir, "fs-dax")] {
        let path = make_file(dir, "strategy", 65536, 0);
        for access in [Access::ReadWrite, Access::Read] {
            let d = mgr.decision(&path, access).unwrap();
            note(&format!(
                "{} {fs} {access:?}: {:?} because {}",
                env.profile, d.strategy, d.reason
            ));
            let want = match (env.expect_odp, fs, access) {
                (false, "page cache", Access::ReadWrite) => Strategy::Pinned,
                // PROT_READ pinned file MRs: EFAULT on 6.1.
                (false, _, _) => Strategy::Staging,
                // ODP is offered but fails the unaligned transfer check; pinned page-cache
                // MRs with MW_BIND are refused (EFAULT): the kernel pins MW_BIND regions
                // writable (ib_access_writable), and 6.18 refuses writable long-term pins
                // of shared file mappings, even for read regions.
                (true, _, _) => Strategy::Staging,
            };
            assert_eq!(d.strategy, want, "{fs} {access:?}: {}", d.reason);
            if env.expect_odp {
                let off = if access.is_writable() { "offset 100" } else { "offset 300" };
                assert!(
                    d.reason.contains("odp: registered, but") && d.reason.contains(off),
                    "the reason must name the ODP off-page-boundary failure: {}",
                    d.reason
                );
            } else {
                assert!(d.reason.contains("odp: not offered"), "{}", d.reason);
            }
            if want == Strategy::Staging {
                let errno = if fs == "fs-dax" { "EOPNOTSUPP" } else { "EFAULT" };
                assert!(
                    d.reason.contains(&format!("pinned: ibv_reg_mr failed: {errno}")),
                    "{}",
                    d.reason
                );
            }
            // A registration gets the same strategy.
            let r = register(&path, 0, 65536, access).unwrap();
            assert_eq!(r.strategy(), want);
            drop(r);
        }
        let _ = std::fs::remove_file(path);
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn shrink_to_half_rebuilds_shorter_and_to_zero_loses() {
    let env = GuestEnv::get();
    for dir in [&env.pagecache_dir, &env.dax_dir] {
        let path = make_file(dir, "shrink", 128 * 1024, 9);
        let region = register(&path, 0, 128 * 1024, Access::ReadWrite).unwrap();
        let mut events = region.events();
        let child = breaker("truncate-to", &path, &["65536"]);
        wait_event(&mut events, WAIT, "Revoked", is_revoked);
        let ev = wait_event(&mut events, WAIT, "Rebuilt", is_rebuilt);
        wait_child(child, WAIT);
        let RegionEventKind::Rebuilt { len, generation, .. } = ev.kind else { unreachable!() };
        assert_eq!((len, generation), (65536, 2));
        assert_eq!(region.info().len, 65536);
        region.commit(0..65536).unwrap();
        assert!(region.commit(0..65537).is_err());

        let child = breaker("truncate-to", &path, &["0"]);
        wait_event(&mut events, WAIT, "Revoked", is_revoked);
        let ev = wait_event(&mut events, WAIT, "Lost", |e| {
            matches!(e.kind, RegionEventKind::Lost { .. })
        });
        wait_child(child, WAIT);
        assert_eq!(ev.kind, RegionEventKind::Lost { reason: LostReason::Shrunk { file_len: 0 } });
        assert_eq!(region.info().state, RegionState::Lost);
        assert_eq!(region.guard().unwrap_err(), filemr::region::GuardError::Lost);
        drop(region);
        let _ = std::fs::remove_file(path);
    }
    assert!(metric_sum("filemr_region_lost_total{reason=\"shrunk\"}") >= 1.0);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn deleted_file_is_lost() {
    let env = GuestEnv::get();
    let path = make_file(&env.pagecache_dir, "deleted", 65536, 5);
    let region = register(&path, 0, 65536, Access::ReadWrite).unwrap();
    let mut events = region.events();
    let child = breaker("open-unlink", &path, &[]);
    wait_event(&mut events, WAIT, "Revoked", is_revoked);
    wait_child(child, WAIT);
    let ev =
        wait_event(&mut events, WAIT, "Lost", |e| matches!(e.kind, RegionEventKind::Lost { .. }));
    assert_eq!(
        ev.kind,
        RegionEventKind::Lost { reason: LostReason::LeaseGone(filemr::lease::GoneReason::Deleted) }
    );
    assert_eq!(region.guard().unwrap_err(), filemr::region::GuardError::Lost);
    assert!(metric_sum("filemr_region_lost_total{reason=\"deleted\"}") >= 1.0);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn bad_input_gets_typed_errors() {
    let env = GuestEnv::get();
    let mgr = manager();
    let dir = &env.pagecache_dir;
    let path = make_file(dir, "bad", 8192, 0);

    let e = register(&path, 4096, 8192, Access::Read).unwrap_err();
    assert!(matches!(e, RegionError::RangeBeyondEof { file_len: 8192, .. }), "{e}");
    assert_eq!(e.errno(), Errno::EINVAL);
    let e = register(&path, u64::MAX, 1, Access::Read).unwrap_err();
    assert!(matches!(e, RegionError::RangeBeyondEof { .. }), "{e}");
    let e = register(&path, 0, 0, Access::Read).unwrap_err();
    assert!(matches!(e, RegionError::ZeroLength { .. }), "{e}");
    let e = register(dir, 0, 4096, Access::Read).unwrap_err();
    assert!(matches!(e, RegionError::NotRegularFile { errno: Errno::EISDIR, .. }), "{e}");
    let e = register(&dir.join("does-not-exist"), 0, 1, Access::Read).unwrap_err();
    assert_eq!(e.errno(), Errno::ENOENT, "{e}");

    // Another process holds the file open: no write lease (EAGAIN).
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3<'{}'; echo ready; sleep 60", path.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let e = mgr.register(&path, 0, 4096, Access::ReadWrite).unwrap_err();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        matches!(e, RegionError::Lease(filemr::lease::LeaseError::OtherOpenExists { .. })),
        "{e}"
    );
    assert_eq!(e.errno(), Errno::EAGAIN);
    assert!(e.to_string().contains("another open of the file exists"), "{e}");

    // A missing device (checked before the lease engine starts).
    let mut reg = prometheus_client::registry::Registry::default();
    let _enter = RT.enter();
    let e = Manager::new(ManagerConfig::new("nosuch9"), &mut reg).unwrap_err();
    assert!(matches!(e, RegionError::Device { .. }), "{e}");
    assert_eq!(e.errno(), Errno::ENODEV);
    // And a second manager in the process is refused with a typed error.
    let e = Manager::new(ManagerConfig::new(env.device.clone()), &mut reg).unwrap_err();
    assert!(matches!(e, RegionError::EngineAlreadyRunning), "{e}");

    let m = metrics_text();
    assert!(m.contains("filemr_region_registration_failures_total{errno=\"EAGAIN\"}"), "{m}");
    assert!(m.contains("filemr_region_registration_failures_total{errno=\"EISDIR\"}"), "{m}");
    let _ = std::fs::remove_file(path);
}

/// 1000 regions over 100 files; 50 files broken at once: exactly their regions revoke and
/// rebuild, the others keep granting guards throughout.
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn many_regions_only_broken_files_revoke() {
    const FILES: usize = 100;
    const PER: usize = 10;
    const SZ: usize = 64 * 1024;
    let env = GuestEnv::get();
    let mgr = manager();
    let mut events = mgr.events();
    let paths: Vec<_> =
        (0..FILES).map(|_| make_file(&env.pagecache_dir, "many", PER * SZ, 1)).collect();
    let mut regions = Vec::new();
    for p in &paths {
        for i in 0..PER {
            regions.push(Arc::new(
                register(p, (i * SZ) as u64, SZ, Access::ReadWrite).expect("register"),
            ));
        }
    }
    let broken: HashSet<u64> = regions[..FILES / 2 * PER].iter().map(|r| r.id()).collect();
    let ours: HashSet<u64> = regions.iter().map(|r| r.id()).collect();
    let kept: Vec<_> = regions[FILES / 2 * PER..].to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicU64::new(0));
    let taken = Arc::new(AtomicU64::new(0));
    let server = {
        let (stop, refusals, taken) = (stop.clone(), refusals.clone(), taken.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for r in &kept {
                    match r.guard() {
                        Ok(_g) => taken.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refusals.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        })
    };
    let children: Vec<_> =
        paths[..FILES / 2].iter().map(|p| breaker("open-write", p, &["/dev/null"])).collect();
    let mut revoked = HashSet::new();
    let mut rebuilt = HashSet::new();
    let mut per_kind: HashMap<&str, usize> = HashMap::new();
    while rebuilt.len() < broken.len() {
        // Other tests of this binary share the manager: look at our regions only.
        let ev = wait_event(&mut events, Duration::from_secs(120), "many rebuilds", |e| {
            ours.contains(&e.region)
        });
        assert!(broken.contains(&ev.region), "a region of an untouched file got {ev:?}");
        match ev.kind {
            RegionEventKind::Revoked { forced, .. } => {
                assert!(!forced);
                revoked.insert(ev.region);
                *per_kind.entry("revoked").or_default() += 1;
            }
            RegionEventKind::Rebuilt { .. } => {
                assert!(revoked.contains(&ev.region), "rebuilt before revoked");
                rebuilt.insert(ev.region);
            }
            RegionEventKind::Lost { .. } => panic!("lost: {ev:?}"),
            _ => {}
        }
    }
    for c in children {
        wait_child(c, WAIT);
    }
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    assert_eq!(revoked, broken);
    assert_eq!(refusals.load(Ordering::Relaxed), 0, "untouched regions refused guards");
    assert!(taken.load(Ordering::Relaxed) > 0);
    note(&format!(
        "{}: many regions: {} revoked+rebuilt, {} guards taken on the others meanwhile",
        env.profile,
        rebuilt.len(),
        taken.load(Ordering::Relaxed)
    ));
    drop(regions);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// A writer opens the file in a tight loop while regions of it are registered: every
/// registration either fails (`Busy`, or the lease cannot be taken while the writer holds
/// the file open) or ends registered over the file as the writer left it; no memory
/// region outlives its lease.
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn breaks_during_register_leave_no_mr_without_its_lease() {
    // An odd length, to find these regions' MRs in `rdma resource show mr`.
    const SZ: usize = (8 << 20) - 3 * 4096;
    const WRITES: &str = "60";
    let env = GuestEnv::get();
    let mgr = manager();
    for dir in [&env.dax_dir, &env.pagecache_dir] {
        let path = make_file(dir, "regbreak", SZ, 0);
        // Probe now (cached): a first registration that probes would let the writer finish
        // before it, and the loop would race nothing.
        mgr.decision(&path, Access::ReadWrite).unwrap();
        // For the failure message: every region event and the engine's counters.
        let mut all_events = mgr.events();
        let stats_before = mgr.lease_engine().stats();
        let reg_breaks_before = mgr.metrics().registration_breaks.get();
        let child = breaker("write-loop", &path, &[WRITES]);
        let mut regions = Vec::new();
        let mut busy = 0;
        let mut child = Some(child);
        while let Some(c) = child.as_mut() {
            match mgr.register(&path, 0, SZ, Access::ReadWrite) {
                Ok(r) => regions.push(r),
                Err(RegionError::Busy { .. }) => busy += 1,
                Err(RegionError::Lease(_)) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("register: {e}"),
            }
            if c.try_wait().unwrap().is_some() {
                wait_child(child.take().unwrap(), WAIT);
            }
        }
        // Settle: every region ends registered (rebuilt after the last break) or lost.
        for r in &regions {
            let start = std::time::Instant::now();
            while !matches!(r.info().state, RegionState::Registered | RegionState::Lost) {
                assert!(start.elapsed() < WAIT, "region {} stuck in {:?}", r.id(), r.info().state);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // The writer's last write (reading the file here would break the lease again).
        let file = WRITES.parse::<u64>().unwrap().to_le_bytes();
        let peer = Peer::new(4096);
        let mut registered = 0;
        // What a failure needs to be understood: every region's generation, strategy and
        // state, its event history, and how often the lease broke meanwhile.
        let diagnose = |r: &filemr::region::Region, events: &mut filemr::region::RegionEvents| {
            let stats = mgr.lease_engine().stats();
            let ids: HashSet<u64> = regions.iter().map(|r| r.id()).collect();
            let mut history: HashMap<u64, Vec<String>> = HashMap::new();
            while let Ok(Some(ev)) = events.try_recv() {
                if ids.contains(&ev.region) {
                    let at = nanos(ev.at) % 1_000_000_000_000;
                    history.entry(ev.region).or_default().push(format!("{at}:{:?}", ev.kind));
                }
            }
            let others: Vec<_> = regions
                .iter()
                .map(|o| {
                    let i = o.info();
                    format!("{}:g{}:{:?}:{:?}", o.id(), i.generation, i.state, i.decision.strategy)
                })
                .collect();
            let i = r.info();
            format!(
                "region {} generation {} strategy {:?} state {:?} lkey {:#x}; {} regions \
                 [{}]; {busy} busy; registration breaks {}; engine while writing: breaks {}, \
                 reacquired {}, forced {}, duplicates {}, rescans {}, signals {}; \
                 its events: {:?}",
                r.id(),
                i.generation,
                i.decision.strategy,
                i.state,
                i.lkey,
                regions.len(),
                others.join(" "),
                mgr.metrics().registration_breaks.get() - reg_breaks_before,
                stats.breaks - stats_before.breaks,
                stats.reacquired - stats_before.reacquired,
                stats.forced - stats_before.forced,
                stats.duplicates - stats_before.duplicates,
                stats.rescans - stats_before.rescans,
                stats.signals - stats_before.signals,
                history.get(&r.id()),
            )
        };
        for r in &regions {
            if r.info().state != RegionState::Registered {
                continue;
            }
            registered += 1;
            assert_eq!(
                mgr.lease_engine().state(r_file(r)),
                Some(filemr::lease::LeaseState::Held),
                "a registered region without its lease: {}",
                diagnose(r, &mut all_events)
            );
            let g = peer.grant(r);
            let (st, got) = peer.read_from(&g, 0, 8);
            assert_eq!(st, WcStatus::Success);
            if got != file {
                panic!(
                    "region {} shows bytes the writer replaced: {got:?}, not {file:?}: {}",
                    r.id(),
                    diagnose(r, &mut all_events)
                );
            }
        }
        // The lkeys of this test's MRs (found by their odd length) in `rdma resource show
        // mr`, and those of the regions registered under a held lease: the same.
        let ours = || -> HashSet<u32> {
            mr_lines()
                .into_iter()
                .filter(|l| l.contains(&format!("mrlen {SZ} ")))
                .filter_map(|l| {
                    let hex = l.split("lkey 0x").nth(1)?.split(' ').next()?;
                    u32::from_str_radix(hex, 16).ok()
                })
                .collect()
        };
        let want: HashSet<u32> = regions
            .iter()
            .map(|r| r.info())
            .filter(|i| i.state == RegionState::Registered)
            .map(|i| i.lkey)
            .collect();
        assert_eq!(want.len(), registered);
        // The listing is a netlink dump that resumes each part by counting entries, so MRs
        // the tests running alongside deregister meanwhile make it skip live ones (it never
        // invents any): look again while one of ours is missing. A leaked MR stays listed.
        let mut listed = ours();
        for _ in 0..50 {
            if want.is_subset(&listed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            listed = ours();
        }
        let states: Vec<_> =
            regions.iter().map(|r| (r.id(), r.info().state, r.info().lkey)).collect();
        assert_eq!(
            listed, want,
            "MRs listed vs regions registered under a held lease; regions {states:?}"
        );
        note(&format!(
            "{}: register during {WRITES} breaks: {} registered, {busy} refused as busy",
            env.profile,
            regions.len()
        ));
        drop(regions);
        assert_eq!(mr_lines().iter().filter(|l| l.contains(&format!("mrlen {SZ} "))).count(), 0);
        let _ = std::fs::remove_file(path);
    }
}

fn r_file(r: &filemr::region::Region) -> filemr::lease::FileId {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(r.path()).unwrap();
    filemr::lease::FileId { dev: md.dev(), ino: md.ino() }
}
