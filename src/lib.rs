//! mpiexec-docker core library.
//!
//! Everything the `mpiexec_docker` helper and the SPANK plugin have in common lives here, one module
//! per concern. The two front ends stay thin: they parse their inputs, call into these modules and
//! report errors.
//!
//! - [`config`]: the YAML configuration files.
//! - [`confinement`]: the container process's seccomp filter and bounding set, for joining tasks.
//! - [`container`]: one container run as data, and the engine command line for it.
//! - [`container_save`]: `--container-save`: a step's container written out as an image file.
//! - [`container_options`]: the plugin's `--container-*` options (pyxis syntax) and their env defaults.
//! - [`devices`]: InfiniBand and GPU devices, limited to the job's allocation.
//! - [`engine`]: every call to Podman or Docker (images, containers, each bounded in time).
//! - [`environment`]: which host variables go into the container.
//! - [`identity`]: the job user's ids, and a root helper acting as that user.
//! - [`image_cache`]: fetching an image once per node, and what the tool keeps (`images`, prune, cap).
//! - [`image_source`]: registry references and image files, and the cache key of a file.
//! - [`in_container`]: the helper's in-container side (the mpiexec selector, exec).
//! - [`layout`]: where the helper, its links, /host and the relay socket are inside our containers.
//! - [`launch`]: the host side: a user request to a container spec.
//! - [`mount_source`]: mount sources a root daemon gets for a user, bound from what the user opened.
//! - [`mpi`]: MPI flavour detection and what each flavour needs.
//! - [`plugstack`]: the SPANK plugin's `plugstack.conf` arguments (`key=value`).
//! - [`process`]: supervising a child with signal forwarding and shell-style exit codes.
//! - [`pytorch`]: the variables enroot's PyTorch hook gives tasks of PyTorch images.
//! - [`registry_auth`]: a user's registry logins for the pulls root makes for them.
//! - [`relay`]: the in-container srun/ssh relay to the host (protocol, rewrite, server, client).
//! - [`runtime_dir`]: node-local state (locks, per-run directories) no other user can squat or swap.
//! - [`step_container`]: a step's container on a node: start, stop, its relay, joining it.
//! - [`step_contract`]: the plugin↔helper interface, typed once (arguments and the start answer).
//! - [`step_join`]: how a task of a `--container-image` step enters its step's container.
//! - [`user_text`]: users' text made one safe line for output and logs.
//! - [`slurm_version`]: Slurm version numbers and the major.minor compatibility rule.

pub mod cdi;
pub mod config;
pub mod confinement;
pub mod container;
pub mod container_options;
pub mod container_save;
pub mod device_choice;
pub mod devices;
pub mod doctor;
pub mod engine;
pub mod environment;
pub mod fault_point;
#[cfg(test)]
mod hostile_input;
pub mod identity;
pub mod image_cache;
pub mod image_reference;
pub mod image_source;
pub mod in_container;
pub mod job_fetch;
pub mod launch;
pub mod layout;
pub mod left_tasks;
pub mod mount_source;
pub mod mpi;
pub mod plugin_file;
pub mod plugstack;
pub mod policy;
pub mod process;
pub mod pytorch;
pub mod registry_auth;
pub mod relay;
pub mod runtime_dir;
pub mod slurm_version;
pub mod step_container;
pub mod step_contract;
pub mod step_join;
pub mod step_spare;
pub mod store_import;
#[cfg(test)]
mod test_scratch;
pub mod user_text;
