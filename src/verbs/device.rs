use std::ffi::CStr;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use rdma_sys as ffi;

use super::error::{VerbsError, VerbsResult};

/// What `ibv_is_fork_initialized` reports: whether registered memory survives `fork`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkStatus {
    /// `IBV_FORK_DISABLED`: `ibv_fork_init` was not called and the kernel does not make
    /// fork safe by itself.
    Disabled,
    /// `IBV_FORK_ENABLED`: `ibv_fork_init` was called (filemr never calls it).
    Enabled,
    /// `IBV_FORK_UNNEEDED`: the kernel keeps a parent's pinned pages across `fork`
    /// (copy-on-fork for pinned pages): no `ibv_fork_init` is needed.
    Unneeded,
    /// Any other value, raw.
    Other(i32),
}

unsafe extern "C" {
    // libibverbs 1.13 (rdma-core 35); rdma-sys 0.3 does not bind it.
    fn ibv_is_fork_initialized() -> std::ffi::c_int;
}

/// Whether this process's registered memory is fork-safe, as libibverbs sees it.
pub fn fork_status() -> ForkStatus {
    // SAFETY: no arguments; it reads libibverbs' state and the kernel's capability.
    match unsafe { ibv_is_fork_initialized() } {
        0 => ForkStatus::Disabled,
        1 => ForkStatus::Enabled,
        2 => ForkStatus::Unneeded,
        other => ForkStatus::Other(other),
    }
}

/// Names of the RDMA devices libibverbs can see (e.g. `["rxe0"]`).
pub fn device_names() -> VerbsResult<Vec<String>> {
    let list = DeviceList::get()?;
    Ok(list.iter().map(device_name).collect())
}

/// The device list from `ibv_get_device_list`, freed on drop.
struct DeviceList {
    ptr: NonNull<*mut ffi::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn get() -> VerbsResult<Self> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid out-pointer; the returned array is owned by us until
        // `ibv_free_device_list`.
        let raw = unsafe { ffi::ibv_get_device_list(&mut n) };
        let ptr = NonNull::new(raw).ok_or_else(|| VerbsError::last("ibv_get_device_list", ""))?;
        Ok(Self { ptr, len: n.max(0) as usize })
    }

    fn iter(&self) -> impl Iterator<Item = *mut ffi::ibv_device> + '_ {
        // SAFETY: the list holds `len` valid device pointers while `self` lives.
        (0..self.len).map(move |i| unsafe { *self.ptr.as_ptr().add(i) })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `ibv_get_device_list` and is freed once.
        unsafe { ffi::ibv_free_device_list(self.ptr.as_ptr()) };
    }
}

fn device_name(dev: *mut ffi::ibv_device) -> String {
    // SAFETY: `dev` is a live entry of a device list; its name is a NUL-terminated string.
    let name = unsafe { ffi::ibv_get_device_name(dev) };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: checked non-null above; libibverbs keeps the string alive with the device.
    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
}

/// On-Demand-Paging capabilities as reported by `ibv_query_device_ex`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OdpCaps {
    /// `odp_caps.general_caps` (bit 0: `IBV_ODP_SUPPORT`).
    pub general: u64,
    /// `odp_caps.per_transport_caps.rc_odp_caps` (`IBV_ODP_SUPPORT_*` bits).
    pub rc: u32,
    /// Unreliable-connected transport caps.
    pub uc: u32,
    /// Unreliable-datagram transport caps.
    pub ud: u32,
}

impl OdpCaps {
    /// `IBV_ODP_SUPPORT_SEND`.
    pub const SEND: u32 = ffi::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_SEND.0;
    /// `IBV_ODP_SUPPORT_RECV`.
    pub const RECV: u32 = ffi::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_RECV.0;
    /// `IBV_ODP_SUPPORT_WRITE`: the ODP MR may be the target of RDMA WRITE.
    pub const WRITE: u32 = ffi::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_WRITE.0;
    /// `IBV_ODP_SUPPORT_READ`: the ODP MR may be the source of RDMA READ.
    pub const READ: u32 = ffi::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_READ.0;

