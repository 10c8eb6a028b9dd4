//! Regions and grants for C.

use std::ffi::{c_char, c_int};
use std::sync::Arc;

use filemr_core::grant::{Grant, GrantState};
use filemr_core::region::{Access, Region, Strategy};

use crate::call::{Fail, Result, put, run, string};
use crate::manager::manager;
use crate::table::{self, Object};
use crate::{filemr_grant, filemr_manager, filemr_qp, filemr_region};

/// Peers may RDMA READ the region (read lease).
pub const FILEMR_ACCESS_READ: u32 = 1;
/// Peers may RDMA WRITE the region (write lease).
pub const FILEMR_ACCESS_WRITE: u32 = 2;
/// Both (write lease).
pub const FILEMR_ACCESS_READ_WRITE: u32 = 3;

/// `strategy`: the file mapping registered with On-Demand Paging.
pub const FILEMR_STRATEGY_ODP: u32 = 1;
/// `strategy`: the file mapping registered and pinned.
pub const FILEMR_STRATEGY_PINNED: u32 = 2;
/// `strategy`: registered DRAM, filled from the file and written back on commit.
pub const FILEMR_STRATEGY_STAGING: u32 = 3;

/// `state`: bound to the region; the peer's key reaches the file.
pub const FILEMR_GRANT_ACTIVE: u32 = 1;
/// `state`: recalled; the key still works until returned or the deadline.
pub const FILEMR_GRANT_RECALLED: u32 = 2;
/// `state`: returned; rebound with the same key after the rebuild.
pub const FILEMR_GRANT_RETURNED: u32 = 3;
/// `state`: fenced; the key fails for good.
pub const FILEMR_GRANT_FENCED: u32 = 4;
/// `state`: retargeted to scratch memory until the rebuild.
pub const FILEMR_GRANT_RETARGETED: u32 = 5;
/// `state`: the region is lost; the key fails.
pub const FILEMR_GRANT_LOST: u32 = 6;

/// What a region is now.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct filemr_region_info {
    /// The region's id (in events).
    pub id: u64,
    /// The address of its first byte, constant across rebuilds.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its file offset.
    pub offset: u64,
    /// Incremented by every rebuild.
    pub generation: u64,
    /// The local key of its memory region (changes on rebuild; 0 while revoked): for the
    /// application's own work requests on queue pairs of the manager's PD.
    pub lkey: u32,
    /// `FILEMR_STRATEGY_*`.
    pub strategy: u32,
}

/// What a peer needs to use a grant.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct filemr_grant_info {
    /// The grant's id (in events).
    pub id: u64,
    /// The region's id.
    pub region: u64,
    /// The address of the region's first byte for the peer.
    pub addr: u64,
    /// Bytes the peer may access from `addr`.
    pub len: u64,
    /// The region generation the grant is bound to.
    pub generation: u64,
    /// The key to send the peer (constant for the grant's life).
    pub rkey: u32,
    /// The number of the queue pair it is bound on.
    pub qp_num: u32,
    /// `FILEMR_GRANT_*`.
    pub state: u32,
}

fn region(r: *const filemr_region) -> Result<(u64, Arc<Region>)> {
    match table::get(r, "filemr_region")? {
        (owner, Object::Region(r)) => Ok((owner, r)),
        _ => unreachable!("get checked the kind"),
    }
}

fn grant(g: *const filemr_grant) -> Result<Arc<Grant>> {
    match table::get(g, "filemr_grant")? {
        (_, Object::Grant(g)) => Ok(g),
        _ => unreachable!("get checked the kind"),
    }
}

/// Registers `len` bytes at `offset` of the file at `path` (0: to the end of the file)
/// for peers to access as `access` (`FILEMR_ACCESS_*`): takes the file's lease, maps and
/// registers it by the probed strategy. On success `*out` is the region (free it with
/// `filemr_region_free`). Blocking. Thread-safe.
///
/// Errors: `ENOENT` no such file; `EINVAL` a range past the end of the file, a bad
/// access, NULL arguments; `EAGAIN` the file is open for writing elsewhere (no lease).
///
/// # Safety
///
/// `m` is any value; `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_register(
    m: *const filemr_manager,
    path: *const c_char,
    offset: u64,
    len: usize,
    access: u32,
    out: *mut *mut filemr_region,
) -> c_int {
    run("filemr_register", || {
        crate::call::non_null(out, "out")?;
        let (id, h) = manager(m)?;
        let path = string(path, "path")?;
        let access = match access {
            FILEMR_ACCESS_READ => Access::Read,
            FILEMR_ACCESS_WRITE => Access::Write,
            FILEMR_ACCESS_READ_WRITE => Access::ReadWrite,
            other => return Err(Fail::invalid(format!("access {other} is not FILEMR_ACCESS_*"))),
        };
        let len = if len == 0 {
            let size = std::fs::metadata(path)
                .map_err(|e| {
                    Fail::new(e.raw_os_error().unwrap_or(libc::EIO), format!("{path}: {e}"))
                })?
                .len();
            let rest = size.checked_sub(offset).filter(|n| *n > 0).ok_or_else(|| {
                Fail::invalid(format!(
                    "{path}: offset {offset} is at or past the end ({size} bytes)"
                ))
            })?;
            usize::try_from(rest).map_err(|_| Fail::invalid("the range does not fit in memory"))?
        } else {
            len
        };
        let r = h.enter(|| h.mgr().register(path, offset, len, access))?;
        put(out, "out", table::insert(Some(id), Object::Region(Arc::new(r))))
    })
}

