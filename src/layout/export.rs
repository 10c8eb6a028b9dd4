//! Exports: the directories a layout server serves, and the resolution of a peer's path
//! (`export/relative/path`) to a file beneath an export's root, never outside it.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::error::LayoutError;
use crate::lease::FileId;
use crate::region::Access;

/// A directory served to peers under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The first component of the paths peers ask for (no `/`, not empty, not `.`/`..`).
    pub name: String,
    /// The directory; peers reach only what lies beneath it.
    pub root: PathBuf,
    /// Refuse write layouts (`EROFS`).
    pub read_only: bool,
}

impl Export {
    /// Whether `name` can name an export: one path component, not `.` or `..` (the
    /// first component of the paths peers ask for). The error says why not.
    pub fn check_name(name: &str) -> Result<(), String> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("{name:?} is not one path component"));
        }
        Ok(())
    }
}

/// The exports with their roots held open (so a renamed or replaced root directory does
/// not change what is served).
#[derive(Debug)]
pub(crate) struct Exports {
    list: Vec<(Export, OwnedFd)>,
}

/// A peer's path resolved to a file beneath an export.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Index of the export.
    pub(crate) export: usize,
    /// The file's path (the export's root joined with the relative path).
    pub(crate) path: PathBuf,
    /// The file that path named when it was resolved beneath the root.
    pub(crate) file: FileId,
    /// Its size then.
    pub(crate) size: u64,
}

/// A refusal: errno and what to log.
pub(crate) type Refusal = (Errno, String);

impl Exports {
    /// Checks and opens every export: names unique and well formed, roots existing
    /// directories.
    pub(crate) fn open(list: &[Export]) -> Result<Exports, LayoutError> {
        let mut out: Vec<(Export, OwnedFd)> = Vec::new();
        for e in list {
            Export::check_name(&e.name)
                .map_err(|why| LayoutError::Config(format!("export name {why}")))?;
            if out.iter().any(|(o, _)| o.name == e.name) {
                return Err(LayoutError::Config(format!("export {:?} is listed twice", e.name)));
            }
            let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
            let fd = openat2(nix::fcntl::AT_FDCWD, e.root.as_path(), how).map_err(|errno| {
                LayoutError::Config(format!(
                    "export {:?}: root {} is not an accessible directory: {errno}",
                    e.name,
                    e.root.display()
                ))
            })?;
            out.push((e.clone(), fd));
        }
        if out.is_empty() {
            return Err(LayoutError::Config("no exports".into()));
        }
        Ok(Exports { list: out })
    }

    /// The export at `index`.
    pub(crate) fn get(&self, index: usize) -> &Export {
        &self.list[index].0
    }

