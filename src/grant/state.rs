//! The grant state machine.
//!
//! ```text
//!   grant ──> Active ── lease break ──> Recalled ── peer returns ──> Returned ──┐
//!               ^                          │                          ^         │
//!               │                          └─ deadline ─> Fenced      │ (late,  │
//!               │                          └─ deadline ─> Retargeted ─┘ region  │
//!               │                                                       revoked) │
//!               ├──────── region rebuilt: rebound, same key ────────────────────┘
//!               └──────── Retargeted returned late, region rebuilt: rebound at once
//!   any state ── region lost ──> Lost;  handle dropped ──> Released
//! ```

/// Where a grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    /// Bound to the region: the peer reads and writes the file's bytes with its key.
    Active,
    /// The region's lease broke and the peer was asked to finish, commit and return;
    /// the key still works until the peer returns or the deadline passes.
    Recalled,
    /// The peer returned the grant: the window is invalidated until the region is
    /// rebuilt, then rebound with the same key.
    Returned,
    /// The peer did not return in time and the window was invalidated (fence mode), or
    /// a bind failed: its key fails for good; the peer needs a new grant.
    Fenced,
    /// The peer did not return in time and the window now points at scratch memory
    /// (retarget mode): its I/O succeeds but no longer touches the file. It stays there,
    /// rebuilds or not, until the peer returns the grant (late): a peer that missed the
    /// recall may still be writing bytes meant for the old file, so only its return says
    /// the key may reach the file again (rebound, same key, once the region is rebuilt).
    Retargeted,
    /// The region is gone for good; the key fails.
    Lost,
    /// The grant's handle was dropped; the window is freed.
    Released,
}

impl GrantState {
    /// A short label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Recalled => "recalled",
            GrantState::Returned => "returned",
            GrantState::Fenced => "fenced",
            GrantState::Retargeted => "retargeted",
            GrantState::Lost => "lost",
            GrantState::Released => "released",
        }
    }

    /// Whether the peer may still reach the file through the key (the revoker waits
    /// for these to be returned).
    pub fn reaches_file(self) -> bool {
        matches!(self, GrantState::Active | GrantState::Recalled)
    }
}
