//! The layout server: accepts peers over RDMA CM, answers LAYOUT_GET / COMMIT / RETURN
//! with regions and grants of a [`Manager`], and turns the regions' events into RECALL,
//! AVAILABLE and LOST messages to the peers holding the layouts.
//!
//! One thread runs it: it takes what the CM channel, every connection's completion
//! queue and the manager's events have, and when none had anything it sleeps in
//! `poll(2)` on their descriptors (a region event or the owner's request writes its
//! eventfd), up to [`IDLE`]. Requests are answered in arrival order; a LAYOUT_GET
//! registers the region on this thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use prometheus_client::registry::Registry;

use super::error::LayoutError;
use super::export::{Export, Exports};
use super::link::{Completion, Link, LinkSendError};
use super::sleep::{self, Waker};
use super::wire::{self, Frame, LayoutDesc, LostCode, Message, WireAccess};
use crate::grant::{Grant, GrantState};
use crate::metrics::LayoutMetrics;
use crate::region::{
    Access, EventHook, LostReason, Manager, Region, RegionError, RegionEventKind, RegionEvents,
};
use crate::verbs::{CmChannel, CmEvent, CmEventKind, CmId};

/// Longest sleep of the server thread when nothing happened (anything it waits for
/// wakes it before; this bounds how late a drain's deadline is seen).
const IDLE: Duration = Duration::from_millis(20);
/// How long a closing connection's last frames get to leave.
const LINGER: Duration = Duration::from_millis(200);

/// What a layout server serves and how.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on for RDMA CM connections (an address of the manager's device;
    /// port 0 picks a free one, see [`LayoutServer::local_addr`]).
    pub listen: SocketAddr,
    /// The exported directories.
    pub exports: Vec<Export>,
    /// Connections beyond this are rejected.
    pub max_connections: usize,
    /// Layouts one connection may hold (`EMFILE` beyond).
    pub max_layouts_per_connection: usize,
    /// Malformed frames a connection may send before it is disconnected.
    pub malformed_limit: u32,
}

impl ServerConfig {
    /// Defaults: 64 connections, 1024 layouts each, 16 malformed frames.
    pub fn new(listen: SocketAddr, exports: Vec<Export>) -> ServerConfig {
        ServerConfig {
            listen,
            exports,
            max_connections: 64,
            max_layouts_per_connection: 1024,
            malformed_limit: 16,
        }
    }
}

/// What the owner asks of the server thread.
#[derive(Default)]
struct Control {
    /// Exports to serve from now on (SIGHUP in the daemon).
    exports: Option<Exports>,
    /// Recall every layout and give peers until then to return them.
    drain: Option<Instant>,
    /// Set by the thread when a drain finished: (layouts returned, layouts lost).
    drained: Option<(usize, usize)>,
}

type Shared = Arc<(parking_lot::Mutex<Control>, parking_lot::Condvar)>;

/// A running layout server; stops (peers told LOST, layouts dropped, connections
/// closed) on [`LayoutServer::shutdown`] or drop.
pub struct LayoutServer {
    control: Shared,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    local: SocketAddr,
    metrics: LayoutMetrics,
}

impl std::fmt::Debug for LayoutServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayoutServer").field("local", &self.local).finish()
    }
}

