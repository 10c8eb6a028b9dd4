use std::ptr::NonNull;
use std::sync::Arc;

use nix::errno::Errno;
use rdma_sys as ffi;

use super::cq::CompletionQueue;
use super::error::{VerbsError, VerbsResult};
use super::mr::MemoryRegion;
use super::pd::ProtectionDomain;

/// A remote buffer: the address and rkey a peer published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBuf {
    /// Remote virtual address.
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
}

/// A reliable-connected queue pair (`ibv_qp`, `IBV_QPT_RC`), destroyed on drop.
pub struct QueuePair {
    ptr: NonNull<ffi::ibv_qp>,
    pd: Arc<ProtectionDomain>,
    _cq: Arc<CompletionQueue>,
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
        init.send_cq = cq.as_ptr();
        init.recv_cq = cq.as_ptr();
        init.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = MAX_WR;
        init.cap.max_recv_wr = MAX_WR;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: PD and CQ are live and outlive the QP (we keep Arcs).
        let qp = unsafe { ffi::ibv_create_qp(pd.as_ptr(), &mut init) };
        let ptr = NonNull::new(qp).ok_or_else(|| VerbsError::last("ibv_create_qp", "RC"))?;
        Ok(QueuePair { ptr, pd: pd.clone(), _cq: cq.clone() })
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

    /// This QP's number.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is live until drop.
        unsafe { self.ptr.as_ref().qp_num }
    }

    fn modify(
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
        a.max_dest_rd_atomic = 1;
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
        a.max_rd_atomic = 1;
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
        if !Arc::ptr_eq(local.pd(), &self.pd) {
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
        // SAFETY: created by us and destroyed exactly once.
        let ret = unsafe { ffi::ibv_destroy_qp(self.ptr.as_ptr()) };
        if ret != 0 {
            tracing::error!(ret, "ibv_destroy_qp failed");
        }
    }
}
