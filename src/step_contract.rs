//! The interface between the SPANK plugin and the helper, typed once: it crosses a privilege boundary
//! (with Docker the plugin runs the helper as root for the job's user), so both sides use these types
//! and the compiler checks it. The plugin builds each command with `to_argv`; the helper parses it with
//! clap ([`StepContainerCommand`], [`SweepArgs`]); `start` answers with [`Started`], as JSON.
//!
//! ```text
//! mpiexec_docker step-container start --job J --step S --image IMAGE --workdir DIR [--engine E] [--mount SPEC]...
//!     [--container-workdir DIR] [--mount-home DIR] [--remap-root] [--readonly] [--gpus LIST] [--name NAME]
//!     [--user UID:GID[:GROUPS]] [--step-cgroup PATH]
//! mpiexec_docker step-container stop --job J --step S [--engine E] [--name NAME] [--pid PID] [--user …]
//! mpiexec_docker step-container join --pid PID [--workdir DIR] [--confinement WORD] -- PROG [ARGS]
//! mpiexec_docker step-container serve … (started by `start` itself, see the helper)
//! mpiexec_docker sweep --job JOBID [--engine podman|docker]
//! ```

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

pub use crate::container_options::NameMode;
use crate::engine::EngineKind;
use crate::identity::UserIds;

/// `mpiexec_docker step-container ACTION …`
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(name = "mpiexec_docker step-container", no_binary_name = true, disable_help_subcommand = true)]
pub struct StepContainerCommand {
    #[command(subcommand)]
    pub action: StepAction,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// Starts a step's container on this node and prints [`Started`] (JSON).
    Start(StartArgs),
    /// Removes a step's container.
    Stop(StopArgs),
    /// The relay server of a step container (started by `start`).
    Serve(ServeArgs),
    /// Enters a step container and runs a task's program there.
    Join(JoinArgs),
    /// Makes the spare container for a job's next step (see `step_spare`): started by a step's end.
    Spare(SpareArgs),
}

/// `step-container spare`: the request of the step that ended, its step id the spare's own.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct SpareArgs {
    #[command(flatten)]
    pub start: StartArgs,
    /// The step that started this.
    #[arg(long)]
    pub for_step: String,
    /// Only remove this container (the step's own, at its end).
    #[arg(long)]
    pub remove: Option<String>,
}

/// `step-container start`: once per node and step, from `slurm_spank_user_init`.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct StartArgs {
    #[arg(long)]
    pub job: String,
    #[arg(long)]
    pub step: String,
    /// The image as the user named it ("" with `--name` of a running container).
    #[arg(long, default_value = "")]
    pub image: String,
    /// The job's working directory (mounted at its own path, and where tasks start).
    #[arg(long)]
    pub workdir: String,
    #[arg(long)]
    pub engine: Option<EngineKind>,
    /// Bind mounts `SRC:DST[:ro]` (site and `--container-mounts`).
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// `--container-workdir`.
    #[arg(long)]
    pub container_workdir: Option<String>,
    /// `--container-mount-home`: the user's home directory.
    #[arg(long)]
    pub mount_home: Option<String>,
    #[arg(long)]
    pub remap_root: bool,
    #[arg(long)]
    pub readonly: bool,
    /// The step's GPUs on this node (Slurm's indexes, "" for none); all of the node's when not given.
    #[arg(long)]
    pub gpus: Option<String>,
    /// `--container-name`: the container is kept for the job's later steps that name it.
    #[arg(long = "name")]
    pub container_name: Option<String>,
    /// Namespaces the container has of its own (`--container-unshare`: net, ipc, uts).
    #[arg(long)]
    pub unshare: Vec<String>,
    /// What the name's flag asks of an existing container of that name.
    #[arg(long, default_value = "auto")]
    pub name_mode: NameMode,
    /// `container_scope=global`: a named container is kept on the node after its job, and one kept
    /// by an earlier job is started from.
    #[arg(long)]
    pub global_scope: bool,
    /// The site's login for the image's registry comes on standard input (see
    /// [`crate::registry_auth::site_login`]): for a pull by the user's own engine (rootless Podman).
    #[arg(long)]
    pub site_login_stdin: bool,
    /// The job's user, when root runs this for them (Docker).
    #[arg(long)]
    pub user: Option<UserIds>,
    /// The step's cgroup, for engines whose containers are not our children (Docker).
    #[arg(long)]
    pub step_cgroup: Option<String>,
    /// A Slurm step's start, from the plugin: the job's later steps may take spare containers (see
    /// `step_spare`; the job's end removes them). Not for a start by hand, which no job's end follows.
    #[arg(long)]
    pub spares: bool,
    /// The job's number of nodes (Slurm's `SLURM_JOB_NUM_NODES`): a one-node job hands no image on
    /// through the site's `job_fetch_dir` (no other node of it could load it).
    #[arg(long)]
    pub job_nodes: Option<u32>,
}

