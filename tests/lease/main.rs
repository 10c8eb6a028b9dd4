//! Lease engine tests against real leases and real breaker processes.
//!
//! Tests that need root are `#[ignore]`d (the xtask harness runs them as root in the
//! guest). Breakers are this binary re-executed in a helper role (`lease_reexec_entry`).

mod common;
mod helper;

mod breaks;
mod errors;
mod forced;
mod reacquire;
mod share;
mod storm;

/// Entry point of the child-process roles; does nothing in a normal test run.
#[test]
fn lease_reexec_entry() {
    if let Ok(role) = std::env::var("FILEMR_HELPER_ROLE") {
        helper::main(&role);
    }
}
