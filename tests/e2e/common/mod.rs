//! Shared helpers of the end-to-end tests: they drive the real test cluster that
//! `tests/cluster/up.sh` starts (Slurm with 3 nodes, Podman rootful and rootless, MPI images).
//! A test never skips: when the cluster is not there it fails and says how to start it.
#![allow(dead_code)]

mod gpu;
#[allow(unused_imports)]
pub use gpu::*;
mod registry;
#[allow(unused_imports)]
pub use registry::*;

use std::process::{Command, Output, Stdio};
use std::sync::{Once, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// The non-root test user (rootless Podman), as created by tests/cluster/up.sh.
pub const USER: &str = "mpitest";
/// A second user, for isolation tests.
pub const USER2: &str = "mpitest2";
pub const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// Where the package (packaging/build.sh), which the test cluster installs, puts the plugin and helper.
pub const PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/slurm-wlm/spank_mpiexec_docker.so";
pub const HELPER: &str = "/usr/bin/mpiexec_docker";
/// A directory every node sees (stands in for a shared filesystem).
pub const SHARED: &str = "/var/lib/mpiexec-docker-test/shared";

/// Who runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    Root,
    User,
    User2,
}

impl As {
    pub fn name(self) -> &'static str {
        match self {
            As::Root => "root",
            As::User => USER,
            As::User2 => USER2,
        }
    }
}

