//! The SPANK plugin's `--container-image`: tasks run in the image and stay Slurm's tasks (exit codes,
//! signals, cgroups), one container per node per step, MPI direct launch, clear errors that never drain
//! a node, and nothing left behind; as root (rootful Podman) and as the test user (rootless Podman).

mod common;
use common::*;

const OPENMPI: &str = "localhost/md-openmpi";
const MPICH: &str = "localhost/md-mpich";

#[test]
fn tasks_run_in_the_image_on_every_node() {
    let _g = shared();
    for (who, uid) in [(As::User, "1500"), (As::Root, "0")] {
        let run = sh(who, &format!("srun --container-image={OPENMPI} -N3 -n3 sh -c 'echo $(hostname) $(id -u) $(pwd) $(ls /usr/local/bin/mpi_hello)'"))
            .success();
        let mut lines = run.lines();
        lines.sort();
        let want: Vec<String> = NODES.iter().map(|n| format!("{n} {uid} {SHARED} /usr/local/bin/mpi_hello")).collect();
        assert_eq!(lines, want, "{run}");
    }
}

#[test]
fn open_mpi_direct_launch_with_pmix() {
    let _g = shared();
    for who in [As::User, As::Root] {
        let run = sh(who, &format!("srun --mpi=pmix --container-image={OPENMPI} -N3 -n6 mpi_hello")).success();
        assert_hello_from_every_rank(&run, 6);
    }
}

/// Hello lines of an MPI run, sorted: one per rank of `n`, and every node holds one.
fn assert_hello_from_every_rank(run: &Run, n: usize) {
    let mut lines: Vec<String> = run.lines().into_iter().filter(|l| l.starts_with("Hello")).collect();
    lines.sort();
    assert_eq!(lines.len(), n, "{run}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("Hello from rank {i} of {n} on node")), "{run}");
    }
    for node in NODES {
        assert!(lines.iter().any(|l| l.contains(&format!(" on {node} "))), "no rank on {node}: {run}");
    }
}

#[test]
fn mpich_direct_launch_with_pmi2_as_root_and_user() {
    let _g = shared();
    // MPICH takes its PMI-2 socket from PMI_FD, which the task keeps in the container. (UCX_TLS: the
    // test nodes share one kernel, see README "The test cluster".)
    for who in [As::User, As::Root] {
        let run = sh(who, &format!("UCX_TLS=self,tcp srun --mpi=pmi2 --container-image={MPICH} -N3 -n6 mpi_hello"));
        assert_hello_from_every_rank(&run.success(), 6);
    }
}

#[test]
fn exit_codes_and_signals_are_the_tasks_own() {
    let _g = shared();
    for who in [As::User, As::Root] {
        let run = sh(who, &format!("srun --container-image={OPENMPI} -n1 sh -c 'exit 7'"));
        assert_eq!(run.code, Some(7), "{run}");
        let bare = sh(who, "srun -n1 sh -c 'kill -TERM $$'");
        let run = sh(who, &format!("srun --container-image={OPENMPI} -n1 sh -c 'kill -TERM $$'"));
        assert_eq!(run.code, bare.code, "a task killed by SIGTERM ends as a bare one does: {run}");
        assert!(run.stderr.contains("Terminated"), "{run}");
    }
}

#[test]
fn one_container_per_node_per_step_in_the_step_cgroup() {
    let _g = shared();
    let run = sh(
        As::User,
        &format!(
            "srun --container-image={MPICH} -N1 -n4 sh -c 'readlink /proc/self/ns/mnt; grep memory /proc/self/cgroup'"
        ),
    )
    .success();
    let lines = run.lines();
    let mnt: std::collections::BTreeSet<&String> = lines.iter().filter(|l| l.starts_with("mnt:")).collect();
    assert_eq!(mnt.len(), 1, "the 4 tasks share one container: {run}");
    let host_mnt = sh(As::User, "readlink /proc/self/ns/mnt").success();
    assert!(!mnt.contains(&host_mnt.stdout.trim().to_string()), "and it is not the host's: {run}");
    let cgroups: Vec<&String> = lines.iter().filter(|l| l.contains(":memory:")).collect();
    assert_eq!(cgroups.len(), 4, "{run}");
    for c in cgroups {
        assert!(c.contains("/uid_1500/job_") && c.contains("/step_0/task_"), "tasks stay in the step's cgroup: {run}");
    }
}

