//! Retarget mode with a peer that never answers the recall, in its own process (its own
//! manager configuration on the link's server device, and it lowers the system-wide
//! lease-break-time), the peer on the other end of the veth link: the peer sees
//! no error, what it writes after the retarget is not in the file, not even after the
//! rebuild (its key stays on scratch until it returns the grant), and once it returns
//! (late) the same key reaches the rebuilt file again.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;
#[path = "../examples/embed/remote_peer.rs"]
mod remote_peer;

use std::time::Duration;

use filemr::grant::GrantState;
use filemr::region::{Access, RegionEventKind, RevocationMode};
use filemr::verbs::WcStatus;
use guest::{BreakTime, GuestEnv, pattern};
use region_support::*;
use remote_peer::RemotePeer;

const LEN: usize = 1 << 20;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn unreturned_grant_stays_on_scratch_until_returned_then_reaches_the_rebuilt_file() {
    CONFIGURE.get_or_init(|| {
        |c| {
            c.device = guest::var("FILEMR_SERVER_DEVICE");
            c.revocation = RevocationMode::Retarget;
        }
    });
    let env = GuestEnv::get();
    let _bt = BreakTime::set(3);
    for (dir, fs) in [(&env.pagecache_dir, "page cache"), (&env.dax_dir, "fs-dax")] {
        let path = make_file(dir, "retarget", LEN, 0);
        let region = register(&path, 0, LEN, Access::ReadWrite).unwrap();
        let mut events = region.events();
        let (qp, peer) = RemotePeer::connected_to(manager(), &env.peer.device, LEN);
        let write = |g: &filemr::grant::Grant, off: u64, data: &[u8]| {
            peer.write(&g.info(), off, data).unwrap()
        };
        let read = |g: &filemr::grant::Grant, off: u64, len: usize| {
            peer.read(&g.info(), off, len).unwrap()
        };
        // `g` never answers its recall; `witness` does, and reads the rebuilt file.
        let g = region.grant(&qp).unwrap();
        let witness = region.grant(&qp).unwrap();
        let (gid, wid, key) = (g.id(), witness.id(), g.info().rkey);
        let a = pattern(4096, 1);
        assert_eq!(write(&g, 0, &a), WcStatus::Success);
        region.commit(0..4096).unwrap();

        let b = pattern(LEN, 2);
        let (child, [src, seen, stamp]) = truncate_writer(&path, &b);
        wait_recall(&mut events, &g);
        witness.returned().unwrap();
        wait_event(&mut events, Duration::from_secs(10), "Retargeted", |e| {
            e.kind == RegionEventKind::Retargeted { grant: gid }
        });
        assert_eq!(g.state(), GrantState::Retargeted);
        // The peer keeps going: no error, but nothing reaches the file.
        let x = pattern(65536, 7);
        assert_eq!(write(&g, 8192, &x), WcStatus::Success, "retargeted writes succeed");
        let (st, _) = read(&g, 0, 4096);
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
        // Rebuilt: the returned grant is rebound; the unreturned one stays on scratch.
        wait_event(&mut events, WAIT, "Rebuilt", is_rebuilt);
        wait_event(
            &mut events,
            WAIT,
            "Available (witness)",
            |e| matches!(e.kind, RegionEventKind::Available { grant, .. } if grant == wid),
        );
        assert_eq!((g.state(), g.info().generation), (GrantState::Retargeted, 1), "{fs}");
        let y = pattern(65536, 8);
        assert_eq!(write(&g, 8192, &y), WcStatus::Success, "{fs}: still on scratch");
        let (st, got) = read(&witness, 0, LEN);
        assert_eq!(st, WcStatus::Success);
        assert_bytes(
            &got,
            &b,
            &[(&x, "the write after the retarget"), (&y, "the write after the rebuild")],
            fs,
        );
        // The late return: the same key reaches the rebuilt file at once.
        g.returned().unwrap();
        wait_event(
            &mut events,
            WAIT,
            "Available (late)",
            |e| matches!(e.kind, RegionEventKind::Available { grant, generation: 2, .. } if grant == gid),
        );
        assert_eq!((g.state(), g.info().rkey, g.info().generation), (GrantState::Active, key, 2));
        let (st, got) = read(&g, 0, LEN);
        assert_eq!(st, WcStatus::Success);
        assert_bytes(&got, &b, &[], fs);
        let c = pattern(4096, 3);
        assert_eq!(write(&g, 4096, &c), WcStatus::Success);
        region.commit(4096..8192).unwrap();
        // Reading the file opens it, which would break the lease again: unregister first.
        drop((g, witness, qp));
        drop(region);
        let now = std::fs::read(&path).unwrap();
        assert!(now[4096..8192] == c[..], "{fs}: the rebound key's write is not in the file");
        assert!(
            now[8192..8192 + 65536] == b[8192..8192 + 65536],
            "{fs}: scratch bytes in the file"
        );
        note(&format!(
            "{}: {fs}: retargeted peer saw no error; its key stayed on scratch through the \
             rebuild and reached the file after its late return",
            env.profile
        ));
        for p in [&path, &src, &seen, &stamp] {
            let _ = std::fs::remove_file(p);
        }
    }
    let m = metrics_text();
    assert!(m.contains("filemr_grant_retargeted_total 2"), "{m}");
    assert!(m.contains("filemr_grant_scratch_total{backing=\"repeated\"} 2"), "{m}");
    assert!(m.contains("filemr_grant_returned_total{when=\"late\"} 2"), "{m}");
    assert!(m.contains("filemr_grant_rebound_total 4"), "{m}");
}

/// `got` must be `want`; if not, says where and whether it holds one of `suspects`
/// (bytes written at 8192).
fn assert_bytes(got: &[u8], want: &[u8], suspects: &[(&[u8], &str)], fs: &str) {
    let Some(first) = got.iter().zip(want).position(|(x, y)| x != y) else { return };
    let differ = got.iter().zip(want).filter(|(x, y)| x != y).count();
    let hit = suspects.iter().find(|(s, _)| {
        first >= 8192
            && first + 64 <= 8192 + s.len()
            && got[first..first + 64] == s[first - 8192..first - 8192 + 64]
    });
    panic!(
        "{fs}: the rebuilt file reads wrong through a rebound key: {differ} bytes differ from \
         offset {first}, which holds {}",
        hit.map_or("unknown bytes", |(_, what)| what)
    );
}
