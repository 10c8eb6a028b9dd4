//! File identity: device and inode number.

use std::fmt;

use nix::sys::stat::FileStat;

/// Identifies a file independently of its path: `(st_dev, st_ino)`. Every acquisition of
/// the same file, whatever path it came through, maps to the same `FileId` and therefore
/// to the same shared lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `st_dev` of the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
}

impl FileId {
    pub(crate) fn from_stat(st: &FileStat) -> FileId {
        FileId { dev: st.st_dev, ino: st.st_ino }
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}