    /// Whether the device supports ODP at all.
    pub fn supported(&self) -> bool {
        self.general & ffi::ibv_odp_general_caps::IBV_ODP_SUPPORT.0 as u64 != 0
    }

    /// Whether RC queue pairs can use ODP memory for every operation in `bits`.
    pub fn rc_supports(&self, bits: u32) -> bool {
        self.supported() && self.rc & bits == bits
    }
}

/// What a device can do, from `ibv_query_device_ex`.
#[derive(Debug, Clone)]
pub struct DeviceCaps {
    /// Device name (`rxe0`).
    pub name: String,
    /// Firmware version string.
    pub fw_ver: String,
    /// Largest memory region the device can register, in bytes.
    pub max_mr_size: u64,
    /// Number of physical ports.
    pub phys_ports: u8,
    /// ODP capabilities.
    pub odp: OdpCaps,
    /// Maximum number of memory windows (0: none).
    pub max_mw: u32,
    /// Type 1 memory windows supported (`IBV_DEVICE_MEM_WINDOW`).
    pub mw_type1: bool,
    /// Type 2 memory windows supported (`IBV_DEVICE_MEM_WINDOW_TYPE_2A/2B`).
    pub mw_type2: bool,
    /// Maximum outstanding work requests per queue pair.
    pub max_qp_wr: u32,
    /// Maximum RDMA READs (and atomics) a queue pair may have outstanding, as initiator
    /// or as target.
    pub max_qp_rd_atom: u32,
}

/// Port state and addressing, from `ibv_query_port`.
#[derive(Debug, Clone, Copy)]
pub struct PortInfo {
    /// `IBV_PORT_ACTIVE` and friends (4 = active).
    pub state: u32,
    /// Active MTU enum value (`IBV_MTU_*`).
    pub active_mtu: u32,
    /// Number of GID table entries.
    pub gid_table_len: u32,
}

type QueryDeviceEx = unsafe extern "C" fn(
    *mut ffi::ibv_context,
    *const ffi::ibv_query_device_ex_input,
    *mut ffi::ibv_device_attr_ex,
    usize,
) -> i32;

/// An open RDMA device (`ibv_context`), closed on drop unless it was adopted from the
/// application with [`Context::from_raw`].
pub struct Context {
    ptr: NonNull<ffi::ibv_context>,
    name: String,
    /// Opened by filemr (closed on drop), or the application's (left open).
    owned: bool,
    /// The capabilities, queried once (they do not change while the device is open).
    caps: std::sync::OnceLock<DeviceCaps>,
}

// SAFETY: libibverbs contexts are thread-safe; all verbs on them may be called from any
// thread concurrently.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("name", &self.name).finish()
    }
}

impl Context {
    /// Open the device called `name`. Fails with `ENODEV` naming the devices that exist.
    pub fn open(name: &str) -> VerbsResult<Context> {
        let list = DeviceList::get()?;
        let mut seen = Vec::new();
        for dev in list.iter() {
            let n = device_name(dev);
            if n == name {
                // SAFETY: `dev` is a live device from the list, which outlives this call.
                let ctx = unsafe { ffi::ibv_open_device(dev) };
                let ptr =
                    NonNull::new(ctx).ok_or_else(|| VerbsError::last("ibv_open_device", name))?;
                return Ok(Context { ptr, name: n, owned: true, caps: Default::default() });
            }
            seen.push(n);
        }
        Err(VerbsError::new(
            "ibv_open_device",
            nix::errno::Errno::ENODEV,
            format!("no device named {name:?}; devices present: {seen:?}"),
        ))
    }

