//! MPI flavours: detecting the image's MPI from its launcher's own version output, and what each
//! needs to run in a container (the in-container `mpiexec` selector applies this).

use std::fmt;

/// The MPI implementations the selector knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavour {
    /// Open MPI, with its major version (4: ORTE's `mpirun`, 5: PRRTE's).
    OpenMpi {
        major: u32,
    },
    Mpich,
    Mvapich2,
    IntelMpi,
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flavour::OpenMpi { major } => write!(f, "Open MPI {major}"),
            Flavour::Mpich => f.write_str("MPICH"),
            Flavour::Mvapich2 => f.write_str("MVAPICH2"),
            Flavour::IntelMpi => f.write_str("Intel MPI"),
        }
    }
}

/// Detects the flavour from the output of `mpiexec --version` (stdout and stderr together), plus the
/// output of `mpiname -a` where the image has one (MVAPICH2 ships it).
///
/// What identifies each:
/// - Intel MPI: its banner `Intel(R) MPI Library` (Intel's hydra also prints `HYDRA`, so test first).
/// - MVAPICH2: the word `MVAPICH` (its hydra-based `mpiexec` prints MPICH's HYDRA details; `mpiname -a`
///   prints `MVAPICH2 <version> …`), so it is tested before MPICH.
/// - Open MPI: `(Open MPI) X.Y.Z` (v2 and later, v5's PRRTE-based mpirun too) or `(OpenRTE) X.Y.Z`
///   (ORTE's older spelling); the number before the first dot is the major version.
/// - MPICH: `HYDRA build details` (MPICH's process manager) without any of the above.
pub fn detect(version_output: &str) -> Option<Flavour> {
    if version_output.contains("Intel(R) MPI Library") {
        return Some(Flavour::IntelMpi);
    }
    if version_output.to_ascii_uppercase().contains("MVAPICH") {
        return Some(Flavour::Mvapich2);
    }
    for marker in ["(Open MPI)", "(OpenRTE)"] {
        if let Some(pos) = version_output.find(marker) {
            let rest = version_output[pos + marker.len()..].trim_start();
            let major = rest.split(['.', ' ', '\n']).next().and_then(|m| m.parse().ok()).unwrap_or(0);
            return Some(Flavour::OpenMpi { major });
        }
    }
    if version_output.contains("HYDRA build details") {
        return Some(Flavour::Mpich);
    }
    None
}

/// What the selector adds to a launch: arguments before the user's, and environment defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adjustments {
    pub args: Vec<String>,
    /// Variables set only when the user has not set them.
    pub env_defaults: Vec<(String, String)>,
}

/// Facts about where the launch happens.
#[derive(Debug, Clone, Default)]
pub struct LaunchSite {
    /// Running as uid 0 inside the container.
    pub root: bool,
    /// Inside a Slurm allocation (`SLURM_JOB_ID` set).
    pub in_slurm: bool,
    /// InfiniBand devices present (`/dev/infiniband/uverbs*`).
    pub infiniband: bool,
}

