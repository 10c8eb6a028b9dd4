use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::access::Access;
use super::error::{VerbsError, VerbsResult};
use super::pd::ProtectionDomain;
use crate::sys::Mapping;

/// A registered memory region (`ibv_mr`), deregistered on drop.
///
/// It keeps its protection domain alive, and, when made with [`MemoryRegion::register`],
/// the mapping it covers, so the memory cannot be unmapped while the device may use it.
pub struct MemoryRegion {
    ptr: NonNull<ffi::ibv_mr>,
    access: Access,
    pd: Arc<ProtectionDomain>,
    _mapping: Option<Arc<Mapping>>,
}

// SAFETY: verbs objects are thread-safe; the fields read after creation are immutable.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .field("access", &self.access)
            .finish()
    }
}

impl MemoryRegion {
    /// Register the whole of `mapping` with `access`.
    pub fn register(
        pd: &Arc<ProtectionDomain>,
        mapping: &Arc<Mapping>,
        access: Access,
    ) -> VerbsResult<MemoryRegion> {
        // SAFETY: the mapping stays mapped while the MR lives (we keep an Arc to it).
        let mut mr = unsafe { Self::register_raw(pd, mapping.as_ptr(), mapping.len(), access) }?;
        mr._mapping = Some(mapping.clone());
        Ok(mr)
    }

    /// Register `len` bytes at `addr` with `access` (`ibv_reg_mr`).
    ///
    /// # Safety
    /// `addr..addr+len` must stay mapped for as long as the returned region lives, and the
    /// caller accepts that the device (and, with remote access, peers) read and write it
    /// at any time.
    pub unsafe fn register_raw(
        pd: &Arc<ProtectionDomain>,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> VerbsResult<MemoryRegion> {
        // SAFETY: the PD is live; the memory contract is the caller's (see above).
        let mr = unsafe { ffi::ibv_reg_mr(pd.as_ptr(), addr.cast(), len, access.bits() as i32) };
        let ptr = NonNull::new(mr).ok_or_else(|| {
            VerbsError::last("ibv_reg_mr", format!("addr {addr:p} len {len} access {access:?}"))
        })?;
        Ok(MemoryRegion { ptr, access, pd: pd.clone(), _mapping: None })
    }

    fn raw(&self) -> &ffi::ibv_mr {
        // SAFETY: the MR is registered until drop and libibverbs never moves it.
        unsafe { self.ptr.as_ref() }
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.raw().lkey
    }

    /// Remote key peers use.
    pub fn rkey(&self) -> u32 {
        self.raw().rkey
    }

    /// Start address (the address peers use with the rkey).
    pub fn addr(&self) -> u64 {
        self.raw().addr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.raw().length
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The access it was registered with.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Its protection domain.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered by us, deregistered exactly once; the mapping (if any) is
        // still alive because we hold its Arc until after this call.
        let ret = unsafe { ffi::ibv_dereg_mr(self.ptr.as_ptr()) };
        if ret != 0 {
            tracing::error!(ret, rkey = self.rkey(), "ibv_dereg_mr failed");
        }
    }
}