    /// Resolves a peer's `export/relative/path` for `access`: unknown export `ENOENT`,
    /// a write layout on a read-only export `EROFS`, `..`, an absolute path or a symlink
    /// leading out of the export `EXDEV`, not a regular file `EINVAL`.
    pub(crate) fn resolve(&self, raw: &[u8], access: Access) -> Result<Resolved, Refusal> {
        let shown = String::from_utf8_lossy(raw).into_owned();
        let refuse = |errno: Errno, why: &str| (errno, format!("{shown:?}: {why}"));
        let path = Path::new(std::ffi::OsStr::from_bytes(raw));
        let mut parts = path.components();
        let name = match parts.next() {
            Some(Component::Normal(n)) => n,
            _ => return Err(refuse(Errno::EXDEV, "not a path relative to an export")),
        };
        let Some(index) = self.list.iter().position(|(e, _)| e.name.as_bytes() == name.as_bytes())
        else {
            return Err(refuse(Errno::ENOENT, "no such export"));
        };
        let (export, root) = &self.list[index];
        if access.is_writable() && export.read_only {
            return Err(refuse(Errno::EROFS, "write layout on a read-only export"));
        }
        let rel: PathBuf = parts.as_path().to_path_buf();
        if rel.as_os_str().is_empty() {
            return Err(refuse(Errno::EINVAL, "names the export, not a file in it"));
        }
        if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(refuse(Errno::EXDEV, "escapes the export"));
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(root, rel.as_path(), how).map_err(|e| match e {
            Errno::EXDEV | Errno::ELOOP => refuse(Errno::EXDEV, "resolves outside the export"),
            other => refuse(other, "cannot be opened"),
        })?;
        let st = fstat(&fd).map_err(|e| refuse(e, "fstat"))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(refuse(Errno::EINVAL, "not a regular file"));
        }
        Ok(Resolved {
            export: index,
            path: export.root.join(&rel),
            file: FileId { dev: st.st_dev, ino: st.st_ino },
            size: u64::try_from(st.st_size).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (PathBuf, Exports) {
        let dir = std::env::temp_dir().join(format!("filemr-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rw/sub")).unwrap();
        std::fs::create_dir_all(dir.join("ro")).unwrap();
        std::fs::write(dir.join("rw/sub/f"), b"x").unwrap();
        std::fs::write(dir.join("ro/g"), b"y").unwrap();
        std::fs::write(dir.join("secret"), b"z").unwrap();
        std::os::unix::fs::symlink("../secret", dir.join("rw/out")).unwrap();
        std::os::unix::fs::symlink("sub/f", dir.join("rw/in")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("rw/abs")).unwrap();
        let exports = Exports::open(&[
            Export { name: "rw".into(), root: dir.join("rw"), read_only: false },
            Export { name: "ro".into(), root: dir.join("ro"), read_only: true },
        ])
        .unwrap();
        (dir, exports)
    }

    #[test]
    fn paths_resolve_beneath_their_export_only() {
        let (dir, ex) = setup();
        let ok = ex.resolve(b"rw/sub/f", Access::ReadWrite).unwrap();
        assert_eq!(ok.path, dir.join("rw/sub/f"));
        assert_eq!(ex.resolve(b"rw/in", Access::Read).unwrap().file, ok.file, "symlink inside");
        assert_eq!(ex.resolve(b"rw/./sub/f", Access::Read).unwrap().file, ok.file);
        let errno = |p: &[u8], a| ex.resolve(p, a).unwrap_err().0;
        assert_eq!(errno(b"rw/../secret", Access::Read), Errno::EXDEV);
        assert_eq!(errno(b"rw/sub/../../secret", Access::Read), Errno::EXDEV);
        assert_eq!(errno(b"rw/out", Access::Read), Errno::EXDEV, "symlink out");
        assert_eq!(errno(b"rw/abs", Access::Read), Errno::EXDEV, "absolute symlink");
        assert_eq!(errno(b"/etc/passwd", Access::Read), Errno::EXDEV);
        assert_eq!(errno(b"../secret", Access::Read), Errno::EXDEV);
        assert_eq!(errno(b"nope/f", Access::Read), Errno::ENOENT);
        assert_eq!(errno(b"rw/missing", Access::Read), Errno::ENOENT);
        assert_eq!(errno(b"rw", Access::Read), Errno::EINVAL);
        assert_eq!(errno(b"rw/sub", Access::Read), Errno::EINVAL, "a directory");
        assert_eq!(errno(b"ro/g", Access::Write), Errno::EROFS);
        assert_eq!(errno(b"ro/g", Access::ReadWrite), Errno::EROFS);
        assert!(ex.resolve(b"ro/g", Access::Read).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_exports_are_refused_at_start() {
        let e = |name: &str, root: &str| Export {
            name: name.into(),
            root: root.into(),
            read_only: false,
        };
        assert!(Exports::open(&[]).is_err());
        assert!(Exports::open(&[e("a/b", "/tmp")]).is_err());
        assert!(Exports::open(&[e("..", "/tmp")]).is_err());
        assert!(Exports::open(&[e("a", "/tmp"), e("a", "/tmp")]).is_err());
        assert!(Exports::open(&[e("a", "/nonexistent-filemr")]).is_err());
        assert!(Exports::open(&[e("a", "/etc/hostname")]).is_err(), "not a directory");
        assert!(Exports::open(&[e("a", "/tmp")]).is_ok());
    }
}
