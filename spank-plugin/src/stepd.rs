//! slurmstepd (remote context): the tasks of a step with `--container-image` run in the image.
//!
//! How (callbacks in the order Slurm makes them):
//! - `init` (as root): registers the options (Slurm hands their values over next), reads the
//!   plugstack.conf arguments (an error is kept for `task_init`: failing `init` here would fail every
//!   step of the node) and makes the job user's private state directory.
//! - `user_init` (once per node per step, as the job's user, before any task forks) starts one
//!   placeholder container through the helper (`mpiexec_docker step-container start`) and keeps its
//!   process id. Failures are kept, not returned: a failing `user_init` of a batch step drains the node.
//! - `task_init` (in each task, as the user, just before exec) gives the task the image's environment
//!   and our links first on `PATH`, then enters the container ([`step_join`]): on Slurm 23.11 and
//!   later by prepending `mpiexec_docker step-container join …` to the task's argv
//!   (`spank_prepend_task_argv`, looked up at run time), before that (22.05) by joining the container's
//!   user and mount namespaces right here, after which Slurm execs the program from the image's file
//!   system. Either way the task stays slurmstepd's child: the step's cgroup, signals, exit status,
//!   limits and accounting are Slurm's own. A kept failure fails the task here, with its message, and
//!   only the job.
//! - `step-container start` also leaves a relay server for the container (srun/ssh inside the step
//!   run the host's, see `mpiexec_docker_core::relay`); it ends with the container.
//! - `exit` (once per node per step) removes the container; the job epilog sweeps anything left.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;

use mpiexec_docker_core::confinement::Confinement;
use mpiexec_docker_core::container_options::ContainerOptions;
use mpiexec_docker_core::engine::EngineKind;
use mpiexec_docker_core::fault_point;
use mpiexec_docker_core::plugstack::PluginArgs;
use mpiexec_docker_core::step_contract::{StartArgs, Started, StopArgs};
use mpiexec_docker_core::step_join;

use crate::ffi::spank_item;
use crate::handle::Spank;
use crate::options::ENTRYPOINT_NEEDS;
use crate::run_as::{helper_as, helper_as_root, user_ids};
use crate::state::{self, plugin_args, StepContainer};

/// Slurm's step id of the extern step (no tasks to wrap).
const EXTERN_STEP: u32 = 0xfffffffc;
/// Slurm's step id of a batch script (`SLURM_BATCH_SCRIPT`).
const BATCH_STEP: u32 = 0xfffffffb;
/// Slurm's step id of salloc's interactive step (`SLURM_INTERACTIVE_STEP`).
const INTERACTIVE_STEP: u32 = 0xfffffffa;

pub fn init(spank: &Spank, args: &[String]) -> anyhow::Result<()> {
    crate::options::register_all(spank).context("cannot register options")?;
    let parsed = PluginArgs::parse(args).map_err(|e| e.to_string());
    if let Err(msg) = &parsed {
        log::error!("{msg}");
    }
    let site_logins = parsed.as_ref().ok().filter(|_| nix::unistd::geteuid().is_root()).and_then(read_site_logins);
    state::with(|s| {
        s.args = Some(parsed);
        s.site_logins = site_logins;
    });
    if nix::unistd::geteuid().is_root() {
        // the job user's private state directory (locks, per-run directories), made by root so that
        // no other user can have made it first (see mpiexec_docker_core::runtime_dir)
        if let (Ok(uid), Ok(gid)) = (spank.uid(), spank.gid()) {
            if let Err(e) = mpiexec_docker_core::runtime_dir::prepare_user_dir(uid, gid) {
                log::warn!("{e}");
            }
        }
    }
    Ok(())
}

pub fn user_init(spank: &Spank, _args: &[String]) -> anyhow::Result<()> {
    // `sbatch_support=0`: batch scripts and salloc's shell stay on the host (pyxis's meaning), even
    // where the job's environment names an image
    let step = spank.get_u32(spank_item::S_JOB_STEPID).ok();
    if matches!(step, Some(BATCH_STEP | INTERACTIVE_STEP)) && !plugin_args().map(|a| a.sbatch_support).unwrap_or(true) {
        return Ok(());
    }
    // options not given on the command line take their defaults from the job's environment
    let given = state::with(|s| s.options.clone());
    let result = match given.with_env_defaults(|k| spank.getenv(k)).map_err(|e| e.to_string()).and_then(|mut opts| {
        site_policy(spank, &mut opts)?;
        Ok(opts)
    }) {
        Ok(opts) => match (opts.image.clone(), &opts.name) {
            (None, None) => return Ok(()),
            (image, _) => start(spank, &image.unwrap_or_default(), &opts).map_err(|e| format!("{e:#}")),
        },
        Err(e) => Err(e),
    };
    // a failure is reported by task_init, once per task, and fails only the job
    state::with(|s| s.step = Some(result));
    Ok(())
}

