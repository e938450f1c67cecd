//! mpiexec-docker's SPANK plugin: `--container-image` for srun, sbatch and salloc.
//!
//! This file only exports what Slurm looks for and routes each callback, by the context Slurm runs
//! it in, to the module of that context ([`dispatch`], one screen):
//! - [`submit`]: srun, sbatch, salloc (local and allocator contexts): options and their checks;
//! - [`stepd`]: slurmstepd (remote context): the step's container and its tasks' entry;
//! - `slurmd`: slurmd's job scripts (job_script context): the epilog's sweep.
//!
//! Beside them: [`options`] (the options and their callback), [`state`] (what is kept between
//! callbacks), `run_as` (the helper as the job's user or as root), [`handle`] and [`ffi`] (Slurm's
//! API), [`slurm_log`]. Every callback runs under [`guard::guard`], so no Rust panic ever unwinds into Slurm
//! (it would abort slurmstepd).

use std::ffi::{c_char, c_int};

pub mod ffi;
pub mod guard;
pub mod handle;
pub mod options;
mod run_as;
pub mod slurm_log;
mod slurmd;
pub mod state;
pub mod stepd;
pub mod submit;

use guard::guard;
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

/// The same, where `mpiexec_docker --version` and `doctor` read it in the plugin's file (see
/// [`mpiexec_docker_core::plugin_file`]): the loader's `plugin_version` is a bare number in a symbol
/// table, this a marked string any reader of the file finds.
#[used]
static BUILT_FOR_MARKER: &[u8] =
    concat!("mpiexec-docker-plugin-built-for-slurm=", env!("SLURM_VERSION_STRING"), "\0").as_bytes();

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

/// The SPANK callbacks the plugin implements, in the order Slurm makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    Init,
    InitPostOpt,
    UserInit,
    TaskInitPrivileged,
    TaskInit,
    TaskExit,
    Exit,
    JobEpilog,
}

/// Where each callback goes, by context. What is not listed does nothing there. slurmd's own
/// process (its `init` and `exit` at its start and end) never gets here: the callbacks return 0 at
/// once there, so nothing of ours runs in the daemon beyond Slurm's loading the plugin.
///
/// | callback | srun/sbatch/salloc | slurmstepd | job script (slurmd) |
/// | --- | --- | --- | --- |
/// | init | `submit::init` | `stepd::init` | `slurmd::init` |
/// | init_post_opt | `submit::init_post_opt` | | |
/// | user_init | | `stepd::user_init` | |
/// | task_init_privileged | | `stepd::task_init_privileged` | |
/// | task_init | | `stepd::task_init` | |
/// | task_exit | | `stepd::task_exit` | |
/// | exit | | `stepd::exit` | |
/// | job_epilog | | | `slurmd::job_epilog` |
pub fn dispatch(callback: Callback, spank: &Spank, args: &[String]) -> anyhow::Result<()> {
    use handle::Context::*;
    use Callback::*;
    let ctx = handle::context();
    log::trace!("{callback:?} in {ctx:?} context, built for Slurm {BUILT_FOR_SLURM}");
    match (callback, ctx) {
        (Init, Local | Allocator) => submit::init(spank, args),
        (InitPostOpt, Local | Allocator) => submit::init_post_opt(spank, args),
        (Init, Remote) => stepd::init(spank, args),
        (UserInit, Remote) => stepd::user_init(spank, args),
        (TaskInitPrivileged, Remote) => stepd::task_init_privileged(spank, args),
        (TaskInit, Remote) => stepd::task_init(spank, args),
        (TaskExit, Remote) => stepd::task_exit(spank, args),
        (Exit, Remote) => stepd::exit(spank, args),
        (Init, JobScript) => slurmd::init(spank, args),
        (JobEpilog, _) => slurmd::job_epilog(spank, args),
        _ => Ok(()),
    }
}

macro_rules! callback {
    ($name:ident, $which:expr) => {
        /// # Safety
        /// Called by Slurm only, with its handle and plugstack.conf arguments.
        #[no_mangle]
        pub unsafe extern "C" fn $name(sp: ffi::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
            // slurmd's own process (it calls init and exit at its start and end): nothing of ours
            // runs there, not even the logger's setup; one call of Slurm's `spank_context`
            if handle::context() == handle::Context::Slurmd {
                return 0;
            }
            guard(stringify!($name), || {
                // SAFETY: Slurm passes this callback's own handle and its plugstack.conf arguments.
                let spank = unsafe { Spank::from_raw(sp) };
                let args = unsafe { handle::plugin_args(ac, av) };
                dispatch($which, &spank, &args)
            })
        }
    };
}

callback!(slurm_spank_init, Callback::Init);
callback!(slurm_spank_init_post_opt, Callback::InitPostOpt);
callback!(slurm_spank_user_init, Callback::UserInit);
callback!(slurm_spank_task_init_privileged, Callback::TaskInitPrivileged);
callback!(slurm_spank_task_init, Callback::TaskInit);
callback!(slurm_spank_task_exit, Callback::TaskExit);
callback!(slurm_spank_exit, Callback::Exit);
callback!(slurm_spank_job_epilog, Callback::JobEpilog);
