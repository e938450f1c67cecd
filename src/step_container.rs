//! A step's container: the one container per node and step that the tasks of a `--container-image`
//! step join (see [`crate::step_join`]), made and removed for the SPANK plugin by the helper's
//! `step-container` actions ([`crate::step_contract`] holds their arguments):
//!
//! - [`start`]: the image fetched (once per node and user), the placeholder container started (the
//!   helper pausing, with the host's network, IPC and PID namespaces, the job's working directory
//!   mounted at the same path), its relay server left beside it; answers [`Started`].
//! - [`stop`]: the container removed when the step ends (a named one is kept for the job).
//! - [`serve`]: the relay of a step container, until its process is gone.
//! - [`join`]: what each task runs first on Slurm 23.11+: enter the container, exec the program.
//!
//! With Docker the helper runs as root for the job's user: what the user names is opened with their
//! rights first (see [`crate::image_cache`], [`crate::mount_source`], [`crate::runtime_dir`]).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::config::{Config, PullPolicy};
use crate::confinement::Confinement;
use crate::engine::run_args;
use crate::engine::{Engine, EngineKind};
use crate::fault_point;
use crate::identity::UserIds;
use crate::image_cache;
use crate::launch::{self, in_container_command, Request};
use crate::process::ProcessHandle;
use crate::runtime_dir::{self, RuntimeDir};
use crate::step_contract::{JoinArgs, ServeArgs, StartArgs, Started, StopArgs};
use crate::step_spare::{self, Spares};