#[test]
fn a_memory_limit_kills_like_a_bare_task() {
    let _g = shared();
    let run = sh(
        As::User,
        &format!("srun --mem=60M --container-image={OPENMPI} -n1 sh -c 'head -c 400M /dev/zero | tail > /dev/null'"),
    );
    assert!(!run.ok(), "{run}");
    assert!(run.stderr.contains("Out Of Memory") || run.stderr.contains("oom-kill"), "{run}");
}

#[test]
fn bad_images_fail_the_step_clearly_and_drain_nothing() {
    let _g = shared();
    // rejected at submit time, before any node is used
    let run = sh(As::User, "srun --container-image='img --privileged' -n1 true");
    assert!(!run.ok() && run.stderr.contains("not a valid image name"), "{run}");
    // a name no registry would take (upper case): the reference grammar refuses it there and then
    let run = sh(As::User, "srun --container-image=Ubuntu:22.04 -n1 true");
    assert!(!run.ok() && run.stderr.contains("not a valid image reference"), "{run}");
    assert!(!run.stderr.contains("slurmstepd"), "no node was used: {run}");
    // an image no node can get fails on the node, once per task, naming the image
    let run = sh(As::User, "srun --container-image=localhost/no-such-image -N2 -n2 true");
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("--container-image=localhost/no-such-image: cannot pull image"), "{run}");
    let run = sh(As::User, "sbatch --wait -o /dev/null --container-image=localhost/no-such-image --wrap true");
    assert!(!run.ok(), "{run}");
    assert_no_node_drained();
}

#[test]
fn sbatch_runs_the_batch_script_in_the_image() {
    let _g = shared();
    let run = sbatch(As::User, &format!("-N1 -n1 --container-image={OPENMPI}"), "ls /usr/local/bin/mpi_hello; id -u");
    assert!(run.ok(), "{run}");
    assert_eq!(run.lines(), ["/usr/local/bin/mpi_hello", "1500"], "{run}");
}

#[test]
fn scancel_leaves_nothing() {
    let _g = exclusive();
    let job = sh(
        As::User,
        &format!(
            "cd {SHARED} && sbatch --parsable -N3 -n3 -o /dev/null --wrap 'srun --container-image={OPENMPI} sleep 120'"
        ),
    )
    .success();
    let job = job.stdout.trim().to_string();
    assert!(wait_for(30, || job_containers_on_every_node(&job)), "the step's containers never ran on all nodes");
    sh(As::Root, &format!("scancel {job}")).success();
    assert_clean_within(20);
    assert_no_node_drained();
}

#[test]
fn kill_9_of_the_tasks_leaves_nothing() {
    let _g = exclusive();
    let job = sh(As::User, &format!("cd {SHARED} && sbatch --parsable -N1 -w node2 -n1 -o /dev/null --wrap 'srun --container-image={OPENMPI} sleep 120'"))
        .success();
    let job = job.stdout.trim().to_string();
    let mut pid = String::new();
    let started = wait_for(30, || {
        pid = sh(As::Root, "pgrep -u 1500 -x sleep | head -1").stdout.trim().to_string();
        !pid.is_empty()
    });
    assert!(started, "the task never started");
    sh(As::Root, &format!("kill -9 {pid}")).success();
    wait_for(30, || sh(As::Root, &format!("squeue -h -j {job}")).stdout.trim().is_empty());
    assert_clean_within(20);
    assert_no_node_drained();
}

