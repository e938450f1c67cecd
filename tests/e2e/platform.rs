//! Platform: the SPANK plugin loads in every Slurm context of the real cluster, registers its option,
//! leaves plain jobs alone, rejects a bad plugstack.conf argument by name, and matches the running
//! Slurm's version.

mod common;
use common::*;

#[test]
fn option_shows_in_srun_sbatch_and_salloc_help() {
    cluster();
    for who in [As::Root, As::User] {
        for tool in ["srun", "sbatch", "salloc"] {
            let run = sh(who, &format!("{tool} --help")).success();
            assert!(
                run.stdout.contains("--container-image=") && run.stdout.contains("[mpiexec-docker]"),
                "{tool} --help as {} lacks --container-image: {run}",
                who.name()
            );
        }
    }
}

#[test]
fn plain_steps_still_run_on_all_three_nodes() {
    cluster();
    for who in [As::Root, As::User] {
        let run = sh(who, "srun -N3 -n3 hostname").success();
        let mut hosts = run.lines();
        hosts.sort();
        assert_eq!(hosts, ["node1", "node2", "node3"], "{run}");
        // and a batch job (sbatch context, then slurmstepd for the batch step)
        let run = sbatch(who, "-N3 -n3", "srun hostname | sort | tr '\\n' ' '");
        assert!(run.ok() && run.stdout.contains("node1 node2 node3"), "{run}");
    }
}

/// A copy of slurm.conf whose plugstack.conf gives the plugin `words`; only srun reads it.
fn slurm_conf_with_plugstack(tag: &str, words: &str) -> String {
    let conf = std::fs::read_to_string("/etc/slurm/slurm.conf").unwrap();
    let plugstack = shared_file(&format!("plugstack-{tag}.conf"), &format!("required {PLUGIN} {words}\n"));
    let conf: String = conf
        .lines()
        .map(|l| if l.starts_with("PlugStackConfig=") { format!("PlugStackConfig={plugstack}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    shared_file(&format!("slurm-{tag}.conf"), &(conf + "\n"))
}

#[test]
fn bad_plugstack_argument_fails_with_its_name() {
    cluster();
    let conf = slurm_conf_with_plugstack("bad-key", "engine=podman enigne=docker");
    for tool in ["srun -n1 true", "sbatch --wrap true"] {
        let run = sh(As::User, &format!("SLURM_CONF={conf} {tool}"));
        assert!(!run.ok(), "a bad plugstack argument must stop {tool}: {run}");
        assert!(
            run.stderr.contains("unknown plugstack.conf argument 'enigne'"),
            "the error must name the bad argument: {run}"
        );
    }
    let conf = slurm_conf_with_plugstack("bad-value", "engine=lxc");
    let run = sh(As::User, &format!("SLURM_CONF={conf} srun -n1 true"));
    assert!(!run.ok() && run.stderr.contains("engine=lxc"), "{run}");
    // the nodes were never touched: none is drained (other tests' jobs may be running, planned or
    // completing on them meanwhile)
    assert_no_node_drained();
}

#[test]
fn good_plugstack_arguments_are_accepted() {
    cluster();
    let conf = slurm_conf_with_plugstack(
        "good",
        "engine=docker helper=/usr/local/bin/mpiexec_docker config=/etc/mpiexec-docker/config.yaml mounts=/a:/a,/b:/b:ro sbatch_support=0",
    );
    let run = sh(As::User, &format!("SLURM_CONF={conf} srun -n1 -N1 hostname")).success();
    assert!(run.stdout.starts_with("node"), "{run}");
}

#[test]
fn plugin_version_matches_running_slurm() {
    cluster();
    // what the installed plugin says, read the way Slurm's loader reads it
    // Slurm's commands carry the SPANK API in libslurmfull; load it first, as srun has it loaded.
    let ldd = sh(As::Root, "ldd $(command -v srun) | awk '/libslurmfull/ {print $3}'").success();
    let libslurm = std::ffi::CString::new(ldd.stdout.trim()).unwrap();
    let path = std::ffi::CString::new(PLUGIN).unwrap();
    // SAFETY: dlopen/dlsym of Slurm's library and of the plugin; no plugin code runs at load time.
    let built = unsafe {
        assert!(!libc::dlopen(libslurm.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null(), "{ldd}");
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        assert!(!lib.is_null(), "dlopen {PLUGIN} failed");
        for sym in [c"plugin_name", c"plugin_type", c"plugin_version", c"slurm_spank_init"] {
            assert!(!libc::dlsym(lib, sym.as_ptr()).is_null(), "{PLUGIN} lacks {sym:?}");
        }
        assert!(libc::dlsym(lib, c"spank_prepend_task_argv".as_ptr()).is_null());
        let version = libc::dlsym(lib, c"plugin_version".as_ptr()) as *const u32;
        *version
    };
    let running = sh(As::Root, "srun --version").success();
    let running = mpiexec_docker_core::slurm_version::SlurmVersion::parse(&running.stdout).expect("srun --version");
    let built = mpiexec_docker_core::slurm_version::SlurmVersion(built);
    assert!(built.plugin_compatible_with(running), "plugin built for {built}, Slurm runs {running}");
    // and the plugin does not import spank_prepend_task_argv (absent before 23.11): it is looked up at run time
    let run = sh(As::Root, &format!("nm -D --undefined-only {PLUGIN}")).success();
    assert!(!run.stdout.contains("spank_prepend_task_argv"), "{run}");
}

#[test]
fn helper_is_a_static_binary() {
    let run = sh(As::Root, &format!("file -L {HELPER}; ldd {HELPER} 2>&1 || true")).success();
    assert!(
        run.stdout.contains("static") && !run.stdout.contains("libc.so"),
        "the helper must not depend on the image's libc: {run}"
    );
}
