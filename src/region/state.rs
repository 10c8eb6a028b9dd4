//! The region state machine:
//! `Registered → Revoking → Revoked → Rebuilding → Registered`, and `→ Lost` from
//! `Revoked` or `Rebuilding` (file shrunk below the range, deleted, rebuild failed).

/// Where a region is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionState {
    /// Registered: guards are granted, peers may use the keys.
    Registered,
    /// The lease broke: new guards are refused; waiting for held guards.
    Revoking,
    /// Deregistered, lease released: waiting for the lease to come back.
    Revoked,
    /// The lease is back: re-mapping and re-registering.
    Rebuilding,
    /// Gone for good.
    Lost,
}

impl RegionState {
    /// A short label (metrics).
    pub fn label(self) -> &'static str {
        match self {
            RegionState::Registered => "registered",
            RegionState::Revoking => "revoking",
            RegionState::Revoked => "revoked",
            RegionState::Rebuilding => "rebuilding",
            RegionState::Lost => "lost",
        }
    }
}
