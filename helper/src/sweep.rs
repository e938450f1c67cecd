//! `mpiexec_docker sweep --job JOBID`: removes every container of ours that belongs to a job, in the
//! caller's store (Podman, and Docker when it is there). The SPANK plugin runs it at the end of each
//! job on every node, as root and as the job's user, so that nothing survives a job whatever killed it
//! (but what the site's `container_scope=global` keeps: a named container, committed as an image of
//! the user's first). Tasks still running in a container of the job (their slurmstepd was killed)
//! are ended first (see `mpiexec_docker_core::left_tasks`).

use clap::Parser;
use mpiexec_docker_core::engine::Engine;
use mpiexec_docker_core::engine::EngineKind;
use mpiexec_docker_core::launch::LABEL;
use mpiexec_docker_core::step_container;
use mpiexec_docker_core::step_contract::SweepArgs;

/// How long the job's end waits for a Docker daemon that had a container of the job on this node and
/// does not answer (a restart), within the plugin's limit on the whole sweep.
const DAEMON_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn main(args: &[String]) -> i32 {
    let a = match SweepArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            mpiexec_docker_core::say_error!("sweep: {}", e.to_string().lines().next().unwrap_or(""));
            return usage();
        }
    };
    let job = a.job;
    // spare makers still at work are waited for first: nothing they make can outlive the listing below
    if let Ok(base) = mpiexec_docker_core::runtime_dir::user_base() {
        if let Some(spares) = mpiexec_docker_core::step_spare::Spares::existing(&base, &job) {
            spares.end_job();
        }
    }
    let engines = match a.engine {
        Some(k) => vec![k],
        None => vec![EngineKind::Podman, EngineKind::Docker],
    };
    let mut failed = false;
    for kind in engines {
        let Ok(engine) = Engine::find(kind).map(Engine::for_cleanup) else { continue };
        // A removal can race with one that a killed task started (the record then sits in
        // "Stopping"): look again after removing, a few times.
        // a daemon that had a container of the job here and does not answer is waited for
        let marker = step_container::docker_job_marker(&job).filter(|m| kind == EngineKind::Docker && m.exists());
        let patience = std::time::Instant::now() + DAEMON_WAIT;
        let list = || loop {
            match engine.containers_with(&[(format!("{LABEL}.job"), job.clone())]) {
                Err(e) if marker.is_some() && std::time::Instant::now() < patience => {
                    log::info!("waiting for the Docker daemon to remove job {job}'s containers: {e}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                listed => return listed,
            }
        };
        for attempt in 0..5 {
            match list() {
                Ok(ids) if ids.is_empty() => {
                    if let Some(m) = &marker {
                        let _ = std::fs::remove_file(m);
                    }
                    break;
                }
                Ok(ids) => {
                    if attempt == 0 {
                        // tasks whose slurmstepd died before it could end them (see left_tasks)
                        for id in &ids {
                            let pid = engine.container_pid(id).ok().and_then(|p| p.parse::<i32>().ok());
                            if let Some(pid) = pid.filter(|p| *p > 0) {
                                let ended = mpiexec_docker_core::left_tasks::end_tasks_in(pid);
                                if ended > 0 {
                                    log::warn!("job {job}: ended {ended} task(s) left in container {id}");
                                }
                            }
                        }
                        // named containers of container_scope=global outlive the job as images
                        for id in &ids {
                            match step_container::keep_if_marked(&engine, id) {
                                Ok(Some(kept)) => log::info!("kept container {id} of job {job} as {kept}"),
                                Ok(None) => {}
                                Err(e) => {
                                    mpiexec_docker_core::say_error!(
                                        "sweep of job {job}: cannot keep a named container: {e}"
                                    );
                                    failed = true;
                                }
                            }
                        }
                    }
                    log::info!("removing {} container(s) of job {job} ({})", ids.len(), engine.name());
                    if attempt > 0 {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                    engine.remove(&ids);
                }
                // a Docker client without a daemon, say: nothing of ours can be there
                Err(e) if kind == EngineKind::Docker && marker.is_some() => {
                    mpiexec_docker_core::say_error!(
                        "sweep of job {job}: the Docker daemon had its containers here and does not answer: {e}"
                    );
                    failed = true;
                    break;
                }
                Err(e) if kind == EngineKind::Docker => {
                    log::debug!("{e}");
                    break;
                }
                Err(e) => {
                    mpiexec_docker_core::say_error!("sweep of job {job}: {e}");
                    failed = true;
                    break;
                }
            }
        }
        // the shims of step containers that a restarted daemon lost (see end_lost_shims)
        if nix::unistd::getuid().is_root() {
            engine.end_lost_shims();
        }
    }
    remove_stale_runtime_dirs();
    remove_job_fetch_dir(&job);
    i32::from(failed)
}

/// Removes this user's per-run directories (relay socket, links) that no live process owns: a helper
/// or relay server killed by SIGKILL cannot remove its own.
fn remove_stale_runtime_dirs() {
    if let Ok(base) = mpiexec_docker_core::runtime_dir::user_base() {
        mpiexec_docker_core::runtime_dir::sweep(&base);
    }
}

/// Removes what the job's nodes handed each other (the site's `job_fetch_dir`), run as the user; run
/// as root, the directories root's helper noted for the job's user (Docker's shared store), removed
/// with that user's rights.
fn remove_job_fetch_dir(job: &str) {
    use mpiexec_docker_core::job_fetch::JobFetch;
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0 {
        let Ok(state) = mpiexec_docker_core::runtime_dir::user_base() else { return };
        for (uid, dir) in JobFetch::noted_for_users(&state, job) {
            let gid = nix::unistd::User::from_uid(uid.into()).ok().flatten().map_or(uid, |u| u.gid.as_raw());
            let user = mpiexec_docker_core::identity::UserIds { uid, gid, groups: Vec::new() };
            match user.act_as() {
                Ok(_acting) => JobFetch::remove_job(&dir, uid, job),
                Err(e) => log::warn!("{e}: {} of job {job} stays", dir.display()),
            }
        }
        return;
    }
    // where this node's helper noted it (the setting may have changed since), and where the
    // site's setting names it now
    let noted = mpiexec_docker_core::runtime_dir::user_base().ok().and_then(|state| JobFetch::noted(&state, job));
    let set = match mpiexec_docker_core::config::Config::load() {
        Ok(config) => config.job_fetch_dir,
        Err(e) => {
            log::debug!("{e}");
            None
        }
    };
    for dir in noted.iter().chain(set.iter().filter(|s| Some(*s) != noted.as_ref())) {
        JobFetch::remove_job(dir, uid, job);
    }
}

fn usage() -> i32 {
    mpiexec_docker_core::say_error!("usage: mpiexec_docker sweep --job JOBID [--engine podman|docker]");
    2
}
