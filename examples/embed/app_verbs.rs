//! The application's own verbs objects, made with raw libibverbs calls (through
//! `filemr::verbs::ffi`, the `rdma-sys` crate filemr links) the way a storage server that
//! predates filemr makes them: its device context, protection domain, completion queue
//! and RC queue pairs. filemr adopts them; the application keeps owning them and frees
//! them here, after filemr's objects are gone.
//!
//! Shared by the `embed` example and `tests/rxe_embed.rs`.
#![allow(dead_code)]

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use filemr::verbs::{CqPolling, ffi, is_reserved_wr_id};

/// An errno-carrying error for a failed raw verb.
fn failed(verb: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{verb}: {e}"))
}

fn check(verb: &str, ret: i32) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        let e = io::Error::from_raw_os_error(ret.abs());
        Err(io::Error::new(e.kind(), format!("{verb}: {e}")))
    }
}

/// The application's device context, protection domain and completion queue, and the
/// other objects it makes (destroyed with it).
pub struct AppVerbs {
    pub ctx: *mut ffi::ibv_context,
    pub pd: *mut ffi::ibv_pd,
    pub cq: *mut ffi::ibv_cq,
    made: Mutex<Made>,
}

/// Objects the application made after opening, freed on drop (children first).
#[derive(Default)]
struct Made {
    qps: Vec<*mut ffi::ibv_qp>,
    mrs: Vec<(*mut ffi::ibv_mr, Vec<u8>)>,
    cqs: Vec<*mut ffi::ibv_cq>,
    pds: Vec<*mut ffi::ibv_pd>,
}

// SAFETY: libibverbs objects may be used from any thread.
unsafe impl Send for AppVerbs {}
// SAFETY: as above.
unsafe impl Sync for AppVerbs {}

