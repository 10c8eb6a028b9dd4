//! A registered region: the handle the server holds, and the state it shares with the
//! manager's background tasks.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;

use super::RegionError;
use super::config::Access;
use super::event::{RegionEvent, RegionEventKind, RegionEvents};
use super::guard::{Guard, GuardError, GuardWord};
use super::manager::ManagerInner;
use super::state::RegionState;
use super::strategy::{self, BuildError, Built, Decision, Strategy};
use crate::grant::{Binding, Grant, GrantCell, GrantShared, GrantState};
use crate::lease::{FileId, Lease};
use crate::sys::{AddressReservation, Mapping};
use crate::verbs::{MemoryRegion, MemoryWindow, MwType, QpState, QueuePair};

/// What a tear-down is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TearDown {
    /// A revocation: commit, and keep an ODP region's addresses for its rebuild.
    Revoke,
    /// The region is gone for good (dropped or lost): commit.
    Final,
    /// Never seen by a peer (a registration a break overtook): no commit.
    Discard,
}

/// A snapshot of a region's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// Local key (0 while not registered). The region's memory region has no remote
    /// rights: peers get keys from [`Region::grant`].
    pub lkey: u32,
    /// The region's address for local work requests and for peers' grants: constant for
    /// the region's life (rebuilds register at the same address).
    pub addr: u64,
    /// Bytes registered (shorter than asked after the file shrank).
    pub len: usize,
    /// Starts at 1; bumped by every rebuild.
    pub generation: u64,
    /// The strategy and why it was chosen.
    pub decision: Decision,
    /// The state.
    pub state: RegionState,
}

pub(crate) struct Slot {
    pub(crate) live: Option<Built>,
    /// Where retargeted grants point until their peers return them (retarget mode).
    pub(crate) scratch: Option<MemoryRegion>,
    pub(crate) info: RegionInfo,
    /// The handle was dropped: a background task still holding the region must not
    /// count it in the metrics any more.
    pub(crate) forgotten: bool,
    /// The addresses of a revoked ODP region, held until its rebuild maps there again.
    pub(crate) reserved: Option<AddressReservation>,
    /// Revoked because the device went away (`RegionEventKind::Suspended`): rebuilt when
    /// it is back, not on the lease's return alone.
    pub(crate) suspended: bool,
}

/// What a region shares with the manager.
pub(crate) struct RegionShared {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    pub(crate) offset: u64,
    pub(crate) requested_len: usize,
    /// The alignment its peers promised (1: none).
    pub(crate) alignment: usize,
    pub(crate) access: Access,
    pub(crate) dev: u64,
    pub(crate) lease: Lease,
    pub(crate) word: GuardWord,
    pub(crate) slot: Mutex<Slot>,
    /// The region's grants (their handles own them).
    pub(crate) grants: Mutex<Vec<Weak<GrantShared>>>,
    /// Its share of the manager's memlock budget, given back when it is gone.
    pub(crate) _locked: Option<super::budget::Reservation>,
}

impl RegionShared {
    pub(crate) fn file(&self) -> FileId {
        self.lease.file_id()
    }

    /// Changes the state (and the metrics).
    pub(crate) fn set_state(&self, mgr: &ManagerInner, slot: &mut Slot, to: RegionState) {
        let from = slot.info.state;
        slot.info.state = to;
        if slot.forgotten {
            return;
        }
        mgr.metrics.region_state(
            slot.info.decision.strategy.label(),
            Some(from.label()),
            Some(to.label()),
        );
    }

