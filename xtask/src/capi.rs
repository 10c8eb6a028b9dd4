//! The C API's build steps: the cbindgen header and its drift check, the install tree
//! with its pkg-config file, and the C programs (example server and peer, misuse tests)
//! built through that pkg-config file with AddressSanitizer for the guests.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo, util};

const CRATE: &str = "bindings/c";
const HEADER: &str = "bindings/c/include/filemr.h";
/// The C programs: source, executable name, and whether it uses librdmacm itself.
const PROGRAMS: [(&str, &str, bool); 4] = [
    ("examples/c/minimal.c", "filemr-c-minimal", false),
    ("examples/c/server.c", "filemr-c-server", true),
    ("examples/c/peer.c", "filemr-c-peer", true),
    ("bindings/c/tests/misuse.c", "filemr-c-misuse", false),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

/// The header as cbindgen makes it from the sources now.
fn generate() -> Result<String> {
    let dir = root().join(CRATE);
    let config = cbindgen::Config::from_root_or_default(&dir);
    let bindings = cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .map_err(|e| format!("cbindgen: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).map_err(|e| format!("cbindgen wrote non-UTF-8: {e}"))
}

/// `cargo xtask header`: regenerate the checked-in header.
pub fn write_header() -> Result<()> {
    let path = root().join(HEADER);
    std::fs::write(&path, generate()?).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Fails if the checked-in header differs from what the sources generate.
pub fn check_header() -> Result<()> {
    let path = root().join(HEADER);
    let have = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if have != generate()? {
        return Err(format!(
            "{HEADER} is out of date with bindings/c/src: run `cargo xtask header` and commit it"
        ));
    }
    println!("{HEADER} matches the sources");
    Ok(())
}

/// Installs the library, the header and `filemr.pc` under `prefix` (what the README's
/// install step runs).
pub fn install(prefix: &Path, release: bool) -> Result<()> {
    let mut args = vec!["build", "--package", "filemr-c"];
    if release {
        args.push("--release");
    }
    cargo::run(&args)?;
    let built = root().join("target").join(if release { "release" } else { "debug" });
    let (lib, inc, pc) = (prefix.join("lib"), prefix.join("include"), prefix.join("lib/pkgconfig"));
    for d in [&lib, &inc, &pc] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    for f in ["libfilemr.so", "libfilemr.a"] {
        copy(&built.join(f), &lib.join(f))?;
    }
    copy(&root().join(HEADER), &inc.join("filemr.h"))?;
    let template = root().join(CRATE).join("filemr.pc.in");
    let text = std::fs::read_to_string(&template)
        .map_err(|e| format!("{}: {e}", template.display()))?
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(pc.join("filemr.pc"), text).map_err(|e| format!("filemr.pc: {e}"))?;
    println!("installed libfilemr, filemr.h and filemr.pc under {}", prefix.display());
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
}

/// Installs into `target/c/prefix` and builds the C programs there with
/// `cc $(pkg-config --cflags --libs filemr)`, AddressSanitizer and `-Werror` into
/// `target/c/` (where `tests/rxe_c_api.rs` finds them).
pub fn build_programs() -> Result<()> {
    let out = root().join("target/c");
    let prefix = out.join("prefix");
    install(&prefix, false)?;
    let pkg = |flag: &str| -> Result<Vec<String>> {
        let text = util::output(
            Command::new("pkg-config")
                .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
                .args([flag, "filemr"]),
        )?;
        Ok(text.split_whitespace().map(String::from).collect())
    };
    let (cflags, libs) = (pkg("--cflags")?, pkg("--libs")?);
    for (src, name, rdmacm) in PROGRAMS {
        let exe = out.join(name);
        util::run(
            Command::new("cc")
                .current_dir(root())
                .args(["-std=c11", "-g", "-O1", "-Wall", "-Wextra", "-Werror"])
                .args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer"])
                .args(&cflags)
                .arg(src)
                .arg("-o")
                .arg(&exe)
                .args(&libs)
                .args(if rdmacm { &["-lrdmacm"][..] } else { &[] })
                // Found at run time without LD_LIBRARY_PATH, in the guests too.
                .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display())),
        )?;
    }
    println!("C programs built in {}", out.display());
    Ok(())
}
