//! The manager: device, lease engine, strategy decisions and the region table.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use nix::errno::Errno;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

use super::budget::MemlockBudget;
use super::config::{Access, ManagerConfig, RevocationMode};
use super::event::{LostReason, RegionEvent, RegionEvents};
use super::guard::GuardWord;
use super::handle::{Region, RegionInfo, RegionShared, Slot, TearDown, build_error};
use super::state::RegionState;
use super::strategy::probe::{ProbeEnv, probe};
use super::strategy::{self, Decision, Strategy};
use super::{RegionError, lease_events};
use crate::lease::{FileId, LeaseEngine, LeaseError, LeaseState};
use crate::metrics::{GrantMetrics, RegionMetrics};
use crate::sys::{io_errno, page_offset, page_size};
use crate::verbs::{Context, OdpCaps, ProtectionDomain};

type EventHookFn = Arc<dyn Fn(&RegionEvent) + Send + Sync>;

pub(crate) struct ManagerInner {
    pub(crate) cfg: ManagerConfig,
    pub(crate) engine: LeaseEngine,
    /// The protection domain regions are registered in; `None` while the device is gone
    /// and the regions are suspended (`ManagerConfig::resume_on_device_return`).
    pd: parking_lot::RwLock<Option<Arc<ProtectionDomain>>>,
    /// Regions are suspended, not lost, when the device goes, and rebuilt when it is back:
    /// `ManagerConfig::resume_on_device_return` on a manager that opened its device itself
    /// (`Manager::new`; one over an application's protection domain cannot reopen it).
    resumes: bool,
    pub(crate) odp: OdpCaps,
    decisions: Mutex<HashMap<(u64, Access), Decision>>,
    pub(crate) files: Mutex<HashMap<FileId, Vec<Weak<RegionShared>>>>,
    /// Serialises revocation tails and rebuilds of one file.
    file_ops: Mutex<HashMap<FileId, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) events: broadcast::Sender<RegionEvent>,
    /// Called after each event is sent ([`Manager::on_event`]), by hook id.
    hooks: parking_lot::RwLock<Vec<(u64, EventHookFn)>>,
    /// Woken when a grant is returned: a revocation waiting for returns looks at once.
    pub(crate) returns: tokio::sync::Notify,
    pub(crate) metrics: RegionMetrics,
    pub(crate) grant_metrics: GrantMetrics,
    /// Guard refusals: revoking, revoked, other (pre-created: the refusal path takes no
    /// lock).
    pub(crate) refused: [Counter; 3],
    /// Ids of regions and grants (one sequence: an id names one thing).
    pub(crate) next_id: AtomicU64,
    /// Locked bytes the regions may hold (`ManagerConfig::memlock_budget`).
    budget: Arc<MemlockBudget>,
    /// The device is gone: every region is lost or suspended, registrations are refused.
    pub(crate) device_lost: AtomicBool,
    /// Serialises staging write-backs of one file (striped by file): a write-back merges
    /// over the file's current bytes, so two regions of a file must not interleave.
    writebacks: [Mutex<()>; 16],
    /// What revocations do to unreturned grants (from `ManagerConfig::revocation`,
    /// changed by [`Manager::set_revocation`]).
    pub(crate) revocation: Mutex<RevocationMode>,
}

/// A hook installed by [`Manager::on_event`]; dropping it removes the hook.
#[derive(Debug)]
pub struct EventHook {
    mgr: Weak<ManagerInner>,
    id: u64,
}

impl Drop for EventHook {
    fn drop(&mut self) {
        if let Some(m) = self.mgr.upgrade() {
            m.hooks.write().retain(|(id, _)| *id != self.id);
        }
    }
}

/// The region manager: a cheap, clonable handle. Needs a tokio runtime (time and I/O);
/// one manager per process (it owns the process's lease engine).
#[derive(Clone)]
pub struct Manager {
    pub(crate) inner: Arc<ManagerInner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("device", &self.inner.cfg.device)
            .field("files", &self.inner.files.lock().len())
            .finish()
    }
}

