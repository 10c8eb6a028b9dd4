//! The guard word: a lock-free, allocation-free count of held I/O guards plus the
//! revocation flags, packed into one `AtomicU64`.
//!
//! Layout: two 30-bit guard counts (bits 0..30 and 30..60), a parity bit (60) saying
//! which count the current generation uses, then *revoking* (61), *revoked* (62) and
//! *lost* (63). Taking a guard is a load and one `fetch_add` on the current count;
//! dropping it one `fetch_sub` on the count it was taken in: no lock, no allocation.
//!
//! A forced revocation deregisters while guards are still held; it then flips the parity,
//! so the next generation's guards are counted apart and the stale guards' later drops do
//! not disturb them. (Only a second forced revocation while stale guards of two
//! generations ago are still held would count those again: it waits for them until its
//! deadline, which is conservative, never unsafe.)

use std::sync::atomic::{AtomicU64, Ordering};

const HALF_BITS: u32 = 30;
const COUNT_MASK: u64 = (1 << HALF_BITS) - 1;
const PARITY: u64 = 1 << 60;
const REVOKING: u64 = 1 << 61;
const REVOKED: u64 = 1 << 62;
const LOST: u64 = 1 << 63;
const FLAGS: u64 = REVOKING | REVOKED | LOST;
/// More guards than this at once are refused (a count must never reach the next field).
const MAX_GUARDS: u64 = 1 << 29;

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
    /// 2^29 guards are already held.
    #[error("too many guards held at once")]
    TooMany,
}

/// The guard word (see the module documentation), with a read-mostly copy of the
/// parity on its own cache line: reading the parity from the word itself right before the
/// `fetch_add` costs a stall on the line the last guard just wrote.
#[derive(Debug, Default)]
pub struct GuardWord {
    word: AtomicU64,
    parity: Padded,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

/// An I/O guard: while it lives, the region it was taken from is not revoked (until
/// the lease's deadline forces it). Dropping it is one atomic decrement.
#[derive(Debug)]
#[must_use = "the guard protects the region only while it is held"]
pub struct Guard<'a> {
    word: &'a GuardWord,
    /// 1 shifted to the count this guard was taken in.
    one: u64,
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.word.word.fetch_sub(self.one, Ordering::Release);
    }
}

#[inline]
fn shift(word: u64) -> u32 {
    if word & PARITY != 0 { HALF_BITS } else { 0 }
}

impl GuardWord {
    /// A word with no guard held and no flag set.
    pub const fn new() -> GuardWord {
        GuardWord { word: AtomicU64::new(0), parity: Padded(AtomicU64::new(0)) }
    }

    /// Takes a guard: one `fetch_add` (plus a load of the read-mostly parity), no lock,
    /// no allocation.
    #[inline]
    pub fn guard(&self) -> Result<Guard<'_>, GuardError> {
        loop {
            let seen = self.parity.0.load(Ordering::Relaxed);
            let one = 1u64 << shift(seen);
            let prev = self.word.fetch_add(one, Ordering::Acquire);
            if prev & (FLAGS | PARITY) == seen & PARITY
                && (prev >> shift(prev)) & COUNT_MASK < MAX_GUARDS
            {
                return Ok(Guard { word: self, one });
            }
            self.word.fetch_sub(one, Ordering::Release);
            if let Some(e) = refusal(prev) {
                return Err(e);
            }
            // The parity flipped between the load and the add: try again.
        }
    }

    /// Guards held now in the current generation.
    pub fn held(&self) -> u64 {
        let w = self.word.load(Ordering::Acquire);
        (w >> shift(w)) & COUNT_MASK
    }

    /// Sets *revoking*. Returns false if the word was already revoking, revoked or lost
    /// (someone else owns this revocation).
    pub fn start_revoke(&self) -> bool {
        self.word.fetch_or(REVOKING, Ordering::AcqRel) & FLAGS == 0
    }

    /// Ends a revocation: sets *revoked*, clears *revoking*, and flips the parity so the
    /// guards still held (returned) are abandoned to the old count.
    pub fn finish_revoke(&self) -> u64 {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            let new = ((cur ^ PARITY) & !REVOKING) | REVOKED;
            match self.word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    // Published before `reopen` lets guards in again.
                    self.parity.0.store(new & PARITY, Ordering::Release);
                    return (cur >> shift(cur)) & COUNT_MASK;
                }
                Err(v) => cur = v,
            }
        }
    }

    /// Lets guards be taken again after a rebuild.
    pub fn reopen(&self) {
        self.word.fetch_and(!(REVOKING | REVOKED), Ordering::AcqRel);
    }

    /// On a revoked word, forgets the mark [`GuardWord::start_revoke`] leaves when it
    /// finds the word already revoked (it sets *revoking* even when it fails): what
    /// [`GuardWord::try_reopen`] looks for. A no-op unless the word is revoked (a live
    /// revocation's *revoking* bit is never cleared here).
    pub fn clear_revoking_mark(&self) {
        let _ = self.word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w & REVOKED != 0 && w & REVOKING != 0).then_some(w & !REVOKING)
        });
    }

    /// Lets guards be taken again after a rebuild, unless a revocation started since
    /// [`GuardWord::clear_revoking_mark`] (its `start_revoke` failed on the revoked word
    /// and left *revoking* set) or the word is lost: then the word stays revoked and this
    /// returns false. Once this returned true, the next `start_revoke` succeeds.
    pub fn try_reopen(&self) -> bool {
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & (REVOKING | LOST) == 0).then_some(w & !REVOKED)
            })
            .is_ok()
    }

    /// Marks the word lost for good.
    pub fn set_lost(&self) {
        self.word.fetch_or(LOST, Ordering::AcqRel);
    }

    /// Whether the word is marked lost.
    pub fn is_lost(&self) -> bool {
        self.word.load(Ordering::Acquire) & LOST != 0
    }
}

fn refusal(word: u64) -> Option<GuardError> {
    if word & LOST != 0 {
        Some(GuardError::Lost)
    } else if word & REVOKED != 0 {
        Some(GuardError::Revoked)
    } else if word & REVOKING != 0 {
        Some(GuardError::Revoking)
    } else if (word >> shift(word)) & COUNT_MASK >= MAX_GUARDS {
        Some(GuardError::TooMany)
    } else {
        None
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
    fn a_revocation_that_finds_the_word_revoked_keeps_it_closed() {
        let w = GuardWord::new();
        assert!(w.start_revoke());
        w.finish_revoke();
        // An older revocation's mark, from a break released since: forgotten.
        assert!(!w.start_revoke());
        w.clear_revoking_mark();
        // A revocation passes by while the region is being rebuilt: it cannot own the
        // region, so the rebuild must not reopen it.
        assert!(!w.start_revoke(), "a revoked word is not owned by a new revocation");
        assert!(!w.try_reopen());
        assert_eq!(w.guard().unwrap_err(), GuardError::Revoked);
        // The next rebuild, once that break is released, forgets the mark and reopens.
        w.clear_revoking_mark();
        assert!(w.try_reopen());
        drop(w.guard().unwrap());
        assert!(w.start_revoke(), "after a reopen, the next revocation owns the word");
        // Never clears a live revocation's bit, and never reopens a lost word.
        w.clear_revoking_mark();
        assert!(!w.start_revoke());
        assert!(!w.try_reopen());
        w.finish_revoke();
        w.set_lost();
        w.clear_revoking_mark();
        assert!(!w.try_reopen());
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
