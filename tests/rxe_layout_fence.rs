//! A silent layout peer (never answers the recall) in fence mode, over the veth link.

#[path = "guest/mod.rs"]
mod guest;
#[path = "layout_support/mod.rs"]
mod layout_support;
#[path = "region_support/mod.rs"]
mod region_support;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn silent_peer_is_fenced_at_the_deadline_and_its_later_writes_fail() {
    region_support::CONFIGURE.get_or_init(|| layout_support::server_device);
    layout_support::silent_peer("fence");
}