fn metadata(path: &Path) -> Result<std::fs::Metadata, RegionError> {
    std::fs::metadata(path).map_err(|e| RegionError::Io {
        path: path.to_path_buf(),
        op: "stat",
        errno: io_errno(&e),
    })
}

impl Manager {
    /// Opens `cfg.device`, allocates a protection domain, starts the lease engine and the
    /// background task that revokes and rebuilds regions; registers the metrics in
    /// `registry`. Must be called inside a tokio runtime.
    pub fn new(cfg: ManagerConfig, registry: &mut Registry) -> Result<Manager, RegionError> {
        let device = |source| RegionError::Device { device: cfg.device.clone(), source };
        let waited_until = std::time::Instant::now() + cfg.device_wait;
        let ctx = loop {
            match Context::open(&cfg.device) {
                Err(e) if e.errno == Errno::ENODEV && std::time::Instant::now() < waited_until => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break Arc::new(other.map_err(device)?),
            }
        };
        let pd = ProtectionDomain::new(&ctx).map_err(device)?;
        Manager::start(cfg, pd, registry, true)
    }

    /// A manager over the application's own protection domain (and so its device
    /// context): regions are registered in `pd`, so the application's queue pairs in
    /// `pd` can be granted regions (see [`QueuePair::from_raw`](crate::verbs::QueuePair::from_raw))
    /// and can use the regions' memory in their own work requests. Adopt raw verbs objects
    /// with [`Context::from_raw`] and [`ProtectionDomain::from_raw`]; `docs/embedding.md`
    /// has the ownership rules. `cfg.device` is replaced by the name of `pd`'s device.
    /// Must be called inside a tokio runtime.
    pub fn with_protection_domain(
        cfg: ManagerConfig,
        pd: Arc<ProtectionDomain>,
        registry: &mut Registry,
    ) -> Result<Manager, RegionError> {
        Manager::start(cfg, pd, registry, false)
    }

