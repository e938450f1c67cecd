//! Everything the plugin keeps between callbacks of one process, in one place: the plugstack.conf
//! arguments, the options given, and (in slurmstepd) the step's container and the task's confinement.
//! Slurm loads the plugin once per process (srun, sbatch, salloc, slurmstepd, slurmd's job scripts),
//! so one value per process is the whole state.

use std::sync::Mutex;

use mpiexec_docker_core::confinement::Confinement;
use mpiexec_docker_core::container_options::ContainerOptions;
use mpiexec_docker_core::plugstack::PluginArgs;

/// The container of a `--container-image` step on this node, as `user_init` started it.
#[derive(Debug, Clone)]
pub struct StepContainer {
    pub pid: i32,
    /// Where the tasks start, inside.
    pub workdir: String,
    /// The image's environment, applied to each task except the names of `keep`.
    pub image_env: Vec<(String, String)>,
    /// What the container's devices set (CDI specs' variables): applied after the image's.
    pub device_env: Vec<(String, String)>,
    pub keep: Vec<String>,
    pub image: String,
    /// `--container-name`: kept for later steps.
    pub name: Option<String>,
    /// The image's entrypoint, run before each task's program (`--container-entrypoint`).
    pub entrypoint: Vec<String>,
    pub job: u32,
    pub step: u32,
    pub uid: u32,
    pub gid: u32,
    /// Made by a root daemon (Docker): tasks join it in `task_init_privileged`, as root.
    pub rootful: bool,
    /// `--container-remap-root` with such a container: each task maps itself to root.
    pub remap_root: bool,
    /// `--container-save`, on the step's first node: the image file to write when the step ends.
    pub save: Option<String>,
    /// `--container-unshare`: the container's own namespaces, which tasks join too.
    pub unshare: Vec<String>,
    /// The step's `MPIEXEC_DOCKER_FAULT_WAIT` (the fault tests'), for the helper's stop too.
    pub fault_wait: Option<String>,
}

/// The plugin's state in this process.
#[derive(Debug, Default)]
pub struct State {
    /// The plugstack.conf arguments, or the error they gave, as parsed by `init`.
    pub args: Option<Result<PluginArgs, String>>,
    /// The options given on the command line (or passed on by Slurm to slurmstepd).
    pub options: ContainerOptions,
    /// slurmstepd: the step's container; None when the step asked for none. A failure is kept here
    /// and reported by `task_init`, which fails only the job.
    pub step: Option<Result<StepContainer, String>>,
    /// A task's process: the confinement of the step container's process, read as root in
    /// `task_init_privileged`, applied last in `task_init` or by the helper's `join`.
    pub confinement: Option<Result<Confinement, String>>,
    /// slurmstepd: how many of the step's tasks on this node have exited.
    pub exited_tasks: u32,
    /// slurmstepd: the site's registry logins, read as root by `init` (see `stepd::site_login_for`).
    pub site_logins: Option<mpiexec_docker_core::registry_auth::SiteLogins>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Runs `f` on the state (a panic in another callback never poisons it for good).
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// The plugstack.conf arguments as parsed by `init` in this process (defaults when `init` did not run).
pub fn plugin_args() -> Result<PluginArgs, String> {
    with(|s| s.args.clone()).unwrap_or_else(|| Ok(PluginArgs::default()))
}
