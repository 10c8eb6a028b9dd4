//! Completion channels (`ibv_comp_channel`): a file descriptor that turns readable when
//! an armed completion queue on it gets a completion, so a thread can sleep in `poll(2)`
//! instead of polling its queues on a timer.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use nix::errno::Errno;
use rdma_sys as ffi;

use super::cq::CompletionQueue;
use super::device::Context;
use super::error::{VerbsError, VerbsResult};

/// A completion channel. Queues made with [`CompletionQueue::with_channel`] keep it alive;
/// it is destroyed after the last of them.
pub struct CompChannel {
    ptr: NonNull<ffi::ibv_comp_channel>,
    _ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for CompChannel {}
// SAFETY: as above.
unsafe impl Sync for CompChannel {}

impl std::fmt::Debug for CompChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompChannel").field("fd", &self.fd().as_raw_fd()).finish()
    }
}

impl CompChannel {
    /// A channel on `ctx`, its fd non-blocking.
    pub fn new(ctx: &Arc<Context>) -> VerbsResult<Arc<CompChannel>> {
        // SAFETY: the context is live; NULL on failure.
        let ch = unsafe { ffi::ibv_create_comp_channel(ctx.as_raw()) };
        let ptr = NonNull::new(ch)
            .ok_or_else(|| VerbsError::last("ibv_create_comp_channel", ctx.name()))?;
        let chan = CompChannel { ptr, _ctx: ctx.clone() };
        nix::fcntl::fcntl(chan.fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| VerbsError::new("fcntl", e, "O_NONBLOCK on a completion channel"))?;
        Ok(Arc::new(chan))
    }

    pub(crate) fn as_raw(&self) -> *mut ffi::ibv_comp_channel {
        self.ptr.as_ptr()
    }

    /// The channel's file descriptor: readable when an armed queue got a completion.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the channel is live; its fd stays open until the channel is destroyed.
        unsafe { BorrowedFd::borrow_raw(self.ptr.as_ref().fd) }
    }

    /// Takes every pending notification without blocking and acknowledges it. Returns
    /// how many there were: each queue that fired is disarmed until
    /// [`CompletionQueue::arm`] is called again.
    pub fn take_events(&self) -> VerbsResult<usize> {
        let mut fired = 0;
        loop {
            let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
            let mut cq_ctx: *mut std::ffi::c_void = std::ptr::null_mut();
            // SAFETY: the channel is live and non-blocking; both out-pointers are valid.
            let ret = unsafe { ffi::ibv_get_cq_event(self.as_raw(), &mut cq, &mut cq_ctx) };
            if ret != 0 {
                let errno = Errno::last();
                if errno == Errno::EAGAIN {
                    return Ok(fired);
                }
                return Err(VerbsError::new("ibv_get_cq_event", errno, ""));
            }
            // SAFETY: `cq` is the live queue the event came from (a queue's events are
            // taken and acknowledged before it is destroyed: this thread does both, or
            // the kernel dropped them with the queue); one event, acknowledged once.
            unsafe { ffi::ibv_ack_cq_events(cq, 1) };
            fired += 1;
        }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: every queue on the channel holds an Arc to it, so none is alive.
        let ret = unsafe { ffi::ibv_destroy_comp_channel(self.as_raw()) };
        if ret != 0 {
            tracing::error!(ret, "ibv_destroy_comp_channel failed");
        }
    }
}

impl CompletionQueue {
    /// A queue with room for `entries` completions whose notifications go to `channel`
    /// (see [`CompletionQueue::arm`]).
    pub fn with_channel(
        ctx: &Arc<Context>,
        entries: u32,
        channel: &Arc<CompChannel>,
    ) -> VerbsResult<Arc<CompletionQueue>> {
        Self::create(ctx, entries, Some(channel.clone()))
    }

    /// Asks for one notification on the queue's channel at its next completion
    /// (`ibv_req_notify_cq`). Completions already queued do not notify: poll once more
    /// after arming before sleeping.
    pub fn arm(&self) -> VerbsResult<()> {
        // SAFETY: the queue is live; 0 = every completion, not only solicited ones.
        let ret = unsafe { ffi::ibv_req_notify_cq(self.as_raw(), 0) };
        if ret != 0 {
            return Err(VerbsError::from_ret("ibv_req_notify_cq", ret, ""));
        }
        Ok(())
    }
}
