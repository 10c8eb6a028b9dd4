//! One connection's message plumbing: its queue pair, a completion queue with its
//! completion channel, and registered slots for frames (receives always posted, sends
//! taken from a free list).

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::wire::{Frame, MAX_FRAME};
use crate::sys::Mapping;
use crate::verbs::{
    Access, CompChannel, CompletionQueue, MemoryRegion, ProtectionDomain, QueuePair, VerbsError,
    VerbsResult, WcStatus,
};

/// Receive slots kept posted: how many frames a peer may have in flight towards us.
pub(crate) const RECV_SLOTS: usize = 16;
/// Send slots: frames we may have in flight.
const SEND_SLOTS: usize = 16;
/// `wr_id` kinds (top half), slot or sequence number in the bottom half.
const RECV: u64 = 1 << 32;
const SEND: u64 = 2 << 32;
/// `wr_id` kind of the client's RDMA READ and WRITE through layouts.
pub(crate) const DATA: u64 = 3 << 32;
const KIND: u64 = 0xFFFF_FFFF << 32;

/// What one completion meant.
#[derive(Debug)]
pub(crate) enum Completion {
    /// A frame arrived (raw bytes, not yet decoded).
    Frame(Vec<u8>),
    /// A data transfer posted with a [`DATA`] `wr_id` finished.
    Data { wr_id: u64, status: WcStatus },
    /// A message send or receive failed: the queue pair is in error, the link is dead.
    Broken(WcStatus),
}

/// A connection's queue pair with its frame slots.
pub(crate) struct Link {
    pub(crate) qp: Arc<QueuePair>,
    buf: Arc<Mapping>,
    mr: MemoryRegion,
    free: Mutex<Vec<usize>>,
    /// Notifies a completion once armed ([`Link::arm`]); its fd is what the thread that
    /// polls this link sleeps on.
    notify: Arc<CompChannel>,
    armed: AtomicBool,
}

impl Link {
    /// A fresh RC queue pair in `pd` with its own completion queue (and channel) and
    /// slots.
    pub(crate) fn new(pd: &Arc<ProtectionDomain>) -> VerbsResult<Link> {
        let notify = CompChannel::new(pd.context())?;
        let cq = CompletionQueue::with_channel(pd.context(), 256, &notify)?;
        let qp = Arc::new(QueuePair::new_rc(pd, &cq)?);
        let buf = Arc::new(
            Mapping::anonymous((RECV_SLOTS + SEND_SLOTS) * MAX_FRAME)
                .map_err(|e| VerbsError::new("mmap", e.errno, "frame slots"))?,
        );
        let mr = MemoryRegion::register(pd, &buf, Access::LOCAL_WRITE)?;
        let free = Mutex::new((0..SEND_SLOTS).collect());
        Ok(Link { qp, buf, mr, free, notify, armed: AtomicBool::new(false) })
    }

    /// Asks for a notification at the next completion, unless one is already asked for.
    /// Completions that came before do not notify: poll once more before sleeping.
    pub(crate) fn arm(&self) -> VerbsResult<()> {
        if !self.armed.swap(true, Ordering::AcqRel)
            && let Err(e) = self.qp.cq().arm()
        {
            self.armed.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// The fd that turns readable when the armed queue gets a completion.
    pub(crate) fn notify_fd(&self) -> BorrowedFd<'_> {
        self.notify.fd()
    }

    /// Takes the notifications that came (after a sleep): the queue must be armed again.
    pub(crate) fn take_notifications(&self) {
        match self.notify.take_events() {
            Ok(0) => {}
            Ok(_) => self.armed.store(false, Ordering::Release),
            Err(e) => {
                tracing::warn!(error = %e, "reading a completion channel failed");
                self.armed.store(false, Ordering::Release);
            }
        }
    }

    /// Posts every receive slot (once the queue pair is past RESET).
    pub(crate) fn post_receives(&self) -> VerbsResult<()> {
        (0..RECV_SLOTS).try_for_each(|i| self.post_recv(i))
    }

    fn post_recv(&self, slot: usize) -> VerbsResult<()> {
        self.qp.post_recv(RECV | slot as u64, &self.mr, slot * MAX_FRAME, MAX_FRAME)
    }

    /// Sends `frame` (ENOBUFS when every send slot is still in flight).
    pub(crate) fn send(&self, frame: &Frame) -> Result<(), LinkSendError> {
        let bytes = frame.encode().map_err(LinkSendError::Wire)?;
        self.send_bytes(&bytes).map_err(LinkSendError::Verbs)
    }

    /// Sends `bytes` (at most one frame's worth) as one message.
    pub(crate) fn send_bytes(&self, bytes: &[u8]) -> VerbsResult<()> {
        if bytes.len() > MAX_FRAME {
            return Err(VerbsError::new(
                "ibv_post_send",
                nix::errno::Errno::EMSGSIZE,
                format!("{} bytes, frames are at most {MAX_FRAME}", bytes.len()),
            ));
        }
        let Some(slot) = self.free.lock().pop() else {
            return Err(VerbsError::new(
                "ibv_post_send",
                nix::errno::Errno::ENOBUFS,
                "every frame send slot is in flight",
            ));
        };
        let off = (RECV_SLOTS + slot) * MAX_FRAME;
        let posted = self
            .buf
            .write_at(off, bytes)
            .map_err(|e| VerbsError::new("memcpy", e.errno, "frame slot"))
            .and_then(|()| self.qp.post_send(SEND | slot as u64, &self.mr, off, bytes.len()));
        if posted.is_err() {
            self.free.lock().push(slot);
        }
        posted
    }

    /// Whether every frame sent has completed (its send slot is free again).
    pub(crate) fn sends_done(&self) -> bool {
        self.free.lock().len() == SEND_SLOTS
    }

    /// Everything that completed since the last call; receive slots are reposted.
    pub(crate) fn poll(&self) -> VerbsResult<Vec<Completion>> {
        let mut out = Vec::new();
        for wc in self.qp.cq().poll(32)? {
            let slot = (wc.wr_id & !KIND) as usize;
            match wc.wr_id & KIND {
                RECV if wc.status == WcStatus::Success => {
                    let len = (wc.byte_len as usize).min(MAX_FRAME);
                    let mut bytes = vec![0; len];
                    self.buf
                        .read_at(slot * MAX_FRAME, &mut bytes)
                        .map_err(|e| VerbsError::new("memcpy", e.errno, "frame slot"))?;
                    self.post_recv(slot)?;
                    out.push(Completion::Frame(bytes));
                }
                SEND if wc.status == WcStatus::Success => self.free.lock().push(slot),
                RECV | SEND => out.push(Completion::Broken(wc.status)),
                _ => out.push(Completion::Data { wr_id: wc.wr_id, status: wc.status }),
            }
        }
        Ok(out)
    }
}

/// Why a frame could not be sent.
#[derive(Debug)]
pub(crate) enum LinkSendError {
    /// It does not encode.
    Wire(super::wire::WireError),
    /// Posting failed.
    Verbs(VerbsError),
}
