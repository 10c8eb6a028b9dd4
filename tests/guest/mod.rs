//! Shared support for integration tests that run inside the SoftRoCE guests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use filemr::verbs::{CompletionQueue, Context, ProtectionDomain};

/// Reason attached to every test that needs the guest.
pub const GUEST_ONLY: &str =
    "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests";

/// What the guest harness tells the tests through the environment.
pub struct GuestEnv {
    pub device: String,
    pub dax_dir: PathBuf,
    pub pagecache_dir: PathBuf,
    pub xfs_dax_dir: Option<PathBuf>,
    pub expect_odp: bool,
    pub profile: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test runs inside the SoftRoCE guest; use `cargo xtask test`"
        )
    })
}

impl GuestEnv {
    pub fn get() -> GuestEnv {
        GuestEnv {
            device: var("FILEMR_RXE_DEVICE"),
            dax_dir: var("FILEMR_DAX_DIR").into(),
            pagecache_dir: var("FILEMR_PAGECACHE_DIR").into(),
            xfs_dax_dir: std::env::var_os("FILEMR_XFS_DAX_DIR").map(PathBuf::from),
            expect_odp: match var("FILEMR_EXPECT_ODP").as_str() {
                "yes" => true,
                "no" => false,
                other => panic!("FILEMR_EXPECT_ODP must be yes or no, not {other:?}"),
            },
            profile: var("FILEMR_GUEST_PROFILE"),
        }
    }

    pub fn open(&self) -> (Arc<Context>, Arc<ProtectionDomain>, Arc<CompletionQueue>) {
        let ctx = Arc::new(Context::open(&self.device).expect("open rxe device"));
        let pd = ProtectionDomain::new(&ctx).expect("alloc PD");
        let cq = CompletionQueue::new(&ctx, 256).expect("create CQ");
        (ctx, pd, cq)
    }
}

/// A deterministic byte pattern distinct per `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7 + 1) as u8).collect()
}

/// A unique file path in `dir`.
pub fn unique_path(dir: &std::path::Path, tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    dir.join(format!("filemr-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}