impl AppVerbs {
    /// `ibv_open_device` of `device`, then `ibv_alloc_pd` and `ibv_create_cq`.
    pub fn open(device: &str) -> io::Result<AppVerbs> {
        let mut n = 0;
        // SAFETY: `n` is a valid out-pointer; the list is freed below.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(failed("ibv_get_device_list"));
        }
        let mut ctx = std::ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: the list holds `n` device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: a live device's name is a NUL-terminated string.
            let name = unsafe { CStr::from_ptr(ffi::ibv_get_device_name(dev)) };
            if name.to_bytes() == device.as_bytes() {
                // SAFETY: `dev` is live while the list is.
                ctx = unsafe { ffi::ibv_open_device(dev) };
                break;
            }
        }
        // SAFETY: freed once; an open context does not need the list.
        unsafe { ffi::ibv_free_device_list(list) };
        if ctx.is_null() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no device {device}")));
        }
        // SAFETY: the context is open.
        let pd = unsafe { ffi::ibv_alloc_pd(ctx) };
        if pd.is_null() {
            return Err(failed("ibv_alloc_pd"));
        }
        // SAFETY: as above; no channel.
        let cq =
            unsafe { ffi::ibv_create_cq(ctx, 256, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if cq.is_null() {
            return Err(failed("ibv_create_cq"));
        }
        Ok(AppVerbs { ctx, pd, cq, made: Mutex::default() })
    }

    /// Another protection domain on the same context (for misuse tests).
    pub fn alloc_pd(&self) -> io::Result<*mut ffi::ibv_pd> {
        // SAFETY: the context is open.
        let pd = unsafe { ffi::ibv_alloc_pd(self.ctx) };
        if pd.is_null() {
            return Err(failed("ibv_alloc_pd"));
        }
        self.made.lock().unwrap().pds.push(pd);
        Ok(pd)
    }

    /// Another completion queue.
    pub fn create_cq(&self) -> io::Result<*mut ffi::ibv_cq> {
        // SAFETY: the context is open; no channel.
        let cq = unsafe {
            ffi::ibv_create_cq(self.ctx, 256, std::ptr::null_mut(), std::ptr::null_mut(), 0)
        };
        if cq.is_null() {
            return Err(failed("ibv_create_cq"));
        }
        self.made.lock().unwrap().cqs.push(cq);
        Ok(cq)
    }

    /// An RC queue pair in `pd` sending and receiving on `cq`, with only the completions
    /// the application asks for (`sq_sig_all = 0`).
    pub fn create_qp(
        &self,
        pd: *mut ffi::ibv_pd,
        cq: *mut ffi::ibv_cq,
    ) -> io::Result<*mut ffi::ibv_qp> {
        // SAFETY: plain old data; the fields that matter are set below.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq;
        init.recv_cq = cq;
        init.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        init.cap.max_send_wr = 64;
        init.cap.max_recv_wr = 64;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: PD and CQ are live.
        let qp = unsafe { ffi::ibv_create_qp(pd, &mut init) };
        if qp.is_null() {
            return Err(failed("ibv_create_qp"));
        }
        self.made.lock().unwrap().qps.push(qp);
        Ok(qp)
    }

    /// Posts `n` receives of up to 256 bytes each on `qp` (`wr_id` 0..n), into a buffer
    /// the application registers in its protection domain.
    pub fn post_recvs(&self, qp: *mut ffi::ibv_qp, n: usize) -> io::Result<()> {
        let mut buf = vec![0u8; 256 * n.max(1)];
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as i32;
        // SAFETY: the buffer lives in `made` until the MR is deregistered on drop.
        let mr = unsafe { ffi::ibv_reg_mr(self.pd, buf.as_mut_ptr().cast(), buf.len(), access) };
        if mr.is_null() {
            return Err(failed("ibv_reg_mr"));
        }
        // SAFETY: the MR is live.
        let lkey = unsafe { (*mr).lkey };
        for i in 0..n {
            let mut sge =
                ffi::ibv_sge { addr: buf.as_ptr() as u64 + 256 * i as u64, length: 256, lkey };
            let mut wr = ffi::ibv_recv_wr {
                wr_id: i as u64,
                next: std::ptr::null_mut(),
                sg_list: &mut sge,
                num_sge: 1,
            };
            let mut bad = std::ptr::null_mut();
            // SAFETY: QP live; `wr` and `sge` outlive the call; the buffer is registered.
            check("ibv_post_recv", unsafe { ffi::ibv_post_recv(qp, &mut wr, &mut bad) })?;
        }
        self.made.lock().unwrap().mrs.push((mr, buf));
        Ok(())
    }

    /// Moves `qp` to RTS connected to `remote_qpn` at `remote_gid` (RoCE v2: GRH with
    /// local GID `gid_index` on port 1), letting the peer READ and WRITE through it.
    pub fn connect(
        &self,
        qp: *mut ffi::ibv_qp,
        gid_index: u8,
        mtu: u32,
        remote_qpn: u32,
        remote_gid: [u8; 16],
    ) -> io::Result<()> {
        let rights = ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        self.connect_with(qp, gid_index, mtu, remote_qpn, remote_gid, rights.0)
    }

    /// [`AppVerbs::connect`] letting the peer use only `rights` (`IBV_ACCESS_REMOTE_*`).
    pub fn connect_with(
        &self,
        qp: *mut ffi::ibv_qp,
        gid_index: u8,
        mtu: u32,
        remote_qpn: u32,
        remote_gid: [u8; 16],
        rights: u32,
    ) -> io::Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        use ffi::ibv_qp_state as S;
        let modify = |a: &mut ffi::ibv_qp_attr, mask: ffi::ibv_qp_attr_mask, what: &str| {
            // SAFETY: the QP is live and `a` is a valid attribute block for `mask`.
            check(what, unsafe { ffi::ibv_modify_qp(qp, a, mask.0 as i32) })
        };
        // SAFETY: plain old data; zero is valid.
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = S::IBV_QPS_INIT;
        a.port_num = 1;
        a.qp_access_flags = rights | ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
        let m = M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS;
        modify(&mut a, m, "ibv_modify_qp(INIT)")?;
        // SAFETY: as above.
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = S::IBV_QPS_RTR;
        a.path_mtu = mtu;
        a.dest_qp_num = remote_qpn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.is_global = 1;
        a.ah_attr.port_num = 1;
        a.ah_attr.grh.dgid = ffi::ibv_gid { raw: remote_gid };
        a.ah_attr.grh.sgid_index = gid_index;
        a.ah_attr.grh.hop_limit = 1;
        let m = M::IBV_QP_STATE
            | M::IBV_QP_AV
            | M::IBV_QP_PATH_MTU
            | M::IBV_QP_DEST_QPN
            | M::IBV_QP_RQ_PSN
            | M::IBV_QP_MAX_DEST_RD_ATOMIC
            | M::IBV_QP_MIN_RNR_TIMER;
        modify(&mut a, m, "ibv_modify_qp(RTR)")?;
        // SAFETY: as above.
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = S::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.max_rd_atomic = 1;
        let m = M::IBV_QP_STATE
            | M::IBV_QP_TIMEOUT
            | M::IBV_QP_RETRY_CNT
            | M::IBV_QP_RNR_RETRY
            | M::IBV_QP_SQ_PSN
            | M::IBV_QP_MAX_QP_RD_ATOMIC;
        modify(&mut a, m, "ibv_modify_qp(RTS)")
    }

    /// `qp`'s state (`IBV_QPS_*`).
    pub fn qp_state(&self, qp: *mut ffi::ibv_qp) -> io::Result<u32> {
        // SAFETY: plain old data, overwritten by the call.
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32;
        // SAFETY: the QP is live; both out-pointers are valid.
        check("ibv_query_qp", unsafe { ffi::ibv_query_qp(qp, &mut a, mask, &mut init) })?;
        Ok(a.qp_state)
    }

    /// One `ibv_poll_cq` of `cq`, up to `out.len()` completions: the application's own
    /// poll.
    pub fn poll(&self, cq: *mut ffi::ibv_cq, out: &mut [ffi::ibv_wc]) -> io::Result<usize> {
        let n = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: the CQ is live and `out` has room for `n` entries.
        let got = unsafe { ffi::ibv_poll_cq(cq, n, out.as_mut_ptr()) };
        if got < 0 {
            return Err(io::Error::from_raw_os_error(-got));
        }
        Ok(got as usize)
    }
}

