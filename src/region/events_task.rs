//! The background task: turns lease events into revocations, rebuilds and losses.

use std::sync::Weak;

use super::event::{LostReason, RevokeReason};
use super::flow;
use super::manager::ManagerInner;
use crate::lease::{LeaseEvent, LeaseEvents};

pub(crate) async fn run(weak: Weak<ManagerInner>, mut events: LeaseEvents) {
    while let Some(ev) = events.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        match ev {
            LeaseEvent::Broken { file, arrived, deadline, .. } => {
                tokio::spawn(flow::revoke_file(
                    inner,
                    file,
                    RevokeReason::LeaseBroken,
                    arrived,
                    Some(deadline),
                ));
            }
            // The revocation of the break this forced is still running (waiting for
            // peers): it releases. Another one would race the rebuild after that release.
            LeaseEvent::Forced { file, .. } if inner.revoking(file) => {
                tracing::debug!(%file, "forced break: its revocation is under way");
            }
            LeaseEvent::Forced { file, arrived, .. } => {
                tokio::spawn(flow::revoke_file(
                    inner,
                    file,
                    RevokeReason::KernelForced,
                    arrived,
                    None,
                ));
            }
            LeaseEvent::Reacquired { file, .. } => {
                tokio::task::spawn_blocking(move || flow::rebuild_file(&inner, file));
            }
            LeaseEvent::Gone { file, reason, .. } => {
                tokio::task::spawn_blocking(move || {
                    flow::lose_file(&inner, file, LostReason::LeaseGone(reason))
                });
            }
        }
    }
}
