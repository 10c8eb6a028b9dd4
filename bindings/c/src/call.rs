//! How every C entry point runs: arguments checked, errors turned into an errno-compatible
//! result code plus a message kept for the calling thread, and no panic crossing the
//! boundary.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use filemr_core::region::RegionError;
use filemr_core::verbs::VerbsError;

thread_local! {
    /// The message of the calling thread's last failed call.
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A failed call: the errno it returns and what went wrong.
pub(crate) struct Fail {
    pub(crate) errno: c_int,
    pub(crate) message: String,
}

impl Fail {
    pub(crate) fn new(errno: c_int, message: impl Into<String>) -> Fail {
        Fail { errno, message: message.into() }
    }

    /// `EINVAL` naming the bad argument.
    pub(crate) fn invalid(message: impl Into<String>) -> Fail {
        Fail::new(libc::EINVAL, message)
    }
}

impl From<RegionError> for Fail {
    fn from(e: RegionError) -> Fail {
        Fail::new(e.errno() as c_int, e.to_string())
    }
}

impl From<VerbsError> for Fail {
    fn from(e: VerbsError) -> Fail {
        Fail::new(e.errno as c_int, e.to_string())
    }
}

pub(crate) type Result<T> = std::result::Result<T, Fail>;

/// Runs `f`: 0 on success; on failure its errno, with the message kept for
/// `filemr_last_error`; a panic becomes `ENOTRECOVERABLE`.
pub(crate) fn run(what: &str, f: impl FnOnce() -> Result<()>) -> c_int {
    let fail = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(fail)) => fail,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Fail::new(libc::ENOTRECOVERABLE, format!("internal error (panic): {why}"))
        }
    };
    let code = if fail.errno > 0 { fail.errno } else { libc::EIO };
    LAST.with(|l| *l.borrow_mut() = format!("{what}: {}", fail.message));
    code
}

/// Copies the calling thread's last error message into `buf` (NUL-terminated, truncated
/// to `len`), returning its full length.
pub(crate) fn last_error(buf: *mut c_char, len: usize) -> usize {
    LAST.with(|l| {
        let msg = l.borrow();
        if !buf.is_null() && len > 0 {
            let n = msg.len().min(len - 1);
            // SAFETY: the caller gives `len` writable bytes at `buf`; `n + 1 <= len`.
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        msg.len()
    })
}

/// The UTF-8 string at `ptr` (`name` in errors).
pub(crate) fn string<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Fail::invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL; the caller promises a NUL-terminated string alive for the call.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|_| Fail::invalid(format!("{name} is not UTF-8")))
}

/// Writes `value` to the out-pointer `ptr` (`name` in errors).
pub(crate) fn put<T>(ptr: *mut T, name: &str, value: T) -> Result<()> {
    if ptr.is_null() {
        return Err(Fail::invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL; the caller promises room for one `T`, possibly uninitialised.
    unsafe { ptr.write(value) };
    Ok(())
}

/// `ptr` if it is not NULL (`name` in errors).
pub(crate) fn non_null<T>(ptr: *mut T, name: &str) -> Result<*mut T> {
    if ptr.is_null() { Err(Fail::invalid(format!("{name} is NULL"))) } else { Ok(ptr) }
}
