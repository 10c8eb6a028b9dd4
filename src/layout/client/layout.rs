//! A layout held by the client: one-sided transfers through it, commits, returns, and
//! the answer to a recall.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::super::link::DATA;
use super::super::wire::{LayoutDesc, LostCode, MAX_RANGES, Message};
use super::{Inner, LayoutError, PendingReturn, Phase, RecallPolicy};
use crate::verbs::{RemoteBuf, WcStatus};

/// A layout: a file range of the server's, reachable one-sided through its key. Dropping
/// it gives it back to the server without waiting.
pub struct Layout {
    id: u64,
    inner: Arc<Inner>,
    given_back: bool,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout").field("id", &self.id).field("desc", &self.desc()).finish()
    }
}

/// Adds `[off, off+len)` to sorted, merged `ranges`.
pub(crate) fn add_range(ranges: &mut Vec<(u64, u64)>, off: u64, len: u64) {
    let (mut s, mut e) = (off, off.saturating_add(len));
    ranges.retain(|&(o, l)| {
        let re = o.saturating_add(l);
        if re < s || o > e {
            return true;
        }
        s = s.min(o);
        e = e.max(re);
        false
    });
    let at = ranges.partition_point(|&(o, _)| o < s);
    ranges.insert(at, (s, e - s));
}

/// The bytes of one transfer.
enum Data<'a> {
    Write(&'a [u8]),
    Read(&'a mut [u8]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Write(d) => d.len(),
            Data::Read(d) => d.len(),
        }
    }

    fn op(&self) -> &'static str {
        match self {
            Data::Write(_) => "WRITE",
            Data::Read(_) => "READ",
        }
    }
}

impl Layout {
    pub(super) fn new(id: u64, inner: Arc<Inner>) -> Layout {
        Layout { id, inner, given_back: false }
    }

    /// The layout's id (the server's).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The layout as last granted or made available: address, key, length, generation.
    pub fn desc(&self) -> Option<LayoutDesc> {
        self.inner.state.lock().layouts.get(&self.id).map(|h| h.desc)
    }

    /// Why the server gave the layout up, if it did.
    pub fn lost(&self) -> Option<LostCode> {
        match self.inner.state.lock().layouts.get(&self.id).map(|h| h.phase) {
            Some(Phase::Lost(reason)) => Some(reason),
            Some(_) => None,
            None => Some(LostCode::Other),
        }
    }

