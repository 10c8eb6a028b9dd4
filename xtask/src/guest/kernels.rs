//! Guest kernels: which ones, and fetching them from Debian's archive with a private apt
//! configuration (the machine's own apt sources are never edited).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, util};

/// One guest kernel line.
pub struct KernelSpec {
    /// Short id, used for directories and `--kernel`.
    pub id: &'static str,
    /// What it is for, printed by the demo.
    pub describe: &'static str,
    /// Debian suite to fetch from.
    pub suite: &'static str,
    /// Exact package to use; `None` means the suite's `linux-image-amd64`.
    pub pin: Option<&'static str>,
    /// Whether rxe on this kernel is expected to report ODP (asserted by the tests).
    pub expect_odp: bool,
}

/// The kernels `cargo xtask test` covers.
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        id: "bookworm",
        describe: "Debian 12 kernel 6.1: rxe without ODP",
        suite: "bookworm",
        pin: None,
        expect_odp: false,
    },
    KernelSpec {
        id: "trixie-bpo",
        describe: "trixie-backports kernel 6.18: rxe with ODP",
        suite: "trixie-backports",
        pin: Some("linux-image-6.18.15+deb13-amd64"),
        expect_odp: true,
    },
];

/// Parse `--kernel ID` options (repeatable); default: all kernels.
pub fn select(args: &[String]) -> Result<Vec<&'static KernelSpec>> {
    let mut chosen = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a != "--kernel" {
            return Err(format!("unknown argument {a:?}"));
        }
        let id = it.next().ok_or("--kernel needs a value")?;
        let spec =
            KERNELS.iter().find(|k| k.id == id).ok_or_else(|| format!("unknown kernel {id:?}"))?;
        chosen.push(spec);
    }
    if chosen.is_empty() {
        chosen = KERNELS.iter().collect();
    }
    Ok(chosen)
}

/// A kernel unpacked and ready to boot.
pub struct Prepared {
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Module root (contains `lib/modules/<release>`).
    pub root: PathBuf,
}

fn apt(dir: &Path, tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.arg("-q")
        .arg(format!("-o=Dir::Etc::sourcelist={}", dir.join("sources.list").display()))
        .arg("-o=Dir::Etc::sourceparts=-")
        .arg(format!("-o=Dir::State::Lists={}", dir.join("lists").display()))
        .arg(format!("-o=Dir::Cache={}", dir.join("cache").display()))
        .arg("-o=APT::Sandbox::User=root")
        .arg("-o=Debug::NoLocking=1");
    c
}

