//! Tasks a step left in its container. A step's tasks are Slurm's own processes that entered the
//! container's mount namespace (see [`crate::step_join`]); their slurmstepd ends them. When
//! slurmstepd itself dies (SIGKILL, an OOM kill of the daemon), nothing does: Slurm leaves such tasks
//! running in the job's cgroup, bare or not. The job's end (the sweep) ends every process in the
//! mount namespace of a container of the job before it removes the container, so that no task
//! outlives its job.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::ProcessHandle;

/// How long the sweep waits for the ended tasks to be gone.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// The mount namespace of process `pid` (`mnt:[INODE]`), when it may be read.
fn mount_namespace(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(Path::new("/proc").join(pid).join("ns/mnt")).ok()
}

/// Ends (SIGKILL) every process other than `container_pid` in the mount namespace of process
/// `container_pid`, a container's main process, and waits for them, 5 s at most. Nothing
/// is done when that namespace is the caller's own (a process that is no container). Only processes
/// the caller may inspect are seen: the user's own, or all of them for root. Returns how many were
/// ended.
pub fn end_tasks_in(container_pid: i32) -> usize {
    let Some(theirs) = mount_namespace(&container_pid.to_string()) else { return 0 };
    if mount_namespace("self").as_ref() == Some(&theirs) {
        log::warn!("process {container_pid} shares this process's mount namespace; no task ended");
        return 0;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let me = std::process::id() as i32;
    let mut ended = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == container_pid || pid == me {
            continue;
        }
        // the handle first, the namespace after: the namespace read is then that very process's
        let Some(handle) = ProcessHandle::open(pid) else { continue };
        if mount_namespace(&pid.to_string()).as_ref() != Some(&theirs) || !handle.alive() {
            continue;
        }
        log::info!("ending process {pid}, left in the container of process {container_pid}");
        handle.kill(Signal::SIGKILL);
        ended.push(handle);
    }
    let deadline = std::time::Instant::now() + GONE_WITHIN;
    for handle in &ended {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !handle.wait(Some(left)) {
            log::warn!("a process left in a container did not end within {GONE_WITHIN:?}");
        }
    }
    ended.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_in_the_callers_own_namespace_is_no_container_and_nothing_is_ended() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert_eq!(end_tasks_in(child.id() as i32), 0);
        assert!(ProcessHandle::open(child.id() as i32).unwrap().alive(), "the caller's neighbours live on");
        child.kill().unwrap();
        let _ = child.wait();
    }

    #[test]
    fn a_process_that_is_gone_ends_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(end_tasks_in(pid), 0);
    }

    #[test]
    fn the_processes_in_a_containers_mount_namespace_are_ended_and_only_they() {
        // a "container": a process in a mount namespace of its own (an unprivileged user namespace
        // makes that possible here), and a "task" that joined it
        let mut container = std::process::Command::new("unshare").args(["-Urm", "sleep", "30"]).spawn().unwrap();
        let pid = container.id() as i32;
        // unshare execs sleep once the namespaces are made
        let ready = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == "sleep").unwrap_or(false)
        });
        assert!(ready, "unshare never ran sleep");
        assert_ne!(mount_namespace(&pid.to_string()), mount_namespace("self"), "a mount namespace of its own");
        let mut task = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-U", "-m", "--preserve-credentials", "sleep", "30"])
            .spawn()
            .unwrap();
        let task_pid = task.id().to_string();
        let joined = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            mount_namespace(&task_pid) == mount_namespace(&pid.to_string())
        });
        assert!(joined, "nsenter never joined");
        let mut neighbour = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert_eq!(end_tasks_in(pid), 1);
        assert!(task.try_wait().unwrap().is_some(), "the task is gone");
        assert!(ProcessHandle::open(pid).unwrap().alive(), "the container's own process is the engine's to end");
        assert!(neighbour.try_wait().unwrap().is_none(), "a process outside the container lives on");
        let _ = container.kill();
        let _ = neighbour.kill();
        let _ = container.wait();
        let _ = neighbour.wait();
    }
}
