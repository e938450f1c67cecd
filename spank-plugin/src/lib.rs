//! mpiexec-docker's SPANK plugin: `--container-image` for srun, sbatch and salloc.
//!
//! This file only exports what Slurm looks for and routes each callback to the module of its part:
//! `init` (every context: options and plugstack.conf arguments, see [`options`]), [`remote`]
//! (slurmstepd: the step's container, its tasks' entry), and `job_script` (the job epilog's sweep on
//! each node); `run_as` runs the helper as the job's user or as root. Every callback runs under
//! [`guard`], so no Rust panic ever unwinds into Slurm (it would abort slurmstepd).

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod ffi;
pub mod handle;
mod init;
mod job_script;
pub mod options;
pub mod remote;
mod run_as;
pub mod slurm_log;

use handle::Spank;

/// `plugin_name`, `plugin_type` and `plugin_version` are what Slurm's loader requires. The name also
/// forms the environment names of our options: `SLURM_SPANK__SLURM_SPANK_OPTION_mpiexec_docker_<opt>`.
#[no_mangle]
#[used]
pub static plugin_name: [u8; 15] = *b"mpiexec_docker\0";
#[no_mangle]
#[used]
pub static plugin_type: [u8; 6] = *b"spank\0";
/// The Slurm version the plugin was built against (major.minor must match the running Slurm).
#[no_mangle]
#[used]
pub static plugin_version: u32 = parse_u32(env!("SLURM_VERSION_NUMBER"));
/// Version of this plugin's own interface with SPANK.
#[no_mangle]
#[used]
pub static spank_plugin_version: u32 = 1;

/// The Slurm version this build targets, e.g. "22.05.8".
pub const BUILT_FOR_SLURM: &str = env!("SLURM_VERSION_STRING");

const fn parse_u32(s: &str) -> u32 {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut n: u32 = 0;
    while i < bytes.len() {
        n = n * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// Runs one callback body: errors are logged through Slurm and become -1; a panic is caught, logged
/// and becomes -1 too.
pub fn guard<F>(what: &str, body: F) -> c_int
where
    F: FnOnce() -> Result<(), String>,
{
    slurm_log::install();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            log::error!("{msg}");
            -1
        }
        Err(panic) => {
            let what_panicked = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!("internal error in {what}: {what_panicked}");
            -1
        }
    }
}

macro_rules! callback {
    ($name:ident, $body:path) => {
        /// # Safety
        /// Called by Slurm only, with its handle and plugstack.conf arguments.
        #[no_mangle]
        pub unsafe extern "C" fn $name(sp: ffi::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
            guard(stringify!($name), || {
                // SAFETY: Slurm passes this callback's own handle and its plugstack.conf arguments.
                let spank = unsafe { Spank::from_raw(sp) };
                let args = unsafe { handle::plugin_args(ac, av) };
                $body(&spank, &args)
            })
        }
    };
}

callback!(slurm_spank_init, init::init);
callback!(slurm_spank_task_init_privileged, remote::task_init_privileged);
callback!(slurm_spank_task_init, remote::task_init);
callback!(slurm_spank_user_init, remote::user_init);
callback!(slurm_spank_exit, exit);
callback!(slurm_spank_job_epilog, job_epilog);

fn exit(spank: &Spank, args: &[String]) -> Result<(), String> {
    if handle::context() == handle::Context::Remote {
        remote::exit(spank, args)?;
    }
    Ok(())
}

/// The epilog never reports failure to Slurm: that would drain the node.
fn job_epilog(spank: &Spank, args: &[String]) -> Result<(), String> {
    if init::PLUGIN_ARGS.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
        let _ = init::init(spank, args);
    }
    if let Err(e) = job_script::job_epilog(spank, args) {
        log::error!("{e}");
    }
    Ok(())
}
