//! Revocation of every region of a file whose lease broke.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::{RegionEventKind, RevokeReason};
use super::manager::ManagerInner;
use super::state::RegionState;
use crate::lease::FileId;

/// How often the revoker looks at the guard counts while guards are held.
const POLL: Duration = Duration::from_millis(1);

/// Marks the file's regions revoking; waits for their guards until
/// `deadline - safety_margin` (no deadline: the kernel already broke the lease, do not
/// wait); commits writable regions; deregisters and unmaps; releases the lease; emits
/// `Revoked` (forced when guards were still held or the kernel had broken the lease).
pub(crate) async fn revoke_file(
    mgr: Arc<ManagerInner>,
    file: FileId,
    reason: RevokeReason,
    arrived: Instant,
    deadline: Option<Instant>,
) {
    let regions = mgr.regions_of(file);
    let mut owned = Vec::with_capacity(regions.len());
    for r in regions {
        if r.word.start_revoke() {
            r.set_state(&mgr, &mut r.slot.lock(), RegionState::Revoking);
            r.emit(&mgr, RegionEventKind::Revoking);
            owned.push(r);
        }
    }
    let limit = deadline.map(|d| d.checked_sub(mgr.cfg.safety_margin).unwrap_or(d));
    let mut timed_out = deadline.is_none() && owned.iter().any(|r| r.word.held() > 0);
    if let Some(limit) = limit {
        while owned.iter().any(|r| r.word.held() > 0) {
            if Instant::now() >= limit {
                timed_out = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let lock = mgr.file_lock(file);
    let _serial = lock.lock().await;
    for r in &owned {
        let mut slot = r.slot.lock();
        r.tear_down(&mgr, &mut slot);
        let abandoned = r.word.finish_revoke();
        if abandoned > 0 {
            tracing::warn!(region = r.id, abandoned, "revoked with guards still held");
        }
        r.set_state(&mgr, &mut slot, RegionState::Revoked);
    }
    let torn_down = std::time::SystemTime::now();
    let mut kernel_forced = reason == RevokeReason::KernelForced;
    // Release in both cases: after a kernel-forced break the engine still needs the
    // release to start taking the lease back (a second call reports NoBreakPending).
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
    let forced = timed_out || kernel_forced;
    if !owned.is_empty() {
        mgr.metrics.revocation_seconds.observe(since_break.as_secs_f64());
    }
    for r in &owned {
        mgr.metrics
            .revocations
            .get_or_create(&vec![
                ("reason", reason.label().to_string()),
                ("forced", forced.to_string()),
            ])
            .inc();
        r.emit_at(&mgr, RegionEventKind::Revoked { reason, forced, since_break }, torn_down);
    }
}