#[test]
fn companion_options_mounts_workdir_env_remap_root_readonly() {
    let _g = shared();
    let src = format!("{SHARED}/plugin-mount-src");
    sh(As::Root, &format!("rm -rf {src} && mkdir -p {src} && echo from-host > {src}/file && chown -R {USER} {src}"))
        .success();
    let run = sh(
        As::User,
        &format!(
            "srun --container-image={OPENMPI} --container-mounts={src}:/data:ro --container-workdir=/data -n1 \
             sh -c 'pwd; cat file; touch new 2>/dev/null || echo read-only'"
        ),
    )
    .success();
    assert_eq!(run.lines(), ["/data", "from-host", "read-only"], "{run}");

    // the image's environment applies to the tasks; --container-env lets the job's value win
    let run =
        sh(As::User, &format!("MD_IMAGE_FLAVOUR=host srun --container-image={OPENMPI} -n1 printenv MD_IMAGE_FLAVOUR"))
            .success();
    assert_eq!(run.stdout.trim(), "openmpi", "{run}");
    let run = sh(
        As::User,
        &format!("MD_IMAGE_FLAVOUR=host srun --container-image={OPENMPI} --container-env=MD_IMAGE_FLAVOUR -n1 printenv MD_IMAGE_FLAVOUR"),
    )
    .success();
    assert_eq!(run.stdout.trim(), "host", "{run}");

    // root inside, mapped to the user: no host privilege (files made as "root" belong to the user)
    let dir = format!("{SHARED}/plugin-remap");
    sh(As::Root, &format!("rm -rf {dir} && mkdir -p {dir} && chown {USER} {dir}")).success();
    let run = sh_in(
        As::User,
        &dir,
        &format!("srun --container-image={OPENMPI} --container-remap-root -n1 sh -c 'id -u; touch made'"),
    )
    .success();
    assert_eq!(run.stdout.trim(), "0", "{run}");
    let owner = sh(As::Root, &format!("stat -c %U {dir}/made")).success();
    assert_eq!(owner.stdout.trim(), USER, "{owner}");

    // read-only root file system
    let run = sh(As::User, &format!("srun --container-image={OPENMPI} --container-readonly -n1 sh -c 'touch /etc/x 2>/dev/null || echo read-only'"))
        .success();
    assert_eq!(run.stdout.trim(), "read-only", "{run}");

    // environment defaults
    let run =
        sh(As::User, &format!("MPIEXEC_DOCKER_CONTAINER_IMAGE={MPICH} srun -n1 ls /usr/bin/mpichversion")).success();
    assert_eq!(run.stdout.trim(), "/usr/bin/mpichversion", "{run}");
    // pyxis's names for them, as a job script written for pyxis sets them; ours wins where both are set
    let flavour =
        r#"sh -c 'echo $MD_IMAGE_FLAVOUR $(awk "\$2 == \"/\" { print substr(\$4, 1, 2) }" /proc/mounts | tail -1)'"#;
    let run = sh(As::User, &format!("PYXIS_CONTAINER_IMAGE={OPENMPI} PYXIS_CONTAINER_READONLY=y srun -n1 {flavour}"))
        .success();
    assert_eq!(run.stdout.trim(), "openmpi ro", "{run}");
    let run = sh(
        As::User,
        &format!("PYXIS_CONTAINER_IMAGE={OPENMPI} MPIEXEC_DOCKER_CONTAINER_IMAGE={MPICH} srun -n1 {flavour}"),
    )
    .success();
    assert_eq!(run.stdout.trim(), "mpich rw", "{run}");
}

#[test]
fn bad_companion_options_are_rejected_at_submit_time() {
    let _g = shared();
    for (opt, says) in [
        ("--container-mounts=relative:/x", "--container-mounts: mount 'relative:/x'"),
        ("--container-workdir=data", "--container-workdir: 'data' is not an absolute path"),
        ("--container-env=A-B", "--container-env: 'A-B' is not a variable name"),
    ] {
        for (tool, tail) in [("srun -n1", "true"), ("sbatch -o /dev/null", "--wrap true")] {
            let run = sh(As::User, &format!("{tool} {opt} --container-image={OPENMPI} {tail}"));
            assert!(!run.ok() && run.stderr.contains(says), "{tool} {opt}: {run}");
        }
    }
    // the same for a bad default from the environment: refused by srun/sbatch itself, not on a node
    for (tool, tail) in [("srun -n1", "true"), ("sbatch -o /dev/null", "--wrap true")] {
        let run = sh(
            As::User,
            &format!("MPIEXEC_DOCKER_CONTAINER_REMAP_ROOT=maybe {tool} --container-image={OPENMPI} {tail}"),
        );
        assert!(!run.ok() && run.stderr.contains("MPIEXEC_DOCKER_CONTAINER_REMAP_ROOT"), "{tool}: {run}");
        assert!(!run.stderr.contains("slurmstepd"), "no node was used: {run}");
    }
    assert_no_node_drained();
}

#[test]
fn sixty_four_concurrent_single_task_steps() {
    let _g = exclusive();
    // one allocation over the 3 nodes; 64 single-task steps at once spread over them, each with its
    // own container (each container start runs Podman in the job's memory cgroup: give it room)
    let run = sbatch(
        As::User,
        "-N3 -n3 --mem=6G -t 10",
        &format!(
            "for i in $(seq 64); do srun --overlap -N1 -n1 -w node$((i % 3 + 1)) --container-image={OPENMPI} \
             sh -c 'ls /usr/local/bin/mpi_hello >/dev/null && echo ok' & done; wait"
        ),
    );
    assert!(run.ok(), "{run}");
    let ok = run.lines().iter().filter(|l| *l == "ok").count();
    assert_eq!(ok, 64, "every step succeeds: {run}");
    assert_clean_within(30);
    assert_no_node_drained();
}

