//! Turning a relayed `srun …` or `ssh HOST CMD` into the host's command line, with the remote program
//! started through `run_in_docker` so that it runs in the same image on the remote node.
//!
//! - srun: `run_in_docker [OPTS] IMAGE --` goes before the first word that is an MPI launch daemon
//!   (`orted`, `prted`, `hydra_pmi_proxy`, `hydra_bstrap_proxy`, `pmi_proxy`), else before the first
//!   word that is not an srun option or an option's value.
//! - ssh/rsh: the remote command is one shell string (MPICH quotes the proxy path, Open MPI embeds
//!   `orted` in a longer string), so the whole string runs in the container:
//!   `run_in_docker [OPTS] IMAGE -- sh -c 'STRING'`, quoted for the remote shell.

use std::path::Path;

use thiserror::Error;

/// `run_in_docker --engine E [-e VAR]… [-m MOUNT]… IMAGE --`: what goes before a remote program so that
/// it runs in the same image, with the same variables and mounts. `helper` is the host's helper binary
/// (run_in_docker is its link beside it).
pub fn run_in_docker_prefix(
    helper: &Path,
    engine: crate::engine::EngineKind,
    env: &[String],
    mounts: &[String],
    image: &str,
) -> Vec<String> {
    let mut wrap = vec![helper.with_file_name("run_in_docker").display().to_string()];
    wrap.extend(["--engine".to_string(), engine.command().to_string()]);
    for e in env {
        wrap.extend(["-e".to_string(), e.clone()]);
    }
    for m in mounts {
        wrap.extend(["-m".to_string(), m.clone()]);
    }
    wrap.extend([image.to_string(), "--".into()]);
    wrap
}

/// The launch daemons of the MPI implementations.
pub const DAEMONS: &[&str] = &["orted", "prted", "hydra_pmi_proxy", "hydra_bstrap_proxy", "pmi_proxy"];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("'{command}' may not be relayed to the host (relayable: {allowed}); set relay_commands in the config to change that")]
    NotRelayable { command: String, allowed: String },
}

/// srun options (short and long) that take their value as the next word.
const SRUN_VALUE_OPTS: &[&str] = &[
    "-A",
    "-B",
    "-b",
    "-C",
    "-c",
    "-D",
    "-d",
    "-e",
    "-G",
    "-i",
    "-J",
    "-L",
    "-M",
    "-m",
    "-N",
    "-n",
    "-o",
    "-p",
    "-q",
    "-r",
    "-S",
    "-T",
    "-t",
    "-W",
    "-w",
    "-x",
    "--account",
    "--acctg-freq",
    "--begin",
    "--chdir",
    "--clusters",
    "--comment",
    "--constraint",
    "--core-spec",
    "--cores-per-socket",
    "--cpu-bind",
    "--cpu-freq",
    "--cpus-per-gpu",
    "--cpus-per-task",
    "--deadline",
    "--delay-boot",
    "--dependency",
    "--distribution",
    "--epilog",
    "--error",
    "--exclude",
    "--export",
    "--gid",
    "--gpu-bind",
    "--gpu-freq",
    "--gpus",
    "--gpus-per-node",
    "--gpus-per-socket",
    "--gpus-per-task",
    "--gres",
    "--gres-flags",
    "--hint",
    "--input",
    "--job-name",
    "--jobid",
    "--licenses",
    "--mail-type",
    "--mail-user",
    "--mem",
    "--mem-bind",
    "--mem-per-cpu",
    "--mem-per-gpu",
    "--mincpus",
    "--mpi",
    "--network",
    "--nodefile",
    "--nodelist",
    "--nodes",
    "--ntasks",
    "--ntasks-per-core",
    "--ntasks-per-gpu",
    "--ntasks-per-node",
    "--ntasks-per-socket",
    "--open-mode",
    "--output",
    "--partition",
    "--power",
    "--prolog",
    "--qos",
    "--relative",
    "--reservation",
    "--signal",
    "--slurmd-debug",
    "--sockets-per-node",
    "--switches",
    "--task-epilog",
    "--task-prolog",
    "--thread-spec",
    "--threads-per-core",
    "--time",
    "--time-min",
    "--tmp",
    "--uid",
    "--wait",
    "--wckey",
    "--het-group",
    "--cluster-constraint",
    "--container",
    "--mcs-label",
];

/// The index of srun's program in `args` (argv without `argv[0]`).
pub fn srun_program_index(args: &[String]) -> Option<usize> {
    if let Some(i) = args.iter().position(|a| DAEMONS.contains(&basename(a))) {
        return Some(i);
    }
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if !a.starts_with('-') || a == "-" {
            return Some(i);
        }
        if a == "--" {
            return (i + 1 < args.len()).then_some(i + 1);
        }
        i += if !a.contains('=') && SRUN_VALUE_OPTS.contains(&a) { 2 } else { 1 };
    }
    None
}