/// `step-container stop`: once per node and step, from `slurm_spank_exit`.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct StopArgs {
    #[arg(long)]
    pub job: String,
    #[arg(long)]
    pub step: String,
    #[arg(long)]
    pub engine: Option<EngineKind>,
    #[arg(long = "name")]
    pub container_name: Option<String>,
    /// The container's process (our placeholder), ended before the container is removed.
    #[arg(long)]
    pub pid: Option<i32>,
    #[arg(long)]
    pub user: Option<UserIds>,
    /// `--container-save`: the image file to write first (an absolute path).
    #[arg(long)]
    pub save: Option<String>,
    /// Only save: the container stays (the step's exit removes it).
    #[arg(long)]
    pub keep: bool,
}

/// `step-container serve`: the relay of a step container, until its process is gone.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct ServeArgs {
    #[arg(long)]
    pub job: String,
    #[arg(long)]
    pub step: String,
    #[arg(long, default_value = "")]
    pub image: String,
    #[arg(long)]
    pub workdir: String,
    #[arg(long)]
    pub engine: Option<EngineKind>,
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// The runtime directory handed over.
    #[arg(long)]
    pub dir: String,
    /// The container's process.
    #[arg(long)]
    pub pid: i32,
    /// The inherited owner lock of the runtime directory.
    #[arg(long)]
    pub lock_fd: i32,
    /// The relay's socket, bound by `start` before the container started.
    #[arg(long)]
    pub listen_fd: i32,
}

/// `step-container join`: what a task's argv starts with on Slurm 23.11+.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinArgs {
    #[arg(long)]
    pub pid: i32,
    #[arg(long)]
    pub workdir: Option<String>,
    /// The container process's confinement (see `Confinement::to_word`), applied before exec.
    #[arg(long)]
    pub confinement: Option<String>,
    /// The container's own namespaces to join besides its user and mount ones (net, ipc, uts).
    #[arg(long)]
    pub unshare: Vec<String>,
    /// The task's program and arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `mpiexec_docker sweep`: removes every container of ours of a job, in the caller's store.
#[derive(Parser, Debug, Clone, PartialEq, Eq, Default)]
#[command(name = "mpiexec_docker sweep", no_binary_name = true)]
pub struct SweepArgs {
    #[arg(long, value_parser = job_id)]
    pub job: String,
    #[arg(long)]
    pub engine: Option<EngineKind>,
}

/// Whether `s` is a Slurm job id (digits): safe, too, as part of a file name.
pub fn is_job_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

fn job_id(s: &str) -> Result<String, String> {
    match is_job_id(s) {
        true => Ok(s.to_string()),
        false => Err(format!("'{s}' is not a job id")),
    }
}

/// `--NAME VALUE` for each value given.
fn opt(argv: &mut Vec<String>, name: &str, value: Option<impl ToString>) {
    if let Some(v) = value {
        argv.push(format!("--{name}"));
        argv.push(v.to_string());
    }
}

fn flag(argv: &mut Vec<String>, name: &str, on: bool) {
    if on {
        argv.push(format!("--{name}"));
    }
}