impl LayoutServer {
    /// Opens the exports, listens on `cfg.listen` and starts the server thread. Must be
    /// called inside the manager's tokio runtime. Metrics go to `registry` under
    /// `filemr_layout`.
    pub fn start(
        mgr: Manager,
        cfg: ServerConfig,
        registry: &mut Registry,
    ) -> Result<LayoutServer, LayoutError> {
        let exports = Exports::open(&cfg.exports)?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| LayoutError::Region(RegionError::NoRuntime))?;
        let verbs = |source| LayoutError::Verbs { peer: cfg.listen.to_string(), source };
        let channel = CmChannel::new().map_err(verbs)?;
        let listener = CmId::listen(&channel, cfg.listen, 64).map_err(verbs)?;
        let local = listener.local_addr().unwrap_or(cfg.listen);
        let ours = mgr.device().to_string();
        if let Some(dev) = listener.device_name().filter(|d| *d != ours) {
            return Err(LayoutError::Config(format!(
                "{} is an address of device {dev}, the manager uses {ours}",
                cfg.listen
            )));
        }
        let metrics = LayoutMetrics::new(registry);
        let stop = Arc::new(AtomicBool::new(false));
        let control: Shared = Arc::default();
        let waker = Arc::new(
            Waker::new()
                .map_err(|e| LayoutError::Config(format!("creating the server's eventfd: {e}")))?,
        );
        let w = waker.clone();
        let hook = mgr.on_event(move |_| w.wake());
        let mut server = Server {
            control: control.clone(),
            waker: waker.clone(),
            _hook: hook,
            draining: None,
            closing: false,
            events: mgr.events(),
            mgr,
            exports,
            cfg,
            metrics: metrics.clone(),
            conns: HashMap::new(),
            layouts: HashMap::new(),
            _listener: listener,
            channel,
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("filemr-layout".into())
            .spawn(move || {
                let _rt = rt.enter();
                server.run(&flag);
            })
            .map_err(|e| LayoutError::Config(format!("spawning the server thread: {e}")))?;
        tracing::info!(%local, "layout server listening");
        Ok(LayoutServer { control, stop, waker, thread: Some(thread), local, metrics })
    }

    /// Serves `exports` from now on (layouts already granted stay). Refused, and nothing
    /// changes, when one of them is invalid.
    pub fn set_exports(&self, exports: &[Export]) -> Result<(), LayoutError> {
        let opened = Exports::open(exports)?;
        self.control.0.lock().exports = Some(opened);
        self.waker.wake();
        Ok(())
    }

    /// Recalls every layout and waits until the peers returned them all or `grace`
    /// passed; then the remaining ones are lost (`Shutdown`) and every connection closed.
    /// New layouts are refused (`ESHUTDOWN`) from the start. Returns how many layouts
    /// were returned and how many lost.
    pub fn drain(&self, grace: Duration) -> (usize, usize) {
        let (lock, cv) = &*self.control;
        let mut c = lock.lock();
        c.drain = Some(Instant::now() + grace);
        c.drained = None;
        self.waker.wake();
        loop {
            if let Some(done) = c.drained {
                return done;
            }
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return (0, 0);
            }
            cv.wait_for(&mut c, Duration::from_millis(50));
        }
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &LayoutMetrics {
        &self.metrics
    }

    /// Tells every peer its layouts are lost (`Shutdown`), drops them and closes the
    /// connections.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("layout server thread panicked");
        }
    }
}

impl Drop for LayoutServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// One peer connection.
struct Conn {
    link: Link,
    peer: String,
    malformed: u32,
    layouts: Vec<u64>,
    // Dropped last: the identifier after the queue pair it set up.
    id: CmId,
}

/// A layout a peer holds: its region and its grant (the layout id is the grant's id).
struct Held {
    conn: usize,
    grant: Grant,
    region: Region,
}

struct Server {
    control: Shared,
    /// Wakes the thread's sleep: region events (through `_hook`) and the owner.
    waker: Arc<Waker>,
    _hook: EventHook,
    /// A drain under way: its deadline and how many layouts it started with.
    draining: Option<(Instant, usize)>,
    /// A drain started: new layouts are refused for good.
    closing: bool,
    mgr: Manager,
    exports: Exports,
    cfg: ServerConfig,
    metrics: LayoutMetrics,
    events: RegionEvents,
    conns: HashMap<usize, Conn>,
    layouts: HashMap<u64, Held>,
    // Listening as long as it lives. The identifiers above and this one must be destroyed
    // before their channel.
    _listener: CmId,
    channel: Arc<CmChannel>,
}

fn desc(g: &Grant) -> LayoutDesc {
    let i = g.info();
    LayoutDesc {
        layout: i.id,
        addr: i.addr,
        rkey: i.rkey,
        len: i.len as u64,
        generation: i.generation,
    }
}

fn errno_name(e: Errno) -> String {
    format!("{e:?}")
}

