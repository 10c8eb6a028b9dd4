//! The guard word: a count of held I/O guards plus the revocation flags, taken without a
//! lock, an allocation or (on the fast path) any atomic read-modify-write.
//!
//! **Fast path: per-thread slots and an asymmetric fence.** Each thread has a few slots,
//! each a (word, generation) key and a count that only that thread writes. Taking a guard
//! bumps the thread's slot count with a plain store, then (after a compiler fence only)
//! loads the word's flags; dropping it is one store. A revoker sets *revoking*, then calls
//! `membarrier` (private expedited), which makes every running thread execute a full
//! barrier: afterwards a guard taken before the flag was seen is visible in its thread's
//! slot, and one taken after sees the flag and backs out. The revoker sums the slots of
//! every thread (held is a scan, rare) plus the shared fallback count below. This is the
//! userspace-RCU scheme; it needs `membarrier` (Linux 4.14), and guards are not `Send`
//! (a slot belongs to its thread).
//!
//! **Fallback: the shared word.** Layout: two 30-bit guard counts (bits 0..30 and 30..60),
//! a parity bit (60) saying which count the current generation uses, then *revoking*
//! (61), *revoked* (62) and *lost* (63). Without `membarrier`, for a thread whose slots
//! are all taken, or while its thread-local storage is being torn down, a guard is a
//! `fetch_add` on the current count and a `fetch_sub` when dropped.
//!
//! A forced revocation deregisters while guards are still held; it then flips the parity
//! (the generation), so the next generation's guards are counted apart (other slots, the
//! other half of the word) and the stale guards' later drops do not disturb them. (Only a
//! second forced revocation while stale guards of two generations ago are still held would
//! count those again: it waits for them until its deadline, which is conservative, never
//! unsafe.)

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, compiler_fence};

use parking_lot::Mutex;

use crate::sys::membarrier;

const HALF_BITS: u32 = 30;
const COUNT_MASK: u64 = (1 << HALF_BITS) - 1;
const PARITY: u64 = 1 << 60;
const REVOKING: u64 = 1 << 61;
const REVOKED: u64 = 1 << 62;
const LOST: u64 = 1 << 63;
const FLAGS: u64 = REVOKING | REVOKED | LOST;
/// Both halves' counts.
const COUNTS: u64 = (1 << (2 * HALF_BITS)) - 1;
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
/// the lease's deadline forces it). Dropping it is one store (or one atomic decrement on
/// the fallback path). Not `Send`: it is counted in its thread's slot.
#[derive(Debug)]
#[must_use = "the guard protects the region only while it is held"]
pub struct Guard<'a> {
    word: &'a GuardWord,
    how: Held,
    _thread: PhantomData<*const ()>,
}

#[derive(Debug)]
enum Held {
    /// In this thread's slot.
    Slot(&'static Slots, usize),
    /// In the word's count: 1 shifted to the count it was taken in.
    Word(u64),
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        match self.how {
            Held::Slot(slots, i) => {
                let c = &slots.count[i];
                // Release: the guarded work happens before a revoker sees the count drop.
                c.store(c.load(Ordering::Relaxed) - 1, Ordering::Release);
            }
            Held::Word(one) => {
                self.word.word.fetch_sub(one, Ordering::Release);
            }
        }
    }
}

/// One thread's slots. `key` is the word's address with its generation (parity) in bit 0;
/// only the owning thread writes `key` and `count`. Never freed: a thread that ends gives
/// its slots back (`owned` false) for the next thread, unless a count is still up.
#[derive(Debug, Default)]
struct Slots {
    key: [AtomicUsize; SLOTS],
    count: [AtomicUsize; SLOTS],
    owned: AtomicBool,
}

/// Every thread's slots, ever (what a revoker scans; bounded by the most threads alive at
/// once).
static THREADS: Mutex<Vec<&'static Slots>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Cell<Option<&'static Slots>> = const { Cell::new(None) };
    static RETURN: ReturnOnExit = const { ReturnOnExit(Cell::new(None)) };
}