impl Drop for AppVerbs {
    fn drop(&mut self) {
        // SAFETY: created here and freed once, children first; filemr's adopted wrappers
        // (and its regions and windows) are dropped before this, by the caller's order.
        unsafe {
            let made = self.made.get_mut().unwrap();
            for qp in made.qps.drain(..) {
                ffi::ibv_destroy_qp(qp);
            }
            for (mr, _buf) in made.mrs.drain(..) {
                ffi::ibv_dereg_mr(mr);
            }
            for cq in made.cqs.drain(..).chain([self.cq]) {
                ffi::ibv_destroy_cq(cq);
            }
            for pd in made.pds.drain(..).chain([self.pd]) {
                ffi::ibv_dealloc_pd(pd);
            }
            ffi::ibv_close_device(self.ctx);
        }
    }
}

/// The application's completion loop on its own thread. On a
/// [`CqPolling::Application`] queue: `ibv_poll_cq`, as it always did, plus one line for
/// filemr: completions whose `wr_id` is filemr's go to
/// [`CompletionQueue::deliver`](filemr::verbs::CompletionQueue::deliver). On a
/// [`CqPolling::Shared`] one: [`CompletionQueue::poll_wc`] instead of `ibv_poll_cq`.
pub struct PollLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// The application's own completions seen.
    pub own: Arc<AtomicU64>,
    /// Their `wr_id`s, in order.
    pub own_ids: Arc<Mutex<Vec<u64>>>,
    /// filemr's completions handed over.
    pub delivered: Arc<AtomicU64>,
}

impl PollLoop {
    /// Starts polling the completion queue `cq` (one of `app`'s, adopted by filemr).
    pub fn start(app: Arc<AppVerbs>, cq: Arc<filemr::verbs::CompletionQueue>) -> PollLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let own = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(AtomicU64::new(0));
        let own_ids = Arc::new(Mutex::new(Vec::new()));
        let (s, o, d, ids) = (stop.clone(), own.clone(), delivered.clone(), own_ids.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: plain old data; zero is a valid value to be overwritten.
            let mut wcs: [ffi::ibv_wc; 16] = unsafe { std::mem::zeroed() };
            while !s.load(Ordering::Relaxed) {
                let n = match cq.polling() {
                    CqPolling::Application => app.poll(cq.as_raw(), &mut wcs)?,
                    CqPolling::Shared => cq.poll_wc(&mut wcs).map_err(io::Error::other)?,
                };
                for wc in &wcs[..n] {
                    assert!(
                        !is_reserved_wr_id(wc.wr_id) || cq.polling() == CqPolling::Application,
                        "poll_wc returned filemr's completion {:#x}",
                        wc.wr_id
                    );
                    if cq.deliver(wc) {
                        d.fetch_add(1, Ordering::Relaxed);
                    } else {
                        o.fetch_add(1, Ordering::Relaxed);
                        ids.lock().unwrap().push(wc.wr_id);
                    }
                }
                if n == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            Ok(())
        });
        PollLoop { stop, thread: Some(thread), own, own_ids, delivered }
    }

    /// Stops the loop; returns its error, if it failed.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(Ok(()), |t| t.join().expect("poll loop panicked"))
    }
}

impl Drop for PollLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
