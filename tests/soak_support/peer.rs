//! A soak peer: a layout client on the peer device streaming records into random slots of
//! its quarter of random files, committing now and then. A cooperative peer lets the
//! library answer recalls; the silent one never does: once the server has fenced or
//! retargeted its layout it writes records flagged stale (which must never reach a
//! file), checks that a retargeted layout takes its writes without error and refuses its
//! commit (ESTALE), returns it late and waits for it to be available again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use filemr::layout::{ClientConfig, Layout, LayoutClient, LayoutError, LayoutEvent, RecallPolicy};
use filemr::region::Access;
use nix::errno::Errno;

use super::{PEER_AREA, PEERS, RECORD, Record, Rng, SLOTS, STALE, Soak, slot_offset};

/// A layout held on one file, and what was written through it since its last commit.
struct Held {
    layout: Layout,
    /// (global slot index, sequence) written since the last commit.
    pending: Vec<(usize, u64)>,
    /// When the first pending write started.
    since: Option<Instant>,
}

pub struct Peer {
    id: usize,
    cfg: ClientConfig,
    silent: bool,
    soak: Arc<Soak>,
    client: LayoutClient,
    rng: Rng,
    seq: u64,
    held: HashMap<usize, Held>,
}

impl Peer {
    /// Connects peer `id` (the last one is silent) from the peer device to `cfg.server`.
    pub fn connect(id: usize, soak: Arc<Soak>, mut cfg: ClientConfig) -> Peer {
        let silent = id == PEERS - 1;
        if silent {
            cfg.recall = RecallPolicy::Manual;
        }
        let client = LayoutClient::connect(cfg.clone()).expect("soak peer connects");
        let rng = Rng::new(soak.seed, 100 + id as u64);
        Peer { id, cfg, silent, soak, client, rng, seq: 0, held: HashMap::new() }
    }

