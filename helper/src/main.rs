//! `mpiexec_docker IMAGE [MPIEXEC_OPTIONS] PROG [ARGS]`: run an MPI job in containers.
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "mpiexec_docker",
    version,
    about = "Run an MPI job inside a container image"
)]
struct Cli {
    /// Container image (registry reference or image file path)
    image: String,
    /// mpiexec options, the program and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() {
    env_logger::init();
    let cli = Cli::parse();
    log::debug!("{cli:?}");
    eprintln!("mpiexec_docker: running jobs is not implemented yet");
    std::process::exit(2);
}