    /// Both constructors: `owns_device` when the manager opened the device itself.
    fn start(
        mut cfg: ManagerConfig,
        pd: Arc<ProtectionDomain>,
        registry: &mut Registry,
        owns_device: bool,
    ) -> Result<Manager, RegionError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| RegionError::NoRuntime)?;
        cfg.device = pd.context().name().to_string();
        let device = |source| RegionError::Device { device: cfg.device.clone(), source };
        let odp = pd.context().caps().map_err(device)?.odp;
        let engine = LeaseEngine::start_with(cfg.lease.clone()).map_err(|e| match e {
            LeaseError::AlreadyRunning => RegionError::EngineAlreadyRunning,
            LeaseError::NoRuntime => RegionError::NoRuntime,
            other => RegionError::Lease(other),
        })?;
        let metrics = RegionMetrics::new(registry);
        let grant_metrics = GrantMetrics::new(registry);
        let refused = ["revoking", "revoked", "other"].map(|why| {
            metrics.guard_refusals.get_or_create(&vec![("why", why.to_string())]).clone()
        });
        let (events, _) = broadcast::channel(cfg.event_capacity.max(16));
        let budget = MemlockBudget::new(cfg.memlock_budget);
        let revocation = Mutex::new(cfg.revocation);
        let resumes = owns_device && cfg.resume_on_device_return;
        let inner = Arc::new(ManagerInner {
            cfg,
            engine,
            pd: parking_lot::RwLock::new(Some(pd)),
            resumes,
            odp,
            decisions: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            file_ops: Mutex::new(HashMap::new()),
            events,
            hooks: parking_lot::RwLock::new(Vec::new()),
            returns: tokio::sync::Notify::new(),
            metrics,
            grant_metrics,
            refused,
            next_id: AtomicU64::new(1),
            budget,
            device_lost: AtomicBool::new(false),
            revocation,
            writebacks: Default::default(),
        });
        let weak = Arc::downgrade(&inner);
        let handle = rt.clone();
        inner.engine.on_event(move |ev| lease_events::on_lease_event(&weak, &handle, ev));
        if !inner.cfg.device_poll.is_zero() {
            rt.spawn(watch_device(Arc::downgrade(&inner)));
        }
        Ok(Manager { inner })
    }

    /// The name of the manager's device.
    pub fn device(&self) -> &str {
        &self.inner.cfg.device
    }

    /// All regions' events.
    pub fn events(&self) -> RegionEvents {
        RegionEvents { rx: self.inner.events.subscribe(), only: None, skipped: 0 }
    }

    /// Calls `hook` with every region event from now on, right after it is sent to the
    /// [`RegionEvents`] subscribers, on the thread that emits it (the lease engine's
    /// break thread, the blocking pool, a caller of the manager). It must return soon and
    /// must not call `on_event` or drop an [`EventHook`] itself. For a thread that sleeps
    /// on file descriptors to wake when there is an event to read (the layout server
    /// writes an eventfd). Dropping the returned [`EventHook`] removes it.
    pub fn on_event(&self, hook: impl Fn(&RegionEvent) + Send + Sync + 'static) -> EventHook {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.hooks.write().push((id, Arc::new(hook)));
        EventHook { mgr: Arc::downgrade(&self.inner), id }
    }

    /// The protection domain regions are registered in: create the queue pairs that
    /// serve them in it. `None` while the device is gone and the regions are suspended
    /// (`ManagerConfig::resume_on_device_return`); a new one once it is back.
    pub fn protection_domain(&self) -> Option<Arc<ProtectionDomain>> {
        self.inner.pd.read().clone()
    }

    /// Whether the device is gone: every region was lost (drop the manager so the removal
    /// can finish) or, with `ManagerConfig::resume_on_device_return`, is suspended until
    /// the device is back (then this turns false again).
    pub fn device_lost(&self) -> bool {
        self.inner.device_lost.load(Ordering::Acquire)
    }

    /// Changes what the next revocations do to grants not returned by the deadline
    /// (fence or retarget); one under way keeps the mode it started its step 4 with.
    /// Grants already fenced or retargeted stay so.
    pub fn set_revocation(&self, mode: RevocationMode) {
        *self.inner.revocation.lock() = mode;
    }

    /// What revocations do to unreturned grants now.
    pub fn revocation(&self) -> RevocationMode {
        *self.inner.revocation.lock()
    }

    /// Bytes of locked memory (pinned and staging regions) reserved by the live regions,
    /// counted against [`ManagerConfig::memlock_budget`] whether or not one is set.
    pub fn locked_bytes(&self) -> u64 {
        self.inner.budget.used()
    }

    /// The lease engine the manager uses.
    pub fn lease_engine(&self) -> &LeaseEngine {
        &self.inner.engine
    }

    /// The metrics.
    pub fn metrics(&self) -> &RegionMetrics {
        &self.inner.metrics
    }

    /// The strategy a registration of `path` with `access` gets, and why (probed once per
    /// file system and access, then cached). Blocking.
    pub fn decision(
        &self,
        path: impl AsRef<Path>,
        access: Access,
    ) -> Result<Decision, RegionError> {
        let path = path.as_ref();
        let md = metadata(path)?;
        let pd = self.inner.pd()?;
        Ok(self.inner.decide(&pd, path, md.dev(), access, false))
    }

    /// Registers `len` bytes at `offset` of the file at `path` for peers to access as
    /// `access`. Takes (or shares) the file's lease, picks the strategy by probe, maps and
    /// registers. Blocking (system calls and verbs): from async code use
    /// [`Manager::register_async`].
    ///
    /// If the lease breaks while the region is being built, the region is either handed
    /// to the revocation under way (returned in the `Revoking` state, then revoked and
    /// rebuilt like any other) or torn down without a commit and the call fails with
    /// [`RegionError::Busy`]: no memory region outlives its lease.
    pub fn register(
        &self,
        path: impl AsRef<Path>,
        offset: u64,
        len: usize,
        access: Access,
    ) -> Result<Region, RegionError> {
        self.register_aligned(path, offset, len, access, 1)
    }

    /// [`Manager::register`] for peers that promise to transfer only `alignment`-aligned
    /// offsets and lengths (a power of two): when that is a multiple of the page size and
    /// so is `offset`, the region may use the probe's [`Decision::aligned`] strategy (on
    /// rxe with ODP on 6.18: zero-copy ODP instead of staging). [`Region::alignment`] says
    /// what the region needs; the peers must keep their promise (the layout client
    /// enforces it).
    pub fn register_aligned(
        &self,
        path: impl AsRef<Path>,
        offset: u64,
        len: usize,
        access: Access,
        alignment: usize,
    ) -> Result<Region, RegionError> {
        let path = path.as_ref();
        let started = std::time::Instant::now();
        let r = self.register_inner(path, offset, len, access, alignment);
        if r.is_ok() {
            self.inner.metrics.registration_seconds.observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = &r {
            RegionMetrics::count(
                &self.inner.metrics.registration_failures,
                "errno",
                &format!("{:?}", e.errno()),
            );
        }
        r
    }

    /// [`Manager::register`] on tokio's blocking pool, so a storage server's async
    /// workers never block on system calls or verbs.
    pub async fn register_async(
        &self,
        path: impl Into<PathBuf>,
        offset: u64,
        len: usize,
        access: Access,
    ) -> Result<Region, RegionError> {
        let mgr = self.clone();
        let path = path.into();
        match tokio::task::spawn_blocking(move || mgr.register(&path, offset, len, access)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn register_inner(
        &self,
        path: &Path,
        offset: u64,
        len: usize,
        access: Access,
        alignment: usize,
    ) -> Result<Region, RegionError> {
        let inner = &self.inner;
        let pd = inner.pd()?;
        if len == 0 {
            return Err(RegionError::ZeroLength { path: path.to_path_buf(), offset });
        }
        let md = metadata(path)?;
        if !md.is_file() {
            return Err(RegionError::NotRegularFile {
                path: path.to_path_buf(),
                errno: if md.is_dir() { Errno::EISDIR } else { Errno::EINVAL },
            });
        }
        let beyond = |file_len: u64| {
            let end = offset.checked_add(len as u64);
            (end.is_none_or(|end| end > file_len)).then(|| RegionError::RangeBeyondEof {
                path: path.to_path_buf(),
                offset,
                len,
                file_len,
            })
        };
        if let Some(e) = beyond(md.len()) {
            return Err(e);
        }
        let decision =
            inner.decide(&pd, path, md.dev(), access, false).for_region(alignment, offset);
        let locked = if decision.strategy == Strategy::Odp {
            None
        } else {
            let page = page_size() as u64;
            let needed = (page_offset(offset) as u64 + len as u64).div_ceil(page) * page;
            let reserved = inner.budget.reserve(needed).map_err(|(used, budget)| {
                RegionError::MemlockBudget {
                    path: path.to_path_buf(),
                    offset,
                    len,
                    needed,
                    used,
                    budget,
                }
            })?;
            Some(reserved)
        };
        let lease = inner.engine.acquire(path, access.lease_kind()).map_err(|e| match e {
            LeaseError::NotRegularFile { path, errno } => {
                RegionError::NotRegularFile { path, errno }
            }
            other => RegionError::Lease(other),
        })?;
        let breaks = lease.breaks();
        if lease.state() != LeaseState::Held {
            return Err(RegionError::Busy { path: path.to_path_buf() });
        }
        let file_len =
            strategy::file_len(lease.fd()).map_err(|e| build_error(e, path, offset, len))?;
        if let Some(e) = beyond(file_len) {
            return Err(e);
        }
        let built = strategy::build(decision.strategy, &pd, lease.fd(), offset, len, access, None)
            .map_err(|e| build_error(e, path, offset, len))?;
        let info = RegionInfo {
            lkey: built.mr.lkey(),
            addr: built.mr.addr(),
            len,
            generation: 1,
            decision,
            state: RegionState::Registered,
        };
        let strategy = built.strategy.label();
        let shared = Arc::new(RegionShared {
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            offset,
            requested_len: len,
            alignment,
            access,
            dev: md.dev(),
            lease,
            word: GuardWord::new(),
            slot: Mutex::new(Slot {
                live: Some(built),
                scratch: None,
                info,
                forgotten: false,
                reserved: None,
                suspended: false,
            }),
            grants: Mutex::new(Vec::new()),
            _locked: locked,
        });
        inner.metrics.region_state(strategy, None, Some("registered"));
        inner.metrics.bytes(strategy, len as i64);
        inner.files.lock().entry(shared.file()).or_default().push(Arc::downgrade(&shared));
        let region = Region { shared, mgr: inner.clone() };
        // A break delivered since the lease was taken may have found the file without
        // this region (and released the lease while it was still being built).
        if region.shared.lease.breaks() != breaks || region.shared.lease.state() != LeaseState::Held
        {
            inner.metrics.registration_breaks.inc();
            if region.shared.word.start_revoke() {
                // No revocation owns it: tear it down unseen. No commit: no peer had a key,
                // and staging bytes read during the break may be stale.
                let mut slot = region.shared.slot.lock();
                region.shared.tear_down(inner, &mut slot, TearDown::Discard);
                drop(slot);
                return Err(RegionError::Busy { path: path.to_path_buf() });
            }
        }
        Ok(region)
    }
}

impl ManagerInner {
    /// Sends `ev` to the subscribers, then calls the hooks ([`Manager::on_event`]); a
    /// returned grant also wakes the revocation waiting for it.
    pub(crate) fn publish(&self, ev: RegionEvent) {
        let returned = matches!(ev.kind, super::event::RegionEventKind::Returned { .. });
        let hooks = self.hooks.read();
        if hooks.is_empty() {
            let _ = self.events.send(ev);
        } else {
            let _ = self.events.send(ev.clone());
            for (_, hook) in hooks.iter() {
                hook(&ev);
            }
        }
        drop(hooks);
        if returned {
            self.returns.notify_waiters();
        }
    }

    /// The cached decision for `(dev, access)`, probing in `path`'s directory if there is
    /// none (or `fresh`).
    pub(crate) fn decide(
        &self,
        pd: &Arc<ProtectionDomain>,
        path: &Path,
        dev: u64,
        access: Access,
        fresh: bool,
    ) -> Decision {
        if !fresh && let Some(d) = self.decisions.lock().get(&(dev, access)) {
            return d.clone();
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let env = ProbeEnv { pd, odp: self.odp, port: self.cfg.port, in_place: self.cfg.in_place };
        let d = probe(&env, &dir, access);
        tracing::info!(dir = %dir.display(), ?access, strategy = d.strategy.label(), reason = %d.reason, "strategy probed");
        self.decisions.lock().insert((dev, access), d.clone());
        d
    }

    /// The protection domain, or `ENODEV` while the device is gone.
    pub(crate) fn pd(&self) -> Result<Arc<ProtectionDomain>, RegionError> {
        self.pd.read().clone().ok_or_else(|| RegionError::Device {
            device: self.cfg.device.clone(),
            source: crate::verbs::VerbsError::new(
                "ibv_get_device_list",
                Errno::ENODEV,
                if self.resumes {
                    "the device was removed: the regions are suspended until it comes back"
                } else {
                    "the device was removed: drop this manager and make a new one"
                },
            ),
        })
    }

    /// Whether a revocation of `file` is under way (one of its regions is revoking).
    pub(crate) fn revoking(&self, file: FileId) -> bool {
        self.regions_of(file).iter().any(|r| r.slot.lock().info.state == RegionState::Revoking)
    }

    /// The files that have regions.
    pub(crate) fn file_ids(&self) -> Vec<FileId> {
        self.files.lock().keys().copied().collect()
    }

    /// The live regions of `file`.
    pub(crate) fn regions_of(&self, file: FileId) -> Vec<Arc<RegionShared>> {
        let mut files = self.files.lock();
        let Some(list) = files.get_mut(&file) else {
            return Vec::new();
        };
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// The write-back lock of `file`'s stripe (see `writebacks`).
    pub(crate) fn writeback_lock(&self, file: FileId) -> parking_lot::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        file.hash(&mut h);
        self.writebacks[h.finish() as usize % self.writebacks.len()].lock()
    }

    /// The lock serialising revocation tails and rebuilds of `file`.
    pub(crate) fn file_lock(&self, file: FileId) -> Arc<tokio::sync::Mutex<()>> {
        self.file_ops.lock().entry(file).or_default().clone()
    }

    /// A region handle is gone: commit (writable), deregister it and drop it from the
    /// table.
    pub(crate) fn forget(&self, shared: &Arc<RegionShared>) {
        {
            let mut slot = shared.slot.lock();
            // Unregistering fences the grants left and commits what peers wrote (best
            // effort), like a revocation.
            shared.fence_remaining(self);
            shared.tear_down(self, &mut slot, TearDown::Final);
            slot.scratch = None;
            slot.reserved = None;
            slot.forgotten = true;
            self.metrics.region_state(
                slot.info.decision.strategy.label(),
                Some(slot.info.state.label()),
                None,
            );
        }
        let file = shared.file();
        let mut files = self.files.lock();
        if let Some(list) = files.get_mut(&file) {
            list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(shared)));
            if list.is_empty() {
                files.remove(&file);
                self.file_ops.lock().remove(&file);
            }
        }
    }
}

/// Whether `device` is in the device list now (`None`: the listing failed, which is no
/// evidence either way).
async fn device_present(device: &str) -> Option<bool> {
    let device = device.to_string();
    tokio::task::spawn_blocking(move || {
        crate::verbs::device_names().ok().map(|names| names.contains(&device))
    })
    .await
    .ok()
    .flatten()
}

/// Checks every `device_poll` that the manager's device still exists. When it is gone:
/// suspends every region (`resume_on_device_return`, on a device the manager opened) or
/// loses them all, and lets go of the protection domain (and so, once the application
/// dropped its objects, of the device). Suspended regions are rebuilt when a device of
/// the same name is back; otherwise the watch ends.
async fn watch_device(weak: Weak<ManagerInner>) {
    loop {
        let poll = match weak.upgrade() {
            Some(inner) => inner.cfg.device_poll,
            None => return,
        };
        tokio::time::sleep(poll).await;
        let Some(inner) = weak.upgrade() else { return };
        let device = inner.cfg.device.clone();
        let lost = inner.device_lost.load(Ordering::Acquire);
        match (lost, device_present(&device).await) {
            (false, Some(false)) => {
                let resume = inner.resumes;
                inner.device_lost.store(true, Ordering::Release);
                let m = inner.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if resume {
                        tracing::error!(%device, "the RDMA device was removed: suspending every region until it is back");
                        super::flow::suspend_all(&m, &device);
                    } else {
                        tracing::error!(%device, "the RDMA device was removed: losing every region");
                        super::flow::lose_all(&m, LostReason::DeviceGone { device });
                    }
                    *m.pd.write() = None;
                })
                .await;
                if !resume {
                    return;
                }
            }
            (true, Some(true)) => {
                let m = inner.clone();
                let _ = tokio::task::spawn_blocking(move || m.resume()).await;
            }
            _ => {}
        }
    }
}

impl ManagerInner {
    /// The device is back: a new context and protection domain, then every suspended
    /// region rebuilt (`Rebuilt`: same addresses, new keys). On failure, tried again at
    /// the next poll.
    fn resume(self: &Arc<Self>) {
        let device = &self.cfg.device;
        let pd = Context::open(device).and_then(|ctx| ProtectionDomain::new(&Arc::new(ctx)));
        match pd {
            Ok(pd) => *self.pd.write() = Some(pd),
            Err(e) => {
                tracing::warn!(%device, error = %e, "the device is back but cannot be opened yet");
                return;
            }
        }
        self.device_lost.store(false, Ordering::Release);
        tracing::info!(%device, "the RDMA device is back: rebuilding the suspended regions");
        for file in self.file_ids() {
            super::flow::rebuild_file(self, file);
        }
    }
}
