//! The host side: read the configuration, find the engine, make sure the image is there, build the
//! container from the request, run it with signals forwarded, and leave nothing behind.

use clap::Parser;
use mpiexec_docker_core::config::{Config, PullPolicy};
use mpiexec_docker_core::engine::run_args;
use mpiexec_docker_core::engine::Engine;
use mpiexec_docker_core::engine::EngineKind;
use mpiexec_docker_core::environment::EnvFilter;
use mpiexec_docker_core::image_cache;
use mpiexec_docker_core::launch::{self, in_container_command, Request};
use mpiexec_docker_core::process::spawn_forwarding;
use mpiexec_docker_core::relay::rewrite::run_in_docker_prefix;
use mpiexec_docker_core::relay::server::{self, RelayConfig};
use mpiexec_docker_core::relay::SOCKET_NAME;
use mpiexec_docker_core::runtime_dir::{self, RuntimeDir};

use crate::cli::{split_at_image, Cli, Mode};

/// Exit status for "the container could not be started" (as the engines use it).
const EXIT_ENGINE: i32 = 125;
const EXIT_USAGE: i32 = 2;

fn fail(code: i32, msg: impl std::fmt::Display) -> i32 {
    mpiexec_docker_core::say_error!("{msg}");
    code
}

pub fn main(mode: Mode, argv: &[String]) -> i32 {
    let (ours, mut rest) = split_at_image(&argv[1..]);
    let cli = match Cli::try_parse_from(std::iter::once(argv[0].clone()).chain(ours)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    if cli.verbose > 0 && std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(if cli.verbose > 1 { log::LevelFilter::Debug } else { log::LevelFilter::Info });
    }
    if mode == Mode::Exec && rest.first().map(String::as_str) == Some("--") {
        rest.remove(0);
    }
    if rest.is_empty() {
        return fail(EXIT_USAGE, "nothing to run: give mpiexec options and a program after IMAGE");
    }

    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let kind = match cli.engine.clone().or_else(|| std::env::var("MPIEXEC_DOCKER_ENGINE").ok()) {
        Some(name) => match name.parse::<EngineKind>() {
            Ok(k) => k,
            Err(e) => return fail(EXIT_USAGE, format!("MPIEXEC_DOCKER_ENGINE: {e}")),
        },
        None => config.engine,
    };
    let pull = match cli.pull.as_deref() {
        Some("always") => PullPolicy::Always,
        Some("newer") => PullPolicy::Newer,
        Some("never") => PullPolicy::Never,
        Some(_) => PullPolicy::Missing,
        None => config.pull,
    };
    if let Err(e) = launch::check_image_name(&cli.image) {
        return fail(EXIT_USAGE, e);
    }
    let host_dir = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return fail(EXIT_USAGE, format!("cannot read the current directory: {e}")),
    };
    if let Err(e) = config.policy.check_image(&cli.image, &host_dir, &config.site_file) {
        return fail(EXIT_USAGE, e);
    }
    let engine = match Engine::find(kind) {
        Ok(e) => e,
        Err(e) => return fail(EXIT_ENGINE, e),
    };

    let helper = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(EXIT_ENGINE, format!("cannot find the helper binary itself: {e}")),
    };
    // a registry reference, or an image file (by the name its content gives it in the store)
    let state = match runtime_dir::user_base() {
        Ok(s) => s,
        Err(e) => return fail(EXIT_ENGINE, e),
    };
    let mut image = match image_cache::name_image(&cli.image, &host_dir)
        .and_then(|named| image_cache::resolve(named, None, Some(&state)))
    {
        Ok(i) => i,
        Err(e) => return fail(EXIT_ENGINE, e),
    };
    let runtime = match RuntimeDir::create(&state, None) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_ENGINE, e),
    };
    let request = Request {
        image: image.local.clone(),
        command: in_container_command(if mode == Mode::Mpiexec { "mpiexec" } else { "exec" }, &rest),
        host_dir,
        env: cli.env.clone(),
        mounts: cli.mounts.clone(),
        interactive: true,
        user: mpiexec_docker_core::identity::UserIds::of_caller(),
        devices_list: None,
        gpus: cli.gpus.clone(),
    };
    let host_env: Vec<(String, String)> = std::env::vars().collect();
    if let Err(e) = start_relay(&runtime, &cli, kind, &config, &request) {
        return fail(EXIT_ENGINE, format!("{e:#}"));
    }
    let spec = match launch::container_spec(&engine, &config, &request, &helper, &runtime, &host_env) {
        Ok(s) => s,
        // the engine or the node's device specs failing is no fault of the command line
        Err(e @ (launch::LaunchError::Engine(_) | launch::LaunchError::Cdi(_))) => return fail(EXIT_ENGINE, e),
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Some(notice) = &spec.device_notice {
        eprintln!("mpiexec_docker: note: {notice}");
    }
    let args = run_args(engine.kind, &spec);
    if cli.dry_run {
        let words: Vec<String> = std::iter::once(engine.program.display().to_string()).chain(args).collect();
        println!("{}", words.iter().map(|w| shell_word(w)).collect::<Vec<_>>().join(" "));
        return 0;
    }

    // one fetch per node and user, however many ranks' containers start at once
    let uid = nix::unistd::getuid().as_raw();
    match image_cache::fetch_lock(uid)
        .and_then(|_lock| image_cache::ensure(&engine, &mut image, pull, None, None, None))
    {
        Ok(local) => {
            if let Some(max) = config.cache_max_size {
                if let Ok(_store) = image_cache::store_lock() {
                    let _ = image_cache::enforce_cap(&engine, max, &local);
                }
            }
        }
        Err(e) => return fail(EXIT_ENGINE, e),
    }

    let mut cmd = engine.run_foreground(&args);
    log::debug!("{cmd:?}");
    let cleanup: Option<Box<dyn FnOnce() + Send>> = spec.name.clone().map(|name| {
        let engine = engine.clone();
        Box::new(move || remove_container(&engine, &name)) as Box<dyn FnOnce() + Send>
    });
    let mut child = match spawn_forwarding(&mut cmd, cleanup) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_ENGINE, format!("cannot run {}: {e}", engine.name())),
    };
    let code = child.wait().unwrap_or(EXIT_ENGINE);
    if child.interrupted_by().is_some() || code >= 125 {
        // the engine client may have gone before the container: make sure it is gone too
        if let Some(name) = &spec.name {
            remove_container(&engine, name);
        }
    }
    code
}

/// Serves the in-container srun/ssh relay for this run: remote programs start through `run_in_docker`
/// with the same engine, image, variables and mounts.
fn start_relay(
    runtime: &RuntimeDir,
    cli: &Cli,
    kind: EngineKind,
    config: &Config,
    req: &Request,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("cannot find the helper binary itself")?;
    let image = mpiexec_docker_core::image_source::with_absolute_path(&cli.image, &req.host_dir);
    let wrap = run_in_docker_prefix(&exe, kind, &cli.env, &cli.mounts, &image);
    let relay = RelayConfig {
        allowed: config.relay_commands.clone(),
        wrap,
        wrap_srun: true,
        host_dir: req.host_dir.clone(),
        same_paths: false,
        host_path: std::env::var_os("PATH").unwrap_or_default(),
        env_filter: EnvFilter::new(config.env.clone()),
    };
    server::start(&runtime.relay().join(SOCKET_NAME), relay).context("cannot start the srun/ssh relay")
}

fn remove_container(engine: &Engine, name: &str) {
    engine.remove(&[name.to_string()]);
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_word(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}
