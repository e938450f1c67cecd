//! `mpiexec_docker man [PAGE | --dir DIR]`: the manual pages, made from the same definitions as
//! `--help` (the helper's clap arguments through clap_mangen; the plugin's option, plugstack-key and
//! environment tables of the core library), so that they cannot drift from the code.
//!
//! Pages: `mpiexec_docker.1`, `run_in_docker.1`, `spank_mpiexec_docker.8`.

use std::io::Write;

use clap::CommandFactory;
use mpiexec_docker_core::container_options::{env_name, OPTIONS};
use mpiexec_docker_core::plugstack::KEY_DOCS;

use crate::cli::Cli;

pub const PAGES: &[(&str, &str)] = &[("mpiexec_docker", "1"), ("run_in_docker", "1"), ("spank_mpiexec_docker", "8")];

pub fn main(args: &[String]) -> i32 {
    match args {
        [flag, dir] if flag == "--dir" => {
            for (name, section) in PAGES {
                let path = std::path::Path::new(dir).join(format!("{name}.{section}"));
                if let Err(e) = std::fs::write(&path, page(name)) {
                    mpiexec_docker_core::say_error!("cannot write {}: {e}", path.display());
                    return 1;
                }
            }
            0
        }
        [name] if PAGES.iter().any(|(n, _)| n == name) => {
            let _ = std::io::stdout().write_all(page(name).as_bytes());
            0
        }
        _ => {
            let names: Vec<&str> = PAGES.iter().map(|(n, _)| *n).collect();
            mpiexec_docker_core::say_error!("usage: mpiexec_docker man {} | --dir DIR", names.join("|"));
            2
        }
    }
}

/// One page's roff text.
pub fn page(name: &str) -> String {
    match name {
        "spank_mpiexec_docker" => plugin_page(),
        other => helper_page(other),
    }
}

/// Escapes text for roff (backslashes, leading dots and quotes, hyphens).
fn esc(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    match t.starts_with(['.', '\'']) {
        true => format!("\\&{t}"),
        false => t,
    }
}

fn helper_page(name: &str) -> String {
    let name: &'static str = if name == "run_in_docker" { "run_in_docker" } else { "mpiexec_docker" };
    let mut cmd = Cli::command().name(name).bin_name(name);
    if name == "run_in_docker" {
        cmd = cmd.about("Run one program inside a Podman/Docker container image, like a bare-metal Slurm task");
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out).expect("writing to memory");
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if name == "mpiexec_docker" {
        text.push_str(
            ".SH COMMANDS\n\
             .TP\n\\fBmpiexec_docker images\\fR [\\fBprune\\fR | \\fBremove\\-container\\fR NAME] [\\fB\\-\\-engine\\fR podman|docker]\n\
             What the tool fetched into this node's store for you, and the named containers kept there \
             (plugstack \\fBcontainer_scope=global\\fR); \\fBprune\\fR removes the first, \
             \\fBremove\\-container\\fR one of the second.\n\
             .TP\n\\fBmpiexec_docker doctor\\fR [\\fB\\-\\-image\\fR IMAGE] [\\fB\\-\\-plugstack\\fR FILE] [\\fB\\-\\-json\\fR]\n\
             Checks this node for running containers as you, one line per check (ok, warn, fail, and the fix); \
             exit status 1 when a check failed. \\fBsrun \\-N3 mpiexec_docker doctor\\fR checks three nodes.\n\
             .TP\n\\fBmpiexec_docker \\-\\-version\\fR\n\
             This build, the plugin Slurm loads on this node and the Slurm release it was built for, the engines found.\n",
        );
    }
    text.push_str(&format!(
        ".SH ENVIRONMENT\n\
         .TP\n\\fBMPIEXEC_DOCKER_ENGINE\\fR\npodman or docker, as \\fB\\-\\-engine\\fR.\n\
         .TP\n\\fBMPIEXEC_DOCKER_CONFIG\\fR\nA configuration file read instead of the user's.\n\
         .TP\n\\fBRUST_LOG\\fR\nLogging (warn by default; \\fB\\-v\\fR info, \\fB\\-vv\\fR debug).\n\
         .PP\nMPI, PMI, Slurm, fabric and GPU variables of the host go into the container by their prefixes \
         (SLURM_, PMI_, PMIX_, OMPI_, UCX_, FI_, CUDA_, NCCL_, ...); \\fB\\-e\\fR adds others.\n\
         .SH FILES\n\
         .TP\n\\fI/etc/mpiexec\\-docker/config.yaml\\fR\nThe site's configuration.\n\
         .TP\n\\fI~/.config/mpiexec\\-docker/config.yaml\\fR\nThe user's configuration (values the site allows).\n\
         .TP\n\\fI/etc/cdi\\fR, \\fI/var/run/cdi\\fR\nCDI specs: GPUs come with their driver's libraries.\n\
         .SH EXIT STATUS\n\
         The program's own status; 125 when the container could not be started; 127 when the image has no MPI \
         or the program is not found; 2 for bad options or configuration.\n\
         .SH EXAMPLES\n\
         .nf\n{}\n.fi\n\
         .SH SEE ALSO\n\\fB{}\\fR(1), \\fBspank_mpiexec_docker\\fR(8), \\fBsrun\\fR(1), \\fBpodman\\-run\\fR(1)\n",
        match name {
            "run_in_docker" => "run_in_docker localhost/md\\-mpich mpicc \\-o hello hello.c\n\
                                run_in_docker \\-\\-gpus 0 nvcr.io/nvidia/cuda:12.4.1\\-base\\-ubuntu22.04 nvidia\\-smi",
            _ => "mpiexec_docker docker.io/library/openmpi:latest \\-np 4 ./hello\n\
                  sbatch \\-N3 \\-n6 \\-\\-wrap \\(aqmpiexec_docker ./images/app.tar ./solver input\\(aq",
        },
        if name == "run_in_docker" { "mpiexec_docker" } else { "run_in_docker" }
    ));
    text
}

