//! The live handles. A C handle is an id (never reused) carried in an opaque pointer, not
//! the address of Rust memory, so a freed, doubly freed or stale handle, or one whose
//! manager was closed, is refused with `EBADF` instead of being dereferenced.
//!
//! This table is the C layer's only process-wide state; the library below it has none.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use filemr_core::grant::Grant;
use filemr_core::region::Region;
use filemr_core::verbs::{CompletionQueue, QueuePair};
use parking_lot::Mutex;

use crate::call::{Fail, Result};
use crate::manager::ManagerHandle;

/// What a handle holds.
#[derive(Clone)]
pub(crate) enum Object {
    Manager(Arc<ManagerHandle>),
    Region(Arc<Region>),
    Grant(Arc<Grant>),
    Cq(Arc<CompletionQueue>),
    Qp(Arc<QueuePair>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Manager(_) => "filemr_manager",
            Object::Region(_) => "filemr_region",
            Object::Grant(_) => "filemr_grant",
            Object::Cq(_) => "filemr_cq",
            Object::Qp(_) => "filemr_qp",
        }
    }

    /// Order in which a closing manager drops its handles (users before what they use).
    fn rank(&self) -> u8 {
        match self {
            Object::Grant(_) => 0,
            Object::Region(_) => 1,
            Object::Qp(_) => 2,
            Object::Cq(_) => 3,
            Object::Manager(_) => 4,
        }
    }
}

struct Entry {
    /// The manager handle it was made under (a manager's is its own).
    owner: u64,
    obj: Object,
}

#[derive(Default)]
struct Table {
    last: u64,
    live: HashMap<u64, Entry>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

/// Adds `obj` made under the manager `owner` (`None`: `obj` is a manager) and returns its
/// handle.
pub(crate) fn insert<T>(owner: Option<u64>, obj: Object) -> *mut T {
    let mut t = TABLE.lock();
    t.last += 1;
    let id = t.last;
    t.live.insert(id, Entry { owner: owner.unwrap_or(id), obj });
    id as usize as *mut T
}

fn id<T>(handle: *const T, kind: &str) -> Result<u64> {
    if handle.is_null() {
        return Err(Fail::invalid(format!("the {kind} handle is NULL")));
    }
    Ok(handle as usize as u64)
}

fn stale(kind: &str) -> Fail {
    Fail::new(libc::EBADF, format!("not a live {kind} handle (freed, or its manager was closed)"))
}

/// The entry of `handle`, which must be a live handle of `kind`.
fn entry<'t, T>(t: &'t Table, handle: *const T, kind: &'static str) -> Result<(u64, &'t Entry)> {
    let id = id(handle, kind)?;
    let e = t.live.get(&id).ok_or_else(|| stale(kind))?;
    if e.obj.kind() != kind {
        return Err(Fail::new(libc::EBADF, format!("a {} handle given as a {kind}", e.obj.kind())));
    }
    Ok((id, e))
}

/// The object behind `handle`, which must be a live handle of `kind`; and its owner.
pub(crate) fn get<T>(handle: *const T, kind: &'static str) -> Result<(u64, Object)> {
    let t = TABLE.lock();
    let (_, e) = entry(&t, handle, kind)?;
    Ok((e.owner, e.obj.clone()))
}

/// Takes `handle` (a live handle of `kind`) out of the table.
pub(crate) fn remove<T>(handle: *const T, kind: &'static str) -> Result<Object> {
    let mut t = TABLE.lock();
    let (id, _) = entry(&t, handle, kind)?;
    Ok(t.live.remove(&id).expect("entry found it").obj)
}

/// Takes every handle made under the manager `owner` out of the table (the manager's own
/// included), in the order they must be dropped.
pub(crate) fn remove_owned_by(owner: u64) -> Vec<Object> {
    let mut t = TABLE.lock();
    let ids: Vec<u64> =
        t.live.iter().filter(|(_, e)| e.owner == owner).map(|(id, _)| *id).collect();
    let mut objs: Vec<Object> =
        ids.iter().filter_map(|id| t.live.remove(id)).map(|e| e.obj).collect();
    objs.sort_by_key(Object::rank);
    objs
}
