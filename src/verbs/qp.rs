use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use rdma_sys as ffi;

use super::access::Access;
use super::cq::{CompletionQueue, RESERVED_WR_ID_TAG, WcStatus};
use super::error::{VerbsError, VerbsResult};
use super::mr::MemoryRegion;
use super::mw::{MemoryWindow, MwType};
use super::pd::ProtectionDomain;

/// How long filemr waits for the completion of a bind or invalidate it posted.
const LOCAL_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A queue pair's state (`ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// `IBV_QPS_RESET`.
    Reset,
    /// `IBV_QPS_INIT`.
    Init,
    /// `IBV_QPS_RTR`.
    ReadyToReceive,
    /// `IBV_QPS_RTS`: connected, can send.
    ReadyToSend,
    /// `IBV_QPS_SQD`.
    SendQueueDrained,
    /// `IBV_QPS_SQE`.
    SendQueueError,
    /// `IBV_QPS_ERR`: every posted work request is flushed.
    Error,
    /// Any other value, raw.
    Other(u32),
}

/// A remote buffer: the address and rkey a peer published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBuf {
    /// Remote virtual address.
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
}

/// A reliable-connected queue pair (`ibv_qp`, `IBV_QPT_RC`), destroyed on drop unless it
/// was adopted from the application with [`QueuePair::from_raw`].
pub struct QueuePair {
    ptr: NonNull<ffi::ibv_qp>,
    pd: Arc<ProtectionDomain>,
    cq: Arc<CompletionQueue>,
    /// Sequence of filemr's own work requests on this QP (their `wr_id`s carry
    /// [`RESERVED_WR_ID_TAG`]).
    local_ops: AtomicU64,
    owned: bool,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for QueuePair {}
// SAFETY: as above.
unsafe impl Sync for QueuePair {}

const MAX_WR: u32 = 64;

impl QueuePair {
    /// Create an RC QP whose send and receive completions go to `cq`.
    pub fn new_rc(pd: &Arc<ProtectionDomain>, cq: &Arc<CompletionQueue>) -> VerbsResult<QueuePair> {
        // SAFETY: plain old data; zero is valid and every field we need is set below.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.as_raw();
        init.recv_cq = cq.as_raw();
        init.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = MAX_WR;
        init.cap.max_recv_wr = MAX_WR;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: PD and CQ are live and outlive the QP (we keep Arcs).
        let qp = unsafe { ffi::ibv_create_qp(pd.as_raw(), &mut init) };
        let ptr = NonNull::new(qp).ok_or_else(|| VerbsError::last("ibv_create_qp", "RC"))?;
        Ok(QueuePair {
            ptr,
            pd: pd.clone(),
            cq: cq.clone(),
            local_ops: AtomicU64::new(0),
            owned: true,
        })
    }

    /// Adopts an RC queue pair the application created in `pd` with `send_cq` as its send
    /// completion queue, so regions can be granted on it: filemr posts its memory-window
    /// binds and invalidations on it (signaled, with reserved `wr_id`s, see
    /// [`RESERVED_WR_ID_TAG`]; each takes one send-queue slot until its completion) and
    /// finds their completions in `send_cq` as its [`CqPolling`](super::CqPolling)
    /// says. filemr never destroys or modifies it. Fails with `EINVAL` for a NULL pointer,
    /// a queue pair of another protection domain, another send completion queue than
    /// `send_cq`, or a queue pair that is not reliable-connected.
    ///
    /// # Safety
    ///
    /// `qp` must be a live `ibv_qp`, and the application must keep it until this value
    /// and the grants made on it are dropped.
    pub unsafe fn from_raw(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        qp: *mut ffi::ibv_qp,
    ) -> VerbsResult<QueuePair> {
        let bad = |why: String| VerbsError::new("ibv_qp", Errno::EINVAL, why);
        let Some(ptr) = NonNull::new(qp) else { return Err(bad("NULL queue pair".into())) };
        // SAFETY: the caller promises a live QP; these fields are set by libibverbs.
        let (qp_pd, qp_cq, qp_type, num) = unsafe {
            let q = ptr.as_ref();
            (q.pd, q.send_cq, q.qp_type, q.qp_num)
        };
        if qp_pd != pd.as_raw() {
            return Err(bad(format!("queue pair {num} is in another protection domain")));
        }
        if qp_cq != send_cq.as_raw() {
            return Err(bad(format!("queue pair {num} sends to another completion queue")));
        }
        if qp_type != ffi::ibv_qp_type::IBV_QPT_RC {
            return Err(bad(format!(
                "queue pair {num} is not reliable-connected (type {qp_type})"
            )));
        }
        Ok(QueuePair {
            ptr,
            pd: pd.clone(),
            cq: send_cq.clone(),
            local_ops: AtomicU64::new(0),
            owned: false,
        })
    }