/// The region's id, address, length, generation, local key and strategy. Thread-safe.
///
/// # Safety
///
/// `r` is any value; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_region_get_info(
    r: *const filemr_region,
    out: *mut filemr_region_info,
) -> c_int {
    run("filemr_region_get_info", || {
        let (_, r) = region(r)?;
        let i = r.info();
        let strategy = match r.strategy() {
            Strategy::Odp => FILEMR_STRATEGY_ODP,
            Strategy::Pinned => FILEMR_STRATEGY_PINNED,
            Strategy::Staging => FILEMR_STRATEGY_STAGING,
        };
        let info = filemr_region_info {
            id: r.id(),
            addr: i.addr,
            len: i.len as u64,
            offset: r.offset(),
            generation: i.generation,
            lkey: i.lkey,
            strategy,
        };
        put(out, "out", info)
    })
}

/// Makes `len` bytes at `start` (relative to the region) that peers wrote durable in the
/// file. `ERANGE` for a range outside the region (`EINVAL` if `start + len` overflows);
/// `ENXIO` while the region is revoked. Blocking. Thread-safe.
///
/// # Safety
///
/// `r` is any value.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_region_commit(
    r: *const filemr_region,
    start: usize,
    len: usize,
) -> c_int {
    run("filemr_region_commit", || {
        let (_, r) = region(r)?;
        let end = start.checked_add(len).ok_or_else(|| Fail::invalid("start + len overflows"))?;
        Ok(r.commit(start..end)?)
    })
}

/// Frees the region: commits what peers wrote (writable regions), fences its grants,
/// deregisters it and releases the lease unless other regions of the file hold it. Its
/// grant handles stay valid (their keys fail) until freed. A stale handle gives `EBADF`.
/// Blocking. Thread-safe.
///
/// # Safety
///
/// `r` is any value.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_region_free(r: *mut filemr_region) -> c_int {
    run("filemr_region_free", || {
        let (owner, _) = region(r)?;
        let obj = table::remove(r, "filemr_region")?;
        let (_, h) = manager(owner as usize as *const filemr_manager)?;
        h.enter(|| drop(obj));
        Ok(())
    })
}

/// Grants the peer behind the adopted queue pair `qp` (in the manager's PD, connected,
/// ready to send) access to the region: binds a type-2 memory window on `qp` and waits
/// for the bind. On success `*out` is the grant: send its `filemr_grant_get_info` address
/// and key to the peer. `EINVAL` (nothing posted, `qp` untouched) for a queue pair of
/// another PD, not ready to send, or without the remote rights the region needs.
/// Blocking: with a `FILEMR_CQ_APPLICATION` completion queue, never call it on the thread
/// that polls. Thread-safe.
///
/// # Safety
///
/// `r` and `qp` are any values; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_region_grant(
    r: *const filemr_region,
    qp: *const filemr_qp,
    out: *mut *mut filemr_grant,
) -> c_int {
    run("filemr_region_grant", || {
        crate::call::non_null(out, "out")?;
        let (owner, r) = region(r)?;
        let qp = crate::verbs::qp(qp)?;
        let g = r.grant(&qp)?;
        put(out, "out", table::insert(Some(owner), Object::Grant(Arc::new(g))))
    })
}

/// The grant's id, region, address, length, generation, key, queue pair and state.
/// Thread-safe.
///
/// # Safety
///
/// `g` is any value; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_grant_get_info(
    g: *const filemr_grant,
    out: *mut filemr_grant_info,
) -> c_int {
    run("filemr_grant_get_info", || {
        let i = grant(g)?.info();
        let state = match i.state {
            GrantState::Active => FILEMR_GRANT_ACTIVE,
            GrantState::Recalled => FILEMR_GRANT_RECALLED,
            GrantState::Returned => FILEMR_GRANT_RETURNED,
            GrantState::Fenced => FILEMR_GRANT_FENCED,
            GrantState::Retargeted => FILEMR_GRANT_RETARGETED,
            GrantState::Lost | GrantState::Released => FILEMR_GRANT_LOST,
        };
        let info = filemr_grant_info {
            id: i.id,
            region: i.region,
            addr: i.addr,
            len: i.len as u64,
            generation: i.generation,
            rkey: i.rkey,
            qp_num: i.qp_num,
            state,
        };
        put(out, "out", info)
    })
}

/// The peer returned the grant (after `FILEMR_EVENT_RECALL`, once it finished its work
/// and the server committed what it wrote): the window is invalidated at once and
/// rebound, same key, when the region is rebuilt (`FILEMR_EVENT_AVAILABLE`). Blocking (one
/// work request): with a `FILEMR_CQ_APPLICATION` completion queue, never call it on the
/// thread that polls. Thread-safe.
///
/// # Safety
///
/// `g` is any value.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_grant_returned(g: *const filemr_grant) -> c_int {
    run("filemr_grant_returned", || Ok(grant(g)?.returned()?))
}

/// Frees the grant: its window is freed at once (no work request), so the peer's key
/// fails. A stale handle gives `EBADF`. Thread-safe.
///
/// # Safety
///
/// `g` is any value.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_grant_free(g: *mut filemr_grant) -> c_int {
    run("filemr_grant_free", || table::remove(g, "filemr_grant").map(drop))
}
