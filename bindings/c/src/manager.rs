//! The manager for C: filemr's `Manager` with its own tokio runtime, its metrics registry
//! and its event queue.

use std::ffi::{c_char, c_int};
use std::sync::Arc;
use std::time::Duration;

use filemr_core::region::{Manager, ManagerConfig, RevocationMode};
use filemr_core::verbs::{Context, ProtectionDomain, ffi};
use prometheus_client::registry::Registry;
use tokio::runtime::Runtime;

use crate::call::{self, Fail, Result, put, run, string};
use crate::event::{EventQueue, filemr_event};
use crate::filemr_manager;
use crate::table::{self, Object};

/// `flags` bit: grants not returned by the recall deadline are retargeted to scratch
/// memory (their peers see no error) instead of fenced.
pub const FILEMR_RETARGET: u32 = 1;
/// `flags` bit: always stage in registered DRAM, never register the file in place.
pub const FILEMR_STAGE_ONLY: u32 = 2;
/// `flags` bit, `filemr_manager_open` only: when the device goes away the regions are
/// suspended (`FILEMR_EVENT_SUSPENDED`, grants fenced, leases kept), and rebuilt at the
/// same addresses with new keys (`FILEMR_EVENT_REBUILT`) when a device of that name is
/// back, instead of lost (`FILEMR_LOST_DEVICE_GONE`). The manager's protection domain is
/// replaced meanwhile: get it again with `filemr_manager_verbs` (`ENODEV` while gone).
pub const FILEMR_RESUME: u32 = 4;

/// filemr's manager and what the C layer keeps with it.
pub(crate) struct ManagerHandle {
    pub(crate) mgr: Option<Manager>,
    pub(crate) events: Arc<EventQueue>,
    pub(crate) registry: parking_lot::Mutex<Registry>,
    /// Declared last: dropped after the manager, whose background task runs on it.
    pub(crate) rt: Option<Runtime>,
}

impl ManagerHandle {
    pub(crate) fn mgr(&self) -> &Manager {
        self.mgr.as_ref().expect("a live manager handle holds its manager")
    }

    /// The manager's protection domain; `ENODEV` once its device was removed.
    pub(crate) fn pd(&self) -> Result<Arc<ProtectionDomain>> {
        self.mgr().protection_domain().ok_or_else(|| {
            Fail::new(libc::ENODEV, format!("device {} was removed", self.mgr().device()))
        })
    }

    /// Runs `f` inside the manager's runtime (filemr's blocking calls may need it).
    pub(crate) fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self.rt.as_ref().map(Runtime::enter);
        f()
    }
}

