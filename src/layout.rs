//! Where things are inside our containers and what marks them: the paths the helper, its links, the
//! host directory and the relay socket are mounted at, and our variables and labels. Shared by the
//! host side ([`crate::launch`], [`crate::runtime_dir`]) and the container side ([`crate::relay`],
//! [`crate::in_container`]).

/// Where the helper is mounted in the container.
pub const IN_HELPER: &str = "/.mpiexec-docker/mpiexec_docker";
/// Where the directory of links to the helper is mounted in the container.
pub const IN_BIN: &str = "/.mpiexec-docker/bin";
/// Where the current directory is mounted in the container.
pub const HOST_DIR: &str = "/host";
/// The names the helper answers to inside a container.
pub const LINK_NAMES: &[&str] = &["mpiexec", "mpirun", "srun", "ssh", "rsh", "run_in_docker"];

/// Set inside our containers: the image, and a marker for the in-container side.
pub const ENV_IMAGE: &str = "MPIEXEC_DOCKER_IMAGE";
pub const ENV_IN_CONTAINER: &str = "MPIEXEC_DOCKER_IN_CONTAINER";
/// The container label every container of ours carries, and the ones naming its owner and job.
pub const LABEL: &str = "mpiexec-docker";

/// Where the relay directory is mounted in the container; the socket is [`SOCKET_NAME`] in it.
pub const IN_RELAY_DIR: &str = "/.mpiexec-docker/relay";
pub const SOCKET_NAME: &str = "relay.sock";
