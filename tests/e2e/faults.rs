//! Faults at every phase (issue 19): the helper killed where a step's container is being made or
//! removed, the registry dying mid-fetch. Each: the step fails with one line of ours (or completes),
//! nothing is left once the job is over, no node is drained, and the next step on the node works.
//!
//! The helper is stopped where a phase begins with `MPIEXEC_DOCKER_FAULT_WAIT=PHASE` (see
//! `mpiexec_docker_core::fault_point`), which writes its pid to `fault-PHASE` in its state
//! directory and waits until that file is gone. Each test writes the rows `tests/reliability.sh`
//! puts into RELIABILITY.md.

mod common;
use common::*;

const OPENMPI: &str = "localhost/md-openmpi";
const NODE: &str = "node2";

/// After a fault: nothing of ours left once the job is over, every node in service, and the next
/// step on the node works.
fn assert_recovered() {
    assert_recovered_on(NODE, OPENMPI, "openmpi");
}

#[test]
fn fault_made_helper_killed_at_each_phase_of_a_step_start() {
    let _g = exclusive();
    for phase in ["lock", "fetch", "run", "relay"] {
        let run =
            srun_with_fault_at(NODE, phase, &format!("--container-image={OPENMPI} echo task-ran"), "kill -9 $PID");
        assert!(!run.ok(), "{phase}: {run}");
        assert!(!run.stdout.contains("task-ran"), "{phase}: no task runs outside its container: {run}");
        let ours = our_lines(&run);
        assert_eq!(ours.len(), 1, "{phase}: one line of ours: {run}");
        assert!(ours[0].contains("the helper was killed (SIGKILL)"), "{phase}: {run}");
        assert_recovered();
        reliability_row(
            &format!("`kill -9` of the helper at the start's {phase} phase"),
            "the step fails: `the helper was killed (SIGKILL)`",
            "nothing (the job's end removed what was made)",
        );
    }
}

#[test]
fn fault_made_helper_killed_while_it_removes_the_steps_container() {
    let _g = exclusive();
    let run = srun_with_fault_at(NODE, "stop", &format!("--container-image={OPENMPI} echo task-ran"), "kill -9 $PID");
    // the tasks had ended: the step is theirs, complete
    assert_eq!(run.success().lines(), ["task-ran"]);
    assert_recovered();
    reliability_row(
        "`kill -9` of the helper while it removes the step's container",
        "the step completes (its tasks had ended)",
        "nothing (the job's end removed the container)",
    );
}

/// Brings the test registry back when dropped (also when the test fails).
struct RegistryBack;
impl RegistryBack {
    fn start() {
        sh(
            As::Root,
            "kill -0 $(cat /run/mpiexec-docker-test/registry.pid 2>/dev/null) 2>/dev/null || { \
             setsid docker-registry serve /var/lib/mpiexec-docker-test/registry/config.yml \
               >> /var/log/mdt-registry.log 2>&1 < /dev/null & echo $! > /run/mpiexec-docker-test/registry.pid; }; \
             for i in $(seq 100); do (exec 3<>/dev/tcp/10.77.0.1/5000) 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
        )
        .success();
    }
}
impl Drop for RegistryBack {
    fn drop(&mut self) {
        RegistryBack::start();
    }
}

#[test]
fn fault_made_registry_dies_mid_fetch_and_the_next_step_pulls() {
    let _g = exclusive();
    let _back = RegistryBack;
    let image = "10.77.0.1:5000/md/tiny";
    let forget = "podman images --format '{{.Repository}}:{{.Tag}}' | grep 'md/tiny' | xargs -r podman rmi -f >/dev/null 2>&1; true";
    on_node(NODE, As::User, forget);
    let t0 = std::time::Instant::now();
    let run = srun_with_fault_at(
        NODE,
        "fetch",
        &format!("--container-image={image} echo task-ran"),
        "kill -9 $(cat /run/mpiexec-docker-test/registry.pid)",
    );
    let took = t0.elapsed();
    assert!(!run.ok(), "{run}");
    let ours = our_lines(&run);
    assert_eq!(ours.len(), 1, "{run}");
    assert!(ours[0].contains("cannot pull image") && ours[0].contains("connection refused"), "{run}");
    assert!(took < std::time::Duration::from_secs(90), "the step failed within its deadline ({took:?})");
    // nothing half-fetched counts as the image
    let kept = on_node(NODE, As::User, "podman images --format '{{.Repository}}' | grep -c 'md/tiny' || true");
    assert_eq!(kept.stdout.trim(), "0", "{kept}");
    RegistryBack::start();
    let run = sh(As::User, &format!("srun -w {NODE} -n1 --container-image={image} sh -c 'echo $MD_IMAGE_FLAVOUR'"));
    assert_eq!(run.success().lines(), ["tiny"]);
    on_node(NODE, As::User, forget);
    assert_recovered();
    reliability_row(
        "the registry killed during a step's fetch, then restarted",
        "the step fails at once: `cannot pull image …: connection refused`; the next step pulls",
        "nothing (no half image in the store)",
    );
}

