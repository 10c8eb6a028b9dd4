//! The soak's breaker: another local user of the files. It opens them for writing (a
//! lease break), truncates them, renames them away and back, and deletes and recreates
//! them, at random, recording when each destruction took effect.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{FILE_LEN, PEER_AREA, RECORD, Rng, Soak};

/// One kind of operation.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Open for writing, write a record into the breaker area, close.
    OpenWrite,
    /// Open, truncate to 0 and extend back (the peers' bytes are gone).
    Truncate,
    /// Rename away, open and write through the new name, rename back.
    Rename,
    /// Open, unlink, create a new file at the path, close the old one.
    Delete,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::OpenWrite => "open_write",
            Op::Truncate => "truncate",
            Op::Rename => "rename",
            Op::Delete => "delete",
        }
    }

    fn pick(rng: &mut Rng) -> Op {
        match rng.below(20) {
            0..8 => Op::OpenWrite,
            8..13 => Op::Truncate,
            13..17 => Op::Rename,
            _ => Op::Delete,
        }
    }
}

/// Runs operations until the soak stops, pausing 100 to 400 ms between them.
pub fn run(soak: Arc<Soak>) {
    let mut rng = Rng::new(soak.seed, 1);
    while !soak.stopped() {
        std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
        let file = rng.below(soak.files.len() as u64) as usize;
        let op = Op::pick(&mut rng);
        if let Err(e) = apply(&soak, file, op, &mut rng) {
            soak.problem(format!("breaker: {} of file {file}: {e}", op.label()));
        }
        *soak.ops.lock().entry(op.label()).or_default() += 1;
    }
}

fn apply(soak: &Soak, file: usize, op: Op, rng: &mut Rng) -> std::io::Result<()> {
    let path = &soak.files[file].path;
    let mark = [0xB0 | rng.below(16) as u8; RECORD];
    let at = (PEER_AREA + RECORD * rng.below(32) as usize) as u64;
    // Opening for writing waits until filemr released the lease: every layout of the
    // file is revoked (recalled, committed, fenced or retargeted) when it returns.
    let open = |p: &std::path::Path| OpenOptions::new().write(true).open(p);
    match op {
        Op::OpenWrite => open(path)?.write_all_at(&mark, at),
        Op::Truncate => {
            let f = open(path)?;
            soak.destroyed.lock().insert(file, Instant::now());
            f.set_len(0)?;
            f.set_len(FILE_LEN as u64)
        }
        Op::Rename => {
            let away = path.with_extension("away");
            std::fs::rename(path, &away)?;
            let written = open(&away).and_then(|f| f.write_all_at(&mark, at));
            std::thread::sleep(Duration::from_millis(rng.below(50)));
            std::fs::rename(&away, path)?;
            written
        }
        Op::Delete => {
            let old = open(path)?;
            soak.destroyed.lock().insert(file, Instant::now());
            std::fs::remove_file(path)?;
            let new = OpenOptions::new().write(true).create_new(true).open(path)?;
            new.set_len(FILE_LEN as u64)?;
            drop(new);
            drop(old);
            Ok(())
        }
    }
}
