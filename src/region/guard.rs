//! The guard word: a lock-free, allocation-free count of held I/O guards plus the
//! revocation flags and a generation, packed into one `AtomicU64`.
//!
//! Layout: bits 0..32 count the guards held, bit 32 is *revoking*, bit 33 *revoked*,
//! bit 34 *lost*, bits 35..64 a generation that advances on every finished revocation.
//! A guard remembers the generation it was taken in; when a forced revocation abandons
//! guards that are still held, it zeroes the count and advances the generation, so those
//! stale guards' later drops do not disturb the count of the next generation.

use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_MASK: u64 = (1 << 32) - 1;
const REVOKING: u64 = 1 << 32;
const REVOKED: u64 = 1 << 33;
const LOST: u64 = 1 << 34;
const FLAGS: u64 = REVOKING | REVOKED | LOST;
const GEN_SHIFT: u32 = 35;
/// More guards than this at once are refused (the count must never reach the flags).
const MAX_GUARDS: u64 = 1 << 31;

/// Why a guard was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The region is being revoked (its lease broke): post nothing new against it.
    #[error("the region is being revoked (its file's lease broke)")]
    Revoking,
    /// The region is revoked: its memory region is deregistered until it is rebuilt.
    #[error("the region is revoked until its lease comes back")]
    Revoked,
    /// The region is gone for good (file deleted or shrunk below the range).
    #[error("the region is lost (file deleted or shrunk below the range)")]
    Lost,
    /// 2^31 guards are already held.
    #[error("too many guards held at once")]
    TooMany,
}

/// The guard word (see the module documentation).
#[derive(Debug, Default)]
pub struct GuardWord(AtomicU64);

/// An I/O guard: while it lives, the region it was taken from is not revoked (until
/// the lease's deadline forces it). Dropping it is an atomic decrement.
#[derive(Debug)]
#[must_use = "the guard protects the region only while it is held"]
pub struct Guard<'a> {
    word: &'a GuardWord,
    generation: u64,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.word.release(self.generation);
    }
}

impl GuardWord {
    /// A word with no guard held and no flag set.
    pub const fn new() -> GuardWord {
        GuardWord(AtomicU64::new(0))
    }

    /// Takes a guard: one `fetch_add`, no lock, no allocation.
    #[inline]
    pub fn guard(&self) -> Result<Guard<'_>, GuardError> {
        let prev = self.0.fetch_add(1, Ordering::Acquire);
        let generation = prev >> GEN_SHIFT;
        if prev & FLAGS != 0 || prev & COUNT_MASK >= MAX_GUARDS {
            self.release(generation);
            return Err(if prev & LOST != 0 {
                GuardError::Lost
            } else if prev & REVOKED != 0 {
                GuardError::Revoked
            } else if prev & REVOKING != 0 {
                GuardError::Revoking
            } else {
                GuardError::TooMany
            });
        }
        Ok(Guard {
            word: self,
            generation,
        })
    }

    #[inline]
    fn release(&self, generation: u64) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur >> GEN_SHIFT != generation || cur & COUNT_MASK == 0 {
                // Abandoned by a forced revocation: nothing to give back.
                return;
            }
            match self
                .0
                .compare_exchange_weak(cur, cur - 1, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    /// Guards held now.
    pub fn held(&self) -> u64 {
        self.0.load(Ordering::Acquire) & COUNT_MASK
    }

    /// Sets *revoking*. Returns false if the word was already revoking, revoked or lost
    /// (someone else owns this revocation).
    pub fn start_revoke(&self) -> bool {
        self.0.fetch_or(REVOKING, Ordering::AcqRel) & FLAGS == 0
    }

    /// Ends a revocation: sets *revoked*, clears *revoking*, abandons the guards still
    /// held (returns how many) and advances the generation.
    pub fn finish_revoke(&self) -> u64 {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next_gen = (cur >> GEN_SHIFT).wrapping_add(1);
            let new = (next_gen << GEN_SHIFT) | (cur & LOST) | REVOKED;
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return cur & COUNT_MASK,
                Err(v) => cur = v,
            }
        }
    }

    /// Lets guards be taken again after a rebuild.
    pub fn reopen(&self) {
        self.0.fetch_and(!(REVOKING | REVOKED), Ordering::AcqRel);
    }

    /// Marks the word lost for good.
    pub fn set_lost(&self) {
        self.0.fetch_or(LOST, Ordering::AcqRel);
    }

    /// Whether the word is marked lost.
    pub fn is_lost(&self) -> bool {
        self.0.load(Ordering::Acquire) & LOST != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_revocation_refuses_new_ones() {
        let w = GuardWord::new();
        let a = w.guard().unwrap();
        let b = w.guard().unwrap();
        assert_eq!(w.held(), 2);
        drop(a);
        assert_eq!(w.held(), 1);
        assert!(w.start_revoke());
        assert!(!w.start_revoke(), "second revoker must not own it");
        assert_eq!(w.guard().unwrap_err(), GuardError::Revoking);
        assert_eq!(w.held(), 1);
        drop(b);
        assert_eq!(w.held(), 0);
        assert_eq!(w.finish_revoke(), 0);
        assert_eq!(w.guard().unwrap_err(), GuardError::Revoked);
        w.reopen();
        let c = w.guard().unwrap();
        assert_eq!(w.held(), 1);
        drop(c);
        w.set_lost();
        assert_eq!(w.guard().unwrap_err(), GuardError::Lost);
    }

    #[test]
    fn forced_revocation_abandons_stale_guards() {
        let w = GuardWord::new();
        let stale = w.guard().unwrap();
        assert!(w.start_revoke());
        assert_eq!(w.finish_revoke(), 1, "one guard abandoned");
        w.reopen();
        let fresh = w.guard().unwrap();
        drop(stale);
        assert_eq!(w.held(), 1, "a stale guard's drop must not release a fresh one");
        drop(fresh);
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn concurrent_guards_balance() {
        let w = std::sync::Arc::new(GuardWord::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        let _g = w.guard().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.held(), 0);
    }
}