    /// A new connection (after a fence put the queue pair in the error state, or the
    /// connection closed): the old one's layouts are dropped by the server.
    fn reconnect(&mut self) {
        self.held.clear();
        match LayoutClient::connect(self.cfg.clone()) {
            Ok(c) => {
                let old = std::mem::replace(&mut self.client, c);
                old.close();
                self.soak.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.soak.problem(format!("peer {}: reconnecting: {e}", self.id)),
        }
    }

    /// Streams until the soak stops, then gives every layout back and disconnects.
    pub fn run(mut self) {
        while !self.soak.stopped() {
            self.events();
            let file = self.rng.below(self.soak.files.len() as u64) as usize;
            if !self.ensure(file) {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let n = 1 + self.rng.below(6) as usize;
            for _ in 0..n {
                if !self.write(file, 0) {
                    break;
                }
            }
            if self.rng.below(3) == 0 {
                self.commit(file);
            }
        }
        for file in self.held.keys().copied().collect::<Vec<_>>() {
            self.commit(file);
        }
        for (_, h) in self.held.drain() {
            let _ = h.layout.give_back();
        }
        self.client.close();
    }

    /// Gets a layout of `file` unless one is held; false if the server refused for now.
    fn ensure(&mut self, file: usize) -> bool {
        if self.held.contains_key(&file) {
            return true;
        }
        let path = &self.soak.files[file].layout_path;
        match self.client.get(path, 0, PEER_AREA as u64, Access::ReadWrite) {
            Ok(layout) => {
                self.soak.regets.fetch_add(1, Ordering::Relaxed);
                self.held.insert(file, Held { layout, pending: Vec::new(), since: None });
                true
            }
            Err(LayoutError::Closed { .. } | LayoutError::Timeout { .. }) => {
                self.reconnect();
                false
            }
            // The file is being renamed, deleted or broken: try again later.
            Err(_) => false,
        }
    }

    /// Writes the next record at a random slot of this peer's quarter of `file`; false
    /// (and the layout dropped) if the layout is gone.
    fn write(&mut self, file: usize, flags: u32) -> bool {
        let Some(h) = self.held.get_mut(&file) else { return false };
        let slot = self.rng.below(SLOTS as u64) as usize;
        self.seq += 1;
        let rec = Record { peer: self.id as u32, seq: self.seq, file: file as u32, flags };
        let started = Instant::now();
        match h.layout.write(slot_offset(self.id, slot), &rec.encode()) {
            Ok(()) => {
                self.soak.writes.fetch_add(1, Ordering::Relaxed);
                h.pending.push((self.id * SLOTS + slot, self.seq));
                h.since.get_or_insert(started);
                true
            }
            Err(_) => {
                self.held.remove(&file);
                false
            }
        }
    }

    /// Commits `file`'s pending records; acknowledged when the server says so.
    fn commit(&mut self, file: usize) {
        let Some(h) = self.held.get_mut(&file) else { return };
        let (pending, since) = (std::mem::take(&mut h.pending), h.since.take());
        match h.layout.commit() {
            Ok(_) => {
                self.soak.commits.fetch_add(1, Ordering::Relaxed);
                // Why the first write's start: a batch may straddle a destruction (the
                // recall committed its first records, the rebuilt file got the rest), and
                // an earlier time only excuses records, never demands a destroyed one.
                if let Some(since) = since {
                    self.soak.ack(file, &pending, since);
                }
            }
            Err(_) => {
                self.held.remove(&file);
            }
        }
    }

    /// Handles the client's events: lost layouts are dropped; the silent peer answers a
    /// recall by not answering.
    fn events(&mut self) {
        while let Some(ev) = self.client.next_event(Duration::ZERO) {
            match ev {
                LayoutEvent::Lost { layout, .. } => {
                    self.held.retain(|_, h| h.layout.id() != layout)
                }
                LayoutEvent::Returned { layout, error: Some(_), .. } => {
                    // The library's commit for the recall failed: nothing pending is sure.
                    for h in self.held.values_mut() {
                        if h.layout.id() == layout {
                            h.pending.clear();
                            h.since = None;
                        }
                    }
                }
                LayoutEvent::Recalled { layout, .. } if self.silent => self.stay_silent(layout),
                LayoutEvent::Disconnected { .. } => self.reconnect(),
                _ => {}
            }
        }
    }

    /// The silent peer's recall: wait for the server's verdict, then write stale records.
    fn stay_silent(&mut self, layout: u64) {
        let Some(file) = self.held.iter().find(|(_, h)| h.layout.id() == layout).map(|(f, _)| *f)
        else {
            return;
        };
        let until = Instant::now() + Duration::from_secs(20);
        let verdict = loop {
            if let Some(v) = self.soak.verdicts.lock().remove(&layout) {
                break Some(v);
            }
            let lost = self.held.get(&file).is_none_or(|h| h.layout.lost().is_some());
            if lost || Instant::now() > until || self.soak.stopped() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match verdict {
            Some("retargeted") => self.after_retarget(file, layout),
            Some(_) => {
                // Fenced: the key must fail.
                let h = &self.held[&file];
                let rec =
                    Record { peer: self.id as u32, seq: u64::MAX, file: file as u32, flags: STALE };
                if h.layout.write_unchecked(slot_offset(self.id, 0), &rec.encode()).is_ok() {
                    self.soak
                        .problem(format!("peer {}: a fenced key wrote (layout {layout})", self.id));
                }
                self.soak.stale_writes.fetch_add(1, Ordering::Relaxed);
                // The remote access error put this connection's queue pair in the error
                // state: a fenced peer reconnects and asks again.
                self.reconnect();
            }
            None => {
                self.held.remove(&file);
            }
        }
    }

    fn after_retarget(&mut self, file: usize, layout: u64) {
        for _ in 0..1 + self.rng.below(4) {
            let Some(h) = self.held.get(&file) else { return };
            let slot = self.rng.below(SLOTS as u64) as usize;
            self.seq += 1;
            let rec =
                Record { peer: self.id as u32, seq: self.seq, file: file as u32, flags: STALE };
            match h.layout.write(slot_offset(self.id, slot), &rec.encode()) {
                Ok(()) => {
                    self.soak.stale_writes.fetch_add(1, Ordering::Relaxed);
                }
                // Lost meanwhile (the file went away): nothing more to show.
                Err(LayoutError::Lost { .. }) => {
                    self.held.remove(&file);
                    return;
                }
                // A region lost after the retarget (the breaker deleted or renamed the
                // file) frees its windows: the write fails, and LOST is on its way.
                Err(e) => {
                    if !self.lost_soon(layout) {
                        self.soak.problem(format!(
                            "peer {}: a retargeted layout {layout} refused a write and was \
                             not lost: {e}",
                            self.id
                        ));
                    }
                    // The remote access error put the queue pair in the error state.
                    self.reconnect();
                    return;
                }
            }
        }
        let h = self.held.get_mut(&file).expect("held");
        h.pending.clear();
        h.since = None;
        match h.layout.commit() {
            Err(LayoutError::Refused { errno: Errno::ESTALE, .. }) => {}
            // Lost meanwhile (the server dropped the layout: ENOENT).
            Err(LayoutError::Lost { .. }) => {}
            Err(LayoutError::Refused { errno: Errno::ENOENT, .. }) => {}
            other => self.soak.problem(format!(
                "peer {}: committing a retargeted layout {layout}: {other:?}, not ESTALE",
                self.id
            )),
        }
        if h.layout.return_for_recall().is_err() {
            self.held.remove(&file);
            return;
        }
        // Wait for it to be available again (or lost).
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && !self.soak.stopped() {
            match self.client.next_event(Duration::from_millis(50)) {
                Some(LayoutEvent::Available { layout: l, .. }) if l == layout => return,
                Some(LayoutEvent::Lost { layout: l, .. }) if l == layout => break,
                Some(LayoutEvent::Lost { layout: l, .. }) => {
                    self.held.retain(|_, h| h.layout.id() != l)
                }
                _ => {}
            }
        }
        self.held.remove(&file);
    }
}

impl Peer {
    /// Whether the server lost `layout`'s region, waiting up to 5 s to see it (its LOST
    /// may never reach this peer: the failed write already closed the connection).
    fn lost_soon(&self, layout: u64) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if self.soak.grant_lost(layout) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// The client configuration of every soak peer.
pub fn client_config(server: std::net::SocketAddr) -> ClientConfig {
    let mut cfg = ClientConfig::new(crate::guest::var("FILEMR_PEER_DEVICE"), server);
    cfg.source = Some(crate::guest::var("FILEMR_PEER_ADDR").parse().unwrap());
    cfg
}

const _: () = assert!(PEERS * SLOTS * RECORD == PEER_AREA);
