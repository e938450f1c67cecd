//! The command-line options the plugin adds to srun, sbatch and salloc, and where their values go.
//!
//! Slurm calls [`option_cb`] with each value: in srun/sbatch/salloc to validate it (remote = 0), and
//! again in slurmstepd before `slurm_spank_init` (remote = 1). Values land in [`OPTIONS`].

use std::ffi::{c_char, c_int, CStr};
use std::sync::Mutex;

use crate::ffi;
use crate::handle::Spank;

/// The option values seen in this process.
#[derive(Debug, Default, Clone)]
pub struct OptionValues {
    pub image: Option<String>,
}

pub static OPTIONS: Mutex<OptionValues> = Mutex::new(OptionValues { image: None });

/// `val` numbers passed back to the callback.
const OPT_IMAGE: c_int = 1;

/// Registers every option. Slurm requires this in `slurm_spank_init` of every context that sees them.
pub fn register_all(spank: &Spank) -> Result<(), crate::handle::SpankError> {
    let image = Box::leak(Box::new(ffi::spank_option {
        name: c"container-image".as_ptr() as *mut c_char,
        arginfo: c"[USER@][REGISTRY#]IMAGE[:TAG]|PATH".as_ptr() as *mut c_char,
        usage: c"[mpiexec-docker] run the job's tasks in this container image (Podman/Docker)".as_ptr() as *mut c_char,
        has_arg: 1,
        val: OPT_IMAGE,
        cb: Some(option_cb),
    }));
    spank.register_option(image)
}

extern "C" fn option_cb(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    crate::guard("option", || {
        let value = if optarg.is_null() {
            String::new()
        } else {
            // SAFETY: Slurm passes a NUL-terminated argument string valid for this call.
            unsafe { CStr::from_ptr(optarg) }.to_string_lossy().into_owned()
        };
        let mut opts = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        match val {
            OPT_IMAGE => {
                if value.trim().is_empty() {
                    return Err("--container-image needs an image name or an image file path".to_string());
                }
                if remote == 0 {
                    // rejected at submit time, before any node is used
                    mpiexec_docker::launch::check_image_name(&value).map_err(|e| format!("--container-image: {e}"))?;
                }
                opts.image = Some(value);
            }
            other => return Err(format!("unknown option number {other}")),
        }
        Ok(())
    })
}
