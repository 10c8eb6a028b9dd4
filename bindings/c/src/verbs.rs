//! The application's completion queues and queue pairs, adopted for grants.

use std::ffi::c_int;
use std::sync::Arc;

use filemr_core::verbs::{CompletionQueue, CqPolling, QueuePair, ffi};

use crate::call::{Fail, Result, non_null, put, run};
use crate::manager::manager;
use crate::table::{self, Object};
use crate::{filemr_cq, filemr_manager, filemr_qp};

/// The application polls the completion queue with its own `ibv_poll_cq` and hands every
/// completion to `filemr_cq_deliver` (which says which were filemr's). filemr's calls that
/// post work (`filemr_region_grant`, `filemr_grant_returned`, and the rebinds of its own
/// revocation thread) wait for that hand-over: never make them on the polling thread.
pub const FILEMR_CQ_APPLICATION: u32 = 1;
/// filemr polls the completion queue itself when it waits, and the application polls it
/// only with `filemr_cq_poll` (never `ibv_poll_cq`): works whatever thread calls what;
/// the choice for single-threaded event loops.
pub const FILEMR_CQ_SHARED: u32 = 2;

pub(crate) fn qp(q: *const filemr_qp) -> Result<Arc<QueuePair>> {
    match table::get(q, "filemr_qp")? {
        (_, Object::Qp(q)) => Ok(q),
        _ => unreachable!("get checked the kind"),
    }
}

fn cq(c: *const filemr_cq) -> Result<(u64, Arc<CompletionQueue>)> {
    match table::get(c, "filemr_cq")? {
        (owner, Object::Cq(c)) => Ok((owner, c)),
        _ => unreachable!("get checked the kind"),
    }
}

/// Adopts the application's completion queue `cq` (of the manager's device context),
/// polled as `polling` says (`FILEMR_CQ_APPLICATION` or `FILEMR_CQ_SHARED`), so queue
/// pairs sending to it can be adopted. filemr never destroys `cq`. Thread-safe.
///
/// # Safety
///
/// `cq` is NULL or a live `ibv_cq` the application keeps until this handle and the queue
/// pair handles adopted with it are freed (or the manager closed); `out` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_cq_adopt(
    m: *const filemr_manager,
    cq: *mut ffi::ibv_cq,
    polling: u32,
    out: *mut *mut filemr_cq,
) -> c_int {
    run("filemr_cq_adopt", || {
        non_null(out, "out")?;
        let (id, h) = manager(m)?;
        let polling = match polling {
            FILEMR_CQ_APPLICATION => CqPolling::Application,
            FILEMR_CQ_SHARED => CqPolling::Shared,
            other => return Err(Fail::invalid(format!("polling {other} is not FILEMR_CQ_*"))),
        };
        let pd = h.pd()?;
        // SAFETY: the caller keeps `cq` alive as documented above.
        let adopted = unsafe { CompletionQueue::from_raw(pd.context(), cq, polling) }?;
        put(out, "out", table::insert(Some(id), Object::Cq(adopted)))
    })
}

/// Polls a `FILEMR_CQ_SHARED` completion queue in place of `ibv_poll_cq`: fills up to `n`
/// entries of `wcs` with the application's completions (never filemr's) and sets `*got`.
/// Thread-safe.
///
/// # Safety
///
/// `c` is any value; `wcs` is NULL or has room for `n` entries; `got` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_cq_poll(
    c: *const filemr_cq,
    wcs: *mut ffi::ibv_wc,
    n: c_int,
    got: *mut c_int,
) -> c_int {
    run("filemr_cq_poll", || {
        let (_, cq) = cq(c)?;
        if cq.polling() != CqPolling::Shared {
            return Err(Fail::invalid("filemr_cq_poll on a FILEMR_CQ_APPLICATION queue"));
        }
        let n = usize::try_from(n).map_err(|_| Fail::invalid(format!("n = {n}")))?;
        non_null(got, "got")?;
        let out: &mut [ffi::ibv_wc] = if n == 0 {
            &mut []
        } else {
            // SAFETY: non-NULL (checked) with room for `n` entries, as the caller promises;
            // `ibv_wc` is plain old data, so writing over whatever is there is fine.
            unsafe { std::slice::from_raw_parts_mut(non_null(wcs, "wcs")?, n) }
        };
        let k = cq.poll_wc(out)?;
        put(got, "got", k as c_int)
    })
}

/// Hands filemr a completion the application polled from a `FILEMR_CQ_APPLICATION`
/// queue. `*mine` is set to true when it was filemr's (its `wr_id` is reserved, see
/// `filemr_is_reserved_wr_id`): the application then ignores it. Never blocks.
/// Thread-safe.
///
/// # Safety
///
/// `c` is any value; `wc` is NULL or a readable `ibv_wc`; `mine` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_cq_deliver(
    c: *const filemr_cq,
    wc: *const ffi::ibv_wc,
    mine: *mut bool,
) -> c_int {
    run("filemr_cq_deliver", || {
        let (_, cq) = cq(c)?;
        non_null(mine, "mine")?;
        // SAFETY: non-NULL (checked) and readable, as the caller promises.
        let wc = unsafe { &*non_null(wc.cast_mut(), "wc")? };
        put(mine, "mine", cq.deliver(wc))
    })
}

/// Frees the completion queue handle (not the queue). Thread-safe.
///
/// # Safety
///
/// `c` is any value.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_cq_free(c: *mut filemr_cq) -> c_int {
    run("filemr_cq_free", || table::remove(c, "filemr_cq").map(drop))
}

/// Adopts the application's RC queue pair `qp` (in the manager's PD, sending to the
/// adopted `cq`) so regions can be granted on it. filemr posts its window binds and
/// invalidations on it, signaled with reserved `wr_id`s (one send-queue slot each until
/// complete), and never destroys or modifies it. `EINVAL` for a queue pair of another PD,
/// another send completion queue, or not RC. Thread-safe.
///
/// # Safety
///
/// `qp` is NULL or a live `ibv_qp` the application keeps until this handle and the grants
/// on it are freed (or the manager closed); `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_qp_adopt(
    m: *const filemr_manager,
    c: *const filemr_cq,
    qp: *mut ffi::ibv_qp,
    out: *mut *mut filemr_qp,
) -> c_int {
    run("filemr_qp_adopt", || {
        non_null(out, "out")?;
        let (id, h) = manager(m)?;
        let (owner, cq) = cq(c)?;
        if owner != id {
            return Err(Fail::invalid("the completion queue was adopted by another manager"));
        }
        // SAFETY: the caller keeps `qp` alive as documented above.
        let adopted = unsafe { QueuePair::from_raw(&h.pd()?, &cq, qp) }?;
        put(out, "out", table::insert(Some(id), Object::Qp(Arc::new(adopted))))
    })
}

/// Frees the queue pair handle (not the queue pair). Grants on it keep working until
/// freed. Thread-safe.
///
/// # Safety
///
/// `q` is any value.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_qp_free(q: *mut filemr_qp) -> c_int {
    run("filemr_qp_free", || table::remove(q, "filemr_qp").map(drop))
}