fn plugin_page() -> String {
    let mut t = format!(
        ".TH SPANK_MPIEXEC_DOCKER 8 \"\" \"mpiexec\\-docker {}\" \"Slurm plugins\"\n\
         .SH NAME\nspank_mpiexec_docker \\- run Slurm tasks in Podman or Docker containers (a SPANK plugin)\n\
         .SH SYNOPSIS\n\
         In \\fIplugstack.conf\\fR:\n.PP\n\
         \\fBrequired\\fR \\fI/usr/lib/x86_64\\-linux\\-gnu/slurm\\-wlm/spank_mpiexec_docker.so\\fR [\\fIKEY\\fR=\\fIVALUE\\fR ...]\n\
         .PP\n\\fBsrun\\fR|\\fBsbatch\\fR|\\fBsalloc\\fR \\fB\\-\\-container\\-image\\fR=\\fIIMAGE\\fR [\\fIOPTIONS\\fR] ...\n\
         .SH DESCRIPTION\n\
         The plugin adds pyxis's container options to srun, sbatch and salloc. Each step with \
         \\fB\\-\\-container\\-image\\fR gets one container per node, started by the helper \\fBmpiexec_docker\\fR(1); \
         the step's tasks join it and stay Slurm's processes: in the step's cgroups, with its limits, \
         accounting, signals and exit codes. The GPUs Slurm allocated go in (through the node's CDI specs \
         when there are), and nothing is left when the step or job ends.\n\
         .SH OPTIONS\n",
        env!("CARGO_PKG_VERSION")
    );
    for def in OPTIONS {
        let arg = def.arginfo.map(|a| format!("=\\fI{}\\fR", esc(a))).unwrap_or_default();
        t.push_str(&format!(
            ".TP\n\\fB\\-\\-{}\\fR{arg}\n{}\n",
            esc(def.name),
            esc(def.usage.trim_start_matches("[mpiexec-docker] "))
        ));
    }
    t.push_str(".SH PLUGSTACK ARGUMENTS\nEach argument is one \\fIKEY\\fR=\\fIVALUE\\fR word; an unknown key or a bad value fails every job with a line naming it.\n");
    for (key, value, doc) in KEY_DOCS {
        t.push_str(&format!(".TP\n\\fB{}\\fR=\\fI{}\\fR\n{}\n", esc(key), esc(value), esc(doc)));
    }
    t.push_str(".SH ENVIRONMENT\nA job's environment gives defaults for options not on the command line:\n");
    let mut seen = Vec::new();
    for def in OPTIONS {
        let var = env_name(def.name);
        if !seen.contains(&var) {
            t.push_str(&format!(
                ".TP\n\\fB{}\\fR, \\fB{}\\fR\nfor \\fB\\-\\-{}\\fR (pyxis's name too; ours wins where both are set)\n",
                esc(&var),
                esc(&mpiexec_docker_core::container_options::pyxis_env_name(def.name)),
                esc(def.name.trim_start_matches("no-"))
            ));
            seen.push(var);
        }
    }
    t.push_str(
        ".SH FILES\n\
         .TP\n\\fI/etc/slurm/plugstack.conf.d/mpiexec\\-docker.conf\\fR\nThe plugstack line the package installs, commented out.\n\
         .TP\n\\fI/etc/mpiexec\\-docker/config.yaml\\fR\nThe site configuration (engine, pull policy, mounts, devices, CDI, cache size).\n\
         .TP\n\\fI/run/mpiexec\\-docker\\fR\nPer-user run directories, made by the plugin as root.\n\
         .SH EXIT STATUS\n\
         A step whose container cannot be started fails with one line saying why (the tasks do not run); \
         the node is never drained for it. Otherwise a task's exit status is its program's.\n\
         .SH EXAMPLES\n.nf\n\
         srun \\-N2 \\-n8 \\-\\-container\\-image=docker.io/library/ubuntu:24.04 hostname\n\
         srun \\-\\-gres=gpu:2 \\-\\-container\\-image=nvcr.io/nvidia/pytorch:24.05\\-py3 python train.py\n\
         sbatch \\-N3 \\-\\-container\\-image=./images/app.tar job.sh\n\
         mpiexec_docker doctor\n\
         .fi\n\
         .SH SEE ALSO\n\\fBmpiexec_docker\\fR(1), \\fBrun_in_docker\\fR(1), \\fBspank\\fR(8), \\fBsrun\\fR(1)\n",
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_name_every_option_and_key() {
        let helper = page("mpiexec_docker");
        assert!(helper.starts_with(".ie") || helper.contains(".TH mpiexec_docker 1"), "{helper}");
        for flag in ["\\-\\-engine", "\\-\\-gpus", "\\-\\-pull", "EXIT STATUS", "doctor"] {
            assert!(helper.contains(flag), "{flag} missing");
        }
        assert!(page("run_in_docker").contains(".TH run_in_docker 1"));
        let plugin = page("spank_mpiexec_docker");
        for def in OPTIONS {
            assert!(plugin.contains(&format!("\\fB\\-\\-{}\\fR", esc(def.name))), "{} missing", def.name);
        }
        for (key, _, _) in KEY_DOCS {
            assert!(plugin.contains(&format!("\\fB{}\\fR=", esc(key))), "{key} missing");
        }
    }
}
