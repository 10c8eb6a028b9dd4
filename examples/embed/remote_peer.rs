//! The peer's side of the `embed` example and `tests/rxe_embed.rs`: a queue pair and a
//! registered buffer on another RDMA device (the remote machine's, here the other end of
//! the guest's veth link), made with filemr's own verbs wrappers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use filemr::grant::GrantInfo;
use filemr::sys::Mapping;
use filemr::verbs::{
    Access, CompletionQueue, Context, MemoryRegion, ProtectionDomain, QueuePair, RemoteBuf,
    VerbsResult, WcStatus,
};

/// A remote peer: its device, one RC queue pair and a buffer of `len` bytes.
pub struct RemotePeer {
    pub ctx: Arc<Context>,
    pub cq: Arc<CompletionQueue>,
    pub qp: QueuePair,
    pub gid_index: u8,
    pub gid: [u8; 16],
    buf: Arc<Mapping>,
    mr: MemoryRegion,
}

impl RemotePeer {
    /// Opens `device` and makes the queue pair and buffer (not connected yet).
    pub fn open(device: &str, len: usize) -> VerbsResult<RemotePeer> {
        let ctx = Arc::new(Context::open(device)?);
        let pd = ProtectionDomain::new(&ctx)?;
        let cq = CompletionQueue::new(&ctx, 64)?;
        let qp = QueuePair::new_rc(&pd, &cq)?;
        let (gid_index, gid) = ctx.pick_gid(1)?;
        let buf = Arc::new(Mapping::anonymous(len).expect("peer buffer"));
        let mr = MemoryRegion::register(&pd, &buf, Access::LOCAL_WRITE)?;
        Ok(RemotePeer { ctx, cq, qp, gid_index, gid, buf, mr })
    }

    /// A peer on `device` with a buffer of `len` bytes, connected to a new queue pair (and
    /// CQ) in `mgr`'s protection domain, which must exist (the device is there).
    pub fn connected_to(
        mgr: &filemr::region::Manager,
        device: &str,
        len: usize,
    ) -> (Arc<QueuePair>, RemotePeer) {
        let pd = mgr.protection_domain().expect("the manager's device is there");
        let cq = CompletionQueue::new(pd.context(), 64).unwrap();
        let qp = Arc::new(QueuePair::new_rc(&pd, &cq).unwrap());
        let peer = RemotePeer::open(device, len).unwrap();
        let (gid_index, gid) = pd.context().pick_gid(1).unwrap();
        qp.connect(1, gid_index, peer.qp.qp_num(), peer.gid).unwrap();
        peer.connect(qp.qp_num(), gid).unwrap();
        (qp, peer)
    }

    /// Connects to the server's queue pair `qpn` at `gid`.
    pub fn connect(&self, qpn: u32, gid: [u8; 16]) -> VerbsResult<()> {
        self.qp.connect(1, self.gid_index, qpn, gid)
    }

    /// RDMA WRITE of `data` at `off` bytes into the granted range.
    pub fn write(&self, g: &GrantInfo, off: u64, data: &[u8]) -> VerbsResult<WcStatus> {
        self.buf.write_at(0, data).expect("peer buffer");
        let to = RemoteBuf { addr: g.addr + off, rkey: g.rkey };
        self.qp.post_write(1, &self.mr, 0, data.len(), to)?;
        Ok(self.cq.wait_one(Duration::from_secs(30))?.status)
    }

    /// SEND of `data` (the server posted a receive for it).
    pub fn send(&self, data: &[u8]) -> VerbsResult<WcStatus> {
        self.buf.write_at(0, data).expect("peer buffer");
        self.qp.post_send(3, &self.mr, 0, data.len())?;
        Ok(self.cq.wait_one(Duration::from_secs(30))?.status)
    }

    /// RDMA READ of `len` bytes at `off` bytes into the granted range.
    pub fn read(&self, g: &GrantInfo, off: u64, len: usize) -> VerbsResult<(WcStatus, Vec<u8>)> {
        let from = RemoteBuf { addr: g.addr + off, rkey: g.rkey };
        self.qp.post_read(2, &self.mr, 0, len, from)?;
        let st = self.cq.wait_one(Duration::from_secs(30))?.status;
        let mut got = vec![0; len];
        self.buf.read_at(0, &mut got).expect("peer buffer");
        Ok((st, got))
    }
}
