//! slurmd's job scripts (job_script context: prolog and epilog, run by slurmd on every node of a job):
//! at the end of every job, remove whatever containers of ours the job left behind, in root's store and
//! in the job user's own (rootless) store. A task killed by SIGKILL, an OOM kill or a node-local
//! failure can leave a container record behind; this sweep makes "nothing survives the job" hold
//! anyway.
//!
//! The epilog must never fail: a failing epilog drains the node. Errors are logged, and the sweep is
//! bounded in time.

use std::time::Duration;

use mpiexec_docker_core::engine::output_within;
use mpiexec_docker_core::plugstack::PluginArgs;

use crate::handle::Spank;
use crate::run_as::helper_as;
use crate::state;

/// The longest a sweep may take before it is killed.
const SWEEP_LIMIT: Duration = Duration::from_secs(120);

/// `slurm_spank_init` in a job script: only the plugstack.conf arguments (no options here). A bad
/// argument is logged, never returned: that would fail the job script and drain the node.
pub fn init(_spank: &Spank, args: &[String]) -> anyhow::Result<()> {
    let parsed = PluginArgs::parse(args).map_err(|e| e.to_string());
    if let Err(msg) = &parsed {
        log::error!("{msg}");
    }
    state::with(|s| s.args = Some(parsed));
    Ok(())
}

/// `slurm_spank_job_epilog`: never reports failure to Slurm.
pub fn job_epilog(spank: &Spank, args: &[String]) -> anyhow::Result<()> {
    if state::with(|s| s.args.is_none()) {
        let _ = init(spank, args);
    }
    if let Err(e) = sweep(spank) {
        log::error!("{e:#}");
    }
    Ok(())
}

fn sweep(spank: &Spank) -> anyhow::Result<()> {
    let (job, uid) = match (spank.get_u32(crate::ffi::spank_item::S_JOB_ID), spank.uid()) {
        (Ok(j), Ok(u)) => (j, u),
        _ => anyhow::bail!("epilog: cannot read the job id or user; no container sweep"),
    };
    let helper = state::plugin_args()
        .map(|a| a.helper)
        .unwrap_or_else(|_| mpiexec_docker_core::plugstack::DEFAULT_HELPER.into());
    if !helper.exists() {
        anyhow::bail!("epilog: helper {} not found; no container sweep for job {job}", helper.display());
    }
    sweep_as(&helper, job, 0);
    if uid != 0 {
        sweep_as(&helper, job, uid);
    }
    Ok(())
}

/// Runs `helper sweep --job JOB` as `uid` (with its groups and home), waiting at most SWEEP_LIMIT.
fn sweep_as(helper: &std::path::Path, job: u32, uid: u32) {
    let Some(user) = nix::unistd::User::from_uid(uid.into()).ok().flatten() else {
        log::error!("epilog: no passwd entry for uid {uid}; no container sweep");
        return;
    };
    let mut cmd = helper_as(helper, &user, user.gid.as_raw());
    cmd.args(mpiexec_docker_core::step_contract::SweepArgs { job: job.to_string(), engine: None }.to_argv());
    match output_within(&mut cmd, SWEEP_LIMIT) {
        // what a sweep that succeeded did on the way (containers removed, tasks or lost shims
        // ended): at slurmd's verbose level, so that a later failure on the node can be traced
        Ok(out) if out.status.success() => {
            let said = String::from_utf8_lossy(&out.stderr);
            if !said.trim().is_empty() {
                log::info!("epilog: container sweep of job {job} as uid {uid}: {}", said.trim());
            }
        }
        Ok(out) => log::error!(
            "epilog: container sweep of job {job} as uid {uid} ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => log::error!("epilog: container sweep of job {job} as uid {uid}: {e}"),
    }
}
