//! One leased file (shared by every handle to it) and the public handle, [`Lease`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::engine::Inner;
use super::{FileId, GoneReason, LeaseResult, ReleaseReport};
use crate::sys::lease::RawLease;

/// The access a lease protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseKind {
    /// `F_RDLCK` on a read-only fd: breaks when anyone opens the file for writing or
    /// truncates it. For registrations peers only read.
    Read,
    /// `F_WRLCK` on a read-write fd: breaks on any other open or truncate; requires that
    /// no other open of the file exists anywhere. For registrations peers may write.
    Write,
}

impl LeaseKind {
    pub(crate) fn raw(self) -> RawLease {
        match self {
            LeaseKind::Read => RawLease::Read,
            LeaseKind::Write => RawLease::Write,
        }
    }
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// The lease is held; no break pending.
    Held,
    /// A break was delivered; waiting for `release`.
    Breaking {
        /// When the break arrived.
        arrived: Instant,
        /// When the kernel will break the lease itself.
        deadline: Instant,
    },
    /// The kernel broke the lease at its deadline; waiting for `release`.
    Forced {
        /// When the break arrived.
        arrived: Instant,
    },
    /// Released; waiting for the breaker to finish to take the lease again.
    Reacquiring {
        /// When it was released.
        released: Instant,
    },
    /// The lease will not come back.
    Gone(GoneReason),
    /// The last handle was dropped.
    Closed,
}

pub(crate) struct EntryState {
    pub(crate) state: LeaseState,
    /// Bumped on every delivered break, so a deadline timer only acts on its own break.
    pub(crate) generation: u64,
}

/// A leased file: one fd, one kernel lease, shared by all handles.
pub(crate) struct Entry {
    pub(crate) id: FileId,
    pub(crate) path: Arc<Path>,
    pub(crate) kind: LeaseKind,
    pub(crate) fd: OwnedFd,
    pub(crate) refs: AtomicUsize,
    pub(crate) state: Mutex<EntryState>,
    /// Woken by inotify events while reacquiring, and when the entry closes.
    pub(crate) wake: Notify,
}

impl Entry {
    pub(crate) fn new(id: FileId, path: Arc<Path>, kind: LeaseKind, fd: OwnedFd) -> Entry {
        Entry {
            id,
            path,
            kind,
            fd,
            refs: AtomicUsize::new(1),
            state: Mutex::new(EntryState { state: LeaseState::Held, generation: 0 }),
            wake: Notify::new(),
        }
    }
}

/// A handle to a leased file. Handles to the same file (same device and inode) share
/// one fd and one kernel lease; the lease is released and the fd closed when the last
/// handle drops. Cloning a handle adds a reference.
pub struct Lease {
    pub(crate) inner: Arc<Inner>,
    pub(crate) entry: Arc<Entry>,
}

impl Lease {
    /// The leased fd (read-only for [`LeaseKind::Read`], read-write for
    /// [`LeaseKind::Write`]). Map the file through it: any other open of the file, even
    /// by this process, breaks a write lease.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.entry.fd.as_fd()
    }

    /// The file's identity.
    pub fn file_id(&self) -> FileId {
        self.entry.id
    }

    /// The path the lease was first taken under.
    pub fn path(&self) -> &Path {
        &self.entry.path
    }

    /// The kind of the shared lease (a read acquisition of a write-leased file shares
    /// the write lease).
    pub fn kind(&self) -> LeaseKind {
        self.entry.kind
    }

    /// The lease's current state.
    pub fn state(&self) -> LeaseState {
        self.entry.state.lock().state
    }

    /// How many breaks of this lease have been delivered so far. Compare two readings to
    /// know whether the lease broke in between (a break, release and reacquire can all
    /// happen between two looks at [`Lease::state`]).
    pub fn breaks(&self) -> u64 {
        self.entry.state.lock().generation
    }

    /// Same as [`LeaseEngine::release`](super::LeaseEngine::release) for this file.
    pub fn release(&self) -> LeaseResult<ReleaseReport> {
        self.inner.release_entry(&self.entry)
    }
}

impl Clone for Lease {
    fn clone(&self) -> Self {
        self.entry.refs.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Lease { inner: self.inner.clone(), entry: self.entry.clone() }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inner.drop_ref(&self.entry);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("file", &self.entry.id)
            .field("path", &self.entry.path)
            .field("kind", &self.entry.kind)
            .field("state", &self.state())
            .finish()
    }
}
