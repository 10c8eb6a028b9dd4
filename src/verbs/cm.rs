//! RDMA connection management (librdmacm): an event channel, connection identifiers, and
//! the handshake that brings one of filemr's own [`QueuePair`]s to RTS.
//!
//! The queue pairs are never created by librdmacm (`rdma_create_qp`): they live in the
//! caller's protection domain, on the caller's [`super::Context`], so that regions and
//! grants work on them. librdmacm opens its own device contexts; an identifier's device is
//! only compared by name with the queue pair's (see [`CmId::device_name`]). The queue pair
//! is moved through INIT, RTR and RTS with the attributes `rdma_init_qp_attr` computes, the
//! way librdmacm itself does for the QPs it creates.

use std::ffi::CStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rdma_sys as ffi;

use super::{Access, QueuePair, VerbsError, VerbsResult};

/// Read and atomic operations one side may have outstanding towards the other.
const RD_ATOMIC: u8 = 4;

/// An RDMA CM event channel (`rdma_event_channel`), non-blocking, destroyed on drop.
pub struct CmChannel {
    ptr: NonNull<ffi::rdma_event_channel>,
}

// SAFETY: librdmacm event channels may be used from any thread.
unsafe impl Send for CmChannel {}
// SAFETY: as above; `rdma_get_cm_event` is thread-safe.
unsafe impl Sync for CmChannel {}

impl CmChannel {
    /// Opens a channel (`/dev/infiniband/rdma_cm`, module `rdma_ucm`).
    pub fn new() -> VerbsResult<Arc<CmChannel>> {
        // SAFETY: no arguments; NULL on failure.
        let ch = unsafe { ffi::rdma_create_event_channel() };
        let ptr =
            NonNull::new(ch).ok_or_else(|| VerbsError::last("rdma_create_event_channel", ""))?;
        let chan = CmChannel { ptr };
        let fd = chan.fd().as_raw_fd();
        nix::fcntl::fcntl(chan.fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| VerbsError::new("fcntl", e, format!("O_NONBLOCK on rdma_cm fd {fd}")))?;
        Ok(Arc::new(chan))
    }

    /// The channel's file descriptor: readable when an event is pending.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the channel is live; its fd stays open until the channel is destroyed.
        unsafe { BorrowedFd::borrow_raw(self.ptr.as_ref().fd) }
    }

    /// The next event, waiting at most `timeout`; `None` when none arrived in time.
    pub fn next(&self, timeout: Duration) -> VerbsResult<Option<CmEvent>> {
        if let Some(ev) = self.try_next()? {
            return Ok(Some(ev));
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => self.try_next(),
            Err(e) => Err(VerbsError::new("poll", e, "rdma_cm channel")),
        }
    }

    /// The next event if one is pending.
    pub fn try_next(&self) -> VerbsResult<Option<CmEvent>> {
        let mut ev: *mut ffi::rdma_cm_event = std::ptr::null_mut();
        // SAFETY: the channel is live; `ev` is a valid out-pointer.
        let ret = unsafe { ffi::rdma_get_cm_event(self.ptr.as_ptr(), &mut ev) };
        if ret != 0 {
            let errno = Errno::last();
            if errno == Errno::EAGAIN {
                return Ok(None);
            }
            return Err(VerbsError::new("rdma_get_cm_event", errno, ""));
        }
        // SAFETY: on success `ev` points at an event we own until we ack it.
        let e = unsafe { &*ev };
        let kind = CmEventKind::from_raw(e.event);
        let private_data = if matches!(
            kind,
            CmEventKind::ConnectRequest | CmEventKind::ConnectResponse | CmEventKind::Established
        ) {
            // SAFETY: connection events carry `param.conn`; its private data pointer is
            // valid for `private_data_len` bytes until the ack.
            let conn = unsafe { &e.param.conn };
            if conn.private_data.is_null() {
                Vec::new()
            } else {
                // SAFETY: as above.
                unsafe {
                    std::slice::from_raw_parts(
                        conn.private_data as *const u8,
                        conn.private_data_len as usize,
                    )
                }
                .to_vec()
            }
        } else {
            Vec::new()
        };
        let event = CmEvent {
            kind,
            status: e.status,
            id: e.id as usize,
            listen_id: e.listen_id as usize,
            new_id: None,
            private_data,
        };
        let raw_id = e.id;
        // SAFETY: the event is ours and acked exactly once; nothing refers to it after.
        unsafe { ffi::rdma_ack_cm_event(ev) };
        let mut event = event;
        if event.kind == CmEventKind::ConnectRequest {
            // A connect request creates a new identifier that the receiver owns.
            event.new_id = NonNull::new(raw_id).map(|ptr| CmId { ptr });
        }
        Ok(Some(event))
    }
}

