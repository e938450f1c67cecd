//! The srun/ssh relay: inside the container, `srun`, `ssh` and `rsh` are the helper, which hands the
//! call to the `mpiexec_docker` process on the host over a Unix socket; the host runs its own `srun`
//! (or `ssh`) with the remote program prefixed by `run_in_docker`, so remote daemons and ranks run in
//! the same image.
//!
//! - [`protocol`]: the wire format (argv as a list, environment, working directory; stdin, stdout and
//!   stderr passed as file descriptors; signals one way, the exit status the other).
//! - [`rewrite`]: turning the container's `srun …`/`ssh …` into the host's command line.
//! - [`server`] (host) and [`client`] (container).

pub mod client;
pub mod protocol;
pub mod rewrite;
pub mod server;

pub use crate::layout::{IN_RELAY_DIR, SOCKET_NAME};