impl Server {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let mut busy = false;
            loop {
                match self.channel.try_next() {
                    Ok(Some(ev)) => {
                        busy = true;
                        self.on_cm(ev);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "rdma_cm channel failed; server stops");
                        return self.close_all();
                    }
                }
            }
            let keys: Vec<usize> = self.conns.keys().copied().collect();
            for key in keys {
                busy |= self.poll_conn(key);
            }
            loop {
                match self.events.try_recv() {
                    Ok(Some(ev)) => {
                        busy = true;
                        self.on_region_event(ev.region, ev.kind);
                    }
                    Ok(None) => break,
                    Err(()) => {
                        tracing::error!("manager gone; layout server stops");
                        return self.close_all();
                    }
                }
            }
            busy |= self.follow_control();
            if !busy && !self.arm_and_look() {
                self.sleep();
            }
        }
        self.close_all();
    }

    /// Before sleeping: arms every connection's completion queue, then polls them once
    /// more (a completion that came before the arming does not notify). Whether one had
    /// something after all.
    fn arm_and_look(&mut self) -> bool {
        let keys: Vec<usize> = self.conns.keys().copied().collect();
        let mut busy = false;
        for key in keys {
            if let Some(c) = self.conns.get(&key)
                && let Err(e) = c.link.arm()
            {
                tracing::warn!(peer = %c.peer, error = %e, "arming a completion queue failed");
            }
            busy |= self.poll_conn(key);
        }
        busy
    }

    /// Sleeps until a CM event, a completion, a region event or the owner's request
    /// (or [`IDLE`]).
    fn sleep(&mut self) {
        let mut fds = vec![self.channel.fd()];
        fds.extend(self.conns.values().map(|c| c.link.notify_fd()));
        sleep::sleep(&self.waker, &fds, IDLE);
        for c in self.conns.values() {
            c.link.take_notifications();
        }
    }

    /// Applies new exports, starts and finishes drains; whether anything happened.
    fn follow_control(&mut self) -> bool {
        let control = self.control.clone();
        let (lock, cv) = &*control;
        let mut c = lock.lock();
        let mut acted = false;
        if let Some(exports) = c.exports.take() {
            self.exports = exports;
            tracing::info!("exports reloaded");
            acted = true;
        }
        if let Some(until) = c.drain.take() {
            let deadline_ms =
                u64::try_from(until.saturating_duration_since(Instant::now()).as_millis())
                    .unwrap_or(u64::MAX);
            let held: Vec<(u64, usize)> = self.layouts.iter().map(|(l, h)| (*l, h.conn)).collect();
            tracing::info!(layouts = held.len(), "draining: recalling every layout");
            for (layout, conn) in &held {
                self.metrics.notice("recall");
                let message = Message::Recall { layout: *layout, deadline_ms };
                self.send(*conn, Frame { request: 0, status: 0, message });
            }
            self.draining = Some((until, held.len()));
            self.closing = true;
            acted = true;
        }
        if let Some((until, started)) = self.draining
            && (self.layouts.is_empty() || Instant::now() >= until)
        {
            let lost = self.layouts.len();
            self.close_all();
            self.draining = None;
            c.drained = Some((started.saturating_sub(lost), lost));
            cv.notify_all();
            acted = true;
        }
        acted
    }

    fn on_cm(&mut self, ev: CmEvent) {
        match ev.kind {
            CmEventKind::ConnectRequest => {
                if let Some(id) = ev.new_id {
                    self.accept(id);
                }
            }
            CmEventKind::Established => {
                if let Some(c) = self.conns.get(&ev.id) {
                    tracing::debug!(peer = %c.peer, "peer connected");
                }
            }
            CmEventKind::Disconnected
            | CmEventKind::ConnectError
            | CmEventKind::Unreachable
            | CmEventKind::Rejected
            | CmEventKind::DeviceRemoval => self.close(ev.id, "disconnected"),
            _ => {}
        }
    }

    fn accept(&mut self, id: CmId) {
        let peer = id.peer_addr().map_or_else(|| "unknown peer".into(), |a| a.to_string());
        if self.conns.len() >= self.cfg.max_connections {
            tracing::warn!(%peer, "connection refused: too many connections");
            let _ = id.reject();
            return;
        }
        let Some(pd) = self.mgr.protection_domain() else {
            tracing::warn!(%peer, "connection refused: the device is gone");
            let _ = id.reject();
            return;
        };
        let made = Link::new(&pd).and_then(|link| {
            id.prepare_accept(&link.qp)?;
            link.post_receives()?;
            id.accept(&link.qp, &[])?;
            Ok(link)
        });
        match made {
            Ok(link) => {
                self.metrics.connections.inc();
                self.metrics.connected.inc();
                let key = id.key();
                self.conns.insert(key, Conn { link, peer, malformed: 0, layouts: Vec::new(), id });
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "connection refused");
                let _ = id.reject();
            }
        }
    }

    /// Drops a connection and every layout it holds. Frames already sent (a reply, a
    /// LOST) get up to [`LINGER`] to leave before the queue pair is destroyed.
    fn close(&mut self, key: usize, why: &str) {
        let Some(c) = self.conns.remove(&key) else { return };
        let start = Instant::now();
        while !c.link.sends_done() && start.elapsed() < LINGER {
            if c.link.poll().is_err() {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        tracing::info!(peer = %c.peer, why, layouts = c.layouts.len(), "peer connection closed");
        for l in &c.layouts {
            if self.layouts.remove(l).is_some() {
                self.metrics.layouts.dec();
            }
        }
        let _ = c.id.disconnect();
        self.metrics.connected.dec();
    }

    fn close_all(&mut self) {
        let layouts: Vec<u64> = self.layouts.keys().copied().collect();
        for l in layouts {
            self.lose(l, LostCode::Shutdown);
        }
        let keys: Vec<usize> = self.conns.keys().copied().collect();
        for k in keys {
            self.close(k, "server shutting down");
        }
    }

    /// Handles what completed on one connection; whether anything did.
    fn poll_conn(&mut self, key: usize) -> bool {
        let Some(c) = self.conns.get(&key) else { return false };
        let done = match c.link.poll() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(peer = %c.peer, error = %e, "polling a connection failed");
                self.close(key, "completion queue failed");
                return true;
            }
        };
        let busy = !done.is_empty();
        for d in done {
            match d {
                Completion::Frame(bytes) => self.on_frame(key, &bytes),
                Completion::Broken(status) => {
                    self.close(key, &format!("queue pair failed: {status:?}"));
                    break;
                }
                Completion::Data { .. } => {}
            }
        }
        busy
    }

    fn send(&mut self, key: usize, frame: Frame) {
        let Some(c) = self.conns.get(&key) else { return };
        match c.link.send(&frame) {
            Ok(()) => {}
            Err(LinkSendError::Wire(e)) => {
                tracing::error!(peer = %c.peer, error = %e, "a reply did not encode");
            }
            Err(LinkSendError::Verbs(e)) => {
                tracing::warn!(peer = %c.peer, error = %e, "send failed");
                self.close(key, "send failed");
            }
        }
    }

    fn on_frame(&mut self, key: usize, bytes: &[u8]) {
        let frame = match Frame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.metrics.malformed.inc();
                let request = wire::peek_request(bytes).unwrap_or(0);
                let Some(c) = self.conns.get_mut(&key) else { return };
                c.malformed += 1;
                tracing::warn!(peer = %c.peer, error = %e, "malformed frame");
                if c.malformed > self.cfg.malformed_limit {
                    return self.close(key, "too many malformed frames");
                }
                return self.send(key, Frame::error(request, e.errno()));
            }
        };
        let request = frame.request;
        let (op, answer) = match frame.message {
            Message::GetRequest { path, offset, len, access, align_shift } => {
                ("get", self.get(key, &path, offset, len, access, align_shift))
            }
            Message::CommitRequest { layout, ranges } => {
                ("commit", self.commit(key, layout, &ranges).map(|()| Message::Committed))
            }
            Message::ReturnRequest { layout } => {
                ("return", self.give_back(key, layout).map(|()| Message::Returned))
            }
            other => ("other", Err((Errno::EPROTO, format!("{} is not a request", other.name())))),
        };
        match answer {
            Ok(message) => {
                self.metrics.request(op, "ok");
                self.send(key, Frame { request, status: 0, message });
            }
            Err((errno, why)) => {
                self.metrics.request(op, &errno_name(errno));
                let peer = self.conns.get(&key).map_or("?", |c| c.peer.as_str());
                tracing::info!(peer, op, %errno, why, "request refused");
                self.send(key, Frame::error(request, errno as i32));
            }
        }
    }

    /// The layout `layout` if connection `key` holds it.
    fn held(&self, key: usize, layout: u64) -> Result<&Held, (Errno, String)> {
        match self.layouts.get(&layout) {
            Some(h) if h.conn == key => Ok(h),
            _ => Err((Errno::ENOENT, format!("no layout {layout} on this connection"))),
        }
    }

    fn get(
        &mut self,
        key: usize,
        path: &[u8],
        offset: u64,
        len: u64,
        access: WireAccess,
        align_shift: u8,
    ) -> Result<Message, (Errno, String)> {
        let access = match access {
            WireAccess::Read => Access::Read,
            WireAccess::Write => Access::Write,
            WireAccess::ReadWrite => Access::ReadWrite,
        };
        if self.closing {
            return Err((Errno::ESHUTDOWN, "the server is shutting down".into()));
        }
        let held = self.conns.get(&key).map_or(0, |c| c.layouts.len());
        if held >= self.cfg.max_layouts_per_connection {
            return Err((Errno::EMFILE, format!("{held} layouts held already")));
        }
        let resolved = self.exports.resolve(path, access)?;
        // Length 0 asks for the rest of the file.
        let len = if len == 0 { resolved.size.saturating_sub(offset) } else { len };
        let len = usize::try_from(len).map_err(|_| (Errno::EINVAL, format!("length {len}")))?;
        let refuse = |e: RegionError| (e.errno(), e.to_string());
        let qp = match self.conns.get(&key) {
            Some(c) => c.link.qp.clone(),
            None => return Err((Errno::ENOTCONN, "connection gone".into())),
        };
        // A peer's aligned promise lets the region use a strategy that is only correct for
        // page-aligned transfers, which the probe checked with packets of the device's
        // MTU: only on connections whose packets are that large (4096, RoCE's largest).
        let alignment = match align_shift {
            0 => 1,
            s if qp.path_mtu().unwrap_or(0) >= 4096 => 1usize << s,
            _ => 1,
        };
        let region = self
            .mgr
            .register_aligned(&resolved.path, offset, len, access, alignment)
            .map_err(refuse)?;
        if region.file_id() != resolved.file {
            return Err((Errno::EXDEV, "the path changed while it was resolved".into()));
        }
        let grant = region.grant(&qp).map_err(refuse)?;
        let d = desc(&grant);
        let export = &self.exports.get(resolved.export).name;
        let strategy = region.strategy().label();
        tracing::info!(layout = d.layout, export, path = %resolved.path.display(), offset, len, ?access, strategy, "layout granted");
        self.layouts.insert(d.layout, Held { conn: key, grant, region });
        self.metrics.layouts.inc();
        if let Some(c) = self.conns.get_mut(&key) {
            c.layouts.push(d.layout);
        }
        Ok(Message::Granted(d))
    }

    fn commit(
        &mut self,
        key: usize,
        layout: u64,
        ranges: &[(u64, u64)],
    ) -> Result<(), (Errno, String)> {
        let h = self.held(key, layout)?;
        match h.grant.state() {
            GrantState::Retargeted => {
                return Err((
                    Errno::ESTALE,
                    format!(
                        "layout {layout} was retargeted at its recall deadline: what was \
                         written since went to scratch memory; return it (AVAILABLE follows)"
                    ),
                ));
            }
            // Why: the region's loss reaches this loop as an event, after the grant
            // already says so; until then a commit gets what a lost layout gets.
            GrantState::Lost => {
                return Err((
                    Errno::ENOENT,
                    format!("layout {layout} was lost with its region (LAYOUT_LOST follows)"),
                ));
            }
            _ => {}
        }
        for &(off, len) in ranges {
            let start =
                usize::try_from(off).map_err(|_| (Errno::EINVAL, format!("offset {off}")))?;
            let end = usize::try_from(off.saturating_add(len))
                .map_err(|_| (Errno::EINVAL, format!("range {off}+{len}")))?;
            h.region.commit(start..end).map_err(|e| (e.errno(), e.to_string()))?;
        }
        Ok(())
    }

    /// LAYOUT_RETURN: after a recall, the grant is returned and the layout kept (AVAILABLE
    /// follows the rebuild); otherwise the layout is given up.
    fn give_back(&mut self, key: usize, layout: u64) -> Result<(), (Errno, String)> {
        let h = self.held(key, layout)?;
        match h.grant.state() {
            GrantState::Recalled | GrantState::Retargeted => {
                h.grant.returned().map_err(|e| (e.errno(), e.to_string()))
            }
            GrantState::Returned => Ok(()),
            _ => {
                self.drop_layout(layout);
                Ok(())
            }
        }
    }

    fn drop_layout(&mut self, layout: u64) {
        if let Some(h) = self.layouts.remove(&layout) {
            self.metrics.layouts.dec();
            if let Some(c) = self.conns.get_mut(&h.conn) {
                c.layouts.retain(|l| *l != layout);
            }
        }
    }

    /// Tells the holder `layout` is lost and drops it.
    fn lose(&mut self, layout: u64, reason: LostCode) {
        if let Some(h) = self.layouts.get(&layout) {
            let conn = h.conn;
            self.metrics.notice("lost");
            self.send(
                conn,
                Frame { request: 0, status: 0, message: Message::Lost { layout, reason } },
            );
        }
        self.drop_layout(layout);
    }

    /// Tells the holders of every layout of `region` it is lost (`code`) and drops them.
    fn lose_region(&mut self, region: u64, code: LostCode) {
        let gone: Vec<u64> =
            self.layouts.iter().filter(|(_, h)| h.region.id() == region).map(|(l, _)| *l).collect();
        for l in gone {
            self.lose(l, code);
        }
    }

    fn on_region_event(&mut self, region: u64, kind: RegionEventKind) {
        if self.layouts.values().any(|h| h.region.id() == region) {
            match &kind {
                RegionEventKind::Recall { grant, deadline } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tracing::info!(region, grant, deadline_in = ?left, "region event: Recall");
                }
                other => tracing::info!(region, event = ?other, "region event"),
            }
        }
        match kind {
            RegionEventKind::Recall { grant, deadline } => {
                let Some(h) = self.layouts.get(&grant) else { return };
                let conn = h.conn;
                let left = deadline.saturating_duration_since(Instant::now());
                let deadline_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                self.metrics.notice("recall");
                let message = Message::Recall { layout: grant, deadline_ms };
                self.send(conn, Frame { request: 0, status: 0, message });
            }
            RegionEventKind::Available { grant, .. } => {
                let Some(h) = self.layouts.get(&grant) else { return };
                let (conn, d) = (h.conn, desc(&h.grant));
                self.metrics.notice("available");
                self.send(conn, Frame { request: 0, status: 0, message: Message::Available(d) });
            }
            RegionEventKind::Fenced { grant } => {
                // A fenced grant is never rebound: the layout is over.
                self.lose(grant, LostCode::Revoked);
            }
            // A suspended region comes back with new keys: its peers ask again.
            RegionEventKind::Suspended { .. } => self.lose_region(region, LostCode::DeviceGone),
            RegionEventKind::Lost { reason } => {
                let code = match reason {
                    LostReason::CommitFailed(_) => LostCode::CommitFailed,
                    LostReason::DeviceGone { .. } => LostCode::DeviceGone,
                    LostReason::Shrunk { .. } | LostReason::LeaseGone(_) => LostCode::FileGone,
                    _ => LostCode::Other,
                };
                self.lose_region(region, code);
            }
            _ => {}
        }
    }
}