    /// The raw `ibv_qp`. It stays valid while this value lives.
    pub fn as_raw(&self) -> *mut ffi::ibv_qp {
        self.ptr.as_ptr()
    }

    /// Whether filemr created this queue pair (and destroys it on drop).
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// The remote rights the queue pair lets peers use (`IBV_QP_ACCESS_FLAGS`).
    pub fn remote_access(&self) -> VerbsResult<Access> {
        let attr = self.query(ffi::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS, "IBV_QP_ACCESS_FLAGS")?;
        Ok(Access::from_bits(attr.qp_access_flags))
    }

    /// Two RC QPs on the same device connected to each other through the device's own
    /// GID on `port` (loopback): what a local test peer needs.
    pub fn loopback_pair(
        pd: &Arc<ProtectionDomain>,
        cq: &Arc<CompletionQueue>,
        port: u8,
    ) -> VerbsResult<(QueuePair, QueuePair)> {
        let (gid_index, gid) = pd.context().pick_gid(port)?;
        let a = QueuePair::new_rc(pd, cq)?;
        let b = QueuePair::new_rc(pd, cq)?;
        a.connect(port, gid_index, b.qp_num(), gid)?;
        b.connect(port, gid_index, a.qp_num(), gid)?;
        Ok((a, b))
    }

    /// Its protection domain.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// Its send (and receive) completion queue.
    pub fn cq(&self) -> &Arc<CompletionQueue> {
        &self.cq
    }

    /// `ibv_query_qp` of the attributes in `mask` (`what` names them in errors).
    fn query(&self, mask: ffi::ibv_qp_attr_mask, what: &str) -> VerbsResult<ffi::ibv_qp_attr> {
        // SAFETY: plain old data, overwritten by the call.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the QP is live; both out-pointers are valid.
        let ret =
            unsafe { ffi::ibv_query_qp(self.ptr.as_ptr(), &mut attr, mask.0 as i32, &mut init) };
        if ret != 0 {
            return Err(VerbsError::from_ret("ibv_query_qp", ret, what.to_string()));
        }
        Ok(attr)
    }

    /// The path MTU in bytes (`ibv_query_qp`): the largest packet of a transfer on this
    /// connection (0 before the QP is connected).
    pub fn path_mtu(&self) -> VerbsResult<usize> {
        let attr = self.query(ffi::ibv_qp_attr_mask::IBV_QP_PATH_MTU, "IBV_QP_PATH_MTU")?;
        // IBV_MTU_256 = 1 ... IBV_MTU_4096 = 5.
        let code = attr.path_mtu;
        Ok(if (1..=5).contains(&code) { 128 << code } else { 0 })
    }

    /// The QP's current state (`ibv_query_qp`).
    pub fn state(&self) -> VerbsResult<QpState> {
        use ffi::ibv_qp_state as S;
        let attr = self.query(ffi::ibv_qp_attr_mask::IBV_QP_STATE, "IBV_QP_STATE")?;
        Ok(match attr.qp_state {
            S::IBV_QPS_RESET => QpState::Reset,
            S::IBV_QPS_INIT => QpState::Init,
            S::IBV_QPS_RTR => QpState::ReadyToReceive,
            S::IBV_QPS_RTS => QpState::ReadyToSend,
            S::IBV_QPS_SQD => QpState::SendQueueDrained,
            S::IBV_QPS_SQE => QpState::SendQueueError,
            S::IBV_QPS_ERR => QpState::Error,
            other => QpState::Other(other),
        })
    }

    /// Binds the type-2 window `mw` to `len` bytes of `mr` at `addr` (in `mr`'s address
    /// space, see [`MemoryRegion::addr`]) with `access` (remote rights only), keeping the
    /// window's key, and waits for the bind to complete. Returns the key peers use.
    ///
    /// The window must be free (never bound, or invalidated); `mr` needs
    /// [`Access::MW_BIND`]. A failed bind moves this QP to the error state (the verbs
    /// specification's rule; rxe follows it). The provider never updates `ibv_mw.rkey`
    /// after a type-2 bind, so the key is not changed on rebinds: a window keeps the key
    /// it was allocated with for its whole life. The peer must reach the window through
    /// this QP: a bound type-2 window is usable only on the QP that bound it.
    pub fn bind_mw(
        &self,
        mw: &MemoryWindow,
        mr: &MemoryRegion,
        addr: u64,
        len: usize,
        access: Access,
    ) -> VerbsResult<u32> {
        let detail =
            || format!("mw {:#x} to mr {:#x} at {addr:#x}+{len} {access:?}", mw.rkey(), mr.lkey());
        let inside = addr
            .checked_sub(mr.addr())
            .and_then(|off| off.checked_add(len as u64))
            .is_some_and(|end| end <= mr.len() as u64);
        if mw.kind() != MwType::Type2 || !inside || len == 0 || mr.pd().as_raw() != self.pd.as_raw()
        {
            return Err(VerbsError::new("ibv_post_send(BIND_MW)", Errno::EINVAL, detail()));
        }
        // SAFETY: plain old data (pointers null, unions zeroed); fields set below.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.opcode = ffi::ibv_wr_opcode::IBV_WR_BIND_MW;
        wr.bind_mw_tso_union.bind_mw = ffi::bind_mw_t {
            mw: mw.as_ptr(),
            rkey: mw.rkey(),
            bind_info: ffi::ibv_mw_bind_info {
                mr: mr.as_ptr(),
                addr,
                length: len as u64,
                mw_access_flags: access.bits(),
            },
        };
        self.local_op(wr, "ibv_post_send(BIND_MW)", detail)?;
        Ok(mw.rkey())
    }