/// What each flavour needs in a container.
pub fn adjustments(flavour: &Flavour, site: &LaunchSite) -> Adjustments {
    let mut adj = Adjustments::default();
    let mut default = |k: &str, v: &str| adj.env_defaults.push((k.to_string(), v.to_string()));
    match flavour {
        Flavour::OpenMpi { major } => {
            if site.root {
                // Open MPI refuses to run as root. Since 3.0 two variables allow it (the flag is
                // listed only under `--help launch` in v4); older versions need the flag.
                if *major >= 3 {
                    default("OMPI_ALLOW_RUN_AS_ROOT", "1");
                    default("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
                    if *major >= 5 {
                        default("PRTE_ALLOW_RUN_AS_ROOT", "1");
                        default("PRTE_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
                    }
                } else {
                    adj.args.push("--allow-run-as-root".into());
                }
            }
        }
        Flavour::Mpich | Flavour::Mvapich2 => {}
        Flavour::IntelMpi => {
            // Outside Slurm there is no srun to bootstrap with, and the image has no ssh server:
            // start the local proxy with fork. Inside an allocation, hydra's own auto-detection picks
            // Slurm (srun, which the relay serves).
            if !site.in_slurm {
                default("I_MPI_HYDRA_BOOTSTRAP", "fork");
            }
            // Without InfiniBand, pick libfabric's TCP provider (between nodes) and shared memory on a
            // node, instead of failing to find a fabric in MPI_Init.
            if !site.infiniband {
                default("FI_PROVIDER", "tcp");
            }
        }
    }
    adj
}

/// Launcher options that take one value, across flavours (`--opt=value` forms carry their own).
const ONE_VALUE: &[&str] = &[
    "-n",
    "-np",
    "-c",
    "--n",
    "--np",
    "-N",
    "-H",
    "--host",
    "-host",
    "-hosts",
    "--hostfile",
    "-hostfile",
    "--machinefile",
    "-machinefile",
    "-f",
    "-machine",
    "--map-by",
    "-map-by",
    "--bind-to",
    "-bind-to",
    "--rank-by",
    "-rank-by",
    "-ppn",
    "--npernode",
    "-npernode",
    "--npersocket",
    "-x",
    "--prefix",
    "-prefix",
    "-wdir",
    "--wdir",
    "-wd",
    "--wd",
    "-path",
    "--path",
    "-launcher",
    "-bootstrap",
    "-launcher-exec",
    "-bootstrap-exec",
    "-iface",
    "-rr",
    "-perhost",
    "-genvlist",
    "-envlist",
    "-configfile",
    "--app",
    "--output-filename",
    "-output-filename",
    "--stdin",
    "--timeout",
    "--personality",
    "--with-ft",
];
/// Launcher options that take two values (`NAME VALUE`).
const TWO_VALUES: &[&str] = &["-genv", "-env", "--mca", "-mca", "--gmca", "-gmca", "--prtemca", "--pmixmca"];
/// Launcher options known to take no value.
const NO_VALUE: &[&str] = &[
    "--allow-run-as-root",
    "--oversubscribe",
    "-oversubscribe",
    "--tag-output",
    "-tag-output",
    "--timestamp-output",
    "-v",
    "--verbose",
    "-verbose",
    "-q",
    "--quiet",
    "-genvall",
    "-genvnone",
    "-envall",
    "-envnone",
    "--use-hwthread-cpus",
    "--nolocal",
    "--noprefix",
    "-prepend-rank",
    "--merge-stderr-to-stdout",
    "--report-uri",
    "-info",
    "-print-all-exitcodes",
    "-ordered-output",
    "--display-allocation",
    "--enable-recovery",
    "--disable-recovery",
    "-l",
    "--display-map",
    "--report-bindings",
    "-tv",
    "-gdb",
    "-d",
];

/// Finds the program in a launcher command line: the index of the first word that is not an option
/// or an option's value. `None` when an unknown option makes that uncertain (then nothing is checked).
pub fn program_index(args: &[String]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return (i + 1 < args.len()).then_some(i + 1);
        }
        if !a.starts_with('-') || a == "-" {
            return Some(i);
        }
        // long-option forms that carry their value with "="
        if a.contains('=') {
            i += 1;
        } else if ONE_VALUE.contains(&a) {
            i += 2;
        } else if TWO_VALUES.contains(&a) {
            i += 3;
        } else if NO_VALUE.contains(&a) {
            i += 1;
        } else {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // Version outputs as the launchers print them.
    const OMPI4: &str = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n";
    const OMPI3_ORTE: &str = "mpiexec (OpenRTE) 3.1.3\n\nReport bugs to http://www.open-mpi.org/community/help/\n";
    const OMPI5: &str = "mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/\n";
    const MPICH: &str = "HYDRA build details:\n    Version:                                 4.0.2\n    Release Date:                            Thu Apr  7 12:34:45 CDT 2022\n    CC:                              gcc\n";
    const MVAPICH2_HYDRA: &str = "HYDRA build details:\n    Version:                                 3.2\n    Release Date:                            ---\n    Configure options:                       '--disable-option-checking' '--prefix=/opt/mvapich2' 'MPICHLIB_CFLAGS=-O2' '--with-device=ch3:mrail' '--with-rdma=gen2'\n";
    const MVAPICH2_MPINAME: &str = "MVAPICH2 2.3.7 Wed March 02 22:00:00 EST 2022 ch3:mrail\n";
    const IMPI: &str = "Intel(R) MPI Library for Linux* OS, Version 2021.19 Build 20250312 (id: 7dcf2a4)\nCopyright 2003-2025, Intel Corporation.\n";

    #[test]
    fn detects_each_flavour() {
        assert_eq!(detect(OMPI4), Some(Flavour::OpenMpi { major: 4 }));
        assert_eq!(detect(OMPI3_ORTE), Some(Flavour::OpenMpi { major: 3 }));
        assert_eq!(detect(OMPI5), Some(Flavour::OpenMpi { major: 5 }));
        assert_eq!(detect(MPICH), Some(Flavour::Mpich));
        assert_eq!(detect(IMPI), Some(Flavour::IntelMpi));
        assert_eq!(detect(MVAPICH2_MPINAME), Some(Flavour::Mvapich2));
        assert_eq!(detect(&format!("{MVAPICH2_HYDRA}{MVAPICH2_MPINAME}")), Some(Flavour::Mvapich2));
        assert_eq!(detect("bash: mpiexec: command not found"), None);
    }

    #[test]
    fn open_mpi_as_root() {
        let root = LaunchSite { root: true, ..Default::default() };
        let adj = adjustments(&Flavour::OpenMpi { major: 4 }, &root);
        assert!(adj.args.is_empty());
        assert!(adj.env_defaults.contains(&("OMPI_ALLOW_RUN_AS_ROOT".into(), "1".into())));
        assert!(adj.env_defaults.contains(&("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM".into(), "1".into())));
        let adj = adjustments(&Flavour::OpenMpi { major: 2 }, &root);
        assert_eq!(adj.args, ["--allow-run-as-root"]);
        let user = LaunchSite::default();
        assert_eq!(adjustments(&Flavour::OpenMpi { major: 4 }, &user), Adjustments::default());
    }

    #[test]
    fn intel_mpi_bootstrap_and_fabric() {
        let laptop = LaunchSite::default();
        let adj = adjustments(&Flavour::IntelMpi, &laptop);
        assert!(adj.env_defaults.contains(&("I_MPI_HYDRA_BOOTSTRAP".into(), "fork".into())));
        assert!(adj.env_defaults.contains(&("FI_PROVIDER".into(), "tcp".into())));
        let cluster = LaunchSite { in_slurm: true, infiniband: true, ..Default::default() };
        assert!(adjustments(&Flavour::IntelMpi, &cluster).env_defaults.is_empty());
    }

    #[test]
    fn finds_the_program() {
        assert_eq!(program_index(&strings(&["-np", "4", "./hello"])), Some(2));
        assert_eq!(program_index(&strings(&["./hello", "-n", "3"])), Some(0));
        assert_eq!(program_index(&strings(&["-n", "2", "--mca", "btl", "self,vader", "hello"])), Some(5));
        assert_eq!(program_index(&strings(&["-genv", "A", "1", "-ppn=2", "--oversubscribe", "x"])), Some(5));
        assert_eq!(program_index(&strings(&["--map-by=node", "-x", "FOO", "a.out"])), Some(3));
        assert_eq!(program_index(&strings(&["--weird-option", "a.out"])), None);
        assert_eq!(program_index(&strings(&["-n", "2"])), None);
        assert_eq!(program_index(&strings(&["-l", "./a.out"])), Some(1));
    }
}