/// Why a step container could not be started, stopped, served or joined: the error of the part that
/// failed, or a sentence of ours.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Image(#[from] crate::image_cache::CacheError),
    #[error(transparent)]
    State(#[from] crate::runtime_dir::RuntimeError),
    #[error(transparent)]
    MountSource(#[from] crate::mount_source::MountSourceError),
    #[error(transparent)]
    Mount(#[from] crate::container::MountError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Launch(#[from] crate::launch::LaunchError),
    #[error(transparent)]
    Join(#[from] crate::step_join::JoinError),
    #[error(transparent)]
    Confinement(#[from] crate::confinement::ConfinementError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Step(String),
}

impl From<String> for StepError {
    fn from(s: String) -> Self {
        StepError::Step(s)
    }
}

impl From<&str> for StepError {
    fn from(s: &str) -> Self {
        StepError::Step(s.to_string())
    }
}

/// Where `container_scope=global` keeps named containers: images of this repository, tagged with
/// the container's name (a store shared by users, Docker's, has one repository per user).
pub const KEPT_REPOSITORY: &str = "localhost/mpiexec-docker-named";

/// The label that tells the job's end which image to commit a kept container to.
pub const KEEP_AS_LABEL: &str = "mpiexec-docker.keep-as";

/// The label with the image's own entrypoint and environment, as [`Engine::image_config`] gives
/// them: an image committed from the container (`--container-save`, `container_scope=global`) has
/// the container's instead (our entrypoint, the job's variables), and is read through this label.
pub const IMAGE_CONFIG_LABEL: &str = crate::engine::IMAGE_CONFIG_LABEL;

/// The image that keeps the named container `name` after its job (see [`KEPT_REPOSITORY`]).
pub fn kept_image(name: &str, scope: Option<u32>) -> String {
    match scope {
        Some(uid) => format!("{KEPT_REPOSITORY}/u{uid}:{name}"),
        None => format!("{KEPT_REPOSITORY}:{name}"),
    }
}

/// The longest the job's end may take to keep a container (see [`keep_if_marked`]).
pub const KEEP_LIMIT: Duration = Duration::from_secs(60);

/// At the job's end (the sweep, before it removes the job's containers): commits a container marked
/// to be kept (`container_scope=global`) as its image, which replaces the one an earlier job kept.
/// Answers the image's name, `None` for a container not marked.
pub fn keep_if_marked(engine: &Engine, container: &str) -> Result<Option<String>, String> {
    let kept = engine.container_label(container, KEEP_AS_LABEL)?;
    // (only a name of ours: the label is ours, and a commit never writes elsewhere)
    if !kept.starts_with(&format!("{KEPT_REPOSITORY}:")) && !kept.starts_with(&format!("{KEPT_REPOSITORY}/")) {
        return Ok(None);
    }
    let before = engine.image_id(&kept).ok();
    engine.commit(KEEP_LIMIT, container, &kept)?;
    // the earlier job's image, no longer named, is of no use
    if let Some(old) = before.filter(|old| engine.image_id(&kept).ok().as_ref() != Some(old)) {
        let _ = engine.remove_images(&[old]);
    }
    Ok(Some(kept))
}

/// The container's name: one per job, step and node; a named one (`--container-name`) per job, name
/// and node.
fn name(job: &str, step: &str, named: Option<&str>) -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    match named {
        Some(n) => format!("mpiexec-docker-{job}-{n}-{host}"),
        None => format!("mpiexec-docker-{job}.{step}-{host}"),
    }
}

/// The longest the placeholder may take to start.
const ENGINE_LIMIT: Duration = crate::engine::QUICK_LIMIT;

/// The caller's config and engine (`engine`, else the config's).
fn setup(engine: Option<EngineKind>) -> Result<(Config, Engine), StepError> {
    let config = Config::load()?;
    let engine = Engine::find(engine.unwrap_or(config.engine))?;
    Ok((config, engine))
}

/// Whose container: the caller's own, or (root only) the job user's named by `--user`.
fn whose(user: &Option<UserIds>) -> Result<UserIds, StepError> {
    let me = user.clone().unwrap_or_else(UserIds::of_caller);
    if me.uid != nix::unistd::getuid().as_raw() && !nix::unistd::geteuid().is_root() {
        return Err("--user: only root may start a container for another user".into());
    }
    Ok(me)
}

/// `step-container stop`.
pub fn stop(a: &StopArgs) -> Result<(), StepError> {
    let (_, engine) = setup(a.engine)?;
    let engine = engine.for_cleanup();
    let me = whose(&a.user)?;
    // a step that took a spare (or left one) removes its container in the background
    let state = runtime_dir::user_base().ok();
    let spares = state.as_ref().and_then(|s| Spares::existing(s, &a.job));
    let claimed = spares.as_ref().filter(|_| a.container_name.is_none()).and_then(|sp| sp.claimed_by(&a.step));
    let name = claimed.clone().unwrap_or_else(|| name(&a.job, &a.step, a.container_name.as_deref()));
    // the container written out first, while it is still there (its tasks have ended)
    let saved = match &a.save {
        Some(target) => {
            crate::container_save::save(&engine, &name, Path::new(target), &me, shared_store_scope(&engine, &me))
        }
        None => Ok(()),
    };
    if a.keep {
        return saved.map_err(|e| StepError::Step(e.to_string()));
    }
    fault_point::reached("stop");
    // a named container stays for the job's later steps; the job's end removes it
    if a.container_name.is_none() {
        if let Some(pid) = a.pid.filter(|p| *p > 0) {
            end_pause(pid, me.uid);
        }
        match (&spares, &claimed) {
            (Some(sp), Some(_)) if a.save.is_none() => remove_in_background(sp, &a.step, &name, engine.kind),
            _ => engine.remove(&[name]),
        }
    }
    // per-run directories whose relay server is gone (root's cannot be removed by the user's server)
    if let Some(state) = &state {
        runtime_dir::sweep(state);
    }
    saved.map_err(|e| StepError::Step(e.to_string()))
}

/// `step-container start`: `helper` is this program (mounted into the container, and the relay server).
pub fn start(a: &StartArgs, helper: &Path) -> Result<Started, StepError> {
    start_with(a, helper, true)
}

/// [`start`]; `for_step`: for a step (which takes a spare when one is ready, see [`step_spare`]),
/// not for a spare maker.
fn start_with(a: &StartArgs, helper: &Path, for_step: bool) -> Result<Started, StepError> {
    let (config, engine) = setup(a.engine)?;
    let name = name(&a.job, &a.step, a.container_name.as_deref());
    let me = whose(&a.user)?;
    // the site's allowed images: a registry reference now, a file once opened (below)
    if let Ok(crate::image_source::ImageSource::Registry(_)) = crate::image_source::ImageSource::parse(&a.image) {
        config.policy.check_image(&a.image, Path::new(&a.workdir), &config.site_file)?;
    }
    // one start at a time per user on this node (a named container is looked up, then made): another
    // user's starts never wait for this one
    let mut clock = Phases::start();
    // a later step of the job: the spare made for it while the step before ran (no lock: a claim is
    // a rename)
    let spares = match for_step && step_spare::eligible(a, &config, &engine) {
        true => runtime_dir::user_base().ok().and_then(|s| Spares::open(&s, &a.job)),
        false => None,
    };
    // (the request's hash only where spares take part: it is not work for every start)
    let key = spares.as_ref().map(|_| step_spare::key(a)).unwrap_or_default();
    if let Some(sp) = &spares {
        if let Some(spare) = sp.claim_or_wait(&key, &a.step, me.uid, 2 * ENGINE_LIMIT) {
            clock.done("spare");
            log::info!("step {}.{}: took the spare container {}", a.job, a.step, spare.name);
            sp.note_claim(&a.step, &spare);
            make_spare_in_background(sp, a);
            return Ok(Started { phases: clock.phases, ..spare.started });
        }
    }
    fault_point::reached("lock");
    let _lock = image_cache::fetch_lock(me.uid)?;
    clock.done("lock");
    // container_scope=global: a named container an earlier job kept on this node, as an image
    let keep_as = match (&a.container_name, a.global_scope) {
        (Some(n), true) => Some(kept_image(n, shared_store_scope(&engine, &me))),
        _ => None,
    };
    let mut kept = None;
    if let Some(n) = &a.container_name {
        use crate::container_options::NameMode;
        let running = running(&engine, &name, me.uid)?;
        if running.is_none() {
            if let Some(k) = &keep_as {
                kept = engine.image_config(k)?.map(|info| (k.clone(), info));
            }
        }
        match (running, a.name_mode, &kept) {
            (Some(_), NameMode::Create, _) => {
                return Err(StepError::Step(format!(
                    "--container-name={n}:create: a container named '{n}' already exists in this job on this node"
                )))
            }
            (None, NameMode::Create, Some(_)) => {
                return Err(StepError::Step(format!(
                    "--container-name={n}:create: a container named '{n}' is kept on this node from an earlier job \
                     (container_scope=global); use another name, or remove it with 'mpiexec_docker images remove-container {n}'"
                )))
            }
            (Some((pid, image)), _, _) => {
                let info =
                    engine.image_config(&image)?.ok_or_else(|| format!("the image of container '{n}' is gone"))?;
                return Ok(Started { phases: clock.phases, ..Started::from_image_info(pid, &info)? });
            }
            (None, NameMode::Exec, None) => {
                return Err(StepError::Step(format!(
                    "--container-name={n}:exec: no container named '{n}' is running in this job on this node"
                )))
            }
            (None, _, None) if a.image.is_empty() => {
                return Err(StepError::Step(format!(
                    "no container named '{n}' in this job on this node: give --container-image too"
                )))
            }
            (None, _, _) => {}
        }
    }
    let state = runtime_dir::user_base()?;
    fault_point::reached("fetch");
    let (local, info) = match kept {
        Some(found) => found,
        None => fetch(a, &config, &engine, &me, &state)?,
    };
    clock.done("fetch");
    // the per-run directory is root's when root acts for the user: nothing in it is theirs to swap,
    // but the relay's directory, where the socket is bound with their rights
    let relay_owner = (nix::unistd::geteuid().is_root() && !me.is_root()).then_some((me.uid, me.gid));
    let runtime = RuntimeDir::create(&state, relay_owner)?;
    // root acting for a user with a root daemon: each source the user names is opened with their
    // rights now, and the engine gets a mount point of root's bound to what was opened (see
    // `mount_source`): nothing the user changes afterwards reaches the daemon
    let for_user = relay_owner.is_some();
    let home = a.mount_home.clone().filter(|h| h != &a.workdir && std::path::Path::new(h).is_dir());
    let (mut workdir_src, mut home_src, mut mounts) = (a.workdir.clone(), home.clone(), resolved_mounts(a)?);
    let mut staging = None;
    if for_user {
        use crate::container::Mount;
        use crate::mount_source::{open_as_user, Staging};
        let acting = me.act_as()?;
        let workdir_fd = open_as_user(std::path::Path::new(&a.workdir))?;
        let home_fd = match &home {
            Some(h) => Some(open_as_user(std::path::Path::new(h))?),
            None => None,
        };
        let mut mount_fds = Vec::new();
        for m in &mounts {
            let Some(parsed) = Mount::parse_existing(m)? else { continue };
            let fd = match parsed.kind {
                crate::container::MountKind::Bind => Some(open_as_user(&parsed.src)?),
                _ => None,
            };
            mount_fds.push((parsed, fd));
        }
        drop(acting);
        let mut st = Staging::new(runtime.path.join(runtime_dir::STAGING))?;
        let path = |p: std::path::PathBuf| p.display().to_string();
        workdir_src = path(st.stage(&workdir_fd, a.workdir.as_ref())?);
        if let (Some(fd), Some(h)) = (&home_fd, &home) {
            home_src = Some(path(st.stage(fd, h.as_ref())?));
        }
        mounts = Vec::new();
        for (m, fd) in mount_fds {
            let mut m = m.clone();
            if let Some(fd) = fd {
                m.src = if m.propagates() { st.stage_shared(&fd, &m.src)? } else { st.stage(&fd, &m.src)? };
            }
            mounts.push(m.to_string());
        }
        staging = Some(st);
    }
    // the relay's socket exists before the container does: no task can start before it is there (made
    // by root in root's directory and given to the user, or made by the user in theirs)
    let socket = runtime.relay().join(crate::relay::SOCKET_NAME);
    let bind = |p: &std::path::Path| {
        crate::relay::server::bind(p).map_err(|e| format!("cannot make the srun/ssh relay's socket: {e}"))
    };
    let (listener, acting) = match relay_owner {
        Some((uid, gid)) => {
            let listener = bind(&socket)?;
            runtime_dir::give_socket(&socket, uid, gid)?;
            // the staged sources are root's: the spec is built with root's ids
            (listener, None)
        }
        None => {
            let acting = me.act_as()?;
            (bind(&socket)?, Some(acting))
        }
    };
    let request = Request {
        image: local.clone(),
        command: in_container_command("pause", &[]),
        host_dir: workdir_src.clone().into(),
        env: Vec::new(),
        mounts,
        interactive: false,
        user: me.clone(),
        // root's helper is not in the step's cgroups: the step's own device rules limit what it passes
        gpus: None,
        devices_list: a
            .step_cgroup
            .as_ref()
            .map(|cg| {
                std::path::Path::new("/sys/fs/cgroup/devices").join(cg.trim_start_matches('/')).join("devices.list")
            })
            .filter(|p| p.is_file()),
    };
    let mut host_env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(gpus) = &a.gpus {
        host_env.retain(|(k, _)| k != "SLURM_STEP_GPUS");
        host_env.push(("SLURM_STEP_GPUS".into(), gpus.clone()));
    }
    let pidfile = runtime.path.join("container.pid");
    let step = StepSpec {
        name: &name,
        sources: Sources { workdir: &workdir_src, home: home_src.as_deref().zip(home.as_deref()) },
        pidfile: (engine.kind == EngineKind::Podman).then(|| pidfile.clone()),
        keep_as: keep_as.as_deref(),
        image_config: &info,
    };
    let spec = step_spec(&engine, &config, a, &request, helper, &runtime, &host_env, &step)?;
    let (device_env, notice) = (spec.device_env.clone(), spec.device_notice.clone());
    drop(acting);
    fault_point::reached("run");
    if engine.kind == EngineKind::Docker {
        // the job's end waits for a restarting daemon to remove what it made for the job here
        if let Some(marker) = docker_job_marker(&a.job) {
            let _ = std::fs::write(marker, "");
        }
    }
    let ran = engine.run_detached(&run_args(engine.kind, &spec), &name);
    // the container has its own copies of its mounts now
    drop(staging);
    ran.map_err(|why| format!("cannot start the container for image '{}': {why}", a.image))?;
    // Podman writes its pid file as the caller; Docker writes none, and with Docker this directory is
    // root's while the container is the user's: then the pid comes from the engine alone
    let written = match engine.kind {
        EngineKind::Podman => std::fs::read_to_string(&pidfile).ok().map(|p| p.trim().to_string()),
        EngineKind::Docker => None,
    };
    let pid = match written.filter(|p| !p.is_empty()) {
        Some(pid) => pid,
        None => engine.container_pid(&name)?,
    };
    let pid = match pid.parse::<i32>() {
        Ok(p) if p > 0 => p,
        _ => {
            engine.remove(&[name]);
            return Err(format!("the container for image '{}' did not stay up", a.image).into());
        }
    };
    // the tasks may join only once the container's process is our placeholder
    if let Err(e) = crate::step_join::wait_for_pause(pid, ENGINE_LIMIT) {
        engine.remove(&[name]);
        return Err(format!("the container for image '{}' did not start its process: {e}", a.image).into());
    }
    // a daemon's container is not our child: its process joins the step's cgroup, so that Slurm's
    // limits, accounting and signals (scancel, time limit) reach it as they reach the tasks. A named
    // container outlives the step (the step's end would kill it there): its process, our idle
    // placeholder, stays where the daemon put it, and the job's end removes it (the tasks that join
    // it are each step's, in the step's cgroup)
    fault_point::reached("cgroup");
    if let Some(cgroup) = a.step_cgroup.as_ref().filter(|_| a.container_name.is_none()) {
        // only our placeholder, running as the job's user, is ever moved
        let moved = crate::step_join::check_pause(pid, me.uid).map_err(StepError::from).and_then(|()| {
            match crate::step_join::move_into_cgroup(pid, Path::new("/sys/fs/cgroup"), cgroup)? {
                0 => Err(format!("the step's cgroup {cgroup} is in no cgroup hierarchy here").into()),
                _ => Ok(()),
            }
        });
        if let Err(e) = moved {
            engine.remove(&[name]);
            return Err(e);
        }
    }
    // the runtime directory (links, relay socket) now belongs to the relay server, which lives as
    // long as the container
    clock.done("start");
    fault_point::reached("relay");
    if let Err(e) = spawn_server(a, helper, &engine, runtime, listener, pid, &me) {
        engine.remove(&[name]);
        return Err(StepError::Step(format!("cannot start the srun/ssh relay of the step: {e}")));
    }
    clock.done("relay");
    let started = Started { phases: clock.phases, device_env, notice, ..Started::from_image_info(pid, &info)? };
    // from the job's second such step on here, a spare is made for the next while this one runs
    if let Some(sp) = spares.as_ref().filter(|sp| sp.seen(&key)) {
        sp.note_claim(&a.step, &step_spare::Spare { started: started.clone(), name: name.clone() });
        make_spare_in_background(sp, a);
    }
    Ok(started)
}

/// `step-container spare`: makes the spare container of request `a` (its step id the spare's own)
/// for the job's next step, and offers it (see [`step_spare`]); `for_step` is the step that asked.
/// With `remove`, only removes that container (a step's, in the background of the step's end).
pub fn make_spare(a: &StartArgs, for_step: &str, remove: Option<&str>, helper: &Path) -> Result<(), StepError> {
    let (_, engine) = setup(a.engine)?;
    let state = runtime_dir::user_base()?;
    let Some(spares) = Spares::existing(&state, &a.job) else { return Ok(()) };
    if let Some(container) = remove {
        engine.for_cleanup().remove(&[container.to_string()]);
        runtime_dir::sweep(&state);
        spares.background_done("remover", for_step);
        return Ok(());
    }
    let key = step_spare::key(a);
    let made = match spares.making(&key) {
        // another maker is at it, or a spare is offered already
        None => Ok(()),
        Some(_making) => start_with(a, helper, false).map(|started| {
            let spare = step_spare::Spare { started, name: name(&a.job, &a.step, None) };
            if !spares.offer(&key, &spare) {
                end_pause(spare.started.pid, nix::unistd::geteuid().as_raw());
                engine.for_cleanup().remove(&[spare.name]);
            }
        }),
    };
    spares.background_done("maker", for_step);
    made
}

/// Starts the maker of the spare for the job's next step like step `a` (see [`step_spare`]).
fn make_spare_in_background(spares: &Spares, a: &StartArgs) {
    let spare = StartArgs { step: format!("spare-{}", a.step), site_login_stdin: false, ..a.clone() };
    in_background(spares, "maker", &a.step, spare_argv(&spare, &a.step, None));
}

/// `step-container spare` with `request`'s words, for step `step` (only removing `remove`, if given).
fn spare_argv(request: &StartArgs, step: &str, remove: Option<&str>) -> Vec<String> {
    let mut argv = request.to_argv();
    argv[1] = "spare".into();
    argv.push(format!("--for-step={step}"));
    argv.extend(remove.map(|c| format!("--remove={c}")));
    argv
}

/// At the end of a step that took (or left) a spare: its placeholder is ended now, and its container
/// removed in the background, so that the step's end (and the job's next step) waits for no engine.
fn remove_in_background(spares: &Spares, step: &str, container: &str, engine: EngineKind) {
    spares.release(step);
    let request = StartArgs {
        job: spares.job().to_string(),
        step: step.to_string(),
        engine: Some(engine),
        ..StartArgs::default()
    };
    in_background(spares, "remover", step, spare_argv(&request, step, Some(container)));
}

/// Runs the helper with `argv` as a process of its own session (it outlives this call; the job's end
/// ends it with its engine calls), noting its pid as `what` of `step`.
fn in_background(spares: &Spares, what: &str, step: &str, argv: Vec<String>) {
    use std::os::unix::process::CommandExt;
    let Ok(helper) = std::env::current_exe() else { return };
    let mut cmd = std::process::Command::new(helper);
    cmd.args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => spares.note_background(what, step, child.id()),
        Err(e) => log::warn!("cannot start the spare container's {what}: {e}"),
    }
}

/// The step's image in the engine's store, fetched if need be (once per node and user): its local
/// name and its configuration (entrypoint and environment, see [`Started::from_image_info`]).
fn fetch(
    a: &StartArgs,
    config: &Config,
    engine: &Engine,
    me: &UserIds,
    state: &Path,
) -> Result<(String, String), StepError> {
    // what the user names is opened and read with the user's rights (an image file, the directories
    // mounted, their registry logins); root then uses only what was opened there
    let base = std::path::Path::new(&a.workdir);
    // a store shared by users (Docker's, driven by root for them): the user's own names only
    let scope = shared_store_scope(engine, me);
    let home = nix::unistd::User::from_uid(me.uid.into()).ok().flatten().map(|u| u.dir);
    let acting = me.act_as()?;
    let named = image_cache::name_image(&a.image, base)?;
    config.policy.check_named(&named, &a.image, &config.site_file)?;
    for dir in std::iter::once(&a.workdir).chain(&a.mount_home) {
        crate::container::Mount::parse_existing(dir)?;
    }
    // (root pulls for the user: their logins, read with their rights; the user's own engine reads
    // theirs itself, and is given the site's only for a registry they have no login for)
    let logins = match &home {
        Some(home) if scope.is_some() || a.site_login_stdin => {
            Some(crate::registry_auth::Logins::read_user(home, me.uid))
        }
        _ => None,
    };
    drop(acting);
    let mut image = image_cache::resolve(named, scope, Some(state))?;
    // the common case first: the image is here and may be used as it is (one engine call, which also
    // gives its entrypoint and environment)
    let mut cached = None;
    if matches!(config.pull, PullPolicy::Missing | PullPolicy::Never) {
        for name in image.cached_names() {
            if let Some(info) = engine.image_config(&name)? {
                cached = Some((name, info));
                break;
            }
        }
    }
    let found = match cached {
        Some(found) => found,
        None => {
            // the user's registry logins are written for the engine only when it fetches
            let registry = crate::registry_auth::registry_of(&image.local);
            let credentials = match logins {
                Some(logins) if scope.is_none() => match site_login_given(a.site_login_stdin) {
                    Some(site) if !logins.know(&registry) => Some(image_cache::Credentials::write(state, &site)?),
                    _ => None,
                },
                Some(mut logins) => {
                    if let Some(site) = &config.registry_auth {
                        logins.add_site(site);
                    }
                    Some(image_cache::Credentials::write(state, &logins.for_registry(&registry, me))?)
                }
                None => None,
            };
            // one fetch per job: the job's first node hands the image on to the others (a one-node
            // job has no other node to hand it to). The directory is the user's: made and checked
            // with their rights, also when root acts for them
            let job = match &config.job_fetch_dir {
                Some(dir) if a.job_nodes != Some(1) => {
                    let acting = me.act_as()?;
                    let opened = crate::job_fetch::JobFetch::open(dir, me.uid, &a.job);
                    drop(acting);
                    // noted for the job's end, which then finds it whatever the setting says by
                    // then: in the user's own state, or for root's helper in root's, naming them
                    match (&opened, scope) {
                        (Ok(_), None) => crate::job_fetch::JobFetch::note(state, dir, &a.job),
                        (Ok(_), Some(uid)) => crate::job_fetch::JobFetch::note_for(state, dir, &a.job, uid),
                        (Err(_), _) => {}
                    }
                    opened.map_err(|e| log::warn!("{e}; this node pulls for itself")).ok()
                }
                _ => None,
            };
            let local = image_cache::ensure(
                engine,
                &mut image,
                config.pull,
                credentials.as_ref().map(|c| c.dir()),
                scope.map(|_| me),
                job.as_ref(),
            )?;
            drop(credentials);
            if let Some(max) = config.cache_max_size {
                if let Ok(_store) = image_cache::store_lock() {
                    for gone in image_cache::enforce_cap(engine, max, &local).unwrap_or_default() {
                        log::info!("cache over {max} bytes: removed {gone}");
                    }
                }
            }
            // the image's entrypoint and environment (for the tasks, which inherit the job's
            // environment, not the image's)
            let info = engine
                .image_config(&local)?
                .ok_or_else(|| format!("image '{}' is missing after its fetch", a.image))?;
            (local, info)
        }
    };
    Ok(found)
}

/// A file of the caller's state directory that says the node's Docker daemon was given a container
/// of job `job`: the job's end (the sweep) then waits a while for a daemon that does not answer (a
/// restart) rather than take its silence for "nothing of ours there".
pub fn docker_job_marker(job: &str) -> Option<std::path::PathBuf> {
    crate::step_contract::is_job_id(job)
        .then(|| crate::runtime_dir::user_base().ok().map(|b| b.join(format!("docker-job-{job}"))))?
}

/// The site's login the plugin gave on standard input (`--site-login-stdin`), if it parses.
fn site_login_given(given: bool) -> Option<serde_json::Value> {
    use std::io::Read;
    if !given {
        return None;
    }
    let mut text = String::new();
    std::io::stdin().take(crate::registry_auth::SITE_LOGIN_MAX).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The time each phase of a start took.
struct Phases {
    last: std::time::Instant,
    phases: Vec<(String, f64)>,
}

impl Phases {
    fn start() -> Phases {
        Phases { last: std::time::Instant::now(), phases: Vec::new() }
    }

    fn done(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        self.phases.push((phase.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// Where a step container's user-named sources are bound from (root's staging mount points with
/// Docker, the paths themselves otherwise).
struct Sources<'a> {
    workdir: &'a str,
    /// (source, path in the container) of the user's home, with `--container-mount-home`.
    home: Option<(&'a str, &'a str)>,
}

/// What makes a container a step's: its name, where its sources come from, its pid file.
struct StepSpec<'a> {
    name: &'a str,
    sources: Sources<'a>,
    /// Podman writes the container's pid here: one engine call less than asking afterwards.
    pidfile: Option<std::path::PathBuf>,
    /// The image the job's end commits the container to (`container_scope=global`).
    keep_as: Option<&'a str>,
    /// The image's own entrypoint and environment (see [`IMAGE_CONFIG_LABEL`]).
    image_config: &'a str,
}

/// The step container's spec: what every container of ours has ([`launch::base_spec`]), detached and
/// kept (the step's end removes it), named and labelled for its job and step, with the job's working
/// directory at its own path (and the home directory if asked), the node's `/tmp` and Slurm spool
/// (PMIx server files) for direct MPI launch, and the companion options.
#[allow(clippy::too_many_arguments)]
fn step_spec(
    engine: &Engine,
    config: &Config,
    a: &StartArgs,
    request: &Request,
    helper: &Path,
    runtime: &RuntimeDir,
    host_env: &[(String, String)],
    step: &StepSpec,
) -> Result<crate::container::ContainerSpec, StepError> {
    let mut spec = launch::base_spec(engine, config, request, helper, runtime, host_env)?;
    spec.name = Some(step.name.to_string());
    spec.labels.push((format!("{}.job", launch::LABEL), a.job.clone()));
    spec.labels.push((format!("{}.step", launch::LABEL), a.step.clone()));
    if let Some(kept) = step.keep_as {
        spec.labels.push((KEEP_AS_LABEL.into(), kept.to_string()));
    }
    spec.labels.push((IMAGE_CONFIG_LABEL.into(), step.image_config.to_string()));
    spec.remove = false;
    spec.detach = true;
    spec.interactive = false;
    spec.pidfile = step.pidfile.clone();
    spec.mount(step.sources.workdir, &a.workdir, false);
    if let Some((src, home)) = step.sources.home {
        spec.mount(src, home, false);
    }
    spec.workdir = Some(a.container_workdir.clone().unwrap_or_else(|| a.workdir.clone()).into());
    spec.read_only = a.readonly;
    spec.unshare = a.unshare.clone();
    if a.remap_root && engine.kind == EngineKind::Podman {
        // root inside; with rootless Podman that root is the caller on the host, no more. (With
        // Docker the container stays the user's: each task maps itself to root in a user namespace
        // of its own, see the plugin.)
        spec.user = crate::container::UserMode::Default;
    }
    for dir in ["/tmp", "/var/spool/slurmd", "/var/spool/slurm"] {
        if Path::new(dir).is_dir() && dir != a.workdir {
            spec.mount(dir, dir, false);
        }
    }
    // `umount:DST` may take away the site's mounts and ours above (`/tmp`), not what the tasks need
    use crate::layout::{IN_BIN, IN_HELPER, IN_RELAY_DIR};
    let ours = [Path::new(IN_HELPER), Path::new(IN_BIN), Path::new(IN_RELAY_DIR), Path::new(&a.workdir)];
    spec.apply_unmounts(&ours)?;
    Ok(spec)
}

/// Ends the container's main process (our pause of user `uid`, checked by its owner and command line)
/// and waits briefly for it: removing a container that has already stopped is quicker than having the
/// engine stop it.
fn end_pause(pid: i32, uid: u32) {
    let Some(process) = ProcessHandle::open(pid) else { return };
    // checked through the pidfd's process: the pid cannot have been reused since it was opened
    if crate::step_join::check_pause(pid, uid).is_ok() && process.alive() {
        process.kill(nix::sys::signal::Signal::SIGKILL);
        process.wait(Some(Duration::from_secs(1)));
    }
}

/// The user whose names images get, when the engine's store is shared by users (Docker's, driven by
/// root for them); `None` for a store of the user's own.
fn shared_store_scope(engine: &Engine, me: &UserIds) -> Option<u32> {
    (engine.kind == EngineKind::Docker && !me.is_root()).then_some(me.uid)
}

/// The step's mounts with relative sources made absolute against the job's working directory (what
/// `./data` means to the user), in the syntax the contract carries.
fn resolved_mounts(a: &StartArgs) -> Result<Vec<String>, StepError> {
    let base = Path::new(&a.workdir);
    a.mounts.iter().map(|m| Ok(crate::container::Mount::parse_in(m, base)?.to_string())).collect()
}

/// The process id and image of a running container called `name`, if there is one of the user's.
fn running(engine: &Engine, name: &str, uid: u32) -> Result<Option<(i32, String)>, StepError> {
    match engine.container_state(name)? {
        None => Ok(None),
        // a shared store (Docker) holds other users' containers too: only the user's own is theirs
        Some(c) if c.owner != Some(uid) => Err(format!("container '{name}' belongs to another user").into()),
        Some(c) if c.running => Ok(Some((c.pid, c.image))),
        Some(_) => {
            // there but stopped: of no use to a step
            engine.remove(&[name.to_string()]);
            Ok(None)
        }
    }
}

/// Starts `step-container serve` in the background (its own session, no standard streams), handing it
/// the runtime directory, its owner lock and the relay's bound socket.
fn spawn_server(
    a: &StartArgs,
    helper: &Path,
    engine: &Engine,
    runtime: RuntimeDir,
    listener: std::os::unix::net::UnixListener,
    pid: i32,
    user: &UserIds,
) -> Result<(), StepError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let exe = helper.to_path_buf();
    let dir = runtime.path.display().to_string();
    let lock = runtime.hand_over()?;
    let fd = lock.as_raw_fd();
    let listen_fd = listener.as_raw_fd();
    let serve = ServeArgs {
        job: a.job.clone(),
        step: a.step.clone(),
        image: a.image.clone(),
        workdir: a.workdir.clone(),
        engine: Some(engine.kind),
        mounts: resolved_mounts(a)?,
        dir,
        pid,
        lock_fd: fd,
        listen_fd,
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(serve.to_argv());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // the relay runs srun for the user: as the user (the helper may be root here, for Docker)
    if nix::unistd::getuid().as_raw() != user.uid {
        user.become_in_child(&mut cmd);
        if let Ok(Some(pw)) = nix::unistd::User::from_uid(user.uid.into()) {
            cmd.env("HOME", &pw.dir).env("USER", &pw.name).env("LOGNAME", &pw.name);
        }
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // a long-lived process: it keeps only what it is given
            crate::process::no_inherited_fds();
            for inherited in [fd, listen_fd] {
                if libc::fcntl(inherited, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()?;
    drop(listener);
    Ok(())
}

/// `step-container serve`: the relay of a step container, until the container's process is gone.
/// `srun` in the container runs the host's srun unchanged (the plugin puts the new step into the
/// image: the job's `--container-image` reaches it through Slurm's own `SLURM_SPANK__…` variables);
/// `ssh` runs its remote command through `run_in_docker` with the same image.
pub fn serve(a: &ServeArgs, helper: &Path) -> Result<(), StepError> {
    use crate::environment::EnvFilter;
    use crate::relay::rewrite::run_in_docker_prefix;
    use crate::relay::server::{self, RelayConfig};
    use std::os::fd::FromRawFd;
    let (config, engine) = setup(a.engine)?;
    if a.lock_fd < 0 || a.listen_fd < 0 || a.pid <= 0 {
        return Err("--pid, --lock-fd and --listen-fd are required".into());
    }
    // SAFETY: the descriptor was opened for us by `step-container start` and is ours alone.
    let owner = unsafe { std::os::fd::OwnedFd::from_raw_fd(a.lock_fd) };
    let runtime = RuntimeDir::adopt(a.dir.clone().into(), owner);
    let container = ProcessHandle::open(a.pid).ok_or_else(|| format!("the container's process {} is gone", a.pid))?;
    let exe = helper.to_path_buf();
    // remote programs start elsewhere: a relative image file path must not depend on where
    let image = crate::image_source::with_absolute_path(&a.image, std::path::Path::new(&a.workdir));
    let wrap = run_in_docker_prefix(&exe, engine.kind, &[], &a.mounts, &image);
    let relay = RelayConfig {
        allowed: config.relay_commands.clone(),
        wrap,
        wrap_srun: false,
        host_dir: a.workdir.clone().into(),
        same_paths: true,
        host_path: std::env::var_os("PATH").unwrap_or_default(),
        env_filter: EnvFilter::new(config.env.clone()),
    };
    // SAFETY: the bound socket was opened for us by `step-container start` and is ours alone.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(a.listen_fd) };
    server::serve_on(listener, relay)?;
    container.wait(None);
    drop(runtime);
    Ok(())
}

/// `step-container join`: enters the step container of process `--pid` and execs the task's program
/// there (the task's argv on Slurm versions with `spank_prepend_task_argv`).
pub fn join(a: &JoinArgs) -> Result<(), StepError> {
    use std::os::unix::process::CommandExt;
    let workdir = a.workdir.as_deref().filter(|w| !w.is_empty()).unwrap_or("/");
    // the confinement word is checked before anything is joined
    let confinement = match &a.confinement {
        Some(word) => Some(Confinement::from_word(word)?),
        None => None,
    };
    crate::step_join::enter(a.pid, std::path::Path::new(workdir), &a.unshare)?;
    if let Some(c) = confinement {
        c.apply()?;
    }
    let err = std::process::Command::new(&a.command[0]).args(&a.command[1..]).exec();
    // as a shell would: 127 for a program that is not there, 126 for one that cannot run
    crate::say_error!("cannot run {} in the container: {err}", a.command[0]);
    std::process::exit(if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
}