impl Drop for CmChannel {
    fn drop(&mut self) {
        // SAFETY: created by us, destroyed once; every identifier on it holds an `Arc` of
        // the channel's owner and is destroyed first.
        unsafe { ffi::rdma_destroy_event_channel(self.ptr.as_ptr()) }
    }
}

/// What an RDMA CM event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmEventKind {
    /// `rdma_resolve_addr` finished.
    AddrResolved,
    /// `rdma_resolve_addr` failed.
    AddrError,
    /// `rdma_resolve_route` finished.
    RouteResolved,
    /// `rdma_resolve_route` failed.
    RouteError,
    /// A peer asks to connect (the event carries the new identifier).
    ConnectRequest,
    /// The passive side accepted (active side, queue pair not created by librdmacm).
    ConnectResponse,
    /// The connection could not be set up.
    ConnectError,
    /// The peer did not answer.
    Unreachable,
    /// The peer refused.
    Rejected,
    /// The connection is up.
    Established,
    /// The peer disconnected (or the connection broke).
    Disconnected,
    /// The device under the identifier is going away.
    DeviceRemoval,
    /// The identifier left time-wait.
    TimewaitExit,
    /// Another event (multicast, address change).
    Other(u32),
}

impl CmEventKind {
    fn from_raw(t: ffi::rdma_cm_event_type::Type) -> CmEventKind {
        use ffi::rdma_cm_event_type as T;
        match t {
            T::RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
            T::RDMA_CM_EVENT_ADDR_ERROR => CmEventKind::AddrError,
            T::RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
            T::RDMA_CM_EVENT_ROUTE_ERROR => CmEventKind::RouteError,
            T::RDMA_CM_EVENT_CONNECT_REQUEST => CmEventKind::ConnectRequest,
            T::RDMA_CM_EVENT_CONNECT_RESPONSE => CmEventKind::ConnectResponse,
            T::RDMA_CM_EVENT_CONNECT_ERROR => CmEventKind::ConnectError,
            T::RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Unreachable,
            T::RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected,
            T::RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established,
            T::RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
            T::RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
            T::RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEventKind::TimewaitExit,
            other => CmEventKind::Other(other),
        }
    }
}

/// One RDMA CM event, already acknowledged.
#[derive(Debug)]
pub struct CmEvent {
    /// What happened.
    pub kind: CmEventKind,
    /// The event's status (an errno or a CM reject reason; 0 when fine).
    pub status: i32,
    /// The identifier it is about ([`CmId::key`]); for a connect request, the new one's.
    pub id: usize,
    /// For a connect request: the listening identifier's key.
    pub listen_id: usize,
    /// For a connect request: the new identifier, owned by the receiver of the event.
    pub new_id: Option<CmId>,
    /// The private data the peer sent with a connect request, accept or establishment.
    pub private_data: Vec<u8>,
}

/// An RDMA CM identifier (`rdma_cm_id`, port space TCP), destroyed on drop. Its events
/// arrive on the channel it was created on; drop it before that channel.
pub struct CmId {
    ptr: NonNull<ffi::rdma_cm_id>,
}

// SAFETY: librdmacm identifiers may be used from any thread (calls are serialized by the
// kernel per identifier).
unsafe impl Send for CmId {}
// SAFETY: as above.
unsafe impl Sync for CmId {}

impl std::fmt::Debug for CmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmId")
            .field("key", &self.key())
            .field("device", &self.device_name())
            .field("peer", &self.peer_addr())
            .finish()
    }
}

