//! Build script of the SPANK plugin (`spank-plugin/Cargo.toml` points here).
//!
//! 1. Finds Slurm's headers: `$SLURM_INCLUDE_DIR`, then the usual prefixes. When none are installed it
//!    falls back to `slurm-headers/`, our own description of the documented SPANK ABI.
//! 2. Generates Rust bindings for the SPANK API with bindgen.
//! 3. Finds the Slurm version the plugin is built for and exports it as `SLURM_VERSION_NUMBER`: Slurm
//!    loads a SPANK plugin only when its `plugin_version` has the running Slurm's major.minor.
//!    Order: `slurm_version.h` of the installed headers, then `$SLURM_VERSION` (e.g. `23.11`), then the
//!    version printed by `srun --version`.
//! 4. Links the plugin with `-z nodelete`: never unmapped by a `dlclose`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use mpiexec_docker_core::slurm_version::SlurmVersion;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let top = manifest.parent().expect("spank-plugin sits in the workspace").to_path_buf();
    let fallback = top.join("slurm-headers");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=SLURM_VERSION");
    println!("cargo:rerun-if-changed={}", fallback.display());

    let installed = find_installed_headers();
    let (include_dir, header) = match &installed {
        Some(dir) => {
            println!("cargo:rerun-if-changed={}", dir.join("slurm/spank.h").display());
            (dir.clone(), "slurm/spank.h")
        }
        None => {
            println!(
                "cargo:warning=no installed <slurm/spank.h> found; using slurm-headers/ (set SLURM_INCLUDE_DIR to use yours)"
            );
            (fallback.clone(), "spank_abi.h")
        }
    };

    let version = installed
        .as_deref()
        .and_then(version_from_header)
        .or_else(version_from_env)
        .or_else(version_from_srun)
        .unwrap_or_else(|| {
            panic!(
                "cannot tell which Slurm version to build the SPANK plugin for: install Slurm's headers \
                 (libslurm-dev), set SLURM_INCLUDE_DIR, or set SLURM_VERSION=MAJOR.MINOR"
            )
        });
    println!("cargo:rustc-env=SLURM_VERSION_NUMBER={version}");
    // Slurm unloads plugins (dlclose) when a process is done with them, while threads of that process
    // may still be in their way out of our code (a thread-local destructor of Rust's runtime, a
    // watchdog joined a moment later): the plugin is never unmapped, so no such thread can ever run
    // into unmapped code (tests/unload.rs)
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rustc-env=SLURM_VERSION_STRING={}", SlurmVersion(version));

    let bindings = bindgen::Builder::default()
        .header(include_dir.join(header).to_string_lossy())
        .clang_arg(format!("-I{}", include_dir.display()))
        .allowlist_function("spank_.*")
        .allowlist_function("slurm_(info|error|verbose|debug|debug2|spank_log)")
        .allowlist_type("spank_.*")
        .allowlist_var("ESPANK_.*|SPANK_.*")
        .blocklist_function("spank_prepend_task_argv")
        .rustified_enum("spank_context")
        .constified_enum_module("spank_item")
        .layout_tests(false)
        .generate()
        .expect("bindgen could not read the SPANK header");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("spank_bindings.rs");
    bindings.write_to_file(&out).expect("write bindings");
}

fn find_installed_headers() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = env::var("SLURM_INCLUDE_DIR") {
        candidates.push(dir.into());
    }
    for d in ["/usr/include", "/usr/local/include", "/opt/slurm/include", "/usr/local/slurm/include"] {
        candidates.push(d.into());
    }
    candidates.into_iter().find(|d| d.join("slurm/spank.h").is_file())
}

fn version_from_header(include_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(include_dir.join("slurm/slurm_version.h")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("#define")?.trim();
        let value = rest.strip_prefix("SLURM_VERSION_NUMBER")?.trim();
        let hex = value.strip_prefix("0x")?;
        u32::from_str_radix(hex, 16).ok()
    })
}

fn version_from_env() -> Option<u32> {
    SlurmVersion::parse(&env::var("SLURM_VERSION").ok()?).map(|v| v.0)
}

fn version_from_srun() -> Option<u32> {
    let out = Command::new("srun").arg("--version").output().ok()?;
    SlurmVersion::parse(&String::from_utf8_lossy(&out.stdout)).map(|v| v.0)
}
