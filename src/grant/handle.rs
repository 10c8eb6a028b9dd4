//! A grant: the handle the server holds for one peer's key, and what it shares with the
//! region's break flow.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::GrantState;
use crate::region::{ManagerInner, RegionShared};
use crate::region::{RegionError, RegionEventKind, RegionState};
use crate::verbs::{Access as MrAccess, MemoryRegion, MemoryWindow, QueuePair, VerbsError};

/// What a grant's window is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    /// Nothing: invalidated (or never bound).
    None,
    /// The region's memory region: the peer reaches the file.
    Region,
    /// The region's scratch memory region.
    Scratch,
}

/// What a peer needs to use a grant, and where the grant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantInfo {
    /// The grant's id (in region events).
    pub id: u64,
    /// The region it grants.
    pub region: u64,
    /// The address of the region's first byte for the peer (constant for the region's
    /// life: rebuilds keep it).
    pub addr: u64,
    /// The key: constant for the grant's life (rebinds keep it).
    pub rkey: u32,
    /// Bytes the peer may access from `addr`.
    pub len: usize,
    /// The region generation the grant is bound to.
    pub generation: u64,
    /// The state.
    pub state: GrantState,
    /// The number of the server-side queue pair it is bound on: the peer must use the
    /// queue pair connected to it.
    pub qp_num: u32,
}

pub(crate) struct GrantCell {
    pub(crate) state: GrantState,
    pub(crate) bound: Binding,
    /// `None` once the window had to be freed (a failed invalidate: the QP is in error).
    pub(crate) mw: Option<MemoryWindow>,
    pub(crate) len: usize,
    pub(crate) generation: u64,
    pub(crate) recalled_at: Option<Instant>,
}

impl GrantCell {
    /// A cell for a window not bound yet.
    pub(crate) fn new(mw: MemoryWindow, len: usize, generation: u64) -> GrantCell {
        GrantCell {
            state: GrantState::Active,
            bound: Binding::None,
            mw: Some(mw),
            len,
            generation,
            recalled_at: None,
        }
    }
}

/// What a grant shares with its region's break flow. Lock order: the region's slot, then
/// a grant's cell.
pub(crate) struct GrantShared {
    pub(crate) id: u64,
    pub(crate) region: u64,
    pub(crate) addr: u64,
    pub(crate) rkey: u32,
    pub(crate) access: MrAccess,
    pub(crate) qp: Arc<QueuePair>,
    pub(crate) cell: Mutex<GrantCell>,
}

impl GrantShared {
    /// Binds the window over `len` bytes of `mr` (the region's, or scratch at the same
    /// addresses). On failure the grant is fenced for good (the QP is in error).
    pub(crate) fn bind(
        &self,
        c: &mut GrantCell,
        mr: &MemoryRegion,
        to: Binding,
    ) -> Result<(), VerbsError> {
        self.unbind(c)?;
        let Some(mw) = c.mw.as_ref() else {
            return Err(VerbsError::new(
                "ibv_post_send(BIND_MW)",
                nix::errno::Errno::EINVAL,
                format!("grant {}: its window was freed", self.id),
            ));
        };
        match self.qp.bind_mw(mw, mr, self.addr, c.len, self.access) {
            Ok(_) => {
                c.bound = to;
                Ok(())
            }
            Err(e) => {
                c.mw = None;
                c.state = GrantState::Fenced;
                Err(e)
            }
        }
    }

    /// Invalidates the window if it is bound. If that fails (the QP is in error: the peer
    /// cannot reach anything through it any more), the window is freed, which unbinds it.
    pub(crate) fn unbind(&self, c: &mut GrantCell) -> Result<(), VerbsError> {
        if c.bound == Binding::None {
            return Ok(());
        }
        c.bound = Binding::None;
        let Some(mw) = c.mw.as_ref() else { return Ok(()) };
        self.qp.invalidate_mw(mw).inspect_err(|_| {
            c.mw = None;
            c.state = GrantState::Fenced;
        })
    }

    /// Fences the grant: the window is freed (`ibv_dealloc_mw`, which unbinds it at
    /// once), so its key fails for good. A synchronous verb, not a work request: fencing
    /// needs neither a healthy queue pair nor a completion the application must hand
    /// over (see [`CqPolling`](crate::verbs::CqPolling)).
    pub(crate) fn fence(&self, c: &mut GrantCell) {
        c.bound = Binding::None;
        c.mw = None;
        c.state = GrantState::Fenced;
    }