    /// Invalidates the type-2 window `mw` (`IBV_WR_LOCAL_INV`) and waits for it: peers'
    /// next access with its key fails with a remote access error, and the window is free
    /// to bind again. Invalidating a window that is not bound fails and moves this QP to
    /// the error state.
    pub fn invalidate_mw(&self, mw: &MemoryWindow) -> VerbsResult<()> {
        let detail = || format!("mw {:#x}", mw.rkey());
        // SAFETY: plain old data; fields set below.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.opcode = ffi::ibv_wr_opcode::IBV_WR_LOCAL_INV;
        wr.imm_data_invalidated_rkey_union.invalidated_rkey = mw.rkey();
        self.local_op(wr, "ibv_post_send(LOCAL_INV)", detail)
    }

    /// Posts one of filemr's own signaled work requests and waits for its completion.
    fn local_op(
        &self,
        mut wr: ffi::ibv_send_wr,
        verb: &'static str,
        detail: impl Fn() -> String,
    ) -> VerbsResult<()> {
        let seq = self.local_ops.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1);
        wr.wr_id = RESERVED_WR_ID_TAG | seq;
        wr.send_flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP is live; `wr` lives across the call (the provider copies it); the
        // window and region it names are live (borrowed by the caller).
        let ret = unsafe { ffi::ibv_post_send(self.ptr.as_ptr(), &mut wr, &mut bad) };
        if ret != 0 {
            return Err(VerbsError::from_ret(verb, ret, detail()));
        }
        let wc = self.cq.wait_reserved(wr.wr_id, LOCAL_OP_TIMEOUT)?;
        match wc.status {
            WcStatus::Success => Ok(()),
            other => Err(VerbsError::new(
                verb,
                Errno::EIO,
                format!("{}: completion {other:?}", detail()),
            )),
        }
    }

