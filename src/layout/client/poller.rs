//! The client's background thread: files replies and completions, acts on the server's
//! RECALL, AVAILABLE and LOST.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::link::Completion;
use super::super::sleep;
use super::super::wire::{Frame, Message};
use super::{Inner, LayoutEvent, PendingReturn, Phase, RecallPolicy, layout};
use crate::verbs::CmEventKind;

/// Longest sleep (a completion, a CM event or the client's stop wakes it before).
const IDLE: Duration = Duration::from_millis(100);

/// Runs until the client is dropped or stopped. When a pass finds nothing, it arms the
/// completion queue, looks once more (a completion that came before the arming does not
/// notify), and sleeps on the completion and CM channels.
pub(super) fn run(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        if step(&inner) {
            continue;
        }
        if let Err(e) = inner.link.arm() {
            tracing::warn!(server = %inner.cfg.server, error = %e, "arming the completion queue failed");
        }
        if step(&inner) {
            continue;
        }
        let fds = [inner.link.notify_fd(), inner.channel.fd()];
        sleep::sleep(&inner.waker, &fds, IDLE);
        inner.link.take_notifications();
    }
}

/// One pass over the completion queue, then the CM channel; whether anything happened.
fn step(inner: &std::sync::Arc<Inner>) -> bool {
    let mut progressed = completions(inner);
    // After the frames: a reply that arrived before the server disconnected is filed
    // first, and so is one that arrives while the disconnect is read.
    while let Ok(Some(ev)) = inner.channel.try_next() {
        progressed = true;
        if matches!(ev.kind, CmEventKind::Disconnected | CmEventKind::DeviceRemoval) {
            completions(inner);
            close(inner, format!("{:?}", ev.kind));
        }
    }
    progressed
}

/// Files what completed: frames, transfers, a broken link; whether anything did.
fn completions(inner: &std::sync::Arc<Inner>) -> bool {
    let done = match inner.link.poll() {
        Ok(d) => d,
        Err(e) => {
            close(inner, format!("polling failed: {e}"));
            return true;
        }
    };
    let progressed = !done.is_empty();
    for d in done {
        match d {
            Completion::Frame(bytes) => on_frame(inner, &bytes),
            Completion::Data { wr_id, status } => {
                inner.state.lock().transfers.insert(wr_id, status);
                inner.cv.notify_all();
            }
            Completion::Broken(status) => close(inner, format!("queue pair failed: {status:?}")),
        }
    }
    progressed
}

fn close(inner: &Inner, why: String) {
    let mut st = inner.state.lock();
    if st.closed.is_none() {
        tracing::warn!(server = %inner.cfg.server, why, "layout connection closed");
        inner.push_event(&mut st, LayoutEvent::Disconnected { why: why.clone() });
        st.closed = Some(why);
    }
    inner.cv.notify_all();
}

fn on_frame(inner: &std::sync::Arc<Inner>, bytes: &[u8]) {
    let frame = match Frame::decode(bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(server = %inner.cfg.server, error = %e, "malformed frame from server");
            return;
        }
    };
    let mut st = inner.state.lock();
    match frame.message {
        Message::Recall { layout, deadline_ms } => {
            let deadline = Duration::from_millis(deadline_ms);
            let Some(h) = st.layouts.get_mut(&layout) else { return };
            if h.phase == Phase::Active {
                h.phase = Phase::Recalled;
            }
            inner.push_event(&mut st, LayoutEvent::Recalled { layout, deadline });
            if inner.cfg.recall == RecallPolicy::Cooperate {
                let answerer = inner.clone();
                let job = Box::new(move || layout::answer_recall(&answerer, layout, deadline));
                if let Err(e) = inner.recalls.run(job) {
                    tracing::error!(layout, error = %e, "cannot answer a recall");
                }
            }
        }
        Message::Available(desc) => {
            let Some(h) = st.layouts.get_mut(&desc.layout) else {
                // Dropped while recalled: give it back for good now.
                drop(st);
                let message = Message::ReturnRequest { layout: desc.layout };
                if let Err(e) = inner.link.send(&Frame { request: 0, status: 0, message }) {
                    tracing::debug!(layout = desc.layout, error = ?e, "return not sent");
                }
                return;
            };
            h.desc = desc;
            h.phase = Phase::Active;
            let ev = LayoutEvent::Available {
                layout: desc.layout,
                generation: desc.generation,
                len: desc.len,
            };
            inner.push_event(&mut st, ev);
        }
        Message::Lost { layout, reason } => {
            let Some(h) = st.layouts.get_mut(&layout) else { return };
            h.phase = Phase::Lost(reason);
            inner.push_event(&mut st, LayoutEvent::Lost { layout, reason });
        }
        _ if st.pending.contains(&frame.request) => {
            if let Some(PendingReturn { layout, committed, error }) =
                st.returns.remove(&frame.request)
            {
                let returned = frame.message == Message::Returned;
                let error = match returned {
                    true => error,
                    false => Some(format!("return refused: errno {}", frame.status)),
                };
                if let Some(h) = st.layouts.get_mut(&layout)
                    && h.phase == Phase::Recalled
                    && returned
                {
                    h.phase = Phase::Returned;
                }
                inner.push_event(&mut st, LayoutEvent::Returned { layout, committed, error });
            }
            st.replies.insert(frame.request, frame);
        }
        other => {
            tracing::debug!(request = frame.request, message = other.name(), "unexpected reply");
        }
    }
    inner.cv.notify_all();
}
