//! The background task: turns lease events into revocations, rebuilds and losses.

use std::sync::Weak;

use super::event::{LostReason, RevokeReason};
use super::manager::ManagerInner;
use super::{rebuild, revoke};
use crate::lease::{LeaseEvent, LeaseEvents};

pub(crate) async fn run(weak: Weak<ManagerInner>, mut events: LeaseEvents) {
    while let Some(ev) = events.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        match ev {
            LeaseEvent::Broken { file, arrived, deadline, .. } => {
                tokio::spawn(revoke::revoke_file(
                    inner,
                    file,
                    RevokeReason::LeaseBroken,
                    arrived,
                    Some(deadline),
                ));
            }
            LeaseEvent::Forced { file, arrived, .. } => {
                tokio::spawn(revoke::revoke_file(
                    inner,
                    file,
                    RevokeReason::KernelForced,
                    arrived,
                    None,
                ));
            }
            LeaseEvent::Reacquired { file, .. } => {
                tokio::task::spawn_blocking(move || rebuild::rebuild_file(&inner, file));
            }
            LeaseEvent::Gone { file, reason, .. } => {
                tokio::task::spawn_blocking(move || {
                    rebuild::lose_file(&inner, file, LostReason::LeaseGone(reason))
                });
            }
        }
    }
}
