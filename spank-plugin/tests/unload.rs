//! The plugin is safe for Slurm to load and unload (issue 19): `dlopen` starts no thread and runs
//! nothing of ours but Rust's own start-up, and a `dlclose` never unmaps it (`-z nodelete`, see
//! build.rs), so a thread of slurmd or slurmstepd still leaving our code (a thread-local
//! destructor, a watchdog being joined) never runs into unmapped memory. Loaded and unloaded many
//! times, it stays one mapping, with no thread left.

use std::ffi::{CStr, CString};

/// The plugin as cargo builds it beside this test (`target/<profile>/`): `cargo test` builds only
/// what the tests link (the rlib), so the shared object is built here when it is not there yet
/// (tests/run.sh builds it first, for a stack where cargo is not at hand).
fn plugin_file() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps");
    let file = dir.join("libspank_mpiexec_docker.so");
    if !file.is_file() {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--lib", "--manifest-path", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")])
            .env("CARGO_TARGET_DIR", dir.parent().expect("target/"))
            .status()
            .expect("cargo, to build the plugin");
        assert!(built.success(), "cargo build of the plugin failed");
    }
    file
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("/proc/self/task").count()
}

fn mappings_of(name: &str) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines().filter(|l| l.contains(name)).count()
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a C string valid until the next dl call of this thread.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        String::new()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

#[test]
fn loading_and_unloading_leaves_no_thread_and_never_unmaps_the_plugin() {
    let file = plugin_file();
    assert!(file.is_file(), "{} is built with the tests", file.display());
    let path = CString::new(file.to_string_lossy().as_bytes()).unwrap();
    // what slurmstepd and srun give a plugin: Slurm's API (spank_*, slurm_info, …) from libslurmfull
    let slurm = ["/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib64/slurm", "/usr/lib/slurm", "/usr/local/lib/slurm"]
        .iter()
        .map(|d| std::path::Path::new(d).join("libslurmfull.so"))
        .find(|p| p.is_file())
        .expect("Slurm's libslurmfull.so (installed with Slurm)");
    let slurm = CString::new(slurm.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: Slurm's own library, loaded as its daemons have it.
    let api = unsafe { libc::dlopen(slurm.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    assert!(!api.is_null(), "dlopen libslurmfull: {}", dlerror());
    let before = threads();
    let mut mapped = None;
    for round in 0..50 {
        // SAFETY: dlopen of a shared object we built; its constructors are Rust's runtime's only.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_GLOBAL) };
        assert!(!handle.is_null(), "dlopen: {}", dlerror());
        for symbol in ["plugin_name", "plugin_type", "plugin_version", "slurm_spank_init", "slurm_spank_exit"] {
            let name = CString::new(symbol).unwrap();
            // SAFETY: a lookup in a handle dlopen returned.
            assert!(!unsafe { libc::dlsym(handle, name.as_ptr()) }.is_null(), "{symbol}: {}", dlerror());
        }
        // SAFETY: the handle dlopen returned, closed once.
        assert_eq!(unsafe { libc::dlclose(handle) }, 0, "dlclose: {}", dlerror());
        let now = mappings_of("libspank_mpiexec_docker.so");
        assert!(now > 0, "round {round}: a dlclose never unmaps the plugin (-z nodelete)");
        assert_eq!(*mapped.get_or_insert(now), now, "round {round}: the plugin is mapped once, not once per load");
    }
    assert_eq!(threads(), before, "loading the plugin starts no thread");
}
