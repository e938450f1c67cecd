//! `mpiexec_docker`: one static multi-call binary.
//!
//! - on the host, as `mpiexec_docker IMAGE [MPIEXEC_OPTIONS] PROG [ARGS]`: runs the MPI job in a
//!   container (see [`host`]);
//! - on the host, as `run_in_docker IMAGE [--] PROG [ARGS]`: runs one program in a container;
//! - on the host, `mpiexec_docker images [prune | remove-container NAME]`: what the tool cached in
//!   this node's store, and the named containers kept there (`container_scope=global`);
//! - on the host, `mpiexec_docker doctor`: whether this node can run containers for the caller;
//! - inside our containers (entry point `in-container MODE …`, or called as `mpiexec`/`mpirun`): the
//!   mpiexec selector, or the plain exec of `run_in_docker`.
//!
//! All logic lives in the `mpiexec_docker` library; this crate parses arguments and reports errors.

mod cli;
mod doctor;
mod host;
mod images;
mod manual;
mod step;
mod sweep;
mod version;

use std::path::Path;

use mpiexec_docker_core::in_container;
use mpiexec_docker_core::launch::ENV_IN_CONTAINER;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let inside = std::env::var_os(ENV_IN_CONTAINER).is_some();
    init_logging(inside);

    let code = match name.as_str() {
        _ if inside && args.get(1).map(String::as_str) == Some("in-container") => {
            in_container_main(args.get(2).map(String::as_str).unwrap_or(""), &args[3.min(args.len())..])
        }
        "mpiexec" | "mpirun" if inside => in_container_main("mpiexec", &args[1..]),
        "srun" | "ssh" | "rsh" if inside => mpiexec_docker_core::relay::client::run(&name, &args[1..]),
        "run_in_docker" => host::main(cli::Mode::Exec, &args),
        _ if args.get(1).map(String::as_str) == Some("sweep") => sweep::main(&args[2..]),
        _ if args.get(1).map(String::as_str) == Some("images") => images::main(&args[2..]),
        _ if args.get(1).map(String::as_str) == Some("doctor") => doctor::main(&args[2..]),
        _ if args.get(1).map(String::as_str) == Some("man") => manual::main(&args[2..]),
        _ if matches!(args.get(1).map(String::as_str), Some("--version" | "-V")) => version::main(),
        _ if args.get(1).map(String::as_str) == Some("step-container") => step::main(&args[2..]),
        _ => host::main(cli::Mode::Mpiexec, &args),
    };
    std::process::exit(code);
}

fn in_container_main(mode: &str, args: &[String]) -> i32 {
    let err = match mode {
        "mpiexec" => in_container::run_mpiexec(args),
        "exec" => in_container::run_exec(args),
        "pause" => in_container::run_pause(),
        "entrypoint-quiet" => in_container::run_entrypoint_quiet(args),
        "resume" => in_container::run_resume(args),
        other => {
            eprintln!("mpiexec_docker: unknown in-container mode '{other}'");
            return 2;
        }
    };
    mpiexec_docker_core::say_error!("{err}");
    err.exit_code()
}

/// `RUST_LOG` wins; otherwise warnings only (the helper's own output should not mix with MPI's).
fn init_logging(inside: bool) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    b.format_timestamp(None);
    if inside {
        b.format_target(false);
    }
    let _ = b.try_init();
}