#[test]
fn fault_made_slurmd_restarted_under_a_running_container_step() {
    let _g = exclusive();
    let step = std::thread::spawn(|| {
        sh(
            As::User,
            &format!("srun -w {NODE} -n1 --container-image={OPENMPI} sh -c 'sleep 8; echo $MD_IMAGE_FLAVOUR survived'"),
        )
    });
    let running = wait_for(60, || {
        !on_node(NODE, As::User, "podman ps -q --filter label=mpiexec-docker").stdout.trim().is_empty()
    });
    assert!(running, "the step's container never ran");
    // slurmd stops and starts again in the node's namespaces (entered through the step's slurmstepd,
    // which outlives it, as Slurm means it to)
    let restarted = on_node(
        NODE,
        As::Root,
        &format!(
            "stepd=$(pgrep -f 'slurmstepd: \\[[0-9]+\\.0\\]' | head -1); test -n \"$stepd\" || exit 3; \
             kill $(cat /run/slurmd-{NODE}.pid); for i in $(seq 100); do kill -0 $(cat /run/slurmd-{NODE}.pid) 2>/dev/null || break; sleep 0.1; done; \
             echo $stepd"
        ),
    )
    .success();
    let stepd = restarted.stdout.trim().to_string();
    sh(As::Root, &format!("nsenter -t {stepd} -m -u -n -- slurmd -N {NODE}")).success();
    assert!(wait_for(20, || sh(As::Root, &format!("kill -0 $(cat /run/slurmd-{NODE}.pid)")).ok()), "slurmd came back");
    let run = step.join().expect("the srun thread");
    assert_eq!(run.success().lines(), ["openmpi survived"]);
    assert_recovered();
    reliability_row(
        "slurmd restarted while a container step runs",
        "the step carries on and completes, as a bare step does",
        "nothing",
    );
}

/// The resident memory (KiB) of each node's slurmd.
fn slurmd_rss() -> Vec<u64> {
    NODES
        .iter()
        .map(|n| {
            let out = sh(As::Root, &format!("ps -o rss= -p $(cat /run/slurmd-{n}.pid)")).success();
            out.stdout.trim().parse().expect("slurmd's rss")
        })
        .collect()
}