fn basename(a: &str) -> &str {
    Path::new(a).file_name().and_then(|n| n.to_str()).unwrap_or(a)
}

/// Checks that `argv[0]` names a relayable command; returns that name.
pub fn relayable<'a>(argv0: &'a str, allowed: &[String]) -> Result<&'a str, RewriteError> {
    let name = basename(argv0);
    if allowed.iter().any(|a| a == name) {
        Ok(name)
    } else {
        Err(RewriteError::NotRelayable { command: name.into(), allowed: allowed.join(", ") })
    }
}

/// `srun ARGS` → the host's srun arguments, with `wrap` (run_in_docker, its options, IMAGE, "--")
/// before the program.
pub fn rewrite_srun(args: &[String], wrap: &[String]) -> Vec<String> {
    match srun_program_index(args) {
        Some(i) => {
            let mut out = args[..i].to_vec();
            out.extend(wrap.iter().cloned());
            out.extend(args[i..].iter().cloned());
            out
        }
        None => args.to_vec(),
    }
}

/// ssh options that take a value.
const SSH_VALUE_OPTS: &[&str] = &[
    "-B", "-b", "-c", "-D", "-E", "-e", "-F", "-I", "-i", "-J", "-L", "-l", "-m", "-O", "-o", "-p", "-Q", "-R", "-S",
    "-W", "-w",
];

/// `ssh [OPTS] HOST CMD…` → ssh arguments running CMD through `wrap` on HOST.
pub fn rewrite_ssh(args: &[String], wrap: &[String]) -> Vec<String> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if !a.starts_with('-') {
            break;
        }
        i += if SSH_VALUE_OPTS.contains(&a) { 2 } else { 1 };
    }
    // args[i] is the host; the rest is the remote command
    if i + 1 >= args.len() {
        return args.to_vec();
    }
    let command = args[i + 1..].join(" ");
    let mut remote: Vec<String> = wrap.to_vec();
    remote.extend(["sh".to_string(), "-c".to_string(), command]);
    let mut out = args[..=i].to_vec();
    out.push(remote.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "));
    out
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    const WRAP: &[&str] = &["/usr/local/bin/run_in_docker", "localhost/img", "--"];

    #[test]
    fn open_mpi_orted() {
        let args = s(&[
            "--ntasks-per-node=1",
            "--kill-on-bad-exit",
            "--nodes=2",
            "--nodelist=node2,node3",
            "--ntasks=2",
            "orted",
            "-mca",
            "ess",
            "slurm",
        ]);
        let out = rewrite_srun(&args, &s(WRAP));
        assert_eq!(&out[5..8], &s(WRAP)[..]);
        assert_eq!(out[8], "orted");
    }

    #[test]
    fn hydra_proxy_with_separate_values() {
        let args = s(&[
            "-N",
            "2",
            "-n",
            "2",
            "--nodelist",
            "node1,node2",
            "--input",
            "none",
            "/usr/bin/hydra_pmi_proxy",
            "--control-port",
            "node1:1",
        ]);
        let out = rewrite_srun(&args, &s(WRAP));
        assert_eq!(out[8], "/usr/local/bin/run_in_docker");
        assert_eq!(out[11], "/usr/bin/hydra_pmi_proxy");
    }

    #[test]
    fn any_program() {
        let out = rewrite_srun(&s(&["-n", "2", "-l", "hostname"]), &s(WRAP));
        assert_eq!(out, s(&["-n", "2", "-l", "/usr/local/bin/run_in_docker", "localhost/img", "--", "hostname"]));
        assert_eq!(rewrite_srun(&s(&["--version"]), &s(WRAP)), s(&["--version"]));
    }

    #[test]
    fn ssh_runs_the_whole_remote_string_in_the_container() {
        let args = s(&["-x", "-p", "22", "node2", "\"/usr/bin/hydra_pmi_proxy\"", "--control-port", "node1:1"]);
        let out = rewrite_ssh(&args, &s(WRAP));
        assert_eq!(&out[..4], &s(&["-x", "-p", "22", "node2"])[..]);
        assert_eq!(
            out[4],
            r#"/usr/local/bin/run_in_docker localhost/img -- sh -c '"/usr/bin/hydra_pmi_proxy" --control-port node1:1'"#
        );
        assert_eq!(rewrite_ssh(&s(&["node2"]), &s(WRAP)), s(&["node2"]), "a login without a command is left alone");
    }

    #[test]
    fn only_allowed_commands() {
        let allowed = s(&["srun", "ssh"]);
        assert_eq!(relayable("/.mpiexec-docker/bin/srun", &allowed), Ok("srun"));
        let err = relayable("scancel", &allowed).unwrap_err();
        assert!(err.to_string().contains("'scancel' may not be relayed"), "{err}");
    }
}
