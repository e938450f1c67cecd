//! `mpiexec_docker step-container start|stop`: the container a SPANK step's tasks join.
//!
//! The plugin calls `start` once per node per step (from `slurm_spank_user_init`, as the job's user):
//! it starts a placeholder container (the helper pausing, with the host's network, IPC and PID
//! namespaces, the job's working directory mounted at the same path) and prints its process id. Each
//! task then joins that container's namespaces and stays an ordinary child of slurmstepd. `stop`
//! removes the container when the step ends.
//!
//! ```text
//! mpiexec_docker step-container start --job J --step S --image IMAGE --workdir DIR [--engine E] [--mount SPEC]...
//!     [--container-workdir DIR] [--mount-home DIR] [--remap-root] [--readonly]
//! (prints the container's pid, then the image's environment, one NAME=VALUE a line)
//! mpiexec_docker step-container stop --job J --step S [--engine E]
//! ```

use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use mpiexec_docker::config::{Config, PullPolicy};
use mpiexec_docker::container::run_args;
use mpiexec_docker::engine::{output_within, Engine};
use mpiexec_docker::launch::{self, in_container_command, runtime_base, Request, RuntimeDir};
use mpiexec_docker::plugstack::EngineKind;

struct Args {
    start: bool,
    job: String,
    step: String,
    image: String,
    workdir: String,
    engine: Option<EngineKind>,
    mounts: Vec<String>,
    container_workdir: Option<String>,
    remap_root: bool,
    readonly: bool,
    mount_home: Option<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        start: false,
        job: String::new(),
        step: String::new(),
        image: String::new(),
        workdir: String::new(),
        engine: None,
        mounts: Vec::new(),
        container_workdir: None,
        remap_root: false,
        readonly: false,
        mount_home: None,
    };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("start") => a.start = true,
        Some("stop") => {}
        _ => return Err("usage: mpiexec_docker step-container start|stop --job J --step S …".into()),
    }
    while let Some(k) = it.next() {
        match k.as_str() {
            "--remap-root" => {
                a.remap_root = true;
                continue;
            }
            "--readonly" => {
                a.readonly = true;
                continue;
            }
            _ => {}
        }
        let v = it.next().cloned().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--job" => a.job = v,
            "--step" => a.step = v,
            "--image" => a.image = v,
            "--workdir" => a.workdir = v,
            "--engine" => a.engine = Some(v.parse()?),
            "--mount" => a.mounts.push(v),
            "--container-workdir" => a.container_workdir = Some(v),
            "--mount-home" => a.mount_home = Some(v),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.job.is_empty() || a.step.is_empty() {
        return Err("--job and --step are required".into());
    }
    Ok(a)
}

/// The container's name: one per job, step and node.
fn name(job: &str, step: &str) -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    format!("mpiexec-docker-{job}.{step}-{host}")
}

pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mpiexec_docker: error: {e}");
            1
        }
    }
}

/// The longest one engine call may take here.
const ENGINE_LIMIT: Duration = Duration::from_secs(120);