    /// The live grants.
    pub(crate) fn grants(&self) -> Vec<Arc<GrantShared>> {
        let mut list = self.grants.lock();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// Drops the scratch memory region once no grant is retargeted to it any more (its
    /// grants were returned, dropped, fenced or lost).
    pub(crate) fn drop_unused_scratch(&self, slot: &mut Slot) {
        if slot.scratch.is_some()
            && self.grants().iter().all(|g| g.cell.lock().bound != Binding::Scratch)
        {
            slot.scratch = None;
        }
    }

    /// Fences every grant that still reaches the region's memory region (so it can be
    /// deregistered), leaving the others as they are.
    pub(crate) fn fence_remaining(&self, mgr: &ManagerInner) {
        for g in self.grants() {
            let mut c = g.cell.lock();
            if c.bound == Binding::Region || c.state.reaches_file() {
                g.fence(&mut c);
                mgr.grant_metrics.fenced.inc();
                drop(c);
                self.emit(mgr, RegionEventKind::Fenced { grant: g.id });
            }
        }
    }

    /// Commits (if writable and `how` says so), deregisters and unmaps the live
    /// registration, if any. Grants must not reach it any more
    /// ([`RegionShared::fence_remaining`]). Returns why the commit failed, if it did.
    pub(crate) fn tear_down(
        &self,
        mgr: &ManagerInner,
        slot: &mut Slot,
        how: TearDown,
    ) -> Option<String> {
        let (built, failed) = self.commit_out(mgr, slot, how);
        if let Some(built) = built {
            self.deregister(mgr, slot, built, how);
        }
        failed
    }

    /// The first half of [`RegionShared::tear_down`]: commits (if writable and `how`
    /// says so) and takes the registration out of the slot. Returns it, to be given to
    /// [`RegionShared::deregister`], and why the commit failed, if it did.
    pub(crate) fn commit_out(
        &self,
        mgr: &ManagerInner,
        slot: &mut Slot,
        how: TearDown,
    ) -> (Option<Built>, Option<String>) {
        let Some(built) = slot.live.take() else { return (None, None) };
        let mut failed = None;
        if how != TearDown::Discard && self.access.is_writable() {
            let len = slot.info.len;
            let _serial = mgr.writeback_lock(self.lease.file_id());
            if let Err(e) = strategy::commit(&built, self.lease.fd(), self.offset, (0, len)) {
                tracing::error!(region = self.id, error = ?e, "commit before release failed");
                mgr.metrics.commit_failures.inc();
                failed = Some(format!("{}", build_error(e, &self.path, self.offset, len)));
            }
        }
        slot.info.lkey = 0;
        (Some(built), failed)
    }

    /// The second half of [`RegionShared::tear_down`]: deregisters and unmaps `built`
    /// (taken out by [`RegionShared::commit_out`]); a revoked ODP region keeps its
    /// addresses reserved for its rebuild.
    pub(crate) fn deregister(
        &self,
        mgr: &ManagerInner,
        slot: &mut Slot,
        built: Built,
        how: TearDown,
    ) {
        mgr.metrics.bytes(built.strategy.label(), -(slot.info.len as i64));
        let Built { mr, mapping, strategy, .. } = built;
        drop(mr);
        // An ODP region is rebuilt at its old addresses (rxe needs IOVA == VA): hold them
        // with a placeholder so no other mapping lands there meanwhile.
        if how == TearDown::Revoke && strategy == Strategy::Odp {
            match Arc::try_unwrap(mapping).map(Mapping::into_reservation) {
                Ok(Ok(held)) => slot.reserved = Some(held),
                Ok(Err(e)) => tracing::warn!(region = self.id, error = %e, "no placeholder"),
                Err(_) => tracing::warn!(region = self.id, "mapping still shared: no placeholder"),
            }
        }
    }

    pub(crate) fn emit(&self, mgr: &ManagerInner, kind: RegionEventKind) {
        self.emit_at(mgr, kind, SystemTime::now());
    }

    pub(crate) fn emit_at(&self, mgr: &ManagerInner, kind: RegionEventKind, at: SystemTime) {
        mgr.publish(RegionEvent { region: self.id, kind, at });
    }
}

/// A file range registered as an RDMA memory region. Dropping it unregisters it; the
/// last region of a file drops the file's lease.
pub struct Region {
    pub(crate) shared: Arc<RegionShared>,
    pub(crate) mgr: Arc<ManagerInner>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.shared.id)
            .field("path", &self.shared.path)
            .field("offset", &self.shared.offset)
            .field("info", &self.info())
            .finish()
    }
}

