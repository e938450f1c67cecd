//! The command-line options the plugin adds to srun, sbatch and salloc (defined, with pyxis's names,
//! in [`mpiexec_docker::container_options`]), and where their values go.
//!
//! Slurm calls `option_cb` with each value: in srun/sbatch/salloc to validate it (remote = 0; a bad
//! value stops the command before any node is used), and again in slurmstepd before
//! `slurm_spank_init` (remote = 1). Values land in [`OPTIONS`].

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::Mutex;

use mpiexec_docker::container_options::{ContainerOptions, OPTIONS as DEFS};

use crate::ffi;
use crate::handle::Spank;

pub static OPTIONS: Mutex<ContainerOptions> = Mutex::new(ContainerOptions {
    image: None,
    mounts: None,
    workdir: None,
    env: None,
    remap_root: None,
    mount_home: None,
    readonly: None,
    name: None,
    entrypoint: None,
});

/// Registers every option. Slurm requires this in `slurm_spank_init` of every context that sees them.
pub fn register_all(spank: &Spank) -> Result<(), crate::handle::SpankError> {
    for (i, def) in DEFS.iter().enumerate() {
        let leak = |s: &str| CString::new(s).expect("no NUL in option text").into_raw();
        let opt = Box::leak(Box::new(ffi::spank_option {
            name: leak(def.name),
            arginfo: def.arginfo.map(leak).unwrap_or(std::ptr::null_mut()),
            usage: leak(def.usage),
            has_arg: c_int::from(def.arginfo.is_some()),
            val: i as c_int,
            cb: Some(option_cb),
        }));
        spank.register_option(opt)?;
    }
    Ok(())
}

extern "C" fn option_cb(val: c_int, optarg: *const c_char, _remote: c_int) -> c_int {
    crate::guard("option", || {
        let value = if optarg.is_null() {
            String::new()
        } else {
            // SAFETY: Slurm passes a NUL-terminated argument string valid for this call.
            unsafe { CStr::from_ptr(optarg) }.to_string_lossy().into_owned()
        };
        let def = DEFS.get(val as usize).ok_or_else(|| format!("unknown option number {val}"))?;
        if def.name == "container-entrypoint" && crate::handle::prepend_fn().is_none() {
            return Err(crate::remote::ENTRYPOINT_NEEDS.into());
        }
        OPTIONS.lock().unwrap_or_else(|e| e.into_inner()).apply(def.name, &value).map_err(|e| e.to_string())
    })
}