fn cm_check(verb: &'static str, ret: i32, detail: impl FnOnce() -> String) -> VerbsResult<()> {
    if ret != 0 { Err(VerbsError::last(verb, detail())) } else { Ok(()) }
}

fn timeout_ms(t: Duration) -> i32 {
    i32::try_from(t.as_millis()).unwrap_or(i32::MAX)
}

impl CmId {
    /// A new identifier whose events arrive on `channel`.
    pub fn new(channel: &CmChannel) -> VerbsResult<CmId> {
        let mut id: *mut ffi::rdma_cm_id = std::ptr::null_mut();
        // SAFETY: the channel is live; `id` is a valid out-pointer.
        let ret = unsafe {
            ffi::rdma_create_id(
                channel.ptr.as_ptr(),
                &mut id,
                std::ptr::null_mut(),
                ffi::rdma_port_space::RDMA_PS_TCP,
            )
        };
        cm_check("rdma_create_id", ret, String::new)?;
        let ptr = NonNull::new(id).ok_or_else(|| VerbsError::last("rdma_create_id", "NULL"))?;
        Ok(CmId { ptr })
    }

    /// A listening identifier bound to `addr` (port 0 picks one: see
    /// [`CmId::local_addr`]).
    pub fn listen(channel: &CmChannel, addr: SocketAddr, backlog: i32) -> VerbsResult<CmId> {
        let id = CmId::new(channel)?;
        let mut sa = SockAddr::from(addr);
        // SAFETY: the identifier is live; `sa` holds a valid sockaddr of its family.
        let ret = unsafe { ffi::rdma_bind_addr(id.ptr.as_ptr(), sa.as_mut_ptr()) };
        cm_check("rdma_bind_addr", ret, || addr.to_string())?;
        // SAFETY: the identifier is live and bound.
        let ret = unsafe { ffi::rdma_listen(id.ptr.as_ptr(), backlog) };
        cm_check("rdma_listen", ret, || addr.to_string())?;
        Ok(id)
    }

    /// A value identifying this identifier in [`CmEvent::id`].
    pub fn key(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn raw(&self) -> &ffi::rdma_cm_id {
        // SAFETY: the identifier is live until drop; librdmacm only changes its fields
        // inside calls on it or while handing out its events, which we serialize.
        unsafe { self.ptr.as_ref() }
    }

    /// The RDMA device the identifier is bound to (after bind on an address, address
    /// resolution, or for a connect request), by name.
    pub fn device_name(&self) -> Option<String> {
        let verbs = self.raw().verbs;
        if verbs.is_null() {
            return None;
        }
        // SAFETY: `verbs` is a context librdmacm keeps open while the identifier lives;
        // its device pointer and name are constant.
        let name = unsafe { ffi::ibv_get_device_name((*verbs).device) };
        // SAFETY: a NUL-terminated string owned by the device.
        (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
    }

    /// The local address (after bind or resolution).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: reading the storage variant of the union is valid for any content.
        from_storage(unsafe { &self.raw().route.addr.src_addr_union.src_storage })
    }

    /// The peer's address (after resolution, or for a connect request).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as above.
        from_storage(unsafe { &self.raw().route.addr.dst_addr_union.dst_storage })
    }

