use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use rdma_sys as ffi;
use tokio::io::unix::AsyncFd;

use super::device::Context;
use super::error::{VerbsError, VerbsResult};
use crate::sys::io_errno;

/// One asynchronous device event (`ibv_async_event`), already acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// The raw `ibv_event_type` value (e.g. 9 = `IBV_EVENT_PORT_ACTIVE`).
    pub event_type: u32,
}

struct EventFd(RawFd);

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The context's async event fd made non-blocking and registered with tokio.
pub struct AsyncEvents {
    // Dropped before `ctx`, which owns the fd.
    fd: AsyncFd<EventFd>,
    ctx: Arc<Context>,
}

impl AsyncEvents {
    /// Watch `ctx`'s async events. Needs a running tokio runtime.
    pub fn new(ctx: &Arc<Context>) -> VerbsResult<AsyncEvents> {
        let raw = ctx.async_fd();
        let fd = ctx.async_event_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL)
            .map_err(|e| VerbsError::new("fcntl(async_fd)", e, ctx.name()))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd, FcntlArg::F_SETFL(flags))
            .map_err(|e| VerbsError::new("fcntl(async_fd)", e, ctx.name()))?;
        // SAFETY: the fd belongs to the context, which this value keeps open (the `ctx`
        // field is dropped after `fd`), so it stays valid and the same for its lifetime.
        let fd = unsafe { AsyncFd::register(EventFd(raw)) }.map_err(|e| {
            let (_, e) = e.into_parts();
            VerbsError::new("epoll_ctl(async_fd)", io_errno(&e), ctx.name())
        })?;
        Ok(AsyncEvents { fd, ctx: ctx.clone() })
    }

    /// Read one pending event without waiting.
    pub fn try_next(&self) -> VerbsResult<Option<AsyncEvent>> {
        // SAFETY: `ibv_async_event` is plain old data; zero is valid before the call fills it.
        let mut ev: ffi::ibv_async_event = unsafe { std::mem::zeroed() };
        // SAFETY: the context is live (we hold an Arc) and its fd is non-blocking.
        let ret = unsafe { ffi::ibv_get_async_event(self.ctx.as_raw(), &mut ev) };
        if ret != 0 {
            let e = Errno::last();
            return if e == Errno::EAGAIN {
                Ok(None)
            } else {
                Err(VerbsError::new("ibv_get_async_event", e, self.ctx.name()))
            };
        }
        let event_type = ev.event_type as u32;
        // SAFETY: acknowledges the event just read, exactly once.
        unsafe { ffi::ibv_ack_async_event(&mut ev) };
        Ok(Some(AsyncEvent { event_type }))
    }

    /// Wait for the next event.
    pub async fn next(&self) -> VerbsResult<AsyncEvent> {
        loop {
            if let Some(ev) = self.try_next()? {
                return Ok(ev);
            }
            let mut guard = self.fd.readable().await.map_err(|e| {
                VerbsError::new("epoll_wait(async_fd)", io_errno(&e), self.ctx.name())
            })?;
            guard.clear_ready();
        }
    }
}
