//! filemr inside a server that already has its verbs objects (`docs/embedding.md`).
//!
//! The "application" opens its device, protection domain, completion queue and RC queue
//! pair with raw libibverbs calls and polls its completion queue itself
//! (`app_verbs.rs`). filemr adopts them: regions are registered in the application's
//! protection domain and granted on the application's queue pair. A peer on a second
//! device (`remote_peer.rs`) writes and reads the file through its grant; then
//! `truncate` opens the file for writing, the region is recalled (the peer returns the
//! grant), revoked, rebuilt, and the same key works again.
//!
//! ```text
//! cargo run --example embed -- SERVER_DEVICE PEER_DEVICE FILE
//! # in the guests: cargo run --example embed -- rxe_srv rxe_peer /mnt/pmem/some-file
//! ```
//!
//! The `ibverbs` crate cannot play the application's part: its 0.9.2 types do not give
//! out their raw handles (`docs/embedding.md` says what is missing).

mod app_verbs;
mod remote_peer;

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use app_verbs::{AppVerbs, PollLoop};
use filemr::region::{Access, Manager, ManagerConfig, RegionEvent, RegionEventKind, RegionEvents};
use filemr::verbs::{CompletionQueue, Context, CqPolling, ProtectionDomain, QueuePair, WcStatus};
use prometheus_client::registry::Registry;
use remote_peer::RemotePeer;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, peer_device, file] = args.as_slice() else {
        return Err("usage: embed SERVER_DEVICE PEER_DEVICE FILE".into());
    };
    let len = std::fs::metadata(file)?.len() as usize;
    if len < 4096 {
        return Err(format!("{file} has {len} bytes; the example needs at least 4096").into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let _enter = rt.enter();

    // The application's objects, and filemr's view of them.
    let app = Arc::new(AppVerbs::open(server)?);
    // SAFETY: `app` keeps these objects until the end of main, after every filemr object
    // built on them is dropped (the explicit drops below).
    let (ctx, pd, cq) = unsafe {
        let ctx = Arc::new(Context::from_raw(app.ctx)?);
        let pd = ProtectionDomain::from_raw(&ctx, app.pd)?;
        let cq = CompletionQueue::from_raw(&ctx, app.cq, CqPolling::Application)?;
        (ctx, pd, cq)
    };
    let mut registry = Registry::default();
    let mgr = Manager::with_protection_domain(ManagerConfig::new(""), pd.clone(), &mut registry)?;

    // The application connects its queue pair to the peer, as it always did.
    let peer = RemotePeer::open(peer_device, len)?;
    let raw_qp = app.create_qp(app.pd, app.cq)?;
    // SAFETY: as above: `app` destroys the QP after `qp` is dropped.
    let qp = Arc::new(unsafe { QueuePair::from_raw(&pd, &cq, raw_qp) }?);
    let (gid_index, gid) = ctx.pick_gid(1)?;
    app.connect(raw_qp, gid_index, ctx.port(1)?.active_mtu, peer.qp.qp_num(), peer.gid)?;
    peer.connect(qp.qp_num(), gid)?;
    let polling = PollLoop::start(app.clone(), cq.clone());

    // A region in the application's PD, granted on the application's QP.
    let region = mgr.register(file, 0, len, Access::ReadWrite)?;
    let grant = region.grant(&qp)?;
    let key = grant.info();
    println!(
        "region {} ({:?}) granted on the application's QP {}: addr {:#x} rkey {:#x}",
        region.id(),
        region.strategy(),
        qp.qp_num(),
        key.addr,
        key.rkey
    );
    let first = b"written by the peer before the break";
    expect_ok(peer.write(&key, 0, first)?, "write")?;
    region.commit(0..first.len())?;
    // (Not `std::fs::read(file)` while the region exists: any open of the file, even this
    // process's and even for reading, breaks the lease.)

    // Someone opens the file for writing: recall, return, revoke, rebuild.
    let mut events = region.events();
    let mut breaker =
        std::process::Command::new("truncate").args(["-s", &len.to_string(), file]).spawn()?;
    loop {
        let ev = next(&rt, &mut events)?;
        println!("event: {:?}", ev.kind);
        match ev.kind {
            // The peer has nothing in flight: it returns at once.
            RegionEventKind::Recall { grant: id, .. } if id == grant.id() => grant.returned()?,
            RegionEventKind::Available { grant: id, .. } if id == grant.id() => break,
            RegionEventKind::Lost { .. } => return Err("the region was lost".into()),
            _ => {}
        }
    }
    breaker.wait()?;
    let again = b"and after the rebuild, same key";
    expect_ok(peer.write(&grant.info(), 4096 - again.len() as u64, again)?, "write")?;
    region.commit(4096 - again.len()..4096)?;
    let (st, got) = peer.read(&grant.info(), 0, first.len())?;
    expect_ok(st, "read")?;
    println!("peer reads {:?} with key {:#x}", String::from_utf8_lossy(&got), grant.info().rkey);

    // filemr's objects first, then the application's.
    drop((grant, region, mgr, qp));
    let bytes = std::fs::read(file)?;
    println!(
        "the file starts with {:?} and ends its first page with {:?}",
        String::from_utf8_lossy(&bytes[..first.len()]),
        String::from_utf8_lossy(&bytes[4096 - again.len()..4096])
    );
    let (own, delivered) = (polling.own.clone(), polling.delivered.clone());
    polling.stop()?;
    println!(
        "the application's poll loop handed filemr {} completions (and saw {} of its own)",
        delivered.load(std::sync::atomic::Ordering::Relaxed),
        own.load(std::sync::atomic::Ordering::Relaxed)
    );
    drop((cq, pd, ctx));
    drop(app);
    Ok(())
}

fn expect_ok(st: WcStatus, what: &str) -> Result<(), Box<dyn Error>> {
    if st == WcStatus::Success { Ok(()) } else { Err(format!("peer {what}: {st:?}").into()) }
}

fn next(
    rt: &tokio::runtime::Runtime,
    events: &mut RegionEvents,
) -> Result<RegionEvent, Box<dyn Error>> {
    rt.block_on(tokio::time::timeout(Duration::from_secs(60), events.recv()))?
        .ok_or_else(|| "the manager stopped".into())
}
