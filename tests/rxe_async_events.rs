//! The device's async event fd, non-blocking and driven by tokio, delivers real port
//! events: taking the rxe netdev down and up reports PORT_ERR then PORT_ACTIVE.
//! (Its own test binary: toggling the link would disturb other tests running beside it.)

#[path = "guest/mod.rs"]
mod guest;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use filemr::verbs::{AsyncEvents, Context};
use guest::GuestEnv;

/// `IBV_EVENT_PORT_ACTIVE` and `IBV_EVENT_PORT_ERR` from `<infiniband/verbs.h>`.
const PORT_ACTIVE: u32 = 9;
const PORT_ERR: u32 = 10;

fn ip_link(state: &str) {
    let st = Command::new("ip").args(["link", "set", "eth0", state]).status().expect("run ip");
    assert!(st.success(), "ip link set eth0 {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
async fn link_down_and_up_arrive_as_port_events() {
    let env = GuestEnv::get();
    let ctx = Arc::new(Context::open(&env.device).unwrap());
    let events = AsyncEvents::new(&ctx).expect("async event fd");
    // Non-blocking: nothing pending yet, and asking does not block.
    assert_eq!(events.try_next().unwrap(), None);
    ip_link("down");
    let down = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    ip_link("up");
    let down = down.expect("no event within 10 s of link down").unwrap();
    assert_eq!(down.event_type, PORT_ERR, "{down:?}");
    let up = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    let up = up.expect("no event within 10 s of link up").unwrap();
    assert_eq!(up.event_type, PORT_ACTIVE, "{up:?}");
    // The port must be usable again for the tests that follow.
    for _ in 0..100 {
        if ctx.port(1).unwrap().state == 4 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port 1 did not become ACTIVE again");
}