/// One engine operation at a time per user and node: many steps starting at once would otherwise
/// run that many Podman processes against the same store (lock contention, memory in the job's
/// cgroup). The lock is a file in the node-local runtime directory; it is released when we exit.
fn node_lock() -> Result<Flock<std::fs::File>, String> {
    let path = runtime_base().join(format!("mpiexec-docker-{}.lock", nix::unistd::getuid()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("{}: {e}", path.display()))
}

fn engine_output(engine: &Engine, args: &[String]) -> Result<std::process::Output, String> {
    let mut cmd = engine.command();
    cmd.args(args).stdin(Stdio::null());
    output_within(&mut cmd, ENGINE_LIMIT)
        .map_err(|e| format!("{} {}: {e}", engine.name(), args.first().map(String::as_str).unwrap_or("")))
}

fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    let config = Config::load().map_err(|e| e.to_string())?;
    let engine = Engine::find(a.engine.unwrap_or(config.engine)).map_err(|e| e.to_string())?;
    let name = name(&a.job, &a.step);
    let _lock = node_lock()?;
    if !a.start {
        engine.remove(&[name]);
        return Ok(());
    }
    launch::check_image_name(&a.image).map_err(|e| e.to_string())?;
    // one engine call tells both whether the image is here and its environment (for the tasks, which
    // inherit the job's environment, not the image's)
    let image_env = match image_env(&engine, &a.image)? {
        Some(env) => env,
        None => {
            if config.pull == PullPolicy::Never {
                return Err(format!("image '{}' is not available on this node and pulling is disabled", a.image));
            }
            engine.pull(&a.image, false).map_err(|e| e.to_string())?;
            image_env(&engine, &a.image)?
                .ok_or_else(|| format!("image '{}' is still missing after its pull", a.image))?
        }
    };
    let runtime = RuntimeDir::create(&format!("{}", std::process::id())).map_err(|e| e.to_string())?;
    let request = Request {
        image: a.image.clone(),
        command: in_container_command("pause", &[]),
        host_dir: a.workdir.clone().into(),
        env: Vec::new(),
        mounts: a.mounts.clone(),
        interactive: false,
    };
    let host_env: Vec<(String, String)> = std::env::vars().collect();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut spec =
        launch::container_spec(&engine, &config, &request, &exe, &runtime, &host_env).map_err(|e| e.to_string())?;
    spec.name = Some(name.clone());
    spec.labels.retain(|(k, _)| k != "mpiexec-docker.job" && k != "mpiexec-docker.step");
    spec.labels.push(("mpiexec-docker.job".into(), a.job.clone()));
    spec.labels.push(("mpiexec-docker.step".into(), a.step.clone()));
    spec.remove = false;
    spec.detach = true;
    spec.interactive = false;
    // the tasks see the job's working directory where it is on the host, and the node's /tmp and
    // Slurm spool (PMIx server files) for direct MPI launch
    spec.mount(&a.workdir, &a.workdir, false);
    if let Some(home) = &a.mount_home {
        if home != &a.workdir && std::path::Path::new(home).is_dir() {
            spec.mount(home, home, false);
        }
    }
    spec.workdir = Some(a.container_workdir.clone().unwrap_or_else(|| a.workdir.clone()).into());
    spec.read_only = a.readonly;
    if a.remap_root {
        // root inside; with rootless Podman that root is the caller on the host, no more
        spec.user = mpiexec_docker::container::UserMode::Default;
    }
    for dir in ["/tmp", "/var/spool/slurmd", "/var/spool/slurm"] {
        if std::path::Path::new(dir).is_dir() && dir != a.workdir {
            spec.mount(dir, dir, false);
        }
    }
    // the runtime directory must outlive this process: the container keeps using its links
    let keep = runtime.path.clone();
    std::mem::forget(runtime);
    let mut out = engine_output(&engine, &run_args(engine.kind, &spec))?;
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already in use") {
        // a leftover of an earlier attempt with the same name: remove it and start again
        engine.remove(std::slice::from_ref(&name));
        out = engine_output(&engine, &run_args(engine.kind, &spec))?;
    }
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&keep);
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "cannot start the container for image '{}': {}",
            a.image,
            text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
        ));
    }
    let pid = engine_output(&engine, &["inspect".into(), "--format".into(), "{{.State.Pid}}".into(), name.clone()])?;
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    if pid.is_empty() || pid == "0" {
        engine.remove(&[name]);
        return Err(format!("the container for image '{}' did not stay up", a.image));
    }
    println!("{pid}");
    print!("{image_env}");
    Ok(())
}

/// The image's environment, one NAME=VALUE a line; `None` when the image is not in the local store.
fn image_env(engine: &Engine, image: &str) -> Result<Option<String>, String> {
    let format = "{{range .Config.Env}}{{println .}}{{end}}";
    let out =
        engine_output(engine, &["image".into(), "inspect".into(), "--format".into(), format.into(), image.into()])?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    // not there, or the engine itself failing: ask the way that tells them apart
    match engine.image_present(image).map_err(|e| e.to_string())? {
        false => Ok(None),
        true => Err(format!("cannot read image '{image}': {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}