impl Drop for ManagerHandle {
    fn drop(&mut self) {
        let rt = self.rt.take();
        {
            let _guard = rt.as_ref().map(Runtime::enter);
            self.mgr.take();
        }
        if let Some(rt) = rt {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn config(device: &str, flags: u32) -> Result<ManagerConfig> {
    if flags & !(FILEMR_RETARGET | FILEMR_STAGE_ONLY | FILEMR_RESUME) != 0 {
        return Err(Fail::invalid(format!("unknown flags {flags:#x}")));
    }
    let mut cfg = ManagerConfig::new(device);
    if flags & FILEMR_RETARGET != 0 {
        cfg.revocation = RevocationMode::Retarget;
    }
    cfg.in_place = flags & FILEMR_STAGE_ONLY == 0;
    cfg.resume_on_device_return = flags & FILEMR_RESUME != 0;
    Ok(cfg)
}

/// Builds a manager with `make` inside a new runtime and publishes its handle.
fn start(
    out: *mut *mut filemr_manager,
    make: impl FnOnce(&mut Registry) -> Result<Manager>,
) -> Result<()> {
    call::non_null(out, "out")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("filemr")
        .enable_all()
        .build()
        .map_err(|e| Fail::new(e.raw_os_error().unwrap_or(libc::EIO), format!("runtime: {e}")))?;
    let events = Arc::new(
        EventQueue::new().map_err(|e| Fail::new(e as c_int, format!("eventfd: {}", e.desc())))?,
    );
    let mut registry = Registry::default();
    let mgr = {
        let _guard = rt.enter();
        make(&mut registry)?
    };
    let mut rx = mgr.events();
    let q = events.clone();
    rt.spawn(async move {
        while let Some(ev) = rx.recv().await {
            q.push(&ev);
        }
    });
    let handle = ManagerHandle {
        mgr: Some(mgr),
        events,
        registry: parking_lot::Mutex::new(registry),
        rt: Some(rt),
    };
    put(out, "out", table::insert(None, Object::Manager(Arc::new(handle))))
}

/// Opens the RDMA device `device` (e.g. `"rxe0"`), allocates a protection domain and
/// starts a manager with its own runtime threads; `flags` is a set of `FILEMR_RETARGET`,
/// `FILEMR_STAGE_ONLY` and `FILEMR_RESUME`. On success `*out` is the manager (free it with
/// `filemr_manager_close`).
///
/// One manager per process: a second fails with `EBUSY`. Thread-safe.
///
/// # Safety
///
/// `device` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_manager_open(
    device: *const c_char,
    flags: u32,
    out: *mut *mut filemr_manager,
) -> c_int {
    run("filemr_manager_open", || {
        let cfg = config(string(device, "device")?, flags)?;
        start(out, |registry| Ok(Manager::new(cfg, registry)?))
    })
}

/// Starts a manager over the application's own device context and protection domain:
/// regions are registered in `pd`, so they can be granted on the application's queue
/// pairs in `pd` (`filemr_qp_adopt`). filemr never closes `ctx` or deallocates `pd`.
/// `flags` as for `filemr_manager_open`, but `FILEMR_RESUME` is refused (`EINVAL`): filemr
/// cannot reopen the application's device. Fails with `EINVAL` for NULL pointers or a
/// `pd` of another context.
///
/// One manager per process: a second fails with `EBUSY`. Thread-safe.
///
/// # Safety
///
/// `ctx` and `pd` are NULL or live objects of the libibverbs this process links, and the
/// application keeps them until `filemr_manager_close` of this manager has returned.
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_manager_adopt(
    ctx: *mut ffi::ibv_context,
    pd: *mut ffi::ibv_pd,
    flags: u32,
    out: *mut *mut filemr_manager,
) -> c_int {
    run("filemr_manager_adopt", || {
        if flags & FILEMR_RESUME != 0 {
            return Err(Fail::invalid(
                "FILEMR_RESUME needs a manager that opened its device (filemr_manager_open)",
            ));
        }
        let cfg = config("", flags)?;
        // SAFETY: the caller keeps both alive until the manager is closed (above).
        let ctx = Arc::new(unsafe { Context::from_raw(ctx) }?);
        // SAFETY: as above.
        let pd = unsafe { ProtectionDomain::from_raw(&ctx, pd) }?;
        start(out, |registry| Ok(Manager::with_protection_domain(cfg, pd, registry)?))
    })
}

/// Closes the manager: frees every region, grant, queue pair and completion queue handle
/// made under it (grants first; a region's commit runs as on `filemr_region_free`),
/// releases the leases and stops its threads. Every handle made under it is stale
/// afterwards (`EBADF`), the manager's own included.
///
/// Thread-safe, but no other call on this manager's handles may be running.
///
/// # Safety
///
/// `m` is NULL or a value `filemr_manager_open`/`_adopt` gave (live or not).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_manager_close(m: *mut filemr_manager) -> c_int {
    run("filemr_manager_close", || {
        let (id, obj) = table::get(m, "filemr_manager")?;
        let Object::Manager(h) = obj else { unreachable!("get checked the kind") };
        let objs = table::remove_owned_by(id);
        h.enter(|| drop(objs));
        drop(h);
        Ok(())
    })
}

/// The live manager behind `m`, and its id.
pub(crate) fn manager(m: *const filemr_manager) -> Result<(u64, Arc<ManagerHandle>)> {
    match table::get(m, "filemr_manager")? {
        (id, Object::Manager(h)) => Ok((id, h)),
        _ => unreachable!("get checked the kind"),
    }
}

/// The manager's device context and protection domain: create the queue pairs that serve
/// peers in `*pd` (either out-pointer may be NULL). They stay valid until the manager is
/// closed; do not free them. With `FILEMR_RESUME`, only until the device goes away
/// (`FILEMR_EVENT_SUSPENDED`; `ENODEV` meanwhile): once it is back, call this again for
/// the new ones. Thread-safe.
///
/// # Safety
///
/// `m` is any value; `ctx` and `pd` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_manager_verbs(
    m: *const filemr_manager,
    ctx: *mut *mut ffi::ibv_context,
    pd: *mut *mut ffi::ibv_pd,
) -> c_int {
    run("filemr_manager_verbs", || {
        let (_, h) = manager(m)?;
        let p = h.pd()?;
        if !ctx.is_null() {
            put(ctx, "ctx", p.context().as_raw())?;
        }
        if !pd.is_null() {
            put(pd, "pd", p.as_raw())?;
        }
        Ok(())
    })
}

/// A file descriptor that is readable while the manager has events for
/// `filemr_manager_next_event` (add it to an epoll set). It belongs to the manager:
/// do not read or close it. Thread-safe.
///
/// # Safety
///
/// `m` is any value; `fd` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_manager_event_fd(
    m: *const filemr_manager,
    fd: *mut c_int,
) -> c_int {
    run("filemr_manager_event_fd", || {
        let (_, h) = manager(m)?;
        put(fd, "fd", h.events.raw_fd())
    })
}

/// Takes the oldest pending event into `*out`; `EAGAIN` when there is none (the event fd
/// is then not readable). Events of every region of the manager, in order. Thread-safe.
///
/// # Safety
///
/// `m` is any value; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_manager_next_event(
    m: *const filemr_manager,
    out: *mut filemr_event,
) -> c_int {
    run("filemr_manager_next_event", || {
        call::non_null(out, "out")?;
        let (_, h) = manager(m)?;
        let ev = h.events.pop().ok_or_else(|| Fail::new(libc::EAGAIN, "no event pending"))?;
        put(out, "out", ev)
    })
}

/// Writes the manager's metrics in the OpenMetrics text format (what a `/metrics`
/// endpoint serves) into `buf` (NUL-terminated, at most `len` bytes) and their full
/// length into `*needed`; `ERANGE` when `buf` is too small (call again with
/// `*needed + 1` bytes). Thread-safe.
///
/// # Safety
///
/// `m` is any value; `buf` is NULL or has `len` writable bytes; `needed` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn filemr_manager_metrics(
    m: *const filemr_manager,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> c_int {
    run("filemr_manager_metrics", || {
        let (_, h) = manager(m)?;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &h.registry.lock())
            .map_err(|e| Fail::new(libc::EIO, format!("encoding: {e}")))?;
        put(needed, "needed", text.len())?;
        if buf.is_null() || len <= text.len() {
            return Err(Fail::new(libc::ERANGE, format!("{} bytes needed", text.len() + 1)));
        }
        // SAFETY: `buf` has `len > text.len()` writable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            *buf.add(text.len()) = 0;
        }
        Ok(())
    })
}