#[test]
fn time_limit_ends_the_step_and_leaves_nothing() {
    let _g = exclusive();
    // Slurm's smallest time limit is a minute: the job is ended by Slurm, not by us
    let run = sbatch(As::User, "-N2 -n2 -t 1", &format!("srun --container-image={OPENMPI} sleep 300"));
    // (sbatch --wait's own status for a timed-out job depends on how its batch shell ended: the job's
    // record is what says why it ended)
    assert!(run.stdout.contains("DUE TO TIME LIMIT"), "the job must end by its time limit: {run}");
    assert_clean_within(30);
    assert_no_node_drained();
}

#[test]
fn srun_and_mpiexec_inside_an_sbatch_container_use_the_relay() {
    let _g = shared();
    // the batch script runs in the image; its steps inherit --container-image (Slurm's own
    // SLURM_SPANK_… variables reach the host's srun through the relay)
    let run = sbatch(
        As::User,
        // (two tasks per node: see relay.rs, six_ranks_on_three_nodes)
        &format!("-N3 -n6 --ntasks-per-node=2 --container-image={OPENMPI}"),
        "srun -N3 -n3 sh -c 'echo step $(hostname) $MD_IMAGE_FLAVOUR $(id -u)' | sort\n\
         mpiexec -n 6 mpi_hello | sort\n\
         srun -N1 -n1 sh -c 'exit 3'; echo srun-status $?",
    );
    assert!(run.ok(), "{run}");
    let lines = run.lines();
    let steps: Vec<&String> = lines.iter().filter(|l| l.starts_with("step ")).collect();
    let want: Vec<String> = NODES.iter().map(|n| format!("step {n} openmpi 1500")).collect();
    assert_eq!(steps, want.iter().collect::<Vec<_>>(), "{run}");
    let hellos: Vec<&String> = lines.iter().filter(|l| l.starts_with("Hello from rank")).collect();
    assert_eq!(hellos.len(), 6, "{run}");
    for node in NODES {
        assert!(hellos.iter().any(|l| l.contains(&format!(" on {node} "))), "no rank on {node}: {run}");
    }
    assert!(lines.contains(&"srun-status 3".to_string()), "a step's exit code reaches the script: {run}");
    // a step may still choose another image
    let run = sbatch(
        As::User,
        &format!("-N1 -n1 --container-image={OPENMPI}"),
        &format!("srun --container-image={MPICH} -n1 printenv MD_IMAGE_FLAVOUR"),
    );
    assert_eq!(run.stdout.trim(), "mpich", "{run}");
}

#[test]
fn tasks_enter_the_container_the_way_the_running_slurm_allows() {
    let _g = shared();
    // Slurm >= 23.11 has spank_prepend_task_argv: the plugin prepends the helper's `join`; before that
    // the task joins the container in task_init. Each step says on its node which way it took.
    let prepend = slurm_can_prepend();
    let run = sh(As::User, &format!("srun -w node2 --container-image={OPENMPI} -n1 printenv SLURM_JOB_ID")).success();
    let job = run.stdout.trim();
    let log = sh(As::Root, "cat /var/log/slurm/slurmd-node2.log").success();
    let line = log
        .lines()
        .into_iter()
        .find(|l| l.contains(&format!("step {job}.0: tasks run in container of {OPENMPI}")))
        .unwrap_or_else(|| panic!("no line for step {job}.0 in node2's log"));
    let want = if prepend { "through spank_prepend_task_argv" } else { "in task_init" };
    assert!(line.contains(want), "{line}");
    // and where its start time went, phase by phase, at Slurm's verbose level
    let phases = format!("step {job}.0: container start on this node: lock ");
    let line = log.lines().into_iter().find(|l| l.contains(&phases)).unwrap_or_else(|| panic!("no {phases:?}"));
    for phase in ["fetch ", "start ", "relay "] {
        assert!(line.contains(phase), "{line}");
    }

    // the helper's `join` (what newer Slurm runs first in each task), tried by hand on a step container
    let script = format!(
        "set -e; cd {SHARED}; P=$(mpiexec_docker step-container start --job 990001 --step 7 --image {OPENMPI} \
         --workdir {SHARED} | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"pid\"])'); \
         ps -u 1500 -o args= | grep '^[^ ]*mpiexec_docker step-container serve .*--job 990001 ' | grep -o -- '--dir [^ ]*'; \
         J=\"mpiexec_docker step-container join --pid $P --workdir {SHARED} --\"; \
         $J sh -c 'pwd; test -e /usr/sbin/slurmd || echo image-fs; test -S /.mpiexec-docker/relay/relay.sock && echo relay'; \
         $J sh -c 'exit 7' || echo status $?; $J /no/such/program 2>/dev/null || echo status $?; \
         mpiexec_docker step-container join --pid $P --workdir {SHARED} --confinement ff.0.0000000000000000 -- \
           echo ran unconfined 2>&1 || echo status $?; \
         mpiexec_docker step-container stop --job 990001 --step 7"
    );
    let run = on_node("node1", As::User, &script);
    assert!(run.ok(), "{run}");
    let lines = run.lines();
    let dir = lines.first().and_then(|l| l.strip_prefix("--dir ")).unwrap_or_else(|| panic!("no relay server: {run}"));
    assert_eq!(lines[1..6], [SHARED, "image-fs", "relay", "status 7", "status 127"], "{run}");
    // a confinement that cannot be installed (a BPF program without a return) stops the task with one
    // line: it never runs unconfined
    assert_eq!(lines.len(), 8, "{run}");
    assert!(lines[6].starts_with("mpiexec_docker: error: cannot confine the task like its container"), "{run}");
    assert_eq!(lines[7], "status 1", "{run}");
    // the container's relay server and run directory end with it
    let check = format!(
        "test -e {dir} && echo {dir}; ps -u 1500 -o args= | grep '^[^ ]*mpiexec_docker step-container serve .*--job 990001 '; true"
    );
    let gone = wait_for(10, || on_node("node1", As::User, &check).stdout.trim().is_empty());
    assert!(gone, "the relay server of a removed step container ends and removes its directory");
}

