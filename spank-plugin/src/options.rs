//! The command-line options the plugin adds to srun, sbatch and salloc (defined, with pyxis's names,
//! in [`mpiexec_docker_core::container_options`]), and where their values go.
//!
//! Slurm calls `option_cb` with each value: in srun/sbatch/salloc to validate it (remote = 0; a bad
//! value stops the command before any node is used), and again in slurmstepd before
//! `slurm_spank_init` (remote = 1). Values land in the plugin's state ([`crate::state`]).

use std::ffi::{c_char, c_int, CStr, CString};

use mpiexec_docker_core::container_options::OPTIONS as DEFS;

use crate::ffi;
use crate::handle::Spank;

/// Why `--container-entrypoint` cannot be had here.
pub const ENTRYPOINT_NEEDS: &str = "--container-entrypoint needs Slurm 23.11 or later (spank_prepend_task_argv); \
     on this Slurm the tasks start without the image's entrypoint: drop the option or run the entrypoint yourself";

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
    crate::guard::guard("option", || {
        let value = if optarg.is_null() {
            String::new()
        } else {
            // SAFETY: Slurm passes a NUL-terminated argument string valid for this call.
            unsafe { CStr::from_ptr(optarg) }.to_string_lossy().into_owned()
        };
        let def = DEFS.get(val as usize).ok_or_else(|| anyhow::anyhow!("unknown option number {val}"))?;
        if def.name == "container-entrypoint" && crate::handle::prepend_fn().is_none() {
            anyhow::bail!(ENTRYPOINT_NEEDS);
        }
        crate::state::with(|s| s.options.apply(def.name, &value))?;
        Ok(())
    })
}
