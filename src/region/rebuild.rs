//! Rebuilding regions when their lease is back, and losing them for good.

use std::sync::Arc;

use super::event::{LostReason, RegionEventKind};
use super::handle::{RegionShared, Slot};
use super::manager::ManagerInner;
use super::state::RegionState;
use super::strategy::{self, Strategy};
use crate::lease::FileId;
use crate::metrics::RegionMetrics;

/// Re-stat the file through the lease's fd, re-map and re-register every revoked region
/// of `file` with its strategy (re-probing once if that fails), emit `Rebuilt` with the
/// new keys (shorter length if the file shrank) or `Lost`.
pub(crate) fn rebuild_file(mgr: &Arc<ManagerInner>, file: FileId) {
    let lock = mgr.file_lock(file);
    let _serial = lock.blocking_lock();
    for r in mgr.regions_of(file) {
        let mut slot = r.slot.lock();
        if slot.info.state != RegionState::Revoked || slot.forgotten || r.word.is_lost() {
            continue;
        }
        r.set_state(mgr, &mut slot, RegionState::Rebuilding);
        match rebuild_one(mgr, &r, &mut slot) {
            Ok(()) => {}
            Err(reason) => lose(mgr, &r, &mut slot, reason),
        }
    }
}

fn rebuild_one(mgr: &ManagerInner, r: &RegionShared, slot: &mut Slot) -> Result<(), LostReason> {
    let fd = r.lease.fd();
    let file_len =
        strategy::file_len(fd).map_err(|e| LostReason::RebuildFailed(format!("{e:?}")))?;
    if file_len <= r.offset {
        return Err(LostReason::Shrunk { file_len });
    }
    let len = (r.requested_len as u64).min(file_len - r.offset) as usize;
    let old: Strategy = slot.info.decision.strategy;
    let built = match strategy::build(old, &mgr.pd, fd, r.offset, len, r.access) {
        Ok(b) => b,
        Err(first) => {
            tracing::warn!(region = r.id, error = ?first, "rebuild failed; probing again");
            let d = mgr.decide(&r.path, r.dev, r.access, true);
            let b = strategy::build(d.strategy, &mgr.pd, fd, r.offset, len, r.access)
                .map_err(|e| LostReason::RebuildFailed(format!("{e:?}")))?;
            slot.info.decision = d;
            b
        }
    };
    let info = &mut slot.info;
    info.lkey = built.mr.lkey();
    info.rkey = built.mr.rkey();
    info.addr = built.mr.addr();
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
    r.word.reopen();
    let info = &slot.info;
    r.emit(
        mgr,
        RegionEventKind::Rebuilt {
            lkey: info.lkey,
            rkey: info.rkey,
            addr: info.addr,
            len: info.len,
            generation: info.generation,
        },
    );
    Ok(())
}

fn lose(mgr: &ManagerInner, r: &RegionShared, slot: &mut Slot, reason: LostReason) {
    r.word.start_revoke();
    r.tear_down(mgr, slot);
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