/// An unnamed file in memory holding `data`, read from its start.
fn memory_file(data: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let fd = nix::sys::memfd::memfd_create(c"mpiexec-docker-input", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    file.rewind()?;
    Ok(file)
}

/// The site's registry login for the image's registry (from what `init` read as root), when the
/// image is a registry reference and the site has one.
fn site_login_for(image: &str) -> Option<Vec<u8>> {
    use mpiexec_docker_core::image_source::ImageSource;
    let ImageSource::Registry(reference) = ImageSource::parse(image).ok()? else { return None };
    let registry = mpiexec_docker_core::registry_auth::registry_of(&reference);
    let login = state::with(|s| s.site_logins.as_ref().and_then(|l| l.login_for(&registry)))?;
    let login = login.to_string().into_bytes();
    (login.len() as u64 <= mpiexec_docker_core::registry_auth::SITE_LOGIN_MAX).then_some(login)
}

/// The site's registry logins, where they are for pulls the user's own engine makes (rootless
/// Podman): read while slurmstepd is root (`user_init`, where they are used, runs with the user's
/// ids, and the file is root's alone).
fn read_site_logins(args: &PluginArgs) -> Option<mpiexec_docker_core::registry_auth::SiteLogins> {
    if args.engine != EngineKind::Podman {
        return None;
    }
    let config = mpiexec_docker_core::config::Config::load_from(std::slice::from_ref(&args.config)).ok()?;
    Some(mpiexec_docker_core::registry_auth::SiteLogins::read(&config.registry_auth?))
}

/// The site's policy on the step's image (its configuration file, plugstack `config=`): the image
/// every task of the job's partition runs in, or the one implied when the step names none.
fn site_policy(spank: &Spank, opts: &mut ContainerOptions) -> Result<(), String> {
    if spank.get_u32(spank_item::S_JOB_STEPID).ok() == Some(EXTERN_STEP) {
        return Ok(());
    }
    let args = plugin_args()?;
    let config = mpiexec_docker_core::config::Config::load_from(std::slice::from_ref(&args.config))
        .map_err(|e| e.to_string())?;
    let partition = spank.getenv("SLURM_JOB_PARTITION");
    opts.image = config
        .policy
        .step_image(opts.image.as_deref(), partition.as_deref(), &args.config)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn start(spank: &Spank, image: &str, opts: &ContainerOptions) -> anyhow::Result<StepContainer> {
    let args = plugin_args().map_err(anyhow::Error::msg)?;
    let job = spank.get_u32(spank_item::S_JOB_ID).context("cannot read the job id")?;
    let step = spank.get_u32(spank_item::S_JOB_STEPID).context("cannot read the step id")?;
    if step == EXTERN_STEP {
        anyhow::bail!("the extern step has no tasks");
    }
    let uid = spank.uid()?;
    let gid = spank.gid()?;
    let user = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("no passwd entry for uid {uid}"))?;
    let workdir = spank.getenv("PWD").filter(|d| d.starts_with('/')).unwrap_or_else(|| user.dir.display().to_string());
    // Docker's daemon is root's: the helper starts the container as root, for the user
    let rootful = args.engine == EngineKind::Docker;
    // every refusal before anything is started
    if opts.entrypoint == Some(true) {
        if rootful {
            anyhow::bail!("--container-entrypoint is not available with Docker here; drop the option");
        }
        if crate::handle::prepend_fn().is_none() {
            anyhow::bail!(ENTRYPOINT_NEEDS);
        }
    }
    let mut cmd = match rootful {
        true => helper_as_root(&args.helper),
        false => helper_as(&args.helper, &user, gid),
    };
    let step_cgroup = match rootful {
        true => match std::fs::read_to_string("/proc/self/cgroup").ok().as_deref().and_then(step_join::step_cgroup) {
            Some(cgroup) => Some(cgroup),
            None => anyhow::bail!("cannot find this step's cgroup (is proctrack/cgroup configured?)"),
        },
        false => None,
    };
    // rootless Podman pulls as the user: the site's login for the image's registry alone (the site's
    // file is root's to read) goes to the helper on its standard input
    let site_login = if rootful { None } else { site_login_for(image) };
    let request = StartArgs {
        job: job.to_string(),
        step: step.to_string(),
        image: image.to_string(),
        workdir: workdir.clone(),
        engine: Some(args.engine),
        mounts: args.mounts.iter().chain(opts.mounts.iter().flatten()).cloned().collect(),
        container_workdir: opts.workdir.clone(),
        mount_home: (opts.mount_home == Some(true)).then(|| user.dir.display().to_string()),
        remap_root: opts.remap_root == Some(true),
        readonly: opts.readonly == Some(true),
        // the step's GPUs on this node, as Slurm's indexes (none when the step has none)
        gpus: Some(["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"].iter().find_map(|v| spank.getenv(v)).unwrap_or_default()),
        container_name: opts.name.clone(),
        name_mode: opts.name_mode,
        global_scope: args.global_scope,
        site_login_stdin: site_login.is_some(),
        unshare: opts.unshare.clone().unwrap_or_default(),
        user: rootful.then(|| user_ids(&user, gid)),
        step_cgroup,
        spares: true,
        // (the user's own variable: a wrong value costs only their own job a fetch)
        job_nodes: spank.getenv("SLURM_JOB_NUM_NODES").and_then(|n| n.parse().ok()),
    };
    cmd.args(request.to_argv());
    // a long fetch prints progress lines: they go to the user as they come
    if let Some(every) = spank.getenv("MPIEXEC_DOCKER_PROGRESS_INTERVAL") {
        cmd.env("MPIEXEC_DOCKER_PROGRESS_INTERVAL", every);
    }
    // where the fault tests stop the helper (see mpiexec_docker_core::fault_point)
    let fault_wait = spank.getenv(fault_point::FAULT_WAIT_VAR);
    if let Some(phase) = &fault_wait {
        cmd.env(fault_point::FAULT_WAIT_VAR, phase);
    }
    let out =
        output_forwarding_progress(cmd, site_login).with_context(|| format!("cannot run {}", args.helper.display()))?;
    if !out.status.success() {
        anyhow::bail!("--container-image={image}: {}", helper_said(&out));
    }
    let started = Started::from_json(&String::from_utf8_lossy(&out.stdout)).map_err(anyhow::Error::msg)?;
    let (pid, image_env, device_env) = (started.pid, started.env, started.device_env);
    // a note about the step's container goes to the user once per step (from its first node), and to
    // each node's log
    if let Some(notice) = &started.notice {
        log::warn!("step {job}.{step}: {notice}");
        if spank.get_u32(spank_item::S_JOB_NODEID).ok() == Some(0) {
            crate::slurm_log::to_user(&format!("mpiexec_docker: note: {notice}"));
        }
    }
    // the user's word, else the site's default (plugstack execute_entrypoint=), which never fails a
    // step where the entrypoint cannot run (Docker here, Slurm before 23.11)
    let entrypoint = match opts.entrypoint {
        Some(true) => started.entrypoint,
        None if args.execute_entrypoint && !started.entrypoint.is_empty() => {
            if rootful || crate::handle::prepend_fn().is_none() {
                log::warn!("step {job}.{step}: the site's execute_entrypoint=1 cannot apply here; tasks start without the entrypoint");
                Vec::new()
            } else {
                started.entrypoint
            }
        }
        _ => Vec::new(),
    };
    let entrypoint = mpiexec_docker_core::in_container::entrypoint_words(
        mpiexec_docker_core::launch::IN_HELPER,
        &entrypoint,
        opts.entrypoint_log == Some(true),
    );
    let workdir = opts.workdir.clone().unwrap_or(workdir);
    let keep = opts.env.clone().unwrap_or_default();
    let how = match crate::handle::prepend_fn() {
        _ if rootful => "in task_init_privileged (the container is the root daemon's)",
        Some(_) => "through spank_prepend_task_argv",
        None => "in task_init (this Slurm has no spank_prepend_task_argv)",
    };
    log::info!("step {job}.{step}: tasks run in container of {image} (pid {pid}); they enter it {how}");
    // at Slurm's verbose level (`srun -v` shows it): where a step's start time went on this node
    let phases: Vec<String> = started.phases.iter().map(|(p, s)| format!("{p} {s:.3} s")).collect();
    log::info!("step {job}.{step}: container start on this node: {}", phases.join(", "));
    // and on the user's terminal when their srun is verbose (srun gives the step its level)
    let verbose = spank.getenv("SRUN_DEBUG").and_then(|v| v.trim().parse::<u32>().ok()).is_some_and(|v| v > 3);
    if verbose {
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        crate::slurm_log::to_user(&format!(
            "mpiexec_docker: {host}: step {job}.{step}: container start: {}",
            phases.join(", ")
        ));
    }
    let (name, image) = (opts.name.clone(), image.to_string());
    // saved by the step's first node only: the others hold the same image's containers
    let save = match spank.get_u32(spank_item::S_JOB_NODEID).ok() {
        Some(0) => opts
            .save
            .as_deref()
            .map(|s| mpiexec_docker_core::container_save::target_in(s, Path::new(&workdir)).display().to_string()),
        _ => None,
    };
    let remap_root = rootful && opts.remap_root == Some(true);
    Ok(StepContainer {
        pid,
        workdir,
        image_env,
        device_env,
        keep,
        image,
        name,
        entrypoint,
        job,
        step,
        uid,
        gid,
        rootful,
        remap_root,
        save,
        unshare: opts.unshare.clone().unwrap_or_default(),
        fault_wait,
    })
}

/// In each task, as root before Slurm drops to the user: the container's confinement is read (root
/// may copy a process's seccomp filter), and a container made by a root daemon is joined here (see
/// [`step_join::enter_privileged`]) with the container's bounding set.
pub fn task_init_privileged(_spank: &Spank, _args: &[String]) -> anyhow::Result<()> {
    let step = state::with(|s| s.step.clone());
    let Some(Ok(c)) = step else { return Ok(()) };
    // what is kept here is reported by task_init, which fails only the job
    let confinement = step_join::check_pause(c.pid, c.uid)
        .map_err(|e| e.to_string())
        .and_then(|()| Confinement::of_process(c.pid).map_err(|e| e.to_string()));
    if c.rootful {
        step_join::enter_privileged(c.pid, &c.unshare)?;
        // root can drop from the bounding set; the user in task_init cannot
        if let Ok(conf) = &confinement {
            conf.drop_bounding()?;
        }
    }
    state::with(|s| s.confinement = Some(confinement));
    Ok(())
}

/// The longest the plugin waits for `step-container start`: the helper's own bounds (its fetch lock,
/// one fetch, a few quick engine calls) and a margin.
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(
    2 * mpiexec_docker_core::image_cache::FETCH_LIMIT.as_secs()
        + 10 * mpiexec_docker_core::image_cache::ENGINE_LIMIT.as_secs(),
);

/// The most of the helper's output the plugin keeps (slurmstepd's memory is spared by the OOM killer:
/// nothing a job can make the helper print may grow it without bound).
const KEEP_STDOUT: u64 = 1 << 20;
const KEEP_STDERR: usize = 64 << 10;
/// At most one progress line a second reaches the user's terminal and slurmd's log, whatever interval
/// the job's environment asks the helper for; each at most this long.
const FORWARD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const FORWARD_LINE: usize = 512;

/// Runs the helper, passing its progress lines (`mpiexec_docker: pulling …`) to the user's terminal
/// while it runs (rate-limited); returns its output, bounded (the first 1 MiB of stdout, the last
/// 64 KiB of stderr).
fn output_forwarding_progress(
    mut cmd: std::process::Command,
    input: Option<Vec<u8>>,
) -> std::io::Result<std::process::Output> {
    use std::io::{BufRead, Read};
    // given in a memory file, never a pipe: a write to a pipe whose reader is gone would raise
    // SIGPIPE in slurmstepd
    if let Some(input) = input {
        cmd.stdin(Stdio::from(memory_file(&input)?));
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // slurmstepd never waits without a deadline: the helper is killed once it is past its own
    // (every wait and engine call of the helper is bounded; see `START_LIMIT`)
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let pid = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(START_LIMIT) {
            // SAFETY: kill(2) of our own child, not yet reaped (we reap it only after this thread ends).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = (&mut stdout).take(KEEP_STDOUT).read_to_end(&mut v);
        // the rest is drained, so that the helper never blocks on a full pipe
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        v
    });
    let mut tail = std::collections::VecDeque::<String>::new();
    let mut kept = 0;
    let mut last_forward: Option<std::time::Instant> = None;
    for line in std::io::BufReader::new(child.stderr.take().expect("piped")).lines().map_while(Result::ok) {
        let progress = !line.starts_with("mpiexec_docker: error:") && line.starts_with("mpiexec_docker: ");
        if progress && last_forward.is_none_or(|t| t.elapsed() >= FORWARD_EVERY) {
            let cut = line.char_indices().nth(FORWARD_LINE).map_or(line.len(), |(i, _)| i);
            crate::slurm_log::to_user(&line[..cut]);
            last_forward = Some(std::time::Instant::now());
        }
        kept += line.len() + 1;
        tail.push_back(line);
        while kept > KEEP_STDERR && tail.len() > 1 {
            kept -= tail.pop_front().map_or(0, |l| l.len() + 1);
        }
    }
    let status = child.wait();
    drop(done);
    let _ = watchdog.join();
    let status = status?;
    let stderr = tail.into_iter().flat_map(|l| (l + "\n").into_bytes()).collect();
    Ok(std::process::Output { status, stdout: reader.join().unwrap_or_default(), stderr })
}

pub fn task_init(spank: &Spank, _args: &[String]) -> anyhow::Result<()> {
    let step = state::with(|s| s.step.clone());
    match step {
        None => Ok(()),
        Some(Err(e)) => Err(anyhow::Error::msg(e)),
        Some(Ok(c)) => {
            let confinement = state::with(|s| s.confinement.take())
                .unwrap_or_else(|| Err("the task's confinement was not read (no task_init_privileged)".into()))
                .map_err(anyhow::Error::msg)?;
            if spank.get_u32(spank_item::S_TASK_GLOBAL_ID) == Ok(0) {
                log::info!("step {}.{}: tasks confined like their container: {confinement}", c.job, c.step);
            }
            let mut env = task_env(&c, spank.getenv("PATH"));
            // enroot's PyTorch hook, as pyxis users have it: images that set PYTORCH_VERSION
            env.extend(mpiexec_docker_core::pytorch::task_vars(&c.image_env, |k| spank.getenv(k)));
            for (k, v) in env {
                spank.setenv(&k, &v).with_context(|| format!("cannot set {k} for the task"))?;
            }
            if c.rootful {
                // joined in task_init_privileged: the working directory, and root inside if asked
                std::env::set_current_dir(&c.workdir)
                    .with_context(|| format!("working directory {} is not in the container", c.workdir))?;
                if c.remap_root {
                    step_join::map_to_root(c.uid, c.gid)?;
                }
                return Ok(confinement.apply()?);
            }
            // Slurm 23.11+: the helper joins the container, takes on its confinement and execs the
            // task's program; before that, the task does both here, just before Slurm execs it
            let mut prepend = step_join::prepend_argv(
                &plugin_args().map_err(anyhow::Error::msg)?.helper,
                c.pid,
                Path::new(&c.workdir),
                &confinement,
                &c.unshare,
            );
            prepend.extend(c.entrypoint.iter().cloned());
            match spank.prepend_task_argv(&prepend) {
                Some(result) => result.context("cannot prepend the container's entry to the task"),
                None => {
                    step_join::enter(c.pid, Path::new(&c.workdir), &c.unshare)?;
                    Ok(confinement.apply()?)
                }
            }
        }
    }
}

/// What a task's environment gets on top of the job's: the image's variables (except those the user
/// keeps with `--container-env`), our links first on `PATH` (`srun`, `mpiexec` inside the step use
/// the relay and the selector), and the markers of our containers.
fn task_env(c: &StepContainer, job_path: Option<String>) -> Vec<(String, String)> {
    use mpiexec_docker_core::launch::{ENV_IMAGE, ENV_IN_CONTAINER, IN_BIN};
    let mut env: Vec<(String, String)> = c.image_env.iter().filter(|(k, _)| !c.keep.contains(k)).cloned().collect();
    let path = match c.keep.iter().any(|k| k == "PATH") {
        true => job_path,
        false => c.image_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()),
    }
    .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.retain(|(k, _)| k != "PATH");
    // the devices' variables are the node's truth about its devices: they win over the image's, but
    // never over what the user keeps (Slurm's GPU binding variables are not among them: see
    // `ContainerSpec::device_env`)
    for (k, v) in c.device_env.iter().filter(|(k, _)| !c.keep.contains(k)) {
        env.retain(|(n, _)| n != k);
        env.push((k.clone(), v.clone()));
    }
    env.push(("PATH".into(), format!("{IN_BIN}:{path}")));
    env.push((ENV_IN_CONTAINER.into(), "1".into()));
    env.push((ENV_IMAGE.into(), c.image.clone()));
    env
}