    /// This QP's number.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is live until drop.
        unsafe { self.ptr.as_ref().qp_num }
    }

    pub(super) fn modify(
        &self,
        attr: &mut ffi::ibv_qp_attr,
        mask: ffi::ibv_qp_attr_mask,
        what: &str,
    ) -> VerbsResult<()> {
        // SAFETY: the QP is live; `attr` is a valid attribute block for `mask`.
        let ret = unsafe { ffi::ibv_modify_qp(self.ptr.as_ptr(), attr, mask.0 as i32) };
        if ret != 0 {
            return Err(VerbsError::from_ret("ibv_modify_qp", ret, what.to_string()));
        }
        Ok(())
    }

    /// Bring this QP to RTS connected to `remote_qpn` reached through `remote_gid` on
    /// `port` (RoCE: GRH addressing with `gid_index` as the source GID).
    pub fn connect(
        &self,
        port: u8,
        gid_index: u8,
        remote_qpn: u32,
        remote_gid: [u8; 16],
    ) -> VerbsResult<()> {
        use ffi::ibv_qp_attr_mask as M;
        use ffi::ibv_qp_state as S;
        // Outstanding RDMA READs, each way: the device's limit, up to 16 (one at a time, as
        // before, would serialise a peer's reads of a region).
        let rd_atomic = self.pd.context().caps().map_or(1, |c| c.max_qp_rd_atom.clamp(1, 16)) as u8;
        // SAFETY: plain old data; zero is valid.
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = S::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = port;
        a.qp_access_flags = (super::Access::LOCAL_WRITE
            | super::Access::REMOTE_WRITE
            | super::Access::REMOTE_READ
            | super::Access::REMOTE_ATOMIC)
            .bits();
        self.modify(
            &mut a,
            M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS,
            "RESET->INIT",
        )?;

        // SAFETY: as above.
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = S::IBV_QPS_RTR;
        a.path_mtu = self.pd.context().port(port)?.active_mtu;
        a.dest_qp_num = remote_qpn;
        a.rq_psn = 0;
        a.max_dest_rd_atomic = rd_atomic;
        a.min_rnr_timer = 12;
        a.ah_attr.is_global = 1;
        a.ah_attr.port_num = port;
        a.ah_attr.grh.dgid = ffi::ibv_gid { raw: remote_gid };
        a.ah_attr.grh.sgid_index = gid_index;
        a.ah_attr.grh.hop_limit = 1;
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER,
            "INIT->RTR",
        )?;

        // SAFETY: as above.
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = S::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = 0;
        a.max_rd_atomic = rd_atomic;
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_MAX_QP_RD_ATOMIC,
            "RTR->RTS",
        )
    }

    fn sge(&self, local: &MemoryRegion, offset: usize, len: usize) -> VerbsResult<ffi::ibv_sge> {
        let end = offset.checked_add(len).filter(|e| *e <= local.len());
        let length = u32::try_from(len).ok().filter(|_| end.is_some());
        let Some(length) = length else {
            return Err(VerbsError::new(
                "ibv_post_send",
                Errno::EINVAL,
                format!("local range {offset}+{len} outside MR of {} bytes", local.len()),
            ));
        };
        if local.pd().as_raw() != self.pd.as_raw() {
            return Err(VerbsError::new(
                "ibv_post_send",
                Errno::EINVAL,
                "local MR is on another PD",
            ));
        }
        Ok(ffi::ibv_sge { addr: local.addr() + offset as u64, length, lkey: local.lkey() })
    }

    fn post(
        &self,
        opcode: u32,
        wr_id: u64,
        mut sge: ffi::ibv_sge,
        remote: Option<RemoteBuf>,
    ) -> VerbsResult<()> {
        // SAFETY: plain old data (pointers null, unions zeroed); fields set below.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opcode;
        wr.send_flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        if let Some(r) = remote {
            wr.wr.rdma = ffi::rdma_t { remote_addr: r.addr, rkey: r.rkey };
        }
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP is live; `wr` and `sge` live across the call (the provider copies
        // them); the local buffer is covered by a registered MR checked in `sge`.
        let ret = unsafe { ffi::ibv_post_send(self.ptr.as_ptr(), &mut wr, &mut bad) };
        if ret != 0 {
            return Err(VerbsError::from_ret("ibv_post_send", ret, format!("opcode {opcode}")));
        }
        Ok(())
    }

    /// Post a signaled RDMA WRITE of `local[offset..offset+len]` to `remote`.
    pub fn post_write(
        &self,
        wr_id: u64,
        local: &MemoryRegion,
        offset: usize,
        len: usize,
        remote: RemoteBuf,
    ) -> VerbsResult<()> {
        let sge = self.sge(local, offset, len)?;
        self.post(ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE, wr_id, sge, Some(remote))
    }

    /// Post a signaled RDMA READ of `len` bytes at `remote` into `local[offset..]`.
    pub fn post_read(
        &self,
        wr_id: u64,
        local: &MemoryRegion,
        offset: usize,
        len: usize,
        remote: RemoteBuf,
    ) -> VerbsResult<()> {
        let sge = self.sge(local, offset, len)?;
        self.post(ffi::ibv_wr_opcode::IBV_WR_RDMA_READ, wr_id, sge, Some(remote))
    }

    /// Post a signaled SEND of `local[offset..offset+len]`.
    pub fn post_send(
        &self,
        wr_id: u64,
        local: &MemoryRegion,
        offset: usize,
        len: usize,
    ) -> VerbsResult<()> {
        let sge = self.sge(local, offset, len)?;
        self.post(ffi::ibv_wr_opcode::IBV_WR_SEND, wr_id, sge, None)
    }

    /// Post a RECV into `local[offset..offset+len]`.
    pub fn post_recv(
        &self,
        wr_id: u64,
        local: &MemoryRegion,
        offset: usize,
        len: usize,
    ) -> VerbsResult<()> {
        let mut sge = self.sge(local, offset, len)?;
        let mut wr =
            ffi::ibv_recv_wr { wr_id, next: std::ptr::null_mut(), sg_list: &mut sge, num_sge: 1 };
        let mut bad: *mut ffi::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: the QP is live; `wr`/`sge` live across the call; the buffer is in an MR.
        let ret = unsafe { ffi::ibv_post_recv(self.ptr.as_ptr(), &mut wr, &mut bad) };
        if ret != 0 {
            return Err(VerbsError::from_ret("ibv_post_recv", ret, ""));
        }
        Ok(())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: created by us and destroyed exactly once.
        let ret = unsafe { ffi::ibv_destroy_qp(self.ptr.as_ptr()) };
        if ret != 0 {
            tracing::error!(ret, "ibv_destroy_qp failed");
        }
    }
}
