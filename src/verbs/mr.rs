use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::access::Access;
use super::error::{VerbsError, VerbsResult};
use super::pd::ProtectionDomain;
use crate::sys::{Mapping, page_offset};

/// A registered memory region (`ibv_mr`), deregistered on drop.
///
/// It keeps its protection domain alive, and, when made with [`MemoryRegion::register`],
/// the mapping it covers, so the memory cannot be unmapped while the device may use it.
pub struct MemoryRegion {
    ptr: NonNull<ffi::ibv_mr>,
    /// The address the region is known by on the wire and in local SGEs (its IOVA):
    /// the memory's virtual address unless registered with [`MemoryRegion::register_at`].
    iova: u64,
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

    /// Register the whole of `mapping` with `access`, known to the device (and to peers,
    /// and in local SGEs) by the address `iova` instead of the mapping's own address
    /// (`ibv_reg_mr_iova2`). Two regions over different memory can so share one address
    /// range: a rebuilt region keeps its predecessor's addresses, and scratch memory can
    /// stand in for a region under a memory window bound at the same addresses.
    pub fn register_at(
        pd: &Arc<ProtectionDomain>,
        mapping: &Arc<Mapping>,
        iova: u64,
        access: Access,
    ) -> VerbsResult<MemoryRegion> {
        let (addr, len) = (mapping.as_ptr(), mapping.len());
        if page_offset(iova) != page_offset(addr as u64) {
            // The device translates whole pages: the in-page offsets must agree.
            return Err(VerbsError::new(
                "ibv_reg_mr_iova2",
                nix::errno::Errno::EINVAL,
                format!("iova {iova:#x} and address {addr:p} differ within the page"),
            ));
        }
        // SAFETY: the PD is live; the mapping stays mapped while the MR lives (we keep an
        // Arc to it).
        let mr =
            unsafe { ffi::ibv_reg_mr_iova2(pd.as_raw(), addr.cast(), len, iova, access.bits()) };
        let ptr = NonNull::new(mr).ok_or_else(|| {
            VerbsError::last(
                "ibv_reg_mr_iova2",
                format!("addr {addr:p} len {len} iova {iova:#x} access {access:?}"),
            )
        })?;
        Ok(MemoryRegion { ptr, iova, access, pd: pd.clone(), _mapping: Some(mapping.clone()) })
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
        let mr = unsafe { ffi::ibv_reg_mr(pd.as_raw(), addr.cast(), len, access.bits() as i32) };
        let ptr = NonNull::new(mr).ok_or_else(|| {
            VerbsError::last("ibv_reg_mr", format!("addr {addr:p} len {len} access {access:?}"))
        })?;
        Ok(MemoryRegion { ptr, iova: addr as u64, access, pd: pd.clone(), _mapping: None })
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

    /// Start address as the device knows it (the IOVA): what peers use with the rkey,
    /// memory windows are bound at, and local SGEs name.
    pub fn addr(&self) -> u64 {
        self.iova
    }

    /// The raw handle, for binding memory windows.
    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_mr {
        self.ptr.as_ptr()
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

    /// Deregisters now, returning the region and the error if `ibv_dereg_mr` refuses
    /// (e.g. `EINVAL` on rxe while a memory window is bound to it). Dropping a region
    /// deregisters it too, but can only log a failure.
    pub fn deregister(self) -> Result<(), (MemoryRegion, VerbsError)> {
        // SAFETY: registered by us; on success the handle is never used again (forgotten
        // below), on failure it stays registered and is handed back.
        let ret = unsafe { ffi::ibv_dereg_mr(self.ptr.as_ptr()) };
        if ret != 0 {
            let e = VerbsError::from_ret("ibv_dereg_mr", ret, format!("lkey {:#x}", self.lkey()));
            return Err((self, e));
        }
        // The mapping and PD references are released; Drop must not deregister again.
        let mut me = std::mem::ManuallyDrop::new(self);
        me._mapping.take();
        // SAFETY: `pd` is read out exactly once and `me` is never dropped.
        drop(unsafe { std::ptr::read(&me.pd) });
        Ok(())
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
