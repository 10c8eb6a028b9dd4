use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::device::Context;
use super::error::{VerbsError, VerbsResult};

/// A protection domain (`ibv_pd`); keeps its device context open. Deallocated on drop
/// unless it was adopted from the application with [`ProtectionDomain::from_raw`].
pub struct ProtectionDomain {
    ptr: NonNull<ffi::ibv_pd>,
    ctx: Arc<Context>,
    owned: bool,
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
        let pd = unsafe { ffi::ibv_alloc_pd(ctx.as_raw()) };
        let ptr = NonNull::new(pd).ok_or_else(|| VerbsError::last("ibv_alloc_pd", ctx.name()))?;
        Ok(Arc::new(ProtectionDomain { ptr, ctx: ctx.clone(), owned: true }))
    }

    /// Adopts a protection domain the application allocated on `ctx`. filemr registers
    /// its memory regions and allocates its memory windows in it (and, while probing a
    /// file system, short-lived queue pairs and completion queues), and never
    /// deallocates it. Fails with `EINVAL` for a NULL pointer or a domain of another
    /// context.
    ///
    /// # Safety
    ///
    /// `pd` must be a live `ibv_pd`, and the application must keep it allocated until
    /// this value and everything built on it (a manager, its regions and grants) are
    /// dropped.
    pub unsafe fn from_raw(
        ctx: &Arc<Context>,
        pd: *mut ffi::ibv_pd,
    ) -> VerbsResult<Arc<ProtectionDomain>> {
        let Some(ptr) = NonNull::new(pd) else {
            return Err(VerbsError::new(
                "ibv_pd",
                nix::errno::Errno::EINVAL,
                "NULL protection domain",
            ));
        };
        // SAFETY: the caller promises a live PD; `context` is set by libibverbs.
        let owner = unsafe { ptr.as_ref().context };
        if owner != ctx.as_raw() {
            return Err(VerbsError::new(
                "ibv_pd",
                nix::errno::Errno::EINVAL,
                format!("the protection domain belongs to another context than {}'s", ctx.name()),
            ));
        }
        Ok(Arc::new(ProtectionDomain { ptr, ctx: ctx.clone(), owned: false }))
    }

    /// Whether filemr allocated this domain (and deallocates it on drop).
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// The raw `ibv_pd`, for the application's own verbs calls (create its queue pairs in
    /// it). It stays valid while this value lives; do not deallocate it.
    pub fn as_raw(&self) -> *mut ffi::ibv_pd {
        self.ptr.as_ptr()
    }

    /// The device context this domain lives on.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: MRs, MWs and QPs hold an Arc to this PD, so none is alive; freed once.
        let ret = unsafe { ffi::ibv_dealloc_pd(self.as_raw()) };
        if ret != 0 {
            tracing::error!(ret, "ibv_dealloc_pd failed");
        }
    }
}
