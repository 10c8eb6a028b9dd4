use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use crate::sys::{Mapping, Protection, io_errno};
use crate::verbs::{Access, MemoryRegion, ProtectionDomain};

/// Size of the mapping each matrix case registers (as in KERNEL-FACTS.md).
pub const CASE_BYTES: usize = 8 << 20;

/// What memory a case registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A `MAP_SHARED` mapping of a file created in this directory.
    File(PathBuf),
    /// Anonymous private memory.
    Anonymous,
}

/// Pinned or On-Demand-Paging registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MrKind {
    /// A plain MR: the kernel pins the pages.
    Pinned,
    /// `IBV_ACCESS_ON_DEMAND`.
    Odp,
}

/// One registration attempt of the matrix.
#[derive(Debug, Clone)]
pub struct MatrixCase {
    /// Short label, e.g. `pinned writable`.
    pub label: &'static str,
    /// The memory.
    pub backing: Backing,
    /// Pinned or ODP.
    pub kind: MrKind,
    /// Access flags requested (without `ON_DEMAND`; added for ODP).
    pub access: Access,
    /// CPU protection of the mapping.
    pub prot: Protection,
}

/// The result of a case: registered, or the errno the registration failed with.
pub type Outcome = Result<(), Errno>;

/// The matrix rows for a file system directory (plus the anonymous control row when
/// `with_anonymous`).
pub fn matrix_cases(dir: &Path, with_anonymous: bool) -> Vec<MatrixCase> {
    let rw = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let ro = Access::REMOTE_READ;
    let file = || Backing::File(dir.to_path_buf());
    let mut cases = vec![
        MatrixCase {
            label: "pinned writable",
            backing: file(),
            kind: MrKind::Pinned,
            access: rw,
            prot: Protection::ReadWrite,
        },
        MatrixCase {
            label: "pinned read-only, PROT_READ",
            backing: file(),
            kind: MrKind::Pinned,
            access: ro,
            prot: Protection::Read,
        },
        MatrixCase {
            label: "pinned read-only, PROT_READ|PROT_WRITE",
            backing: file(),
            kind: MrKind::Pinned,
            access: ro,
            prot: Protection::ReadWrite,
        },
        MatrixCase {
            label: "ODP writable",
            backing: file(),
            kind: MrKind::Odp,
            access: rw,
            prot: Protection::ReadWrite,
        },
        MatrixCase {
            label: "ODP read-only",
            backing: file(),
            kind: MrKind::Odp,
            access: ro,
            prot: Protection::Read,
        },
    ];
    if with_anonymous {
        cases.push(MatrixCase {
            label: "anonymous pinned writable",
            backing: Backing::Anonymous,
            kind: MrKind::Pinned,
            access: rw,
            prot: Protection::ReadWrite,
        });
    }
    cases
}

/// Run one case: create the backing, map it, register it, deregister. `Err(errno)` is the
/// kernel's answer (or the errno of a setup step, which callers should treat as a failure
/// of the environment).
pub fn run_case(pd: &Arc<ProtectionDomain>, case: &MatrixCase) -> Outcome {
    let mut access = case.access;
    if case.kind == MrKind::Odp {
        access |= Access::ON_DEMAND;
    }
    let mapping = match &case.backing {
        Backing::Anonymous => Mapping::anonymous(CASE_BYTES).map_err(|e| e.errno)?,
        Backing::File(dir) => {
            let path = dir.join(format!("filemr-probe-{}", std::process::id()));
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io_errno(&e))?;
            f.write_all(&vec![0x5a; CASE_BYTES]).map_err(|e| io_errno(&e))?;
            f.sync_all().map_err(|e| io_errno(&e))?;
            let ro;
            let fd = if case.prot == Protection::Read {
                ro = std::fs::File::open(&path).map_err(|e| io_errno(&e))?;
                &ro
            } else {
                &f
            };
            let m = Mapping::file(fd, 0, CASE_BYTES, case.prot).map_err(|e| e.errno);
            let _ = std::fs::remove_file(&path);
            m?
        }
    };
    let mapping = Arc::new(mapping);
    MemoryRegion::register(pd, &mapping, access).map(drop).map_err(|e| e.errno)
}
