//! A peer's side of the layout protocol: connect to a layout server, get layouts, read
//! and write them one-sided, commit, return; answer recalls.
//!
//! One background thread serves the connection, sleeping on its completion and CM
//! channels between passes: it files replies for the callers waiting on them,
//! completions for the transfers, and acts on RECALL, AVAILABLE and LOST. With
//! [`RecallPolicy::Cooperate`] (the default) a recall is answered by the library: new
//! transfers on the layout wait, the outstanding ones finish, what was written is
//! committed, the layout is returned, and the waiting transfers resume once AVAILABLE
//! arrives. The application sees a stall, never an error.

mod layout;
mod poller;
mod recall_pool;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use parking_lot::{Condvar, Mutex, MutexGuard};

pub use layout::Layout;

use super::error::LayoutError;
use super::link::{Link, LinkSendError};
use super::wire::{Frame, LayoutDesc, LostCode, Message, WireAccess};
use crate::region::Access;
use crate::sys::Mapping;
use crate::verbs::{
    Access as MrAccess, CmChannel, CmEventKind, CmId, Context, MemoryRegion, ProtectionDomain,
    VerbsError,
};

/// What the client library does when the server recalls a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallPolicy {
    /// Drain, commit what was written, return; transfers wait until the layout is
    /// available again.
    Cooperate,
    /// Only report [`LayoutEvent::Recalled`]; the application commits and returns
    /// ([`Layout::commit`], [`Layout::give_back`]) or not. Transfers are not held.
    Manual,
}

/// How to reach a layout server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The local RDMA device (must be the one that reaches `server`).
    pub device: String,
    /// The server's RDMA CM address.
    pub server: SocketAddr,
    /// The local address to connect from (port 0 for any): an address of `device`.
    /// Needed when the server's address is also local to this host, so the connection
    /// leaves through `device` instead of being looped back by the server's device.
    pub source: Option<std::net::IpAddr>,
    /// How long requests (and connection set-up steps) may take.
    pub timeout: Duration,
    /// How long a transfer waits for a recalled layout to come back.
    pub stall_limit: Duration,
    /// What to do on a recall.
    pub recall: RecallPolicy,
    /// Size of the registered bounce buffer transfers go through (larger ones are split).
    pub buffer: usize,
    /// 1, or the alignment (a power of two, 512 bytes to 2 MiB) this client promises for
    /// every transfer's offset and length (a transfer may end unaligned at the layout's
    /// end). The server may then serve zero-copy where only aligned I/O is correct; the
    /// client refuses unaligned transfers (`LayoutError::Unaligned`).
    pub alignment: usize,
}

impl ClientConfig {
    /// Defaults: 10 s per request, transfers stall up to 120 s, cooperative recalls, a
    /// 1 MiB bounce buffer.
    pub fn new(device: impl Into<String>, server: SocketAddr) -> ClientConfig {
        ClientConfig {
            device: device.into(),
            server,
            source: None,
            timeout: Duration::from_secs(10),
            stall_limit: Duration::from_secs(120),
            recall: RecallPolicy::Cooperate,
            buffer: 1 << 20,
            alignment: 1,
        }
    }
}

/// What happened to the client's layouts, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutEvent {
    /// The server recalled `layout`; `deadline` is the time it gave to return it.
    Recalled {
        /// The layout.
        layout: u64,
        /// Time left to return it when the recall was sent.
        deadline: Duration,
    },
    /// The library returned `layout` after committing `committed` (offset, length).
    Returned {
        /// The layout.
        layout: u64,
        /// The ranges committed before the return.
        committed: Vec<(u64, u64)>,
        /// Why the commit or return failed, if it did.
        error: Option<String>,
    },
    /// `layout` is usable again (after the server rebuilt its region).
    Available {
        /// The layout.
        layout: u64,
        /// Its generation.
        generation: u64,
        /// Its length now.
        len: u64,
    },
    /// The server gave `layout` up.
    Lost {
        /// The layout.
        layout: u64,
        /// Why.
        reason: LostCode,
    },
    /// The connection closed.
    Disconnected {
        /// Why.
        why: String,
    },
}