impl Region {
    /// The region's id (in events).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Takes an I/O guard: hold it while work is posted against the region. Fails fast
    /// while the region is revoking, revoked or lost. Lock-free and allocation-free.
    #[inline]
    pub fn guard(&self) -> Result<Guard<'_>, GuardError> {
        self.shared.word.guard().inspect_err(|e| {
            let i = match e {
                GuardError::Revoking => 0,
                GuardError::Revoked => 1,
                _ => 2,
            };
            self.mgr.refused[i].inc();
        })
    }

    /// Guards held now.
    pub fn guards_held(&self) -> u64 {
        self.shared.word.held()
    }

    /// A snapshot of keys, length, generation, strategy and state.
    pub fn info(&self) -> RegionInfo {
        self.shared.slot.lock().info.clone()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The file the region's lease protects (device and inode of the file that was
    /// opened, whatever its path resolves to now).
    pub fn file_id(&self) -> crate::lease::FileId {
        self.shared.file()
    }

    /// Offset of the region in the file.
    pub fn offset(&self) -> u64 {
        self.shared.offset
    }

    /// The alignment peers' transfers must keep: the page size when the region's strategy
    /// is only correct for page-aligned I/O (see [`Manager::register_aligned`]), else 1.
    pub fn alignment(&self) -> usize {
        let s = self.shared.slot.lock();
        let d = &s.info.decision;
        if d.aligned == Some(d.strategy) { crate::sys::page_size() } else { 1 }
    }

    /// The access peers have.
    pub fn access(&self) -> Access {
        self.shared.access
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.shared.slot.lock().info.decision.strategy
    }

    /// This region's events.
    pub fn events(&self) -> RegionEvents {
        RegionEvents { rx: self.mgr.events.subscribe(), only: Some(self.shared.id), skipped: 0 }
    }

    /// Grants the peer behind `qp` access to the region: binds a type-2 memory window over
    /// the region on `qp` (the server-side queue pair connected to that peer, created in
    /// [`Manager::protection_domain`](super::Manager::protection_domain) and ready to
    /// send) and returns the grant, whose [`Grant::info`] has the address and key to send
    /// the peer. One grant per (region, peer queue pair): a bound type-2 window works only
    /// through the queue pair that bound it. Blocking (one verb and its completion).
    ///
    /// Completions of the bind (and of later invalidations and rebinds) are filemr's own:
    /// they carry [`RESERVED_WR_ID_TAG`](crate::verbs::RESERVED_WR_ID_TAG) and
    /// [`CompletionQueue::poll`](crate::verbs::CompletionQueue::poll) never returns them.
    pub fn grant(&self, qp: &Arc<QueuePair>) -> Result<Grant, RegionError> {
        let s = &self.shared;
        let mgr = &self.mgr;
        let bad = |why: String| RegionError::GrantQp { id: s.id, qp: qp.qp_num(), why };
        let pd = mgr.pd()?;
        if qp.pd().as_raw() != pd.as_raw() {
            return Err(bad("the queue pair is in another protection domain".into()));
        }
        match qp.state() {
            Ok(QpState::ReadyToSend) => {}
            Ok(other) => {
                return Err(bad(format!("the queue pair is {other:?}, not ready to send")));
            }
            Err(e) => return Err(bad(e.to_string())),
        }
        match qp.remote_access() {
            Ok(rights) if rights.contains(s.access.mw_access()) => {}
            Ok(rights) => {
                return Err(bad(format!(
                    "the queue pair lets peers use {rights:?}, the grant needs {:?}",
                    s.access.mw_access()
                )));
            }
            Err(e) => return Err(bad(e.to_string())),
        }
        let verb = |source| RegionError::Grant { id: s.id, qp: qp.qp_num(), source };
        let mw = MemoryWindow::alloc(&pd, MwType::Type2).map_err(verb)?;
        let slot = s.slot.lock();
        let Some(built) = slot.live.as_ref().filter(|_| slot.info.state == RegionState::Registered)
        else {
            return Err(RegionError::Revoked { id: s.id });
        };
        let g = Arc::new(GrantShared {
            id: mgr.next_id.fetch_add(1, Ordering::Relaxed),
            region: s.id,
            addr: slot.info.addr,
            rkey: mw.rkey(),
            access: s.access.mw_access(),
            qp: qp.clone(),
            cell: Mutex::new(GrantCell::new(mw, slot.info.len, slot.info.generation)),
        });
        {
            let mut c = g.cell.lock();
            g.bind(&mut c, &built.mr, Binding::Region).map_err(verb)?;
            c.state = GrantState::Active;
        }
        s.grants.lock().push(Arc::downgrade(&g));
        mgr.grant_metrics.granted.inc();
        Ok(Grant { shared: g, region: s.clone(), mgr: mgr.clone() })
    }

    /// Makes bytes `range` (relative to the region) that peers wrote durable in the file:
    /// staging writes them back (pwrite + fdatasync through the lease's fd); in-place
    /// strategies msync the mapping and fdatasync. A no-op for read-only regions.
    pub fn commit(&self, range: Range<usize>) -> Result<(), RegionError> {
        let s = &self.shared;
        let slot = s.slot.lock();
        let Some(built) = slot.live.as_ref() else {
            return Err(RegionError::Revoked { id: s.id });
        };
        let len = slot.info.len;
        if range.start > range.end || range.end > len {
            return Err(RegionError::OutOfRange {
                id: s.id,
                start: range.start,
                end: range.end,
                len,
            });
        }
        if !s.access.is_writable() || range.is_empty() {
            return Ok(());
        }
        let _serial = self.mgr.writeback_lock(s.lease.file_id());
        strategy::commit(built, s.lease.fd(), s.offset, (range.start, range.end))
            .map_err(|e| build_error(e, &s.path, s.offset, len))
    }

    /// Unregisters the region (same as dropping it).
    pub fn unregister(self) {}
}

impl Drop for Region {
    fn drop(&mut self) {
        self.mgr.forget(&self.shared);
    }
}

/// Maps a build failure to the typed error.
pub(crate) fn build_error(e: BuildError, path: &Path, offset: u64, len: usize) -> RegionError {
    match e {
        BuildError::Map(source) => {
            RegionError::Map { path: path.to_path_buf(), offset, len, source }
        }
        BuildError::Register(source) => super::error::registration_error(
            source,
            path.to_path_buf(),
            offset,
            len,
            super::error::memlock_limit(),
        ),
        BuildError::Io(op, errno) => RegionError::Io { path: path.to_path_buf(), op, errno },
    }
}

/// Result alias of guard-taking.
pub type GuardResult<'a> = Result<Guard<'a>, GuardError>;
