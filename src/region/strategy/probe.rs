//! The strategy probe: try each strategy on a scratch file of the file system, with a real
//! loopback transfer, and keep the first that moves the right bytes.
//!
//! "Registration succeeded" is not enough: on 6.18 rxe an ODP MR registers fine, but an
//! RDMA WRITE whose packet starts inside a page is misplaced to the page's offset 0 (the
//! completion still says success) and an RDMA READ starting inside a page returns the
//! page's first bytes. So each candidate
//! does a 100-byte WRITE at offset 100 (writable access) and a 100-byte READ at offset
//! 300 (readable access) and checks the file. An ODP candidate that fails those is tried
//! again with page-aligned, multi-packet transfers (16 KiB WRITE at 4 KiB, READ at 32 KiB):
//! if they move the right bytes it becomes the decision's `aligned` strategy, for peers
//! that promise aligned I/O. The transfers go through a type-2 memory window bound over
//! the candidate's memory region, the way peers reach regions.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{BuildError, Decision, Strategy, build};
use crate::region::config::Access;
use crate::sys::Mapping;
use crate::verbs::{
    Access as MrAccess, CompletionQueue, MemoryRegion, MemoryWindow, MwType, OdpCaps,
    ProtectionDomain, QueuePair, RemoteBuf, WcStatus,
};

/// Size of the scratch file.
const PROBE_LEN: usize = 16 * 4096;
/// The unaligned transfers the probe checks.
const WRITE_AT: usize = 100;
const READ_AT: usize = 300;
const XFER: usize = 100;
/// The aligned ones: several packets each, page-aligned.
const ALIGNED_WRITE_AT: usize = 4096;
const ALIGNED_READ_AT: usize = 8 * 4096;
const ALIGNED_XFER: usize = 4 * 4096;

/// Where and how much the probe transfers.
#[derive(Clone, Copy)]
struct Shape {
    write_at: usize,
    read_at: usize,
    len: usize,
    what: &'static str,
}

const UNALIGNED: Shape =
    Shape { write_at: WRITE_AT, read_at: READ_AT, len: XFER, what: "not page-aligned" };
const ALIGNED: Shape = Shape {
    write_at: ALIGNED_WRITE_AT,
    read_at: ALIGNED_READ_AT,
    len: ALIGNED_XFER,
    what: "page-aligned, several packets",
};
const WAIT: Duration = Duration::from_secs(5);

/// What the probe needs from the manager.
pub(crate) struct ProbeEnv<'a> {
    pub(crate) pd: &'a Arc<ProtectionDomain>,
    pub(crate) odp: OdpCaps,
    pub(crate) port: u8,
    /// Whether in-place strategies may be used at all (`ManagerConfig::in_place`).
    pub(crate) in_place: bool,
}

