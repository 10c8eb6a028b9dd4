use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::error::{VerbsError, VerbsResult};
use super::pd::ProtectionDomain;

/// Memory window type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MwType {
    /// Type 1: bound with `ibv_bind_mw`.
    Type1,
    /// Type 2: bound with a work request on a QP.
    Type2,
}

/// A memory window (`ibv_mw`), deallocated on drop (which also unbinds it).
pub struct MemoryWindow {
    ptr: NonNull<ffi::ibv_mw>,
    kind: MwType,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for MemoryWindow {}
// SAFETY: as above.
unsafe impl Sync for MemoryWindow {}

impl MemoryWindow {
    /// Allocate a window of `kind` on `pd`.
    pub fn alloc(pd: &Arc<ProtectionDomain>, kind: MwType) -> VerbsResult<MemoryWindow> {
        let t = match kind {
            MwType::Type1 => ffi::ibv_mw_type::IBV_MW_TYPE_1,
            MwType::Type2 => ffi::ibv_mw_type::IBV_MW_TYPE_2,
        };
        // SAFETY: the PD is live for as long as the Arc we keep.
        let mw = unsafe { ffi::ibv_alloc_mw(pd.as_raw(), t) };
        let ptr = mw
            .and_then(NonNull::new)
            .ok_or_else(|| VerbsError::last("ibv_alloc_mw", format!("{kind:?}")))?;
        Ok(MemoryWindow { ptr, kind, _pd: pd.clone() })
    }

    /// The window's type.
    pub fn kind(&self) -> MwType {
        self.kind
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_mw {
        self.ptr.as_ptr()
    }

    /// The window's key: the one it was allocated with, which filemr keeps across binds
    /// (see [`QueuePair::bind_mw`](super::QueuePair::bind_mw)).
    pub fn rkey(&self) -> u32 {
        // SAFETY: the MW is allocated until drop.
        unsafe { self.ptr.as_ref().rkey }
    }
}

impl Drop for MemoryWindow {
    fn drop(&mut self) {
        // SAFETY: allocated by us and freed exactly once.
        unsafe { ffi::ibv_dealloc_mw(self.ptr.as_ptr()) };
    }
}
