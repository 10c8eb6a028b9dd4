use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use parking_lot::{Condvar, Mutex};
use rdma_sys as ffi;

use super::comp_channel::CompChannel;
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
/// waited for its own (kept whole: the application may need every field).
#[derive(Default)]
struct Stash {
    reserved: HashMap<u64, WorkCompletion>,
    others: VecDeque<ffi::ibv_wc>,
    /// filemr's work requests whose wait timed out: their completions, if they come,
    /// are dropped rather than kept for nobody.
    abandoned: std::collections::HashSet<u64>,
}

impl Stash {
    /// Keeps `wc` if it is one of filemr's own; hands it back otherwise.
    fn keep_reserved(&mut self, wc: ffi::ibv_wc) -> Option<ffi::ibv_wc> {
        if is_reserved_wr_id(wc.wr_id) {
            self.file_reserved(&wc);
            None
        } else {
            Some(wc)
        }
    }

    /// Keeps one of filemr's completions for its waiter (or drops it: nobody waits).
    fn file_reserved(&mut self, wc: &ffi::ibv_wc) {
        if !self.abandoned.remove(&wc.wr_id) {
            self.reserved.insert(wc.wr_id, WorkCompletion::from_raw(wc));
        }
    }
}

impl WorkCompletion {
    fn from_raw(wc: &ffi::ibv_wc) -> WorkCompletion {
        WorkCompletion {
            wr_id: wc.wr_id,
            status: WcStatus::from_raw(wc.status),
            byte_len: wc.byte_len,
            qp_num: wc.qp_num,
        }
    }
}

/// Who polls a completion queue that carries filemr's own completions (see
/// [`RESERVED_WR_ID_TAG`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CqPolling {
    /// filemr polls it when it waits for its own work, and the application polls it
    /// only through [`CompletionQueue::poll`] or [`CompletionQueue::poll_wc`] (never
    /// `ibv_poll_cq` directly): each side sets aside what it finds for the other. Works
    /// whatever thread calls what; every queue filemr creates is of this kind.
    Shared,
    /// Only the application polls it, with its own code, and hands every completion
    /// whose `wr_id` is reserved to [`CompletionQueue::deliver`]. filemr's calls that
    /// post work on a queue pair using it (a grant, a return, a rebind or retarget
    /// during a break) wait for that hand-over, so they must not run on the thread that
    /// polls, and time out (`ETIMEDOUT`) if the hand-over never comes.
    Application,
}

/// A completion queue (`ibv_cq`), destroyed on drop unless it was adopted from the
/// application with [`CompletionQueue::from_raw`].
///
/// It may be shared between the application and filemr: completions of filemr's own
/// work requests (see [`RESERVED_WR_ID_TAG`]) are set aside for filemr and never
/// returned by [`CompletionQueue::poll`]; see [`CqPolling`] for the two ways to share.
pub struct CompletionQueue {
    ptr: NonNull<ffi::ibv_cq>,
    ctx: Arc<Context>,
    polling: CqPolling,
    owned: bool,
    stash: Mutex<Stash>,
    /// Signalled when [`CompletionQueue::deliver`] files one of filemr's completions.
    delivered: Condvar,
    /// The completion channel it notifies, kept alive until the queue is destroyed.
    _channel: Option<Arc<CompChannel>>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// Create a CQ with room for `entries` completions.
    pub fn new(ctx: &Arc<Context>, entries: u32) -> VerbsResult<Arc<CompletionQueue>> {
        Self::create(ctx, entries, None)
    }

    pub(super) fn create(
        ctx: &Arc<Context>,
        entries: u32,
        channel: Option<Arc<CompChannel>>,
    ) -> VerbsResult<Arc<CompletionQueue>> {
        let n = i32::try_from(entries).map_err(|_| {
            VerbsError::new("ibv_create_cq", Errno::EINVAL, format!("{entries} entries"))
        })?;
        let ch = channel.as_ref().map_or(std::ptr::null_mut(), |c| c.as_raw());
        // SAFETY: the context is live; the channel, if any, is live and of this context
        // (kept alive by the queue); no user context is attached.
        let cq = unsafe { ffi::ibv_create_cq(ctx.as_raw(), n, std::ptr::null_mut(), ch, 0) };
        let ptr = NonNull::new(cq)
            .ok_or_else(|| VerbsError::last("ibv_create_cq", format!("{entries} entries")))?;
        Ok(Self::wrap(ptr, ctx, CqPolling::Shared, true, channel))
    }

    fn wrap(
        ptr: NonNull<ffi::ibv_cq>,
        ctx: &Arc<Context>,
        polling: CqPolling,
        owned: bool,
        channel: Option<Arc<CompChannel>>,
    ) -> Arc<CompletionQueue> {
        Arc::new(CompletionQueue {
            ptr,
            ctx: ctx.clone(),
            polling,
            owned,
            stash: Mutex::default(),
            delivered: Condvar::new(),
            _channel: channel,
        })
    }

    /// Adopts a completion queue the application created on `ctx`, polled as `polling`
    /// says. filemr never destroys it. Fails with `EINVAL` for a NULL pointer or a queue
    /// of another context.
    ///
    /// # Safety
    ///
    /// `cq` must be a live `ibv_cq`, and the application must keep it until this value
    /// and the queue pairs adopted with it are dropped.
    pub unsafe fn from_raw(
        ctx: &Arc<Context>,
        cq: *mut ffi::ibv_cq,
        polling: CqPolling,
    ) -> VerbsResult<Arc<CompletionQueue>> {
        let Some(ptr) = NonNull::new(cq) else {
            return Err(VerbsError::new("ibv_cq", Errno::EINVAL, "NULL completion queue"));
        };
        // SAFETY: the caller promises a live CQ; `context` is set by libibverbs.
        if unsafe { ptr.as_ref().context } != ctx.as_raw() {
            return Err(VerbsError::new(
                "ibv_cq",
                Errno::EINVAL,
                format!("the completion queue belongs to another context than {}'s", ctx.name()),
            ));
        }
        Ok(Self::wrap(ptr, ctx, polling, false, None))
    }