/// Where a layout is in its life, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Active,
    Recalled,
    Returned,
    Lost(LostCode),
}

/// The client's view of one layout.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) desc: LayoutDesc,
    pub(crate) phase: Phase,
    pub(crate) in_flight: u32,
    /// Written and not yet committed: (offset, length), merged.
    pub(crate) dirty: Vec<(u64, u64)>,
}

/// A return answering a recall, waiting for its reply (the poller reports it).
#[derive(Debug)]
pub(crate) struct PendingReturn {
    pub(crate) layout: u64,
    /// Ranges committed just before.
    pub(crate) committed: Vec<(u64, u64)>,
    /// Why the commit failed, if it did.
    pub(crate) error: Option<String>,
}

/// Everything the poller and the callers share, under one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) replies: HashMap<u64, Frame>,
    pub(crate) transfers: HashMap<u64, crate::verbs::WcStatus>,
    pub(crate) layouts: HashMap<u64, Held>,
    pub(crate) events: VecDeque<LayoutEvent>,
    pub(crate) closed: Option<String>,
    /// Returns answering a recall, by request id.
    pub(crate) returns: HashMap<u64, PendingReturn>,
    /// Requests waiting for their reply (replies to others are dropped).
    pub(crate) pending: std::collections::HashSet<u64>,
    /// Transfers waiting for their completion.
    pub(crate) in_transfer: u32,
}

/// The registered bounce buffer transfers go through.
pub(crate) struct Bounce {
    pub(crate) buf: Arc<Mapping>,
    pub(crate) mr: MemoryRegion,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    pub(crate) link: Link,
    pub(crate) bounce: Mutex<Bounce>,
    pub(crate) state: Mutex<State>,
    pub(crate) cv: Condvar,
    next_request: AtomicU64,
    pub(crate) next_transfer: AtomicU64,
    pub(crate) stop: AtomicBool,
    /// Wakes the poller's sleep (the client stopping).
    pub(crate) waker: super::sleep::Waker,
    /// The threads that answer recalls.
    pub(crate) recalls: recall_pool::RecallPool,
    // Dropped last, in this order: the identifier, then its channel.
    pub(crate) id: CmId,
    pub(crate) channel: Arc<CmChannel>,
}

/// Events kept for [`LayoutClient::next_event`] at most; older ones are dropped.
const EVENT_BACKLOG: usize = 4096;

impl Inner {
    pub(crate) fn peer(&self) -> String {
        self.cfg.server.to_string()
    }

    pub(crate) fn push_event(&self, st: &mut State, ev: LayoutEvent) {
        if st.events.len() >= EVENT_BACKLOG {
            st.events.pop_front();
            tracing::warn!("layout client events not consumed: oldest dropped");
        }
        st.events.push_back(ev);
    }

    /// Waits on the condition variable until `deadline`; false when it passed.
    pub(crate) fn wait(&self, st: &mut MutexGuard<'_, State>, deadline: Instant) -> bool {
        !self.cv.wait_until(st, deadline).timed_out() || Instant::now() < deadline
    }

