//! A silent layout peer (never answers the recall) in retarget mode, over the veth link.

#[path = "guest/mod.rs"]
mod guest;
#[path = "layout_support/mod.rs"]
mod layout_support;
#[path = "region_support/mod.rs"]
mod region_support;

use filemr::region::RevocationMode;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn silent_peer_is_retargeted_sees_no_error_and_writes_the_file_again_after_the_rebuild() {
    region_support::CONFIGURE.get_or_init(|| {
        |c| {
            layout_support::server_device(c);
            c.revocation = RevocationMode::Retarget;
        }
    });
    layout_support::silent_peer("retarget");
}