    pub(crate) fn info(&self) -> GrantInfo {
        let c = self.cell.lock();
        GrantInfo {
            id: self.id,
            region: self.region,
            addr: self.addr,
            rkey: self.rkey,
            len: c.len,
            generation: c.generation,
            state: c.state,
            qp_num: self.qp.qp_num(),
        }
    }
}

/// A peer's key to a region: a type-2 memory window bound on the queue pair that serves
/// the peer. Made by [`Region::grant`](crate::region::Region::grant). Dropping it frees the
/// window (the peer's key stops working).
pub struct Grant {
    pub(crate) shared: Arc<GrantShared>,
    pub(crate) region: Arc<RegionShared>,
    pub(crate) mgr: Arc<ManagerInner>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant").field("info", &self.info()).finish()
    }
}

impl Grant {
    /// The grant's id (in region events).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Address, key, length, generation and state.
    pub fn info(&self) -> GrantInfo {
        self.shared.info()
    }

    /// The state.
    pub fn state(&self) -> GrantState {
        self.shared.cell.lock().state
    }

    /// The peer returned the grant (after a recall, or on its own): it has finished its
    /// outstanding work on the region and the server has committed what it wrote. The
    /// window is invalidated at once; when the region is rebuilt it is rebound, with the
    /// same key, and [`RegionEventKind::Available`] tells the peer. Blocking (one verb,
    /// two for a late return on a rebuilt region).
    ///
    /// Returning a grant that was already fenced changes nothing. Returning a retargeted
    /// one (late) takes it off scratch: if the region was rebuilt meanwhile, the window is
    /// rebound to it at once (`Available`); otherwise at the rebuild.
    pub fn returned(&self) -> Result<(), RegionError> {
        let g = &self.shared;
        let mut slot = self.region.slot.lock();
        let mut c = g.cell.lock();
        let late = c.state == GrantState::Retargeted;
        let when = match (c.state, c.recalled_at.take()) {
            (GrantState::Active | GrantState::Recalled, Some(at)) => {
                self.mgr.grant_metrics.recall_seconds.observe(at.elapsed().as_secs_f64());
                "in_time"
            }
            (GrantState::Active | GrantState::Recalled, None) => "unrecalled",
            (GrantState::Retargeted, _) => "late",
            (
                GrantState::Returned | GrantState::Fenced | GrantState::Lost | GrantState::Released,
                _,
            ) => {
                return Ok(());
            }
        };
        let mut result = g.unbind(&mut c);
        if c.state != GrantState::Fenced {
            c.state = GrantState::Returned;
        }
        // Why: a rebuild rebinds returned grants only, so a late return on a region that
        // is already rebuilt is rebound here (nothing else would).
        let mut available = None;
        let rebuilt = slot.live.as_ref().filter(|_| slot.info.state == RegionState::Registered);
        if let Some(built) = rebuilt.filter(|_| late && c.state == GrantState::Returned) {
            (c.len, c.generation) = (slot.info.len, slot.info.generation);
            match g.bind(&mut c, &built.mr, Binding::Region) {
                Ok(()) => {
                    c.state = GrantState::Active;
                    self.mgr.grant_metrics.rebound.inc();
                    available = Some((c.generation, c.len));
                }
                Err(e) => result = Err(e),
            }
        }
        let fenced = c.state == GrantState::Fenced;
        drop(c);
        self.region.drop_unused_scratch(&mut slot);
        drop(slot);
        self.mgr.grant_metrics.returned.get_or_create(&vec![("when", when.to_string())]).inc();
        self.region.emit(&self.mgr, RegionEventKind::Returned { grant: g.id });
        if let Some((generation, len)) = available {
            self.region
                .emit(&self.mgr, RegionEventKind::Available { grant: g.id, generation, len });
        } else if fenced && late {
            self.mgr.grant_metrics.fenced.inc();
            self.region.emit(&self.mgr, RegionEventKind::Fenced { grant: g.id });
        }
        result.map_err(|source| RegionError::Grant { id: g.region, qp: g.qp.qp_num(), source })
    }
}

impl Drop for Grant {
    /// Frees the window (which unbinds it): no work request, no wait. The region's
    /// scratch memory goes with the last grant bound to it.
    fn drop(&mut self) {
        let mut slot = self.region.slot.lock();
        let mut c = self.shared.cell.lock();
        c.bound = Binding::None;
        c.state = GrantState::Released;
        c.mw = None;
        drop(c);
        self.region.drop_unused_scratch(&mut slot);
    }
}