    /// RDMA WRITE `data` at `offset` of the layout, waiting for the completion. Under
    /// [`RecallPolicy::Cooperate`] it first waits while the layout is recalled.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), LayoutError> {
        self.io(offset, Data::Write(data))
    }

    /// RDMA WRITE `data` at `offset` with the layout's last key, whatever the client
    /// thinks of the layout (recalled, lost): for tests that a server really fenced a key.
    pub fn write_unchecked(&self, offset: u64, data: &[u8]) -> Result<(), LayoutError> {
        let desc = {
            let mut st = self.inner.state.lock();
            let Some(h) = st.layouts.get_mut(&self.id) else {
                return Err(LayoutError::Lost { layout: self.id, reason: LostCode::Other });
            };
            h.in_flight += 1;
            h.desc
        };
        let r = self.io_chunks(&desc, offset, &mut Data::Write(data));
        self.leave(offset, data.len() as u64, false);
        r
    }

    /// RDMA READ `buf.len()` bytes at `offset` of the layout into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), LayoutError> {
        self.io(offset, Data::Read(buf))
    }

    fn io(&self, offset: u64, mut data: Data<'_>) -> Result<(), LayoutError> {
        let len = data.len() as u64;
        let desc = self.enter(offset, len)?;
        let r = self.io_chunks(&desc, offset, &mut data);
        self.leave(offset, len, matches!(data, Data::Write(_)) && r.is_ok());
        r
    }

    /// Counts a transfer out; records what it wrote as dirty.
    fn leave(&self, offset: u64, len: u64, wrote: bool) {
        let mut st = self.inner.state.lock();
        if let Some(h) = st.layouts.get_mut(&self.id) {
            h.in_flight -= 1;
            if wrote && len > 0 {
                add_range(&mut h.dirty, offset, len);
            }
        }
        self.inner.cv.notify_all();
    }

    /// Waits until the layout may be used, checks the range, counts the transfer in.
    fn enter(&self, offset: u64, len: u64) -> Result<LayoutDesc, LayoutError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.cfg.stall_limit;
        let mut st = inner.state.lock();
        loop {
            if let Some(why) = &st.closed {
                return Err(LayoutError::Closed { peer: inner.peer(), why: why.clone() });
            }
            let Some(h) = st.layouts.get_mut(&self.id) else {
                return Err(LayoutError::Lost { layout: self.id, reason: LostCode::Other });
            };
            let usable = match h.phase {
                Phase::Lost(reason) => return Err(LayoutError::Lost { layout: self.id, reason }),
                Phase::Active => true,
                Phase::Recalled | Phase::Returned => inner.cfg.recall == RecallPolicy::Manual,
            };
            if usable {
                let size = h.desc.len;
                if offset.checked_add(len).is_none_or(|end| end > size) {
                    return Err(LayoutError::OutOfRange { layout: self.id, offset, len, size });
                }
                let a = inner.cfg.alignment as u64;
                if a > 1
                    && (!offset.is_multiple_of(a)
                        || (!len.is_multiple_of(a) && offset + len != size))
                {
                    return Err(LayoutError::Unaligned {
                        layout: self.id,
                        offset,
                        len,
                        alignment: a,
                    });
                }
                h.in_flight += 1;
                return Ok(h.desc);
            }
            if !inner.wait(&mut st, deadline) {
                return Err(LayoutError::Timeout {
                    peer: inner.peer(),
                    what: "a recalled layout to come back",
                    timeout: inner.cfg.stall_limit,
                });
            }
        }
    }

    fn io_chunks(
        &self,
        desc: &LayoutDesc,
        offset: u64,
        data: &mut Data<'_>,
    ) -> Result<(), LayoutError> {
        let inner = &self.inner;
        let verbs = |source| LayoutError::Verbs { peer: inner.peer(), source };
        let sys = |e: crate::sys::SysError| {
            verbs(crate::verbs::VerbsError::new("memcpy", e.errno, "bounce buffer"))
        };
        let bounce = inner.bounce.lock();
        let total = data.len();
        let mut at = 0;
        while at < total {
            let n = (total - at).min(bounce.buf.len());
            let remote = RemoteBuf { addr: desc.addr + offset + at as u64, rkey: desc.rkey };
            let wr_id = DATA | (inner.next_transfer.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF);
            match data {
                Data::Write(src) => {
                    bounce.buf.write_at(0, &src[at..at + n]).map_err(sys)?;
                    inner.link.qp.post_write(wr_id, &bounce.mr, 0, n, remote).map_err(verbs)?;
                }
                Data::Read(_) => {
                    inner.link.qp.post_read(wr_id, &bounce.mr, 0, n, remote).map_err(verbs)?;
                }
            }
            let status = self.wait_transfer(wr_id)?;
            if status != WcStatus::Success {
                let op = data.op();
                return Err(LayoutError::Transfer {
                    layout: self.id,
                    op,
                    offset: offset + at as u64,
                    status,
                });
            }
            if let Data::Read(dst) = data {
                bounce.buf.read_at(0, &mut dst[at..at + n]).map_err(sys)?;
            }
            at += n;
        }
        Ok(())
    }

    fn wait_transfer(&self, wr_id: u64) -> Result<WcStatus, LayoutError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.cfg.timeout;
        let mut st = inner.state.lock();
        st.in_transfer += 1;
        let r = loop {
            if let Some(s) = st.transfers.remove(&wr_id) {
                break Ok(s);
            }
            if let Some(why) = &st.closed {
                break Err(LayoutError::Closed { peer: inner.peer(), why: why.clone() });
            }
            if !inner.wait(&mut st, deadline) {
                let timeout = inner.cfg.timeout;
                break Err(LayoutError::Timeout {
                    peer: inner.peer(),
                    what: "an RDMA transfer",
                    timeout,
                });
            }
        };
        st.in_transfer -= 1;
        r
    }

    /// Commits what was written through this layout and not committed yet: durable in
    /// the file when this returns. Returns the ranges committed (offset, length).
    ///
    /// `Refused { errno: ESTALE }`: the layout was retargeted at its recall deadline (the
    /// peer did not return it in time), so what was written since went to scratch memory;
    /// those ranges are dropped. Return the layout ([`Layout::return_for_recall`]) and wait
    /// for `Available`.
    pub fn commit(&self) -> Result<Vec<(u64, u64)>, LayoutError> {
        commit(&self.inner, self.id)
    }

    /// Answers a recall by hand (under [`RecallPolicy::Manual`]): commits, returns, and
    /// keeps the layout for when it is available again. Returns the ranges committed.
    pub fn return_for_recall(&self) -> Result<Vec<(u64, u64)>, LayoutError> {
        commit_and_return(&self.inner, self.id)
    }

    /// Gives the layout back to the server, waiting for its answer.
    pub fn give_back(mut self) -> Result<(), LayoutError> {
        self.given_back = true;
        self.inner.state.lock().layouts.remove(&self.id);
        self.inner.call(Message::ReturnRequest { layout: self.id }).map(|_| ())
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        if self.given_back {
            return;
        }
        self.inner.state.lock().layouts.remove(&self.id);
        // Nobody waits for the answer (the poller drops it); an AVAILABLE for a layout
        // no longer held is answered with another return by the poller.
        let frame = super::super::wire::Frame {
            request: 0,
            status: 0,
            message: Message::ReturnRequest { layout: self.id },
        };
        if let Err(e) = self.inner.link.send(&frame) {
            tracing::debug!(layout = self.id, error = ?e, "return on drop not sent");
        }
    }
}