#[test]
fn fault_made_load_64_concurrent_steps_10_rounds_then_500_back_to_back() {
    let _g = exclusive();
    let before = slurmd_rss();
    // ten rounds of 64 single-task container steps at once over the 3 nodes
    let run = sbatch(
        As::User,
        "-N3 -n3 --mem=6G -t 20",
        &format!(
            "for round in $(seq 10); do \
               for i in $(seq 64); do srun --overlap -N1 -n1 -w node$((i % 3 + 1)) --container-image={OPENMPI} \
                 sh -c 'test -x /usr/local/bin/mpi_hello && echo ok' & done; wait; done"
        ),
    );
    assert!(run.ok(), "{run}");
    let ok = run.lines().iter().filter(|l| *l == "ok").count();
    assert_eq!(ok, 640, "every step succeeds: {run}");
    assert_clean_within(60);
    // 500 steps one after another in one job; the batch step's slurmstepd is measured at its start
    // and end, as each node's slurmd is
    let run = sbatch(
        As::User,
        "-N1 -n1 -w node1 -t 30",
        &format!(
            "echo start $(ps -o rss= -p $PPID); \
             for i in $(seq 500); do srun -n1 --container-image={OPENMPI} true || echo failed $i; done; \
             echo end $(ps -o rss= -p $PPID)"
        ),
    );
    assert!(run.ok(), "{run}");
    let lines = run.lines();
    assert!(!lines.iter().any(|l| l.starts_with("failed")), "every step succeeds: {run}");
    let rss = |word: &str| -> u64 {
        let line = lines.iter().find(|l| l.starts_with(word)).unwrap_or_else(|| panic!("{word}: {run}"));
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let (start, end) = (rss("start"), rss("end"));
    assert!(end <= start + start / 10 + 2048, "the batch step's slurmstepd stays flat: {start} KiB, then {end} KiB");
    assert_clean_within(60);
    let after = slurmd_rss();
    for ((n, b), a) in NODES.iter().zip(&before).zip(&after) {
        assert!(*a <= b + b / 10 + 4096, "{n}: slurmd stays flat over 1,140 container steps: {b} KiB, then {a} KiB");
    }
    assert_no_node_drained();
    reliability_row(
        "load: 64 concurrent container steps × 10 rounds, then 500 back-to-back steps in one job",
        &format!(
            "all 1,140 steps succeed; slurmd {} KiB before, {} KiB after (largest node); the job's slurmstepd {start} KiB, then {end} KiB",
            before.iter().max().unwrap(),
            after.iter().max().unwrap()
        ),
        "nothing",
    );
}

#[test]
fn fault_made_engine_killed_at_each_phase_of_a_step() {
    let _g = exclusive();
    // Podman's own calls killed as they run, where the helper makes them: the step fails with one line
    for phase in ["fetch", "run"] {
        let (run, fault) = srun_with_fault(
            NODE,
            phase,
            &format!("--container-image={OPENMPI} echo task-ran"),
            &kill_engine_calls(phase),
        );
        assert!(engine_calls_killed(&fault) >= 1, "{phase}: podman was killed: {fault}");
        assert!(!run.ok(), "{phase}: {run}");
        assert!(!run.stdout.contains("task-ran"), "{phase}: no task runs outside its container: {run}");
        let ours = our_lines(&run);
        assert_eq!(ours.len(), 1, "{phase}: one line of ours: {run}");
        assert!(ours[0].contains("podman was killed (SIGKILL)"), "{phase}: {run}");
        assert_recovered();
        reliability_row(
            &format!("`kill -9` of podman's calls at the start's {phase} phase"),
            "the step fails: `… podman was killed (SIGKILL)`",
            "nothing (the job's end removed what was made)",
        );
    }
    // conmon, the container's monitor, killed once the container runs: the tasks do not need it
    for phase in ["cgroup", "relay"] {
        let kill = format!("pkill -9 -u {USER} -f '^/usr/bin/conmon .* -n mpiexec-docker-' && echo killed");
        let (run, fault) = srun_with_fault(NODE, phase, &format!("--container-image={OPENMPI} echo task-ran"), &kill);
        assert_eq!(fault.lines(), ["killed"], "{phase}: {fault}");
        assert_eq!(run.success().lines(), ["task-ran"], "{phase}");
        assert_recovered();
        reliability_row(
            &format!("`kill -9` of conmon at the start's {phase} phase"),
            "the step completes (its tasks do not need the container's monitor)",
            "nothing (the step's end removed the container)",
        );
    }
    // podman's removal of the container killed as the step ends: the job's end removes it
    let (run, fault) = srun_with_fault(
        NODE,
        "stop",
        &format!("--container-image={OPENMPI} echo task-ran"),
        &kill_engine_calls("stop"),
    );
    assert!(engine_calls_killed(&fault) >= 1, "podman was killed: {fault}");
    assert_eq!(run.success().lines(), ["task-ran"]);
    assert_recovered();
    reliability_row(
        "`kill -9` of podman's calls while the step's container is removed",
        "the step completes (its tasks had ended)",
        "nothing (the job's end removed the container)",
    );
}

/// The test user's rootless container store on [`NODE`] replaced by a small file system (a tmpfs of
/// 48 MiB) until dropped. Podman's rootless pause process keeps the mounts it was started with: it
/// is ended at both changes, so the next `podman` sees the store as it is.
struct SmallStore;
const STORE: &str = "/var/local/containers/mpitest/storage";
const END_PAUSE: &str =
    "u=$(id -u mpitest); for f in /tmp/podman-run-$u/libpod/tmp/pause.pid /tmp/storage-run-$u/libpod/tmp/pause.pid /run/user/$u/libpod/tmp/pause.pid; \
                         do test -f $f && kill -9 $(cat $f) 2>/dev/null; done; true";
impl SmallStore {
    fn mount() -> SmallStore {
        on_node(
            NODE,
            As::Root,
            &format!("mount -t tmpfs -o size=48m,mode=0700,uid=$(id -u mpitest),gid=$(id -g mpitest) mdt-small-store {STORE} && {END_PAUSE}"),
        )
        .success();
        // what Podman sees from its user namespace is the small store
        let seen = on_node(NODE, As::User, &format!("podman unshare df -k --output=size {STORE} | tail -1")).success();
        assert_eq!(seen.stdout.trim(), "49152", "podman sees the small store: {seen}");
        SmallStore
    }
}
impl Drop for SmallStore {
    fn drop(&mut self) {
        // (the pause process first: a mount it is in may be busy a moment after it is killed)
        on_node(
            NODE,
            As::Root,
            &format!("{END_PAUSE}; for i in $(seq 100); do umount {STORE} 2>/dev/null && break; sleep 0.1; done; {END_PAUSE}"),
        );
        let mounted = on_node(NODE, As::Root, &format!("findmnt -n {STORE}"));
        assert!(
            mounted.stdout.trim().is_empty() || std::thread::panicking(),
            "the small store stays mounted: {mounted}"
        );
        // (a fetch that reached the real store, were the test to fail, is not kept)
        let forget = "podman images --format '{{.Repository}}:{{.Tag}}' | grep random-100m | xargs -r podman rmi -f";
        on_node(NODE, As::User, forget);
    }
}

/// An image of 100 MB of random bytes (its layer does not compress) in the test registry, made once.
fn incompressible_image() -> &'static str {
    let image = "10.77.0.1:5000/md/random-100m";
    sh(
        As::Root,
        &format!(
            "podman image exists localhost/md-random-100m || {{ d=$(mktemp -d); head -c 100M /dev/urandom > $d/random; \
               tar -C $d -cf $d/random.tar random && podman import --quiet $d/random.tar localhost/md-random-100m; rm -rf $d; }}; \
             podman push --quiet --tls-verify=false localhost/md-random-100m {image}"
        ),
    )
    .success();
    image
}