#[test]
fn gpus_follow_the_allocation() {
    let _g = shared();
    // the test cluster's nodes have 4 fake GPUs each (character devices with NVIDIA's major number, in
    // gres.conf): a device the step may use opens as "No such device or address" (no driver behind
    // it), one Slurm's device cgroup denies as "Operation not permitted"
    let usable = "for d in $(ls /dev/nvidia? 2>/dev/null); do head -c1 $d 2>&1 | grep -q 'not permitted' && echo $d denied || echo $d usable; done";
    let step = |who: As, opts: &str, probe: &str| {
        sh(who, &format!("srun -w node3 {opts} --container-image={OPENMPI} sh -c {}", shell_quote(probe))).success()
    };
    let run = step(As::User, "-n1", GPU_PROBE);
    assert_eq!(gpu_views(&run.stdout), [GpuView::through_cdi(&[], &[])], "a step without GPUs gets none: {run}");

    // the node's CDI spec gives exactly the step's GPUs, by their device nodes: each GPU's own
    // variable, the driver's library and variable, the control device (rootless and rootful Podman)
    for who in [As::User, As::Root] {
        let run = step(who, "-n1 --gres=gpu:2", GPU_PROBE);
        let views = gpu_views(&run.stdout);
        assert_eq!(views.len(), 1, "{run}");
        assert_eq!(views[0].step_gpus.len(), 2, "{run}");
        assert_eq!(views[0], GpuView::through_cdi(&views[0].step_gpus, &views[0].step_gpus), "{run}");
        assert!(!run.stderr.contains("device nodes only"), "CDI covers these GPUs: no note: {run}");
    }

    // one GPU per task: each task may use its own only (Slurm's task cgroup, which the task keeps)
    let run = step(As::User, "-n2 --gres=gpu:2 --gpus-per-task=1", usable);
    let lines = run.lines();
    let usable: Vec<&String> = lines.iter().filter(|l| l.ends_with("usable")).collect();
    let denied = lines.iter().filter(|l| l.ends_with("denied")).count();
    assert_eq!((usable.len(), denied), (2, 2), "each of the 2 tasks may use 1 of the step's 2 GPUs: {run}");
    assert_ne!(usable[0], usable[1], "and not the same one: {run}");

    // two steps at once share the job's 4 GPUs: each gets its own 2, through their own CDI devices
    let probe = shell_quote(GPU_PROBE);
    let run = sbatch(
        As::User,
        "-N1 -n2 -w node3 --gres=gpu:4",
        &format!(
            "srun -n1 --exact --gres=gpu:2 --container-image={OPENMPI} sh -c {probe} &\n\
             srun -n1 --exact --gres=gpu:2 --container-image={OPENMPI} sh -c {probe} &\n\
             wait"
        ),
    );
    assert!(run.ok(), "{run}");
    let views = gpu_views(&run.stdout);
    assert_eq!(views.len(), 2, "{run}");
    let mut all: Vec<u32> = views.iter().flat_map(|v| v.step_gpus.clone()).collect();
    all.sort();
    assert_eq!(all, [0, 1, 2, 3], "the two steps have different GPUs: {run}");
    for v in &views {
        assert_eq!(*v, GpuView::through_cdi(&v.step_gpus, &v.step_gpus), "{run}");
    }
}

