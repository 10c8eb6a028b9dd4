//! `membarrier(2)`, private expedited: the revoker's half of the guards' asymmetric fence
//! (see `region::guard`). Readers use a compiler fence only; a revoker's call makes every
//! running thread of the process execute a full memory barrier before it returns.

use std::sync::OnceLock;

const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn call(cmd: libc::c_int) -> bool {
    // SAFETY: membarrier takes two integers and touches no memory of ours; an unknown
    // command fails with EINVAL.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) == 0 }
}

/// Whether the process may use [`barrier`]: registers it once (kernels from 4.14).
pub fn available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| call(CMD_REGISTER_PRIVATE_EXPEDITED))
}

/// A full memory barrier on every running thread of the process. Only after
/// [`available`] returned true.
pub fn barrier() {
    let done = call(CMD_PRIVATE_EXPEDITED);
    debug_assert!(done, "membarrier after a successful registration");
}