/// Gives the thread's slots back when it ends.
struct ReturnOnExit(Cell<Option<&'static Slots>>);

impl Drop for ReturnOnExit {
    fn drop(&mut self) {
        if let Some(slots) = self.0.get() {
            let _ = LOCAL.try_with(|l| l.set(None));
            if slots.count.iter().all(|c| c.load(Ordering::Acquire) == 0) {
                slots.owned.store(false, Ordering::Release);
            }
        }
    }
}

/// This thread's slots: a thread-local load once assigned; `None` while thread-local
/// storage is being torn down.
#[inline]
fn local_slots() -> Option<&'static Slots> {
    match LOCAL.try_with(Cell::get) {
        Ok(Some(slots)) if !std::ptr::eq(slots, &NO_FAST_PATH) => Some(slots),
        Ok(Some(_)) | Err(_) => None,
        Ok(None) => assign_slots(),
    }
}

/// What a thread's slots are set to when the process has no `membarrier`: the shared
/// word then (one thread-local load decides, no check of `membarrier` per guard).
static NO_FAST_PATH: Slots = Slots {
    key: [const { AtomicUsize::new(0) }; SLOTS],
    count: [const { AtomicUsize::new(0) }; SLOTS],
    owned: AtomicBool::new(true),
};

#[cold]
fn assign_slots() -> Option<&'static Slots> {
    if !membarrier::available() {
        let _ = LOCAL.try_with(|l| l.set(Some(&NO_FAST_PATH)));
        return None;
    }
    let mut all = THREADS.lock();
    let free = all.iter().copied().find(|s| {
        s.owned.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    });
    let slots = free.unwrap_or_else(|| {
        let s: &'static Slots = Box::leak(Box::default());
        s.owned.store(true, Ordering::Relaxed);
        all.push(s);
        s
    });
    drop(all);
    RETURN.try_with(|r| r.0.set(Some(slots))).ok()?;
    LOCAL.try_with(|l| l.set(Some(slots))).ok()?;
    Some(slots)
}

/// Whether guards take the fast path (`membarrier` private expedited is available).
pub fn fast_guards() -> bool {
    membarrier::available()
}

#[inline]
fn shift(word: u64) -> u32 {
    if word & PARITY != 0 { HALF_BITS } else { 0 }
}

/// Slots per thread: guards on this many (word, generation) pairs at once take the fast
/// path.
const SLOTS: usize = 8;

impl GuardWord {
    /// A word with no guard held and no flag set.
    pub const fn new() -> GuardWord {
        GuardWord { word: AtomicU64::new(0), parity: Padded(AtomicU64::new(0)) }
    }