#[test]
fn a_broken_cdi_spec_fails_only_the_steps_that_need_it() {
    let _g = exclusive();
    // an admin's half-written spec: the GPU step fails with one line naming the file; a step without
    // GPUs runs; no node drains; nothing is left
    struct Remove(&'static str);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let broken = Remove("/var/run/cdi/zz-mdt-broken.yaml");
    std::fs::write(broken.0, "cdiVersion: 0.5.0\nkind: [nvidia.com/gpu\n").unwrap();
    let run = sh(As::User, &format!("srun -w node2 -n1 --gres=gpu:1 --container-image={OPENMPI} true"));
    assert!(!run.ok(), "{run}");
    let ours: Vec<&str> = run.stderr.lines().filter(|l| l.contains("mpiexec_docker")).collect();
    assert!(
        ours.iter()
            .any(|l| l.contains("CDI spec /var/run/cdi/zz-mdt-broken.yaml") && l.contains("fix or remove the file")),
        "one line names the file and the fix: {run}"
    );
    let run = sh(As::User, &format!("srun -w node2 -n1 --container-image={OPENMPI} echo fine"));
    assert_eq!(run.success().stdout, "fine\n");
    drop(broken);
    let run = sh(As::User, &format!("srun -w node2 -n1 --gres=gpu:1 --container-image={OPENMPI} true"));
    assert!(run.ok(), "once the file is fixed, GPU steps run again: {run}");

    // GPUs without CDI (the user turned it off): device nodes only, and one line for the step, not
    // one per node or task
    let config_dir = format!("/home/{USER}/.config/mpiexec-docker");
    sh(As::User, &format!("mkdir -p {config_dir} && echo 'devices: {{cdi: off}}' > {config_dir}/config.yaml"))
        .success();
    let run = sh(
        As::User,
        &format!("srun -N2 -n4 --gres=gpu:1 --container-image={OPENMPI} sh -c {}", shell_quote(GPU_PROBE)),
    );
    sh(As::User, &format!("rm -f {config_dir}/config.yaml")).success();
    let run = run.success();
    let views = gpu_views(&run.stdout);
    assert_eq!(views.len(), 4, "{run}");
    for v in &views {
        let mut devices: Vec<String> = v.step_gpus.iter().map(|g| format!("nvidia{g}")).collect();
        devices.push("nvidiactl".into());
        assert_eq!((&v.devices, v.vars.len(), v.lib.as_str()), (&devices, 0, ""), "nodes only: {run}");
    }
    let notes = run.stderr.lines().filter(|l| l.contains("GPUs are passed as device nodes only")).count();
    assert_eq!(notes, 1, "one line for the step: {run}");
    assert_no_node_drained();
    assert_clean_within(20);
}

#[test]
fn named_containers_are_kept_for_the_jobs_later_steps() {
    let _g = shared();
    // pyxis's --container-name: the first step makes it, later steps of the job that name it share its
    // file system (with or without --container-image); an unnamed step gets a fresh container
    let run = sbatch(
        As::User,
        "-N1 -n1 -w node1",
        &format!(
            "srun --container-image={OPENMPI} --container-name=env1 sh -c 'echo made > /var/tmp/marker'\n\
             srun --container-name=env1 cat /var/tmp/marker\n\
             srun --container-image={OPENMPI} --container-name=env1 cat /var/tmp/marker\n\
             srun --container-image={OPENMPI} sh -c 'cat /var/tmp/marker 2>/dev/null || echo fresh'\n\
             srun --container-name=other true 2>&1 | grep -o \"no container named 'other'\""
        ),
    );
    assert!(run.ok(), "{run}");
    // (srun's own notes, "step creation temporarily disabled", are not the steps' output)
    let lines: Vec<String> = run.lines().into_iter().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(lines, ["made", "made", "fresh", "no container named 'other'"], "{run}");
    // the job's end removes it
    assert_clean_within(20);
}

#[test]
fn the_image_entrypoint_runs_where_slurm_allows_and_is_refused_with_a_line_where_not() {
    let _g = shared();
    // md-entrypoint: an image whose ENTRYPOINT says so on both streams, exports MD_ENTERED, then
    // execs the task's program
    let image = format!("{SHARED}/images/md-entrypoint.tar");
    let show = "sh -c 'echo program ${MD_ENTERED:-no}'";
    let run = sh(As::User, &format!("srun --container-entrypoint --container-image={image} -n2 {show}"));
    if slurm_can_prepend() {
        // what the entrypoint prints is hidden, as with pyxis; what it sets, the task has
        assert_eq!(run.success().lines(), ["program yes", "program yes"]);
        let run = sh(
            As::User,
            &format!("srun --container-entrypoint --container-entrypoint-log --container-image={image} -n2 {show}"),
        )
        .success();
        let mut lines = run.lines();
        lines.sort();
        assert_eq!(lines, ["entrypoint ran", "entrypoint ran", "program yes", "program yes"], "each task's: {run}");
        assert_eq!(run.stderr.matches("entrypoint said").count(), 2, "{run}");
    } else {
        assert!(!run.ok(), "{run}");
        assert!(run.stderr.contains("--container-entrypoint needs Slurm 23.11 or later"), "{run}");
    }
    // without the option (pyxis's default) the program runs alone, on every Slurm
    let run = sh(As::User, &format!("srun --no-container-entrypoint --container-image={image} -n1 {show}"));
    assert_eq!(run.success().lines(), ["program no"]);
    let run = sh(As::User, &format!("srun --container-image={image} -n1 {show}"));
    assert_eq!(run.success().lines(), ["program no"]);
}

#[test]
fn tasks_are_confined_like_a_podman_run_of_the_image() {
    let _g = shared();
    // the seccomp mode, bounding set and no_new_privs a task has, and a call the engine's default
    // seccomp profile refuses (personality(READ_IMPLIES_EXEC), x86_64 syscall 135) and a bare task may make
    let probe = "grep -E '^(Seccomp|CapBnd|NoNewPrivs):' /proc/self/status | tr -s '\\t' ' '; \
                 perl -e 'print syscall(135, 0x0400000) < 0 ? \"personality refused\\n\" : \"personality allowed\\n\"'";
    for who in [As::User, As::Root] {
        let task = sh(who, &format!("srun -w node2 -n1 --container-image={OPENMPI} sh -c {}", shell_quote(probe)));
        let keep_id = if who == As::User { "--userns=keep-id" } else { "" };
        let engine = on_node(
            "node2",
            who,
            &format!("podman run --rm --net=host {keep_id} {OPENMPI} sh -c {}", shell_quote(probe)),
        );
        let bare = sh(who, &format!("srun -w node2 -n1 sh -c {}", shell_quote(probe)));
        let task = task.success().lines();
        assert!(task.contains(&"Seccomp: 2".to_string()), "a task is under a seccomp filter: {task:?}");
        assert!(task.contains(&"personality refused".to_string()), "{task:?}");
        assert_eq!(task, engine.success().lines(), "as {}: the task is confined as `podman run` confines", who.name());
        assert_ne!(task, bare.success().lines(), "and not as a bare task is");
    }
    // the step's log on the node says so
    let log = sh(
        As::Root,
        "grep 'tasks confined like their container: seccomp filter' /var/log/slurm/slurmd-node2.log | tail -1",
    );
    assert!(log.success().stdout.contains("capability bounding set"));
    // MPI under the filter: PMIx direct launch, shared memory and CMA between the ranks of a node
    let run =
        sh(As::User, &format!("srun --mpi=pmix -w node1 -N1 -n2 --container-image={OPENMPI} mpi_hello")).success();
    assert_eq!(run.lines().iter().filter(|l| l.starts_with("Hello from rank")).count(), 2, "{run}");
}

#[test]
fn remap_root_tasks_can_chown_in_a_writable_container() {
    let _g = shared();
    // rootless Podman: root inside is the user on the host, with the user's subordinate ids below it
    let run = sh(
        As::User,
        &format!(
            "srun -n1 --container-remap-root --container-writable --container-image={OPENMPI} \
             sh -c 'id -u; touch /var/tmp/f && chown 1:1 /var/tmp/f && stat -c %u:%g /var/tmp/f'"
        ),
    );
    assert_eq!(run.success().lines(), ["0", "1:1"]);
}

#[test]
fn a_long_job_variable_reaches_the_tasks_whole() {
    let _g = shared();
    // a PATH of 6000 characters (module systems make such), kept with --container-env: the plugin reads
    // it from the job's environment whatever its length
    let long = format!("/{}", "d".repeat(6000));
    let run = sh(
        As::User,
        &format!(
            "export PATH={long}:/usr/local/bin:/usr/bin:/bin; \
             srun -n1 --container-env=PATH --container-image={OPENMPI} sh -c 'echo ${{#PATH}}; echo $PATH | cut -c1-5'"
        ),
    );
    // our links come first on PATH
    let in_bin = mpiexec_docker_core::launch::IN_BIN;
    let want = (in_bin.len() + 1 + long.len() + ":/usr/local/bin:/usr/bin:/bin".len()).to_string();
    assert_eq!(run.success().lines(), [want.as_str(), "/.mpi"]);
}

#[test]
fn an_images_volume_goes_with_its_step() {
    let _g = exclusive();
    // md-volume declares `VOLUME /data`: the engine makes an anonymous volume for each step container
    let image = format!("{SHARED}/images/md-volume.tar");
    for who in [As::User, As::Root] {
        let run = sh(who, &format!("srun -N3 --container-image={image} sh -c 'test -d /data && echo volume'"));
        assert_eq!(run.success().lines(), ["volume", "volume", "volume"]);
    }
    assert_clean_within(30);
}

#[test]
fn names_squatted_by_another_user_stall_nobody() {
    let _g = shared();
    // the second user makes, on every node, the names in /tmp that rootless Podman users' state once
    // had (a FIFO as the lock, a directory open to all) and a look-alike runtime directory
    for node in NODES {
        on_node(
            node,
            As::User2,
            "mkdir -p -m 777 /tmp/mpiexec-docker-1500 2>/dev/null; mkfifo /tmp/mpiexec-docker-1500.lock 2>/dev/null; true",
        );
    }
    let squat =
        "mkdir -p -m 777 /tmp/mpiexec-docker-1500 2>/dev/null; mkfifo /tmp/mpiexec-docker-1500.lock 2>/dev/null; true";
    sh(As::User2, squat);
    let run = sh(As::User, &format!("timeout 120 srun -N3 -n3 --container-image={OPENMPI} id -u"));
    // the standalone helper on the login node, where the same names are squatted
    let helper = sh(As::User, &format!("timeout 120 run_in_docker {OPENMPI} id -u"));
    let unsquat = "rm -rf /tmp/mpiexec-docker-1500 /tmp/mpiexec-docker-1500.lock";
    sh(As::User2, unsquat);
    for node in NODES {
        on_node(node, As::User2, unsquat);
    }
    assert_eq!(run.success().lines(), ["1500"; 3]);
    assert_eq!(helper.success().lines(), ["1500"]);
    // the state each user's steps used is theirs alone
    let state = on_node("node1", As::Root, "stat -c '%U %a' /run/mpiexec-docker/1500").success();
    assert_eq!(state.stdout.trim(), format!("{USER} 700"));
    assert_no_node_drained();
}

#[test]
fn later_steps_of_a_job_take_a_spare_container_and_each_sees_the_images_own_files() {
    let _g = exclusive();
    // each step writes into the container's own file system (/written) and says whether it found
    // that file: a step that took a spare must not see what an earlier step wrote
    let step = format!(
        "srun -v -n1 --container-image={OPENMPI} sh -c 'test -e /written && echo dirty || echo pristine; touch /written'"
    );
    let script = format!(
        "for i in 1 2 3 4 5; do {step}; done\n\
         for i in 1 2 3 4 5 6; do {step} & done; wait\n\
         srun -n1 --container-image={OPENMPI} --container-name=kept sh -c 'touch /written'\n\
         srun -n1 --container-name=kept sh -c 'test -e /written && echo kept-sees-it'"
    );
    let run = sbatch(As::User, "-N1 -n6 -w node2", &script);
    assert!(run.ok(), "{run}");
    let lines = run.lines();
    let said = |w: &str| lines.iter().filter(|l| l.as_str() == w).count();
    assert_eq!(said("pristine"), 11, "every step starts from the image's own files: {run}");
    assert_eq!(said("dirty"), 0, "{run}");
    assert_eq!(said("kept-sees-it"), 1, "--container-name keeps pyxis's meaning: {run}");
    // srun -v shows where each step's start went on the node: from the third step on, a spare
    let starts: Vec<&String> = lines.iter().filter(|l| l.contains(": container start: ")).collect();
    assert_eq!(starts.len(), 11, "{run}");
    assert!(!starts[0].contains("spare") && !starts[1].contains("spare"), "the first two steps start their own: {run}");
    assert!(starts[2..5].iter().all(|l| l.contains("container start: spare")), "later steps take the spare: {run}");
    // the job's end removes the spare left for a next step (and ends a maker still at work)
    assert_clean_within(60);
}