impl StartArgs {
    /// `step-container start …` (after the helper's path).
    pub fn to_argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["step-container".into(), "start".into()];
        opt(&mut a, "job", Some(&self.job));
        opt(&mut a, "step", Some(&self.step));
        opt(&mut a, "image", Some(&self.image));
        opt(&mut a, "workdir", Some(&self.workdir));
        opt(&mut a, "engine", self.engine.map(|e| e.command()));
        for m in &self.mounts {
            opt(&mut a, "mount", Some(m));
        }
        opt(&mut a, "container-workdir", self.container_workdir.as_ref());
        opt(&mut a, "mount-home", self.mount_home.as_ref());
        flag(&mut a, "remap-root", self.remap_root);
        flag(&mut a, "readonly", self.readonly);
        opt(&mut a, "gpus", self.gpus.as_ref());
        opt(&mut a, "name", self.container_name.as_ref());
        for u in &self.unshare {
            opt(&mut a, "unshare", Some(u));
        }
        if self.name_mode != NameMode::Auto {
            opt(&mut a, "name-mode", Some(self.name_mode));
        }
        flag(&mut a, "global-scope", self.global_scope);
        flag(&mut a, "site-login-stdin", self.site_login_stdin);
        opt(&mut a, "user", self.user.as_ref());
        opt(&mut a, "step-cgroup", self.step_cgroup.as_ref());
        flag(&mut a, "spares", self.spares);
        opt(&mut a, "job-nodes", self.job_nodes.as_ref());
        a
    }
}

impl StopArgs {
    /// `step-container stop …` (after the helper's path).
    pub fn to_argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["step-container".into(), "stop".into()];
        opt(&mut a, "job", Some(&self.job));
        opt(&mut a, "step", Some(&self.step));
        opt(&mut a, "engine", self.engine.map(|e| e.command()));
        opt(&mut a, "name", self.container_name.as_ref());
        opt(&mut a, "pid", self.pid);
        opt(&mut a, "user", self.user.as_ref());
        opt(&mut a, "save", self.save.as_ref());
        flag(&mut a, "keep", self.keep);
        a
    }
}

impl ServeArgs {
    /// `step-container serve …` (after the helper's path).
    pub fn to_argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["step-container".into(), "serve".into()];
        opt(&mut a, "job", Some(&self.job));
        opt(&mut a, "step", Some(&self.step));
        opt(&mut a, "image", Some(&self.image));
        opt(&mut a, "workdir", Some(&self.workdir));
        opt(&mut a, "engine", self.engine.map(|e| e.command()));
        for m in &self.mounts {
            opt(&mut a, "mount", Some(m));
        }
        opt(&mut a, "dir", Some(&self.dir));
        opt(&mut a, "pid", Some(self.pid));
        opt(&mut a, "lock-fd", Some(self.lock_fd));
        opt(&mut a, "listen-fd", Some(self.listen_fd));
        a
    }
}

impl JoinArgs {
    /// `step-container join … --` (after the helper's path), without the command: on Slurm 23.11+
    /// the task's own argv follows (`spank_prepend_task_argv`).
    pub fn to_argv_prefix(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["step-container".into(), "join".into()];
        opt(&mut a, "pid", Some(self.pid));
        opt(&mut a, "workdir", self.workdir.as_ref());
        opt(&mut a, "confinement", self.confinement.as_ref());
        for u in &self.unshare {
            opt(&mut a, "unshare", Some(u));
        }
        a.push("--".into());
        a
    }
}

impl SweepArgs {
    /// `sweep …` (after the helper's path).
    pub fn to_argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["sweep".into()];
        opt(&mut a, "job", Some(&self.job));
        opt(&mut a, "engine", self.engine.map(|e| e.command()));
        a
    }
}

/// What `step-container start` prints for the plugin (JSON): the container's process id, the image's
/// entrypoint and its environment (for the tasks, which inherit the job's environment, not the image's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
    pub entrypoint: Vec<String>,
    pub env: Vec<(String, String)>,
    /// How long each phase of the start took on this node, in seconds, in order (`lock`: waiting for
    /// the user's earlier starts, `fetch`: the image, `start`: the container, `relay`: its server).
    #[serde(default)]
    pub phases: Vec<(String, f64)>,
    /// What the container's devices set (CDI specs' variables): the tasks get them on top of the
    /// image's.
    #[serde(default)]
    pub device_env: Vec<(String, String)>,
    /// One line for the user about this step's container (said once per step, not per task).
    #[serde(default)]
    pub notice: Option<String>,
}

