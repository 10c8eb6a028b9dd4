//! The soak's parts: its seeded random numbers, the records peers write, the model of
//! what was acknowledged and destroyed, and the threads (peers in `peer.rs`, the breaker
//! in `breaker.rs`).
#![allow(dead_code)]

pub mod breaker;
pub mod peer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Bytes of each file that peers write through layouts (the layouts' length).
pub const PEER_AREA: usize = 64 * 1024;
/// Bytes after the peer area where breakers write their own records.
pub const BREAKER_AREA: usize = 4096;
/// The files' length.
pub const FILE_LEN: usize = PEER_AREA + BREAKER_AREA;
/// A record's size: one RDMA WRITE.
pub const RECORD: usize = 64;
/// Peers (each owns a quarter of every file's peer area): three cooperative, one silent.
pub const PEERS: usize = 4;
/// Record slots each peer owns in each file.
pub const SLOTS: usize = PEER_AREA / RECORD / PEERS;
const MAGIC: u32 = 0xF11E_5000;
/// A record flag: written after the server retargeted the writer's layout, so it must
/// never reach a file.
pub const STALE: u32 = 1;

/// splitmix64: small, seedable, good enough to pick files, slots and pauses.
pub struct Rng(u64);

impl Rng {
    /// The generator of thread `stream` of the soak seeded `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One record: who wrote it (peer, sequence, file, flags), checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub peer: u32,
    pub seq: u64,
    pub file: u32,
    pub flags: u32,
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01B3))
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.peer.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.file.to_le_bytes());
        b[20..24].copy_from_slice(&self.flags.to_le_bytes());
        for (i, x) in b[24..56].iter_mut().enumerate() {
            *x = (self.seq as u8).wrapping_add(i as u8);
        }
        let sum = fnv(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// `Ok(None)` for an all-zero block; `Err` for anything that is not a whole record.
    pub fn decode(b: &[u8]) -> Result<Option<Record>, String> {
        if b.iter().all(|x| *x == 0) {
            return Ok(None);
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if u32_at(0) != MAGIC || fnv(&b[..56]) != u64_at(56) {
            return Err(format!("not a whole record: {:02x?}", &b[..24]));
        }
        Ok(Some(Record { peer: u32_at(4), seq: u64_at(8), file: u32_at(16), flags: u32_at(20) }))
    }
}

/// Byte offset of `peer`'s slot `slot` in a file.
pub fn slot_offset(peer: usize, slot: usize) -> u64 {
    ((peer * SLOTS + slot) * RECORD) as u64
}

/// One file of the soak.
pub struct SoakFile {
    /// Its path on the server.
    pub path: PathBuf,
    /// Its layout path (`export/name`).
    pub layout_path: String,
}

/// What the threads share: the files, the model, the stop flag, the server's verdicts on
/// layouts, and the problems found.
pub struct Soak {
    pub seed: u64,
    pub files: Vec<SoakFile>,
    pub stop: AtomicBool,
    /// Per (file, peer slot index): the last acknowledged record's sequence and when it
    /// was written (the write started).
    pub acked: Mutex<HashMap<(usize, usize), (u64, Instant)>>,
    /// Per file: when its last destruction (truncate or delete) took effect (the
    /// breaker's open returned, so every layout of the file was revoked by then).
    pub destroyed: Mutex<HashMap<usize, Instant>>,
    /// The server's verdict on layouts whose peers did not return them: "retargeted" or
    /// "fenced", by grant (= layout) id.
    pub verdicts: Mutex<HashMap<u64, &'static str>>,
    /// The region of each recalled grant, and the regions the server lost.
    pub grant_region: Mutex<HashMap<u64, u64>>,
    pub lost_regions: Mutex<std::collections::HashSet<u64>>,
    pub problems: Mutex<Vec<String>>,
    /// Counters for the report.
    pub writes: AtomicU64,
    pub commits: AtomicU64,
    pub stale_writes: AtomicU64,
    pub regets: AtomicU64,
    pub reconnects: AtomicU64,
    pub ops: Mutex<HashMap<&'static str, u64>>,
}

impl Soak {
    pub fn new(seed: u64, files: Vec<SoakFile>) -> Soak {
        Soak {
            seed,
            files,
            stop: AtomicBool::new(false),
            acked: Mutex::default(),
            destroyed: Mutex::default(),
            verdicts: Mutex::default(),
            grant_region: Mutex::default(),
            lost_regions: Mutex::default(),
            problems: Mutex::default(),
            writes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            stale_writes: AtomicU64::new(0),
            regets: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            ops: Mutex::default(),
        }
    }

    /// Whether the server lost the region of (recalled) grant `grant`.
    pub fn grant_lost(&self, grant: u64) -> bool {
        let region = self.grant_region.lock().get(&grant).copied();
        region.is_some_and(|r| self.lost_regions.lock().contains(&r))
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn problem(&self, what: String) {
        eprintln!("soak problem: {what}");
        self.problems.lock().push(what);
    }

    /// Records written (started) at `written` and acknowledged by a commit.
    pub fn ack(&self, file: usize, records: &[(usize, u64)], written: Instant) {
        let mut acked = self.acked.lock();
        for &(slot, seq) in records {
            acked.insert((file, slot), (seq, written));
        }
    }

    /// Checks one file's final bytes: every peer block is zero or a whole record of its
    /// owner and this file, none stale, and every acknowledged record written after the
    /// file's last destruction is there (or a later one of the same peer).
    pub fn check_file(&self, file: usize, bytes: &[u8]) -> Vec<String> {
        let mut bad = Vec::new();
        if bytes.len() != FILE_LEN {
            bad.push(format!("file {file}: {} bytes, not {FILE_LEN}", bytes.len()));
            return bad;
        }
        let destroyed = self.destroyed.lock().get(&file).copied();
        let acked = self.acked.lock();
        for index in 0..PEER_AREA / RECORD {
            let peer = index / SLOTS;
            let at = index * RECORD;
            let found = match Record::decode(&bytes[at..at + RECORD]) {
                Ok(r) => r,
                Err(e) => {
                    bad.push(format!("file {file} offset {at}: {e}"));
                    continue;
                }
            };
            if let Some(r) = found {
                if r.peer as usize != peer || r.file as usize != file {
                    bad.push(format!("file {file} offset {at}: someone else's record {r:?}"));
                }
                if r.flags & STALE != 0 {
                    bad.push(format!(
                        "file {file} offset {at}: a write made after its layout was retargeted \
                         reached the file: {r:?}"
                    ));
                }
            }
            let Some(&(seq, written)) = acked.get(&(file, index)) else { continue };
            if destroyed.is_some_and(|d| written <= d) {
                continue;
            }
            match found {
                Some(r) if r.peer as usize == peer && r.seq >= seq => {}
                other => bad.push(format!(
                    "file {file} offset {at}: peer {peer}'s acknowledged record {seq} is \
                     missing; the block holds {other:?}"
                )),
            }
        }
        bad
    }
}
