//! The manager's lease-event handler: turns lease events into revocations, rebuilds and
//! losses. It runs where the engine produces the event (`LeaseEngine::on_event`): a
//! break on the engine's break thread, which quiesces the file's regions at once and, if
//! they are idle, finishes the revocation there too (see `flow::revoke_file`).

use std::sync::Weak;

use tokio::runtime::Handle;

use super::event::{LostReason, RevokeReason};
use super::flow;
use super::manager::ManagerInner;
use crate::lease::LeaseEvent;

pub(crate) fn on_lease_event(weak: &Weak<ManagerInner>, rt: &Handle, ev: &LeaseEvent) {
    let Some(inner) = weak.upgrade() else { return };
    match *ev {
        LeaseEvent::Broken { file, arrived, deadline, .. } => {
            flow::revoke_file(inner, rt, file, RevokeReason::LeaseBroken, arrived, Some(deadline));
        }
        // The revocation of the break this forced is still running (waiting for
        // peers): it releases. Another one would race the rebuild after that release.
        LeaseEvent::Forced { file, .. } if inner.revoking(file) => {
            tracing::debug!(%file, "forced break: its revocation is under way");
        }
        LeaseEvent::Forced { file, arrived, .. } => {
            flow::revoke_file(inner, rt, file, RevokeReason::KernelForced, arrived, None);
        }
        LeaseEvent::Reacquired { file, .. } => {
            rt.spawn_blocking(move || flow::rebuild_file(&inner, file));
        }
        LeaseEvent::Gone { file, reason, .. } => {
            rt.spawn_blocking(move || flow::lose_file(&inner, file, LostReason::LeaseGone(reason)));
        }
    }
}
