//! `mpiexec_docker doctor [--image IMAGE] [--plugstack FILE] [--json]`: this node's checks for the
//! calling user (see [`mpiexec_docker_core::doctor`]), one line each, prefixed with the node's name so
//! that `srun -N3 mpiexec_docker doctor` reads as a table. Exit status 1 when a check failed.

use clap::Parser;
use mpiexec_docker_core::doctor::{self, Inputs};

#[derive(Parser, Debug)]
#[command(
    name = "mpiexec_docker doctor",
    about = "Check this node for running containers as you: engine, rootless setup, store, cgroups, Slurm's \
             plugin and helper, devices and CDI specs, configuration, an image",
    after_help = "Each line: NODE CHECK ok|warn|fail  what was found; the fix. Exit status 1 when a check \
                  failed. Under srun each node answers: srun -N3 mpiexec_docker doctor"
)]
pub struct DoctorArgs {
    /// Also check that this image can be had (a registry reference or an image file)
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Read this plugstack file instead of the one Slurm reads
    #[arg(long, value_name = "FILE")]
    pub plugstack: Option<std::path::PathBuf>,
    /// One JSON object: the node and its findings
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: &[String]) -> i32 {
    let a = match DoctorArgs::try_parse_from(
        std::iter::once("mpiexec_docker doctor".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let inputs =
        Inputs { plugstack: a.plugstack, image: a.image, cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()) };
    let findings = doctor::run(&inputs);
    let node = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    if a.json {
        let out = serde_json::json!({ "node": node, "findings": findings });
        println!("{out}");
    } else {
        for f in &findings {
            println!("{node:<12} {}", f.line());
        }
    }
    doctor::exit_code(&findings)
}