#[test]
fn fault_made_full_container_store_during_a_load() {
    let _g = exclusive();
    let image = incompressible_image();
    {
        let _small = SmallStore::mount();
        // six steps at once fetch an image of 100 MB into a store of 48 MB
        let steps: Vec<_> = (0..6)
            .map(|_| {
                std::thread::spawn(move || {
                    sh(As::User, &format!("srun -w {NODE} -n1 --container-image={image} echo task-ran"))
                })
            })
            .collect();
        for step in steps {
            let run = step.join().expect("a srun thread");
            assert!(!run.ok(), "{run}");
            assert!(!run.stdout.contains("task-ran"), "{run}");
            let ours = our_lines(&run);
            assert_eq!(ours.len(), 1, "one line of ours: {run}");
            assert!(
                ours[0].contains(&format!("no space left on device in the container store {STORE} (")),
                "the line names the disk: {run}"
            );
        }
        // no half image counts as cached, and nothing of the fetch stays in the store
        let images = on_node(NODE, As::User, "podman images --all --format '{{.Repository}}:{{.Tag}}'").success();
        assert_eq!(images.stdout.trim(), "", "{images}");
        let used = on_node(NODE, As::Root, &format!("df --output=used -k {STORE} | tail -1")).success();
        let used: u64 = used.stdout.trim().parse().expect("df's count");
        assert!(used < 4096, "the failed fetches left {used} KiB in the store");
        assert_clean_within(60);
        assert_no_node_drained();
    }
    assert_recovered();
    reliability_row(
        "the node's container store on a small full file system (48 MiB tmpfs) while 6 steps fetch a 100 MB image",
        "each step fails: `cannot pull image …: no space left on device in the container store … (… free now, too little for this); remove images you no longer use there …`",
        "nothing (no half image in the store)",
    );
}