/// What a failed helper said: its last line, without its own `mpiexec_docker: error: ` (the plugin's
/// log adds its own prefix).
fn helper_said(out: &std::process::Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    let line = mpiexec_docker_core::engine::last_line(&String::from_utf8_lossy(&out.stderr));
    match line.strip_prefix("mpiexec_docker: error: ") {
        _ if line.is_empty() => match out.status.signal() {
            Some(signal) => format!(
                "the helper was killed ({})",
                nix::sys::signal::Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("a signal")
            ),
            None => "the helper failed".to_string(),
        },
        Some(rest) => rest.to_string(),
        None => line,
    }
}

/// The helper's `step-container stop` for `c`, as the container's user (or root, for Docker): with
/// `save`, it only saves the container there and keeps it (the step's exit removes it). `None` when
/// the user has no passwd entry.
fn stop_command(c: &StepContainer, args: &PluginArgs, save: Option<String>) -> Option<std::process::Command> {
    let user = nix::unistd::User::from_uid(c.uid.into()).ok().flatten()?;
    let mut cmd = match c.rootful {
        true => helper_as_root(&args.helper),
        false => helper_as(&args.helper, &user, c.gid),
    };
    let request = StopArgs {
        job: c.job.to_string(),
        step: c.step.to_string(),
        engine: Some(args.engine),
        container_name: c.name.clone(),
        pid: Some(c.pid),
        user: c.rootful.then(|| user_ids(&user, c.gid)),
        keep: save.is_some(),
        save,
    };
    cmd.args(request.to_argv());
    if let Some(phase) = &c.fault_wait {
        cmd.env(fault_point::FAULT_WAIT_VAR, phase);
    }
    Some(cmd)
}

