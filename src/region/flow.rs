//! The break flow, top to bottom: what happens to a file's regions and grants when its
//! lease breaks, and when the lease comes back. One function per event of the file's
//! lease; each runs its steps in order, serialised per file.
//!
//! Lease broken ([`revoke_file`]):
//! 1. **quiesce**: every region of the file refuses new guards (`Revoking`);
//! 2. **recall**: every grant still reaching the file is recalled (`Recall`): the peer
//!    finishes its outstanding work, the server commits it, the peer returns
//!    ([`Grant::returned`](crate::grant::Grant::returned) invalidates its window);
//! 3. **wait** until guards are dropped and recalled grants returned, up to the break's
//!    deadline minus the safety margin (a kernel-forced break does not wait);
//! 4. **fence or retarget** every grant not returned: no peer reaches the memory after
//!    this step, so nothing a peer writes can land after the commit;
//! 5. **commit** (staging write-back, or msync) from memory no peer can reach;
//! 6. **deregister and unmap**: right after the release (7) when nothing can reach the
//!    registration (no guard held, windows fenced or on scratch), so the breaker does
//!    not wait for it; before the release if a guard was abandoned at the deadline;
//! 7. **release** the lease, and report `Revoked` (a failed commit loses the region).
//!
//! An idle file with few, small regions (nothing to wait for) is revoked on the lease
//! engine's break thread, where the break arrives: no hop between the signal and the
//! release.
//!
//! Lease back ([`rebuild_file`]): 8. **rebuild** each revoked region at its old addresses
//! (`Rebuilt`) and **rebind** returned grants with their old keys (`Available`);
//! retargeted grants stay on scratch until their peers return them (late), and are
//! rebound then ([`Grant::returned`](crate::grant::Grant::returned)). Lease gone
//! ([`lose_file`]): every region is `Lost`. Device gone: every region is lost
//! ([`lose_all`]) or suspended until it is back ([`suspend_all`], then [`rebuild_file`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::event::{LostReason, RegionEventKind, RevokeReason};
use super::handle::{RegionShared, Slot, TearDown};
use super::manager::ManagerInner;
use super::state::RegionState;
use super::strategy::{self, Strategy};
use crate::grant::{Binding, GrantState, scratch};
use crate::lease::{FileId, LeaseState};
use crate::metrics::RegionMetrics;
use crate::region::RevocationMode;

/// How often the revoker looks at guards and grants while waiting.
const POLL: Duration = Duration::from_millis(1);

/// Steps 1 to 7 for the regions of `file` (see the module documentation). `deadline` is
/// the kernel's break deadline; `None` when the kernel already broke the lease. Called
/// where the break is delivered (the lease engine's break thread, or a runtime worker
/// for a forced break): step 1 runs there. A file with nothing to wait for (no guard
/// held, no grant reaching it), few and small regions ([`INLINE_REGIONS`],
/// [`INLINE_BYTES`]) and no rebuild under way is finished there too, on the break
/// thread, which releases the lease with no hop through the runtime; otherwise step 2
/// runs there and the wait and steps 4 to 7 go to the runtime.
pub(crate) fn revoke_file(
    mgr: Arc<ManagerInner>,
    rt: &Handle,
    file: FileId,
    reason: RevokeReason,
    arrived: Instant,
    deadline: Option<Instant>,
) {
    // 1. Quiesce.
    let mut owned = Vec::new();
    for r in mgr.regions_of(file) {
        if r.word.start_revoke() {
            r.set_state(&mgr, &mut r.slot.lock(), RegionState::Revoking);
            owned.push(r);
        }
    }
    // Idle (nothing to recall or wait for) and small: finish here. Its `Revoking` events
    // go out just before `Revoked`, after the release: waking their subscribers is not
    // the breaker's wait. A forced break arrives on a runtime worker, which must not run
    // device and file work.
    if reason == RevokeReason::LeaseBroken && small(&owned) && drained(&owned) {
        let lock = mgr.file_lock(file);
        if let Ok(_serial) = lock.try_lock() {
            finish_revocation(&mgr, file, &owned, reason, arrived, false, true);
            return;
        }
    }
    for r in &owned {
        r.emit(&mgr, RegionEventKind::Revoking);
    }
    // 2. Recall.
    let limit = deadline.map(|d| d.checked_sub(mgr.cfg.safety_margin).unwrap_or(d));
    if let Some(limit) = limit {
        for r in &owned {
            for g in r.grants() {
                let mut c = g.cell.lock();
                if c.state == GrantState::Active {
                    c.state = GrantState::Recalled;
                    c.recalled_at = Some(Instant::now());
                    drop(c);
                    mgr.grant_metrics.recalled.inc();
                    r.emit(&mgr, RegionEventKind::Recall { grant: g.id, deadline: limit });
                }
            }
        }
    }
    rt.spawn(wait_and_finish(mgr, file, owned, reason, arrived, limit));
}