/// Which package to download: the pin if the archive still has it, else the suite's
/// current `linux-image-amd64` dependency.
fn resolve(spec: &KernelSpec, aptdir: &Path) -> Result<String> {
    if let Some(pin) = spec.pin {
        let show = apt(aptdir, "apt-cache").args(["show", pin]).output();
        if matches!(&show, Ok(o) if o.status.success() && !o.stdout.is_empty()) {
            return Ok(pin.to_string());
        }
        println!("    pinned {pin} has left {}; falling back to its linux-image-amd64", spec.suite);
    }
    let deps = util::output(apt(aptdir, "apt-cache").args(["depends", "linux-image-amd64"]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| format!("no linux-image dependency of linux-image-amd64 in {}", spec.suite))
}

/// Download (cached under `work/kernel`), unpack and index the kernel's modules.
pub fn prepare(spec: &KernelSpec, work: &Path) -> Result<Prepared> {
    let kdir = work.join("kernel");
    let root = kdir.join("root");
    if !kdir.join("ready").exists() {
        util::step(&format!("{}: fetching kernel from {}", spec.id, spec.suite));
        let aptdir = work.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(aptdir.join(d)).map_err(|e| e.to_string())?;
        }
        std::fs::write(
            aptdir.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {} main\n",
                spec.suite
            ),
        )
        .map_err(|e| e.to_string())?;
        util::output(apt(&aptdir, "apt-get").arg("update"))?;
        let pkg = resolve(spec, &aptdir)?;
        println!("    package {pkg}");
        let _ = std::fs::remove_dir_all(&kdir);
        std::fs::create_dir_all(&kdir).map_err(|e| e.to_string())?;
        // Newer kernels split the image into linux-binary-* and linux-modules-* packages.
        let deps = util::output(apt(&aptdir, "apt-cache").args(["depends", &pkg]))?;
        let mut pkgs = vec![pkg.clone()];
        pkgs.extend(
            deps.lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .map(|p| p.trim_start_matches('<').trim_end_matches('>'))
                .filter(|p| {
                    ["linux-binary-", "linux-modules-", "linux-base-"]
                        .iter()
                        .any(|x| p.starts_with(x))
                })
                .map(str::to_string),
        );
        for p in &pkgs {
            // A part the archive lacks is skipped; the image and module checks below fail
            // clearly if it was needed.
            let Some(p) = available(&aptdir, p) else {
                println!("    {p} is not in the archive; skipped");
                continue;
            };
            util::output(apt(&aptdir, "apt-get").current_dir(&kdir).args(["download", &p]))?;
        }
        let debs: Vec<PathBuf> = std::fs::read_dir(&kdir)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        if debs.is_empty() {
            return Err("apt-get download produced no .deb".into());
        }
        for deb in debs {
            util::output(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
            let _ = std::fs::remove_file(&deb);
        }
        // Newer packages ship modules under usr/lib; depmod and modprobe look in lib/.
        if !root.join("lib/modules").exists() && root.join("usr/lib/modules").exists() {
            std::os::unix::fs::symlink("usr/lib", root.join("lib")).map_err(|e| e.to_string())?;
        }
        let (release, _) = image_of(&root)?;
        util::output(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
        std::fs::write(kdir.join("ready"), &pkg).map_err(|e| e.to_string())?;
    }
    let (release, vmlinuz) = image_of(&root)?;
    Ok(Prepared { release, vmlinuz, root })
}

/// `pkg`, or its `-unsigned-` build when the archive has no signed one (backports at
/// times carry only the unsigned image of their newest kernel).
fn available(aptdir: &Path, pkg: &str) -> Option<String> {
    let unsigned = pkg.replacen("linux-binary-", "linux-binary-unsigned-", 1);
    [pkg.to_string(), unsigned].into_iter().find(|p| {
        let show = apt(aptdir, "apt-cache").args(["show", p]).output();
        matches!(&show, Ok(o) if o.status.success() && !o.stdout.is_empty())
    })
}

/// The kernel release and its image: `boot/vmlinuz-<release>` in the classic packages,
/// `usr/lib/modules/<release>/vmlinuz` in the newer split ones.
fn image_of(root: &Path) -> Result<(String, PathBuf)> {
    let boot = root.join("boot");
    if let Ok(dir) = std::fs::read_dir(&boot) {
        for e in dir.filter_map(|e| e.ok()) {
            if let Some(rel) = e.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")) {
                return Ok((rel.to_string(), e.path()));
            }
        }
    }
    let modules = root.join("usr/lib/modules");
    if let Ok(dir) = std::fs::read_dir(&modules) {
        for e in dir.filter_map(|e| e.ok()) {
            if e.path().join("vmlinuz").exists() {
                let rel = e.file_name().to_string_lossy().into_owned();
                return Ok((rel, e.path().join("vmlinuz")));
            }
        }
    }
    Err(format!("no kernel image in {} or {}", boot.display(), modules.display()))
}

/// Modules the guest needs, in load order, as paths inside `root`. `optional` ones that this
/// kernel does not have (or has built in) are skipped.
pub fn module_paths(k: &Prepared) -> Result<Vec<PathBuf>> {
    const REQUIRED: &[&str] = &[
        "virtio_pci",
        "virtio_net",
        "9pnet_virtio",
        "9p",
        "ib_uverbs",
        "rdma_rxe",
        // The two-rxe topology: a veth link, and rdma_cm for librdmacm (rdma_ucm makes
        // /dev/infiniband/rdma_cm; modprobe adds rdma_cm, ib_cm and iw_cm).
        "veth",
        "rdma_ucm",
        "nd_pmem",
        "nd_e820",
        "ext4",
        "xfs",
    ];
    const OPTIONAL: &[&str] =
        &["crc32_generic", "crc32c_generic", "crc32_cryptoapi", "crc32c_cryptoapi"];
    let mut paths: Vec<PathBuf> = Vec::new();
    for (m, required) in
        OPTIONAL.iter().map(|m| (m, false)).chain(REQUIRED.iter().map(|m| (m, true)))
    {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&k.root)
            .args(["-S", &k.release, "--show-depends", m])
            .output()
            .map_err(|e| format!("modprobe: {e}"))?;
        if !out.status.success() {
            if required {
                return Err(format!(
                    "module {m} missing in {}: {}",
                    k.release,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            continue;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(p) = line.strip_prefix("insmod ") {
                let p = PathBuf::from(p.trim());
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
    }
    Ok(paths)
}
