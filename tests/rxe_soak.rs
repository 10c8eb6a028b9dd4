//! The bounded soak (issue 11): several files on page cache and FS-DAX, a layout server on
//! the server device, three cooperative peers and one silent peer on the peer device
//! across the veth link, a breaker opening, truncating, renaming and deleting the files,
//! and the revocation mode switching between fence and retarget. Seeded: the seed is
//! printed, `FILEMR_SOAK_SEED` repeats it (each thread's choices; the interleaving is the
//! machine's), `FILEMR_SOAK_SECS` sets the length (`cargo xtask soak` runs a long one).
//!
//! Checked at the end: every peer block of every file is zero or a whole record of its
//! owner and file; no record written after its layout was retargeted is in a file; every
//! record a peer saw committed after the file's last destruction is there; no memory
//! region, PD, fd or locked byte leaked; the metrics agree with the events seen.

#[path = "guest/mod.rs"]
mod guest;
#[path = "layout_support/mod.rs"]
mod layout_support;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "soak_support/mod.rs"]
mod soak_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use filemr::region::{RegionEventKind, RevocationMode};
use guest::BreakTime;
use region_support::{WAIT, manager, metric_sum, note};
use soak_support::{FILE_LEN, PEERS, Rng, Soak, SoakFile, breaker, peer};

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn soak_files_peers_breakers_and_mode_switches_lose_nothing_and_leak_nothing() {
    region_support::CONFIGURE.get_or_init(|| {
        |c| {
            layout_support::server_device(c);
            c.event_capacity = 1 << 16;
        }
    });
    let seed =
        std::env::var("FILEMR_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    let secs: u64 =
        std::env::var("FILEMR_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    eprintln!("soak: seed {seed} ({secs} s): FILEMR_SOAK_SEED={seed} repeats it");
    // A silent peer holds a break for the deadline: keep it short.
    let _bt = BreakTime::set(2);
    let mgr = manager();
    let mut events = mgr.events();
    let exports = layout_support::exports();
    let server = layout_support::start_server(exports.clone());
    // librdmacm opens its own contexts of both devices on first use and keeps them until
    // the process exits: connect once before taking the baselines.
    filemr::layout::LayoutClient::connect(peer::client_config(server.local_addr()))
        .expect("warm-up connection")
        .close();
    let base = Resources::now();

    let mut files = Vec::new();
    for ex in &exports {
        for i in 0..2 {
            let name = format!("soak-{i}");
            let path = ex.root.join(&name);
            std::fs::write(&path, vec![0u8; FILE_LEN]).unwrap();
            files.push(SoakFile { path, layout_path: format!("{}/{name}", ex.name) });
        }
    }
    let soak = Arc::new(Soak::new(seed, files));

    // The threads: peers, breaker, mode switcher, and the event collector (here).
    let mut threads = Vec::new();
    for id in 0..PEERS {
        let p = peer::Peer::connect(id, soak.clone(), peer::client_config(server.local_addr()));
        threads.push(std::thread::spawn(move || p.run()));
    }
    let s = soak.clone();
    threads.push(std::thread::spawn(move || breaker::run(s)));
    let s = soak.clone();
    threads.push(std::thread::spawn(move || {
        let mut rng = Rng::new(s.seed, 2);
        while !s.stopped() {
            std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
            let next = match manager().revocation() {
                RevocationMode::Fence => RevocationMode::Retarget,
                RevocationMode::Retarget => RevocationMode::Fence,
            };
            manager().set_revocation(next);
            *s.ops.lock().entry("mode_switch").or_default() += 1;
        }
    }));
    let mut seen: HashMap<&'static str, u64> = HashMap::new();
    let mut collect = |events: &mut filemr::region::RegionEvents, soak: &Soak| {
        while let Ok(Some(ev)) = events.try_recv() {
            let kind = match ev.kind {
                RegionEventKind::Revoked { .. } => "revoked",
                RegionEventKind::Rebuilt { .. } => "rebuilt",
                RegionEventKind::Recall { grant, .. } => {
                    soak.grant_region.lock().insert(grant, ev.region);
                    "recall"
                }
                RegionEventKind::Returned { .. } => "returned",
                RegionEventKind::Available { .. } => "available",
                RegionEventKind::Lost { .. } => {
                    soak.lost_regions.lock().insert(ev.region);
                    "lost"
                }
                RegionEventKind::Fenced { grant } => {
                    soak.verdicts.lock().insert(grant, "fenced");
                    "fenced"
                }
                RegionEventKind::Retargeted { grant } => {
                    soak.verdicts.lock().insert(grant, "retargeted");
                    "retargeted"
                }
                _ => "other",
            };
            *seen.entry(kind).or_default() += 1;
        }
    };
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        collect(&mut events, &soak);
        std::thread::sleep(Duration::from_millis(2));
    }
    // While the peers still hold layouts the listing shows their regions and queue
    // pairs: the leak check at the end is not vacuous.
    let busy = Resources::now();
    assert!(busy.mr > base.mr && busy.qp > base.qp, "busy {busy:?}, baseline {base:?}");
    soak.stop.store(true, Ordering::Release);
    for t in threads {
        // Keep collecting: a silent peer may be waiting for a verdict.
        while !t.is_finished() {
            collect(&mut events, &soak);
            std::thread::sleep(Duration::from_millis(2));
        }
        if t.join().is_err() {
            soak.problem("a soak thread panicked".into());
        }
    }
    // Every peer disconnected: the server drops their layouts, the regions go.
    let settled = Instant::now() + WAIT;
    while metric_sum("filemr_layout_held") > 0.0 || metric_sum("filemr_region_regions") > 0.0 {
        assert!(Instant::now() < settled, "layouts or regions still held after the peers left");
        collect(&mut events, &soak);
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
    collect(&mut events, &soak);

    // The files.
    let mut problems = std::mem::take(&mut *soak.problems.lock());
    for (i, f) in soak.files.iter().enumerate() {
        match std::fs::read(&f.path) {
            Ok(bytes) => problems.extend(soak.check_file(i, &bytes)),
            Err(e) => problems.push(format!("file {i} ({}): {e}", f.path.display())),
        }
    }
    // Metrics against the events seen.
    assert_eq!(events.skipped(), 0, "the event collector fell behind: cannot compare");
    let count = |k: &str| seen.get(k).copied().unwrap_or(0) as f64;
    for (series, kind) in [
        ("filemr_region_revocations_total", "revoked"),
        ("filemr_region_rebuilds_total", "rebuilt"),
        ("filemr_grant_recalled_total", "recall"),
        ("filemr_grant_returned_total", "returned"),
        ("filemr_grant_rebound_total", "available"),
        ("filemr_grant_fenced_total", "fenced"),
        ("filemr_grant_retargeted_total", "retargeted"),
        ("filemr_region_lost_total", "lost"),
    ] {
        if metric_sum(series) != count(kind) {
            problems.push(format!(
                "{series} = {} but {} {kind} events",
                metric_sum(series),
                count(kind)
            ));
        }
    }
    // Leaks.
    assert_eq!(mgr.locked_bytes(), 0, "locked bytes still counted");
    let now = Resources::now();
    if !now.within(&base) {
        problems.push(format!("resources leaked: before {base:?}, after {now:?}"));
    }
    let report = format!(
        "soak seed {seed}, {secs} s: {} writes, {} commits, {} stale writes, {} layouts got, \
         {} reconnects; breaker {:?}; events {:?}",
        soak.writes.load(Ordering::Relaxed),
        soak.commits.load(Ordering::Relaxed),
        soak.stale_writes.load(Ordering::Relaxed),
        soak.regets.load(Ordering::Relaxed),
        soak.reconnects.load(Ordering::Relaxed),
        soak.ops.lock(),
        seen,
    );
    eprintln!("{report}");
    assert!(problems.is_empty(), "{report}\n{} problems:\n{}", problems.len(), problems.join("\n"));
    // A soak that exercised nothing proves nothing.
    assert!(soak.commits.load(Ordering::Relaxed) > 0 && count("revoked") > 0.0, "{report}");
    note(&format!("{}: {report}", guest::GuestEnv::get().profile));
    for f in &soak.files {
        let _ = std::fs::remove_file(&f.path);
    }
}

/// What the process holds on the server device, and in general.
#[derive(Debug, PartialEq, Eq)]
struct Resources {
    /// `rdma resource show` lines of this process on the server device, per kind.
    mr: usize,
    pd: usize,
    qp: usize,
    /// Open file descriptors.
    fds: usize,
    /// VmPin of /proc/self/status (kB): pinned pages (memory regions).
    pinned_kb: u64,
}

impl Resources {
    /// Nothing more than `base` (there may be fewer: the warm-up connection's teardown
    /// may still have been under way when the baseline was taken).
    fn within(&self, base: &Resources) -> bool {
        self.mr <= base.mr
            && self.pd <= base.pd
            && self.qp <= base.qp
            && self.fds <= base.fds
            && self.pinned_kb <= base.pinned_kb
    }

    fn now() -> Resources {
        // Only this process uses the server device meanwhile.
        let device = guest::var("FILEMR_SERVER_DEVICE");
        let lines = |kind: &str| guest::user_resources(kind, &device).len();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let pinned_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmPin:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Resources {
            mr: lines("mr"),
            pd: lines("pd"),
            qp: lines("qp"),
            fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
            pinned_kb,
        }
    }
}
