use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use parking_lot::Mutex;
use rdma_sys as ffi;

use super::device::Context;
use super::error::{VerbsError, VerbsResult};

/// Status of a work completion (`ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcStatus {
    /// `IBV_WC_SUCCESS`.
    Success,
    /// `IBV_WC_REM_ACCESS_ERR`: the peer refused the access (bad rkey, range or rights).
    RemoteAccess,
    /// `IBV_WC_LOC_PROT_ERR`: the local SGE did not match a local MR.
    LocalProtection,
    /// `IBV_WC_WR_FLUSH_ERR`: flushed because the QP went to the error state.
    Flushed,
    /// `IBV_WC_RETRY_EXC_ERR`: the peer never answered.
    RetryExceeded,
    /// Any other status, raw.
    Other(u32),
}

impl WcStatus {
    fn from_raw(s: u32) -> WcStatus {
        use ffi::ibv_wc_status as S;
        match s {
            S::IBV_WC_SUCCESS => WcStatus::Success,
            S::IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
            S::IBV_WC_LOC_PROT_ERR => WcStatus::LocalProtection,
            S::IBV_WC_WR_FLUSH_ERR => WcStatus::Flushed,
            S::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
            other => WcStatus::Other(other),
        }
    }
}

/// One polled work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The `wr_id` the work request was posted with.
    pub wr_id: u64,
    /// Its status.
    pub status: WcStatus,
    /// Bytes transferred (receives).
    pub byte_len: u32,
    /// The local QP number.
    pub qp_num: u32,
}

/// `wr_id` values whose top 16 bits are this tag belong to filemr's own work requests
/// (memory-window binds and invalidations it posts on a queue pair it shares with the
/// application). [`CompletionQueue::poll`] never returns their completions: it keeps them
/// for the filemr call waiting on them. Applications must not post work with such ids.
pub const RESERVED_WR_ID_TAG: u64 = 0xF11E << 48;

/// Whether `wr_id` carries [`RESERVED_WR_ID_TAG`].
pub fn is_reserved_wr_id(wr_id: u64) -> bool {
    wr_id & (0xFFFF << 48) == RESERVED_WR_ID_TAG
}

/// Completions polled by one caller on behalf of another: filemr's own (keyed by
/// `wr_id`) found by an application poll, and the application's found while filemr
/// waited for its own.
#[derive(Default)]
struct Stash {
    reserved: HashMap<u64, WorkCompletion>,
    others: VecDeque<WorkCompletion>,
}

impl Stash {
    /// Keeps `wc` if it is one of filemr's own; hands it back otherwise.
    fn keep_reserved(&mut self, wc: WorkCompletion) -> Option<WorkCompletion> {
        if is_reserved_wr_id(wc.wr_id) {
            self.reserved.insert(wc.wr_id, wc);
            None
        } else {
            Some(wc)
        }
    }
}

/// A completion queue (`ibv_cq`), destroyed on drop.
///
/// It may be shared between the application and filemr: completions of filemr's own
/// work requests (see [`RESERVED_WR_ID_TAG`]) are set aside for filemr and never
/// returned by [`CompletionQueue::poll`].
pub struct CompletionQueue {
    ptr: NonNull<ffi::ibv_cq>,
    ctx: Arc<Context>,
    stash: Mutex<Stash>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// Create a CQ with room for `entries` completions.
    pub fn new(ctx: &Arc<Context>, entries: u32) -> VerbsResult<Arc<CompletionQueue>> {
        let n = i32::try_from(entries).map_err(|_| {
            VerbsError::new("ibv_create_cq", Errno::EINVAL, format!("{entries} entries"))
        })?;
        // SAFETY: the context is live; no channel or user context is attached.
        let cq = unsafe {
            ffi::ibv_create_cq(ctx.as_ptr(), n, std::ptr::null_mut(), std::ptr::null_mut(), 0)
        };
        let ptr = NonNull::new(cq)
            .ok_or_else(|| VerbsError::last("ibv_create_cq", format!("{entries} entries")))?;
        Ok(Arc::new(CompletionQueue { ptr, ctx: ctx.clone(), stash: Mutex::default() }))
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_cq {
        self.ptr.as_ptr()
    }

    /// The device context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// One completion straight from the device queue, if any.
    fn poll_raw(&self) -> VerbsResult<Option<WorkCompletion>> {
        // SAFETY: `ibv_wc` is plain old data; zero is a valid value to be overwritten.
        let mut wc: ffi::ibv_wc = unsafe { std::mem::zeroed() };
        // SAFETY: the CQ is live and `wc` has room for one entry.
        let n = unsafe { ffi::ibv_poll_cq(self.as_ptr(), 1, &mut wc) };
        if n < 0 {
            return Err(VerbsError::from_ret("ibv_poll_cq", n, ""));
        }
        Ok((n > 0).then(|| WorkCompletion {
            wr_id: wc.wr_id,
            status: WcStatus::from_raw(wc.status),
            byte_len: wc.byte_len,
            qp_num: wc.qp_num,
        }))
    }

    /// Poll up to `max` completions without blocking (completions of filemr's own work
    /// requests are set aside, not returned).
    pub fn poll(&self, max: usize) -> VerbsResult<Vec<WorkCompletion>> {
        let mut stash = self.stash.lock();
        let take = max.min(stash.others.len());
        let mut out: Vec<WorkCompletion> = stash.others.drain(..take).collect();
        while out.len() < max {
            let Some(wc) = self.poll_raw()? else { break };
            out.extend(stash.keep_reserved(wc));
        }
        Ok(out)
    }

    /// Waits for the completion of filemr's own work request `wr_id` (see
    /// [`RESERVED_WR_ID_TAG`]) for up to `timeout` (`ETIMEDOUT`), keeping the other
    /// completions it meets for [`CompletionQueue::poll`].
    pub(crate) fn wait_reserved(
        &self,
        wr_id: u64,
        timeout: Duration,
    ) -> VerbsResult<WorkCompletion> {
        let start = Instant::now();
        loop {
            {
                let mut stash = self.stash.lock();
                if let Some(wc) = stash.reserved.remove(&wr_id) {
                    return Ok(wc);
                }
                while let Some(wc) = self.poll_raw()? {
                    if wc.wr_id == wr_id {
                        return Ok(wc);
                    }
                    if let Some(other) = stash.keep_reserved(wc) {
                        stash.others.push_back(other);
                    }
                }
            }
            if start.elapsed() > timeout {
                return Err(VerbsError::new(
                    "ibv_poll_cq",
                    Errno::ETIMEDOUT,
                    format!("no completion of work request {wr_id:#x} in {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Poll until one completion arrives or `timeout` passes (`ETIMEDOUT`).
    pub fn wait_one(&self, timeout: Duration) -> VerbsResult<WorkCompletion> {
        let start = Instant::now();
        loop {
            if let Some(wc) = self.poll(1)?.pop() {
                return Ok(wc);
            }
            if start.elapsed() > timeout {
                return Err(VerbsError::new(
                    "ibv_poll_cq",
                    Errno::ETIMEDOUT,
                    format!("no completion in {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: QPs using this CQ hold an Arc to it, so none is alive; destroyed once.
        let ret = unsafe { ffi::ibv_destroy_cq(self.as_ptr()) };
        if ret != 0 {
            tracing::error!(ret, "ibv_destroy_cq failed");
        }
    }
}