    /// Adopts a context the application opened (with `ibv_open_device`, librdmacm or
    /// another verbs library). filemr never closes it.
    ///
    /// # Safety
    ///
    /// `ctx` must be an open `ibv_context` of the libibverbs this process links, and the
    /// application must keep it open until this value and everything built on it
    /// (protection domains, completion queues, a manager and its regions) are dropped.
    pub unsafe fn from_raw(ctx: *mut ffi::ibv_context) -> VerbsResult<Context> {
        let Some(ptr) = NonNull::new(ctx) else {
            return Err(VerbsError::new("ibv_context", nix::errno::Errno::EINVAL, "NULL context"));
        };
        // SAFETY: the caller promises an open context; its `device` is set by libibverbs.
        let dev = unsafe { ptr.as_ref().device };
        let name = if dev.is_null() { String::new() } else { device_name(dev) };
        Ok(Context { ptr, name, owned: false, caps: Default::default() })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether filemr opened this context (and closes it on drop).
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// The raw `ibv_context`, for the application's own verbs calls. It stays valid while
    /// this value lives; do not close it.
    pub fn as_raw(&self) -> *mut ffi::ibv_context {
        self.ptr.as_ptr()
    }

    /// The capabilities from `ibv_query_device_ex` (ODP caps, max MR size, MW support),
    /// queried on the first call and kept (a queue pair's connection asks for them).
    pub fn caps(&self) -> VerbsResult<DeviceCaps> {
        if let Some(c) = self.caps.get() {
            return Ok(c.clone());
        }
        let c = self.query_caps()?;
        Ok(self.caps.get_or_init(|| c).clone())
    }

    fn query_caps(&self) -> VerbsResult<DeviceCaps> {
        // SAFETY: `ibv_device_attr_ex` is plain old data; all-zero is a valid value.
        let mut attr: ffi::ibv_device_attr_ex = unsafe { std::mem::zeroed() };
        let ret = match self.verbs_context() {
            // SAFETY: the op comes from the provider's live verbs_context; `attr` is a valid
            // out-pointer of the size we pass; a NULL input means "no comp_mask".
            Some(op) => unsafe {
                op(self.as_raw(), std::ptr::null(), &mut attr, std::mem::size_of_val(&attr))
            },
            None => libc::EOPNOTSUPP,
        };
        let ret = if ret == libc::EOPNOTSUPP || ret == libc::ENOSYS {
            // Legacy device: only the basic attributes exist (no ODP caps).
            // SAFETY: plain old data; zero is valid.
            attr = unsafe { std::mem::zeroed() };
            // SAFETY: the context is open and `orig_attr` is a valid out-pointer.
            unsafe { ffi::ibv_query_device(self.as_raw(), &mut attr.orig_attr) }
        } else {
            ret
        };
        if ret != 0 {
            return Err(VerbsError::from_ret("ibv_query_device_ex", ret, &self.name));
        }
        let o = &attr.orig_attr;
        let fw: Vec<u8> = o.fw_ver.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        let flags = o.device_cap_flags;
        use ffi::ibv_device_cap_flags as D;
        let t = &attr.odp_caps.per_transport_caps;
        Ok(DeviceCaps {
            name: self.name.clone(),
            fw_ver: String::from_utf8_lossy(&fw).into_owned(),
            max_mr_size: o.max_mr_size,
            phys_ports: o.phys_port_cnt,
            odp: OdpCaps {
                general: attr.odp_caps.general_caps,
                rc: t.rc_odp_caps,
                uc: t.uc_odp_caps,
                ud: t.ud_odp_caps,
            },
            max_mw: o.max_mw.max(0) as u32,
            mw_type1: flags & D::IBV_DEVICE_MEM_WINDOW.0 != 0,
            mw_type2: flags
                & (D::IBV_DEVICE_MEM_WINDOW_TYPE_2A.0 | D::IBV_DEVICE_MEM_WINDOW_TYPE_2B.0)
                != 0,
            max_qp_wr: o.max_qp_wr.max(0) as u32,
            max_qp_rd_atom: o.max_qp_rd_atom.max(0) as u32,
        })
    }

    /// The provider's `query_device_ex` op, as the C header's `verbs_get_ctx_op` finds it.
    ///
    /// (rdma-sys 0.3's own `verbs_get_ctx` compares `abi_compat` with `u32::MAX` instead of
    /// `UINTPTR_MAX`, so it never finds the extended context and its
    /// `ibv_query_device_ex` silently falls back to the legacy query without ODP caps.)
    fn verbs_context(&self) -> Option<QueryDeviceEx> {
        let ctx = self.as_raw();
        // SAFETY: the context is open; `abi_compat` is a plain field.
        let abi = unsafe { (*ctx).abi_compat };
        if abi as usize != usize::MAX {
            return None;
        }
        let off = std::mem::offset_of!(ffi::verbs_context, context);
        // SAFETY: an extended context (abi_compat == UINTPTR_MAX) is embedded in a
        // `verbs_context` at `off`, so stepping back stays inside that allocation.
        let vctx = unsafe { ctx.cast::<u8>().sub(off).cast::<ffi::verbs_context>() };
        // SAFETY: `vctx` points to the live verbs_context; `sz` is its first-known size.
        let sz = unsafe { (*vctx).sz };
        let needed = std::mem::size_of::<ffi::verbs_context>()
            - std::mem::offset_of!(ffi::verbs_context, query_device_ex);
        if sz < needed {
            return None;
        }
        // SAFETY: the provider's struct is large enough to hold the field (checked above).
        unsafe { (*vctx).query_device_ex }
    }

    /// Query a port (ports are numbered from 1).
    pub fn port(&self, port: u8) -> VerbsResult<PortInfo> {
        // SAFETY: plain old data; zero is valid.
        let mut attr: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid out-pointer of the right size.
        let ret = unsafe { ffi::___ibv_query_port(self.as_raw(), port, &mut attr) };
        if ret != 0 {
            return Err(VerbsError::from_ret("ibv_query_port", ret, format!("port {port}")));
        }
        Ok(PortInfo {
            state: attr.state,
            active_mtu: attr.active_mtu,
            gid_table_len: attr.gid_tbl_len.max(0) as u32,
        })
    }

    /// The GID at `index` of `port`, as 16 raw bytes.
    pub fn gid(&self, port: u8, index: u32) -> VerbsResult<[u8; 16]> {
        let mut gid = ffi::ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open, `gid` is a valid out-pointer.
        let ret = unsafe { ffi::ibv_query_gid(self.as_raw(), port, index as i32, &mut gid) };
        if ret != 0 {
            return Err(VerbsError::last("ibv_query_gid", format!("port {port} index {index}")));
        }
        // SAFETY: every bit pattern of the union is a valid `[u8; 16]`.
        Ok(unsafe { gid.raw })
    }

    /// A usable source GID on `port`: the first IPv4-mapped one (RoCE v2 over IPv4), else
    /// the first non-zero one. Returns `(index, gid)`.
    pub fn pick_gid(&self, port: u8) -> VerbsResult<(u8, [u8; 16])> {
        let len = self.port(port)?.gid_table_len.min(256);
        let mut first = None;
        for i in 0..len {
            let Ok(g) = self.gid(port, i) else { continue };
            if g == [0; 16] {
                continue;
            }
            if g[..10] == [0; 10] && g[10..12] == [0xff, 0xff] {
                return Ok((i as u8, g));
            }
            first.get_or_insert((i as u8, g));
        }
        first.ok_or_else(|| {
            VerbsError::new(
                "ibv_query_gid",
                nix::errno::Errno::ENOENT,
                format!("no GID on {} port {port}", self.name),
            )
        })
    }

    /// The context's asynchronous event file descriptor.
    pub(crate) fn async_fd(&self) -> RawFd {
        // SAFETY: the context is open; `async_fd` is a plain field.
        unsafe { (*self.as_raw()).async_fd }
    }

    /// Borrow the async event fd (valid while the context lives).
    pub fn async_event_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by the context, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.async_fd()) }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: every child object holds an Arc to the context (through its PD or CQ), so
        // none is alive here; the context is closed exactly once.
        unsafe { ffi::ibv_close_device(self.as_raw()) };
    }
}