    /// The raw `ibv_cq` (to create queue pairs on it). Poll it as its [`CqPolling`] says.
    pub fn as_raw(&self) -> *mut ffi::ibv_cq {
        self.ptr.as_ptr()
    }

    /// Who polls it.
    pub fn polling(&self) -> CqPolling {
        self.polling
    }

    /// The device context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// One completion straight from the device queue, if any.
    fn poll_raw(&self) -> VerbsResult<Option<ffi::ibv_wc>> {
        // SAFETY: `ibv_wc` is plain old data; zero is a valid value to be overwritten.
        let mut wc: ffi::ibv_wc = unsafe { std::mem::zeroed() };
        // SAFETY: the CQ is live and `wc` has room for one entry.
        let n = unsafe { ffi::ibv_poll_cq(self.as_raw(), 1, &mut wc) };
        if n < 0 {
            return Err(VerbsError::from_ret("ibv_poll_cq", n, ""));
        }
        Ok((n > 0).then_some(wc))
    }

    /// Poll up to `max` completions without blocking (completions of filemr's own work
    /// requests are set aside, not returned).
    pub fn poll(&self, max: usize) -> VerbsResult<Vec<WorkCompletion>> {
        // SAFETY: `ibv_wc` is plain old data; zero is a valid value to be overwritten.
        let mut raw: Vec<ffi::ibv_wc> = (0..max).map(|_| unsafe { std::mem::zeroed() }).collect();
        let n = self.poll_wc(&mut raw)?;
        Ok(raw[..n].iter().map(WorkCompletion::from_raw).collect())
    }

    /// [`CompletionQueue::poll`] with whole `ibv_wc` entries (opcode, immediate data,
    /// flags...): fills the front of `out` and returns how many it filled. What an
    /// application that polls a [`CqPolling::Shared`] queue calls instead of
    /// `ibv_poll_cq`.
    pub fn poll_wc(&self, out: &mut [ffi::ibv_wc]) -> VerbsResult<usize> {
        let mut stash = self.stash.lock();
        let mut n = 0;
        while n < out.len() {
            let Some(wc) = stash.others.pop_front() else { break };
            out[n] = wc;
            n += 1;
        }
        while n < out.len() {
            let Some(wc) = self.poll_raw()? else { break };
            if let Some(wc) = stash.keep_reserved(wc) {
                out[n] = wc;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Hands filemr a completion the application polled from a [`CqPolling::Application`]
    /// queue. Returns `true` if it was filemr's (its `wr_id` is reserved: filemr keeps
    /// it; the application ignores it), `false` if it is the application's own.
    pub fn deliver(&self, wc: &ffi::ibv_wc) -> bool {
        if !is_reserved_wr_id(wc.wr_id) {
            return false;
        }
        self.stash.lock().file_reserved(wc);
        self.delivered.notify_all();
        true
    }

    /// Waits for the completion of filemr's own work request `wr_id` (see
    /// [`RESERVED_WR_ID_TAG`]) for up to `timeout` (`ETIMEDOUT`): polls a
    /// [`CqPolling::Shared`] queue itself, keeping the other completions it meets for the
    /// application, and waits for [`CompletionQueue::deliver`] on a
    /// [`CqPolling::Application`] one.
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
                match self.polling {
                    CqPolling::Shared => {
                        while let Some(wc) = self.poll_raw()? {
                            if wc.wr_id == wr_id {
                                return Ok(WorkCompletion::from_raw(&wc));
                            }
                            if let Some(other) = stash.keep_reserved(wc) {
                                stash.others.push_back(other);
                            }
                        }
                    }
                    CqPolling::Application => {
                        let left = timeout.saturating_sub(start.elapsed());
                        self.delivered.wait_for(&mut stash, left.min(Duration::from_millis(50)));
                        if let Some(wc) = stash.reserved.remove(&wr_id) {
                            return Ok(wc);
                        }
                    }
                }
            }
            if start.elapsed() > timeout {
                let mut stash = self.stash.lock();
                if let Some(wc) = stash.reserved.remove(&wr_id) {
                    return Ok(wc);
                }
                stash.abandoned.insert(wr_id);
                drop(stash);
                let hint = match self.polling {
                    CqPolling::Shared => "",
                    CqPolling::Application => {
                        "; the application polls this queue and must hand filemr's \
                         completions to CompletionQueue::deliver"
                    }
                };
                return Err(VerbsError::new(
                    "ibv_poll_cq",
                    Errno::ETIMEDOUT,
                    format!("no completion of work request {wr_id:#x} in {timeout:?}{hint}"),
                ));
            }
            if self.polling == CqPolling::Shared {
                std::thread::sleep(Duration::from_micros(20));
            }
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
        if !self.owned {
            return;
        }
        // SAFETY: QPs using this CQ hold an Arc to it, so none is alive; destroyed once.
        let ret = unsafe { ffi::ibv_destroy_cq(self.as_raw()) };
        if ret != 0 {
            tracing::error!(ret, "ibv_destroy_cq failed");
        }
    }
}
