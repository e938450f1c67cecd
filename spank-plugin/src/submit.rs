//! srun, sbatch and salloc (local and allocator contexts): the options are registered and checked
//! here, before any node is used. A bad plugstack.conf argument, option value or
//! `MPIEXEC_DOCKER_CONTAINER_*` default stops the command with one line naming it.

use anyhow::Context;
use mpiexec_docker_core::plugstack::PluginArgs;

use crate::handle::Spank;
use crate::state;

/// `slurm_spank_init`: registers the options and reads the plugstack.conf arguments.
/// With `sbatch_support=0` (pyxis's meaning) sbatch and salloc do not have the options at all.
pub fn init(spank: &Spank, args: &[String]) -> anyhow::Result<()> {
    let parsed = PluginArgs::parse(args).map_err(|e| e.to_string());
    state::with(|s| s.args = Some(parsed.clone()));
    let parsed = parsed.map_err(anyhow::Error::msg)?;
    if crate::handle::context() == crate::handle::Context::Allocator && !parsed.sbatch_support {
        return Ok(());
    }
    crate::options::register_all(spank).context("cannot register options")?;
    Ok(())
}

/// `slurm_spank_init_post_opt`: the options are all known; the defaults the environment gives the
/// ones not given (`MPIEXEC_DOCKER_CONTAINER_*`) are checked here too, so that a bad one stops the
/// command instead of the job on its nodes.
pub fn init_post_opt(_spank: &Spank, _args: &[String]) -> anyhow::Result<()> {
    let given = state::with(|s| s.options.clone());
    given.with_env_defaults(|k| std::env::var(k).ok())?;
    Ok(())
}
