//! The manager's memlock budget: bytes of locked (pinned or staging) memory its regions
//! may hold at once. A registration that would go beyond it is refused before anything
//! is leased, mapped or registered, instead of failing half-way in `ibv_reg_mr` with
//! `ENOMEM` against `RLIMIT_MEMLOCK`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The budget and what is reserved against it.
#[derive(Debug)]
pub(crate) struct MemlockBudget {
    limit: Option<u64>,
    used: AtomicU64,
}

/// Bytes reserved for one region, given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemlockBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl MemlockBudget {
    /// A budget of `limit` bytes (`None`: only the kernel's `RLIMIT_MEMLOCK` applies).
    pub(crate) fn new(limit: Option<u64>) -> Arc<MemlockBudget> {
        Arc::new(MemlockBudget { limit, used: AtomicU64::new(0) })
    }

    /// Reserves `bytes`; on refusal returns `(used, limit)`.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, (u64, u64)> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if let Some(limit) = self.limit
                && used.checked_add(bytes).is_none_or(|total| total > limit)
            {
                return Err((used, limit));
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Reservation { budget: self.clone(), bytes }),
                Err(now) => used = now,
            }
        }
    }

    /// Bytes reserved now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_beyond_the_limit_and_given_back_on_drop() {
        let b = MemlockBudget::new(Some(100));
        let a = b.reserve(60).unwrap();
        assert_eq!(b.reserve(41).unwrap_err(), (60, 100));
        let c = b.reserve(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(b.reserve(u64::MAX).is_err(), "no overflow");
        drop(c);
        assert_eq!(b.used(), 0);
        let unlimited = MemlockBudget::new(None);
        let _big = unlimited.reserve(u64::MAX / 2).unwrap();
    }
}