    /// Starts resolving `dst` to a device and GID, from `src` when given (binding the
    /// source address picks the local device and the route: without it, a destination
    /// that is a local address of another device is looped back inside that device);
    /// completes with [`CmEventKind::AddrResolved`] or [`CmEventKind::AddrError`].
    pub fn resolve_addr(
        &self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> VerbsResult<()> {
        let mut d = SockAddr::from(dst);
        let mut s = src.map(SockAddr::from);
        let sp = s.as_mut().map_or(std::ptr::null_mut(), SockAddr::as_mut_ptr);
        // SAFETY: the identifier is live; `d` (and `s` when given) hold valid sockaddrs
        // that outlive the call; a NULL source is allowed.
        let ret = unsafe {
            ffi::rdma_resolve_addr(self.ptr.as_ptr(), sp, d.as_mut_ptr(), timeout_ms(timeout))
        };
        cm_check("rdma_resolve_addr", ret, || format!("{src:?} -> {dst}"))
    }

    /// Starts resolving the route; completes with [`CmEventKind::RouteResolved`].
    pub fn resolve_route(&self, timeout: Duration) -> VerbsResult<()> {
        // SAFETY: the identifier is live with a resolved address.
        let ret = unsafe { ffi::rdma_resolve_route(self.ptr.as_ptr(), timeout_ms(timeout)) };
        cm_check("rdma_resolve_route", ret, || format!("{:?}", self.peer_addr()))
    }

    /// Moves `qp` to `state` with the attributes the CM computes for this connection.
    /// INIT additionally gets every local and remote access right: what a peer may do is
    /// decided by the memory windows it is granted, not by the QP.
    fn move_qp(&self, qp: &QueuePair, state: ffi::ibv_qp_state::Type) -> VerbsResult<()> {
        // SAFETY: plain old data; zero is valid; the state is set below.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = state;
        let mut mask: i32 = 0;
        // SAFETY: the identifier is live; `attr` and `mask` are valid out-pointers.
        let ret = unsafe { ffi::rdma_init_qp_attr(self.ptr.as_ptr(), &mut attr, &mut mask) };
        cm_check("rdma_init_qp_attr", ret, || format!("QP state {state}"))?;
        if state == ffi::ibv_qp_state::IBV_QPS_INIT {
            attr.qp_access_flags = (Access::LOCAL_WRITE
                | Access::REMOTE_WRITE
                | Access::REMOTE_READ
                | Access::REMOTE_ATOMIC)
                .bits();
            mask |= ffi::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS.0 as i32;
        }
        if state == ffi::ibv_qp_state::IBV_QPS_RTR {
            attr.max_dest_rd_atomic = RD_ATOMIC;
        }
        if state == ffi::ibv_qp_state::IBV_QPS_RTS {
            attr.max_rd_atomic = RD_ATOMIC;
        }
        qp.modify(&mut attr, ffi::ibv_qp_attr_mask(mask as u32), "rdma_cm transition")
    }

    fn check_device(&self, qp: &QueuePair) -> VerbsResult<()> {
        let ours = qp.pd().context().name();
        match self.device_name() {
            Some(d) if d == ours => Ok(()),
            other => Err(VerbsError::new(
                "rdma_cm",
                Errno::EXDEV,
                format!("connection is on device {other:?}, the queue pair on {ours}"),
            )),
        }
    }

    fn conn_param(qp: &QueuePair, private: &[u8]) -> VerbsResult<ffi::rdma_conn_param> {
        let len = u8::try_from(private.len()).map_err(|_| {
            VerbsError::new(
                "rdma_cm",
                Errno::E2BIG,
                format!("{} bytes private data", private.len()),
            )
        })?;
        Ok(ffi::rdma_conn_param {
            private_data: private.as_ptr().cast(),
            private_data_len: len,
            responder_resources: RD_ATOMIC,
            initiator_depth: RD_ATOMIC,
            flow_control: 0,
            retry_count: 7,
            rnr_retry_count: 7,
            srq: 0,
            qp_num: qp.qp_num(),
        })
    }

    /// Active side, after [`CmEventKind::RouteResolved`]: moves `qp` (a fresh RC queue pair
    /// on this identifier's device) to INIT and sends the connect request. Completes with
    /// [`CmEventKind::ConnectResponse`], then call [`CmId::establish`].
    pub fn connect(&self, qp: &QueuePair, private: &[u8]) -> VerbsResult<()> {
        self.check_device(qp)?;
        self.move_qp(qp, ffi::ibv_qp_state::IBV_QPS_INIT)?;
        let mut param = Self::conn_param(qp, private)?;
        // SAFETY: the identifier is live; `param` and the private data it points at live
        // across the call (librdmacm copies them).
        let ret = unsafe { ffi::rdma_connect(self.ptr.as_ptr(), &mut param) };
        cm_check("rdma_connect", ret, || format!("{:?}", self.peer_addr()))
    }

    /// Active side, on [`CmEventKind::ConnectResponse`]: moves `qp` to RTR and RTS and
    /// completes the handshake.
    pub fn establish(&self, qp: &QueuePair) -> VerbsResult<()> {
        self.move_qp(qp, ffi::ibv_qp_state::IBV_QPS_RTR)?;
        self.move_qp(qp, ffi::ibv_qp_state::IBV_QPS_RTS)?;
        // SAFETY: the identifier is live and has received the connect response.
        let ret = unsafe { ffi::rdma_establish(self.ptr.as_ptr()) };
        cm_check("rdma_establish", ret, || format!("{:?}", self.peer_addr()))
    }

    /// Passive side, for the identifier of a connect request: moves `qp` (a fresh RC queue
    /// pair on the request's device) through INIT and RTR to RTS. Post its receives, then
    /// [`CmId::accept`].
    pub fn prepare_accept(&self, qp: &QueuePair) -> VerbsResult<()> {
        self.check_device(qp)?;
        self.move_qp(qp, ffi::ibv_qp_state::IBV_QPS_INIT)?;
        self.move_qp(qp, ffi::ibv_qp_state::IBV_QPS_RTR)?;
        self.move_qp(qp, ffi::ibv_qp_state::IBV_QPS_RTS)
    }

    /// Passive side: accepts the connect request with `qp` (made ready by
    /// [`CmId::prepare_accept`]). [`CmEventKind::Established`] follows.
    pub fn accept(&self, qp: &QueuePair, private: &[u8]) -> VerbsResult<()> {
        let mut param = Self::conn_param(qp, private)?;
        // SAFETY: the identifier is live (a connect request's); `param` lives across it.
        let ret = unsafe { ffi::rdma_accept(self.ptr.as_ptr(), &mut param) };
        cm_check("rdma_accept", ret, || format!("{:?}", self.peer_addr()))
    }

    /// Passive side: refuses a connect request.
    pub fn reject(&self) -> VerbsResult<()> {
        // SAFETY: the identifier is live; no private data.
        let ret = unsafe { ffi::rdma_reject(self.ptr.as_ptr(), std::ptr::null(), 0) };
        cm_check("rdma_reject", ret, || format!("{:?}", self.peer_addr()))
    }

    /// Starts tearing the connection down; both sides get [`CmEventKind::Disconnected`].
    pub fn disconnect(&self) -> VerbsResult<()> {
        // SAFETY: the identifier is live.
        let ret = unsafe { ffi::rdma_disconnect(self.ptr.as_ptr()) };
        cm_check("rdma_disconnect", ret, || format!("{:?}", self.peer_addr()))
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: owned by us and destroyed once; its events were acked when read, so the
        // call does not wait on unacknowledged events.
        let ret = unsafe { ffi::rdma_destroy_id(self.ptr.as_ptr()) };
        if ret != 0 {
            tracing::error!(errno = %Errno::last(), "rdma_destroy_id failed");
        }
    }
}

/// A socket address in the C layout librdmacm takes.
struct SockAddr(libc::sockaddr_storage);

impl SockAddr {
    fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut self.0 as *mut libc::sockaddr_storage).cast()
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> SockAddr {
        // SAFETY: plain old data; zero is valid.
        let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above.
                unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            }
        }
        SockAddr(st)
    }
}

fn from_storage(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let p = (st as *const libc::sockaddr_storage).cast::<u8>();
    match st.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { std::ptr::read_unaligned(p.cast::<libc::sockaddr_in>()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let s = unsafe { std::ptr::read_unaligned(p.cast::<libc::sockaddr_in6>()) };
            let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
            let port = u16::from_be(s.sin6_port);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, port, s.sin6_flowinfo, s.sin6_scope_id)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_survive_the_c_layout() {
        for a in ["10.77.0.1:4791", "[fe80::1]:20049", "0.0.0.0:0"] {
            let addr: SocketAddr = a.parse().unwrap();
            let sa = SockAddr::from(addr);
            assert_eq!(from_storage(&sa.0), Some(addr), "{a}");
        }
        // SAFETY: plain old data.
        let empty: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(from_storage(&empty), None);
    }
}