    /// A fresh request id.
    pub(crate) fn new_request(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `message` as a new request and waits for its reply.
    pub(crate) fn call(&self, message: Message) -> Result<Message, LayoutError> {
        self.call_as(self.new_request(), message)
    }

    /// Sends `message` as request `request` and waits for its reply.
    pub(crate) fn call_as(&self, request: u64, message: Message) -> Result<Message, LayoutError> {
        let op = message.name();
        let frame = Frame { request, status: 0, message };
        let f = self.exchange(request, op, || self.link.send(&frame))?;
        match f.message {
            Message::Error => Err(LayoutError::Refused {
                server: self.cfg.server,
                op,
                errno: Errno::from_raw(f.status as i32),
            }),
            m => Ok(m),
        }
    }

    /// Sends with `send` and waits for the reply to `request`.
    pub(crate) fn exchange(
        &self,
        request: u64,
        op: &'static str,
        send: impl FnOnce() -> Result<(), LinkSendError>,
    ) -> Result<Frame, LayoutError> {
        let mut st = self.state.lock();
        if let Some(why) = &st.closed {
            return Err(LayoutError::Closed { peer: self.peer(), why: why.clone() });
        }
        st.pending.insert(request);
        let deadline = Instant::now() + self.cfg.timeout;
        let reply = match send() {
            Err(LinkSendError::Wire(source)) => {
                Err(LayoutError::Wire { peer: self.peer(), source })
            }
            Err(LinkSendError::Verbs(source)) => {
                Err(LayoutError::Verbs { peer: self.peer(), source })
            }
            Ok(()) => loop {
                if let Some(f) = st.replies.remove(&request) {
                    break Ok(f);
                }
                if let Some(why) = &st.closed {
                    break Err(LayoutError::Closed { peer: self.peer(), why: why.clone() });
                }
                if !self.wait(&mut st, deadline) {
                    break Err(LayoutError::Timeout {
                        peer: self.peer(),
                        what: op,
                        timeout: self.cfg.timeout,
                    });
                }
            },
        };
        st.pending.remove(&request);
        reply
    }
}

/// A connection to a layout server.
pub struct LayoutClient {
    inner: Arc<Inner>,
    poller: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LayoutClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayoutClient").field("server", &self.inner.cfg.server).finish()
    }
}

/// Waits for `want` on `channel` for up to `timeout` (and a little more, so the CM's own
/// error event for a step given `timeout` is seen rather than missed).
fn wait_cm(
    channel: &CmChannel,
    want: CmEventKind,
    server: SocketAddr,
    timeout: Duration,
    what: &'static str,
) -> Result<(), LayoutError> {
    let deadline = Instant::now() + timeout + Duration::from_secs(1);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LayoutError::Timeout { peer: server.to_string(), what, timeout });
        }
        let ev = channel
            .next(left)
            .map_err(|source| LayoutError::Verbs { peer: server.to_string(), source })?;
        match ev {
            Some(ev) if ev.kind == want => return Ok(()),
            Some(ev) => return Err(LayoutError::Connect { server, what, status: ev.status }),
            None => {}
        }
    }
}

/// Address and route resolution attempts: a lost ARP exchange fails one attempt, not the
/// connection.
const RESOLVE_TRIES: u32 = 3;

