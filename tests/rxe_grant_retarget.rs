//! Retarget mode with a peer that never answers the recall, in its own process (its own
//! manager configuration, and it lowers the system-wide lease-break-time): the peer sees
//! no error, what it writes after the retarget is not in the file, and after the rebuild
//! the same key writes into the file again.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;

use std::time::Duration;

use filemr::grant::GrantState;
use filemr::region::{Access, RegionEventKind, RevocationMode};
use filemr::verbs::WcStatus;
use guest::{BreakTime, GuestEnv, pattern};
use region_support::*;

const LEN: usize = 1 << 20;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn unreturned_grant_is_retargeted_to_scratch_and_rebound_after_the_rebuild() {
    CONFIGURE.get_or_init(|| |c| c.revocation = RevocationMode::Retarget);
    let env = GuestEnv::get();
    let _bt = BreakTime::set(3);
    for (dir, fs) in [(&env.pagecache_dir, "page cache"), (&env.dax_dir, "fs-dax")] {
        let path = make_file(dir, "retarget", LEN, 0);
        let region = register(&path, 0, LEN, Access::ReadWrite).unwrap();
        let mut events = region.events();
        let peer = Peer::new(LEN);
        let g = peer.grant(&region);
        let key = g.info().rkey;
        let a = pattern(4096, 1);
        assert_eq!(peer.write_to(&g, 0, &a), WcStatus::Success);
        region.commit(0..4096).unwrap();

        let b = pattern(LEN, 2);
        let (child, [src, seen, stamp]) = truncate_writer(&path, &b);
        wait_recall(&mut events, &g);
        let gid = g.id();
        wait_event(&mut events, Duration::from_secs(10), "Retargeted", |e| {
            e.kind == RegionEventKind::Retargeted { grant: gid }
        });
        assert_eq!(g.state(), GrantState::Retargeted);
        // The peer keeps going: no error, but nothing reaches the file.
        let x = pattern(65536, 7);
        assert_eq!(peer.write_to(&g, 8192, &x), WcStatus::Success, "retargeted writes succeed");
        let (st, _) = peer.read_from(&g, 0, 4096);
        assert_eq!(st, WcStatus::Success, "retargeted reads succeed");
        let revoked = wait_event(&mut events, Duration::from_secs(10), "Revoked", is_revoked);
        let RegionEventKind::Revoked { forced, .. } = revoked.kind else { unreachable!() };
        assert!(forced, "an unreturned grant makes the revocation forced");
        wait_child(child, WAIT);
        let before = std::fs::read(&seen).unwrap();
        assert!(before[..4096] == a[..], "{fs}: the committed write is in the file");
        assert!(
            before[8192..8192 + 65536].iter().all(|b| *b == 0),
            "{fs}: a write made after the retarget reached the file"
        );
        // Rebuilt: the same key reaches the file (now pattern B) again.
        wait_event(&mut events, WAIT, "Rebuilt", is_rebuilt);
        wait_event(
            &mut events,
            WAIT,
            "Available",
            |e| matches!(e.kind, RegionEventKind::Available { grant, .. } if grant == gid),
        );
        assert_eq!((g.state(), g.info().rkey, g.info().generation), (GrantState::Active, key, 2));
        let (st, got) = peer.read_from(&g, 0, LEN);
        assert_eq!(st, WcStatus::Success);
        if got != b {
            let first = got.iter().zip(&b).position(|(x, y)| x != y).unwrap();
            let differ = got.iter().zip(&b).filter(|(x, y)| x != y).count();
            let like = |want: &[u8]| got[first..first + 64] == want[first..first + 64];
            let retargeted = first >= 8192
                && first + 64 <= 8192 + 65536
                && got[first..first + 64] == x[first - 8192..first - 8192 + 64];
            // Transient or lasting? Read again, then look at the file itself.
            std::thread::sleep(Duration::from_millis(200));
            let (_, again) = peer.read_from(&g, 0, LEN);
            let info = (region.info().generation, region.info().state, region.strategy());
            drop(g);
            drop(region);
            let file = std::fs::read(&path).unwrap();
            panic!(
                "{fs}: the rebound key does not read the file's new bytes: {differ} bytes differ \
                 from offset {first}; there it reads {:?}... (like the old content: {}, zeros: \
                 {}, the retargeted write: {retargeted}); read again 200 ms later: {}; region \
                 (generation, state, strategy) {info:?}; the file there now {:?}... (the \
                 retargeted write: {})",
                &got[first..first + 16],
                like(&before),
                got[first..first + 64].iter().all(|x| *x == 0),
                if again == b { "right" } else { "still wrong" },
                &file[first..first + 16],
                first >= 8192 && file[first..first + 64] == x[first - 8192..first - 8192 + 64],
            );
        }
        let c = pattern(4096, 3);
        assert_eq!(peer.write_to(&g, 4096, &c), WcStatus::Success);
        region.commit(4096..8192).unwrap();
        // Reading the file opens it, which would break the lease again: unregister first.
        drop(g);
        drop(region);
        let now = std::fs::read(&path).unwrap();
        assert!(now[4096..8192] == c[..], "{fs}: the rebound key's write is not in the file");
        note(&format!("{}: {fs}: retargeted peer saw no error; same key rebound", env.profile));
        for p in [&path, &src, &seen, &stamp] {
            let _ = std::fs::remove_file(p);
        }
    }
    let m = metrics_text();
    assert!(m.contains("filemr_grant_retargeted_total 2"), "{m}");
    assert!(m.contains("filemr_grant_scratch_total{backing=\"repeated\"} 2"), "{m}");
}
