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

#[derive(Debug, Error)]
pub enum JoinError {
    #[error("the step's container (process {pid}) is gone: {source}")]
    Gone { pid: i32, source: std::io::Error },
    #[error("cannot join the container's {ns} namespace: {source}")]
    Setns { ns: &'static str, source: nix::Error },
    #[error("working directory {dir} is not in the container: {source}")]
    Workdir { dir: PathBuf, source: std::io::Error },
}

/// Joins the namespaces of the container whose main process is `pid`, then `workdir` inside it. The
/// caller must be single-threaded (the kernel refuses a user namespace change otherwise).
pub fn enter(pid: i32, workdir: &Path) -> Result<(), JoinError> {
    use nix::sched::{setns, CloneFlags};
    let gone = |source| JoinError::Gone { pid, source };
    let open = |ns: &str| std::fs::File::open(format!("/proc/{pid}/ns/{ns}"));
    let user_ns = open("user").map_err(gone)?;
    let mnt_ns = open("mnt").map_err(gone)?;
    let own_user = std::fs::read_link("/proc/self/ns/user").map_err(gone)?;
    let their_user = std::fs::read_link(format!("/proc/{pid}/ns/user")).map_err(gone)?;
    if own_user != their_user {
        setns(&user_ns, CloneFlags::CLONE_NEWUSER).map_err(|source| JoinError::Setns { ns: "user", source })?;
    }
    setns(&mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|source| JoinError::Setns { ns: "mount", source })?;
    std::env::set_current_dir(workdir).map_err(|source| JoinError::Workdir { dir: workdir.into(), source })
}

/// The words prepended to a task's argv on Slurm versions with `spank_prepend_task_argv`.
pub fn prepend_argv(helper: &Path, pid: i32, workdir: &Path) -> Vec<String> {
    vec![
        helper.display().to_string(),
        "step-container".into(),
        "join".into(),
        "--pid".into(),
        pid.to_string(),
        "--workdir".into(),
        workdir.display().to_string(),
        "--".into(),
    ]
}

/// What `mpiexec_docker step-container start` prints for the plugin: the container's process id, the
/// image's entrypoint (a JSON list, or `null`), then the image's environment, one `NAME=VALUE` a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub pid: i32,
    pub entrypoint: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Started {
    /// `image_info` is the engine's `{{json .Config.Entrypoint}}` line followed by the env lines.
    pub fn render(pid: &str, image_info: &str) -> String {
        format!("{pid}\n{image_info}")
    }

    pub fn parse(text: &str) -> Result<Started, String> {
        let mut lines = text.lines();
        let pid = lines.next().and_then(|l| l.trim().parse::<i32>().ok()).ok_or("the helper printed no pid")?;
        let entrypoint = match lines.next().map(str::trim) {
            None | Some("") | Some("null") | Some("[]") => Vec::new(),
            Some(json) => serde_yaml::from_str::<Vec<String>>(json)
                .map_err(|e| format!("the helper printed a bad entrypoint '{json}': {e}"))?,
        };
        let env = lines.filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(Started { pid, entrypoint, env })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_output_round_trip() {
        let text = Started::render("4242", "[\"/bin/entry.sh\",\"--x\"]\nPATH=/usr/bin\nA=b=c\n");
        let s = Started::parse(&text).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.entrypoint, ["/bin/entry.sh", "--x"]);
        assert_eq!(s.env, [("PATH".to_string(), "/usr/bin".to_string()), ("A".to_string(), "b=c".to_string())]);
        assert_eq!(Started::parse("7\nnull\n").unwrap().entrypoint, Vec::<String>::new());
        assert!(Started::parse("").is_err());
    }

    use super::*;

    #[test]
    fn a_gone_container_is_named() {
        let err = enter(i32::MAX, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("is gone"), "{err}");
    }

    #[test]
    fn prepended_words_end_with_a_separator() {
        let argv = prepend_argv(Path::new("/usr/local/bin/mpiexec_docker"), 42, Path::new("/home/u"));
        assert_eq!(argv.first().unwrap(), "/usr/local/bin/mpiexec_docker");
        assert_eq!(&argv[1..5], ["step-container", "join", "--pid", "42"]);
        assert_eq!(argv.last().unwrap(), "--");
    }
}