/// Sends the layout's dirty ranges in COMMIT requests; on failure they stay dirty.
fn commit(inner: &Inner, id: u64) -> Result<Vec<(u64, u64)>, LayoutError> {
    let dirty = match inner.state.lock().layouts.get_mut(&id) {
        Some(h) => std::mem::take(&mut h.dirty),
        None => return Err(LayoutError::Lost { layout: id, reason: LostCode::Other }),
    };
    for chunk in dirty.chunks(MAX_RANGES) {
        let sent = inner.call(Message::CommitRequest { layout: id, ranges: chunk.to_vec() });
        if let Err(e) = sent {
            // Why: ESTALE means the layout was retargeted at its recall deadline, so what
            // was written since went to scratch memory: committing it again cannot help.
            if matches!(e, LayoutError::Refused { errno: Errno::ESTALE, .. }) {
                tracing::warn!(layout = id, ranges = dirty.len(), "retargeted: writes discarded");
                return Err(e);
            }
            if let Some(h) = inner.state.lock().layouts.get_mut(&id) {
                for &(o, l) in &dirty {
                    add_range(&mut h.dirty, o, l);
                }
            }
            return Err(e);
        }
    }
    Ok(dirty)
}

/// Commit, then return for the recall; the layout waits for AVAILABLE. The poller
/// records the return (phase `Returned`, event [`LayoutEvent::Returned`]) as it files the
/// reply, so the event comes before the AVAILABLE that may follow it on the wire.
fn commit_and_return(inner: &Inner, id: u64) -> Result<Vec<(u64, u64)>, LayoutError> {
    let committed = commit(inner, id);
    let request = inner.new_request();
    let pending = match &committed {
        Ok(c) => PendingReturn { layout: id, committed: c.clone(), error: None },
        Err(e) => PendingReturn { layout: id, committed: Vec::new(), error: Some(e.to_string()) },
    };
    inner.state.lock().returns.insert(request, pending);
    let returned = inner.call_as(request, Message::ReturnRequest { layout: id });
    inner.state.lock().returns.remove(&request);
    let committed = committed?;
    returned.map(|_| committed)
}

/// The cooperative answer to a recall, on its own thread: wait for the transfers in
/// flight (new ones wait for AVAILABLE), commit, return.
pub(super) fn answer_recall(inner: &Arc<Inner>, id: u64, deadline: Duration) {
    let until = Instant::now() + deadline;
    {
        let mut st = inner.state.lock();
        while st.layouts.get(&id).is_some_and(|h| h.in_flight > 0) {
            if !inner.wait(&mut st, until) {
                tracing::warn!(layout = id, "transfers still in flight at the recall deadline");
                break;
            }
        }
    }
    if let Err(e) = commit_and_return(inner, id) {
        tracing::warn!(layout = id, error = %e, "answering a recall failed");
    }
}

#[cfg(test)]
mod tests {
    use super::add_range;

    #[test]
    fn dirty_ranges_merge() {
        let mut r = Vec::new();
        add_range(&mut r, 16, 8);
        add_range(&mut r, 0, 8);
        assert_eq!(r, vec![(0, 8), (16, 8)]);
        add_range(&mut r, 8, 8);
        assert_eq!(r, vec![(0, 24)], "adjacent ranges join");
        add_range(&mut r, 100, 4);
        add_range(&mut r, 10, 200);
        assert_eq!(r, vec![(0, 210)]);
        add_range(&mut r, 300, 1);
        assert_eq!(r, vec![(0, 210), (300, 1)]);
    }
}
