//! Safe wrapper over libibverbs, the only place that touches the `rdma-sys` FFI crate.
//!
//! Ownership mirrors the verbs object graph: a [`Context`] is an open device; a
//! [`ProtectionDomain`] keeps its context alive; a [`MemoryRegion`], [`MemoryWindow`] and
//! [`QueuePair`] keep their protection domain alive; everything is released on `Drop`
//! in the right order. Every failing verb becomes a [`VerbsError`] naming the verb and the
//! errno.

mod access;
mod async_event;
mod cm;
mod comp_channel;
mod cq;
mod device;
mod error;
mod mr;
mod mw;
mod pd;
mod qp;

pub use access::Access;
pub use async_event::{AsyncEvent, AsyncEvents};
pub use cm::{CmChannel, CmEvent, CmEventKind, CmId};
pub use comp_channel::CompChannel;
pub use cq::{
    CompletionQueue, CqPolling, RESERVED_WR_ID_TAG, WcStatus, WorkCompletion, is_reserved_wr_id,
};
pub use device::{Context, DeviceCaps, ForkStatus, OdpCaps, PortInfo, device_names, fork_status};
pub use error::{VerbsError, VerbsResult};
pub use mr::MemoryRegion;
pub use mw::{MemoryWindow, MwType};
pub use pd::ProtectionDomain;
pub use qp::{QpState, QueuePair, RemoteBuf};
/// The FFI crate filemr's raw handles come from (`ibv_context`, `ibv_pd`, `ibv_cq`,
/// `ibv_qp`, `ibv_wc`), re-exported so an application passes exactly these types.
pub use rdma_sys as ffi;
