//! Command-line arguments of `mpiexec_docker` and `run_in_docker`.
//!
//! Our options come before IMAGE; everything after IMAGE belongs to mpiexec (or is the program), so
//! the command line is split at IMAGE first and only the part before it is parsed with clap. That
//! way `mpiexec_docker IMAGE -v -np 2 ./a.out` passes `-v` to mpiexec, not to us.
// The options' doc comments are their `--help` text, where `[:ro]` means "optional", not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use clap::Parser;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `mpiexec_docker`: run mpiexec (through the selector) in the container.
    Mpiexec,
    /// `run_in_docker`: run one program in the container.
    Exec,
}

#[derive(Parser, Debug)]
#[command(
    name = "mpiexec_docker",
    version,
    about = "Run an MPI job inside a Podman/Docker container image",
    override_usage = "mpiexec_docker [OPTIONS] IMAGE [MPIEXEC_OPTIONS] PROG [ARGS]...\n       run_in_docker [OPTIONS] IMAGE [--] PROG [ARGS]...",
    after_help = "The current directory is mounted at /host and is the working directory. MPI, PMI, Slurm, \
fabric and GPU variables are passed in; see the README for the exact rule.\n\
Exit status: the job's own; 125 when the container could not be started; 127 when the image has no MPI \
or the program is not found; 2 for bad options or configuration."
)]
pub struct Cli {
    /// Container engine [default: podman; or MPIEXEC_DOCKER_ENGINE, or the config file's `engine`]
    #[arg(long, value_parser = ["podman", "docker"])]
    pub engine: Option<String>,
    /// Pass a host variable (NAME; NAME_* for a prefix) or set one (NAME=VALUE) in the container
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Bind-mount a host path into the container (SRC:DST[:ro])
    #[arg(short = 'm', long = "mount", value_name = "SRC:DST[:ro]")]
    pub mounts: Vec<String>,
    /// When to pull the image [default: missing, or the config file's `pull`]
    #[arg(long, value_parser = ["missing", "newer", "always", "never"])]
    pub pull: Option<String>,
    /// GPUs to pass in: all, none, or indexes of this node's GPUs (0,2-3); inside a Slurm job, only
    /// those it allocated [default: all]
    #[arg(long, value_name = "all|none|LIST", value_parser = parse_gpus)]
    pub gpus: Option<mpiexec_docker_core::devices::GpuAllocation>,
    /// Print the engine command that would run, and exit
    #[arg(long)]
    pub dry_run: bool,
    /// More logging (-v: info, -vv: debug); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Container image: a registry reference ([REGISTRY/]NAME[:TAG|@DIGEST])
    pub image: String,
}

/// Options of ours that take a value (the word after them is not IMAGE).
const TAKES_VALUE: &[&str] = &["--engine", "-e", "--env", "-m", "--mount", "--pull", "--gpus"];

fn parse_gpus(text: &str) -> Result<mpiexec_docker_core::devices::GpuAllocation, String> {
    mpiexec_docker_core::devices::GpuAllocation::parse_request(text)
}

/// Splits `args` (without `argv[0]`) at IMAGE: returns (ours up to and including IMAGE, the rest).
pub fn split_at_image(args: &[String]) -> (Vec<String>, Vec<String>) {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            // `-- IMAGE …`
            let end = (i + 2).min(args.len());
            // keep "--" so that clap reads IMAGE as a value even when it looks like an option
            let ours = args[..end].to_vec();
            return (ours, args[end..].to_vec());
        }
        if !a.starts_with('-') {
            return (args[..=i].to_vec(), args[i + 1..].to_vec());
        }
        i += if TAKES_VALUE.contains(&a.as_str()) { 2 } else { 1 };
    }
    (args.to_vec(), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn splits_at_the_image() {
        let (ours, rest) = split_at_image(&s(&["--engine", "docker", "-e", "FOO", "img", "-v", "-np", "2", "a.out"]));
        assert_eq!(ours, s(&["--engine", "docker", "-e", "FOO", "img"]));
        assert_eq!(rest, s(&["-v", "-np", "2", "a.out"]));
        let (ours, rest) = split_at_image(&s(&["--dry-run", "img", "--", "x"]));
        assert_eq!(ours, s(&["--dry-run", "img"]));
        assert_eq!(rest, s(&["--", "x"]));
        let cli = Cli::try_parse_from(std::iter::once("mpiexec_docker".to_string()).chain(ours)).unwrap();
        assert!(cli.dry_run && cli.image == "img");
        let (ours, rest) = split_at_image(&s(&["--", "-img", "x"]));
        assert_eq!(ours, s(&["--", "-img"]));
        assert_eq!(rest, s(&["x"]));
        let cli = Cli::try_parse_from(std::iter::once("mpiexec_docker".to_string()).chain(ours)).unwrap();
        assert_eq!(cli.image, "-img", "after --, IMAGE is read as a value (and then rejected by the image check)");
    }
}