/// The result of one command, with everything a failed assertion should show.
pub struct Run {
    pub cmd: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(cmd: &str, out: Output) -> Run {
        Run {
            cmd: cmd.to_string(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole picture unless the command exited 0.
    pub fn success(self) -> Run {
        assert!(self.ok(), "command failed: {self}");
        self
    }

    pub fn lines(&self) -> Vec<String> {
        self.stdout.lines().map(str::to_string).collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` exited {:?}\n--- stdout\n{}--- stderr\n{}", self.cmd, self.code, self.stdout, self.stderr)
    }
}

/// The plugin's engine for this test binary: tests/e2e/docker.rs sets `docker` (see [`use_docker`]),
/// every other binary the default, Podman. Slurm reads plugstack.conf at every launch, and test
/// binaries run one after another.
static DOCKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this test binary's plugin engine Docker; call before the first [`cluster`].
pub fn use_docker() {
    DOCKER.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn set_plugin_engine(engine: &str) {
    let path = "/etc/slurm/plugstack.conf";
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}; is the cluster up?"));
    let new: String = text
        .lines()
        .map(|l| match l.contains("spank_mpiexec_docker") {
            true => l
                .split(' ')
                .map(|w| if w.starts_with("engine=") { format!("engine={engine}") } else { w.into() })
                .collect::<Vec<_>>()
                .join(" "),
            false => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    if new != text {
        std::fs::write(path, new).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

/// Fails the test with a clear message when the cluster is not up. Checked once per test binary.
pub fn cluster() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        set_plugin_engine(if DOCKER.load(std::sync::atomic::Ordering::SeqCst) { "docker" } else { "podman" });
        let out = Command::new("sinfo").args(["-h", "-N", "-o", "%N %t"]).output();
        let text = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            _ => String::new(),
        };
        for node in NODES {
            assert!(
                text.lines().any(|l| l.starts_with(node) && !l.contains("down") && !l.contains("drain")),
                "the test cluster is not up ({node} missing or down in sinfo: {text:?}); \
                 start it with `sudo tests/cluster/up.sh`"
            );
        }
    });
}

/// Runs a shell command line as `who`, in `SHARED` (a directory every node sees).
pub fn sh(who: As, script: &str) -> Run {
    sh_in(who, SHARED, script)
}

/// Runs a shell command line as `who` in `dir`.
pub fn sh_in(who: As, dir: &str, script: &str) -> Run {
    let mut cmd = match who {
        As::Root => {
            let mut c = Command::new("bash");
            c.args(["-c", script]);
            c
        }
        user => {
            let home = format!("/home/{}", user.name());
            let mut c = Command::new("runuser");
            c.args(["-u", user.name(), "--", "env", "-i"])
                .arg(format!("HOME={home}"))
                .arg(format!("USER={}", user.name()))
                .arg(format!("LOGNAME={}", user.name()))
                .arg("PATH=/usr/local/bin:/usr/bin:/bin")
                .args(["bash", "-c", script]);
            c
        }
    };
    cmd.current_dir(dir).stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run `{script}`: {e}"));
    Run::from(&format!("[{}] {script}", who.name()), out)
}

/// The pid of a node's slurmd, the anchor of its namespaces.
pub fn node_pid(node: &str) -> String {
    std::fs::read_to_string(format!("/run/slurmd-{node}.pid"))
        .unwrap_or_else(|e| panic!("{node} has no slurmd pid file ({e}); is the cluster up?"))
        .trim()
        .to_string()
}

/// Runs a shell command line inside a node's namespaces, as `who`.
pub fn on_node(node: &str, who: As, script: &str) -> Run {
    let pid = node_pid(node);
    let inner = match who {
        As::Root => script.to_string(),
        user => format!(
            "runuser -u {u} -- env HOME=/home/{u} PATH=/usr/local/bin:/usr/bin:/bin bash -c {q}",
            u = user.name(),
            q = shell_quote(script)
        ),
    };
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-m", "-u", "-n", "--", "bash", "-c", &inner])
        .stdin(Stdio::null())
        .output()
        .expect("nsenter");
    Run::from(&format!("[{node}/{}] {script}", who.name()), out)
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes a file readable by everyone into SHARED and returns its path.
pub fn shared_file(name: &str, content: &str) -> String {
    let path = format!("{SHARED}/{name}");
    std::fs::write(&path, content).unwrap();
    path
}

/// Submits `script` with `sbatch --wait OPTS` as `who` and returns the job's exit code and output.
pub fn sbatch(who: As, opts: &str, script: &str) -> Run {
    let tag = format!(
        "job-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let script_path = shared_file(&format!("{tag}.sh"), &format!("#!/bin/bash\n{script}\n"));
    let out_path = format!("{SHARED}/{tag}.out");
    let mut run = sh(who, &format!("sbatch --wait -o {out_path} {opts} {script_path}"));
    run.stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&script_path);
    run.cmd = format!("sbatch {opts} <<< {script}");
    run
}

/// Tests that check "nothing is left anywhere" run alone; the others of a test binary share the cluster.
static CLUSTER: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    cluster();
    CLUSTER.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    cluster();
    CLUSTER.write().unwrap_or_else(|e| e.into_inner())
}

/// Our containers on every node (both stores), our processes anywhere, and live slurmstepd
/// re-parented to init (a step that never finished), as findings; empty when clean. (Zombies waiting
/// for this VM's init to reap them are dead already and do not count.)
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    for node in NODES {
        for who in [As::User, As::Root] {
            let run =
                on_node(node, who, "podman ps -a --filter label=mpiexec-docker --format '{{.Names}} {{.Status}}'");
            found.extend(
                run.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("{node}/{}: {l}", who.name())),
            );
        }
    }
    // volumes (an image's VOLUME makes an anonymous one): none of ours may outlive its container
    for node in NODES {
        for who in [As::User, As::Root] {
            let run = on_node(node, who, "podman volume ls -q");
            found.extend(
                run.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("{node}/{}: volume {l}", who.name())),
            );
        }
        let run = on_node(node, As::Root, "docker volume ls -q");
        found.extend(run.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("{node}/docker: volume {l}")));
    }
    // Docker's containers: one daemon per node, and the login node's
    for node in NODES {
        let run =
            on_node(node, As::Root, "docker ps -a --filter label=mpiexec-docker --format '{{.Names}} {{.Status}}'");
        found.extend(run.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("{node}/docker: {l}")));
    }
    let run = sh(As::Root, "docker ps -a --filter label=mpiexec-docker --format '{{.Names}} {{.Status}}'");
    found.extend(run.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("login/docker: {l}")));
    // run directories (links, relay sockets, staging mounts) in every node's state directories
    for node in NODES {
        let dirs = on_node(
            node,
            As::Root,
            "ls -d /run/mpiexec-docker/*/run-*/ /run/user/*/mpiexec-docker/run-*/ /tmp/mpiexec-docker-*/run-*/ \
             2>/dev/null; grep -o ' /run/mpiexec-docker/[^ ]*/mnt/[^ ]*' /proc/self/mountinfo; true",
        );
        found.extend(dirs.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("{node}: run directory {l}")));
    }
    let procs = sh(
        As::Root,
        "ps -eo user,args | grep -E 'conmon|containerd-shim|mpiexec_docker|run_in_docker|in-container' | grep -v grep || true",
    )
    .success();
    found.extend(procs.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("process: {l}")));
    let stray = sh(As::Root, "ps -eo ppid,stat,args | awk '$1 == 1 && $2 !~ /^Z/ && /slurmstepd/'").success();
    found.extend(stray.lines().into_iter().filter(|l| !l.is_empty()).map(|l| format!("stray step: {l}")));
    found
}

/// Polls `done` every 250 ms for up to `secs`; whether it came true.
pub fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 4 {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    done()
}

/// Waits up to `secs` for the cluster to be clean (see [`leftovers`]).
pub fn assert_clean_within(secs: u64) {
    if !wait_for(secs, || leftovers().is_empty()) {
        panic!("left behind: {:#?}", leftovers());
    }
}

/// Whether the containers of `job` run on every node (in the test user's stores).
pub fn job_containers_on_every_node(job: &str) -> bool {
    NODES.iter().all(|n| {
        !on_node(n, As::User, &format!("podman ps -q --filter label=mpiexec-docker.job={job}")).stdout.trim().is_empty()
    })
}

pub fn assert_no_node_drained() {
    let run = sh(As::Root, "sinfo -h -N -o '%N %t'").success();
    // sinfo's short states: drain/drng (draining), down, fail/failg; anything else (idle, mix, alloc,
    // comp, plnd, with or without a mark) is a node in service
    let bad = |l: &str| ["drain", "drng", "down", "fail"].iter().any(|b| l.contains(b));
    assert!(run.lines().iter().all(|l| !bad(l)), "no node may be drained: {run}");
}

/// After a fault on `node`: nothing of ours left once the job is over, every node in service, and
/// the next step there works in `image` (a test image of MPI flavour `flavour`, which it prints).
pub fn assert_recovered_on(node: &str, image: &str, flavour: &str) {
    assert_clean_within(60);
    assert_no_node_drained();
    let next = sh(As::User, &format!("srun -w {node} -n1 --container-image={image} sh -c 'echo $MD_IMAGE_FLAVOUR'"));
    assert_eq!(next.success().lines(), [flavour]);
    assert_clean_within(30);
}

/// Runs its closure when dropped (also when the test fails): a test's cleanup.
pub struct OnDrop<F: FnMut()>(pub F);
impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Restores a file's content when dropped (also when the test fails).
pub struct Restore(pub &'static str, pub Option<Vec<u8>>);
impl Drop for Restore {
    fn drop(&mut self) {
        match &self.1 {
            Some(bytes) => std::fs::write(self.0, bytes).unwrap(),
            None => {
                let _ = std::fs::remove_file(self.0);
            }
        }
    }
}

/// Adds `words` to the plugin's plugstack.conf line (Slurm reads it at every launch) until the
/// guard is dropped.
pub fn plugstack_with(words: &str) -> Restore {
    const PLUGSTACK: &str = "/etc/slurm/plugstack.conf";
    let restore = Restore(PLUGSTACK, std::fs::read(PLUGSTACK).ok());
    let text = std::fs::read_to_string(PLUGSTACK).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.contains("spank_mpiexec_docker") {
            true => format!("{l} {words}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(PLUGSTACK, text).unwrap();
    restore
}

/// Whether the running Slurm has `spank_prepend_task_argv` (23.11 and later).
pub fn slurm_can_prepend() -> bool {
    let version = sh(As::User, "srun --version").success();
    let v = mpiexec_docker_core::slurm_version::SlurmVersion::parse(&version.stdout).expect("srun --version");
    v >= mpiexec_docker_core::slurm_version::PREPEND_TASK_ARGV_SINCE
}

/// A row of RELIABILITY.md (tab-separated, appended to `{SHARED}/reliability.rows` where
/// `tests/reliability.sh` made that file): the Slurm, the fault, what the user saw, what was left
/// after the job, the nodes.
pub fn reliability_row(fault: &str, happened: &str, left: &str) {
    use std::io::Write;
    let path = format!("{SHARED}/reliability.rows");
    if !std::path::Path::new(&path).exists() {
        return;
    }
    let stack = sh(As::Root, "srun --version").success().stdout.trim().to_string();
    let row = format!("{stack}\t{fault}\t{happened}\t{left}\tin service; the next step ran\n");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    file.write_all(row.as_bytes()).unwrap();
}

/// Our line in a step's error output (Slurm adds its own around it).
pub fn our_lines(run: &Run) -> Vec<String> {
    run.stderr.lines().filter(|l| l.contains("mpiexec_docker: ")).map(str::to_string).collect()
}

/// Runs `srun` (as the test user, on `node`) stopped at `phase` (see
/// `mpiexec_docker_core::fault_point`), waits until the helper is there and runs `fault` (as root on
/// the node, with `$PID` the helper's pid); then lets it go on.
pub fn srun_with_fault_at(node: &'static str, phase: &str, srun_args: &str, fault: &str) -> Run {
    srun_with_fault(node, phase, srun_args, fault).0
}

/// [`srun_with_fault_at`], with what the fault command printed: (the step, the fault).
pub fn srun_with_fault(node: &'static str, phase: &str, srun_args: &str, fault: &str) -> (Run, Run) {
    let marker = format!("/run/mpiexec-docker/*/fault-{phase}");
    on_node(node, As::Root, &format!("rm -f {marker}"));
    let cmd = format!("srun -w {node} -n1 --export=ALL,MPIEXEC_DOCKER_FAULT_WAIT={phase} {srun_args}");
    let step = std::thread::spawn(move || sh(As::User, &cmd));
    let mut pid = String::new();
    let reached = wait_for(60, || {
        pid = on_node(node, As::Root, &format!("cat {marker} 2>/dev/null")).stdout.trim().to_string();
        !pid.is_empty()
    });
    assert!(reached, "the helper never reached {phase}");
    let fault = on_node(node, As::Root, &format!("PID={pid}; {fault}")).success();
    on_node(node, As::Root, &format!("rm -f {marker}"));
    (step.join().expect("the srun thread"), fault)
}

/// A fault for [`srun_with_fault`]: lets the helper go on from `phase`, then kills (SIGKILL) every
/// engine call it makes, each as its whole process group (the engine's own children too), until the
/// helper exits (10 s at most). Prints `killed=N`, read by [`engine_calls_killed`].
///
/// The helper's children are read from `/proc/PID/task/*/children` with shell builtins only, in a
/// tight loop: a quick engine call (a `docker rm` of a stopped container takes a few ms) cannot
/// start and end between two looks, as it could between two `pgrep`s.
pub fn kill_engine_calls(phase: &str) -> String {
    format!(
        "rm -f /run/mpiexec-docker/*/fault-{phase}; n=0; end=$((SECONDS + 10)); \
         while kill -0 $PID 2>/dev/null && [ $SECONDS -lt $end ]; do \
           for t in /proc/$PID/task/*/children; do \
             kids=(); read -r -a kids < $t 2>/dev/null; \
             for c in ${{kids[@]}}; do kill -9 -- -$c 2>/dev/null && n=$((n + 1)); done; \
           done; \
         done; echo killed=$n"
    )
}

/// How many engine calls [`kill_engine_calls`] killed.
pub fn engine_calls_killed(fault: &Run) -> u32 {
    let line = fault.stdout.lines().find_map(|l| l.strip_prefix("killed="));
    line.and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("no count: {fault}"))
}

/// Submits (as the test user) a job of one container step on `node` whose task sleeps `secs` (a
/// number no other test uses, so that its task can be found); its id, and a guard that cancels it.
pub fn sbatch_sleeping_step(node: &str, image: &str, secs: u32) -> (String, OnDrop<impl FnMut()>) {
    let job = sh(
        As::User,
        &format!("sbatch --parsable -N1 -w {node} -o /dev/null --wrap 'srun --container-image={image} sleep {secs}'"),
    )
    .success();
    let job = job.stdout.trim().to_string();
    let cancel = job.clone();
    (
        job,
        OnDrop(move || {
            sh(As::Root, &format!("scancel {cancel}"));
        }),
    )
}

/// The slurmstepd-killed fault on a job from [`sbatch_sleeping_step`]: once its task runs, the step's
/// slurmstepd is killed (SIGKILL) and the task checked to live on, as a bare task does; then the user
/// cancels the job, and the job's end must have ended the task.
pub fn kill_slurmstepd_then_cancel(node: &str, job: &str, secs: u32) {
    let task = || on_node(node, As::Root, &format!("pgrep -u {USER} -x sleep -a | grep -w {secs} || true")).stdout;
    assert!(wait_for(60, || !task().trim().is_empty()), "the step's task never ran");
    on_node(
        node,
        As::Root,
        &format!(
            "stepd=$(pgrep -f 'slurmstepd: \\[{job}\\.0\\]' | head -1); test -n \"$stepd\" || exit 3; kill -9 $stepd"
        ),
    )
    .success();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!task().trim().is_empty(), "the task outlives its slurmstepd, as a bare task does");
    sh(As::User, &format!("scancel {job}")).success();
    assert!(
        wait_for(60, || sh(As::Root, &format!("squeue -h -j {job} -o %T")).stdout.trim().is_empty()),
        "the job ends"
    );
    assert!(wait_for(30, || task().trim().is_empty()), "a task outlived its job: {}", task());
}