/// At most this many regions, of at most this many bytes in all, are revoked on the
/// break thread: breaks that come together are taken one after the other there, so a
/// larger tear-down (commits, deregistrations) goes to the blocking pool, where the
/// files' revocations run side by side and none holds up another's break. (Fifty files
/// of ten regions each, revoked one after the other on the break thread, outlasted the
/// 45 s break time in a loaded guest.)
const INLINE_REGIONS: usize = 4;
const INLINE_BYTES: usize = 1 << 20;

fn small(owned: &[Arc<RegionShared>]) -> bool {
    owned.len() <= INLINE_REGIONS
        && owned.iter().map(|r| r.requested_len).sum::<usize>() <= INLINE_BYTES
}

/// Whether nothing holds the quiesced regions any more: no guard, no grant reaching the
/// file.
fn drained(owned: &[Arc<RegionShared>]) -> bool {
    owned.iter().all(|r| {
        r.word.held() == 0 && r.grants().iter().all(|g| !g.cell.lock().state.reaches_file())
    })
}

/// Step 3, then steps 4 to 7 on a blocking thread.
async fn wait_and_finish(
    mgr: Arc<ManagerInner>,
    file: FileId,
    owned: Vec<Arc<RegionShared>>,
    reason: RevokeReason,
    arrived: Instant,
    limit: Option<Instant>,
) {
    // 3. Wait for guards and returns: a return wakes the wait at once (guards are
    // looked at every POLL: their release is the hot path and signals nothing).
    let mut timed_out = false;
    loop {
        let returned = mgr.returns.notified();
        tokio::pin!(returned);
        returned.as_mut().enable();
        if drained(&owned) {
            break;
        }
        if limit.is_none_or(|l| Instant::now() >= l) {
            timed_out = true;
            break;
        }
        tokio::select! {
            () = returned => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
    // 4-7 touch the device and the file: on a blocking thread, serialised with rebuilds.
    let lock = mgr.file_lock(file);
    let _serial = lock.lock().await;
    let m = mgr.clone();
    let done = tokio::task::spawn_blocking(move || {
        finish_revocation(&m, file, &owned, reason, arrived, timed_out, false)
    })
    .await;
    if let Err(e) = done {
        tracing::error!(%file, error = %e, "revocation task failed");
    }
}

/// Steps 4 to 7; `announce`: the regions' `Revoking` events are still to be sent
/// (an idle file's, sent after the release).
fn finish_revocation(
    mgr: &Arc<ManagerInner>,
    file: FileId,
    owned: &[Arc<RegionShared>],
    reason: RevokeReason,
    arrived: Instant,
    timed_out: bool,
    announce: bool,
) {
    let mut commit_errors = Vec::with_capacity(owned.len());
    let mut unreachable = Vec::with_capacity(owned.len());
    let mode = *mgr.revocation.lock();
    for r in owned {
        let mut slot = r.slot.lock();
        // 4. Fence or retarget what the peers did not return.
        if mode == RevocationMode::Retarget {
            retarget_remaining(mgr, r, &mut slot);
        }
        r.fence_remaining(mgr);
        // 5. Commit.
        let (built, commit_error) = r.commit_out(mgr, &mut slot, TearDown::Revoke);
        commit_errors.push(commit_error);
        let abandoned = r.word.finish_revoke();
        // 6. Deregister and unmap: now if a local user may still post against the
        // region (a guard abandoned at the deadline); otherwise after the release, since
        // nothing can reach the registration any more (guards refused and none held,
        // windows fenced or on scratch) and the breaker need not wait for it.
        if let Some(built) = built {
            if abandoned > 0 {
                tracing::warn!(region = r.id, abandoned, "revoked with guards still held");
                r.deregister(mgr, &mut slot, built, TearDown::Revoke);
            } else {
                unreachable.push((r, built));
            }
        }
        r.set_state(mgr, &mut slot, RegionState::Revoked);
    }
    // 7. Release. After a kernel-forced break the engine still needs the release to
    // start taking the lease back (a second call reports NoBreakPending).
    let torn_down = std::time::SystemTime::now();
    let mut kernel_forced = reason == RevokeReason::KernelForced;
    let since_break = match mgr.engine.release(file) {
        Ok(report) => {
            kernel_forced |= report.forced;
            report.since_break
        }
        Err(e) => {
            tracing::debug!(%file, error = %e, "lease release after revocation");
            arrived.elapsed()
        }
    };
    for (r, built) in unreachable {
        r.deregister(mgr, &mut r.slot.lock(), built, TearDown::Revoke);
    }
    let forced = timed_out || kernel_forced;
    if !owned.is_empty() {
        mgr.metrics.revocation_seconds.observe(since_break.as_secs_f64());
    }
    for (r, commit_error) in owned.iter().zip(commit_errors) {
        mgr.metrics
            .revocations
            .get_or_create(&vec![
                ("reason", reason.label().to_string()),
                ("forced", forced.to_string()),
            ])
            .inc();
        if announce {
            r.emit(mgr, RegionEventKind::Revoking);
        }
        let kind = RegionEventKind::Revoked {
            reason,
            forced,
            since_break,
            commit_error: commit_error.clone(),
        };
        r.emit_at(mgr, kind, torn_down);
        if let Some(why) = commit_error {
            lose(mgr, r, &mut r.slot.lock(), LostReason::CommitFailed(why));
        }
    }
}

/// Step 4, retarget mode: every grant still reaching the file is rebound, same key and
/// addresses, to the region's scratch memory region (built on first use).
fn retarget_remaining(mgr: &ManagerInner, r: &RegionShared, slot: &mut Slot) {
    let grants: Vec<_> =
        r.grants().into_iter().filter(|g| g.cell.lock().state.reaches_file()).collect();
    if grants.is_empty() {
        return;
    }
    if slot.scratch.is_none() {
        let (iova, len) = (slot.info.addr, slot.info.len);
        let built = mgr.pd().map_err(|e| e.to_string()).and_then(|pd| {
            scratch::build(&pd, iova, len, mgr.cfg.scratch_chunk).map_err(|e| e.to_string())
        });
        match built {
            Ok(mr) => {
                RegionMetrics::count(&mgr.grant_metrics.scratch, "backing", "repeated");
                slot.scratch = Some(mr);
            }
            Err(e) => {
                tracing::warn!(region = r.id, error = %e, "no scratch memory: fencing instead");
                return;
            }
        }
    }
    let Some(scratch) = slot.scratch.as_ref() else { return };
    for g in grants {
        let mut c = g.cell.lock();
        match g.bind(&mut c, scratch, Binding::Scratch) {
            Ok(()) => {
                c.state = GrantState::Retargeted;
                drop(c);
                mgr.grant_metrics.retargeted.inc();
                r.emit(mgr, RegionEventKind::Retargeted { grant: g.id });
            }
            Err(e) => tracing::warn!(grant = g.id, error = %e, "retarget failed: fenced"),
        }
    }
}

/// Step 8: re-stat the file through the lease's fd, re-map and re-register every revoked
/// region of `file` at its old addresses with its strategy (re-probing once if that
/// fails), emit `Rebuilt` (shorter length if the file shrank), then rebind its returned
/// grants with their old keys (`Available`); or lose the region.
pub(crate) fn rebuild_file(mgr: &Arc<ManagerInner>, file: FileId) {
    let lock = mgr.file_lock(file);
    let _serial = lock.blocking_lock();
    for r in mgr.regions_of(file) {
        let mut slot = r.slot.lock();
        if slot.info.state != RegionState::Revoked || slot.forgotten || r.word.is_lost() {
            continue;
        }
        if slot.suspended && mgr.device_lost.load(std::sync::atomic::Ordering::Acquire) {
            continue; // rebuilt when the device is back (`ManagerInner::resume`)
        }
        // Why: a rebuild must never publish a region that the revocation of a break
        // delivered meanwhile did not take (that revocation would release the lease with
        // the region still registered, exposing bytes the breaker then replaces). A
        // revocation's quiesce cannot own a revoked or rebuilding region (`start_revoke`
        // fails on its word, leaving *revoking* set as a mark), and this rebuild may answer
        // a `Reacquired` that is already stale (the lease broke again before it ran). So:
        // forget the marks of breaks already released (their releases ran under this
        // file's lock, which we hold, so their quiesces are done), then rebuild only if
        // the lease is held now, i.e. every break delivered so far is released (a pending
        // one leads to another `Reacquired`, which rebuilds), and reopen only if no
        // revocation marked the word since (`try_reopen`): a break delivered after this
        // check either marks the word before the reopen (the rebuild is discarded, the
        // region stays revoked until that break's release and reacquisition) or finds the
        // word open after it and owns the region like any registered one.
        r.word.clear_revoking_mark();
        if r.lease.state() != LeaseState::Held {
            continue;
        }
        r.set_state(mgr, &mut slot, RegionState::Rebuilding);
        let started = Instant::now();
        match rebuild_one(mgr, &r, &mut slot) {
            Ok(true) => {
                slot.suspended = false;
                rebind_grants(mgr, &r, &mut slot);
                mgr.metrics.rebuild_seconds.observe(started.elapsed().as_secs_f64());
            }
            Ok(false) => {
                tracing::debug!(region = r.id, "lease broke during the rebuild: stays revoked");
                r.set_state(mgr, &mut slot, RegionState::Revoked);
            }
            Err(reason) => lose(mgr, &r, &mut slot, reason),
        }
    }
}

/// Rebuilds `r` and reopens its guard word; `Ok(false)` if a revocation marked the word
/// during the build (see [`rebuild_file`]): the new registration is dropped unseen and
/// the slot is left as it was.
fn rebuild_one(mgr: &ManagerInner, r: &RegionShared, slot: &mut Slot) -> Result<bool, LostReason> {
    let fd = r.lease.fd();
    let file_len =
        strategy::file_len(fd).map_err(|e| LostReason::RebuildFailed(format!("{e:?}")))?;
    if file_len <= r.offset {
        return Err(LostReason::Shrunk { file_len });
    }
    let len = (r.requested_len as u64).min(file_len - r.offset) as usize;
    let old: Strategy = slot.info.decision.strategy;
    let iova = Some(slot.info.addr);
    let pd = mgr.pd().map_err(|e| LostReason::RebuildFailed(e.to_string()))?;
    let held = slot.reserved.take();
    let first = strategy::rebuild(old, &pd, fd, r.offset, len, r.access, iova, held);
    let (built, decision) = match first {
        Ok(b) => (b, None),
        Err(first) => {
            tracing::warn!(region = r.id, error = ?first, "rebuild failed; probing again");
            let general = mgr.decide(&pd, &r.path, r.dev, r.access, true);
            let d = general.clone().for_region(r.alignment, r.offset);
            let failed = |e| LostReason::RebuildFailed(format!("{e:?}"));
            match strategy::build(d.strategy, &pd, fd, r.offset, len, r.access, iova) {
                Ok(b) => (b, Some(d)),
                // The aligned strategy cannot be rebuilt (an ODP region's old addresses
                // are taken): the general one serves aligned peers too.
                Err(e) if d.strategy != general.strategy => {
                    tracing::warn!(region = r.id, error = ?e, "aligned strategy failed; general one");
                    let s = general.strategy;
                    let b = strategy::build(s, &pd, fd, r.offset, len, r.access, iova)
                        .map_err(failed)?;
                    (b, Some(general))
                }
                Err(e) => return Err(failed(e)),
            }
        }
    };
    // Why: publish only if no revocation passed the revoked word during the build (see
    // `rebuild_file`). Dropping `built` deregisters it; nothing could reach it.
    if !r.word.try_reopen() {
        return Ok(false);
    }
    if let Some(d) = decision {
        slot.info.decision = d;
    }
    let info = &mut slot.info;
    info.lkey = built.mr.lkey();
    info.len = len;
    info.generation += 1;
    let label = built.strategy.label();
    // The state gauge is labelled by strategy: move it if the strategy changed.
    if label != old.label() {
        mgr.metrics.region_state(old.label(), Some(RegionState::Rebuilding.label()), None);
        mgr.metrics.region_state(label, None, Some(RegionState::Rebuilding.label()));
    }
    slot.live = Some(built);
    mgr.metrics.bytes(label, len as i64);
    r.set_state(mgr, slot, RegionState::Registered);
    RegionMetrics::count(&mgr.metrics.rebuilds, "strategy", label);
    let info = &slot.info;
    r.emit(
        mgr,
        RegionEventKind::Rebuilt {
            lkey: info.lkey,
            addr: info.addr,
            len: info.len,
            generation: info.generation,
        },
    );
    Ok(true)
}

/// Rebinds returned grants to the rebuilt region. Retargeted ones stay on scratch until
/// their peers return them (see [`GrantState::Retargeted`]): a peer that missed the
/// recall may still be writing bytes meant for the file as it was, and rebinding its key
/// now would let them land in the file as it is.
fn rebind_grants(mgr: &ManagerInner, r: &RegionShared, slot: &mut Slot) {
    let Some(built) = slot.live.as_ref() else { return };
    let (len, generation) = (slot.info.len, slot.info.generation);
    for g in r.grants() {
        let mut c = g.cell.lock();
        if c.state != GrantState::Returned {
            continue;
        }
        c.len = len;
        c.generation = generation;
        match g.bind(&mut c, &built.mr, Binding::Region) {
            Ok(()) => {
                c.state = GrantState::Active;
                drop(c);
                mgr.grant_metrics.rebound.inc();
                r.emit(mgr, RegionEventKind::Available { grant: g.id, generation, len });
            }
            Err(e) => {
                drop(c);
                tracing::warn!(grant = g.id, error = %e, "rebind after rebuild failed: fenced");
                mgr.grant_metrics.fenced.inc();
                r.emit(mgr, RegionEventKind::Fenced { grant: g.id });
            }
        }
    }
    r.drop_unused_scratch(slot);
}

/// The region is gone for good: its grants fail from now on.
fn lose(mgr: &ManagerInner, r: &RegionShared, slot: &mut Slot, reason: LostReason) {
    r.word.start_revoke();
    for g in r.grants() {
        let mut c = g.cell.lock();
        // Freeing the window needs no work request (the device may be going away).
        g.fence(&mut c);
        if c.state != GrantState::Released {
            c.state = GrantState::Lost;
        }
    }
    // Nothing reaches the memory any more: commit what is there (best effort).
    r.tear_down(mgr, slot, TearDown::Final);
    slot.scratch = None;
    slot.reserved = None; // a revoked region's: never rebuilt now
    r.word.finish_revoke();
    r.word.set_lost();
    r.set_state(mgr, slot, RegionState::Lost);
    RegionMetrics::count(&mgr.metrics.lost, "reason", reason.label());
    r.emit(mgr, RegionEventKind::Lost { reason });
}

/// The lease will not come back: every region of `file` is lost.
pub(crate) fn lose_file(mgr: &Arc<ManagerInner>, file: FileId, reason: LostReason) {
    let lock = mgr.file_lock(file);
    let _serial = lock.blocking_lock();
    for r in mgr.regions_of(file) {
        let mut slot = r.slot.lock();
        if slot.info.state != RegionState::Lost && !slot.forgotten {
            lose(mgr, &r, &mut slot, reason.clone());
        }
    }
}

/// The device is gone and the manager keeps its regions: each one's grants are fenced
/// (their windows freed), what peers wrote is committed, its registration torn down (an
/// ODP region's addresses held), and it waits, revoked and suspended, for the device.
/// Leases are kept: the files stay the regions' own meanwhile.
pub(crate) fn suspend_all(mgr: &Arc<ManagerInner>, device: &str) {
    for file in mgr.file_ids() {
        let lock = mgr.file_lock(file);
        let _serial = lock.blocking_lock();
        for r in mgr.regions_of(file) {
            let mut slot = r.slot.lock();
            if slot.forgotten || r.word.is_lost() || slot.info.state == RegionState::Lost {
                continue;
            }
            // A region already revoked (its lease broken) holds no registration: it only
            // waits for the device as well as for its lease.
            let owned = r.word.start_revoke();
            // As when a region is lost: the windows are freed (no work request on a dying
            // device), and `Suspended` tells the grants' holders.
            for g in r.grants() {
                let mut c = g.cell.lock();
                g.fence(&mut c);
            }
            if owned {
                if let Some(why) = r.tear_down(mgr, &mut slot, TearDown::Revoke) {
                    tracing::error!(region = r.id, error = %why, "commit at device loss failed");
                }
                r.word.finish_revoke();
                r.set_state(mgr, &mut slot, RegionState::Revoked);
            }
            slot.scratch = None;
            slot.suspended = true;
            r.emit(mgr, RegionEventKind::Suspended { device: device.to_string() });
        }
    }
}

/// Every region of the manager is lost for `reason` (the device is gone).
pub(crate) fn lose_all(mgr: &Arc<ManagerInner>, reason: LostReason) {
    for file in mgr.file_ids() {
        lose_file(mgr, file, reason.clone());
    }
}