/// A scratch file, removed on drop.
struct Scratch {
    file: File,
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn scratch(dir: &Path) -> std::io::Result<Scratch> {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = dir.join(format!(
        ".filemr-probe-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let s = Scratch { file, path };
    s.file.write_all_at(&vec![0xee; PROBE_LEN], 0)?;
    s.file.sync_all()?;
    Ok(s)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(37) as u8) ^ seed).collect()
}

/// Decide the strategy for `access` on the file system holding `dir`.
pub(crate) fn probe(env: &ProbeEnv<'_>, dir: &Path, access: Access) -> Decision {
    if !env.in_place {
        let reason = "in-place strategies disabled by the configuration".to_string();
        return Decision { strategy: Strategy::Staging, reason, aligned: None };
    }
    let s = match scratch(dir) {
        Ok(s) => s,
        Err(e) => {
            return Decision {
                strategy: Strategy::Staging,
                aligned: None,
                reason: format!(
                    "probe: cannot create a scratch file in {} ({e}); staging: chosen without probing",
                    dir.display()
                ),
            };
        }
    };
    let mut notes = Vec::new();
    let mut aligned = None;
    let mut bits = 0;
    if access.is_writable() {
        bits |= OdpCaps::WRITE;
    }
    if access.is_readable() {
        bits |= OdpCaps::READ;
    }
    if !env.odp.rc_supports(bits) {
        notes.push(format!(
            "odp: not offered by the device for this access (general caps {:#x}, RC caps {:#x})",
            env.odp.general, env.odp.rc
        ));
    } else {
        match try_strategy(env, &s.file, Strategy::Odp, access, UNALIGNED) {
            Ok(()) => {
                notes.push("odp: registered, and unaligned RDMA transfers check out".into());
                return decided(Strategy::Odp, notes, None);
            }
            Err(Failure::Transfer(why)) => {
                notes.push(format!("odp: {why}"));
                match try_strategy(env, &s.file, Strategy::Odp, access, ALIGNED) {
                    Ok(()) => {
                        notes.push(
                            "odp: page-aligned transfers check out (for aligned peers)".into(),
                        );
                        aligned = Some(Strategy::Odp);
                    }
                    Err(Failure::Transfer(why) | Failure::Build(why)) => {
                        notes.push(format!("odp aligned: {why}"))
                    }
                }
            }
            Err(Failure::Build(why)) => notes.push(format!("odp: {why}")),
        }
    }
    match try_strategy(env, &s.file, Strategy::Pinned, access, UNALIGNED) {
        Ok(()) => {
            notes.push("pinned: registered, and unaligned RDMA transfers check out".into());
            return decided(Strategy::Pinned, notes, aligned);
        }
        Err(Failure::Transfer(why) | Failure::Build(why)) => notes.push(format!("pinned: {why}")),
    }
    notes.push("staging: registered DRAM, copied from and back to the file".into());
    decided(Strategy::Staging, notes, aligned)
}

fn decided(strategy: Strategy, notes: Vec<String>, aligned: Option<Strategy>) -> Decision {
    let also = aligned.map_or(String::new(), |a| format!(" (aligned peers: {})", a.label()));
    Decision {
        strategy,
        reason: format!("{} => {}{also}", notes.join("; "), strategy.label()),
        aligned,
    }
}

/// Why a candidate was rejected.
enum Failure {
    /// It could not be built (registration refused...).
    Build(String),
    /// It registered, but a transfer moved the wrong bytes or failed.
    Transfer(String),
}

fn try_strategy(
    env: &ProbeEnv<'_>,
    file: &File,
    strategy: Strategy,
    access: Access,
    shape: Shape,
) -> Result<(), Failure> {
    // `build` maps with the access's protection: PROT_READ for read regions. The scratch fd
    // is read-write, while a read region maps through its read lease's read-only fd; the
    // guest tests assert that both give the same decisions on both kernels.
    let built = build(strategy, env.pd, file.as_fd(), 0, PROBE_LEN, access, None)
        .map_err(|e| match e {
            BuildError::Register(v) => {
                format!("ibv_reg_mr failed: {:?} ({})", v.errno, v.errno.desc())
            }
            BuildError::Map(s) => format!("{} failed: {:?}", s.call, s.errno),
            BuildError::Io(op, errno) => format!("{op} failed: {errno:?}"),
        })
        .map_err(Failure::Build)?;
    check_transfers(env, file, &built.mr, &built.mapping, access, shape).map_err(Failure::Transfer)
}

/// A loopback RDMA WRITE (writable access) and READ (readable access) of `shape`, checked
/// against the file.
fn check_transfers(
    env: &ProbeEnv<'_>,
    file: &File,
    target: &MemoryRegion,
    mapping: &Mapping,
    access: Access,
    shape: Shape,
) -> Result<(), String> {
    let Shape { write_at, read_at, len, what } = shape;
    let ctx = env.pd.context();
    let cq = CompletionQueue::new(ctx, 16).map_err(|e| format!("cannot test transfers: {e}"))?;
    let (qa, qb) = QueuePair::loopback_pair(env.pd, &cq, env.port)
        .map_err(|e| format!("cannot test transfers: {e}"))?;
    // The window is bound on the serving QP (qb), which the probe's peer (qa) talks to.
    let mw = MemoryWindow::alloc(env.pd, MwType::Type2)
        .map_err(|e| format!("cannot test transfers: {e}"))?;
    let rkey = qb
        .bind_mw(&mw, target, target.addr(), target.len(), access.mw_access())
        .map_err(|e| format!("registered, but binding a memory window failed: {e}"))?;
    let local_map = Arc::new(Mapping::anonymous(2 * ALIGNED_XFER).map_err(|e| e.to_string())?);
    let local = MemoryRegion::register(env.pd, &local_map, MrAccess::LOCAL_WRITE)
        .map_err(|e| format!("cannot test transfers: {e}"))?;
    let wait = |id: u64| -> Result<(), String> {
        let wc = cq.wait_one(WAIT).map_err(|e| format!("no completion: {e}"))?;
        if wc.wr_id != id || wc.status != WcStatus::Success {
            return Err(format!("completion {wc:?}"));
        }
        Ok(())
    };
    if access.is_writable() {
        let data = pattern(len, 0x5a);
        local_map.write_at(0, &data).map_err(|e| e.to_string())?;
        let remote = RemoteBuf { addr: target.addr() + write_at as u64, rkey };
        qa.post_write(1, &local, 0, len, remote).map_err(|e| e.to_string())?;
        wait(1).map_err(|e| format!("RDMA WRITE at offset {write_at}: {e}"))?;
        if mapping.is_file_backed() {
            mapping.sync().map_err(|e| e.to_string())?;
        }
        let mut back = vec![0; len];
        file.read_exact_at(&mut back, write_at as u64).map_err(|e| e.to_string())?;
        if back != data {
            return Err(format!(
                "registered, but a {len}-byte RDMA WRITE at offset {write_at} ({what}) \
                 completed without landing in the file (such transfers are broken for this MR \
                 kind on this kernel)"
            ));
        }
    }
    if access.is_readable() {
        let known = pattern(len, 0xc3);
        file.write_all_at(&known, read_at as u64).map_err(|e| e.to_string())?;
        let remote = RemoteBuf { addr: target.addr() + read_at as u64, rkey };
        qa.post_read(2, &local, ALIGNED_XFER, len, remote).map_err(|e| e.to_string())?;
        wait(2).map_err(|e| format!("RDMA READ at offset {read_at}: {e}"))?;
        let mut got = vec![0; len];
        local_map.read_at(ALIGNED_XFER, &mut got).map_err(|e| e.to_string())?;
        if got != known {
            return Err(format!(
                "registered, but a {len}-byte RDMA READ at offset {read_at} ({what}) returned \
                 wrong bytes (such transfers are broken for this MR kind on this kernel)"
            ));
        }
    }
    Ok(())
}