/// Waits until the test user's container runs on [`NODE`].
fn container_running() -> bool {
    wait_for(60, || !on_node(NODE, As::User, "podman ps -q --filter label=mpiexec-docker").stdout.trim().is_empty())
}

#[test]
fn fault_made_slurmctld_restarted_under_a_running_container_step() {
    let _g = exclusive();
    let step = std::thread::spawn(|| {
        sh(
            As::User,
            &format!("srun -w {NODE} -n1 --container-image={OPENMPI} sh -c 'sleep 8; echo $MD_IMAGE_FLAVOUR survived'"),
        )
    });
    assert!(container_running(), "the step's container never ran");
    sh(
        As::Root,
        "kill $(cat /run/slurmctld.pid); for i in $(seq 150); do kill -0 $(cat /run/slurmctld.pid 2>/dev/null) 2>/dev/null || break; sleep 0.1; done; \
         slurmctld",
    )
    .success();
    assert!(wait_for(30, || sh(As::Root, "scontrol ping").stdout.contains("UP")), "slurmctld came back");
    let run = step.join().expect("the srun thread");
    assert_eq!(run.success().lines(), ["openmpi survived"]);
    assert_recovered();
    reliability_row(
        "slurmctld restarted while a container step runs",
        "the step carries on and completes, as a bare step does",
        "nothing",
    );
}

#[test]
fn fault_made_slurmd_killed_for_good_mid_job_then_the_node_returns() {
    let _g = exclusive();
    let (job, _cancel) = sbatch_sleeping_step(NODE, OPENMPI, 300);
    assert!(container_running(), "the step's container never ran");
    // slurmd dies (SIGKILL): the step's slurmstepd carries on, unreachable by Slurm
    let stepd = on_node(
        NODE,
        As::Root,
        &format!("stepd=$(pgrep -f 'slurmstepd: \\[{job}\\.0\\]' | head -1); test -n \"$stepd\" || exit 3; kill -9 $(cat /run/slurmd-{NODE}.pid); echo $stepd"),
    )
    .success();
    let stepd = stepd.stdout.trim().to_string();
    let back =
        format!("kill -0 $(cat /run/slurmd-{NODE}.pid) 2>/dev/null || nsenter -t {stepd} -m -u -n -- slurmd -N {NODE}");
    let _back = OnDrop(move || {
        sh(As::Root, &back);
    });
    // the user cancels: the job waits in COMPLETING for the node
    sh(As::User, &format!("scancel {job}")).success();
    assert!(
        wait_for(30, || sh(As::Root, &format!("squeue -h -j {job} -o %T")).stdout.trim() == "COMPLETING"),
        "the job waits for the node"
    );
    // the node comes back (slurmd started in its namespaces, entered through the step's slurmstepd)
    sh(As::Root, &format!("nsenter -t {stepd} -m -u -n -- slurmd -N {NODE}")).success();
    assert!(
        wait_for(120, || sh(As::Root, &format!("squeue -h -j {job} -o %T")).stdout.trim().is_empty()),
        "the job ends once the node is back"
    );
    assert_recovered();
    reliability_row(
        "slurmd killed (SIGKILL) mid-job, the job cancelled, then the node brought back",
        "the job waits in COMPLETING; once slurmd is back, its step ends and the job ends",
        "nothing (the step's end and the job's end removed the container)",
    );
}

#[test]
fn fault_made_slurmstepd_killed_under_a_running_container_step() {
    let _g = exclusive();
    let (job, _cancel) = sbatch_sleeping_step(NODE, OPENMPI, 317);
    assert!(container_running(), "the step's container never ran");
    // the step's slurmstepd dies: its task lives on in the container, reached by no one, until the
    // job's end ends it with its container
    kill_slurmstepd_then_cancel(NODE, &job, 317);
    assert_recovered();
    reliability_row(
        "slurmstepd of a container step killed (SIGKILL), then the job cancelled",
        "the step's srun waits (no one reports the step's end, as for a bare step); the job's end ends the orphaned task and removes the container",
        "nothing (a bare step's orphaned task is left running in the job's cgroup)",
    );
}
