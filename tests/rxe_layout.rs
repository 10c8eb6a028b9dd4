//! The layout protocol over RDMA CM between two rxe devices on the two ends of a veth
//! link (server on one device, peers on the other, connecting from its address): a
//! cooperative peer across a break, refusals, malformed frames.

#[path = "guest/mod.rs"]
mod guest;
#[path = "layout_support/mod.rs"]
mod layout_support;
#[path = "region_support/mod.rs"]
mod region_support;

use layout_support::*;
use region_support::{CONFIGURE, WAIT, note};

const LEN: usize = 256 << 10;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn cooperative_peer_commits_returns_and_resumes_across_a_break() {
    CONFIGURE.get_or_init(|| server_device);
    let exports = exports();
    let server = start_server(exports.clone());
    let mut totals = Vec::new();
    for ex in &exports {
        let file = ex.root.join("stream");
        std::fs::write(&file, vec![0u8; LEN]).unwrap();
        let peer = ready_peer("stream", server.local_addr(), ex, "stream", LEN);
        let seen = save_on_break(&file);
        let r = peer.finish(WAIT);
        let n: usize = r["returned_records"].parse().unwrap();
        let total: usize = r["total"].parse().unwrap();
        assert!(n > 16, "{}: the peer streamed before the recall ({n} records)", ex.name);
        for i in 0..LEN / 8 {
            let want = if i < n { i as u64 + 1 } else { 0 };
            assert_eq!(
                record(&seen, i),
                want,
                "{}: record {i} when the breaker got the file ({n} committed)",
                ex.name
            );
        }
        note(&format!(
            "layout cooperative {}: {n} records committed by the recall, recall round trip {} ms (peer: RECALL seen to RETURN answered)",
            ex.name, r["recall_ms"]
        ));
        totals.push((file, total));
    }
    server.shutdown();
    for (file, total) in totals {
        let got = std::fs::read(&file).unwrap();
        for i in 0..LEN / 8 {
            let want = if i < total { i as u64 + 1 } else { 0 };
            assert_eq!(
                record(&got, i),
                want,
                "{}: record {i} after the peer resumed",
                file.display()
            );
        }
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn aligned_peers_get_zero_copy_odp_where_only_aligned_io_is_correct() {
    CONFIGURE.get_or_init(|| server_device);
    const ALEN: usize = 4 << 20;
    let env = guest::GuestEnv::get();
    let exports =
        vec![export(&env.pagecache_dir, "apc", false), export(&env.dax_dir, "adax", false)];
    let server = start_server(exports.clone());
    let mut totals = Vec::new();
    for ex in &exports {
        let file = ex.root.join("aligned");
        std::fs::write(&file, vec![0u8; ALEN]).unwrap();
        let odp_before = region_support::metric_sum(
            "filemr_region_regions{strategy=\"odp\",state=\"registered\"}",
        );
        let peer = ready_peer("aligned", server.local_addr(), ex, "aligned", ALEN);
        let odp = region_support::metric_sum(
            "filemr_region_regions{strategy=\"odp\",state=\"registered\"}",
        ) - odp_before;
        // ODP devices (6.18) misplace unaligned transfers, so unaligned peers get staging;
        // a peer that promised 4 KiB alignment gets ODP in place. Without ODP (6.1) nothing
        // changes.
        let want = if env.expect_odp { 1.0 } else { 0.0 };
        assert_eq!(odp, want, "{}: ODP regions for the aligned peer", ex.name);
        let odp_rebuilds = "filemr_region_rebuilds_total{strategy=\"odp\"}";
        let rebuilt_before = region_support::metric_sum(odp_rebuilds);
        let seen = save_on_break(&file);
        let r = peer.finish(WAIT);
        let rebuilt = region_support::metric_sum(odp_rebuilds) - rebuilt_before;
        assert_eq!(rebuilt, want, "{}: rebuilt in place with ODP (at its old addresses)", ex.name);
        assert_eq!(r["unaligned"], "refused", "{}: the client keeps its promise", ex.name);
        let n: usize = r["returned_blocks"].parse().unwrap();
        for i in 0..ALEN / 4096 {
            let got = &seen[4096 * i..4096 * (i + 1)];
            if i < n {
                assert!(got == block(i), "{}: block {i} committed by the recall", ex.name);
            } else {
                assert!(
                    got.iter().all(|b| *b == 0),
                    "{}: block {i} was not written before the recall",
                    ex.name
                );
            }
        }
        note(&format!(
            "layout aligned {}: odp regions {odp}, {n} blocks committed by the recall",
            ex.name
        ));
        totals.push((file, r["total"].parse::<usize>().unwrap()));
    }
    server.shutdown();
    for (file, total) in totals {
        let got = std::fs::read(&file).unwrap();
        for i in 0..total {
            assert!(
                got[4096 * i..4096 * (i + 1)] == block(i),
                "{}: block {i} after the rebuild",
                file.display()
            );
        }
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn layouts_that_escape_the_export_or_write_a_read_only_one_are_refused() {
    CONFIGURE.get_or_init(|| server_device);
    let env = guest::GuestEnv::get();
    let rw = export(&env.pagecache_dir, "pc", false);
    let ro = export(&env.pagecache_dir, "ro", true);
    std::fs::write(rw.root.join("f"), vec![1u8; 65536]).unwrap();
    std::fs::write(ro.root.join("g"), vec![2u8; 65536]).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", rw.root.join("out")).unwrap();
    let server = start_server(vec![rw, ro]);
    let vars = [("PATH", "pc/f"), ("LEN", "65536"), ("RO_PATH", "ro/g")];
    let r = PeerProc::spawn("refusals", server.local_addr(), &vars).finish(WAIT);
    for (k, want) in [
        ("ro_write", "EROFS"),
        ("ro_read", "granted"),
        ("dotdot", "EXDEV"),
        ("absolute", "EXDEV"),
        ("symlink_out", "EXDEV"),
        ("no_export", "ENOENT"),
        ("past_eof", "EINVAL"),
        ("ok", "granted"),
    ] {
        assert_eq!(r[k], want, "{k}");
    }
    let metrics = region_support::metrics_text();
    assert!(
        metrics.contains("filemr_layout_requests_total{op=\"get\",result=\"EXDEV\"} 3"),
        "{metrics}"
    );
    server.shutdown();
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn malformed_frames_are_answered_and_harm_no_other_connection() {
    CONFIGURE.get_or_init(|| server_device);
    let env = guest::GuestEnv::get();
    let rw = export(&env.pagecache_dir, "pc", false);
    std::fs::write(rw.root.join("f"), vec![0u8; 65536]).unwrap();
    let server = start_server(vec![rw.clone()]);
    let vars = [("PATH", "pc/f"), ("LEN", "65536")];
    let r = PeerProc::spawn("malformed", server.local_addr(), &vars).finish(WAIT);
    for (k, want) in [
        ("bad_magic", "0:EPROTO"),
        ("truncated", "77:EPROTO"),
        ("bad_length", "77:EPROTO"),
        ("bad_opcode", "77:EPROTO"),
        ("empty", "0:EPROTO"),
        ("not_a_request", "78:EPROTO"),
        ("unknown_layout", "77:ENOENT"),
        ("foreign_return", "79:ENOENT"),
        ("foreign_commit", "80:ENOENT"),
        ("get_overflow", "81:EINVAL"),
        ("get_huge", "82:EINVAL"),
        ("commit_past_layout", "84:ERANGE"),
        ("commit_overflow", "85:EINVAL"),
        ("flood_closed", "true"),
        ("other_ok", "true"),
    ] {
        assert_eq!(r[k], want, "{k}");
    }
    server.shutdown();
    let file = std::fs::read(rw.root.join("f")).unwrap();
    assert!(
        file[..8192] == guest::pattern(8192, 9)[..],
        "the unaffected peer's commit is in the file"
    );
}
