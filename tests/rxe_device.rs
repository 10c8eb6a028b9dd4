//! The device probe on a real rxe device (inside the SoftRoCE guests).

#[path = "guest/mod.rs"]
mod guest;

use filemr::verbs::{MemoryWindow, MwType, device_names};
use guest::GuestEnv;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn probe_finds_rxe_and_odp_caps_match_the_kernel() {
    let env = GuestEnv::get();
    let names = device_names().expect("device list");
    assert!(names.contains(&env.device), "{} not in {names:?}", env.device);
    let (ctx, _pd, _cq) = env.open();
    let caps = ctx.caps().expect("query_device_ex");
    assert_eq!(caps.name, env.device);
    assert!(caps.max_mr_size >= 8 << 20, "max MR size {:#x}", caps.max_mr_size);
    assert_eq!(
        caps.odp.supported(),
        env.expect_odp,
        "kernel profile {} expects ODP={} but rxe reports general caps {:#x}",
        env.profile,
        env.expect_odp,
        caps.odp.general
    );
    if env.expect_odp {
        // rxe with ODP serves every RC operation from ODP memory (KERNEL-FACTS: 0xff).
        let all = filemr::verbs::OdpCaps::SEND
            | filemr::verbs::OdpCaps::RECV
            | filemr::verbs::OdpCaps::WRITE
            | filemr::verbs::OdpCaps::READ;
        assert!(caps.odp.rc_supports(all), "rc odp caps {:#x}", caps.odp.rc);
    } else {
        assert_eq!(caps.odp.rc, 0);
    }
    let port = ctx.port(1).expect("port 1");
    assert_eq!(port.state, 4, "port 1 of {} is not ACTIVE", env.device);
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn memory_windows_of_both_types_allocate() {
    let env = GuestEnv::get();
    let (ctx, pd, _cq) = env.open();
    let caps = ctx.caps().unwrap();
    assert!(caps.mw_type1 && caps.mw_type2, "rxe reports MW support: {caps:?}");
    let w1 = MemoryWindow::alloc(&pd, MwType::Type1).expect("type 1 MW");
    let w2 = MemoryWindow::alloc(&pd, MwType::Type2).expect("type 2 MW");
    assert_eq!((w1.kind(), w2.kind()), (MwType::Type1, MwType::Type2));
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn opening_a_missing_device_names_the_devices_present() {
    let env = GuestEnv::get();
    let err = filemr::verbs::Context::open("mlx5_nope").unwrap_err();
    assert_eq!(err.errno, nix::errno::Errno::ENODEV);
    assert!(err.to_string().contains(&env.device), "{err}");
}