    /// Takes a guard: on the fast path a slot store and a load (see the module
    /// documentation), no lock, no allocation, no atomic read-modify-write.
    #[inline]
    pub fn guard(&self) -> Result<Guard<'_>, GuardError> {
        if let Some(slots) = local_slots() {
            let parity = self.parity.0.load(Ordering::Relaxed);
            let key = self.slot_key(parity);
            if let Some(i) = free_or_own(slots, key) {
                let c = &slots.count[i];
                let n = c.load(Ordering::Relaxed);
                if n == 0 {
                    slots.key[i].store(key, Ordering::Relaxed);
                }
                c.store(n + 1, Ordering::Relaxed);
                // The revoker's membarrier is the hardware half of this fence.
                compiler_fence(Ordering::SeqCst);
                let w = self.word.load(Ordering::Acquire);
                if w & (FLAGS | PARITY) == parity {
                    return Ok(Guard {
                        word: self,
                        how: Held::Slot(slots, i),
                        _thread: PhantomData,
                    });
                }
                c.store(n, Ordering::Release);
                if let Some(e) = refusal(w & !COUNTS) {
                    return Err(e);
                }
                // The generation changed between the loads: the shared path sorts it out.
            }
        }
        self.guard_on_word()
    }

    /// This word's slot key in the generation of `word` (its parity bit): the address,
    /// with the generation in bit 0 (a word is 64-byte aligned).
    #[inline]
    fn slot_key(&self, word: u64) -> usize {
        self as *const GuardWord as usize | (word & PARITY != 0) as usize
    }

    /// The fallback: a `fetch_add` on the word's current count.
    fn guard_on_word(&self) -> Result<Guard<'_>, GuardError> {
        loop {
            let seen = self.parity.0.load(Ordering::Relaxed);
            let one = 1u64 << shift(seen);
            let prev = self.word.fetch_add(one, Ordering::Acquire);
            if prev & (FLAGS | PARITY) == seen & PARITY
                && (prev >> shift(prev)) & COUNT_MASK < MAX_GUARDS
            {
                return Ok(Guard { word: self, how: Held::Word(one), _thread: PhantomData });
            }
            self.word.fetch_sub(one, Ordering::Release);
            if let Some(e) = refusal(prev) {
                return Err(e);
            }
            // The parity flipped between the load and the add: try again.
        }
    }

    /// Guards held now in the current generation: the word's count plus every thread's
    /// slots for this word (a scan of all threads: for revokers and reports, not hot
    /// paths).
    pub fn held(&self) -> u64 {
        let w = self.word.load(Ordering::Acquire);
        ((w >> shift(w)) & COUNT_MASK) + in_slots(self.slot_key(w))
    }

    /// Sets *revoking*. Returns false if the word was already revoking, revoked or lost
    /// (someone else owns this revocation).
    pub fn start_revoke(&self) -> bool {
        let owned = self.word.fetch_or(REVOKING, Ordering::SeqCst) & FLAGS == 0;
        // Every thread now either sees *revoking* or has its guard visible in its slot.
        if membarrier::available() {
            membarrier::barrier();
        }
        owned
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
                    return ((cur >> shift(cur)) & COUNT_MASK) + in_slots(self.slot_key(cur));
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

/// Guards counted in every thread's slots under `key`.
fn in_slots(key: usize) -> u64 {
    THREADS
        .lock()
        .iter()
        .flat_map(|s| (0..SLOTS).map(move |i| (s, i)))
        .filter(|(s, i)| s.key[*i].load(Ordering::Acquire) == key)
        .map(|(s, i)| s.count[i].load(Ordering::Acquire) as u64)
        .sum()
}

/// The slot of this thread holding `key`, or a free one.
#[inline]
fn free_or_own(slots: &Slots, key: usize) -> Option<usize> {
    let mut free = None;
    for i in 0..SLOTS {
        if slots.key[i].load(Ordering::Relaxed) == key {
            return Some(i);
        }
        if free.is_none() && slots.count[i].load(Ordering::Relaxed) == 0 {
            free = Some(i);
        }
    }
    free
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

    #[test]
    fn a_guard_on_another_thread_is_waited_for() {
        let w = std::sync::Arc::new(GuardWord::new());
        let (took, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let holder = {
            let w = w.clone();
            let (took, release) = (took.0, release.1);
            std::thread::spawn(move || {
                let g = w.guard().unwrap();
                took.send(()).unwrap();
                release.recv().unwrap();
                drop(g);
            })
        };
        took.1.recv().unwrap();
        assert!(w.start_revoke());
        assert_eq!(w.held(), 1, "the other thread's guard is counted");
        assert_eq!(w.guard().unwrap_err(), GuardError::Revoking);
        release.0.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn more_words_than_slots_fall_back_to_the_shared_count() {
        let words: Vec<GuardWord> = (0..SLOTS + 3).map(|_| GuardWord::new()).collect();
        let guards: Vec<_> = words.iter().map(|w| w.guard().unwrap()).collect();
        assert!(words.iter().all(|w| w.held() == 1));
        assert!(words[SLOTS + 2].start_revoke());
        assert_eq!(words[SLOTS + 2].held(), 1);
        drop(guards);
        assert!(words.iter().all(|w| w.held() == 0));
    }

    /// Readers take and drop guards in a loop while a revoker starts a revocation and
    /// waits for the guards it sees: no reader may hold a guard once the revoker is done.
    #[test]
    fn no_guard_outlives_the_revokers_wait() {
        use std::sync::atomic::AtomicBool;
        for _ in 0..20 {
            let w = std::sync::Arc::new(GuardWord::new());
            let (done, stop) = (
                std::sync::Arc::new(AtomicBool::new(false)),
                std::sync::Arc::new(AtomicBool::new(false)),
            );
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let (w, done, stop) = (w.clone(), done.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut late = 0;
                        while !stop.load(Ordering::SeqCst) {
                            if let Ok(g) = w.guard() {
                                std::hint::spin_loop();
                                if done.load(Ordering::SeqCst) {
                                    late += 1;
                                }
                                drop(g);
                            }
                        }
                        late
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(2));
            assert!(w.start_revoke());
            while w.held() > 0 {
                std::hint::spin_loop();
            }
            done.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            stop.store(true, Ordering::SeqCst);
            let late: u32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
            assert_eq!(late, 0, "guards held after the revoker saw none");
        }
    }
}