impl Started {
    /// From the container's pid and the engine's `{{json .Config.Entrypoint}}` line followed by the
    /// image's `NAME=VALUE` lines.
    pub fn from_image_info(pid: i32, image_info: &str) -> Result<Started, String> {
        let mut lines = image_info.lines();
        let entrypoint = match lines.next().map(str::trim) {
            None | Some("") | Some("null") | Some("[]") => Vec::new(),
            Some(json) => serde_json::from_str::<Vec<String>>(json)
                .map_err(|e| format!("the engine gave a bad entrypoint '{json}': {e}"))?,
        };
        let env = lines.filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(Started { pid, entrypoint, env, phases: Vec::new(), device_env: Vec::new(), notice: None })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    pub fn from_json(text: &str) -> Result<Started, String> {
        serde_json::from_str(text.trim()).map_err(|e| format!("the helper's answer is not understood: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: Vec<String>) -> StepAction {
        StepContainerCommand::try_parse_from(&argv[1..]).unwrap_or_else(|e| panic!("{argv:?}: {e}")).action
    }

    #[test]
    fn every_action_round_trips_through_its_argv() {
        let start = StartArgs {
            job: "5".into(),
            step: "0".into(),
            image: "/shared/x.tar".into(),
            workdir: "/home/u/run".into(),
            engine: Some(EngineKind::Docker),
            mounts: vec!["/data:/data:ro".into(), "/scratch".into()],
            container_workdir: Some("/w".into()),
            mount_home: Some("/home/u".into()),
            remap_root: true,
            readonly: false,
            gpus: Some(String::new()),
            container_name: Some("dev".into()),
            unshare: vec!["net".into(), "uts".into()],
            name_mode: NameMode::Create,
            global_scope: true,
            site_login_stdin: true,
            user: Some("1500:1500:27".parse().unwrap()),
            step_cgroup: Some("/slurm/uid_1500/job_5/step_0".into()),
            spares: true,
            job_nodes: Some(16),
        };
        assert_eq!(parse(start.to_argv()), StepAction::Start(start));
        let stop = StopArgs {
            job: "5".into(),
            step: "4294967291".into(),
            engine: None,
            container_name: None,
            pid: Some(77),
            user: None,
            save: Some("/home/u/saved.tar".into()),
            keep: true,
        };
        assert_eq!(parse(stop.to_argv()), StepAction::Stop(stop));
        let serve = ServeArgs {
            job: "5".into(),
            step: "1".into(),
            image: "img".into(),
            workdir: "/w".into(),
            engine: Some(EngineKind::Podman),
            mounts: vec![],
            dir: "/run/mpiexec-docker/1500/run-ab".into(),
            pid: 9,
            lock_fd: 3,
            listen_fd: 4,
        };
        assert_eq!(parse(serve.to_argv()), StepAction::Serve(serve));
        let join = JoinArgs {
            pid: 9,
            workdir: Some("/w".into()),
            confinement: Some("seccomp".into()),
            unshare: vec!["net".into()],
            command: vec![],
        };
        let mut argv = join.to_argv_prefix();
        argv.extend(["prog".to_string(), "--pid".to_string(), "-x".to_string()]);
        let want = JoinArgs { command: vec!["prog".into(), "--pid".into(), "-x".into()], ..join };
        assert_eq!(parse(argv), StepAction::Join(want), "the task's own argv is never read as our options");
        let sweep = SweepArgs { job: "77".into(), engine: Some(EngineKind::Docker) };
        assert_eq!(SweepArgs::try_parse_from(&sweep.to_argv()[1..]).unwrap(), sweep);
        assert!(SweepArgs::try_parse_from(["--job", "7; rm"]).is_err());
    }

    #[test]
    fn start_answer_round_trip() {
        let s = Started::from_image_info(4242, "[\"/bin/entry.sh\",\"--x\"]\nPATH=/usr/bin\nA=b=c\n").unwrap();
        assert_eq!(s.entrypoint, ["/bin/entry.sh", "--x"]);
        assert_eq!(s.env, [("PATH".to_string(), "/usr/bin".to_string()), ("A".to_string(), "b=c".to_string())]);
        assert_eq!(Started::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(Started::from_image_info(7, "null\n").unwrap().entrypoint, Vec::<String>::new());
        assert!(Started::from_json("").is_err());
    }
}