/// `--container-save`: once the step's last task on its first node has exited, the container is
/// saved (before Slurm ends what is left in the step, which a save in `exit` would be part of).
pub fn task_exit(spank: &Spank, _args: &[String]) -> anyhow::Result<()> {
    let Some(Ok(c)) = state::with(|s| s.step.clone()) else { return Ok(()) };
    let Some(target) = c.save.clone() else { return Ok(()) };
    let exited = state::with(|s| {
        s.exited_tasks += 1;
        s.exited_tasks
    });
    let local = spank.get_u32(spank_item::S_JOB_LOCAL_TASK_COUNT).unwrap_or(1);
    if exited < local {
        return Ok(());
    }
    let args = plugin_args().map_err(anyhow::Error::msg)?;
    let mut cmd =
        stop_command(&c, &args, Some(target)).ok_or_else(|| anyhow::anyhow!("no passwd entry for uid {}", c.uid))?;
    let limit = mpiexec_docker_core::container_save::SAVE_LIMIT + mpiexec_docker_core::image_cache::ENGINE_LIMIT;
    let out = mpiexec_docker_core::engine::output_within(&mut cmd, limit)
        .with_context(|| format!("cannot run {}", args.helper.display()))?;
    if !out.status.success() {
        // (Slurm shows the callback's error to the user; the tasks' exit codes stay theirs)
        anyhow::bail!(helper_said(&out));
    }
    Ok(())
}

/// Removes the step's container (as its user: rootless stores are per user).
pub fn exit(_spank: &Spank, _args: &[String]) -> anyhow::Result<()> {
    let step = state::with(|s| s.step.take());
    let Some(Ok(c)) = step else { return Ok(()) };
    let args = plugin_args().unwrap_or_default();
    let Some(mut cmd) = stop_command(&c, &args, None) else { return Ok(()) };
    // bounded: the helper's engine calls are, and so is this wait (slurmstepd waits on it)
    let limit = 3 * mpiexec_docker_core::image_cache::ENGINE_LIMIT;
    match mpiexec_docker_core::engine::output_within(&mut cmd, limit) {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let said = mpiexec_docker_core::engine::last_line(&String::from_utf8_lossy(&out.stderr));
            log::error!("removing the container of step {}.{}: {said}", c.job, c.step);
        }
        Err(e) => log::error!("removing the container of step {}.{}: {e}", c.job, c.step),
    }
    Ok(())
}
