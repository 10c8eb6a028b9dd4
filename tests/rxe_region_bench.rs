//! Runs the device parts of `benches/region.rs` inside the guests (the benches cannot
//! reach rxe on the host) and records the numbers in the guest's `region-notes.txt`.
//! Measurements only: nothing is asserted but that they complete. Debug build, under
//! TCG emulation: compare the ratios, not the absolute times.

#[allow(dead_code)]
#[path = "../benches/region.rs"]
mod bench;
#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;

use guest::GuestEnv;
use region_support::{RT, manager, note};

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn region_benchmarks_in_the_guest() {
    let env = GuestEnv::get();
    let mgr = manager();
    let line = bench::registration_in(mgr, &env.pagecache_dir);
    note(&format!("{} bench: {line}", env.profile));
    for line in bench::revocation_in(&RT, mgr, &env.pagecache_dir) {
        note(&format!("{} bench: {line}", env.profile));
    }
}
