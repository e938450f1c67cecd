//! Prolog/epilog context (run by slurmd on every node of a job): at the end of every job, remove
//! whatever containers of ours the job left behind, in root's store and in the job user's own
//! (rootless) store. A task killed by SIGKILL, an OOM kill or a node-local failure can leave a
//! container record behind; this sweep makes "nothing survives the job" hold anyway.
//!
//! The epilog must never fail: a failing epilog drains the node. Errors are logged, and the sweep is
//! bounded in time.

use std::time::Duration;

use mpiexec_docker::engine::output_within;

use crate::handle::Spank;
use crate::run_as::{helper_as, plugin_args};

/// The longest a sweep may take before it is killed.
const SWEEP_LIMIT: Duration = Duration::from_secs(60);

pub fn job_epilog(spank: &Spank, _args: &[String]) -> Result<(), String> {
    let (job, uid) = match (spank.get_u32(crate::ffi::spank_item::S_JOB_ID), spank.uid()) {
        (Ok(j), Ok(u)) => (j, u),
        _ => {
            log::error!("epilog: cannot read the job id or user; no container sweep");
            return Ok(());
        }
    };
    let helper = plugin_args().map(|a| a.helper).unwrap_or_else(|_| mpiexec_docker::plugstack::DEFAULT_HELPER.into());
    if !helper.exists() {
        log::error!("epilog: helper {} not found; no container sweep for job {job}", helper.display());
        return Ok(());
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
    cmd.args(["sweep", "--job", &job.to_string()]);
    match output_within(&mut cmd, SWEEP_LIMIT) {
        Ok(out) if out.status.success() => {}
        Ok(out) => log::error!(
            "epilog: container sweep of job {job} as uid {uid} ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => log::error!("epilog: container sweep of job {job} as uid {uid}: {e}"),
    }
}
