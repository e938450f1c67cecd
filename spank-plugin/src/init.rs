//! `slurm_spank_init`: runs first in every context. Registers the options and reads the plugstack.conf
//! arguments.
//!
//! A bad plugstack.conf argument stops srun, sbatch and salloc at once with a message that names it.
//! In slurmd and slurmstepd a failing `init` can drain the node, so there the error is kept and
//! reported from `task_init` instead, where it fails only the job that asked for a container.

use std::sync::Mutex;

use mpiexec_docker::plugstack::PluginArgs;

use crate::handle::{context, Context, Spank};

/// The plugstack.conf arguments, or the error they gave, as parsed by `init` in this process.
pub static PLUGIN_ARGS: Mutex<Option<Result<PluginArgs, String>>> = Mutex::new(None);

pub fn init(spank: &Spank, args: &[String]) -> Result<(), String> {
    let ctx = context();
    log::debug!("init in {ctx:?} context, built for Slurm {}", crate::BUILT_FOR_SLURM);
    if matches!(ctx, Context::Local | Context::Allocator | Context::Remote) {
        crate::options::register_all(spank).map_err(|e| format!("cannot register options: {e}"))?;
    }
    let parsed = PluginArgs::parse(args).map_err(|e| e.to_string());
    let result = parsed.clone().map(|_| ());
    *PLUGIN_ARGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(parsed);
    if ctx == Context::Remote && nix::unistd::geteuid().is_root() {
        // the job user's private state directory (locks, per-run directories), made by root so that
        // no other user can have made it first (see mpiexec_docker::runtime_dir)
        if let (Ok(uid), Ok(gid)) = (spank.uid(), spank.gid()) {
            if let Err(e) = mpiexec_docker::runtime_dir::prepare_user_dir(uid, gid) {
                log::warn!("{e}");
            }
        }
    }
    match ctx {
        Context::Local | Context::Allocator => result,
        _ => {
            if let Err(msg) = &result {
                log::error!("{msg}");
            }
            Ok(())
        }
    }
}
