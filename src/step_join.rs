//! Entering a step container: how a task of a `--container-image` step gets into the container that
//! `mpiexec_docker step-container start` made for its step on this node.
//!
//! The task joins the container's user namespace (when it has its own: rootless Podman) and its mount
//! namespace, then changes to the working directory. It keeps everything else a Slurm task has: its
//! parent (slurmstepd), cgroup, network and PID namespaces, limits and signals. Two callers:
//! - the SPANK plugin in `slurm_spank_task_init`, in the task itself (Slurm 22.05: no other way);
//! - `mpiexec_docker step-container join`, prepended to the task's argv through
//!   `spank_prepend_task_argv` where Slurm has it (23.11 and later); it then execs the task's program.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::confinement::Confinement;

#[derive(Debug, Error)]
pub enum JoinError {
    #[error("the step's container (process {pid}) is gone: {cause}")]
    Gone { pid: i32, cause: std::io::Error },
    #[error("cannot join the container's {ns} namespace: {cause}")]
    Setns { ns: &'static str, cause: nix::Error },
    #[error("working directory {dir} is not in the container: {cause}")]
    Workdir { dir: PathBuf, cause: std::io::Error },
    #[error("process {pid} is not a step container of ours; not joining it")]
    NotOurs { pid: i32 },
    #[error("cannot {what}: {cause}")]
    Sys { what: &'static str, cause: std::io::Error },
}

/// Joins, as root, the mount namespace of a container that a root daemon (Docker) made for the step:
/// the task's part that needs privilege, from `slurm_spank_task_init_privileged`, before Slurm drops
/// to the user. The process must be our pause (checked, so that a reused pid is never joined) in the
/// host's user namespace. The task also gets `no_new_privs`: the image's files belong to the real
/// root here, and a setuid program in a user's image must not make its user root.
pub fn enter_privileged(pid: i32, unshared: &[String]) -> Result<(), JoinError> {
    use nix::sched::{setns, CloneFlags};
    let gone = |cause| JoinError::Gone { pid, cause };
    let mnt_ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(gone)?;
    let own = own_namespaces(pid, unshared)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(gone)?;
    let own_user = std::fs::read_link("/proc/self/ns/user").map_err(gone)?;
    let their_user = std::fs::read_link(format!("/proc/{pid}/ns/user")).map_err(gone)?;
    if !is_pause(&cmdline) || own_user != their_user {
        return Err(not_ours(pid, &cmdline));
    }
    crate::confinement::no_new_privileges().map_err(|cause| JoinError::Sys { what: "set no_new_privs", cause })?;
    join_own(own)?;
    setns(&mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|cause| JoinError::Setns { ns: "mount", cause })
}

/// Checks that process `pid` is a step container's placeholder of user `uid` (as the host sees it)
/// before root acts on it: a pid from anywhere else is never read or joined.
pub fn check_pause(pid: i32, uid: u32) -> Result<(), JoinError> {
    use std::os::unix::fs::MetadataExt;
    let gone = |cause| JoinError::Gone { pid, cause };
    let owner = std::fs::metadata(format!("/proc/{pid}")).map_err(gone)?.uid();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(gone)?;
    if owner != uid || !is_pause(&cmdline) {
        return Err(not_ours(pid, &cmdline));
    }
    Ok(())
}

/// Waits until process `pid` runs our placeholder: the engine reports a container's process as soon
/// as the runtime made it, a moment before it execs the container's program (longer on a busy node).
/// Nothing may use the container before then.
pub fn wait_for_pause(pid: i32, limit: std::time::Duration) -> Result<(), JoinError> {
    let start = std::time::Instant::now();
    loop {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|cause| JoinError::Gone { pid, cause })?;
        if is_pause(&cmdline) {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(not_ours(pid, &cmdline));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Why process `pid`, with this `/proc/PID/cmdline`, may not be joined: a process that has ended (a
/// zombie has no command line: its container was stopped a moment ago) is gone; anything else is
/// not ours.
fn not_ours(pid: i32, cmdline: &[u8]) -> JoinError {
    match cmdline.is_empty() {
        true => JoinError::Gone { pid, cause: std::io::Error::other("it has ended") },
        false => JoinError::NotOurs { pid },
    }
}

/// Whether a `/proc/PID/cmdline` is our step container's placeholder (`… in-container pause`).
pub fn is_pause(cmdline: &[u8]) -> bool {
    cmdline.windows(b"in-container\0pause".len()).any(|w| w == b"in-container\0pause")
}

/// `--container-remap-root` where the container has no user namespace of its own (Docker): the task
/// makes one for itself in which its user is root. Root there has power over that namespace only:
/// on the host the task stays the user. Must be called single-threaded, as the user.
pub fn map_to_root(uid: u32, gid: u32) -> Result<(), JoinError> {
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|cause| JoinError::Setns { ns: "new user", cause })?;
    let write = |what: &'static str, file: &str, text: String| {
        std::fs::write(file, text).map_err(|cause| JoinError::Sys { what, cause })
    };
    // a task that changed its uid is not dumpable, which makes its /proc files root's: for the
    // moment of these writes only, it is (the program's exec sets the flag anew anyway)
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    let written = write("deny setgroups", "/proc/self/setgroups", "deny".into())
        .and_then(|_| write("map the user to root", "/proc/self/uid_map", format!("0 {uid} 1")))
        .and_then(|_| write("map the group to root", "/proc/self/gid_map", format!("0 {gid} 1")));
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    written
}

/// Moves process `pid` into the step's cgroup `path` in every cgroup hierarchy mounted under
/// `cgroup_root` that has it: a root daemon's container process (Docker's) then lives with the step's
/// tasks, under Slurm's limits, accounting and signals (Docker's own `--cgroup-parent` cannot be used
/// under Slurm's device cgroup: runc's default device rules exceed the step's). Returns how many
/// hierarchies took it.
pub fn move_into_cgroup(pid: i32, cgroup_root: &Path, path: &str) -> Result<usize, JoinError> {
    let rel = path.trim_start_matches('/');
    let mut moved = 0;
    let mut candidates = vec![cgroup_root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(cgroup_root) {
        candidates.extend(entries.flatten().map(|e| e.path()));
    }
    for hierarchy in candidates {
        let procs = hierarchy.join(rel).join("cgroup.procs");
        if !procs.is_file() {
            continue;
        }
        std::fs::write(&procs, pid.to_string())
            .map_err(|cause| JoinError::Sys { what: "move the container into the step's cgroup", cause })?;
        moved += 1;
    }
    Ok(moved)
}

/// The Slurm step's cgroup, read from slurmstepd's own `/proc/self/cgroup`. cgroup v1: the memory
/// controller's path (slurmstepd sits in `…/job_J/step_S`). cgroup v2: slurmstepd's own leaf
/// `…/step_S/slurm` (the step's other leaves are the tasks').
pub fn step_cgroup(proc_self_cgroup: &str) -> Option<String> {
    let line = |pred: &dyn Fn(&str) -> bool| {
        proc_self_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            pred(controllers).then(|| path.to_string())
        })
    };
    if let Some(path) = line(&|c| c.split(',').any(|c| c == "memory")) {
        return path.contains("/step_").then_some(path);
    }
    let path = line(&|c| c.is_empty())?;
    let step = path.strip_suffix("/slurm")?;
    step.rsplit('/').next().filter(|last| last.starts_with("step_"))?;
    Some(path)
}

/// Joins the namespaces of the container whose main process is `pid`, then `workdir` inside it. The
/// caller must be single-threaded (the kernel refuses a user namespace change otherwise).
pub fn enter(pid: i32, workdir: &Path, unshared: &[String]) -> Result<(), JoinError> {
    use nix::sched::{setns, CloneFlags};
    let gone = |cause| JoinError::Gone { pid, cause };
    let open = |ns: &str| std::fs::File::open(format!("/proc/{pid}/ns/{ns}"));
    let user_ns = open("user").map_err(gone)?;
    let mnt_ns = open("mnt").map_err(gone)?;
    let own = own_namespaces(pid, unshared)?;
    let own_user = std::fs::read_link("/proc/self/ns/user").map_err(gone)?;
    let their_user = std::fs::read_link(format!("/proc/{pid}/ns/user")).map_err(gone)?;
    if own_user != their_user {
        setns(&user_ns, CloneFlags::CLONE_NEWUSER).map_err(|cause| JoinError::Setns { ns: "user", cause })?;
    }
    join_own(own)?;
    setns(&mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|cause| JoinError::Setns { ns: "mount", cause })?;
    std::env::set_current_dir(workdir).map_err(|cause| JoinError::Workdir { dir: workdir.into(), cause })
}

/// The container's own namespaces among `unshared` (net, ipc, uts), opened before any is joined.
fn own_namespaces(pid: i32, unshared: &[String]) -> Result<Vec<(std::fs::File, &'static str)>, JoinError> {
    let gone = |cause| JoinError::Gone { pid, cause };
    [("net", "network"), ("ipc", "IPC"), ("uts", "UTS")]
        .into_iter()
        .filter(|(ns, _)| unshared.iter().any(|u| u == ns))
        .map(|(ns, what)| Ok((std::fs::File::open(format!("/proc/{pid}/ns/{ns}")).map_err(gone)?, what)))
        .collect()
}

/// Joins the namespaces [`own_namespaces`] opened (after the user namespace, which owns them).
fn join_own(own: Vec<(std::fs::File, &'static str)>) -> Result<(), JoinError> {
    for (file, what) in own {
        nix::sched::setns(&file, nix::sched::CloneFlags::empty())
            .map_err(|cause| JoinError::Setns { ns: what, cause })?;
    }
    Ok(())
}

/// The words prepended to a task's argv on Slurm versions with `spank_prepend_task_argv`.
pub fn prepend_argv(
    helper: &Path,
    pid: i32,
    workdir: &Path,
    confinement: &Confinement,
    unshared: &[String],
) -> Vec<String> {
    let join = crate::step_contract::JoinArgs {
        pid,
        workdir: Some(workdir.display().to_string()),
        confinement: Some(confinement.to_word()),
        unshare: unshared.to_vec(),
        command: Vec::new(),
    };
    std::iter::once(helper.display().to_string()).chain(join.to_argv_prefix()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_cgroups() {
        let v1 = "6:freezer:/slurm_node1/uid_1500/job_728\n5:devices:/slurm_node1/uid_1500/job_728/step_0\n\
                  4:memory:/slurm_node1/uid_1500/job_728/step_0\n0::/\n";
        assert_eq!(step_cgroup(v1).as_deref(), Some("/slurm_node1/uid_1500/job_728/step_0"));
        let v2 = "0::/system.slice/slurmstepd.scope/job_9/step_1/slurm\n";
        assert_eq!(step_cgroup(v2).as_deref(), Some("/system.slice/slurmstepd.scope/job_9/step_1/slurm"));
        assert_eq!(step_cgroup("4:memory:/user.slice\n0::/\n"), None, "not in a step");
        assert_eq!(step_cgroup("0::/user.slice/session-1.scope\n"), None);
    }

    /// `/proc/self/cgroup` of slurmstepd and of a task under Slurm 24.11's cgroup/v2 plugin (a pure v2
    /// node: one `0::` line), as Slurm lays them out with systemd (`system.slice/slurmstepd.scope`),
    /// without it (`IgnoreSystemd=yes`: `slurmstepd.scope` at the root), and with several slurmd per
    /// host (`NODENAME_slurmstepd.scope`). slurmstepd sits in the step's `slurm` leaf, tasks in
    /// `user/task_N`: the step's cgroup for a container is slurmstepd's leaf.
    #[test]
    fn step_cgroups_of_slurm_24_11_under_cgroup_v2() {
        for scope in ["/system.slice/slurmstepd.scope", "/slurmstepd.scope", "/system.slice/node2_slurmstepd.scope"] {
            let stepd = format!("0::{scope}/job_4711/step_0/slurm\n");
            assert_eq!(step_cgroup(&stepd), Some(format!("{scope}/job_4711/step_0/slurm")), "{stepd}");
            let batch = format!("0::{scope}/job_4711/step_batch/slurm\n");
            assert_eq!(step_cgroup(&batch), Some(format!("{scope}/job_4711/step_batch/slurm")), "{batch}");
            // slurmd itself and a task are not a step's slurmstepd
            assert_eq!(step_cgroup(&format!("0::{scope}/system\n")), None);
            assert_eq!(step_cgroup(&format!("0::{scope}/job_4711/step_0/user/task_0\n")), None);
        }
    }

    #[test]
    fn moving_into_a_v2_cgroup_writes_the_unified_hierarchy() {
        // on a v2 node /sys/fs/cgroup is the one hierarchy itself
        let root = crate::test_scratch::subdir("cgroup2");
        let step = root.join("system.slice/slurmstepd.scope/job_9/step_1/slurm");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join("cgroup.procs"), "").unwrap();
        assert_eq!(move_into_cgroup(42, &root, "/system.slice/slurmstepd.scope/job_9/step_1/slurm").unwrap(), 1);
        assert_eq!(std::fs::read_to_string(step.join("cgroup.procs")).unwrap(), "42");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn moving_into_a_cgroup_writes_every_hierarchy_that_has_it() {
        let root = crate::test_scratch::subdir("cgroup");
        for h in ["memory", "freezer"] {
            std::fs::create_dir_all(root.join(h).join("slurm/job_1/step_0")).unwrap();
            std::fs::write(root.join(h).join("slurm/job_1/step_0/cgroup.procs"), "").unwrap();
        }
        std::fs::create_dir_all(root.join("cpu")).unwrap();
        assert_eq!(move_into_cgroup(42, &root, "/slurm/job_1/step_0").unwrap(), 2);
        assert_eq!(std::fs::read_to_string(root.join("memory/slurm/job_1/step_0/cgroup.procs")).unwrap(), "42");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pause_command_lines() {
        assert!(is_pause(b"/.mpiexec-docker/mpiexec_docker\0in-container\0pause\0"));
        assert!(!is_pause(b"/bin/sleep\0in-container pause\0"));
    }

    #[test]
    fn a_gone_container_is_named() {
        assert!(enter_privileged(i32::MAX, &[]).unwrap_err().to_string().contains("is gone"));
        let err = enter(i32::MAX, Path::new("/"), &[]).unwrap_err();
        assert!(err.to_string().contains("is gone"), "{err}");
    }

    #[test]
    fn a_container_stopped_a_moment_ago_is_gone_not_foreign() {
        // a zombie: ended, not yet waited for
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let ended = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| c.is_empty()).unwrap_or(false)
        });
        assert!(ended, "the child ended");
        let uid = nix::unistd::getuid().as_raw();
        let err = check_pause(pid, uid).unwrap_err();
        assert!(err.to_string().contains("is gone: it has ended"), "{err}");
        assert!(std::error::Error::source(&err).is_none(), "the reason is said once: {err}");
        child.wait().unwrap();
    }

    #[test]
    fn prepended_words_end_with_a_separator() {
        let unshared = ["net".to_string()];
        let argv = prepend_argv(
            Path::new("/usr/local/bin/mpiexec_docker"),
            42,
            Path::new("/home/u"),
            &Confinement::default(),
            &unshared,
        );
        assert_eq!(argv.first().unwrap(), "/usr/local/bin/mpiexec_docker");
        assert_eq!(&argv[1..5], ["step-container", "join", "--pid", "42"]);
        assert_eq!(&argv[argv.len() - 3..], ["--unshare", "net", "--"]);
        assert_eq!(argv.last().unwrap(), "--");
    }
}
