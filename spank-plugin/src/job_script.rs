//! Prolog/epilog context (run by slurmd on every node of a job): at the end of every job, remove
//! whatever containers of ours the job left behind, in root's store and in the job user's own
//! (rootless) store. A task killed by SIGKILL, an OOM kill or a node-local failure can leave a
//! container record behind; this sweep makes "nothing survives the job" hold anyway.
//!
//! The epilog must never fail: a failing epilog drains the node. Errors are logged, and the sweep is
//! bounded in time.

use std::ffi::CString;
use std::time::{Duration, Instant};

use crate::handle::Spank;
use crate::init::PLUGIN_ARGS;

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
    let helper = PLUGIN_ARGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|r| r.as_ref().ok().map(|a| a.helper.clone()))
        .unwrap_or_else(|| mpiexec_docker::plugstack::DEFAULT_HELPER.into());
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
    // everything the child needs is prepared before fork
    let prog = CString::new(helper.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let argv = [prog.clone(), c"sweep".into(), c"--job".into(), CString::new(job.to_string()).unwrap_or_default()];
    let env = [
        CString::new(format!("HOME={}", user.dir.display())).unwrap_or_default(),
        CString::new(format!("USER={}", user.name)).unwrap_or_default(),
        CString::new(format!("LOGNAME={}", user.name)).unwrap_or_default(),
        c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ];
    let name = CString::new(user.name.clone()).unwrap_or_default();
    // SAFETY: fork in a callback of slurmd's spank epilog process; the child only calls
    // async-signal-safe functions (setgroups/setgid/setuid/execve) before it execs or exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            if uid != 0 {
                let ok = nix::unistd::initgroups(&name, user.gid).is_ok()
                    && nix::unistd::setgid(user.gid).is_ok()
                    && nix::unistd::setuid(user.uid).is_ok();
                if !ok {
                    // SAFETY: leaving the forked child without running any of the parent's handlers.
                    unsafe { libc::_exit(126) };
                }
            }
            let _ = nix::unistd::execve(&prog, &argv, &env);
            // SAFETY: as above.
            unsafe { libc::_exit(127) };
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let start = Instant::now();
            loop {
                match nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::StillAlive) if start.elapsed() < SWEEP_LIMIT => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(child, None);
                        log::error!("epilog: container sweep of job {job} as uid {uid} timed out");
                        return;
                    }
                    Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => return,
                    Ok(status) => {
                        log::error!("epilog: container sweep of job {job} as uid {uid} ended with {status:?}");
                        return;
                    }
                    Err(e) => {
                        log::error!("epilog: waiting for the container sweep: {e}");
                        return;
                    }
                }
            }
        }
        Err(e) => log::error!("epilog: cannot fork for the container sweep: {e}"),
    }
}