/// A CM identifier with the server's address and route resolved.
fn resolve(channel: &CmChannel, cfg: &ClientConfig) -> Result<CmId, LayoutError> {
    let verbs = |source: VerbsError| LayoutError::Verbs { peer: cfg.server.to_string(), source };
    let step = cfg.timeout.min(Duration::from_secs(3));
    let src = cfg.source.map(|ip| SocketAddr::new(ip, 0));
    let mut attempt = 1;
    loop {
        let id = CmId::new(channel).map_err(verbs)?;
        let resolved = id
            .resolve_addr(src, cfg.server, step)
            .map_err(verbs)
            .and_then(|()| {
                wait_cm(channel, CmEventKind::AddrResolved, cfg.server, step, "address resolution")
            })
            .and_then(|()| id.resolve_route(step).map_err(verbs))
            .and_then(|()| {
                wait_cm(channel, CmEventKind::RouteResolved, cfg.server, step, "route resolution")
            });
        match resolved {
            Ok(()) => return Ok(id),
            Err(e @ (LayoutError::Connect { .. } | LayoutError::Timeout { .. }))
                if attempt < RESOLVE_TRIES =>
            {
                tracing::info!(server = %cfg.server, attempt, error = %e, "resolution failed; trying again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl LayoutClient {
    /// Opens `cfg.device`, connects to `cfg.server` and starts the poller thread.
    pub fn connect(cfg: ClientConfig) -> Result<LayoutClient, LayoutError> {
        let verbs =
            |source: VerbsError| LayoutError::Verbs { peer: cfg.server.to_string(), source };
        let ctx = Arc::new(Context::open(&cfg.device).map_err(verbs)?);
        let pd = ProtectionDomain::new(&ctx).map_err(verbs)?;
        let channel = CmChannel::new().map_err(verbs)?;
        let id = resolve(&channel, &cfg)?;
        let link = Link::new(&pd).map_err(verbs)?;
        id.connect(&link.qp, &[]).map_err(verbs)?;
        link.post_receives().map_err(verbs)?;
        wait_cm(&channel, CmEventKind::ConnectResponse, cfg.server, cfg.timeout, "connection")?;
        id.establish(&link.qp).map_err(verbs)?;
        let len = cfg.buffer.max(4096);
        let buf = Arc::new(
            Mapping::anonymous(len)
                .map_err(|e| verbs(VerbsError::new("mmap", e.errno, "bounce buffer")))?,
        );
        let mr = MemoryRegion::register(&pd, &buf, MrAccess::LOCAL_WRITE).map_err(verbs)?;
        let inner = Arc::new(Inner {
            cfg,
            link,
            bounce: Mutex::new(Bounce { buf, mr }),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            next_request: AtomicU64::new(1),
            next_transfer: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            waker: super::sleep::Waker::new()
                .map_err(|e| LayoutError::Config(format!("creating the poller's eventfd: {e}")))?,
            recalls: recall_pool::RecallPool::default(),
            id,
            channel,
        });
        let weak = Arc::downgrade(&inner);
        let poller = std::thread::Builder::new()
            .name("filemr-layout-client".into())
            .spawn(move || poller::run(weak))
            .map_err(|e| LayoutError::Config(format!("spawning the poller: {e}")))?;
        Ok(LayoutClient { inner, poller: Some(poller) })
    }

    /// Gets a layout of `len` bytes at `offset` of `path` (`export/relative/path`); `len`
    /// 0 asks for the rest of the file (the layout's [`Layout::desc`] says how much).
    pub fn get(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        access: Access,
    ) -> Result<Layout, LayoutError> {
        let access = match access {
            Access::Read => WireAccess::Read,
            Access::Write => WireAccess::Write,
            Access::ReadWrite => WireAccess::ReadWrite,
        };
        let path = path.as_bytes().to_vec();
        let a = self.inner.cfg.alignment;
        let align_shift = match a {
            1 => 0,
            _ if a.is_power_of_two()
                && super::wire::ALIGN_SHIFTS.contains(&(a.trailing_zeros() as u8)) =>
            {
                a.trailing_zeros() as u8
            }
            _ => {
                return Err(LayoutError::Config(format!(
                    "alignment {a}: not 1 or a power of two from 512 bytes to 2 MiB"
                )));
            }
        };
        match self.inner.call(Message::GetRequest { path, offset, len, access, align_shift })? {
            Message::Granted(desc) => {
                let held = Held { desc, phase: Phase::Active, in_flight: 0, dirty: Vec::new() };
                self.inner.state.lock().layouts.insert(desc.layout, held);
                Ok(Layout::new(desc.layout, self.inner.clone()))
            }
            other => Err(LayoutError::Closed {
                peer: self.inner.peer(),
                why: format!("server answered LAYOUT_GET with {}", other.name()),
            }),
        }
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<LayoutEvent> {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.lock();
        loop {
            if let Some(ev) = st.events.pop_front() {
                return Some(ev);
            }
            if !self.inner.wait(&mut st, deadline) {
                return None;
            }
        }
    }

    /// Sends `bytes` as one frame without checking them and returns the server's answer
    /// (matched by the request id in the bytes' header, or 0 when there is none): for
    /// conformance tests of a server's handling of malformed frames.
    pub fn send_unchecked(&self, bytes: &[u8]) -> Result<Frame, LayoutError> {
        let request = super::wire::peek_request(bytes).unwrap_or(0);
        self.inner.exchange(request, "raw frame", || {
            self.inner.link.send_bytes(bytes).map_err(LinkSendError::Verbs)
        })
    }

    /// Disconnects (the server drops every layout of this connection).
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.waker.wake();
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        let _ = self.inner.id.disconnect();
    }
}

impl Drop for LayoutClient {
    fn drop(&mut self) {
        self.stop();
    }
}
