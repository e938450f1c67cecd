//! Which host environment variables go into the container.
//!
//! The rule (also in the README): a variable goes in when its name
//! - starts with one of [`PASS_PREFIXES`] (MPI, PMI/PMIx, Slurm, fabrics, GPUs, OpenMP, …), or
//! - is one of [`PASS_NAMES`] (terminal, locale, time zone), or
//! - is listed by the user (`--env NAME`, config `env:`; a trailing `*` lists a prefix),
//!
//! and it is never one of [`NEVER`]: variables that describe the host's file system or tools (`PATH`,
//! `LD_LIBRARY_PATH`, `HOME`, …) would clobber the image's own and break it. A user who really wants one of
//! them sets it explicitly with `--env NAME=VALUE`.

/// Prefixes of variables that are passed in.
pub const PASS_PREFIXES: &[&str] = &[
    // Slurm and its PMI/PMIx plumbing
    "SLURM_",
    "SLURMD_",
    "SPANK_",
    "PMI_",
    "PMIX_",
    "PMI2_",
    // MPI implementations
    "OMPI_",
    "OPAL_",
    "ORTE_",
    "PRTE_",
    "MPIR_",
    "MPICH_",
    "HYDRA_",
    "MV2_",
    "MVP_",
    "I_MPI_",
    "MPIEXEC_",
    // fabrics and communication libraries
    "FI_",
    "UCX_",
    "UCC_",
    "PSM2_",
    "PSM3_",
    "HFI_",
    "IBV_",
    "RDMAV_",
    "NCCL_",
    "RCCL_",
    "CXI_",
    // GPUs
    "CUDA_",
    "NVIDIA_",
    "ROCR_",
    "HIP_",
    "GPU_",
    "ZE_",
    // threading and math libraries
    "OMP_",
    "KMP_",
    "GOMP_",
    "MKL_",
    "OPENBLAS_",
];

/// Single variables that are passed in.
pub const PASS_NAMES: &[&str] = &["TERM", "LANG", "LANGUAGE", "TZ", "COLUMNS", "LINES"];

/// Variables that never go in by themselves, even when a prefix matches.
pub const NEVER: &[&str] = &[
    "PATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "LIBRARY_PATH",
    "CPATH",
    "MANPATH",
    "PYTHONPATH",
    "HOME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "MAIL",
    "HOSTNAME",
    "USER",
    "LOGNAME",
    "SLURM_CONF",
    "MPIEXEC_DOCKER_CONFIG",
    "MPIEXEC_DOCKER_ENGINE",
];

/// Decides which variables are passed.
#[derive(Debug, Clone, Default)]
pub struct EnvFilter {
    /// User-listed names; an entry ending in `*` is a prefix.
    pub extra: Vec<String>,
}

impl EnvFilter {
    pub fn new(extra: Vec<String>) -> Self {
        EnvFilter { extra }
    }

    pub fn passes(&self, name: &str) -> bool {
        if NEVER.contains(&name) {
            // only an explicit listing by exact name brings these in
            return self.extra.iter().any(|e| e == name);
        }
        if name.starts_with("LC_") || PASS_NAMES.contains(&name) {
            return true;
        }
        if PASS_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return true;
        }
        self.extra.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => e == name,
        })
    }

    /// The names of `vars` that pass, in order.
    pub fn select<'a, I>(&self, vars: I) -> Vec<String>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        vars.into_iter().filter(|(k, _)| self.passes(k)).map(|(k, _)| k.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpi_slurm_fabric_variables_pass() {
        let f = EnvFilter::default();
        for name in [
            "SLURM_JOB_ID",
            "PMI_FD",
            "PMIX_RANK",
            "OMPI_MCA_btl",
            "I_MPI_FABRICS",
            "FI_PROVIDER",
            "UCX_TLS",
            "CUDA_VISIBLE_DEVICES",
            "OMP_NUM_THREADS",
            "MV2_ENABLE_AFFINITY",
            "LC_ALL",
            "TERM",
            "NCCL_DEBUG",
        ] {
            assert!(f.passes(name), "{name} must pass");
        }
    }

    #[test]
    fn host_paths_and_unrelated_variables_stay_out() {
        let f = EnvFilter::default();
        for name in ["PATH", "LD_LIBRARY_PATH", "HOME", "SHELL", "MY_SECRET", "SSH_AUTH_SOCK", "DISPLAY"] {
            assert!(!f.passes(name), "{name} must not pass");
        }
    }

    #[test]
    fn user_listed_names_and_prefixes() {
        let f = EnvFilter::new(vec!["MY_APP_*".into(), "DATA_DIR".into(), "LD_LIBRARY_PATH".into()]);
        assert!(f.passes("MY_APP_MODE"));
        assert!(f.passes("DATA_DIR"));
        assert!(!f.passes("DATA_DIRS"));
        assert!(f.passes("LD_LIBRARY_PATH"), "an exact listing brings in even a host path variable");
        assert!(!f.passes("PATH"));
        let names = f.select([("PATH", "/bin"), ("MY_APP_X", "1"), ("SLURM_NTASKS", "2")]);
        assert_eq!(names, ["MY_APP_X", "SLURM_NTASKS"]);
    }
}
