//! mpiexec-docker core library.
//!
//! Everything the `mpiexec_docker` helper and the SPANK plugin have in common lives here, one module
//! per concern. The two front ends stay thin: they parse their inputs, call into these modules and
//! report errors.
//!
//! - [`plugstack`]: the SPANK plugin's `plugstack.conf` arguments (`key=value`).
//! - [`slurm_version`]: Slurm version numbers and the major.minor compatibility rule.

pub mod plugstack;
pub mod slurm_version;
