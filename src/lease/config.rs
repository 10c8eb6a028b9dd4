//! Engine configuration and the `/proc/sys/fs` knobs it reads.

use std::time::Duration;

/// Settings of a [`LeaseEngine`](super::LeaseEngine).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The real-time signal for breaks is `SIGRTMIN + rt_signal_offset`. It is process
    /// wide: pick one nothing else in the process uses. Default 6.
    pub rt_signal_offset: i32,
    /// First delay between `F_SETLEASE` retries while reacquiring. Default 1 ms.
    pub backoff_min: Duration,
    /// Bound of the exponential retry delay. Default 50 ms. An inotify event (close,
    /// modify, attribute change) retries at once.
    pub backoff_max: Duration,
    /// Requested capacity of the signal self-pipe in bytes (4 bytes per break). Default
    /// 1 MiB; the kernel may grant less, a full pipe falls back to a rescan.
    pub pipe_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rt_signal_offset: 6,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(50),
            pipe_capacity: 1 << 20,
        }
    }
}

/// Path of the lease break time sysctl (seconds).
pub const LEASE_BREAK_TIME: &str = "/proc/sys/fs/lease-break-time";
/// Path of the leases enable sysctl.
pub const LEASES_ENABLE: &str = "/proc/sys/fs/leases-enable";

/// `/proc/sys/fs/lease-break-time`, 45 s when unreadable (the kernel default).
pub fn lease_break_time() -> Duration {
    break_time_of(std::fs::read_to_string(LEASE_BREAK_TIME).ok().as_deref())
}

/// The sysctl's text as a duration, 45 s when it could not be read or parsed.
fn break_time_of(text: Option<&str>) -> Duration {
    text.and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(45), Duration::from_secs)
}

/// The break time sysctl, kept open: each break reads it with one `pread` (the kernel
/// renders a sysctl afresh on every read), so a deadline follows the value in force when
/// the break came, without an open and a close on the break's path.
#[derive(Debug)]
pub(crate) struct BreakTime {
    file: Option<std::fs::File>,
}

impl BreakTime {
    pub(crate) fn open() -> BreakTime {
        BreakTime { file: std::fs::File::open(LEASE_BREAK_TIME).ok() }
    }

    /// The break time now, 45 s when unreadable (as [`lease_break_time`]).
    pub(crate) fn now(&self) -> Duration {
        use std::os::unix::fs::FileExt;
        let Some(f) = &self.file else { return lease_break_time() };
        let mut buf = [0u8; 32];
        let n = f.read_at(&mut buf, 0).unwrap_or(0);
        break_time_of(std::str::from_utf8(&buf[..n]).ok())
    }
}

/// `/proc/sys/fs/leases-enable`; `None` when unreadable.
pub fn leases_enabled() -> Option<bool> {
    std::fs::read_to_string(LEASES_ENABLE)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map(|v| v != 0)
}
