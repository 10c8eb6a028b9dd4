use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::device::Context;
use super::error::{VerbsError, VerbsResult};

/// A protection domain (`ibv_pd`); keeps its device context open.
pub struct ProtectionDomain {
    ptr: NonNull<ffi::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe in libibverbs.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectionDomain").field("device", &self.ctx.name()).finish()
    }
}

impl ProtectionDomain {
    /// Allocate a protection domain on `ctx`.
    pub fn new(ctx: &Arc<Context>) -> VerbsResult<Arc<ProtectionDomain>> {
        // SAFETY: the context is open for as long as the Arc we keep.
        let pd = unsafe { ffi::ibv_alloc_pd(ctx.as_ptr()) };
        let ptr = NonNull::new(pd).ok_or_else(|| VerbsError::last("ibv_alloc_pd", ctx.name()))?;
        Ok(Arc::new(ProtectionDomain { ptr, ctx: ctx.clone() }))
    }

    /// The device context this domain lives on.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_pd {
        self.ptr.as_ptr()
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: MRs, MWs and QPs hold an Arc to this PD, so none is alive; freed once.
        let ret = unsafe { ffi::ibv_dealloc_pd(self.as_ptr()) };
        if ret != 0 {
            tracing::error!(ret, "ibv_dealloc_pd failed");
        }
    }
}
