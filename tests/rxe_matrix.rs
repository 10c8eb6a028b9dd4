//! The registration matrix of KERNEL-FACTS.md, asserted row by row on each guest kernel and
//! file system. A kernel that answers differently fails the test naming the row.

#[path = "guest/mod.rs"]
mod guest;

use std::path::Path;

use filemr::probe::{Backing, MrKind, Outcome, matrix_cases, run_case};
use filemr::sys::Protection;
use guest::GuestEnv;
use nix::errno::Errno;

#[derive(Clone, Copy, PartialEq)]
enum Fs {
    Dax,
    PageCache,
}

/// Expected answer for a case, per KERNEL-FACTS.md: `odp` is the 6.18 column.
fn expected(
    fs: Fs,
    backing: &Backing,
    kind: MrKind,
    writable: bool,
    prot: Protection,
    odp: bool,
) -> Outcome {
    if *backing == Backing::Anonymous {
        return Ok(());
    }
    match (fs, kind) {
        (_, MrKind::Odp) => {
            if odp {
                Ok(())
            } else {
                Err(Errno::EINVAL)
            }
        }
        (Fs::Dax, MrKind::Pinned) => Err(Errno::EOPNOTSUPP),
        (Fs::PageCache, MrKind::Pinned) => match (writable, prot, odp) {
            (true, _, false) => Ok(()),
            (true, _, true) => Err(Errno::EFAULT),
            (false, Protection::Read, false) => Err(Errno::EFAULT),
            (false, Protection::Read, true) => Ok(()),
            (false, Protection::ReadWrite, _) => Ok(()),
        },
    }
}

fn show(o: &Outcome) -> String {
    match o {
        Ok(()) => "OK".into(),
        Err(e) => format!("{e}"),
    }
}

fn assert_matrix(label: &str, dir: &Path, fs: Fs, with_anonymous: bool) {
    let env = GuestEnv::get();
    let (_ctx, pd, _cq) = env.open();
    let mut wrong = Vec::new();
    let cases = matrix_cases(dir, with_anonymous);
    assert!(cases.len() >= 5);
    for case in &cases {
        let want = expected(
            fs,
            &case.backing,
            case.kind,
            case.access.is_writable(),
            case.prot,
            env.expect_odp,
        );
        let got = run_case(&pd, case);
        println!("{label:<16} {:<42} got {:<12} want {}", case.label, show(&got), show(&want));
        if got != want {
            wrong.push(format!(
                "row `{label}: {}`: got {}, KERNEL-FACTS says {}",
                case.label,
                show(&got),
                show(&want)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "kernel profile {}: {} row(s) changed:\n{}",
        env.profile,
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn matrix_fs_dax_ext4() {
    let env = GuestEnv::get();
    assert_matrix("FS-DAX ext4", &env.dax_dir, Fs::Dax, false);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn matrix_page_cache_ext4_and_anonymous() {
    let env = GuestEnv::get();
    assert_matrix("page cache ext4", &env.pagecache_dir, Fs::PageCache, true);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn matrix_fs_dax_xfs() {
    let env = GuestEnv::get();
    let dir = env.xfs_dax_dir.clone().expect("FILEMR_XFS_DAX_DIR set by the harness");
    assert_matrix("FS-DAX xfs", &dir, Fs::Dax, false);
}

#[test]
fn expectations_cover_the_kernel_facts_table() {
    // Host-side check of the table itself, so a typo in it cannot hide.
    let f = Backing::File("/x".into());
    assert_eq!(
        expected(Fs::Dax, &f, MrKind::Pinned, false, Protection::Read, true),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        expected(Fs::Dax, &f, MrKind::Odp, true, Protection::ReadWrite, false),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        expected(Fs::PageCache, &f, MrKind::Pinned, true, Protection::ReadWrite, true),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        expected(Fs::PageCache, &f, MrKind::Pinned, false, Protection::Read, false),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        expected(Fs::PageCache, &f, MrKind::Pinned, false, Protection::ReadWrite, false),
        Ok(())
    );
}
